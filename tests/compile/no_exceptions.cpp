// Built with -fno-exceptions -fno-rtti: the core API compiles, runs, and
// reports misuse through the log hook instead of throwing.
#include "reactor.hpp"

#include <cstdio>
#include <string>

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
    // A Deferred chain without exceptions: a callback fails by returning a
    // Failure, an errback recovers, the chain carries on.
    reactor::Deferred<int> d;
    int result = 0;
    std::string seen;
    d.addCallback([](int x) -> reactor::Result<int> {
         if (x > 1) return reactor::Failure(reactor::error::ValueError("too big"));
         return x;
     })
        .addCallback([](int x) { return x + 1000; })  // skipped: on the errback track
        .addErrback([&](const reactor::Failure& failure) -> reactor::Result<int> {
            seen = failure.type();
            if (!failure.check<reactor::error::ValueError>()) return failure;
            return -1;  // recovered
        })
        .addCallback([&](int x) { result = x * 2; });
    d.callback(5);
    d.callback(6);  // misuse: AlreadyCalledError -> logged, not thrown
    bool chainOk = result == -2 && seen == "ValueError" && logged == 2;

    bool ok = chainOk && fired == 1 && f.check<reactor::error::ConnectionClosed>() &&
              !f.check<reactor::error::ConnectionLost>() && f.type() == "ConnectionDone";
    std::printf("no-exceptions build: %s\n", ok ? "ok" : "FAILED");
    return ok ? 0 : 1;
}
