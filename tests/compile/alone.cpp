// The header alone in a TU, built with every warning as an error, and linked
// with odr_second.cpp, which includes it too: nothing may be defined twice.
#include "reactor.hpp"

int odrSecond();

int main() {
    reactor::Reactor r;
    int fired = 0;
    r.callLater(0, [&] {
        ++fired;
        r.stop();
    });
    r.run();
    return (fired == 1 && odrSecond() == 42) ? 0 : 1;
}
