/*
 * Incremental validator of the chunked transfer coding (RFC 9112 7.1). The
 * proxy forwards a chunked body as it comes; this scanner checks its framing
 * byte by byte and says where it ends, holding its whole state in struct
 * tether_http_chunked so any split of the input gives the same answer.
 */
#include <string.h>

#include "tether/http.h"
#include "chars.h"

/* Longest size line (chunk-size and extensions) or trailer line, CRLF excluded. */
#define MAX_LINE 4096
/* chunk-size = 1*HEXDIG; more digits than a uint64_t holds is an attack, not a size */
#define MAX_SIZE_DIGITS 16

/*
 * States. Those up to S_TR_VALUE are inside a size or trailer line, where
 * line_bytes counts the bytes to enforce MAX_LINE.
 */
enum {
    S_SIZE0,      /* first HEXDIG of chunk-size */
    S_SIZE,       /* more HEXDIG; line_bytes counts the digits */
    S_SEMI,       /* BWS, which must lead to ';' */
    S_EXT_PRE,    /* BWS, then chunk-ext-name */
    S_EXT_NAME,   /* in chunk-ext-name */
    S_EXT_POST,   /* BWS after a name: '=' or ';' must follow */
    S_VAL_PRE,    /* BWS after '=', then token or quoted-string */
    S_VAL_TOKEN,  /* in a token value */
    S_VAL_QUOTED, /* in a quoted-string value */
    S_VAL_ESCAPE, /* after a backslash in a quoted-string */
    S_VAL_END,    /* after the closing quote */
    S_TRAILER,    /* start of a trailer line, or the final CRLF */
    S_TR_NAME,    /* in a trailer field name */
    S_TR_VALUE,   /* in a trailer field value */
    S_SIZE_LF,    /* LF ending the size line */
    S_DATA,       /* chunk_left data bytes to go */
    S_DATA_CR,    /* CRLF after the data */
    S_DATA_LF,
    S_TR_LF,  /* LF ending a trailer line */
    S_END_LF, /* LF ending the body */
    S_DONE,
    S_ERROR,
};

void tether_http_chunked_init(struct tether_http_chunked *d)
{
    memset(d, 0, sizeof(*d));
    d->state = S_SIZE0;
}

static inline int ows(char c)
{
    return c == ' ' || c == '\t';
}

static inline unsigned hexval(char c)
{
    return c <= '9' ? (unsigned)(c - '0') : (unsigned)((c | 0x20) - 'a' + 10);
}

/*
 * After the size, a name, a token value or a closing quote: the line ends,
 * another extension starts, or BWS leads to one (or to '=' after a name).
 */
static int ext_next(int s, char c)
{
    if (c == '\r')
        return S_SIZE_LF;
    if (c == ';')
        return S_EXT_PRE;
    if (ows(c))
        return s == S_EXT_NAME ? S_EXT_POST : S_SEMI;
    return S_ERROR;
}

/*
 * The state after byte c in state s of a size line, or S_ERROR. Grammar
 * (RFC 9112 7.1.1): chunk-ext = *( BWS ";" BWS name [ BWS "=" BWS value ] ),
 * value = token / quoted-string; BWS is SP or HTAB only, and none is allowed
 * before the CRLF.
 */
