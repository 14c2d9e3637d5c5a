/*
 * TLS from tether to its backends: one client context per backend that has
 * a tls block. Verification is on unless the operator turned it off; a
 * failed check fails the connection (the proxy answers 502), never a silent
 * fallback to plaintext.
 */
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/x509v3.h>

#include "tls-int.h"

struct tether_tls_client {
    SSL_CTX *ctx;
    char *sni; /* NULL = none */
    char *ip;  /* the address to check when there is no sni */
    bool verify;
};

static const unsigned char alpn[] = "\x08http/1.1";

struct tether_tls_client *tether_tls_client_new(const struct tether_config *cfg, size_t index,
                                                struct tether_config_errors *errs)
{
    const struct tether_config_backend *b = &cfg->backends[index];
    const struct tether_config_backend_tls *t = b->tls;
    struct tether_tls_client *cl = calloc(1, sizeof(*cl));
    if (!cl)
        return NULL;
    cl->verify = t->verify;
    cl->ctx = SSL_CTX_new(TLS_client_method());
    if (!cl->ctx)
        goto fail;
    SSL_CTX_set_min_proto_version(cl->ctx, TLS1_2_VERSION);
    SSL_CTX_set_options(cl->ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION);
    SSL_CTX_set_alpn_protos(cl->ctx, alpn, sizeof(alpn) - 1);
    /* One read() per batch of records rather than two per record. */
    SSL_CTX_set_read_ahead(cl->ctx, 1);
    if (t->verify) {
        SSL_CTX_set_verify(cl->ctx, SSL_VERIFY_PEER, NULL);
        int ok = t->ca[0] ? SSL_CTX_load_verify_locations(cl->ctx, t->ca, NULL)
                          : SSL_CTX_set_default_verify_paths(cl->ctx);
        if (ok != 1) {
            char key[64];
            int line = 0, col = 0;
            snprintf(key, sizeof(key), "backends[%zu].tls.ca", index);
            tether_config_where(cfg, key, &line, &col);
            unsigned long e = ERR_peek_last_error();
            tether_config_errors_add(errs, false, line, col, key, "%s: cannot load: %s",
                                     t->ca[0] ? t->ca : "system store",
                                     e ? ERR_reason_error_string(e) : "unknown error");
            ERR_clear_error();
            goto fail;
        }
    }
    if (t->sni[0]) {
        cl->sni = strdup(t->sni);
        if (!cl->sni)
            goto fail;
    } else {
        char host[256];
        uint16_t port;
        if (tether_config_split_address(b->address, host, sizeof(host), &port) == 0)
            cl->ip = strdup(host);
    }
    return cl;
fail:
    tether_tls_client_free(cl);
    return NULL;
}

void tether_tls_client_free(struct tether_tls_client *cl)
{
    if (!cl)
        return;
    SSL_CTX_free(cl->ctx);
    free(cl->sni);
    free(cl->ip);
    free(cl);
}

SSL *tether_tls_client_ssl(struct tether_tls_client *cl)
{
    SSL *ssl = SSL_new(cl->ctx);
    if (!ssl)
        return NULL;
    if (cl->sni && SSL_set_tlsext_host_name(ssl, cl->sni) != 1)
        goto fail;
    if (cl->verify) {
        X509_VERIFY_PARAM *vp = SSL_get0_param(ssl);
        int ok = cl->sni  ? X509_VERIFY_PARAM_set1_host(vp, cl->sni, 0)
                 : cl->ip ? X509_VERIFY_PARAM_set1_ip_asc(vp, cl->ip)
                          : 1;
        if (ok != 1)
            goto fail;
    }
    return ssl;
fail:
    ERR_clear_error();
    SSL_free(ssl);
    return NULL;
}

const char *tether_tls_verify_error(const SSL *ssl)
{
    long r = SSL_get_verify_result(ssl);
    return r == X509_V_OK ? NULL : X509_verify_cert_error_string(r);
}
