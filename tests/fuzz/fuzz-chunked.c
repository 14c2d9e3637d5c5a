/*
 * libFuzzer target for tether_http_chunked_scan: the input at once (before
 * a guard page), then one byte at a time, then in pieces of sizes drawn
 * from the input itself; all three must end the same way.
 */
#include "fuzz.h"
#include "tether/http.h"

/* Scan in pieces of step bytes, or of pseudo-random sizes when step is 0. */
static uint64_t scan(const char *buf, size_t size, size_t step, uint32_t seed)
{
    struct tether_http_chunked d;
    size_t off = 0, n;
    ssize_t r = 0;
    int done = 0;

    tether_http_chunked_init(&d);
    while (off < size && !done) {
        seed = seed * 1103515245u + 12345u;
        n = step ? step : 1 + (seed >> 16) % 64;
        n = n < size - off ? n : size - off;
        if ((r = tether_http_chunked_scan(&d, buf + off, n, &done)) < 0)
            return UINT64_MAX;
        if ((size_t)r > n || (!done && (size_t)r != n))
            abort();
        off += (size_t)r;
    }
    return (uint64_t)off << 1 | (uint64_t)done; /* d.body_bytes follows from off */
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *buf = guard_copy(data, size);
    uint64_t once = scan(buf, size, size ? size : 1, 0);

    if (scan(buf, size, 1, 0) != once || scan(buf, size, 0, (uint32_t)size) != once)
        abort();
    return 0;
}
