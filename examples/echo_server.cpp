// echo_server — the transport/protocol split in its smallest form.
//
//   make && ./build/examples/echo_server 8000        (0 or nothing: a free port)
//   then, in another terminal:  nc 127.0.0.1 8000
//
// Where to listen can also be an endpoint string (Twisted's strports), so the
// same program serves TCP or a UNIX socket without a line changed:
//   ./build/examples/echo_server tcp:8000:interface=127.0.0.1
//   ./build/examples/echo_server unix:/tmp/echo.sock      (nc -U /tmp/echo.sock)
//
// One idea: you write a Protocol (what to do with bytes); a Factory makes one
// per connection; the reactor owns the sockets and calls your methods:
//   buildProtocol -> makeConnection -> connectionMade -> dataReceived... -> connectionLost
//
// And a second, at the end: past one core.
//   ./build/examples/echo_server 8000 --threads 4
// runs four reactors on four threads, each listening on port 8000 with
// ListenOptions::reusePort; the kernel spreads new connections between them.
// Nothing is shared between the reactors, so the Echo class does not change.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

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
    int port = 0, threads = 1;
    const char* endpoint = nullptr;
    for (int i = 1; i < argc; ++i) {
        if (std::strcmp(argv[i], "--threads") == 0 && i + 1 < argc) threads = std::max(1, std::atoi(argv[++i]));
        else if (std::strchr(argv[i], ':')) endpoint = argv[i];
        else port = std::atoi(argv[i]);
    }

    reactor::Reactor r;
    auto factory = reactor::Factory::forProtocol<Echo>();  // "make an Echo for each connection"
    reactor::ListeningPort listening;
    if (endpoint) {
        if (threads > 1) {
            std::fprintf(stderr, "--threads takes a port number, not an endpoint\n");
            return 2;
        }
        // A malformed string is refused at once (error::ValueError); a good
        // one listens and fires its Deferred with the port, or with the
        // reason it could not listen.
        std::shared_ptr<reactor::IStreamServerEndpoint> where;
        try {
            where = reactor::serverFromString(r, endpoint);
        } catch (const reactor::error::ValueError& e) {
            std::fprintf(stderr, "%s\n", e.what());
            return 2;
        }
        where->listen(factory).addCallbacks(
            [&](reactor::ListeningPort p) { listening = p; },
            [](const reactor::Failure& f) { std::fprintf(stderr, "%s\n", f.str().c_str()); });
        if (!listening) return 1;
    }
    reactor::ListenOptions options;
    options.reusePort = threads > 1;  // every socket sharing the port must ask
    if (!endpoint) listening = r.listenTCP(port, factory, options);
    std::printf("echo server listening on %s", listening.getHost().str().c_str());
    if (threads > 1) std::printf(" (%d reactors on %d threads share the port)", threads, threads);
    std::printf("\n");
    std::fflush(stdout);

    // A reactor per extra thread, each with its own factory and its own
    // socket on the same port number. A reactor belongs to the thread that
    // runs it: the main thread only ever reaches the others through
    // callFromThread, the one thread-safe method.
    std::vector<std::unique_ptr<reactor::Reactor>> others;
    std::vector<std::thread> running;
    for (int i = 1; i < threads; ++i) others.push_back(std::make_unique<reactor::Reactor>());
    for (auto& other : others) {
        running.emplace_back([&other, &options, port = listening.getHost().port] {
            auto ownFactory = reactor::Factory::forProtocol<Echo>();
            reactor::ListeningPort own = other->listenTCP(port, ownFactory, options);
            other->run();  // until the main reactor's shutdown stops it
        });
    }
    r.addSystemEventTrigger("before", "shutdown", [&] {
        for (auto& other : others) other->callFromThread([o = other.get()] { o->stop(); });
    });

    r.run(true);  // Ctrl-C stops it cleanly (and, through the trigger, the others)
    for (auto& t : running) t.join();
    return 0;
}
