/* What every unit test's main() does: run its Check suite, exit 0 only if all passed. */
#ifndef TETHER_TESTS_UNIT_H
#define TETHER_TESTS_UNIT_H

#include <stdlib.h>

#include <check.h>

static inline int unit_run(Suite *s)
{
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}

#endif