static int size_line(struct tether_http_chunked *d, int s, char c)
{
    unsigned k = cls(c);

    switch (s) {
    case S_SIZE0:
    case S_SIZE:
        if (k & C_HEX) {
            /* 2^59 * 16 would pass 2^63-1 */
            if (d->line_bytes > MAX_SIZE_DIGITS || d->chunk_left >> 59)
                return S_ERROR;
            d->chunk_left = d->chunk_left << 4 | hexval(c);
            return S_SIZE;
        }
        return s == S_SIZE0 ? S_ERROR : ext_next(s, c);
    case S_SEMI:
        return c == ';' ? S_EXT_PRE : ows(c) ? S_SEMI : S_ERROR;
    case S_EXT_PRE:
        return (k & C_TOKEN) ? S_EXT_NAME : ows(c) ? S_EXT_PRE : S_ERROR;
    case S_EXT_NAME:
        if (k & C_TOKEN)
            return S_EXT_NAME;
        return c == '=' ? S_VAL_PRE : ext_next(s, c);
    case S_VAL_TOKEN:
        return (k & C_TOKEN) ? S_VAL_TOKEN : ext_next(s, c);
    case S_VAL_END:
        return ext_next(s, c);
    case S_EXT_POST:
        return c == '=' ? S_VAL_PRE : c == ';' ? S_EXT_PRE : ows(c) ? S_EXT_POST : S_ERROR;
    case S_VAL_PRE:
        if (c == '"')
            return S_VAL_QUOTED;
        return (k & C_TOKEN) ? S_VAL_TOKEN : ows(c) ? S_VAL_PRE : S_ERROR;
    case S_VAL_QUOTED:
        /* quoted-string = DQUOTE *( qdtext / quoted-pair ) DQUOTE (RFC 9110 5.6.4) */
        if (c == '"')
            return S_VAL_END;
        if (c == '\\')
            return S_VAL_ESCAPE;
        return (k & C_QDTEXT) ? S_VAL_QUOTED : S_ERROR;
    case S_VAL_ESCAPE:
        return (k & C_VALUE) ? S_VAL_QUOTED : S_ERROR;
    }
    return S_ERROR;
}

/*
 * The state after byte c at or in a trailer line: field-line rules as in the
 * head (RFC 9112 7.1.2, 5): a token name right before ':', a value of
 * field-vchar, SP and HTAB, no obs-fold, CRLF only. Trailer fields are
 * counted in chunk_left, idle once the last chunk is read, and capped like
 * header fields.
 */
static int trailer_line(struct tether_http_chunked *d, int s, char c)
{
    unsigned k = cls(c);

    switch (s) {
    case S_TRAILER:
        if (c == '\r')
            return S_END_LF;
        if (!(k & C_TOKEN) || ++d->chunk_left > TETHER_HTTP_MAX_HEADERS)
            return S_ERROR;
        return S_TR_NAME;
    case S_TR_NAME:
        return (k & C_TOKEN) ? S_TR_NAME : c == ':' ? S_TR_VALUE : S_ERROR;
    case S_TR_VALUE:
        return (k & C_VALUE) ? S_TR_VALUE : c == '\r' ? S_TR_LF : S_ERROR;
    }
    return S_ERROR;
}

ssize_t tether_http_chunked_scan(struct tether_http_chunked *d, const char *buf, size_t len,
                                 int *done)
{
    size_t i = 0;
    int s = d->state;

    *done = 0;
    if (s == S_ERROR)
        return TETHER_HTTP_EBAD;
    if (s == S_DONE) {
        *done = 1;
        return 0;
    }
    while (i < len) {
        char c;

        if (s == S_DATA) {
            size_t n = len - i;

            if (n > d->chunk_left)
                n = (size_t)d->chunk_left;
            i += n;
            d->chunk_left -= n;
            d->body_bytes += n;
            if (d->chunk_left == 0)
                s = S_DATA_CR;
            continue;
        }
        c = buf[i++];
        if (s <= S_TR_VALUE) {
            /* a bare LF is caught by the grammar: no line state accepts it */
            if (c != '\r' && ++d->line_bytes > MAX_LINE) {
                s = S_ERROR;
                break;
            }
            s = s < S_TRAILER ? size_line(d, s, c) : trailer_line(d, s, c);
            if (s == S_ERROR)
                break;
            continue;
        }
        switch (s) {
        case S_SIZE_LF:
            /* last-chunk = 1*"0" [ chunk-ext ] CRLF, then the trailer section */
            s = c != '\n' ? S_ERROR : d->chunk_left ? S_DATA : S_TRAILER;
            d->line_bytes = 0;
            break;
        case S_DATA_CR:
            s = c == '\r' ? S_DATA_LF : S_ERROR;
            break;
        case S_DATA_LF:
            s = c == '\n' ? S_SIZE0 : S_ERROR; /* line_bytes is 0 since S_SIZE_LF */
            break;
        case S_TR_LF:
            s = c == '\n' ? S_TRAILER : S_ERROR;
            d->line_bytes = 0;
            break;
        case S_END_LF:
            s = c == '\n' ? S_DONE : S_ERROR;
            break;
        }
        if (s == S_ERROR || s == S_DONE)
            break;
    }
    d->state = s;
    if (s == S_ERROR)
        return TETHER_HTTP_EBAD;
    *done = s == S_DONE;
    return (ssize_t)i;
}
