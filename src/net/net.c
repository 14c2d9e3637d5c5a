/*
 * Worker threads and their listeners. Every worker owns an event_base, a
 * proxy worker and one SO_REUSEPORT socket per configured listen address:
 * the kernel balances accepted connections across workers, and no
 * connection ever changes thread. Stop and break requests from the main
 * thread reach a worker through an event activated on its base.
 */
#include <errno.h>
#include <fcntl.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/event.h>
#include <event2/listener.h>

#include "tether/net.h"
#include "tether/proxy.h"
#include "tether/util.h"

struct listener {
    struct worker *worker;
    struct evconnlistener *ev;
    size_t index; /* in cfg->listens */
};

struct worker {
    struct tether_net *net;
    int id;
    pthread_t thread;
    bool started;
    bool stopping;
    struct event_base *base;
    struct tether_proxy_worker *proxy;
    struct listener *listeners;
    size_t nlisteners;
    int wake[2]; /* pipe: the main thread writes a command byte */
    struct event *wake_ev;
    /* A reload's listeners for this worker: for each new listen entry, the
       old listener it keeps (>= 0) or a new socket (fd). */
    struct pending {
        ssize_t *keep;
        int *fd;
        size_t n;
    } pending;
    _Atomic int reloaded;
};

struct tether_net {
    struct tether_proxy *proxy; /* borrowed */
    struct worker *workers;
    size_t nworkers;
};

/*
 * Workers share each address through SO_REUSEPORT, which would also let a
 * second tetherd started by mistake take half the connections (and split
 * every session table). A bind without the option first fails if anyone
 * else holds the address.
 */
