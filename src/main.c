/*
 * tetherd: load and check the configuration, start the workers, and turn
 * signals into actions: SIGTERM/SIGINT stop gracefully (in-flight requests
 * finish, up to shutdown_timeout), SIGUSR1 reopens the access log.
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
#include "tether/health.h"
#include "tether/net.h"
#include "tether/proxy.h"
#include "tether/session.h"
#include "tether/state.h"
#include "tether/tls.h"
#include "tether/util.h"

struct daemon {
    struct event_base *base;
    struct tether_config *cfg;
    struct tether_proxy *proxy;
    struct tether_net *net;
    struct tether_health *health;
    struct tether_store *store;
    const char **names; /* backend names by index, for snapshots */
};

/* Save the session table if a snapshot file is configured; logs the outcome. */
static void snapshot_save(struct daemon *d, bool final)
{
    const char *path = d->cfg->state.snapshot;
    if (!path[0] || !d->names)
        return;
    long n = tether_state_snapshot_save(path, d->proxy->sessions, d->names, d->cfg->nbackends);
    if (n < 0)
        tether_log_error("snapshot %s: not saved: %s", path, strerror((int)-n));
    else if (final)
        tether_log_info("snapshot %s: %ld session%s saved", path, n, n == 1 ? "" : "s");
    else
        tether_log_debug("snapshot %s: %ld sessions saved", path, n);
}

static void on_snapshot(evutil_socket_t fd, short what, void *arg)
{
    snapshot_save(arg, false);
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

static void on_ticket_rotation(evutil_socket_t fd, short what, void *arg)
{
    if (tether_tls_tickets_rotate() < 0)
        tether_log_error("session ticket key rotation failed; the current key stays");
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

/* SIGHUP: certificates and keys are read again; the rest of the file is not (yet). */
static void on_hup(evutil_socket_t sig, short what, void *arg)
{
    struct daemon *d = arg;
    int n = tether_proxy_reload_certificates(d->proxy);
    if (n < 0)
        tether_log_error("SIGHUP: certificates not reloaded; the running ones stay");
    else
        tether_log_info("SIGHUP: certificates of %d TLS listener%s reloaded (other settings "
                        "need a restart in this version)",
                        n, n == 1 ? "" : "s");
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

    struct daemon d = {.cfg = cfg};
    int rc = 1;
    d.base = event_base_new();
    d.proxy = d.base ? tether_proxy_new(cfg) : NULL;
    if (d.proxy && cfg->state.store == TETHER_STORE_REDIS) {
        /* Before the workers: each connects to Redis on its own loop. */
        d.store = tether_store_new(d.proxy);
        if (!d.store)
            goto out;
        d.proxy->store = d.store;
    }
    if (d.proxy && cfg->state.store == TETHER_STORE_MEMORY && cfg->state.snapshot[0]) {
        d.names = calloc(cfg->nbackends, sizeof(*d.names));
        if (!d.names)
            goto out;
        for (size_t i = 0; i < cfg->nbackends; i++)
            d.names[i] = cfg->backends[i].name;
        char why[128];
        long n = tether_state_snapshot_load(cfg->state.snapshot, d.proxy->sessions, d.names,
                                            cfg->nbackends, why, sizeof(why));
        if (n < 0)
            tether_log_error("snapshot %s: ignored: %s", cfg->state.snapshot, why);
        else if (n > 0)
            tether_log_info("snapshot %s: %ld session%s loaded", cfg->state.snapshot, n,
                            n == 1 ? "" : "s");
    }
    d.net = d.proxy ? tether_net_new(d.proxy) : NULL;
    if (!d.net)
        goto out;
    struct event *sigs[3] = {
        evsignal_new(d.base, SIGTERM, on_stop_signal, &d),
        evsignal_new(d.base, SIGINT, on_stop_signal, &d),
        evsignal_new(d.base, SIGHUP, on_hup, &d),
    };
    for (size_t i = 0; i < 3; i++)
        if (sigs[i])
            evsignal_add(sigs[i], NULL);
    struct event *rotation = NULL, *snapshots = NULL;
    if (d.names) {
        uint64_t ms = cfg->state.snapshot_interval_ms;
        struct timeval tv = tether_timeval_ms(ms);
        snapshots = event_new(d.base, -1, EV_PERSIST, on_snapshot, &d);
        if (snapshots)
            event_add(snapshots, &tv);
    }
    uint64_t rot = ticket_rotation_ms(cfg);
    if (rot) {
        struct timeval tv = tether_timeval_ms(rot);
        rotation = event_new(d.base, -1, EV_PERSIST, on_ticket_rotation, NULL);
        if (rotation)
            event_add(rotation, &tv);
    }
    int err = tether_net_start(d.net);
    if (err < 0) {
        tether_log_error("cannot start workers: %s", strerror(-err));
        tether_net_stop(d.net);
        tether_net_join(d.net);
        goto out_sigs;
    }
    d.health = tether_health_start(d.proxy);
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

    /* No checks, hence no moves, while the workers drain. */
    tether_health_stop(d.health);
    tether_net_stop(d.net);
    join_within(d.net, cfg->shutdown_timeout_ms);
    snapshot_save(&d, true);
    tether_log_info("stopped");
    rc = 0;
out_sigs:
    if (rotation)
        event_free(rotation);
    if (snapshots)
        event_free(snapshots);
    for (size_t i = 0; i < 3; i++)
        if (sigs[i])
            event_free(sigs[i]);
out:
    tether_net_free(d.net);
    tether_store_free(d.store);
    tether_proxy_free(d.proxy);
    if (d.base)
        event_base_free(d.base);
    free(d.names);
    tether_config_free(cfg);
    return rc;
}
