/* Private to the tls module. */
#ifndef TETHER_TLS_INT_H
#define TETHER_TLS_INT_H

#include <stdbool.h>

#include "tether/tls.h"

/* Use the shared, rotating ticket keys in ctx (the first call makes a key). Returns 0 or -1. */
int tls_tickets_attach(SSL_CTX *ctx);

#endif
