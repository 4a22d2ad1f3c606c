// Built with -fno-exceptions -fno-rtti: the core API compiles, runs, and
// reports misuse through the log hook instead of throwing.
#include "reactor.hpp"

#include <cstdio>

int main() {
    int logged = 0;
    reactor::setLogger([&](reactor::LogLevel, std::string_view) { ++logged; });
    reactor::Reactor r;
    int fired = 0;
    reactor::DelayedCall c = r.callLater(0, [&] {
        ++fired;
        r.stop();
    });
    r.run();
    c.cancel();  // misuse: already called -> logged, not thrown
    reactor::Failure f{reactor::error::ConnectionDone()};
    bool ok = fired == 1 && logged == 1 && f.check<reactor::error::ConnectionClosed>() &&
              !f.check<reactor::error::ConnectionLost>() && f.type() == "ConnectionDone";
    std::printf("no-exceptions build: %s\n", ok ? "ok" : "FAILED");
    return ok ? 0 : 1;
}
