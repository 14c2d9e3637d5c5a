/*
 * Byte classes shared by the head parser and the chunked scanner: one
 * 256-entry table so every inner loop is a load and a mask (the grammar
 * names are those of RFC 9110 5.6 and RFC 3986 3.2.2). Private to src/http.
 */
#ifndef TETHER_HTTP_CHARS_H
#define TETHER_HTTP_CHARS_H

#include <stdint.h>

#define C_TOKEN 0x01  /* tchar (RFC 9110 5.6.2) */
#define C_VALUE 0x02  /* field-vchar, SP, HTAB (RFC 9110 5.5), obs-text included */
#define C_TARGET 0x04 /* VCHAR: a request-target byte (RFC 9112 3.2) */
#define C_HOST 0x08   /* reg-name byte: unreserved / sub-delims (RFC 3986 3.2.2) */
#define C_HEX 0x10    /* HEXDIG */
#define C_QDTEXT 0x20 /* qdtext (RFC 9110 5.6.4) */

extern const uint8_t tether_http_chars[256];

/* The classes of byte c. */
static inline unsigned cls(char c)
{
    return tether_http_chars[(unsigned char)c];
}

#endif
