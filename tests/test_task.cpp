// The task module on a Clock (LoopingCall, deferLater), deferToThread on a
// real reactor, and a before-shutdown trigger that returns a Deferred.
#include <atomic>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "support.hpp"

using namespace reactor;

TEST_SUITE("task") {

TEST_CASE("LoopingCall: now=true calls at once, then every interval; stop fires the Deferred") {
    Clock clock;
    std::vector<double> calls;
    task::LoopingCall lc(clock, [&] { calls.push_back(clock.seconds()); });
    task::LoopingCall* stoppedWith = nullptr;
    lc.start(1.0).addCallback([&](task::LoopingCall* l) { stoppedWith = l; });
    CHECK(lc.running());
    CHECK(calls == std::vector<double>{0.0});
    clock.pump({1, 1, 1});
    CHECK(calls == std::vector<double>{0, 1, 2, 3});
    CHECK(lc.stop());
    CHECK(stoppedWith == &lc);
    CHECK_FALSE(lc.running());
    CHECK(clock.getDelayedCalls().empty());
}

TEST_CASE("LoopingCall: now=false waits one interval") {
    Clock clock;
    int n = 0;
    task::LoopingCall lc(clock, [&] { ++n; });
    lc.start(2.0, false);
    CHECK(n == 0);
    clock.advance(1.9);
    CHECK(n == 0);
    clock.advance(0.1);
    CHECK(n == 1);
    lc.stop();
}

TEST_CASE("LoopingCall skips missed intervals: interval 1, jump to 5.5, next call at 6.0") {
    Clock clock;
    std::vector<double> calls;
    task::LoopingCall lc(clock, [&] { calls.push_back(clock.seconds()); });
    lc.start(1.0);
    clock.advance(5.5);
    CHECK(calls == std::vector<double>{0.0, 5.5});
    REQUIRE(clock.getDelayedCalls().size() == 1);
    CHECK(clock.getDelayedCalls()[0].getTime() == doctest::Approx(6.0));
    clock.advance(0.5);
    CHECK(calls.back() == doctest::Approx(6.0));
    lc.stop();
}

TEST_CASE("LoopingCall: a Deferred-returning f delays the next call until it fires") {
    Clock clock;
    int n = 0;
    Deferred<void> pending;
    task::LoopingCall lc(clock, [&] {
        ++n;
        pending = Deferred<void>();
        return pending;
    });
    bool stopped = false;
    lc.start(1.0).addCallback([&](task::LoopingCall*) { stopped = true; });
    CHECK(n == 1);
    clock.advance(3);  // still waiting for the first Deferred
    CHECK(n == 1);
    CHECK(clock.getDelayedCalls().empty());
    pending.callback();  // at t=3: the next boundary strictly after now is 4
    clock.advance(1);
    CHECK(n == 2);
    lc.stop();  // while f's Deferred is pending: the loop finishes when it fires
    CHECK_FALSE(stopped);
    CHECK(clock.getDelayedCalls().empty());
    pending.callback();
    CHECK(stopped);
}

TEST_CASE("LoopingCall: f failing kills the loop and errbacks the start Deferred") {
    Clock clock;
    int n = 0;
    task::LoopingCall lc(clock, [&]() -> Result<void> {
        if (++n == 3) return Failure(error::ValueError("third call fails"));
        return {};
    });
    std::string error;
    lc.start(1.0).addErrback([&](Failure f) -> task::LoopingCall* {
        error = f.getErrorMessage();
        return nullptr;
    });
    clock.pump({1, 1, 1, 1});
    CHECK(n == 3);
    CHECK(error == "third call fails");
    CHECK_FALSE(lc.running());
    CHECK(clock.getDelayedCalls().empty());
}

#if REACTOR_HAS_EXCEPTIONS
TEST_CASE("LoopingCall: a throwing f kills the loop too; unobserved, it is logged") {
    test::LogCapture log;
    Clock clock;
    task::LoopingCall lc(clock, []() { throw error::ConnectionLost(); });
    lc.start(1.0);  // Deferred dropped: nobody observes the failure
    CHECK_FALSE(lc.running());
    CHECK(log.contains("Unhandled error in Deferred: ConnectionLost"));
}
#endif

TEST_CASE("LoopingCall: stop from inside f fires after f returns; reset restarts the interval") {
    Clock clock;
    int n = 0;
    task::LoopingCall* self = nullptr;
    task::LoopingCall lc(clock, [&] {
        if (++n == 2) self->stop();
    });
    self = &lc;
    bool stopped = false;
    lc.start(1.0).addCallback([&](task::LoopingCall*) { stopped = true; });
    clock.advance(1);
    CHECK(n == 2);
    CHECK(stopped);
    CHECK(clock.getDelayedCalls().empty());

    int m = 0;
    task::LoopingCall lr(clock, [&] { ++m; });
    lr.start(1.0, false);  // at t=1: next at 2
    clock.advance(0.5);
    lr.reset();  // t=1.5: next at 2.5
    clock.advance(0.9);
    CHECK(m == 0);
    clock.advance(0.1);
    CHECK(m == 1);
    lr.stop();
}

TEST_CASE("LoopingCall: start twice and a negative interval are errors; destruction cancels") {
    Clock clock;
    {
        task::LoopingCall lc(clock, [] {});
        lc.start(1.0);
        CHECK_MISUSE(lc.start(1.0), error::RuntimeError);
        task::LoopingCall neg(clock, [] {});
        CHECK_MISUSE(neg.start(-1), error::ValueError);
    }
    CHECK(clock.getDelayedCalls().empty());
}

TEST_CASE("LoopingCall: starting a running loop and stopping a stopped one are the same error") {
    // Twisted asserts in all three (AssertionError; RuntimeError here):
    //   c = task.Clock(); lc = task.LoopingCall(lambda: None); lc.clock = c
    //   lc.start(1); lc.start(1)  # Tried to start an already running LoopingCall.
    //   lc.stop(); lc.stop()      # Tried to stop a LoopingCall that was not running.
    //   lc.reset()                # Tried to reset a LoopingCall that was not running.
    //   lc2 = task.LoopingCall(lambda: 1/0); lc2.clock = c
    //   lc2.start(1).addErrback(...); lc2.stop()   # the same AssertionError
    Clock clock;
    task::LoopingCall lc(clock, [] {});
    CHECK_MISUSE(lc.stop(), error::RuntimeError);  // never started
    lc.start(1.0);
    CHECK_MISUSE_WITH(lc.start(1.0), error::RuntimeError, "Tried to start an already running LoopingCall.");
    CHECK(lc.running());
    CHECK(lc.stop());
    CHECK_MISUSE_WITH(lc.stop(), error::RuntimeError, "Tried to stop a LoopingCall that was not running.");
    CHECK_MISUSE_WITH(lc.reset(), error::RuntimeError, "Tried to reset a LoopingCall that was not running.");

    task::LoopingCall failing(clock, []() -> Result<void> { return Failure(error::ValueError("boom")); });
    std::string error;
    failing.start(1.0).addErrback([&](Failure f) -> task::LoopingCall* {
        error = f.type();
        return nullptr;
    });
    CHECK(error == "ValueError");
    CHECK_MISUSE(failing.stop(), error::RuntimeError);
    CHECK(clock.getDelayedCalls().empty());
}

TEST_CASE("deferLater fires with f() after the delay; cancel gives CancelledError and cancels the timer") {
    Clock clock;
    int got = 0;
    task::deferLater(clock, 2.0, [] { return 42; }).addCallback([&](int v) { got = v; });
    clock.advance(1.9);
    CHECK(got == 0);
    clock.advance(0.1);
    CHECK(got == 42);

    bool ran = false;
    std::string error;
    Deferred<void> d = task::deferLater(clock, 1.0, [&] { ran = true; });
    d.addErrback([&](Failure f) { error = f.type(); });
    CHECK(clock.getDelayedCalls().size() == 1);
    d.cancel();
    CHECK(error == "defer.CancelledError");
    CHECK(clock.getDelayedCalls().empty());
    clock.advance(5);
    CHECK_FALSE(ran);
}

}  // TEST_SUITE task

