/*
 * tether admin: the operator's side (DESIGN.md "Admin API and CLI"). An
 * HTTP/1.1 + JSON API served by evhttp on a thread of its own, so that no
 * admin request ever runs on a worker's loop, and the event stream it
 * serves: session created/moved/expired/ended and backend transitions,
 * published from any thread.
 */
#ifndef TETHER_ADMIN_H
#define TETHER_ADMIN_H

#include <stdbool.h>
#include <stddef.h>

struct tether_proxy;
struct tether_admin;
struct tether_config;
struct tether_strlist;

/*
 * Events. tether_events_wanted() is one relaxed load: publishers check it
 * before they format anything. data is one JSON object (copied); "ts_ms"
 * is added. A subscriber that falls more than the buffer behind loses the
 * oldest events and is told so. Thread: any.
 */
bool tether_events_wanted(void);
void tether_events_publish(const char *type, const char *data);

/*
 * Publish with the fields of a JSON object made by jansson's json_pack
 * format (e.g. "{s:s,s:s}", "backend", name, "reason", why); a no-op when
 * nobody listens.
 */
void tether_events_publishf(const char *type, const char *fmt, ...);

/*
 * What the admin API calls back into the daemon for: a reload (SIGHUP's
 * work), which fills errs (file:line:col: key: message) or the report.
 * Returns 0 when the new configuration runs.
 */
struct tether_reload_report {
    struct tether_strlist *changes, *restart_required, *dropped, *errors;
};
typedef int (*tether_admin_reload_fn)(void *ctx, struct tether_reload_report *rep);

/*
 * Start the admin API on cfg->admin.listen with the token from
 * cfg->admin.token_file. Returns NULL (after logging why) on failure.
 */
struct tether_admin *tether_admin_start(struct tether_proxy *proxy, const struct tether_config *cfg,
                                        tether_admin_reload_fn reload, void *reload_ctx);

/* Read the token file again (a reload). Returns 0 or -1 (the old token stays). */
int tether_admin_set_token(struct tether_admin *a, const char *token_file);

/* Stop the thread, close the listener and every event stream; accepts NULL. */
void tether_admin_stop(struct tether_admin *a);

#endif
