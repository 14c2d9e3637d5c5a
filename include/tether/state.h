/*
 * tether state: sessions that outlive the process. The memory store keeps
 * the table in the process and, with state.snapshot set, saves it to a
 * file (every snapshot_interval and at shutdown) and loads it at start.
 * Backends are recorded by name, so a snapshot survives a reordered or
 * changed backend list (sessions of a backend that is gone are dropped).
 */
#ifndef TETHER_STATE_H
#define TETHER_STATE_H

#include <stddef.h>

struct tether_session_table;

/*
 * Save every session of t to path: written shard by shard (each shard's
 * lock held only while its records are copied out) to a temporary file in
 * the same directory, mode 0600, fsynced, then renamed over path. names[i]
 * is backend i's name. Returns the number of sessions saved, or -errno.
 * Thread: any one at a time.
 */
long tether_state_snapshot_save(const char *path, struct tether_session_table *t,
                                const char *const *names, size_t nnames);

/*
 * Load a snapshot into t. Returns the number of sessions loaded, 0 when
 * there is no file, or a negative value for a damaged or unreadable file
 * (bad magic, version, checksum or framing), with the reason in why: the
 * caller reports it and starts empty; nothing of a damaged file is used.
 */
long tether_state_snapshot_load(const char *path, struct tether_session_table *t,
                                const char *const *names, size_t nnames, char *why,
                                size_t whylen);

#endif
