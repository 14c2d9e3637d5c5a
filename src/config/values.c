/*
 * tether config values: the parsers for durations, sizes and host:port
 * addresses, and the small syntax checks (tokens, host names, loopback)
 * the schema walker applies. Exported parsers are shared with the admin API
 * and tetherctl; none of them allocates.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "internal.h"

#define HOST_MAX 254             /* RFC 1035: 253 octets and a NUL */

static bool is_digit(char ch)
{
    return ch >= '0' && ch <= '9';
}

static bool is_alnum(char ch)
{
    return is_digit(ch) || (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z');
}

/*
 * Leading decimal digits of s into *v; returns the first byte after them,
 * or NULL when there are none or the value overflows 64 bits.
 */
static const char *digits(const char *s, uint64_t *v)
{
    const char *p = s;

    *v = 0;
    for (; is_digit(*p); p++) {
        unsigned d = (unsigned)(*p - '0');

        if (*v > (UINT64_MAX - d) / 10)
            return NULL;
        *v = *v * 10 + d;
    }
    return p == s ? NULL : p;
}

int tether_config_parse_duration(const char *s, uint64_t *out_ms)
{
    static const struct {
        const char *unit;
        uint64_t ms;
    } units[] = {
        { "", 1000 }, { "ms", 1 }, { "s", 1000 }, { "m", 60 * 1000 },
        { "h", 3600 * 1000 }, { "d", 86400 * 1000 },
    };
    uint64_t v;
    const char *p = digits(s, &v);

    if (!p)
        return -EINVAL;
    for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++) {
        if (strcmp(p, units[i].unit) != 0)
            continue;
        if (v > UINT64_MAX / units[i].ms)
            return -EINVAL;
        *out_ms = v * units[i].ms;
        return 0;
    }
    return -EINVAL;
}

int tether_config_parse_size(const char *s, uint64_t *out_bytes)
{
    uint64_t v;
    unsigned shift;
    const char *p = digits(s, &v);

    if (!p)
        return -EINVAL;
    switch (*p) {
    case '\0':
        shift = 0;
        break;
    case 'k':
    case 'K':
        shift = 10;
        break;
    case 'm':
    case 'M':
        shift = 20;
        break;
    case 'g':
    case 'G':
        shift = 30;
        break;
    default:
        return -EINVAL;
    }
    if (shift && p[1] != '\0')
        return -EINVAL;
    if (v > (UINT64_MAX >> shift))
        return -EINVAL;
    *out_bytes = v << shift;
    return 0;
}

/* Label rules of RFC 1123 2.1: letters, digits and inner hyphens, 1..63 each. */
bool tether_config_is_hostname(const char *s)
{
    size_t len = strlen(s), label = 0;

    if (len == 0 || len > HOST_MAX - 1)
        return false;
    for (size_t i = 0; i <= len; i++) {
        char ch = s[i];

        if (ch == '.' || ch == '\0') {
            if (label == 0 || label > 63 || s[i - 1] == '-')
                return false;
            label = 0;
        } else if (is_alnum(ch) || (ch == '-' && label > 0)) {
            label++;
        } else {
            return false;
        }
    }
    return true;
}

const char *tether_config_addr_check(const char *addr, char *host, size_t hostlen, uint16_t *port)
{
    char tmp[HOST_MAX];
    unsigned char bin[sizeof(struct in6_addr)];
    const char *h = addr, *he, *ps;
    bool v6 = false;
    uint64_t v;
    size_t hl;

    if (addr[0] == '[') {
        h = addr + 1;
        he = strchr(h, ']');
        if (!he)
            return "missing ']' after the IPv6 address";
        if (he[1] != ':')
            return "missing :port after ']'";
        ps = he + 2;
        v6 = true;
    } else {
        he = strrchr(addr, ':');
        if (!he)
            return "missing :port (write host:port)";
        if (memchr(h, ':', (size_t)(he - h)))
            return "an IPv6 address goes in brackets, e.g. [::1]:8080";
        ps = he + 1;
    }
    hl = (size_t)(he - h);
    if (hl == 0)
        return "missing host before :port";
    if (*ps == '\0')
        return "missing port after ':'";
    {
        const char *end = digits(ps, &v);

        if (!end || *end != '\0' || v == 0 || v > 65535)
            return "port must be a number from 1 to 65535";
    }
    if (hl >= sizeof(tmp))
        return "host name too long";
    memcpy(tmp, h, hl);
    tmp[hl] = '\0';
    if (v6) {
        if (inet_pton(AF_INET6, tmp, bin) != 1)
            return "not a valid IPv6 address";
    } else if (strspn(tmp, "0123456789.") == hl) {
        if (inet_pton(AF_INET, tmp, bin) != 1)
            return "not a valid IPv4 address";
    } else if (!tether_config_is_hostname(tmp)) {
        return "not a valid host name";
    }
    if (host) {
        if (hl >= hostlen)
            return "host name too long";
        memcpy(host, tmp, hl + 1);
    }
    if (port)
        *port = (uint16_t)v;
    return NULL;
}

