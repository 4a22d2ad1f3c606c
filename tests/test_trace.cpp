// Trace mode: a scripted echo exchange on loopback, checked line by line.
#include <string>
#include <vector>

#include <stdexcept>

#include "support.hpp"

using namespace reactor;

namespace {
struct EchoProtocol : Protocol {
    void dataReceived(std::string_view data) override { transport->write(data); }
};
struct Greeter : Protocol {
    std::string* got = nullptr;
    void connectionMade() override { transport->write("hello, reactor"); }
    void dataReceived(std::string_view data) override {
        got->append(data);
        if (*got == "hello, reactor") transport->loseConnection();
    }
};
struct GreeterFactory : ClientFactory {
    std::string got;
    bool done = false;
    std::unique_ptr<Protocol> buildProtocol(const Address&) override {
        auto p = std::make_unique<Greeter>();
        p->got = &got;
        return p;
    }
    void clientConnectionLost(IConnector&, const Failure&) override { done = true; }
};

/// Protocols are named by their class when RTTI is on, else "Protocol".
std::string named(const char* cls) {
#if REACTOR_HAS_RTTI
    return cls;
#else
    (void)cls;
    return "Protocol";
#endif
}

bool anyLine(const std::vector<std::string>& lines, std::string_view needle) {
    for (auto& l : lines)
        if (l.find(needle) != std::string::npos) return true;
    return false;
}
}  // namespace

