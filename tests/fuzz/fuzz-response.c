/*
 * libFuzzer target for tether_http_parse_response. Besides not crashing or
 * over-reading, an accepted head must parse the same at exactly its length,
 * be PARTIAL one byte shorter, and overflow an array one entry too small.
 */
#include "fuzz.h"
#include "tether/http.h"

static size_t nfields;

static ssize_t parse(const uint8_t *data, size_t size, size_t max)
{
    struct tether_http_header h[TETHER_HTTP_MAX_HEADERS];
    struct tether_http_response res = {.headers = h};
    ssize_t r = tether_http_parse_response(guard_copy(data, size), size, &res, max);

    if (r > 0 &&
        ((size_t)r > size || res.num_headers > max || res.status < 100 || res.status > 599))
        abort();
    nfields = res.num_headers;
    return r;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    ssize_t r = parse(data, size, TETHER_HTTP_MAX_HEADERS);
    size_t n = nfields;

    if (r <= 0)
        return 0;
    if (parse(data, (size_t)r, TETHER_HTTP_MAX_HEADERS) != r || nfields != n ||
        parse(data, (size_t)r - 1, TETHER_HTTP_MAX_HEADERS) != TETHER_HTTP_PARTIAL ||
        (n > 0 && parse(data, (size_t)r, n - 1) != TETHER_HTTP_ETOOMANY))
        abort();
    return 0;
}
