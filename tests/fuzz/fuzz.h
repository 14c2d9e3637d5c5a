/*
 * Shared by the fuzz targets and the replay driver: the libFuzzer entry
 * point, and a copy of the input placed flush against a PROT_NONE page so
 * that reading one byte past the end faults, under any compiler.
 */
#ifndef TETHER_FUZZ_H
#define TETHER_FUZZ_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* data[0..size) copied to end right at a guard page; valid until the next call. */
static inline const char *guard_copy(const uint8_t *data, size_t size)
{
    static char *map;
    static size_t cap; /* usable bytes before the guard page */
    size_t page = (size_t)sysconf(_SC_PAGESIZE);

    if (map == NULL || size > cap) {
        if (map != NULL)
            munmap(map, cap + page);
        cap = (size / page + 1) * page;
        map = mmap(NULL, cap + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (map == MAP_FAILED || mprotect(map + cap, page, PROT_NONE) != 0)
            abort();
    }
    if (size > 0)
        memcpy(map + cap - size, data, size);
    return map + cap - size;
}

#endif
