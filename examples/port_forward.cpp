// port_forward — a TCP proxy with flow control (producer/consumer).
//
//   make && ./build/examples/port_forward 9000 127.0.0.1 8000
//   (connections to port 9000 are relayed to 127.0.0.1:8000)
//
// One idea: backpressure. Each side registers the *other* side's transport
// as its producer. When a slow receiver lets our write buffer grow past the
// high-water mark, the transport pauses the producer — it stops reading from
// the fast sender — and resumes it once the buffer drains. Memory stays
// bounded however fast one side sends and however slowly the other reads.
//
// It is also half-close aware: when one side finishes sending, the proxy
// passes the end-of-stream on (loseWriteConnection) and keeps relaying the
// other direction until that one ends too.
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>

#include "reactor.hpp"

// One relayed connection has two halves, each a Protocol on its own
// transport; `Pipe` links them and outlives whichever half goes first.
struct Half;
struct Pipe {
    Half* client = nullptr;  // the accepted connection
    Half* server = nullptr;  // our connection to the target
    std::string early;       // client bytes that arrived before the target answered
    bool clientDone = false, serverDone = false, clientEof = false;
};

struct Half : reactor::Protocol {
    std::shared_ptr<Pipe> pipe;
    bool isClient = false;

    Half* other() const { return isClient ? pipe->server : pipe->client; }
    bool halfCloseable() const override { return true; }

    void dataReceived(std::string_view data) override {
        if (Half* o = other())
            o->transport->write(data);
        else
            pipe->early.append(data);  // only the client side can be early
    }
    // Our peer finished sending: pass the end-of-stream on.
    void readConnectionLost() override {
        (isClient ? pipe->clientDone : pipe->serverDone) = true;
        if (Half* o = other())
            o->transport->loseWriteConnection();
        else
            pipe->clientEof = true;  // forwarded once the target is connected
        if (pipe->clientDone && pipe->serverDone) {
            transport->loseConnection();
            if (Half* o = other()) o->transport->loseConnection();
        }
    }
    void connectionLost(const reactor::Failure&) override {
        (isClient ? pipe->client : pipe->server) = nullptr;
        if (Half* o = other()) {
            o->transport->unregisterProducer();  // we were its producer
            o->transport->loseConnection();      // after what it still has to send
        }
    }
};

// The server half: our connection to the target.
struct Target : Half {
    void connectionMade() override {
        Half* client = pipe->client;
        // Backpressure, both ways: a full buffer on one side pauses reading
        // on the other.
        transport->registerProducer(client->transport, true);
        client->transport->registerProducer(transport, true);
        if (!pipe->early.empty()) transport->write(pipe->early);
        pipe->early.clear();
        if (pipe->clientEof) transport->loseWriteConnection();
        client->transport->resumeProducing();
    }
};

// Connects to the target for one client. Owned by its connector (the
// shared_ptr overload of connectTCP), so it lives exactly as long as needed.
struct Connect : reactor::ClientFactory {
    std::shared_ptr<Pipe> pipe;
    std::unique_ptr<reactor::Protocol> buildProtocol(const reactor::Address&) override {
        if (!pipe->client) return nullptr;  // the client left while we were connecting
        auto target = std::make_unique<Target>();
        target->pipe = pipe;
        pipe->server = target.get();
        return target;
    }
    void clientConnectionFailed(reactor::IConnector&, const reactor::Failure& why) override {
        std::printf("cannot reach the target: %s\n", why.getErrorMessage().c_str());
        if (pipe->client) pipe->client->transport->loseConnection();
    }
};

// The client half: reads nothing until the target answers.
struct ClientHalf : Half {
    reactor::Reactor* r = nullptr;
    std::string host;
    std::uint16_t port = 0;
    void connectionMade() override {
        transport->pauseProducing();
        auto connect = std::make_shared<Connect>();
        connect->pipe = pipe;
        r->connectTCP(host, port, connect);
    }
};

struct RelayFactory : reactor::Factory {
    reactor::Reactor& r;
    std::string host;
    std::uint16_t port;
    RelayFactory(reactor::Reactor& reactor, std::string h, std::uint16_t p) : r(reactor), host(std::move(h)), port(p) {}
    std::unique_ptr<reactor::Protocol> buildProtocol(const reactor::Address&) override {
        auto half = std::make_unique<ClientHalf>();
        half->isClient = true;
        half->r = &r;
        half->host = host;
        half->port = port;
        half->pipe = std::make_shared<Pipe>();
        half->pipe->client = half.get();
        return half;
    }
};

int main(int argc, char** argv) {
    if (argc != 4) {
        std::fprintf(stderr, "usage: %s LISTEN_PORT HOST PORT\n", argv[0]);
        return 2;
    }
    reactor::Reactor r;
    RelayFactory factory(r, argv[2], static_cast<std::uint16_t>(std::atoi(argv[3])));
    auto listening = r.listenTCP(static_cast<std::uint16_t>(std::atoi(argv[1])), factory);
    std::printf("forwarding %s -> %s:%s\n", listening.getHost().str().c_str(), argv[2], argv[3]);
    std::fflush(stdout);
    r.run(true);
    return 0;
}
