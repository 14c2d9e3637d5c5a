/*
 * tether http: a strict, incremental HTTP/1.1 message parser (RFC 9110,
 * RFC 9112). It allocates nothing and returns views into the caller's
 * buffer, on picohttpparser's contract: a call answers "n bytes consumed",
 * "partial, call again with more", or "error". Anything ambiguous is an
 * error, so a message tether forwards can be read one way only.
 * Pure: no I/O, no logging; fuzzed by tests/fuzz.
 */
#ifndef TETHER_HTTP_H
#define TETHER_HTTP_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* Return codes (negative); a parse call returns > 0 bytes consumed on success. */
#define TETHER_HTTP_PARTIAL (-2)   /* incomplete: call again with more bytes */
#define TETHER_HTTP_EBAD (-1)      /* malformed or ambiguous: 400 (502 for a response) */
#define TETHER_HTTP_ETOOMANY (-3)  /* more header fields than the caller's array: 431 */

/* Hard cap on header fields per message in tether (callers size arrays with it). */
#define TETHER_HTTP_MAX_HEADERS 100

struct tether_http_header {
    const char *name;            /* view into the buffer; token chars only */
    size_t name_len;
    const char *value;           /* leading/trailing OWS stripped */
    size_t value_len;
};

enum tether_http_body {
    TETHER_HTTP_BODY_NONE = 0,     /* no body (no CL/TE, or CL: 0) */
    TETHER_HTTP_BODY_LENGTH = 1,   /* content_length bytes follow */
    TETHER_HTTP_BODY_CHUNKED = 2,  /* chunked coding, final coding of TE */
    TETHER_HTTP_BODY_EOF = 3,      /* response only: delimited by close */
};

/* Flags derived from the header fields while parsing. */
#define TETHER_HTTP_F_CONN_CLOSE 0x01      /* Connection: close */
#define TETHER_HTTP_F_CONN_KEEPALIVE 0x02  /* Connection: keep-alive */
#define TETHER_HTTP_F_CONN_UPGRADE 0x04    /* Connection: upgrade */
#define TETHER_HTTP_F_UPGRADE 0x08         /* an Upgrade header is present */
#define TETHER_HTTP_F_EXPECT_CONTINUE 0x10 /* Expect: 100-continue */

struct tether_http_request {
    const char *method;
    size_t method_len;
    const char *target;          /* request-target as sent */
    size_t target_len;
    int minor_version;           /* 0 or 1 (HTTP/1.x only) */
    struct tether_http_header *headers; /* caller's array */
    size_t num_headers;
    const char *host;            /* value of the one Host header, or NULL */
    size_t host_len;
    enum tether_http_body body;  /* NONE, LENGTH or CHUNKED */
    uint64_t content_length;     /* when body == LENGTH */
    unsigned flags;              /* TETHER_HTTP_F_* */
};

struct tether_http_response {
    int minor_version;
    int status;                  /* 100..599 */
    const char *reason;
    size_t reason_len;
    struct tether_http_header *headers;
    size_t num_headers;
    enum tether_http_body body;  /* framing from the header alone: LENGTH, CHUNKED,
                                    EOF (neither), NONE (CL: 0); the caller applies
                                    the request method and 1xx/204/304 rules */
    uint64_t content_length;
    unsigned flags;
};

/*
 * Parse a request head (request line + header fields + empty line).
 *   buf, len: bytes received so far (the parser re-scans from the start;
 *             heads are bounded by max_header_bytes, so this stays cheap).
 *   req: out; req->headers must point to an array of max_headers entries.
 * Returns the length of the head (> 0), TETHER_HTTP_PARTIAL, TETHER_HTTP_EBAD
 * or TETHER_HTTP_ETOOMANY. On EBAD nothing in *req is meaningful.
 * Rejected (EBAD), per RFC 9112: malformed request line, method not a token,
 * target with CTLs/space or empty, version other than HTTP/1.0 or HTTP/1.1,
 * bare CR or bare LF anywhere in the head, obs-fold, whitespace before the
 * colon, a name that is not a token, a value with CTLs (other than HTAB) or
 * DEL, Content-Length together with Transfer-Encoding, a Content-Length that
 * is not 1*DIGIT or overflows, several Content-Length fields (even equal),
 * Transfer-Encoding in HTTP/1.0, Transfer-Encoding whose final coding is not
 * chunked or that applies chunked twice, HTTP/1.1 without exactly one Host,
 * more than one Host in any version.
 * Empty lines before the request line (RFC 9112 2.2) are not accepted.
 * Thread: any (no state).
 */
ssize_t tether_http_parse_request(const char *buf, size_t len, struct tether_http_request *req,
                                  size_t max_headers);

/*
 * Parse a response head. Same contract as above, with the rules that apply
 * to a response: status line "HTTP/1.x DDD reason", same field rules, CL+TE
 * or a bad CL is EBAD (the proxy answers 502), a Transfer-Encoding whose
 * final coding is not chunked means the body runs until close (BODY_EOF).
 */
ssize_t tether_http_parse_response(const char *buf, size_t len, struct tether_http_response *res,
                                   size_t max_headers);

/*
 * Incremental validator of a chunked body (RFC 9112 7.1), for a proxy that
 * forwards the coded bytes unchanged: it checks framing and tells where the
 * body ends. Chunk extensions are accepted (token[=token|quoted-string]) and
 * passed on; trailer fields are checked with the header field rules.
 */
struct tether_http_chunked {
    int state;                   /* internal */
    uint64_t chunk_left;         /* internal: data bytes left in this chunk */
    uint64_t body_bytes;         /* data bytes seen so far (for max_body_bytes) */
    size_t line_bytes;           /* internal: bytes in the current size/trailer line */
};

/* Reset a decoder before the first byte of a body. */
void tether_http_chunked_init(struct tether_http_chunked *d);

/*
 * Scan the next bytes of a chunked body.
 *   buf, len: the bytes available (any split is fine, even mid size line).
 * Returns the number of bytes that belong to the body (<= len): fewer than
 * len only when the body ended (the rest is the next message), and then
 * *done = 1. Returns TETHER_HTTP_EBAD on a framing error: a size that is not
 * hex, overflows 2^63 or exceeds 16 hex digits, bare CR or LF, data not
 * followed by CRLF, an invalid extension or trailer field, or a size or
 * trailer line longer than 4096 bytes.
 */
ssize_t tether_http_chunked_scan(struct tether_http_chunked *d, const char *buf, size_t len,
                                 int *done);

/*
 * Utilities on parsed heads.
 * tether_http_token_has: 1 if the comma-separated list value contains the
 * token tok (ASCII case-insensitive, OWS around elements ignored).
 */
int tether_http_token_has(const char *value, size_t len, const char *tok);

/* Standard reason phrase for a status code ("" when unknown). */
const char *tether_http_reason(int status);

#endif
