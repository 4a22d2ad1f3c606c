// Defects found by the randomized re-entrancy harness (tests/stress.cpp),
// each reduced to the smallest program that shows it. Suite
// "stress-regressions". The seed that found each one is in its comment.
#include <memory>
#include <string>

#include "support.hpp"

using namespace reactor;

namespace {

/// Counts what a protocol saw; outlives it.
struct Seen {
    int made = 0, lost = 0, destroyed = 0;
};

struct Counting : Protocol {
    std::shared_ptr<Seen> seen;
    explicit Counting(std::shared_ptr<Seen> s) : seen(std::move(s)) {}
    ~Counting() override { ++seen->destroyed; }
    void connectionMade() override { ++seen->made; }
    void connectionLost(const Failure&) override { ++seen->lost; }
};

}  // namespace

TEST_SUITE("stress-regressions") {

// Found by `stress --seed 1122` (and 1270) on d58a2b8, fixed in 47b130e: a server factory
// destroyed by the operations its own buildProtocol runs. The factory's
// destructor abandons its port, but TcpPort::doRead goes on with the
// protocol buildProtocol returned and links the new connection into the
// destroyed factory's list of users (Owned::useFactory): heap-use-after-free
// (ASan), then a connection that refers to a dead factory.
TEST_CASE("a server factory destroyed inside its own buildProtocol is never touched again") {
    struct SelfDestroying : Factory {
        std::unique_ptr<SelfDestroying>* owner = nullptr;
        std::shared_ptr<Seen> seen = std::make_shared<Seen>();
        std::unique_ptr<Protocol> buildProtocol(const Address&) override {
            auto p = std::make_unique<Counting>(seen);
            owner->reset();  // e.g. a one-shot service that tears itself down
            return p;
        }
    };
    test::LogCapture logs;
    test::CleanReactor t;
    Reactor& r = t.r;
    auto server = std::make_unique<SelfDestroying>();
    server->owner = &server;
    std::shared_ptr<Seen> seen = server->seen;
    ListeningPort port = r.listenTCP(0, *server, 50, "127.0.0.1");
    ClientFactory client = ClientFactory::forProtocol<Protocol>();
    r.connectTCP("127.0.0.1", port.getHost().port, client);
    REQUIRE(testing::runUntil(r, [&] { return !server; }));
    CHECK_FALSE(port.listening());
    REQUIRE(testing::runUntilClean(r));
    // The protocol built for a factory that is gone: destroyed, and either
    // never connected or connected and lost, never half of it.
    CHECK(seen->destroyed == 1);
    CHECK(seen->made == seen->lost);
}

// The client side of the same defect (found with the harness's
// DESTROY_FACTORY operation): TcpConnector::connected goes on after
// buildProtocol destroyed the factory, links the connection into it and
// starts it.
TEST_CASE("a client factory destroyed inside its own buildProtocol is never touched again") {
    struct SelfDestroying : ClientFactory {
        std::unique_ptr<SelfDestroying>* owner = nullptr;
        std::shared_ptr<Seen> seen = std::make_shared<Seen>();
        std::unique_ptr<Protocol> buildProtocol(const Address&) override {
            auto p = std::make_unique<Counting>(seen);
            owner->reset();
            return p;
        }
    };
    test::CleanReactor t;
    Reactor& r = t.r;
    Factory server = Factory::forProtocol<Protocol>();
    ListeningPort port = r.listenTCP(0, server, 50, "127.0.0.1");
    auto client = std::make_unique<SelfDestroying>();
    client->owner = &client;
    std::shared_ptr<Seen> seen = client->seen;
    r.connectTCP("127.0.0.1", port.getHost().port, *client);
    REQUIRE(testing::runUntil(r, [&] { return !client; }));
    port.stopListening();
    REQUIRE(testing::runUntil(r, [&] { return seen->destroyed == 1 && r.selectables().empty(); }));
    CHECK(seen->made == seen->lost);
}

// Found by `stress --seed 20287` (its BULK operation) on dbff391, and by
// reasoning about d58a2b8's new default, "with no producer, unsent output
// over the high-water mark pauses reading until it drains". Both ends of a
// connection send megabytes at once (a sync, a proxy, any bulk exchange)
// and both read everything they get: each one's unsent output passes the
// high-water mark at its first write, so each stops reading; then neither
// kernel buffer drains and nothing moves again. Deadlock, with both
// protocols doing everything right (Twisted reads on, and completes). On
// loopback it takes more than the socket buffers hold (4 MiB here with
// net.ipv4.tcp_rmem's 32 MiB ceiling; far less on a real network).
// It failed by its 5 s deadline on 47b130e. Fixed: only output that a
// dataReceived call takes over the mark pauses reading.
TEST_CASE("both ends send 16 MiB at once while reading: both get everything") {
    static constexpr std::size_t size = 16u << 20;
    struct Bulk : Protocol {
        std::size_t* got;
        explicit Bulk(std::size_t* g) : got(g) {}
        void connectionMade() override { transport->write(std::string(size, 'x')); }
        void dataReceived(std::string_view data) override { *got += data.size(); }
    };
    test::CleanReactor t;
    Reactor& r = t.r;
    std::size_t serverGot = 0, clientGot = 0;
    Factory server;
    server.protocol = [&] { return std::make_unique<Bulk>(&serverGot); };
    ListeningPort port = r.listenTCP(0, server, 50, "127.0.0.1");
    ClientFactory client;
    client.protocol = [&] { return std::make_unique<Bulk>(&clientGot); };
    r.connectTCP("127.0.0.1", port.getHost().port, client);
    CHECK(testing::runUntil(r, [&] { return serverGot == size && clientGot == size; }, 5.0));
    CHECK(serverGot == size);
    CHECK(clientGot == size);
    port.stopListening();
    r.disconnectAll();
}

// Found by `stress --seed 42338` (built with -fno-exceptions; any build
// replays it) on 3eb9899: the program hung in poll() with four timers
// pending. The Reactor's clock starts at 0 when it is made, and
// DelayedCall::delay() may move a call earlier (Twisted's semantics): one
// made in the first moments and delayed by more than its time left is due
// at a negative time. TimerQueue::nextTime() returns that time, and turn()
// takes any negative value for its "no timer" answer: poll() waits without
// limit (run() sleeps until some descriptor wakes it; iterate(t) waits all
// of t), and every timer behind it waits too. Twisted runs it at once:
//     dc = reactor.callLater(1.0, f); dc.delay(-2.0)   # f runs at once
TEST_CASE("a call delayed to before the reactor's clock began runs at once") {
    test::CleanReactor t;
    Reactor& r = t.r;
    bool fired = false;
    DelayedCall dc = r.callLater(1.0, [&] { fired = true; });
    dc.delay(-2.0);  // due at -1 on the reactor's clock: overdue
    CHECK(dc.getTime() < 0);
    const double start = r.seconds();
    r.iterate(5.0);  // returns as soon as something is due; it is
    CHECK(fired);
    CHECK(r.seconds() - start < 2.5);
}

}  // TEST_SUITE stress-regressions
