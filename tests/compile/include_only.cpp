// Including the header costs nothing in an object that uses nothing of it:
// make compile-checks fails if this TU defines any reactor:: symbol (a
// vtable emitted because a class got a key function, a namespace-scope
// constant copied into every TU, ...).
#include "reactor.hpp"
