/*
 * TLS listeners: certificate loading and checks, SNI, ALPN and the
 * protocol settings every listener shares. The contexts are immutable once
 * built, so all workers use them without locks (OpenSSL's own locking
 * covers the session cache).
 */
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include "tls-int.h"

/* Mozilla's "intermediate" configuration (TLS 1.2 suites; 1.3 uses OpenSSL's defaults). */
#define INTERMEDIATE_CIPHERS                                                                       \
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"                                   \
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"                                   \
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"                                   \
    "DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384:DHE-RSA-CHACHA20-POLY1305"
#define INTERMEDIATE_GROUPS "X25519:prime256v1:secp384r1"

struct tether_tls_server {
    SSL_CTX **ctx; /* one per certificate; ctx[0] is the default */
    X509 **leaf;   /* borrowed from ctx[i] */
    size_t n;
};

static const unsigned char alpn_http11[] = "\x08http/1.1";

/* ALPN (RFC 7301): http/1.1 or nothing; an offer without it is fatal. */
static int on_alpn(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                   const unsigned char *in, unsigned int inlen, void *arg)
{
    unsigned char *sel;
    if (SSL_select_next_proto(&sel, outlen, alpn_http11, sizeof(alpn_http11) - 1, in, inlen) !=
        OPENSSL_NPN_NEGOTIATED)
        return SSL_TLSEXT_ERR_ALERT_FATAL;
    *out = sel;
    return SSL_TLSEXT_ERR_OK;
}

/* SNI: the first certificate whose names cover the requested one, else the default. */
static int on_servername(SSL *ssl, int *alert, void *arg)
{
    const struct tether_tls_server *srv = arg;
    const char *name = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
    if (!name || srv->n < 2)
        return SSL_TLSEXT_ERR_OK;
    for (size_t i = 0; i < srv->n; i++) {
        if (X509_check_host(srv->leaf[i], name, 0, 0, NULL) == 1) {
            if (i > 0)
                SSL_set_SSL_CTX(ssl, srv->ctx[i]);
            return SSL_TLSEXT_ERR_OK;
        }
    }
    return SSL_TLSEXT_ERR_OK;
}

static const char *ssl_reason(void)
{
    unsigned long e = ERR_peek_last_error();
    const char *r = e ? ERR_reason_error_string(e) : NULL;
    ERR_clear_error();
    return r ? r : "unknown error";
}

static void where(const struct tether_config *cfg, const char *key, int *line, int *col)
{
    if (tether_config_where(cfg, key, line, col) < 0)
        *line = *col = 0;
}

static SSL_CTX *ctx_new(const struct tether_config_listen_tls *t)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (!ctx)
        return NULL;
    SSL_CTX_set_min_proto_version(ctx, t->min_version == TETHER_TLS_1_3 ? TLS1_3_VERSION
                                                                        : TLS1_2_VERSION);
    SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION);
    /* OpenSSL 3 refuses client-initiated renegotiation unless allowed. */
    /* The server's order (strongest first) decides, whatever a client prefers. */
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION |
                                 SSL_OP_CIPHER_SERVER_PREFERENCE);
    /* The chain sent is the one configured (SSL_CTX_use_certificate_chain_file):
       no chain building against a store per full handshake. */
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS | SSL_MODE_NO_AUTO_CHAIN);
    /* One read() takes every record that has arrived (a client's Finished
       and its request), instead of two per record (header, then body). */
    SSL_CTX_set_read_ahead(ctx, 1);
    SSL_CTX_set1_groups_list(ctx, INTERMEDIATE_GROUPS);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_SERVER);
    static const unsigned char sid_ctx[] = "tether";
    SSL_CTX_set_session_id_context(ctx, sid_ctx, sizeof(sid_ctx) - 1);
    SSL_CTX_set_alpn_select_cb(ctx, on_alpn, NULL);
    /* Tickets outlive no more than two rotations: one as current, one as previous. */
    SSL_CTX_set_timeout(ctx, (long)(t->ticket_rotation_ms * 2 / 1000));
    if (tls_tickets_attach(ctx) < 0) {
        SSL_CTX_free(ctx);
        return NULL;
    }
    return ctx;
}

