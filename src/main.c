/*
 * tetherd: load and check the configuration, start the workers, the health
 * checker and the admin API, and turn signals into actions: SIGHUP reloads
 * the file (as POST /api/v1/reload does), SIGTERM/SIGINT stop gracefully
 * (in-flight requests finish, up to shutdown_timeout), SIGUSR1 reopens the
 * access log.
 */
#include <errno.h>
#include <getopt.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <event2/event.h>

#include "tether/config.h"
#include "tether/admin.h"
#include "tether/health.h"
#include "tether/net.h"
#include "tether/proxy.h"
#include "tether/session.h"
#include "tether/state.h"
#include "tether/tls.h"
#include "tether/util.h"

struct daemon {
    struct event_base *base;
    const char *path;            /* the configuration file */
    struct tether_proxy *proxy;  /* owns the running config */
    struct tether_net *net;
    struct tether_health *health;
    struct tether_admin *admin;
    pthread_mutex_t reload_lock; /* SIGHUP and POST /api/v1/reload */
    uint64_t rotated_ms;         /* last ticket key rotation */
    uint64_t saved_ms;           /* last snapshot */
    struct tether_store *store;  /* state.store: redis */
};

/* Backend names by slot ("" for an empty one), for snapshots. */
static const char **slot_names(struct tether_proxy *p, size_t *n)
{
    *n = atomic_load(&p->nbackends);
    const char **names = calloc(*n ? *n : 1, sizeof(*names));
    for (size_t i = 0; names && i < *n; i++)
        names[i] = atomic_load(&p->backends[i].present) ? p->backends[i].name : "";
    return names;
}

/* Save the session table if a snapshot file is configured; logs the outcome. */
static void snapshot_save(struct daemon *d, bool final)
{
    const char *path = d->proxy->cfg->state.snapshot;
    if (!path[0] || d->store)
        return; /* with the redis store, Redis holds the sessions */
    size_t nnames;
    pthread_mutex_lock(&d->proxy->lock);
    const char **names = slot_names(d->proxy, &nnames);
    long n = names ? tether_state_snapshot_save(path, d->proxy->sessions, names, nnames) : -ENOMEM;
    pthread_mutex_unlock(&d->proxy->lock);
    free(names);
    if (n < 0)
        tether_log_error("snapshot %s: not saved: %s", path, strerror((int)-n));
    else if (final)
        tether_log_info("snapshot %s: %ld session%s saved", path, n, n == 1 ? "" : "s");
    else
        tether_log_debug("snapshot %s: %ld sessions saved", path, n);
}


static void usage(FILE *out)
{
    fprintf(out, "usage: tetherd [-c FILE] [-t] [-V] [-h]\n"
                 "  -c FILE  configuration file (default " TETHER_CONFIG_DEFAULT_PATH ")\n"
                 "  -t       check the configuration and exit (0: valid, 1: not)\n"
                 "  -V       print the version and exit\n"
                 "  -h       this help\n");
}

static void on_stop_signal(evutil_socket_t sig, short what, void *arg)
{
    struct daemon *d = arg;
    tether_log_info("%s: stopping: no new connections, finishing in-flight requests",
                    sig == SIGINT ? "SIGINT" : "SIGTERM");
    event_base_loopexit(d->base, NULL);
}

/* The shortest ticket_rotation of the TLS listeners, 0 when there is none. */
static uint64_t ticket_rotation_ms(const struct tether_config *cfg)
{
    uint64_t ms = 0;
    for (size_t i = 0; i < cfg->nlistens; i++) {
        const struct tether_config_listen_tls *t = cfg->listens[i].tls;
        if (t && (ms == 0 || t->ticket_rotation_ms < ms))
            ms = t->ticket_rotation_ms;
    }
    return ms;
}

/* Once a second: snapshots and ticket keys when due (a reload may change
   their intervals), drains. */
static void on_tick(evutil_socket_t fd, short what, void *arg)
{
    struct daemon *d = arg;
    const struct tether_config *cfg = d->proxy->cfg;
    uint64_t rot = ticket_rotation_ms(cfg), now = tether_now_ms();
    if (cfg->state.snapshot[0] && now - d->saved_ms >= cfg->state.snapshot_interval_ms) {
        d->saved_ms = now;
        snapshot_save(d, false);
    }
    if (rot && now - d->rotated_ms >= rot) {
        d->rotated_ms = now;
        if (tether_tls_tickets_rotate() < 0)
            tether_log_error("session ticket key rotation failed; the current key stays");
    }
    tether_proxy_drain_tick(d->proxy);
}

/*
 * A reload (SIGHUP, POST /api/v1/reload): the file is read and checked in
 * full first (syntax, values, files, certificates, new listen addresses);
 * only then do the proxy and the workers take it. On any error the
 * running configuration stays and rep->errors says why.
 */
