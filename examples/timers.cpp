// timers — the reactor's clock: callLater, cancel, reset, and repetition.
//
//   make && ./build/examples/timers
//
// One idea: nothing here blocks. Each callback schedules what happens next
// and returns at once; the reactor's loop decides when each one runs.
#include <cstdio>

#include "reactor.hpp"

int main() {
    reactor::Reactor r;
    const double start = r.seconds();
    auto say = [&](const char* what) { std::printf("%5.2fs  %s\n", r.seconds() - start, what); };

    // 1. A one-shot call.
    r.callLater(0.5, [&] { say("callLater(0.5): one-shot timer fired"); });

    // 2. A call we change our mind about: cancel() before it is due.
    reactor::DelayedCall doomed = r.callLater(0.7, [&] { say("this never prints"); });
    r.callLater(0.2, [&] {
        doomed.cancel();
        say("cancelled the 0.7s timer");
    });

    // 3. A deadline that keeps moving: reset() pushes it back, like an idle
    //    timeout that restarts whenever there is activity.
    reactor::DelayedCall idle = r.callLater(0.3, [&] { say("idle timeout (after two resets)"); });
    r.callLater(0.25, [&] { idle.reset(0.3); say("activity: idle timeout reset to +0.3s"); });
    r.callLater(0.5, [&] { idle.reset(0.3); say("activity: idle timeout reset to +0.3s"); });

    // 4. Repetition built from callLater: each tick schedules the next one.
    //    (task::LoopingCall packages this pattern.)
    int ticks = 0;
    std::function<void()> tick = [&] {
        ++ticks;
        std::printf("%5.2fs  tick %d\n", r.seconds() - start, ticks);
        if (ticks < 4)
            r.callLater(0.25, tick);
        else
            r.callLater(0.1, [&] { say("done, stopping"); r.stop(); });
    };
    r.callWhenRunning(tick);

    r.run();  // returns after stop() and the shutdown event
    return 0;
}