/* Load one certificate chain and key into ctx, reporting problems at their keys. */
static int load_cert(SSL_CTX *ctx, const struct tether_config *cfg, size_t li, size_t ci,
                     struct tether_config_errors *errs)
{
    const struct tether_config_cert *c = &cfg->listens[li].tls->certs[ci];
    char kc[96], kk[96];
    int line, col, bad = 0;
    snprintf(kc, sizeof(kc), "listen[%zu].tls.certificates[%zu].cert", li, ci);
    snprintf(kk, sizeof(kk), "listen[%zu].tls.certificates[%zu].key", li, ci);
    if (SSL_CTX_use_certificate_chain_file(ctx, c->cert) != 1) {
        where(cfg, kc, &line, &col);
        tether_config_errors_add(errs, false, line, col, kc, "%s: cannot load certificate: %s",
                                 c->cert, ssl_reason());
        bad = 1;
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, c->key, SSL_FILETYPE_PEM) != 1) {
        where(cfg, kk, &line, &col);
        tether_config_errors_add(errs, false, line, col, kk, "%s: cannot load key: %s", c->key,
                                 ssl_reason());
        bad = 1;
    }
    if (bad)
        return -1;
    if (SSL_CTX_check_private_key(ctx) != 1) {
        where(cfg, kk, &line, &col);
        tether_config_errors_add(errs, false, line, col, kk,
                                 "%s: key does not match the certificate %s", c->key, c->cert);
        ERR_clear_error();
        return -1;
    }
    X509 *leaf = SSL_CTX_get0_certificate(ctx);
    if (X509_cmp_current_time(X509_get0_notAfter(leaf)) < 0) {
        where(cfg, kc, &line, &col);
        tether_config_errors_add(errs, true, line, col, kc, "%s: certificate has expired", c->cert);
    } else if (X509_cmp_current_time(X509_get0_notBefore(leaf)) > 0) {
        where(cfg, kc, &line, &col);
        tether_config_errors_add(errs, true, line, col, kc, "%s: certificate is not yet valid",
                                 c->cert);
    }
    return 0;
}

struct tether_tls_server *tether_tls_server_new(const struct tether_config *cfg, size_t index,
                                                struct tether_config_errors *errs)
{
    const struct tether_config_listen_tls *t = cfg->listens[index].tls;
    struct tether_tls_server *srv = calloc(1, sizeof(*srv));
    if (!srv)
        return NULL;
    srv->ctx = calloc(t->ncerts, sizeof(*srv->ctx));
    srv->leaf = calloc(t->ncerts, sizeof(*srv->leaf));
    if (!srv->ctx || !srv->leaf)
        goto fail;
    int bad = 0;
    for (size_t i = 0; i < t->ncerts; i++) {
        SSL_CTX *ctx = ctx_new(t);
        if (!ctx)
            goto fail;
        srv->ctx[srv->n++] = ctx;
        if (t->ciphers[0] && SSL_CTX_set_cipher_list(ctx, t->ciphers) != 1) {
            if (i == 0) {
                char k[64];
                int line, col;
                snprintf(k, sizeof(k), "listen[%zu].tls.ciphers", index);
                where(cfg, k, &line, &col);
                tether_config_errors_add(errs, false, line, col, k, "no usable cipher in \"%s\"",
                                         t->ciphers);
            }
            ERR_clear_error();
            bad = 1;
        } else if (!t->ciphers[0]) {
            SSL_CTX_set_cipher_list(ctx, INTERMEDIATE_CIPHERS);
        }
        if (load_cert(ctx, cfg, index, i, errs) < 0)
            bad = 1;
        else
            srv->leaf[i] = SSL_CTX_get0_certificate(ctx);
        SSL_CTX_set_tlsext_servername_callback(ctx, on_servername);
        SSL_CTX_set_tlsext_servername_arg(ctx, srv);
    }
    if (bad)
        goto fail;
    return srv;
fail:
    tether_tls_server_free(srv);
    return NULL;
}

void tether_tls_server_free(struct tether_tls_server *srv)
{
    if (!srv)
        return;
    for (size_t i = 0; i < srv->n; i++)
        SSL_CTX_free(srv->ctx[i]);
    free(srv->ctx);
    free(srv->leaf);
    free(srv);
}

SSL *tether_tls_server_ssl(struct tether_tls_server *srv)
{
    return SSL_new(srv->ctx[0]);
}

int tether_tls_check(const struct tether_config *cfg, struct tether_config_errors *errs)
{
    size_t before = errs->nerrors;
    for (size_t i = 0; i < cfg->nlistens; i++) {
        if (!cfg->listens[i].tls)
            continue;
        tether_tls_server_free(tether_tls_server_new(cfg, i, errs));
    }
    return (int)(errs->nerrors - before);
}
