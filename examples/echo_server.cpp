// echo_server — the transport/protocol split in its smallest form.
//
//   make && ./build/examples/echo_server 8000        (0 or nothing: a free port)
//   then, in another terminal:  nc 127.0.0.1 8000
//
// One idea: you write a Protocol (what to do with bytes); a Factory makes one
// per connection; the reactor owns the sockets and calls your methods:
//   buildProtocol -> makeConnection -> connectionMade -> dataReceived... -> connectionLost
#include <cstdio>
#include <cstdlib>

#include "reactor.hpp"

// One Echo object per connection. It never touches a socket: it only sees
// its transport, which is why the same class also runs on a StringTransport
// in tests.
struct Echo : reactor::Protocol {
    void connectionMade() override {
        std::printf("connection from %s\n", transport->getPeer().str().c_str());
    }
    void dataReceived(std::string_view data) override {
        transport->write(data);  // queued; the reactor sends it when the socket can take it
    }
    void connectionLost(const reactor::Failure& reason) override {
        std::printf("connection closed: %s\n", reason.getErrorMessage().c_str());
    }
};

int main(int argc, char** argv) {
    auto port = static_cast<std::uint16_t>(argc > 1 ? std::atoi(argv[1]) : 0);

    reactor::Reactor r;
    auto factory = reactor::Factory::forProtocol<Echo>();  // "make an Echo for each connection"
    reactor::ListeningPort listening = r.listenTCP(port, factory);
    std::printf("echo server listening on %s\n", listening.getHost().str().c_str());
    std::fflush(stdout);

    r.run(true);  // Ctrl-C stops it cleanly
    return 0;
}
