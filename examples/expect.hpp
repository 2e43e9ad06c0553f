// SPDX-License-Identifier: BSL-1.0
// EXPECT(cond): examples assert what they claim, in every build type (assert() vanishes in Release).
#pragma once

#include <cstdio>
#include <cstdlib>

#define EXPECT(cond)                                                                               \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            std::fprintf(stderr, "example failed: %s (line %d)\n", #cond, __LINE__);               \
            std::exit(1);                                                                          \
        }                                                                                          \
    } while (0)
