// The echo server `make footprint` measures: the same program as
// tests/bench/echo_asio.cpp (listen on a port, echo every byte, stop on
// SIGINT/SIGTERM), so that the two sizes and compile times compare like
// with like. examples/echo_server.cpp does more (endpoint strings, threads)
// and is measured too.
#include <cstdio>
#include <cstdlib>

#include "reactor.hpp"

struct Echo : reactor::Protocol {
    void dataReceived(std::string_view data) override { transport->write(data); }
};

int main(int argc, char** argv) {
    reactor::Reactor r;
    auto factory = reactor::Factory::forProtocol<Echo>();
    reactor::ListeningPort port = r.listenTCP(argc > 1 ? std::atoi(argv[1]) : 0, factory);
    std::printf("listening on %u\n", static_cast<unsigned>(port.getHost().port));
    r.run(true);
}
