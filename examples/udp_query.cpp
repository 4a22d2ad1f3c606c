// udp_query — a tiny DNS-style lookup over UDP: a Deferred per question.
//
//   make && ./build/examples/udp_query                  (server and client in one process)
//   ./build/examples/udp_query server 5353              (a server; 0 or nothing: a free port)
//   ./build/examples/udp_query 5353 alpha beta drop.me  (a client asking that server)
//
// One idea: UDP has no connections and no replies, only datagrams, any of
// which may be lost. So a client numbers its questions, keeps one Deferred
// per question in flight, fires it when the answer with that number comes
// back, and gives up after a timeout (addTimeout); an answer that comes too
// late finds nothing waiting and is dropped. The server answers every name
// except those starting with "drop", to show the timeout.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "reactor.hpp"

using reactor::Address;
using reactor::Deferred;
using reactor::Failure;

// "Q <id> <name>" -> "A <id> <name> <answer>". One datagram each way.
struct NameServer : reactor::DatagramProtocol {
    std::map<std::string, std::string> records{{"alpha", "10.0.0.1"}, {"beta", "10.0.0.2"}};

    void datagramReceived(std::string_view datagram, const Address& from) override {
        std::string q(datagram);
        char name[64] = {};
        unsigned id = 0;
        if (std::sscanf(q.c_str(), "Q %u %63s", &id, name) != 2) return;  // not a question: ignore
        std::printf("server: %s asks for %s\n", from.str().c_str(), name);
        if (std::strncmp(name, "drop", 4) == 0) return;  // "lost": never answered
        auto it = records.find(name);
        std::string answer = "A " + std::to_string(id) + " " + name + " " +
                             (it != records.end() ? it->second : "NXDOMAIN");
        transport->write(answer, from);  // back to whoever asked
    }
};

// The client side: query() returns at once; the Deferred fires later.
struct Resolver : reactor::DatagramProtocol {
    Resolver(reactor::IReactorTime& clock, Address server) : clock_(clock), server_(std::move(server)) {}

    Deferred<std::string> query(const std::string& name, double timeout = 1.0) {
        unsigned id = nextId_++;
        // The canceller runs on timeout (addTimeout cancels): forget the
        // question, so that a late answer finds nothing to fire.
        Deferred<std::string> d([this, id](Deferred<std::string>&) { pending_.erase(id); });
        pending_.emplace(id, d);
        transport->write("Q " + std::to_string(id) + " " + name, server_);
        return d.addTimeout(timeout, clock_);
    }

    void datagramReceived(std::string_view datagram, const Address&) override {
        std::string a(datagram);
        char name[64] = {}, value[64] = {};
        unsigned id = 0;
        if (std::sscanf(a.c_str(), "A %u %63s %63s", &id, name, value) != 3) return;
        auto it = pending_.find(id);
        if (it == pending_.end()) {
            std::printf("client: late answer %u dropped\n", id);
            return;
        }
        Deferred<std::string> d = it->second;
        pending_.erase(it);
        d.callback(std::string(value));
    }

private:
    reactor::IReactorTime& clock_;
    Address server_;
    unsigned nextId_ = 1;
    std::map<unsigned, Deferred<std::string>> pending_;
};

// Asks every name; stops the reactor once each has an answer or has timed out.
static void ask(reactor::Reactor& r, Resolver& resolver, const std::vector<std::string>& names) {
    auto left = std::make_shared<std::size_t>(names.size());
    if (names.empty()) r.callWhenRunning([&r] { r.stop(); });
    for (const auto& name : names) {
        resolver.query(name)
            .addCallbacks(
                [name](const std::string& value) { std::printf("client: %s -> %s\n", name.c_str(), value.c_str()); },
                [name](const Failure& f) { std::printf("client: %s -> %s\n", name.c_str(), f.str().c_str()); })
            .addCallback([&r, left] {
                if (--*left == 0) r.stop();
            });
    }
}

int main(int argc, char** argv) {
    reactor::Reactor r;
    if (argc >= 2 && std::strcmp(argv[1], "server") == 0) {
        NameServer server;
        auto port = r.listenUDP(argc >= 3 ? std::atoi(argv[2]) : 0, server, "127.0.0.1");
        std::printf("udp_query server listening on %s\n", port->getHost().str().c_str());
        std::fflush(stdout);
        r.run(true);  // until Ctrl-C
        return 0;
    }
    NameServer server;
    std::shared_ptr<reactor::IUDPTransport> serverPort;
    Address where;
    std::vector<std::string> names;
    if (argc >= 2) {  // a client of another process's server
        where.type = "UDP";
        where.host = "127.0.0.1";
        where.port = static_cast<std::uint16_t>(std::atoi(argv[1]));
        for (int i = 2; i < argc; ++i) names.emplace_back(argv[i]);
    } else {  // both ends here
        serverPort = r.listenUDP(0, server, "127.0.0.1");
        where = serverPort->getHost();
        names = {"alpha", "beta", "gamma", "drop.me"};
    }
    Resolver resolver(r, where);
    r.listenUDP(0, resolver, "127.0.0.1");
    ask(r, resolver, names);
    r.run();
    return 0;
}
