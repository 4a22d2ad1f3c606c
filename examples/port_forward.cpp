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
#include <cstdio>
#include <cstdlib>
#include <string>

#include "reactor.hpp"

struct Relay;

// The outgoing half: connects to the target and relays back to the client.
struct Outgoing : reactor::Protocol {
    Relay* peer = nullptr;
    void connectionMade() override;
    void dataReceived(std::string_view data) override;
    void connectionLost(const reactor::Failure&) override;
};

// The incoming half: one per client connection.
struct Relay : reactor::Protocol {
    reactor::Reactor* r = nullptr;
    std::string host;
    std::uint16_t port = 0;
    Outgoing* peer = nullptr;
    std::string early;  // bytes that arrived before the target answered

    // A client factory per relay, owned by its connector (the shared_ptr
    // overload of connectTCP), so it lives exactly as long as it is needed.
    struct Connect : reactor::ClientFactory {
        Relay* relay = nullptr;
        std::unique_ptr<reactor::Protocol> buildProtocol(const reactor::Address&) override {
            auto p = std::make_unique<Outgoing>();
            p->peer = relay;
            relay->peer = p.get();
            return p;
        }
        void clientConnectionFailed(reactor::IConnector&, const reactor::Failure& why) override {
            std::printf("cannot reach target: %s\n", why.getErrorMessage().c_str());
            if (relay) relay->transport->loseConnection();
        }
    };
    std::shared_ptr<Connect> outgoing;
    std::shared_ptr<reactor::IConnector> connector;

    void connectionMade() override {
        transport->pauseProducing();  // read nothing until the target is connected
        outgoing = std::make_shared<Connect>();
        outgoing->relay = this;
        connector = r->connectTCP(host, port, outgoing);
    }
    void dataReceived(std::string_view data) override {
        if (peer)
            peer->transport->write(data);
        else
            early.append(data);
    }
    void connectionLost(const reactor::Failure&) override {
        outgoing->relay = nullptr;
        if (peer) {
            peer->peer = nullptr;
            peer->transport->unregisterProducer();
            peer->transport->loseConnection();
        } else {
            connector->disconnect();  // still connecting: give up
        }
    }
};

void Outgoing::connectionMade() {
    // Each transport consumes from the other: a full buffer on one side
    // pauses reading on the other.
    transport->registerProducer(peer->transport, true);
    peer->transport->registerProducer(transport, true);
    if (!peer->early.empty()) transport->write(peer->early);
    peer->early.clear();
    peer->transport->resumeProducing();
}
void Outgoing::dataReceived(std::string_view data) {
    if (peer) peer->transport->write(data);
}
void Outgoing::connectionLost(const reactor::Failure&) {
    if (peer) {
        peer->peer = nullptr;
        peer->transport->unregisterProducer();
        peer->transport->loseConnection();
    }
}

struct RelayFactory : reactor::Factory {
    reactor::Reactor& r;
    std::string host;
    std::uint16_t port;
    RelayFactory(reactor::Reactor& reactor, std::string h, std::uint16_t p) : r(reactor), host(std::move(h)), port(p) {}
    std::unique_ptr<reactor::Protocol> buildProtocol(const reactor::Address&) override {
        auto p = std::make_unique<Relay>();
        p->r = &r;
        p->host = host;
        p->port = port;
        return p;
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
