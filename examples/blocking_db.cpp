// blocking_db — moving a blocking call off the loop with deferToThread.
//
//   make && ./build/examples/blocking_db
//
// One idea: a blocking call (here a pretend database query that takes one
// second) would freeze every timer and connection if it ran on the loop.
// deferToThread runs it on the reactor's thread pool and hands the result
// back as a Deferred whose callbacks run on the loop thread. Meanwhile a
// LoopingCall keeps ticking, showing that the loop never stopped.
#include <chrono>
#include <cstdio>
#include <string>
#include <thread>

#include "reactor.hpp"

// The "database": blocks its thread for a second. Never call this on the
// reactor thread. (Sleeping is fine here, in a worker.)
static std::string slowQuery(int userId) {
    std::this_thread::sleep_for(std::chrono::seconds(1));
    return "user " + std::to_string(userId) + " is called Ada";
}

int main() {
    reactor::Reactor r;
    const double start = r.seconds();

    // A heartbeat on the loop every 0.2 s.
    reactor::task::LoopingCall tick(r, [&] { std::printf("%5.2fs  tick (the loop is alive)\n", r.seconds() - start); });
    tick.start(0.2);

    r.callWhenRunning([&] {
        std::printf("%5.2fs  query sent to a worker thread\n", r.seconds() - start);
        reactor::deferToThread(r, [] { return slowQuery(7); })
            .addCallback([&](const std::string& row) {  // back on the loop thread
                std::printf("%5.2fs  query answered: %s\n", r.seconds() - start, row.c_str());
            })
            .addErrback([&](const reactor::Failure& f) {
                std::printf("query failed: %s\n", f.str().c_str());
            })
            .addBoth([&](reactor::Result<void>) {
                tick.stop();
                r.stop();
            });
    });

    r.run();
    return 0;
}