TEST_SUITE("threads") {

TEST_CASE("deferToThread: the value arrives on the reactor thread") {
    test::CleanReactor t;
    Reactor& r = t.r;
    const std::thread::id loop = std::this_thread::get_id();
    std::atomic<bool> ranOffLoop{false};
    int got = 0;
    bool onLoop = false;
    deferToThread(r, [&] {
        ranOffLoop = std::this_thread::get_id() != loop;
        return 6 * 7;
    }).addCallback([&](int v) {
        got = v;
        onLoop = std::this_thread::get_id() == loop;
    });
    CHECK(testing::runUntil(r, [&] { return got != 0; }));
    CHECK(got == 42);
    CHECK(ranOffLoop);
    CHECK(onLoop);
    r.getThreadPool().stop();
}

TEST_CASE("deferToThread takes a move-only function, as Twisted takes any callable") {
    // Before: "std::function target must be copy-constructible" (found by a
    // second reader).
    test::CleanReactor t;
    Reactor& r = t.r;
    auto owned = std::make_unique<int>(41);
    int got = 0;
    deferToThread(r, [p = std::move(owned)] { return *p + 1; }).addCallback([&](int v) { got = v; });
    bool ran = false;
    deferToThread(r, [p = std::make_unique<int>(1)] { (void)p; }).addCallback([&] { ran = true; });
    CHECK(testing::runUntil(r, [&] { return got != 0 && ran; }));
    CHECK(got == 42);
    r.getThreadPool().stop();
}

TEST_CASE("deferToThread: a returned Failure (and a throw) arrive as failures") {
    test::CleanReactor t;
    Reactor& r = t.r;
    std::string a, b;
    deferToThread(r, []() -> Result<int> { return Failure(error::ValueError("worker says no")); })
        .addErrback([&](Failure f) {
            a = f.getErrorMessage();
            return 0;
        });
#if REACTOR_HAS_EXCEPTIONS
    deferToThread(r, []() -> int { throw error::ConnectionLost(); }).addErrback([&](Failure f) {
        b = f.type();
        return 0;
    });
#else
    b = "ConnectionLost";
#endif
    CHECK(testing::runUntil(r, [&] { return !a.empty() && !b.empty(); }));
    CHECK(a == "worker says no");
    CHECK(b == "ConnectionLost");
    r.getThreadPool().stop();
}

TEST_CASE("deferToThread: many jobs, results all delivered") {
    test::CleanReactor t;
    Reactor& r = t.r;
    std::vector<Deferred<int>> ds;
    for (int i = 0; i < 100; ++i) ds.push_back(deferToThread(r, [i] { return i * i; }));
    std::vector<int> got;
    gatherResults(ds).addCallback([&](std::vector<int> v) { got = v; });
    CHECK(testing::runUntil(r, [&] { return !got.empty(); }));
    REQUIRE(got.size() == 100);
    CHECK(got[9] == 81);
    r.getThreadPool().stop();
}

}  // TEST_SUITE threads

