// echo_client — a client: connectTCP, a ClientFactory, and stdin as a second
// event source in the same loop.
//
//   make && ./build/examples/echo_client 127.0.0.1 8000
//   printf 'one\ntwo\n' | ./build/examples/echo_client 127.0.0.1 8000
//
// One idea: a client is the same Protocol as a server; only the factory
// differs (a ClientFactory also hears about failed and lost connections).
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <string>

#include "reactor.hpp"

struct EchoClient : reactor::Protocol {
    reactor::Reactor* r = nullptr;
    int outstanding = 0;  // bytes sent and not yet echoed back
    bool inputDone = false;

    void connectionMade() override {
        std::printf("connected to %s; type lines, Ctrl-D to finish\n", transport->getPeer().str().c_str());
        std::fflush(stdout);
        // stdin is just another descriptor for the reactor to watch.
        r->addReader(STDIN_FILENO, [this] {
            char buf[4096];
            ssize_t n = ::read(STDIN_FILENO, buf, sizeof buf);
            if (n <= 0) {  // end of input: close once the echoes are back
                r->removeReader(STDIN_FILENO);
                inputDone = true;
                if (outstanding == 0) transport->loseConnection();
                return;
            }
            outstanding += static_cast<int>(n);
            transport->write(std::string_view(buf, static_cast<size_t>(n)));
        });
    }
    void dataReceived(std::string_view data) override {
        std::printf("server: %.*s", static_cast<int>(data.size()), data.data());
        std::fflush(stdout);
        outstanding -= static_cast<int>(data.size());
        if (inputDone && outstanding <= 0) transport->loseConnection();
    }
    void connectionLost(const reactor::Failure&) override { r->removeReader(STDIN_FILENO); }
};

struct EchoClientFactory : reactor::ClientFactory {
    reactor::Reactor& r;
    explicit EchoClientFactory(reactor::Reactor& reactor) : r(reactor) {}
    std::unique_ptr<reactor::Protocol> buildProtocol(const reactor::Address&) override {
        auto p = std::make_unique<EchoClient>();
        p->r = &r;
        return p;
    }
    void clientConnectionFailed(reactor::IConnector&, const reactor::Failure& reason) override {
        std::printf("connection failed: %s\n", reason.getErrorMessage().c_str());
        r.stop();
    }
    void clientConnectionLost(reactor::IConnector&, const reactor::Failure& reason) override {
        std::printf("connection closed: %s\n", reason.getErrorMessage().c_str());
        r.stop();
    }
};

int main(int argc, char** argv) {
    if (argc != 3) {
        std::fprintf(stderr, "usage: %s HOST PORT\n", argv[0]);
        return 2;
    }
    reactor::Reactor r;
    EchoClientFactory factory(r);
    r.connectTCP(argv[1], static_cast<std::uint16_t>(std::atoi(argv[2])), factory);
    r.run(true);
    return 0;
}
