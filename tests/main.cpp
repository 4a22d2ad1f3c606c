// The doctest main: the only translation unit that defines it. It is also
// the one TU that compiles the library's bodies when the suite is built with
// -DREACTOR_SEPARATE_COMPILATION (make check's "separate" variant); in the
// default header-only build REACTOR_IMPLEMENTATION changes nothing.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>
#define REACTOR_IMPLEMENTATION
#include "reactor.hpp"