int tether_config_split_address(const char *addr, char *host, size_t hostlen, uint16_t *port)
{
    return tether_config_addr_check(addr, host, hostlen, port) ? -EINVAL : 0;
}

/* RFC 9110 5.6.2 tchar; RFC 6265 4.1.1 cookie-name is the same token. */
bool tether_config_is_token(const char *s)
{
    if (*s == '\0')
        return false;
    for (; *s; s++)
        if (!is_alnum(*s) && !strchr("!#$%&'*+-.^_`|~", *s))
            return false;
    return true;
}

bool tether_config_is_loopback(const char *host)
{
    struct in_addr a4;
    struct in6_addr a6;

    if (strcasecmp(host, "localhost") == 0)
        return true;
    if (inet_pton(AF_INET, host, &a4) == 1)
        return (ntohl(a4.s_addr) >> 24) == 127;
    if (inet_pton(AF_INET6, host, &a6) == 1)
        return memcmp(&a6, &in6addr_loopback, sizeof(a6)) == 0;
    return false;
}

/* Same host (literals compared as addresses, names without case) and port. */
bool tether_config_addr_same(const char *a, const char *b)
{
    char ha[HOST_MAX], hb[HOST_MAX];
    unsigned char ba[sizeof(struct in6_addr)], bb[sizeof(struct in6_addr)];
    uint16_t pa, pb;

    if (tether_config_addr_check(a, ha, sizeof(ha), &pa) ||
        tether_config_addr_check(b, hb, sizeof(hb), &pb) || pa != pb)
        return false;
    if (inet_pton(AF_INET6, ha, ba) == 1 && inet_pton(AF_INET6, hb, bb) == 1)
        return memcmp(ba, bb, sizeof(struct in6_addr)) == 0;
    if (inet_pton(AF_INET, ha, ba) == 1 && inet_pton(AF_INET, hb, bb) == 1)
        return memcmp(ba, bb, sizeof(struct in_addr)) == 0;
    return strcasecmp(ha, hb) == 0;
}

/* Render ms in the largest unit that divides it: "10s", "1500ms", "2h". */
void tether_config_fmt_duration(uint64_t ms, char *buf, size_t len)
{
    static const struct {
        const char *unit;
        uint64_t ms;
    } units[] = {
        { "d", 86400 * 1000 }, { "h", 3600 * 1000 }, { "m", 60 * 1000 }, { "s", 1000 },
    };

    for (size_t i = 0; ms && i < sizeof(units) / sizeof(units[0]); i++) {
        if (ms % units[i].ms == 0) {
            snprintf(buf, len, "%llu%s", (unsigned long long)(ms / units[i].ms), units[i].unit);
            return;
        }
    }
    snprintf(buf, len, "%llums", (unsigned long long)ms);
}

/* Render bytes in the largest binary unit that divides it: "16k", "1m", "100". */
void tether_config_fmt_size(uint64_t bytes, char *buf, size_t len)
{
    static const char units[] = "gmk";

    for (int i = 0; bytes && i < 3; i++) {
        unsigned shift = (unsigned)(30 - 10 * i);

        if (bytes % (1ull << shift) == 0) {
            snprintf(buf, len, "%llu%c", (unsigned long long)(bytes >> shift), units[i]);
            return;
        }
    }
    snprintf(buf, len, "%llu", (unsigned long long)bytes);
}
