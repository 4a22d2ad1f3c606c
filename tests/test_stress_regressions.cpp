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

}  // TEST_SUITE stress-regressions
