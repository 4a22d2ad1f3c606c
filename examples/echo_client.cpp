// echo_client — a client: connectProtocol, and stdin as a second event
// source in the same loop.
//
//   make && ./build/examples/echo_client 127.0.0.1 8000
//   printf 'one\ntwo\n' | ./build/examples/echo_client 127.0.0.1 8000
//   ./build/examples/echo_client unix:/tmp/echo.sock        (an endpoint string)
//
// One idea: a client is the same Protocol as a server. connectProtocol hands
// you the connected protocol in a Deferred; you own it (a shared_ptr), so it
// stays valid after the connection is gone.
//
// On Windows the reactor polls sockets only (WSAPoll): there a thread reads
// stdin and hands each chunk to the loop with callFromThread.
#if defined(_WIN32)
#include <thread>
#else
#include <unistd.h>
#endif

#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>

#include "reactor.hpp"

struct EchoClient : reactor::Protocol {
    reactor::Reactor& r;
    int outstanding = 0;  // bytes sent and not yet echoed back
    bool inputDone = false;
    explicit EchoClient(reactor::Reactor& reactor) : r(reactor) {}

    void connectionMade() override {
        std::printf("connected to %s; type lines, Ctrl-D to finish\n", transport->getPeer().str().c_str());
        std::fflush(stdout);
#if defined(_WIN32)
        std::thread([this, &loop = r] {
            char buf[4096];
            for (;;) {
                std::size_t n = std::fread(buf, 1, sizeof buf, stdin);
                loop.callFromThread([this, chunk = std::string(buf, n)] { input(chunk); });
                if (n == 0) return;
            }
        }).detach();
#else
        // stdin is just another descriptor for the reactor to watch.
        r.addReader(STDIN_FILENO, [this] {
            char buf[4096];
            ssize_t n = ::read(STDIN_FILENO, buf, sizeof buf);
            input(std::string_view(buf, n > 0 ? static_cast<size_t>(n) : 0));
        });
#endif
    }
    /// A chunk of input; empty at its end.
    void input(std::string_view chunk) {
        if (inputDone || !transport) return;
        if (chunk.empty()) {  // end of input: close once the echoes are back
            stopInput();
            inputDone = true;
            if (outstanding == 0) transport->loseConnection();
            return;
        }
        outstanding += static_cast<int>(chunk.size());
        transport->write(chunk);
    }
    void stopInput() {
#if !defined(_WIN32)
        r.removeReader(STDIN_FILENO);
#endif
    }
    void dataReceived(std::string_view data) override {
        std::printf("server: %.*s", static_cast<int>(data.size()), data.data());
        std::fflush(stdout);
        outstanding -= static_cast<int>(data.size());
        if (inputDone && outstanding <= 0) transport->loseConnection();
    }
    void connectionLost(const reactor::Failure& reason) override {
        stopInput();
        std::printf("connection closed: %s\n", reason.getErrorMessage().c_str());
        r.stop();
    }
};

int main(int argc, char** argv) {
    if (argc != 2 && argc != 3) {
        std::fprintf(stderr, "usage: %s HOST PORT\n       %s ENDPOINT   (tcp:HOST:PORT, unix:PATH)\n", argv[0], argv[0]);
        return 2;
    }
    reactor::Reactor r;
    std::string where = argc == 3 ? std::string("tcp:") + argv[1] + ":" + argv[2] : argv[1];
    // IPv6 literals: the endpoint grammar needs their colons escaped.
    if (argc == 3 && std::string(argv[1]).find(':') != std::string::npos) {
        where = "tcp:host=";
        for (char c : std::string(argv[1])) where += c == ':' ? std::string("\\:") : std::string(1, c);
        where += std::string(":port=") + argv[2];
    }
    auto client = std::make_shared<EchoClient>(r);
    reactor::connectProtocol(*reactor::clientFromString(r, where), client)
        .addErrback([&](const reactor::Failure& reason) {
            std::printf("connection failed: %s\n", reason.getErrorMessage().c_str());
            r.stop();
            return std::shared_ptr<EchoClient>();
        });
    r.run(true);
    return 0;
}
