// A module switch defined after the header was first included would be
// ignored by the include guard: make compile-checks expects this TU to FAIL
// with a message that says to define it first.
#include "reactor.hpp"
#define REACTOR_WITH_IRC
#include "reactor.hpp"

int main() {}
