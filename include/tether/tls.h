/*
 * tether tls: the OpenSSL side of a TLS listener. One context per
 * certificate, the first the default, SNI choosing among them by the names
 * of each certificate (SAN, exact or wildcard); TLS 1.2-1.3 only, Mozilla's
 * intermediate suites, ALPN http/1.1 (any other offer alone is refused with
 * no_application_protocol), no renegotiation, no compression.
 * A server context is built once and shared read-only by every worker.
 */
#ifndef TETHER_TLS_H
#define TETHER_TLS_H

#include <stddef.h>

#include <openssl/ssl.h>

#include "tether/config.h"

struct tether_tls_server;

/*
 * Build the TLS side of listen[index] (which must have a tls block).
 * Every problem found (unreadable file, bad PEM, a key that does not match
 * its certificate, an unusable cipher list) is appended to errs as an error
 * naming the file, at the line of its key; an expired or not yet valid
 * certificate is a warning. Returns NULL when any error was found.
 * Thread: any.
 */
struct tether_tls_server *tether_tls_server_new(const struct tether_config *cfg, size_t index,
                                                struct tether_config_errors *errs);

/* Frees a server context; accepts NULL. Connections hold their own references. */
void tether_tls_server_free(struct tether_tls_server *srv);

/* A new SSL object for an accepted connection (caller owns it), or NULL. Thread: any. */
SSL *tether_tls_server_ssl(struct tether_tls_server *srv);

/*
 * Replace the session ticket key: tickets of the key before it still
 * resume (and are renewed) until the next rotation. Every TLS context of
 * the process shares the keys. Returns 0 or -1. Thread: any.
 */
int tether_tls_tickets_rotate(void);

/*
 * Check every TLS listener of cfg as tetherd -t does, appending problems to
 * errs. Returns the number of errors added.
 */
int tether_tls_check(const struct tether_config *cfg, struct tether_config_errors *errs);



/*
 * The client side of TLS to one backend (backends[index].tls): TLS 1.2+,
 * ALPN http/1.1, and unless verify is false the peer's chain is checked
 * against ca (or the system store) and its name against sni, or against
 * the backend's IP address when sni is empty. Problems (an unreadable CA
 * file) are appended to errs. Returns NULL on failure. Thread: any.
 */
struct tether_tls_client;
struct tether_tls_client *tether_tls_client_new(const struct tether_config *cfg, size_t index,
                                                struct tether_config_errors *errs);
void tether_tls_client_free(struct tether_tls_client *cl);

/* A new SSL for one connection to the backend (caller owns it), or NULL. */
SSL *tether_tls_client_ssl(struct tether_tls_client *cl);

/* Why verification failed on ssl, or NULL when it did not. */
const char *tether_tls_verify_error(const SSL *ssl);
#endif