static int probe_free(const struct sockaddr_storage *ss, socklen_t len, const char *address)
{
    int fd = socket(ss->ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    int one = 1, rc = 0;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (ss->ss_family == AF_INET6)
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
    if (bind(fd, (const struct sockaddr *)ss, len) < 0) {
        rc = -errno;
        tether_log_error("listen %s: %s", address, strerror(-rc));
    }
    close(fd);
    return rc;
}

static int bind_socket(const char *address, bool first)
{
    struct sockaddr_storage ss;
    socklen_t len;
    if (tether_sockaddr_parse(address, &ss, &len) < 0) {
        tether_log_error("listen %s: not an IP address", address);
        return -EINVAL;
    }
    if (first) {
        int err = probe_free(&ss, len, address);
        if (err < 0)
            return err;
    }
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
    if (ss.ss_family == AF_INET6)
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
    if (bind(fd, (struct sockaddr *)&ss, len) < 0 || listen(fd, 1024) < 0) {
        int err = -errno;
        tether_log_error("listen %s: %s", address, strerror(-err));
        close(fd);
        return err;
    }
    return fd;
}

static void on_accept(struct evconnlistener *ev, evutil_socket_t fd, struct sockaddr *sa, int salen,
                      void *arg)
{
    struct listener *l = arg;
    tether_proxy_accept(l->worker->proxy, fd, sa, (socklen_t)salen, l->index);
}

static void on_accept_error(struct evconnlistener *ev, void *arg)
{
    int err = EVUTIL_SOCKET_ERROR();
    /* EMFILE and friends: the listener keeps going; say so once per event. */
    tether_log_warn("accept: %s", evutil_socket_error_to_string(err));
}

static void close_listeners(struct worker *wk)
{
    for (size_t i = 0; i < wk->nlisteners; i++) {
        if (wk->listeners[i].ev)
            evconnlistener_free(wk->listeners[i].ev);
        wk->listeners[i].ev = NULL;
    }
}

static void on_drained(void *arg)
{
    struct worker *wk = arg;
    event_base_loopexit(wk->base, NULL);
}

static void pending_clear(struct pending *pd, bool close_fds)
{
    for (size_t i = 0; close_fds && pd->fd && i < pd->n; i++)
        if (pd->fd[i] >= 0)
            close(pd->fd[i]);
    free(pd->keep);
    free(pd->fd);
    *pd = (struct pending){0};
}

/* In the worker's thread: take the new listener set and the new config. */
static void apply_reload(struct worker *wk)
{
    struct pending *pd = &wk->pending;
    if (!pd->keep) {
        atomic_store(&wk->reloaded, 1);
        return; /* nothing was prepared for this worker */
    }
    struct listener *nl = calloc(pd->n ? pd->n : 1, sizeof(*nl));
    if (!nl) {
        tether_log_error("worker %d: reload: out of memory; listeners unchanged", wk->id);
        pending_clear(pd, true);
    } else {
        for (size_t i = 0; i < pd->n; i++) {
            struct listener *l = &nl[i];
            l->worker = wk;
            l->index = i;
            if (pd->keep[i] >= 0) {
                l->ev = wk->listeners[pd->keep[i]].ev;
                wk->listeners[pd->keep[i]].ev = NULL;
            } else if (!wk->stopping) {
                l->ev = evconnlistener_new(wk->base, on_accept, l,
                                           LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC, -1,
                                           pd->fd[i]);
                if (!l->ev)
                    close(pd->fd[i]);
                pd->fd[i] = -1;
            }
            if (l->ev) {
                evconnlistener_set_cb(l->ev, on_accept, l);
                evconnlistener_set_error_cb(l->ev, on_accept_error);
            }
        }
        close_listeners(wk); /* the ones the new file does not name */
        free(wk->listeners);
        wk->listeners = nl;
        wk->nlisteners = pd->n;
        pending_clear(pd, true);
    }
    tether_proxy_worker_reload(wk->proxy);
    atomic_store(&wk->reloaded, 1);
}

/* Commands from the main thread; the bases are lock-free, so a pipe is the only way in. */
static void on_wake(evutil_socket_t fd, short what, void *arg)
{
    struct worker *wk = arg;
    char cmd[16];
    ssize_t n = read(fd, cmd, sizeof(cmd));
    for (ssize_t i = 0; i < n; i++) {
        if (cmd[i] == 'b') {
            event_base_loopbreak(wk->base);
        } else if (cmd[i] == 'r') {
            apply_reload(wk);
        } else if (cmd[i] == 's' && !wk->stopping) {
            wk->stopping = true;
            close_listeners(wk);
            tether_proxy_worker_stop(wk->proxy, on_drained, wk);
        }
    }
}

static void send_cmd(struct worker *wk, char cmd)
{
    ssize_t n = write(wk->wake[1], &cmd, 1);
    (void)n;
}

static void *run(void *arg)
{
    struct worker *wk = arg;
    event_base_dispatch(wk->base);
    return NULL;
}

static int worker_init(struct tether_net *net, struct worker *wk, int id)
{
    const struct tether_config *cfg = atomic_load(&net->proxy->cfg);
    wk->net = net;
    wk->id = id;
    /* One thread per base: no locks. The changelist folds an event removed
       and added again within one loop turn into no epoll_ctl at all. */
    struct event_config *ec = event_config_new();
    if (!ec)
        return -ENOMEM;
    event_config_set_flag(ec, EVENT_BASE_FLAG_NOLOCK | EVENT_BASE_FLAG_EPOLL_USE_CHANGELIST);
    wk->base = event_base_new_with_config(ec);
    event_config_free(ec);
    if (!wk->base)
        return -ENOMEM;
    if (pipe2(wk->wake, O_NONBLOCK | O_CLOEXEC) < 0)
        return -errno;
    wk->proxy = tether_proxy_worker_new(net->proxy, wk->base, id);
    wk->wake_ev = event_new(wk->base, wk->wake[0], EV_READ | EV_PERSIST, on_wake, wk);
    wk->listeners = calloc(cfg->nlistens, sizeof(*wk->listeners));
    if (!wk->proxy || !wk->wake_ev || !wk->listeners || event_add(wk->wake_ev, NULL) < 0)
        return -ENOMEM;
    wk->nlisteners = cfg->nlistens;
    for (size_t i = 0; i < cfg->nlistens; i++) {
        int fd = bind_socket(cfg->listens[i].address, id == 0);
        if (fd < 0)
            return fd;
        struct listener *l = &wk->listeners[i];
        l->worker = wk;
        l->index = i;
        l->ev = evconnlistener_new(wk->base, on_accept, l,
                                   LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC, -1, fd);
        if (!l->ev) {
            close(fd);
            return -ENOMEM;
        }
        evconnlistener_set_error_cb(l->ev, on_accept_error);
    }
    return 0;
}

struct tether_net *tether_net_new(struct tether_proxy *proxy)
{
    struct tether_net *net = calloc(1, sizeof(*net));
    if (!net)
        return NULL;
    net->proxy = proxy;
    net->nworkers = atomic_load(&proxy->cfg)->workers;
    net->workers = calloc(net->nworkers, sizeof(*net->workers));
    if (!net->workers)
        goto fail;
    for (size_t i = 0; i < net->nworkers; i++)
        net->workers[i].wake[0] = net->workers[i].wake[1] = -1;
    for (size_t i = 0; i < net->nworkers; i++) {
        int err = worker_init(net, &net->workers[i], (int)i);
        if (err < 0) {
            if (err != -EINVAL && err != -EADDRINUSE)
                tether_log_error("worker %zu: %s", i, strerror(-err));
            goto fail;
        }
    }
    return net;
fail:
    tether_net_free(net);
    return NULL;
}

int tether_net_start(struct tether_net *net)
{
    for (size_t i = 0; i < net->nworkers; i++) {
        struct worker *wk = &net->workers[i];
        int err = pthread_create(&wk->thread, NULL, run, wk);
        if (err)
            return -err;
        wk->started = true;
    }
    return 0;
}

void tether_net_stop(struct tether_net *net)
{
    for (size_t i = 0; i < net->nworkers; i++)
        send_cmd(&net->workers[i], 's');
}

void tether_net_break(struct tether_net *net)
{
    for (size_t i = 0; i < net->nworkers; i++)
        send_cmd(&net->workers[i], 'b');
}

void tether_net_join(struct tether_net *net)
{
    for (size_t i = 0; i < net->nworkers; i++) {
        if (net->workers[i].started)
            pthread_join(net->workers[i].thread, NULL);
        net->workers[i].started = false;
    }
}

int tether_net_join_until(struct tether_net *net, const struct timespec *deadline)
{
    int rc = 0;
    for (size_t i = 0; i < net->nworkers; i++) {
        if (!net->workers[i].started)
            continue;
        if (pthread_timedjoin_np(net->workers[i].thread, NULL, deadline) == 0)
            net->workers[i].started = false;
        else
            rc = -ETIMEDOUT;
    }
    return rc;
}

void tether_net_free(struct tether_net *net)
{
    if (!net)
        return;
    for (size_t i = 0; net->workers && i < net->nworkers; i++) {
        struct worker *wk = &net->workers[i];
        pending_clear(&wk->pending, true);
        if (wk->listeners) {
            close_listeners(wk);
            free(wk->listeners);
        }
        tether_proxy_worker_free(wk->proxy);
        if (wk->wake_ev)
            event_free(wk->wake_ev);
        if (wk->wake[0] >= 0) {
            close(wk->wake[0]);
            close(wk->wake[1]);
        }
        if (wk->base)
            event_base_free(wk->base);
    }
    free(net->workers);
    free(net);
}

/* The index of address in cfg's listen entries, or -1. */
static ssize_t find_listen(const struct tether_config *cfg, const char *address)
{
    struct sockaddr_storage a, b;
    socklen_t al, bl;
    if (tether_sockaddr_parse(address, &a, &al) < 0)
        return -1;
    for (size_t i = 0; i < cfg->nlistens; i++)
        if (tether_sockaddr_parse(cfg->listens[i].address, &b, &bl) == 0 && al == bl &&
            memcmp(&a, &b, al) == 0)
            return (ssize_t)i;
    return -1;
}

int tether_net_reload_prepare(struct tether_net *net, const struct tether_config *ncfg,
                              struct tether_strlist *changes, struct tether_strlist *errors)
{
    const struct tether_config *ocfg = atomic_load(&net->proxy->cfg);
    for (size_t w = 0; w < net->nworkers; w++) {
        struct pending *pd = &net->workers[w].pending;
        pending_clear(pd, true);
        pd->n = ncfg->nlistens;
        pd->keep = calloc(pd->n ? pd->n : 1, sizeof(*pd->keep));
        pd->fd = calloc(pd->n ? pd->n : 1, sizeof(*pd->fd));
        if (!pd->keep || !pd->fd)
            goto nomem;
        for (size_t i = 0; i < pd->n; i++)
            pd->fd[i] = -1;
        for (size_t i = 0; i < pd->n; i++) {
            pd->keep[i] = find_listen(ocfg, ncfg->listens[i].address);
            if (pd->keep[i] >= 0)
                continue;
            int fd = bind_socket(ncfg->listens[i].address, w == 0);
            if (fd < 0) {
                tether_strlist_addf(errors, "listen %s: %s", ncfg->listens[i].address,
                                    strerror(-fd));
                tether_net_reload_abort(net);
                return -1;
            }
            pd->fd[i] = fd;
        }
    }
    for (size_t i = 0; i < ncfg->nlistens; i++)
        if (find_listen(ocfg, ncfg->listens[i].address) < 0)
            tether_strlist_addf(changes, "listener %s added", ncfg->listens[i].address);
    for (size_t i = 0; i < ocfg->nlistens; i++)
        if (find_listen(ncfg, ocfg->listens[i].address) < 0)
            tether_strlist_addf(changes, "listener %s removed", ocfg->listens[i].address);
    return 0;
nomem:
    tether_strlist_addf(errors, "out of memory");
    tether_net_reload_abort(net);
    return -1;
}

void tether_net_reload_abort(struct tether_net *net)
{
    for (size_t w = 0; w < net->nworkers; w++)
        pending_clear(&net->workers[w].pending, true);
}

void tether_net_reload_commit(struct tether_net *net)
{
    for (size_t w = 0; w < net->nworkers; w++) {
        atomic_store(&net->workers[w].reloaded, 0);
        send_cmd(&net->workers[w], 'r');
    }
    /* Wait until every worker has taken it: the caller's answer describes
       what runs, and the next reload may not touch `pending` before. A
       worker only ends its loop on stop, and no reload runs after that. */
    for (unsigned i = 1;; i++) {
        size_t done = 0;
        for (size_t w = 0; w < net->nworkers; w++)
            done += atomic_load(&net->workers[w].reloaded) || !net->workers[w].started;
        if (done == net->nworkers)
            return;
        if (i == 200)
            tether_log_warn("reload: a worker has not taken the new configuration after 1s");
        usleep(5000);
    }
}
