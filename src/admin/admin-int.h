/* Private to the admin module: the event buffer as the server reads it. */
#ifndef TETHER_ADMIN_INT_H
#define TETHER_ADMIN_INT_H

#include <stdint.h>
#include <stddef.h>

/* Events kept for subscribers that are behind. */
#define EVENTS_KEEP 4096

/* The server's wake fd (an eventfd): written when an event is published. */
void events_attach(int fd);
void events_subscribers(int delta);
/* The server is about to read what was published: the next publish wakes it again. */
void events_woken(void);

/*
 * Copy the event numbered seq (the first is 1) as "event: T\ndata: D\n\n"
 * into buf (malloc'd; *len set). Returns 1 copied, 0 not yet published,
 * -1 when it has been dropped (the caller skips to events_oldest()).
 */
int events_get(uint64_t seq, char **buf, size_t *len);
uint64_t events_next(void);   /* the number the next event will get */
uint64_t events_oldest(void); /* the oldest one kept */

#endif