TEST_SUITE("reactor") {

TEST_CASE("a before-shutdown trigger returning a Deferred delays shutdown until it fires") {
    test::CleanReactor t;
    Reactor& r = t.r;
    std::vector<std::string> order;
    r.addSystemEventTrigger("before", "shutdown", [&] {
        order.push_back("before");
        return task::deferLater(r, 0.01, [&] { order.push_back("deferred fired"); });
    });
    r.addSystemEventTrigger("during", "shutdown", [&] { order.push_back("during"); });
    r.callWhenRunning([&] { r.stop(); });
    r.run();
    CHECK(order == std::vector<std::string>{"before", "deferred fired", "during"});
}

}  // TEST_SUITE reactor

TEST_SUITE("task") {

TEST_CASE("LoopingCall::reset from inside f does not double the loop (Twisted: a no-op there)") {
    Clock clock;
    int calls = 0;
    task::LoopingCall* self = nullptr;
    task::LoopingCall lc(clock, [&] {
        if (++calls == 1) self->reset();
    });
    self = &lc;
    lc.start(1.0);
    clock.pump(std::vector<double>(10, 1.0));
    CHECK(calls == 11);  // once at start, then once per second
    CHECK(clock.getDelayedCalls().size() == 1);
    lc.stop();
}

TEST_CASE("LoopingCall::reset between calls restarts the interval from now") {
    Clock clock;
    int calls = 0;
    task::LoopingCall lc(clock, [&] { ++calls; });
    lc.start(1.0, false);
    clock.advance(0.5);
    lc.reset();
    clock.advance(0.9);
    CHECK(calls == 0);
    clock.advance(0.1);
    CHECK(calls == 1);
    lc.stop();
}

TEST_CASE("LoopingCall: stop while f's Deferred is pending, then start again: one loop, both Deferreds fire") {
    Clock clock;
    int n = 0;
    Deferred<void> pending;
    task::LoopingCall lc(clock, [&] {
        ++n;
        pending = Deferred<void>();
        return pending;
    });
    bool firstStopped = false, secondStopped = false;
    lc.start(1.0).addCallback([&](task::LoopingCall*) { firstStopped = true; });
    CHECK(lc.stop());  // f's Deferred is pending: the first start() Deferred waits for it
    CHECK_FALSE(firstStopped);
    Deferred<void> old = pending;
    lc.start(1.0).addCallback([&](task::LoopingCall*) { secondStopped = true; });
    CHECK(n == 2);
    old.callback();  // the first generation's f finishes: its start() Deferred fires, nothing is scheduled
    CHECK(firstStopped);
    CHECK(clock.getDelayedCalls().empty());
    pending.callback();  // the second generation's f finishes: the next call is scheduled
    CHECK(clock.getDelayedCalls().size() == 1);
    CHECK_FALSE(secondStopped);
    lc.stop();
    CHECK(secondStopped);
    CHECK(clock.getDelayedCalls().empty());
    n = 0;
    for (int i = 0; i < 5; ++i) {
        clock.advance(1);
        if (!pending.called()) pending.callback();
    }
    CHECK(n == 0);
}

TEST_CASE("LoopingCall: f returning a DeferredList waits for the list") {
    Clock clock;
    int n = 0;
    std::vector<Deferred<int>> ms;
    task::LoopingCall lc(clock, [&] {
        ++n;
        ms = std::vector<Deferred<int>>(1);
        return DeferredList<int>(ms);
    });
    lc.start(1);
    clock.advance(3);
    CHECK(n == 1);
    ms[0].callback(0);
    clock.advance(1);
    CHECK(n == 2);
    lc.stop();
}

TEST_CASE("LoopingCall: when the next call cannot be scheduled the loop ends and the start() Deferred fails") {
    // Twisted chains cb and eb as two pairs (addCallback(cb).addErrback(eb)),
    // so a failure while rescheduling in cb reaches eb, which stops the loop
    // and errbacks the start() Deferred. Here callLater refuses a negative
    // interval (ValueError; logged as misuse without exceptions).
    test::LogCapture log;
    Clock clock;
    int calls = 0;
    task::LoopingCall lc(clock, [&] { ++calls; });
    std::string error;
    lc.start(1.0).addErrback([&](Failure f) -> task::LoopingCall* {
        error = f.type();
        return nullptr;
    });
    CHECK(calls == 1);
    lc.interval = -1;  // a public field: start() would have refused it
    clock.advance(1);
    CHECK(calls == 2);
    CHECK(error == "ValueError");
    CHECK_FALSE(lc.running());
    CHECK(clock.getDelayedCalls().empty());
    CHECK_FALSE(log.contains("Unhandled error"));  // the failure went to the start() Deferred
    CHECK_MISUSE(lc.stop(), error::RuntimeError);  // the loop has ended (Twisted asserts)
}

TEST_CASE("deferLater: destroying the clock with the call pending frees what f captures (no cycle)") {
    std::weak_ptr<int> weak;
    {
        Clock clock;
        auto big = std::make_shared<int>(1);
        weak = big;
        task::deferLater(clock, 10, [big] {});
    }
    CHECK(weak.expired());
}

namespace {
/// A connector that records what the factory asks of it (Twisted's own
/// tests use one like it).
class RecordingConnector : public IConnector {
public:
    enum class State { disconnected, connecting, connected };
    State state = State::connecting;
    std::vector<std::string> calls;

    void connect() override {
        calls.push_back("connect");
        state = State::connecting;
    }
    void disconnect() override { calls.push_back("disconnect"); }
    void stopConnecting() override {
        static const char* names[] = {"disconnected", "connecting", "connected"};
        calls.push_back(std::string("stopConnecting(") + names[static_cast<int>(state)] + ")");
        if (state != State::connecting) {
            detail::raise<error::NotConnectingError>();
            return;
        }
        state = State::disconnected;
    }
    bool isConnecting() const override { return state == State::connecting; }
    Address getDestination() const override { return Address{}; }
};
}  // namespace

TEST_CASE("ReconnectingClientFactory::stopTrying calls stopConnecting() as Twisted does") {
    // Twisted (a fake connector recording calls; jitter 0):
    //   f = ReconnectingClientFactory(); f.clock = task.Clock()
    //   c.state = "disconnected"; f.clientConnectionFailed(c, None)
    //   f.stopTrying(); clock.advance(100)  # ['stopConnecting(disconnected)'], no retry
    //   (retry fired first: clock.advance(100); f.stopTrying())
    //                                       # ['connect', 'stopConnecting(connecting)']
    //   (after a loss, reconnected: c.state = "connected"; f.stopTrying())
    //                                       # ['connect', 'stopConnecting(connected)']
    // Twisted ignores the NotConnectingError. Without exceptions the
    // factory asks isConnecting() first (the call would log a misuse).
    Clock clock;
    ReconnectingClientFactory f(clock);
    f.jitter = 0;
    auto c = std::make_shared<RecordingConnector>();
    const Failure reason{error::ConnectionRefusedError()};
    SUBCASE("a retry is pending: cancelled; the connector is told, and is not connecting") {
        c->state = RecordingConnector::State::disconnected;
        f.clientConnectionFailed(*c, reason);
        CHECK(clock.getDelayedCalls().size() == 1);
        f.stopTrying();
        clock.advance(100);
#if REACTOR_HAS_EXCEPTIONS
        CHECK(c->calls == std::vector<std::string>{"stopConnecting(disconnected)"});
#else
        CHECK(c->calls.empty());
#endif
    }
    SUBCASE("the retry is connecting: stopConnecting() stops it") {
        c->state = RecordingConnector::State::disconnected;
        f.clientConnectionFailed(*c, reason);
        clock.advance(100);
        f.stopTrying();
        CHECK(c->calls == std::vector<std::string>{"connect", "stopConnecting(connecting)"});
        f.clientConnectionFailed(*c, Failure(error::UserError()));  // what the stop reports: no retry
        CHECK(clock.getDelayedCalls().empty());
    }
    SUBCASE("connected again after a loss: told, NotConnectingError ignored") {
        c->state = RecordingConnector::State::disconnected;
        f.clientConnectionLost(*c, Failure(error::ConnectionLost()));
        clock.advance(100);
        c->state = RecordingConnector::State::connected;
        f.stopTrying();
#if REACTOR_HAS_EXCEPTIONS
        CHECK(c->calls == std::vector<std::string>{"connect", "stopConnecting(connected)"});
#else
        CHECK(c->calls == std::vector<std::string>{"connect"});
#endif
    }
    CHECK_FALSE(f.continueTrying);
    CHECK(clock.getDelayedCalls().empty());
}

}  // TEST_SUITE task