TEST_SUITE("trace") {

TEST_CASE("an echo exchange, traced: turns, ready fds, protocol callbacks, connections") {
    test::CleanReactor t;
    Reactor& r = t.r;
    std::vector<std::string> lines;
    r.setTracer([&](std::string_view line) { lines.emplace_back(line); });
    CHECK(r.tracing());
    auto echo = Factory::forProtocol<EchoProtocol>();
    ListeningPort port = r.listenTCP(0, echo, 50, "127.0.0.1");
    GreeterFactory client;
    r.connectTCP("127.0.0.1", port.getHost().port, client);
    auto bothClosed = [&] {
        int closed = 0;
        for (auto& l : lines) closed += l.find(".connectionLost(") != std::string::npos;
        return closed == 2;
    };
    REQUIRE(testing::runUntil(r, [&] { return client.done && bothClosed(); }));
    port.stopListening();
    CHECK(client.got == "hello, reactor");

    // One header per turn, events indented under it.
    // The backend's name: poll(), select() or epoll.
    CHECK(lines.front().rfind(std::string("turn 1: ") + detail::os::Poller::name + " waited", 0) == 0);
    CHECK(anyLine(lines, "descriptor ready"));
    CHECK(anyLine(lines, ": connected to 127.0.0.1:" + std::to_string(port.getHost().port) + " -> " + named("Greeter") +
                             ".connectionMade"));
    CHECK(anyLine(lines, ": connection from 127.0.0.1:"));
    CHECK(anyLine(lines, "-> " + named("EchoProtocol") + ".connectionMade"));
    CHECK(anyLine(lines, "readable -> " + named("EchoProtocol") + ".dataReceived(14 bytes)"));
    CHECK(anyLine(lines, "readable -> " + named("Greeter") + ".dataReceived(14 bytes)"));
    CHECK(anyLine(lines, "transport.write(14 bytes): sent at once"));
    CHECK(anyLine(lines, "closed -> " + named("Greeter") + ".connectionLost(ConnectionDone: Connection was closed cleanly.)"));
    CHECK(anyLine(lines, "closed -> " + named("EchoProtocol") +
                             ".connectionLost(ConnectionDone: Connection was closed cleanly.)"));
    for (auto& l : lines) {
        bool header = l.rfind("turn ", 0) == 0;
        bool event = l.rfind("  ", 0) == 0;
        CHECK_MESSAGE((header || event), l);
    }
}

TEST_CASE("timers, thread calls, foreign fds and Deferreds are traced") {
    test::CleanReactor t;
    Reactor& r = t.r;
    std::vector<std::string> lines;
    r.setTracer([&](std::string_view line) { lines.emplace_back(line); });
    bool fired = false, threadCall = false;
    Deferred<int> d;
    r.callLater(0, [&] {
        fired = true;
        d.callback(42);
    });
    r.callFromThread([&] { threadCall = true; });
    REQUIRE(testing::runUntil(r, [&] { return fired && threadCall; }));
    CHECK(anyLine(lines, "timer from "));
    CHECK(anyLine(lines, "test_trace.cpp:"));
    CHECK(anyLine(lines, " late"));
    CHECK(anyLine(lines, "1 call(s) from other threads"));
    CHECK(anyLine(lines, "Deferred fired with a value"));
    d.addCallback([](int v) { return v; });
}

namespace {
struct Lines : LineReceiver {
    void lineReceived(std::string_view) override { transport->loseConnection(); }
};
struct Bye : Protocol {
    void connectionMade() override { transport->write("bye\r\n"); }
};
}  // namespace

TEST_CASE("our own loseConnection is traced as such") {
    test::CleanReactor t;
    Reactor& r = t.r;
    std::vector<std::string> lines;
    r.setTracer([&](std::string_view line) { lines.emplace_back(line); });
    auto server = Factory::forProtocol<Lines>();
    ListeningPort port = r.listenTCP(0, server, 50, "127.0.0.1");
    auto client = ClientFactory::forProtocol<Bye>();
    r.connectTCP("127.0.0.1", port.getHost().port, client);
    REQUIRE(testing::runUntil(r, [&] { return anyLine(lines, named("Lines") + ".connectionLost"); }));
    port.stopListening();
    REQUIRE(testing::runUntilClean(r));
    CHECK(anyLine(lines, "transport.loseConnection(): closing once 0 buffered bytes are sent"));
}

TEST_CASE("a line over MAX_LENGTH is traced before lineLengthExceeded") {
    std::vector<std::string> lines;
    auto tracer = std::make_shared<const Tracer>([&](std::string_view line) { lines.emplace_back(line); });
    Lines p;
    p.MAX_LENGTH = 4;
    StringTransport st;
    p.makeConnection(&st);
    const std::shared_ptr<const Tracer>* previous = detail::activeTracer();
    detail::activeTracer() = &tracer;  // what a traced reactor turn publishes
    p.dataReceived("0123456789\r\n");
    detail::activeTracer() = previous;
    CHECK(anyLine(lines, "over MAX_LENGTH (4) -> " + named("Lines") + ".lineLengthExceeded"));
    CHECK(st.disconnecting);
}

// defects: core_trace_wake. A wait that ended on iterate()'s own time limit
// was reported as "a timer is due" when there was no timer at all.
TEST_CASE("the wake reason tells a due timer from the caller's time limit") {
    Reactor r;
    std::vector<std::string> lines;
    r.setTracer([&](std::string_view line) { lines.emplace_back(line); });
    r.iterate(0.02);  // no timer: the limit is iterate's own
    REQUIRE(lines.size() == 1);
    CHECK(anyLine(lines, "woke: timeout (the caller's time limit)"));
    lines.clear();
    DelayedCall late = r.callLater(10, [] {});
    r.iterate(0.02);  // a timer, but later than the limit
    CHECK(anyLine(lines, "woke: timeout (the caller's time limit)"));
    late.cancel();
    lines.clear();
    bool fired = false;
    r.callLater(0.01, [&] { fired = true; });
    r.iterate(5);  // the timer ends the wait
    CHECK(fired);
    CHECK(anyLine(lines, "woke: timeout (a timer is due)"));
}

// A tracer is an observer: replacing or clearing it from inside a trace
// line, or throwing from it, changes nothing else (before: a freed function
// ran on, an empty one threw bad_function_call when a Deferred fired later
// in the turn, and a throw left run() unusable; found by a second reader).
TEST_CASE("a tracer that replaces or clears itself, or throws, changes nothing else") {
    Reactor r;
    std::vector<std::string> lines;
    int replaced = 0;
    r.setTracer([&, name = std::string(64, 't')](std::string_view) {
        ++replaced;
        r.setTracer([&lines, name](std::string_view line) { lines.emplace_back(name.substr(0, 1) + std::string(line)); });
    });
    bool fired = false;
    r.callLater(0, [&] {
        r.setTracer(nullptr);  // mid-turn; the Deferred below fires after it
        Deferred<int> d;
        d.addCallback([&](int) { fired = true; });
        d.callback(1);
    });
    r.iterate(0);
    CHECK(replaced == 1);
    CHECK(fired);
    CHECK_FALSE(r.tracing());
#if REACTOR_HAS_EXCEPTIONS
    r.setTracer([](std::string_view) { throw std::runtime_error("tracer broke"); });
    bool ran = false;
    r.callLater(0, [&] {
        ran = true;
        r.stop();
    });
    r.run();
    CHECK(ran);
    r.callLater(0, [&] { r.stop(); });
    r.run();  // usable again
    r.setTracer(nullptr);
#endif
}

#if REACTOR_HAS_RTTI && defined(__GNUG__)
namespace {
template <class T>
struct Tagged : Protocol {};
}  // namespace

// The name in trace lines is the class's own, template arguments whole
// (before: cut at the last "::", inside them: "allocator<char> > >").
TEST_CASE("logPrefix names a class template's instance with its arguments") {
    Tagged<std::string> p;
    CHECK(p.logPrefix().rfind("Tagged<std::", 0) == 0);
    CHECK(p.logPrefix().back() == '>');
    CHECK(detail::unqualifiedName("a::b::Echo<x::Y, z::W<q::R>>") == "Echo<x::Y, z::W<q::R>>");
    CHECK(detail::unqualifiedName("Plain") == "Plain");
}
#endif

TEST_CASE("tracing off: nothing is produced and nothing is published") {
    Reactor r;
    CHECK_FALSE(r.tracing());
    r.iterate(0);
    CHECK(detail::activeTracer() == nullptr);
}

}  // TEST_SUITE trace
