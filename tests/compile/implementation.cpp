// The implementation TU of a separately compiled build (make compile-checks
// links it with alone.cpp and odr_second.cpp, all three built with
// -DREACTOR_SEPARATE_COMPILATION): the only place the library's bodies are
// compiled.
#define REACTOR_IMPLEMENTATION
#include "reactor.hpp"
