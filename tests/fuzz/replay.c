/*
 * Replays every file of the corpus directories given as arguments through
 * LLVMFuzzerTestOneInput, so a fuzz target's corpus runs as an ordinary test
 * under any compiler: a crash or abort fails it.
 */
#include <dirent.h>
#include <stdio.h>

#include "fuzz.h"

/* The whole of path, in a malloc'd buffer; NULL on error. */
static uint8_t *slurp(const char *path, size_t *size)
{
    FILE *f = fopen(path, "rb");
    uint8_t *buf = NULL;
    long n = 0;

    if (f == NULL)
        return NULL;
    if (fseek(f, 0, SEEK_END) == 0 && (n = ftell(f)) >= 0 && fseek(f, 0, SEEK_SET) == 0 &&
        (buf = malloc((size_t)n + 1)) != NULL && fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        buf = NULL;
    }
    if (buf != NULL)
        *size = (size_t)n;
    fclose(f);
    return buf;
}

int main(int argc, char **argv)
{
    unsigned files = 0;
    int i;

    for (i = 1; i < argc; i++) {
        DIR *dir = opendir(argv[i]);
        struct dirent *e;

        if (dir == NULL) {
            perror(argv[i]);
            return 1;
        }
        while ((e = readdir(dir)) != NULL) {
            char path[4096];
            uint8_t *buf;
            size_t size;

            if (e->d_name[0] == '.')
                continue;
            snprintf(path, sizeof(path), "%s/%s", argv[i], e->d_name);
            if ((buf = slurp(path, &size)) == NULL) {
                perror(path);
                closedir(dir);
                return 1;
            }
            LLVMFuzzerTestOneInput(buf, size);
            free(buf);
            files++;
        }
        closedir(dir);
    }
    printf("%u inputs replayed\n", files);
    return files > 0 ? 0 : 1;
}