static int reload(void *arg, struct tether_reload_report *rep)
{
    struct daemon *d = arg;
    pthread_mutex_lock(&d->reload_lock);
    struct tether_config_errors errs = {0};
    struct tether_config *ncfg = tether_config_load(d->path, &errs);
    if (ncfg && tether_tls_check(ncfg, &errs) > 0) {
        tether_config_free(ncfg);
        ncfg = NULL;
    }
    for (size_t i = 0; i < errs.n; i++) {
        const struct tether_config_error *e = &errs.items[i];
        if (e->warning)
            continue;
        bool key = e->key && e->key[0];
        if (e->line > 0)
            tether_strlist_addf(rep->errors, "%s:%d:%d: %s%s%s", d->path, e->line, e->col,
                                key ? e->key : "", key ? ": " : "", e->message);
        else
            tether_strlist_addf(rep->errors, "%s: %s%s%s", d->path, key ? e->key : "",
                                key ? ": " : "", e->message);
    }
    if (!ncfg && rep->errors->n == 0)
        tether_strlist_addf(rep->errors, "%s: cannot be loaded", d->path);
    tether_config_errors_deinit(&errs);
    int rc = -1;
    if (ncfg && tether_net_reload_prepare(d->net, ncfg, rep->changes, rep->errors) == 0) {
        if (tether_proxy_reload(d->proxy, ncfg, rep) == 0) {
            ncfg = NULL; /* the proxy's now */
            tether_net_reload_commit(d->net);
            tether_health_rescan(d->health);
            tether_log_set_level(d->proxy->cfg->log.level);
            rc = 0;
        } else {
            tether_net_reload_abort(d->net);
        }
    }
    tether_config_free(ncfg);
    if (rc == 0 && d->admin && d->proxy->cfg->admin.token_file)
        tether_admin_set_token(d->admin, d->proxy->cfg->admin.token_file);
    pthread_mutex_unlock(&d->reload_lock);
    return rc;
}

/* Log a reload's outcome, one line per item. */
static void report_log(const char *who, int rc, const struct tether_reload_report *rep)
{
    if (rc < 0) {
        for (size_t i = 0; i < rep->errors->n; i++)
            tether_log_error("%s: %s", who, rep->errors->v[i]);
        tether_log_error("%s: configuration not reloaded; the running one stays", who);
        return;
    }
    for (size_t i = 0; i < rep->changes->n; i++)
        tether_log_info("%s: %s", who, rep->changes->v[i]);
    for (size_t i = 0; i < rep->restart_required->n; i++)
        tether_log_warn("%s: %s", who, rep->restart_required->v[i]);
    for (size_t i = 0; i < rep->dropped->n; i++)
        tether_log_warn("%s: runtime change dropped: %s", who, rep->dropped->v[i]);
    tether_log_info("%s: configuration reloaded (%zu change%s)", who, rep->changes->n,
                    rep->changes->n == 1 ? "" : "s");
}

static int reload_logged(void *arg, struct tether_reload_report *rep)
{
    int rc = reload(arg, rep);
    report_log("reload", rc, rep);
    return rc;
}

static void on_usr1(evutil_socket_t sig, short what, void *arg)
{
    struct daemon *d = arg;
    if (tether_proxy_reopen_logs(d->proxy) == 0)
        tether_log_info("SIGUSR1: log files reopened");
}

static void on_hup(evutil_socket_t sig, short what, void *arg)
{
    struct tether_strlist l[4] = {{0}};
    struct tether_reload_report rep = {&l[0], &l[1], &l[2], &l[3]};
    report_log("SIGHUP", reload(arg, &rep), &rep);
    for (size_t i = 0; i < 4; i++)
        tether_strlist_clear(&l[i]);
}

/* Wait for the workers until the deadline, then make them stop. */
static void join_within(struct tether_net *net, uint64_t timeout_ms)
{
    struct timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += (time_t)(timeout_ms / 1000);
    deadline.tv_nsec += (long)(timeout_ms % 1000) * 1000000;
    if (deadline.tv_nsec >= 1000000000) {
        deadline.tv_sec++;
        deadline.tv_nsec -= 1000000000;
    }
    if (tether_net_join_until(net, &deadline) < 0) {
        tether_log_warn("shutdown_timeout reached: closing the remaining connections");
        tether_net_break(net);
        tether_net_join(net);
    }
}

