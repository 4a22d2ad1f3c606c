// An implementation TU that reaches reactor.hpp through a project header
// first and defines REACTOR_IMPLEMENTATION after it: make compile-checks
// expects this TU to FAIL with a message that says to define it first, with
// and without REACTOR_WITH_IRC (with it, the check once missed the late
// definition and left 123 errors about incomplete internal classes).
#include "reactor.hpp"
#define REACTOR_IMPLEMENTATION
#include "reactor.hpp"
