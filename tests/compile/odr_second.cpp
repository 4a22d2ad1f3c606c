// The second TU of the ODR check (see alone.cpp).
#include "reactor.hpp"

int odrSecond() {
    reactor::Clock clock;
    int value = 0;
    clock.callLater(1, [&] { value = 42; });
    clock.advance(1);
    return value;
}