int main(int argc, char **argv)
{
    const char *path = TETHER_CONFIG_DEFAULT_PATH;
    bool check = false;
    int opt;
    while ((opt = getopt(argc, argv, "c:tVh")) != -1) {
        switch (opt) {
        case 'c':
            path = optarg;
            break;
        case 't':
            check = true;
            break;
        case 'V':
            printf("tetherd %s\n", TETHER_VERSION_STRING);
            return 0;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (optind != argc) {
        usage(stderr);
        return 2;
    }

    struct tether_config_errors errs = {0};
    struct tether_config *cfg = tether_config_load(path, &errs);
    if (cfg && tether_tls_check(cfg, &errs) > 0) {
        tether_config_free(cfg);
        cfg = NULL;
    }
    tether_config_errors_print(&errs, path, stderr);
    tether_config_errors_deinit(&errs);
    if (check) {
        if (cfg)
            fprintf(stderr, "%s: configuration is valid\n", path);
        tether_config_free(cfg);
        return cfg ? 0 : 1;
    }
    if (!cfg)
        return 1;
    tether_log_set_level(cfg->log.level);
    signal(SIGPIPE, SIG_IGN);

    struct daemon d = {.path = path, .rotated_ms = tether_now_ms(), .saved_ms = tether_now_ms()};
    pthread_mutex_init(&d.reload_lock, NULL);
    int rc = 1;
    d.base = event_base_new();
    d.proxy = d.base ? tether_proxy_new(cfg) : NULL;
    if (!d.base)
        tether_config_free(cfg);
    if (!d.proxy)
        goto out;
    tether_proxy_observe_sessions(d.proxy);
    if (cfg->state.store == TETHER_STORE_REDIS) {
        /* Before the workers: each connects to Redis on its own loop. */
        d.store = tether_store_new(d.proxy);
        if (!d.store)
            goto out;
        d.proxy->store = d.store;
    }
    if (cfg->state.store == TETHER_STORE_MEMORY && cfg->state.snapshot[0]) {
        size_t nnames;
        const char **names = slot_names(d.proxy, &nnames);
        if (!names)
            goto out;
        char why[128];
        long n = tether_state_snapshot_load(cfg->state.snapshot, d.proxy->sessions, names, nnames,
                                            why, sizeof(why));
        free(names);
        if (n < 0)
            tether_log_error("snapshot %s: ignored: %s", cfg->state.snapshot, why);
        else if (n > 0)
            tether_log_info("snapshot %s: %ld session%s loaded", cfg->state.snapshot, n,
                            n == 1 ? "" : "s");
    }
    d.net = d.proxy ? tether_net_new(d.proxy) : NULL;
    if (!d.net)
        goto out;
    struct event *sigs[4] = {
        evsignal_new(d.base, SIGTERM, on_stop_signal, &d),
        evsignal_new(d.base, SIGINT, on_stop_signal, &d),
        evsignal_new(d.base, SIGHUP, on_hup, &d),
        evsignal_new(d.base, SIGUSR1, on_usr1, &d),
    };
    for (size_t i = 0; i < 4; i++)
        if (sigs[i])
            evsignal_add(sigs[i], NULL);
    struct event *rotation = NULL;
    struct timeval second = {1, 0};
    rotation = event_new(d.base, -1, EV_PERSIST, on_tick, &d);
    if (rotation)
        event_add(rotation, &second);
    int err = tether_net_start(d.net);
    if (err < 0) {
        tether_log_error("cannot start workers: %s", strerror(-err));
        tether_net_stop(d.net);
        tether_net_join(d.net);
        goto out_sigs;
    }
    d.health = tether_health_start(d.proxy);
    d.proxy->health = d.health;
    if (d.health && cfg->admin.enabled) {
        d.admin = tether_admin_start(d.proxy, cfg, reload_logged, &d);
        if (!d.admin) {
            tether_health_stop(d.health);
            d.health = NULL;
        }
    }
    if (!d.health) {
        tether_net_stop(d.net);
        tether_net_join(d.net);
        goto out_sigs;
    }
    tether_log_info("tetherd %s started: %u worker%s, %zu listener%s, %zu backend%s",
                    TETHER_VERSION_STRING, cfg->workers, cfg->workers == 1 ? "" : "s",
                    cfg->nlistens, cfg->nlistens == 1 ? "" : "s", cfg->nbackends,
                    cfg->nbackends == 1 ? "" : "s");
    event_base_dispatch(d.base);

    /* No checks, hence no moves, while the workers drain; no admin changes either. */
    atomic_store(&d.proxy->stopping, 1);
    tether_admin_stop(d.admin);
    d.proxy->health = NULL;
    tether_health_stop(d.health);
    tether_net_stop(d.net);
    join_within(d.net, d.proxy->cfg->shutdown_timeout_ms);
    snapshot_save(&d, true);
    tether_log_info("stopped");
    rc = 0;
out_sigs:
    if (rotation)
        event_free(rotation);
    for (size_t i = 0; i < 4; i++)
        if (sigs[i])
            event_free(sigs[i]);
out:
    tether_net_free(d.net);
    tether_store_free(d.store);
    tether_proxy_free(d.proxy);
    if (d.base)
        event_base_free(d.base);
    pthread_mutex_destroy(&d.reload_lock);
    return rc;
}
