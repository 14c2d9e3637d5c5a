/*
 * Session keys as requests carry them: the check every key passes before it
 * reaches the table, and the lookup of one cookie in a Cookie header value.
 * Pure: views into the caller's buffer, no allocation.
 */
#include <string.h>

#include "tether/session.h"

int tether_session_key_valid(const char *s, size_t len)
{
    if (len == 0 || len > TETHER_SESSION_MAX_KEY)
        return 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch < 0x21 || ch > 0x7e)
            return 0;
    }
    return 1;
}

static int ows(char ch)
{
    return ch == ' ' || ch == '\t';
}

/* Narrow [*b, *e) past OWS on both sides. */
static void trim(const char **b, const char **e)
{
    while (*b < *e && ows(**b))
        (*b)++;
    while (*e > *b && ows((*e)[-1]))
        (*e)--;
}

/*
 * RFC 6265 4.1.1 cookie-octet: %x21 / %x23-2B / %x2D-3A / %x3C-5B / %x5D-7E,
 * i.e. no CTLs, whitespace, DQUOTE, comma, semicolon or backslash.
 */
static int cookie_octet(unsigned char ch)
{
    return ch >= 0x21 && ch <= 0x7e && ch != '"' && ch != ',' && ch != ';' && ch != '\\';
}

/*
 * The value of our cookie, unwrapped from its DQUOTEs; -1 when it is not a
 * cookie-value. Read strictly: a space inside (`a b`) or a stray quote has
 * no single meaning, and guessing one could route a session elsewhere.
 */
static int cookie_value(const char *b, const char *e, const char **val, size_t *vlen)
{
    if (b < e && *b == '"') {
        if (e - b < 2 || e[-1] != '"')
            return -1;
        b++;
        e--;
    }
    for (const char *p = b; p < e; p++)
        if (!cookie_octet((unsigned char)*p))
            return -1;
    *val = b;
    *vlen = (size_t)(e - b);
    return 0;
}

/*
 * Pairs are split at every ';' (a cookie-octet is never one, quoted or not,
 * RFC 6265 4.1.1). Empty pairs (";;", a trailing ';') are passed over, as
 * user agents do emit them. Other cookies' values are not checked, only the
 * shape of their pairs: a pair without '=' (how some user agents send a
 * cookie of empty name) leaves no reading of the header worth trusting.
 */
int tether_session_cookie_find(const char *value, size_t len, const char *name, size_t name_len,
                               const char **val, size_t *vlen)
{
    const char *fv = NULL;
    size_t fl = 0;
    int found = 0;

    if (len == 0 || name_len == 0)
        return 0;
    const char *p = value, *end = value + len;
    for (;;) {
        const char *semi = memchr(p, ';', (size_t)(end - p));
        const char *b = p, *e = semi != NULL ? semi : end;
        trim(&b, &e);
        if (b < e) {
            const char *eq = memchr(b, '=', (size_t)(e - b));
            if (eq == NULL)
                return -1;
            const char *nb = b, *ne = eq, *vb = eq + 1, *ve = e;
            trim(&nb, &ne);
            trim(&vb, &ve);
            /* Names compare octet by octet, so case counts (RFC 6265 5.4). */
            if ((size_t)(ne - nb) == name_len && memcmp(nb, name, name_len) == 0) {
                if (found || cookie_value(vb, ve, &fv, &fl) < 0)
                    return -1;
                found = 1;
            }
        }
        if (semi == NULL)
            break;
        p = semi + 1;
    }
    if (found) {
        *val = fv;
        *vlen = fl;
    }
    return found;
}
