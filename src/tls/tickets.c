/*
 * Session ticket keys (RFC 5077 / RFC 8446 4.6.1), shared by every TLS
 * context and worker so a ticket issued by one is accepted by all, and
 * rotated on a timer: new tickets use the current key, the previous one
 * still decrypts (and is renewed) for one more period, older ones fall back
 * to a full handshake. Keys live only in memory.
 */
#include <pthread.h>
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include "tls-int.h"

struct ticket_key {
    unsigned char name[16];
    unsigned char aes[32];
    unsigned char hmac[32];
    bool valid;
};

/* [0] current, [1] previous; guarded by lock (read per handshake, written per rotation). */
static struct ticket_key keys[2];
static pthread_rwlock_t lock = PTHREAD_RWLOCK_INITIALIZER;
/* Fetched once: EVP_aes_256_cbc() would be looked up by name at every ticket. */
static EVP_CIPHER *aes;

static int fresh(struct ticket_key *k)
{
    if (RAND_bytes(k->name, sizeof(k->name)) != 1 || RAND_bytes(k->aes, sizeof(k->aes)) != 1 ||
        RAND_bytes(k->hmac, sizeof(k->hmac)) != 1)
        return -1;
    k->valid = true;
    return 0;
}

int tether_tls_tickets_rotate(void)
{
    struct ticket_key k;
    if (fresh(&k) < 0)
        return -1;
    pthread_rwlock_wrlock(&lock);
    keys[1] = keys[0];
    keys[0] = k;
    pthread_rwlock_unlock(&lock);
    OPENSSL_cleanse(&k, sizeof(k));
    return 0;
}

static int set_keys(const struct ticket_key *k, const unsigned char *iv, EVP_CIPHER_CTX *cctx,
                    EVP_MAC_CTX *hctx, int enc)
{
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_octet_string(OSSL_MAC_PARAM_KEY, (void *)k->hmac, sizeof(k->hmac)),
        OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, (char *)"SHA256", 0),
        OSSL_PARAM_construct_end(),
    };
    if (EVP_MAC_CTX_set_params(hctx, params) != 1)
        return -1;
    int ok = enc ? EVP_EncryptInit_ex(cctx, aes, NULL, k->aes, iv)
                 : EVP_DecryptInit_ex(cctx, aes, NULL, k->aes, iv);
    return ok == 1 ? 0 : -1;
}

/* SSL_CTX_set_tlsext_ticket_key_evp_cb: 1 ok, 2 ok and renew, 0 unknown key, -1 error. */
static int on_ticket(SSL *ssl, unsigned char name[16], unsigned char *iv, EVP_CIPHER_CTX *cctx,
                     EVP_MAC_CTX *hctx, int enc)
{
    int rc = -1;
    pthread_rwlock_rdlock(&lock);
    if (enc) {
        if (keys[0].valid && RAND_bytes(iv, 16) == 1) {
            memcpy(name, keys[0].name, 16);
            rc = set_keys(&keys[0], iv, cctx, hctx, 1) == 0 ? 1 : -1;
        }
    } else {
        rc = 0;
        for (int i = 0; i < 2; i++) {
            if (keys[i].valid && memcmp(name, keys[i].name, 16) == 0) {
                /* 2 = renew: an old key's ticket, and every TLS 1.3 resumption
                   (a client keeps one ticket per connection, RFC 8446 C.4). */
                bool renew = i > 0 || SSL_version(ssl) == TLS1_3_VERSION;
                rc = set_keys(&keys[i], iv, cctx, hctx, 0) == 0 ? (renew ? 2 : 1) : -1;
                break;
            }
        }
    }
    pthread_rwlock_unlock(&lock);
    return rc;
}

static int first_rc;

static void first_key(void)
{
    aes = EVP_CIPHER_fetch(NULL, "AES-256-CBC", NULL);
    first_rc = aes ? tether_tls_tickets_rotate() : -1;
}

int tls_tickets_attach(SSL_CTX *ctx)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, first_key);
    if (first_rc < 0)
        return -1;
    return SSL_CTX_set_tlsext_ticket_key_evp_cb(ctx, on_ticket) == 1 ? 0 : -1;
}
