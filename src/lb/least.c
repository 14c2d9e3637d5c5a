/*
 * Least-in-flight choice for requests that carry no session key: the up
 * backend with the fewest requests in flight per unit of weight. Pure: the
 * caller passes a snapshot of the counters.
 */
#include <assert.h>
#include <limits.h>

#include "tether/lb.h"

int tether_lb_least_inflight(const uint32_t *inflight, const uint32_t *weight,
                             const unsigned char *up, size_t n, size_t start)
{
    assert(n <= INT_MAX);
    if (n == 0)
        return -1;

    int best = -1;
    uint64_t best_inflight = 0, best_weight = 1;
    size_t i = start % n;
    for (size_t k = 0; k < n; k++, i = i + 1 == n ? 0 : i + 1) {
        if (!up[i] || weight[i] == 0)
            continue;
        /*
         * a/wa < b/wb  <=>  a*wb < b*wa: both products of two uint32_t fit
         * in 64 bits, so the comparison is exact. Strict, so the first in
         * rotated order wins a tie.
         */
        if (best < 0 || (uint64_t)inflight[i] * best_weight < best_inflight * weight[i]) {
            best = (int)i;
            best_inflight = inflight[i];
            best_weight = weight[i];
        }
    }
    return best;
}
