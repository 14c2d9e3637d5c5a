/* Private to the admin module: what server.c offers the endpoints. */
#ifndef TETHER_ADMIN_SERVER_INT_H
#define TETHER_ADMIN_SERVER_INT_H

#include <jansson.h>

#include "tether/admin.h"

struct evhttp_request;
struct tether_proxy;

/* Answer with body (its reference is taken; NULL = no body). */
void admin_reply_json(struct evhttp_request *req, int status, json_t *body);
/* Answer {"error": "..."} with status. */
void admin_error(struct evhttp_request *req, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* 405 with the Allow header (allow: "GET, HEAD", ...). */
void admin_not_allowed(struct evhttp_request *req, const char *allow);
/* The body as a JSON object, or NULL after answering 400. */
json_t *admin_body(struct evhttp_request *req);

/* handlers.c */
void admin_probe(struct tether_proxy *p, struct evhttp_request *req, bool ready);
void admin_route(struct tether_proxy *p, struct evhttp_request *req, const char *path,
                 tether_admin_reload_fn reload, void *reload_ctx);

/* metrics.c */
void admin_metrics(struct tether_proxy *p, struct evhttp_request *req);

#endif
