// The in-memory network (testing::MemoryNetwork, Twisted's iosim) and the
// wrapping policies (policies::WrappingFactory and friends). Where the
// memory transports claim TCP's behaviour, the same script runs over
// loopback TCP too and the callbacks each side saw must be identical.
#include <algorithm>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#define REACTOR_WITH_IRC
#include "support.hpp"

#define IRC_SERVER_NO_MAIN
#include "examples/irc_server.cpp"

// Failed checks print the logs compared.
namespace doctest {
template <>
struct StringMaker<std::vector<std::string>> {
    static String convert(const std::vector<std::string>& v) {
        std::string out = "{";
        for (const auto& s : v) out += (out.size() > 1 ? ", \"" : "\"") + s.substr(0, 60) + "\"";
        return String((out + "}").c_str());
    }
};
}  // namespace doctest

using namespace reactor;
using testing::MemoryConnection;
using testing::MemoryNetwork;

namespace {

using Log = std::vector<std::string>;

/// A protocol made of hooks; every callback is written to `log` (which
/// outlives the protocol: transports destroy theirs after connectionLost).
struct Scripted : Protocol {
    Log& log;
    std::function<void(Scripted&)> onMade;
    std::function<void(Scripted&, std::string_view)> onData;
    std::function<void(Scripted&)> onReadLost;
    bool halfClose = false;
    Scripted(Log& l) : log(l) {}
    void connectionMade() override {
        log.push_back("made");
        if (onMade) onMade(*this);
    }
    void dataReceived(std::string_view d) override {
        if (!log.empty() && log.back().rfind("data ", 0) == 0)
            log.back().append(d);  // chunks are arbitrary: record the stream
        else
            log.push_back("data " + std::string(d));
        if (onData) onData(*this, d);
    }
    void connectionLost(const Failure& reason) override { log.push_back("lost " + reason.type()); }
    bool halfCloseable() const override { return halfClose; }
    void readConnectionLost() override {
        log.push_back("readConnectionLost");
        if (onReadLost) onReadLost(*this);
    }
    void writeConnectionLost() override { log.push_back("writeConnectionLost"); }
};

/// A script: what the server and the client protocols do.
struct Script {
    std::function<void(Scripted&)> setupServer, setupClient;
};

struct ScriptFactories {
    Log serverLog, clientLog;
    Factory server;
    ClientFactory client;
    explicit ScriptFactories(const Script& s) {
        server.protocol = [this, s]() -> std::unique_ptr<Protocol> {
            auto p = std::make_unique<Scripted>(serverLog);
            if (s.setupServer) s.setupServer(*p);
            return p;
        };
        client.protocol = [this, s]() -> std::unique_ptr<Protocol> {
            auto p = std::make_unique<Scripted>(clientLog);
            if (s.setupClient) s.setupClient(*p);
            return p;
        };
    }
    bool done() const {
        auto lost = [](const Log& l) { return !l.empty() && l.back().rfind("lost ", 0) == 0; };
        return lost(serverLog) && lost(clientLog);
    }
};

/// Runs `s` in memory and over loopback TCP; checks both sides saw the
/// same callbacks, and returns them ("server: ..." then "client: ...").
Log sameOnTcpAndInMemory(const Script& s) {
    Clock clock;
    ScriptFactories mem(s);
    {
        MemoryNetwork net(clock);
        net.connect(mem.server, mem.client);
        net.flush();
        CHECK(mem.done());
    }
    ScriptFactories tcp(s);
    {
        test::CleanReactor t;
        ListeningPort port = t.r.listenTCP(0, tcp.server, {"127.0.0.1"});
        t.r.connectTCP("127.0.0.1", port.getHost().port, tcp.client);
        CHECK(testing::runUntil(t.r, [&] { return tcp.done(); }));
        port.stopListening();
        CHECK(testing::runUntilClean(t.r));
    }
    CHECK(mem.serverLog == tcp.serverLog);
    CHECK(mem.clientLog == tcp.clientLog);
    Log all;
    for (auto& e : mem.serverLog) all.push_back("server: " + e);
    for (auto& e : mem.clientLog) all.push_back("client: " + e);
    return all;
}

/// Records its failed attempts and its start/stop calls.
struct Attempts : ClientFactory {
    std::vector<std::string> failures;
    int started = 0, stopped = 0;
    void startFactory() override { ++started; }
    void stopFactory() override { ++stopped; }
    void clientConnectionFailed(IConnector&, const Failure& reason) override { failures.push_back(reason.str()); }
};

void echo(Scripted& p) {
    p.onData = [](Scripted& self, std::string_view d) { self.transport->write(d); };
}

}  // namespace

TEST_SUITE("memory") {

// ---- the same callbacks as TCP ---------------------------------------------
// Twisted 22.4's iosim, for the first script (echo server; the client says
// hello and closes when it hears it back):
//     c, s, pump = iosim.connectedServerAndClient(S, C); pump.flush()
//     -> [('client got', b'hello'), ('server lost', 'ConnectionDone'),
//         ('client lost', 'ConnectionDone')]

TEST_CASE("memory vs TCP: echo, then the client closes: ConnectionDone on both ends") {
    Script s;
    s.setupServer = echo;
    s.setupClient = [](Scripted& p) {
        p.onMade = [](Scripted& self) { self.transport->write("hello"); };
        p.onData = [](Scripted& self, std::string_view) { self.transport->loseConnection(); };
    };
    CHECK(sameOnTcpAndInMemory(s) == Log{"server: made", "server: data hello", "server: lost ConnectionDone",
                                         "client: made", "client: data hello", "client: lost ConnectionDone"});
}

TEST_CASE("memory vs TCP: loseConnection flushes first; writes after it are still sent") {
    Script s;
    s.setupServer = [](Scripted& p) {
        p.onMade = [](Scripted& self) {
            self.transport->write(std::string(100000, 'x'));
            self.transport->loseConnection();
            self.transport->write("tail");  // still sent (TcpConnection's behaviour)
        };
    };
    Log all = sameOnTcpAndInMemory(s);
    REQUIRE(all.size() == 5);
    CHECK(all[3] == "client: data " + std::string(100000, 'x') + "tail");
    CHECK(all[4] == "client: lost ConnectionDone");
}

TEST_CASE("memory vs TCP: a closing end drops what still arrives") {
    Script s;
    s.setupServer = [](Scripted& p) {
        p.onData = [](Scripted& self, std::string_view) {
            self.transport->loseConnection();  // the rest of the client's talk is dropped
        };
    };
    s.setupClient = [](Scripted& p) {
        p.onMade = [](Scripted& self) { self.transport->write("first"); };
    };
    Log all = sameOnTcpAndInMemory(s);
    CHECK(all == Log{"server: made", "server: data first", "server: lost ConnectionDone", "client: made",
                     "client: lost ConnectionDone"});
}

TEST_CASE("memory vs TCP: half-close from the client; a plain server replies, then closes") {
    Script s;
    s.setupServer = echo;
    s.setupClient = [](Scripted& p) {
        p.halfClose = true;
        p.onMade = [](Scripted& self) {
            self.transport->write("question");
            self.transport->loseWriteConnection();
        };
        p.onReadLost = [](Scripted& self) { self.transport->loseConnection(); };
    };
    Log all = sameOnTcpAndInMemory(s);
    CHECK(all == Log{"server: made", "server: data question", "server: lost ConnectionDone", "client: made",
                     "client: writeConnectionLost", "client: data question", "client: readConnectionLost",
                     "client: lost ConnectionDone"});
}

TEST_CASE("memory vs TCP: half-close from the server to a half-closeable client") {
    Script s;
    s.setupServer = [](Scripted& p) {
        p.halfClose = true;
        p.onMade = [](Scripted& self) {
            self.transport->write("banner");
            self.transport->loseWriteConnection();
        };
        p.onData = [](Scripted& self, std::string_view) { self.transport->loseConnection(); };
    };
    s.setupClient = [](Scripted& p) {
        p.halfClose = true;
        p.onReadLost = [](Scripted& self) {
            self.transport->write("thanks");
            self.transport->loseConnection();  // both directions are done: close
        };
    };
    Log all = sameOnTcpAndInMemory(s);
    CHECK(all == Log{"server: made", "server: writeConnectionLost", "server: data thanks",
                     "server: lost ConnectionDone", "client: made", "client: data banner",
                     "client: readConnectionLost", "client: lost ConnectionDone"});
}

// ---- addresses, factories, ownership ----------------------------------------

TEST_CASE("MemoryNetwork: addresses, factory start/stop, protocols destroyed after connectionLost") {
    struct Counted : Protocol {
        int& alive;
        explicit Counted(int& a) : alive(a) { ++alive; }
        ~Counted() override { --alive; }
    };
    struct Tracking : ClientFactory {
        int started = 0, stopped = 0, lost = 0;
        void startFactory() override { ++started; }
        void stopFactory() override { ++stopped; }
        void clientConnectionLost(IConnector&, const Failure& reason) override {
            lost += reason.check<error::ConnectionDone>() ? 1 : 100;
        }
    };
    int alive = 0;
    Factory server;
    server.protocol = [&] { return std::make_unique<Counted>(alive); };
    Tracking client;
    client.protocol = [&] { return std::make_unique<Counted>(alive); };
    Clock clock;
    MemoryNetwork net(clock);
    MemoryConnection& c = net.connect(server, client, {"TCP", "10.1.2.3", 6667, false});
    CHECK(client.started == 1);
    CHECK(server.numPorts == 1);  // the network started it, like a listening port
    CHECK(!c.established());      // nothing happens inside connect()
    net.flush();
    REQUIRE(c.established());
    CHECK(alive == 2);
    CHECK(c.client()->getPeer() == Address{"TCP", "10.1.2.3", 6667, false});
    CHECK(c.client()->getHost() == Address{"TCP", "127.0.0.1", 50001, false});
    CHECK(c.server()->getPeer() == c.client()->getHost());
    CHECK(c.server()->getHost() == c.client()->getPeer());
    CHECK(c.clientProtocol()->factory == &client);
    CHECK(c.serverProtocol()->factory == &server);
    CHECK(c.connector().getDestination() == Address{"TCP", "10.1.2.3", 6667, false});
    c.client()->loseConnection();
    CHECK(c.established());  // closes happen in a pump step, not inside the call
    net.flush();
    CHECK(!c.established());
    CHECK(alive == 0);
    CHECK(c.clientProtocol() == nullptr);
    CHECK(client.lost == 1);
    CHECK(client.stopped == 1);
    CHECK(clock.getDelayedCalls().empty());  // the connect timeout went with the attempt
}

TEST_CASE("MemoryNetwork: chunkSize 1 delivers byte by byte; the framing protocols see the same messages") {
    struct Lines : LineReceiver {
        Log& got;
        bool answer;
        Lines(Log& g, bool a) : got(g), answer(a) {}
        void lineReceived(std::string_view line) override {
            got.emplace_back(line);
            if (answer) sendLine(std::string("echo:") + std::string(line));
        }
    };
    struct Strings : Int32StringReceiver {
        Log& got;
        explicit Strings(Log& g) : got(g) {}
        void connectionMade() override {
            for (const char* s : {"", "one", "two\r\nthree"}) sendString(s);
        }
        void stringReceived(std::string_view s) override { got.emplace_back(s); }
    };
    struct Netstrings : NetstringReceiver {
        Log& got;
        explicit Netstrings(Log& g) : got(g) {}
        void connectionMade() override {
            for (const char* s : {"", "5:odd", "x,y"}) sendString(s);
        }
        void stringReceived(std::string_view s) override { got.emplace_back(s); }
    };
    for (std::size_t chunk : {std::size_t(0), std::size_t(1), std::size_t(3)}) {
        CAPTURE(chunk);
        Log serverLines, clientLines, strings, netstrings, ignored;
        Factory lineServer;
        lineServer.protocol = [&] { return std::make_unique<Lines>(serverLines, true); };
        ClientFactory lineClient;
        lineClient.protocol = [&] { return std::make_unique<Lines>(clientLines, false); };
        Factory stringServer;
        stringServer.protocol = [&] { return std::make_unique<Strings>(ignored); };
        ClientFactory stringClient;
        stringClient.protocol = [&] { return std::make_unique<Strings>(strings); };
        Factory netServer;
        netServer.protocol = [&] { return std::make_unique<Netstrings>(ignored); };
        ClientFactory netClient;
        netClient.protocol = [&] { return std::make_unique<Netstrings>(netstrings); };
        Clock clock;
        MemoryNetwork net(clock);
        MemoryConnection& lines = net.connect(lineServer, lineClient);
        MemoryConnection& ints = net.connect(stringServer, stringClient);
        MemoryConnection& nets = net.connect(netServer, netClient);
        lines.chunkSize = ints.chunkSize = nets.chunkSize = chunk;
        net.flush();
        lines.client()->write("a\r\n\r\nlonger line\r\npartial");
        net.flush();
        CHECK(serverLines == Log{"a", "", "longer line"});
        CHECK(clientLines == Log{"echo:a", "echo:", "echo:longer line"});
        CHECK(strings == Log{"", "one", "two\r\nthree"});
        CHECK(netstrings == Log{"", "5:odd", "x,y"});
    }
}

TEST_CASE("MemoryNetwork: latency in simulated time; advance() stops at each arrival") {
    Log serverLog, clientLog;
    Factory server;
    server.protocol = [&] {
        auto p = std::make_unique<Scripted>(serverLog);
        echo(*p);
        return p;
    };
    ClientFactory client;
    client.protocol = [&] { return std::make_unique<Scripted>(clientLog); };
    Clock clock;
    MemoryNetwork net(clock);
    MemoryConnection& c = net.connect(server, client);
    net.flush();
    c.latency = 0.25;
    c.client()->write("ping");
    net.flush();
    CHECK(serverLog == Log{"made"});
    CHECK(c.client()->pending() == 4);  // on the wire: still ours
    net.advance(0.2);
    CHECK(serverLog == Log{"made"});
    net.advance(0.05);  // t = 0.25: arrives, is echoed, the echo leaves
    CHECK(serverLog == Log{"made", "data ping"});
    CHECK(clientLog == Log{"made"});
    net.advance(1.0);  // one call: the echo arrives at t = 0.5 on the way
    CHECK(clientLog == Log{"made", "data ping"});
    CHECK(clock.seconds() == doctest::Approx(1.25));
}

// ---- flow control -------------------------------------------------------------

namespace {
/// A streaming producer that writes `chunk` bytes whenever it is resumed,
/// until `total` are written, then closes. What it went through is kept
/// in a Hose outside it (the transport destroys the protocol).
struct Hose {
    int pauses = 0, resumes = 0;
    bool stopped = false;
};
struct Firehose : Protocol, IProducer {
    Hose& hose;
    explicit Firehose(Hose& h) : hose(h) {}
    std::size_t chunk = 16 * 1024, total = 1024 * 1024, written = 0;
    bool paused = false, streaming = true;
    void connectionMade() override {
        transport->registerProducer(this, streaming);
        if (streaming) pump();
    }
    void pump() {
        while (!paused && written < total) {
            std::size_t n = std::min(chunk, total - written);
            written += n;
            transport->write(std::string(n, 'z'));
            if (!streaming) break;  // a pull producer writes one chunk per request
        }
        if (written == total) {
            transport->unregisterProducer();
            transport->loseConnection();
        }
    }
    void pauseProducing() override {
        paused = true;
        ++hose.pauses;
    }
    void resumeProducing() override {
        paused = false;
        ++hose.resumes;
        pump();
    }
    void stopProducing() override { hose.stopped = true; }
};
struct Sink : Protocol {
    std::size_t& got;
    explicit Sink(std::size_t& g) : got(g) {}
    void dataReceived(std::string_view d) override { got += d.size(); }
};
}  // namespace

TEST_CASE("MemoryNetwork: a stopped reader pauses a streaming producer at the high-water mark") {
    Hose hose;
    Firehose* live = nullptr;  // until the connection closes
    Factory server;
    server.protocol = [&] {
        auto p = std::make_unique<Firehose>(hose);
        live = p.get();
        return p;
    };
    std::size_t got = 0;
    ClientFactory client;
    client.protocol = [&] { return std::make_unique<Sink>(got); };
    Clock clock;
    MemoryNetwork net(clock);
    MemoryConnection& c = net.connect(server, client);
    c.chunkSize = 4096;
    net.pump();  // one step connects (and the server starts writing); data moves from the next
    c.client()->readerStopped = true;
    net.flush();
    REQUIRE(live);
    CHECK(live->paused);
    CHECK(hose.pauses == 1);
    CHECK(got == 0);
    // It wrote until the buffer went over 64 KiB, then stopped.
    CHECK(c.server()->pending() > detail::TcpFlow::highWaterMark);
    CHECK(c.server()->pending() <= detail::TcpFlow::highWaterMark + live->chunk);
    // A slow reader: 8 KiB a step. The producer resumes once the unsent
    // bytes are down to the low-water mark, not before.
    c.client()->readerStopped = false;
    c.client()->readRate = 8192;
    while (hose.resumes == 0) {
        CHECK(c.server()->pending() > detail::TcpFlow::lowWaterMark);
        REQUIRE(net.pump());
    }
    CHECK(c.server()->pending() > detail::TcpFlow::highWaterMark);  // it wrote again, and paused
    CHECK(hose.pauses == 2);
    c.client()->readRate = 0;
    const std::size_t total = live->total;
    net.flush();  // all of it, then the server closes (and its protocol is destroyed)
    CHECK(got == total);
    CHECK(!hose.stopped);  // it unregistered before closing
    CHECK(!c.established());
}

TEST_CASE("MemoryNetwork: a pull producer is asked for one chunk each time the buffer drains") {
    Hose hose;
    Factory server;
    server.protocol = [&] {
        auto p = std::make_unique<Firehose>(hose);
        p->streaming = false;
        p->total = 10 * p->chunk;
        return p;
    };
    std::size_t got = 0;
    ClientFactory client;
    client.protocol = [&] { return std::make_unique<Sink>(got); };
    Clock clock;
    MemoryNetwork net(clock);
    net.connect(server, client);
    net.flush();
    CHECK(got == 10 * 16 * 1024);
    CHECK(hose.resumes == 10);  // once at registration, then once per drained chunk
}

TEST_CASE("MemoryNetwork: with no producer, an echo server stops reading while its peer does not read") {
    Factory server;
    Log serverLog;
    server.protocol = [&] {
        auto p = std::make_unique<Scripted>(serverLog);
        echo(*p);
        return p;
    };
    std::size_t got = 0;
    ClientFactory client;
    client.protocol = [&] { return std::make_unique<Sink>(got); };
    Clock clock;
    MemoryNetwork net(clock);
    MemoryConnection& c = net.connect(server, client);
    c.chunkSize = 8192;
    net.flush();
    c.client()->readerStopped = true;
    const std::size_t total = 1024 * 1024;
    c.client()->write(std::string(total, 'e'));
    net.flush();
    // The server echoed until its unsent output passed 64 KiB, then stopped
    // reading: the rest waits on the client's side (TCP's backpressure).
    CHECK(c.server()->pending() > detail::TcpFlow::highWaterMark);
    CHECK(c.server()->pending() <= detail::TcpFlow::highWaterMark + 8192);
    CHECK(c.client()->pending() == total - c.server()->pending());
    c.client()->readerStopped = false;
    net.flush();
    CHECK(got == total);
    CHECK(c.client()->pending() == 0);
    CHECK(c.server()->pending() == 0);
}

// ---- faults: reset, abort, refused, timeout ------------------------------------

TEST_CASE("MemoryNetwork: reset() closes both ends with TCP's 'reset by peer' ConnectionLost") {
    Log serverLog, clientLog;
    Factory server;
    server.protocol = [&] { return std::make_unique<Scripted>(serverLog); };
    ClientFactory client;
    client.protocol = [&] { return std::make_unique<Scripted>(clientLog); };
    Clock clock;
    MemoryNetwork net(clock);
    MemoryConnection& c = net.connect(server, client);
    net.flush();
    c.client()->write("never delivered");
    c.reset();
    net.flush();
    CHECK(serverLog == Log{"made", "lost ConnectionLost"});
    CHECK(clientLog == Log{"made", "lost ConnectionLost"});
    CHECK(detail::lostFailure(detail::os::errConnectionReset).getErrorMessage().find("reset by peer") != std::string::npos);
}

TEST_CASE("MemoryNetwork: abortConnection drops the buffer; ConnectionAborted here, a reset there") {
    Failure serverReason, clientReason;
    struct Reason : Protocol {
        Failure& out;
        explicit Reason(Failure& f) : out(f) {}
        void connectionLost(const Failure& r) override { out = r; }
    };
    Factory server;
    server.protocol = [&] { return std::make_unique<Reason>(serverReason); };
    ClientFactory client;
    client.protocol = [&] { return std::make_unique<Reason>(clientReason); };
    Clock clock;
    MemoryNetwork net(clock);
    MemoryConnection& c = net.connect(server, client);
    net.flush();
    c.client()->write("dropped");
    c.client()->abortConnection();
    c.client()->write("ignored");
    CHECK(c.client()->pending() == 0);
    net.flush();
    CHECK(clientReason.check<error::ConnectionAborted>());
    CHECK(serverReason.check<error::ConnectionLost>());
    CHECK(!serverReason.check<error::ConnectionAborted>());
    CHECK(serverReason.getErrorMessage() == detail::lostFailure(detail::os::errConnectionReset).getErrorMessage());
}

TEST_CASE("MemoryNetwork: refused and timed-out attempts fail with TCP's reasons") {
    Factory server = Factory::forProtocol<Protocol>();
    Attempts client;
    client.protocol = [] { return std::make_unique<Protocol>(); };
    Clock clock;
    MemoryNetwork net(clock);
    MemoryConnection& refused = net.connect(server, client);
    refused.refuseNext = 1;
    CHECK(client.failures.empty());  // never inside connect()
    net.flush();
    REQUIRE(client.failures.size() == 1);
    // The same text a refused connectTCP reports.
    {
        test::CleanReactor t;
        Factory closed = Factory::forProtocol<Protocol>();
        ListeningPort port = t.r.listenTCP(0, closed, {"127.0.0.1"});
        int portNumber = port.getHost().port;
        port.stopListening();
        Attempts tcp;
        t.r.connectTCP("127.0.0.1", portNumber, tcp);
        REQUIRE(testing::runUntil(t.r, [&] { return !tcp.failures.empty(); }));
        CHECK(client.failures[0] == tcp.failures[0]);
    }
    CHECK(client.failures[0].rfind("ConnectionRefusedError: Connection was refused by other side: ", 0) == 0);
    CHECK(refused.connections == 0);

    MemoryConnection& lost = net.connect(server, client, {"TCP", "192.0.2.1", 80, false}, 10);
    lost.unreachable = true;
    net.advance(9.9);
    CHECK(client.failures.size() == 1);
    CHECK(lost.connector().isConnecting());
    net.advance(0.1);
    REQUIRE(client.failures.size() == 2);
    CHECK(client.failures[1] == "TimeoutError: User timeout caused connection failure.");
    CHECK(!lost.connector().isConnecting());
    CHECK(client.started == 2);
    CHECK(client.stopped == 2);  // each cycle ended

    MemoryConnection& stopped = net.connect(server, client);
    stopped.connector().stopConnecting();
    CHECK(client.failures.back() == "UserError: User aborted connection.");
    CHECK_MISUSE(stopped.connector().stopConnecting(), error::NotConnectingError);
    net.flush();
    CHECK(stopped.connections == 0);
}

TEST_CASE("MemoryNetwork: a refusing server closes at once; a refusing client factory fails the attempt") {
    Factory refusing;  // no protocol: buildProtocol returns null
    Log clientLog;
    ClientFactory client;
    client.protocol = [&] { return std::make_unique<Scripted>(clientLog); };
    Attempts noProtocol;
    Factory plain = Factory::forProtocol<Protocol>();
    Clock clock;
    MemoryNetwork net(clock);  // after the factories: destroyed before them
    net.connect(refusing, client);
    net.connect(plain, noProtocol);
    net.flush();
    CHECK(clientLog == Log{"made", "lost ConnectionDone"});  // as TCP: connected, then EOF
    REQUIRE(noProtocol.failures.size() == 1);
    CHECK(noProtocol.failures[0].rfind("ConnectError: ", 0) == 0);
}

TEST_CASE("MemoryNetwork: ReconnectingClientFactory retries through refusals, on the Clock") {
    Clock clock;
    struct Retrying : ReconnectingClientFactory {
        int failed = 0, made = 0;
        explicit Retrying(Clock& c) : ReconnectingClientFactory(c) {
            jitter = 0;
            protocol = [this]() -> std::unique_ptr<Protocol> {
                struct P : Protocol {
                    Retrying& f;
                    explicit P(Retrying& r) : f(r) {}
                    void connectionMade() override {
                        ++f.made;
                        f.resetDelay();
                    }
                };
                return std::make_unique<P>(*this);
            };
        }
        void clientConnectionFailed(IConnector& c, const Failure& reason) override {
            ++failed;
            ReconnectingClientFactory::clientConnectionFailed(c, reason);
        }
    } client(clock);
    Factory server = Factory::forProtocol<Protocol>();
    MemoryNetwork net(clock);
    MemoryConnection& c = net.connect(server, client);
    c.refuseNext = 2;
    net.flush();
    CHECK(client.failed == 1);
    net.advance(client.delay);  // e seconds: the first retry, refused again
    CHECK(client.failed == 2);
    net.advance(client.delay);
    CHECK(client.made == 1);
    CHECK(c.connections == 1);
    c.reset();  // the connection drops: it reconnects after initialDelay * e
    net.flush();
    net.advance(10);
    CHECK(client.made == 2);
    CHECK(c.connections == 2);
    client.stopTrying();
    c.connector().disconnect();
    net.flush();
    CHECK(!c.established());
    CHECK(clock.getDelayedCalls().empty());
}

// ---- ownership traps -------------------------------------------------------

TEST_CASE("MemoryNetwork: callbacks that close, re-enter the pump, connect or reset mid-delivery") {
    Log serverLog, clientLog, thirdLog, l2;
    int reentered = 0;
    Factory third, server, resetter;  // the factories outlive the network
    ClientFactory client, thirdClient = ClientFactory::forProtocol<Protocol>();
    Clock clock;
    MemoryNetwork net(clock);
    third.protocol = [&] { return std::make_unique<Scripted>(thirdLog); };
    MemoryConnection* extra = nullptr;
    server.protocol = [&] {
        auto p = std::make_unique<Scripted>(serverLog);
        p->onData = [&](Scripted& self, std::string_view d) {
            if (net.flush() || net.pump()) ++reentered;  // re-entry does nothing
            net.advance(1);                              // nor this
            if (d == "c") {
                self.transport->write("bye");
                self.transport->loseConnection();
                self.transport->loseConnection();  // twice: nothing more
                extra = &net.connect(third, thirdClient);  // a new connection from a callback
            }
        };
        return p;
    };
    client.protocol = [&] { return std::make_unique<Scripted>(clientLog); };
    MemoryConnection& c = net.connect(server, client);
    c.chunkSize = 1;
    net.flush();
    c.client()->write("abcdef");  // closes at "c": "def" arrives at a closing end, dropped
    net.flush();
    CHECK(reentered == 0);
    CHECK(clock.seconds() == 0);
    CHECK(serverLog == Log{"made", "data abc", "lost ConnectionDone"});
    CHECK(clientLog == Log{"made", "data bye", "lost ConnectionDone"});
    REQUIRE(extra);
    CHECK(extra->established());
    CHECK(thirdLog == Log{"made"});
    // reset() from inside a callback acts at the next step, not inside it.
    resetter.protocol = [&] {
        auto p = std::make_unique<Scripted>(l2);
        p->onData = [&](Scripted&, std::string_view) { extra->reset(); };
        return p;
    };
    MemoryConnection& c2 = net.connect(resetter, client);
    net.flush();
    c2.client()->write("x");
    net.flush();
    CHECK(l2 == Log{"made", "data x"});
    CHECK(thirdLog == Log{"made", "lost ConnectionLost"});
}

TEST_CASE("MemoryNetwork: a client that reconnects at once; the old server end still finishes") {
    Log serverLog;
    Factory server;
    server.protocol = [&] {
        auto p = std::make_unique<Scripted>(serverLog);
        p->halfClose = true;
        p->onReadLost = [](Scripted& self) {  // a last word after the client went: dropped, then closed
            self.transport->write("late");
            self.transport->loseConnection();
        };
        return p;
    };
    struct Eager : ClientFactory {
        int lost = 0;
        void clientConnectionLost(IConnector& c, const Failure&) override {
            if (++lost == 1) c.connect();  // from inside the callback, as Twisted allows
        }
    } client;
    client.protocol = [] { return std::make_unique<Protocol>(); };
    MemoryNetwork net;
    MemoryConnection& c = net.connect(server, client);
    net.flush();
    c.client()->loseConnection();
    net.flush();
    CHECK(c.connections == 2);
    CHECK(c.established());
    CHECK(serverLog == Log{"made", "readConnectionLost", "made", "lost ConnectionDone"});  // the new one connects first
}

TEST_CASE("MemoryNetwork: a throwing protocol loses its own connection only") {
#if REACTOR_HAS_EXCEPTIONS
    test::LogCapture logs;
    Log clientLog;
    struct Thrower : Protocol {
        void dataReceived(std::string_view) override { throw std::runtime_error("boom"); }
    };
    Factory server = Factory::forProtocol<Thrower>();
    ClientFactory client;
    client.protocol = [&] { return std::make_unique<Scripted>(clientLog); };
    Clock clock;
    MemoryNetwork net(clock);
    MemoryConnection& c = net.connect(server, client);
    net.flush();
    c.client()->write("x");
    net.flush();
    CHECK(clientLog == Log{"made", "lost ConnectionLost"});
    CHECK(logs.contains("boom"));
#endif
}

TEST_CASE("MemoryNetwork: destroyed with connections open: no callbacks, protocols freed, connector refuses") {
    int alive = 0, lost = 0;
    struct Counted : Protocol {
        int &alive, &lost;
        Counted(int& a, int& l) : alive(a), lost(l) { ++alive; }
        ~Counted() override { --alive; }
        void connectionLost(const Failure&) override { ++lost; }
    };
    Factory server;
    server.protocol = [&] { return std::make_unique<Counted>(alive, lost); };
    ClientFactory client;
    client.protocol = [&] { return std::make_unique<Counted>(alive, lost); };
    Clock clock;
    std::shared_ptr<IConnector> kept;
    {
        MemoryNetwork net(clock);
        MemoryConnection& c = net.connect(server, client);
        net.connect(server, client).unreachable = true;  // an attempt in progress, with its timer
        net.flush();
        c.client()->write(std::string(100, 'x'));  // undelivered
        kept = c.connector().shared_from_this();
        CHECK(alive == 2);
    }
    CHECK(alive == 0);
    CHECK(lost == 0);
    CHECK(clock.getDelayedCalls().empty());
    CHECK(server.numPorts == 0);
    CHECK(client.numPorts == 0);
    CHECK_MISUSE_WITH(kept->connect(), error::RuntimeError, "MemoryNetwork");
}

TEST_CASE("MemoryNetwork: a factory destroyed before the network drops its connections, with a warning") {
    test::LogCapture logs;
    int alive = 0, lost = 0;
    struct Counted : Protocol {
        int &alive, &lost;
        Counted(int& a, int& l) : alive(a), lost(l) { ++alive; }
        ~Counted() override { --alive; }
        void connectionLost(const Failure&) override { ++lost; }
    };
    ClientFactory client;  // outlives the network, as it should
    client.protocol = [&] { return std::make_unique<Counted>(alive, lost); };
    MemoryNetwork net;
    auto server = std::make_unique<Factory>();  // destroyed first: the mistake
    server->protocol = [&] { return std::make_unique<Counted>(alive, lost); };
    MemoryConnection& c = net.connect(*server, client);
    MemoryConnection& other = net.connect(*server, client);
    net.flush();
    CHECK(alive == 4);
    server.reset();
    CHECK(logs.contains("a Factory was destroyed with 1 open connection(s) (in-memory connection"));
    CHECK(alive == 0);  // both connections dropped, no callbacks
    CHECK(lost == 0);
    CHECK(!c.established());
    CHECK(!other.established());
    CHECK(!net.flush());  // nothing left to move, nothing touches the dead factory
    CHECK(client.numPorts == 0);
    // The same from inside one of its own protocols' dataReceived.
    auto doomed = std::make_unique<Factory>();
    doomed->protocol = [&] {
        struct Suicidal : Counted {
            std::unique_ptr<Factory>& owner;
            Suicidal(int& a, int& l, std::unique_ptr<Factory>& o) : Counted(a, l), owner(o) {}
            void dataReceived(std::string_view) override {
                owner.reset();                   // destroys this protocol's factory...
                transport->write("still here");  // ...and this protocol lives until the step ends
            }
        };
        return std::make_unique<Suicidal>(alive, lost, doomed);
    };
    MemoryConnection& d = net.connect(*doomed, client);
    net.flush();
    d.client()->write("x");
    net.flush();
    CHECK(!doomed);
    CHECK(alive == 0);
    CHECK(lost == 0);
}

TEST_CASE("MemoryNetwork: two protocols that always answer each other make flush() give up") {
    Factory server;
    Log a, b;
    server.protocol = [&] {
        auto p = std::make_unique<Scripted>(a);
        echo(*p);
        return p;
    };
    ClientFactory client;
    client.protocol = [&] {
        auto p = std::make_unique<Scripted>(b);
        echo(*p);
        p->onMade = [](Scripted& self) { self.transport->write("ping"); };
        return p;
    };
    Clock clock;
    MemoryNetwork net(clock);
    net.connect(server, client);
    CHECK_MISUSE_WITH(net.flush(50), error::RuntimeError, "still moving");
}

// ---- IRC without sockets ---------------------------------------------------------

namespace {
/// The seed's bot.
struct Bot : irc::IRCClient {
    void signedOn() override { join("#demo"); }
    void userJoined(const std::string& user, const std::string& channel) override { say(channel, "Hello " + user); }
};
/// Someone who joins #demo and remembers what is said there.
struct User : irc::IRCClient {
    std::vector<std::string>& heard;
    User(std::string nick, std::vector<std::string>& h) : heard(h) { nickname = std::move(nick); }
    void signedOn() override { join("#demo"); }
    void privmsg(const std::string& user, const std::string& channel, const std::string& message) override {
        heard.push_back(user.substr(0, user.find('!')) + " in " + channel + ": " + message);
    }
};
/// The toy server of examples/irc_server.cpp.
struct IrcServer : Factory {
    Network net;
    IrcServer() {
        verbose = false;
        protocol = [this]() -> std::unique_ptr<Protocol> { return std::make_unique<Client>(net); };
    }
};
}  // namespace

TEST_CASE("an IRC bot greets a user who joins") {
    IrcServer server;
    auto bot = ClientFactory::forProtocol<Bot>();
    std::vector<std::string> heard;
    auto alice = ClientFactory::forProtocol<User>("alice", std::ref(heard));
    MemoryNetwork net;

    net.connect(server, bot);
    net.flush();  // the bot signs on and joins #demo
    net.connect(server, alice);
    net.flush();  // alice signs on and joins; the bot greets her

    CHECK(heard == std::vector<std::string>{"irc in #demo: Hello alice"});
}

TEST_CASE("IRCClient against the toy server, one byte at a time: register, talk, topic, quit") {
    IrcServer server;
    std::vector<std::string> aliceHeard, bobHeard;
    struct Topical : User {
        using User::User;
        std::string lastTopic;
        void topicUpdated(const std::string&, const std::string&, const std::string& newTopic) override {
            lastTopic = newTopic;
        }
    };
    auto alice = ClientFactory::forProtocol<Topical>("alice", std::ref(aliceHeard));
    auto bob = ClientFactory::forProtocol<Topical>("bob", std::ref(bobHeard));
    Clock clock;
    MemoryNetwork net(clock);
    MemoryConnection& a = net.connect(server, alice);
    MemoryConnection& b = net.connect(server, bob);
    a.chunkSize = b.chunkSize = 1;
    net.flush();
    auto& ap = *static_cast<Topical*>(a.clientProtocol());
    auto& bp = *static_cast<Topical*>(b.clientProtocol());
    CHECK(ap.nickname == "alice");
    CHECK(server.net.channels.at("#demo").members.size() == 2);
    ap.say("#demo", "hi bob");
    bp.msg("alice", "psst");
    ap.topic("#demo", "memory networks");
    net.flush();
    CHECK(bobHeard == std::vector<std::string>{"alice in #demo: hi bob"});
    CHECK(aliceHeard == std::vector<std::string>{"bob in alice: psst"});
    CHECK(bp.lastTopic == "memory networks");
    bp.quit("bye");
    net.flush();
    CHECK(!b.established());  // the server closed after ERROR
    CHECK(server.net.channels.at("#demo").members.size() == 1);
    CHECK(server.net.nicks.count("bob") == 0);
}

}  // TEST_SUITE memory

// ---- policies: wrapping factories --------------------------------------------
// Twisted 22.4 (twisted.protocols.policies), on a task.Clock:
//     f = LimitTotalConnectionsFactory(); f.protocol = Protocol; f.connectionLimit = 2
//     a, b, c = (f.buildProtocol(None) for 3 times) -> True True None, connectionCount 2
//     f.overflowProtocol = Busy; d = f.buildProtocol(None) -> Busy, connectionCount 3
//     a.makeConnection(t); t.loseConnection() -> connectionCount 2
//     TimeoutFactory(wrapped, 3): data at t=2 -> still connected at 4, closed at 5;
//     a write at t=2 -> connected at 4.9, closed at 5
//     LimitConnectionsByPeer, max 2: [True, True, False] from one host, True from another

TEST_SUITE("policies") {

namespace {
/// Everything a wrapped protocol can see, in order.
struct Inner : Protocol, IProducer {
    Log& log;
    explicit Inner(Log& l) : log(l) {}
    void connectionMade() override {
        log.push_back("made " + getPeerHost());
        transport->registerProducer(this, true);
        transport->write("hi");
    }
    std::string getPeerHost() const { return transport->getPeer().host; }
    void dataReceived(std::string_view d) override {
        log.push_back("data " + std::string(d));
        if (d == "half") transport->loseWriteConnection();
    }
    bool halfCloseable() const override { return true; }
    void readConnectionLost() override {
        log.push_back("readConnectionLost");
        transport->unregisterProducer();
        transport->loseConnection();
        log.push_back(transport->disconnecting ? "disconnecting" : "?");
    }
    void writeConnectionLost() override { log.push_back("writeConnectionLost"); }
    void connectionLost(const Failure& reason) override { log.push_back("lost " + reason.type()); }
    void pauseProducing() override { log.push_back("pause"); }
    void resumeProducing() override { log.push_back("resume"); }
    void stopProducing() override { log.push_back("stop"); }
};
}  // namespace

TEST_CASE("WrappingFactory: every event reaches the wrapped protocol, every transport call the real one") {
    Log log;
    Factory inner;
    inner.protocol = [&] { return std::make_unique<Inner>(log); };
    policies::WrappingFactory wrapping(inner);
    Log clientLog;
    ClientFactory client;
    client.protocol = [&] {
        auto p = std::make_unique<Scripted>(clientLog);
        p->halfClose = true;
        p->onMade = [](Scripted& self) { self.transport->write("half"); };
        p->onReadLost = [](Scripted& self) { self.transport->loseConnection(); };
        return p;
    };
    Clock clock;
    MemoryNetwork net(clock);
    MemoryConnection& c = net.connect(wrapping, client);
    net.pump();
    REQUIRE(wrapping.protocols.size() == 1);
    auto* wrapper = wrapping.protocols[0];
    CHECK(wrapper->wrappedProtocol->transport == &wrapper->wrapperTransport());
    CHECK(wrapper->wrappedProtocol->factory == &inner);
    CHECK(wrapper->factory == &wrapping);
#if REACTOR_HAS_RTTI && defined(__GNUG__)
    CHECK(wrapper->logPrefix() == "Inner (ProtocolWrapper)");
#endif
    CHECK(inner.numPorts == 1);  // started through the wrapping factory
    net.flush();
    CHECK(log == Log{"made 127.0.0.1", "data half", "writeConnectionLost", "readConnectionLost", "disconnecting",
                     "lost ConnectionDone"});
    CHECK(clientLog == Log{"made", "data hi", "readConnectionLost", "lost ConnectionDone"});
    CHECK(wrapping.protocols.empty());
    CHECK(!c.established());
}

TEST_CASE("WrappingFactory: flow control and abort pass through the wrapper") {
    Log log;
    Factory inner;
    inner.protocol = [&] { return std::make_unique<Inner>(log); };
    policies::WrappingFactory wrapping(inner);
    ClientFactory client = ClientFactory::forProtocol<Protocol>();
    Clock clock;
    MemoryNetwork net(clock);
    MemoryConnection& c = net.connect(wrapping, client);
    net.flush();
    c.client()->readerStopped = true;
    auto* wrapper = wrapping.protocols.at(0);
    wrapper->wrapperTransport().write(std::string(70000, 'x'));
    CHECK(log.back() == "pause");  // the real transport paused the wrapped producer
    wrapper->wrapperTransport().pauseProducing();  // the reading side, through the wrapper
    c.client()->write("held");
    c.client()->readerStopped = false;
    net.flush();
    CHECK(log.back() == "resume");
    CHECK(std::find(log.begin(), log.end(), "data held") == log.end());
    wrapper->wrapperTransport().resumeProducing();
    net.flush();
    CHECK(log.back() == "data held");
    wrapper->wrapperTransport().abortConnection();
    net.flush();
    CHECK(log[log.size() - 2] == "stop");  // the producer is stopped with the connection
    CHECK(log.back() == "lost ConnectionAborted");
}

TEST_CASE("WrappingFactory over a ClientFactory passes the client callbacks on") {
    Attempts inner;
    inner.protocol = [] { return std::make_unique<Protocol>(); };
    policies::WrappingFactory wrapping(static_cast<ClientFactory&>(inner));
    Factory server = Factory::forProtocol<Protocol>();
    Clock clock;
    MemoryNetwork net(clock);
    net.connect(server, wrapping).refuseNext = 1;
    net.flush();
    REQUIRE(inner.failures.size() == 1);
    CHECK(inner.failures[0].rfind("ConnectionRefusedError", 0) == 0);
    CHECK(inner.started == 1);
    CHECK(inner.stopped == 1);
}

TEST_CASE("WrappingFactory destroyed before its wrappers: they forget it") {
    Clock clock;
    Factory inner = Factory::forProtocol<Protocol>();
    auto wrapping = std::make_unique<policies::WrappingFactory>(inner);
    std::unique_ptr<Protocol> p = wrapping->buildProtocol(Address{});
    StringTransport t;
    p->makeConnection(&t);
    CHECK(wrapping->protocols.size() == 1);
    wrapping.reset();
    p->connectionLost(Failure(error::ConnectionDone()));  // no call to the dead factory
    p.reset();
}

TEST_CASE("TimeoutFactory: closes after the period of silence; data either way restarts it") {
    Clock clock;
    Log log, clientLog;
    Factory inner;
    inner.protocol = [&] { return std::make_unique<Scripted>(log); };
    policies::TimeoutFactory timeouts(inner, clock, 3);
    ClientFactory client;
    client.protocol = [&] { return std::make_unique<Scripted>(clientLog); };
    MemoryNetwork net(clock);
    MemoryConnection& c = net.connect(timeouts, client);
    net.flush();
    net.advance(2);
    c.client()->write("x");  // received at t=2
    net.advance(2);
    CHECK(c.established());
    net.advance(1);
    CHECK(!c.established());
    CHECK(log == Log{"made", "data x", "lost ConnectionDone"});
    // A write by the wrapped protocol counts too.
    MemoryConnection& c2 = net.connect(timeouts, client);
    net.flush();
    net.advance(2);
    auto* wrapper = static_cast<policies::TimeoutProtocol*>(timeouts.protocols.at(0));
    wrapper->wrapperTransport().write("y");
    net.advance(2.9);
    CHECK(c2.established());
    net.advance(0.1);
    CHECK(!c2.established());
    CHECK(clock.getDelayedCalls().empty());
}

TEST_CASE("TimeoutProtocol: setTimeout() disarms, setTimeout(p) rearms, timeoutFunc can be overridden") {
    Clock clock;
    Factory inner = Factory::forProtocol<Protocol>();
    struct Warn : policies::TimeoutProtocol {
        using TimeoutProtocol::TimeoutProtocol;
        int fired = 0;
        void timeoutFunc() override { ++fired; }
    };
    struct Warning : policies::TimeoutFactory {
        using TimeoutFactory::TimeoutFactory;
        std::unique_ptr<policies::ProtocolWrapper> wrapProtocol(std::unique_ptr<Protocol> w, const Address&) override {
            return std::make_unique<Warn>(*this, std::move(w), *clock, timeoutPeriod);
        }
    } f(inner, clock, 5);
    std::unique_ptr<Protocol> p = f.buildProtocol(Address{});
    auto& w = static_cast<Warn&>(*p);
    StringTransport t;
    p->makeConnection(&t);
    w.setTimeout();
    clock.advance(10);
    CHECK(w.fired == 0);
    CHECK(!w.timeoutPeriod);
    w.setTimeout(1);
    clock.advance(1);
    CHECK(w.fired == 1);
    CHECK(!t.disconnecting);
    w.setTimeout(1);
    p.reset();  // destroyed with a timer pending: cancelled
    CHECK(clock.getDelayedCalls().empty());
}

TEST_CASE("LimitTotalConnectionsFactory: the over-limit connection is refused, or gets overflowProtocol") {
    Clock clock;
    policies::LimitTotalConnectionsFactory limited;
    Log log;
    limited.protocol = [&] { return std::make_unique<Scripted>(log); };
    limited.connectionLimit = 2;
    Log c1, c2, c3, c4, c5;
    auto clientFor = [](Log& l) {
        ClientFactory f;
        f.protocol = [&l] { return std::make_unique<Scripted>(l); };
        return f;
    };
    ClientFactory f1 = clientFor(c1), f2 = clientFor(c2), f3 = clientFor(c3), f4 = clientFor(c4), f5 = clientFor(c5);
    MemoryNetwork net(clock);
    MemoryConnection& first = net.connect(limited, f1);
    net.connect(limited, f2);
    net.connect(limited, f3);
    net.flush();
    CHECK(limited.connectionCount == 2);
    CHECK(c3 == Log{"made", "lost ConnectionDone"});  // refused: TCP closes it at once
    CHECK(c1 == Log{"made"});
    CHECK(limited.protocols.size() == 2);
    CHECK(limited.protocols[0]->wrappedProtocol->factory == &limited);
    // Over the limit with an overflow protocol: it gets to say why.
    limited.overflowProtocol = []() -> std::unique_ptr<Protocol> {
        struct Busy : Protocol {
            void connectionMade() override {
                transport->write("busy\r\n");
                transport->loseConnection();
            }
        };
        return std::make_unique<Busy>();
    };
    net.connect(limited, f4);
    net.flush();
    CHECK(c4 == Log{"made", "data busy\r\n", "lost ConnectionDone"});
    CHECK(limited.connectionCount == 2);  // 3 while the busy one was open
    first.client()->loseConnection();
    net.flush();
    CHECK(limited.connectionCount == 1);
    net.connect(limited, f5);
    net.flush();
    CHECK(c5 == Log{"made"});
    CHECK(limited.connectionCount == 2);
}

TEST_CASE("LimitConnectionsByPeer: per host, counted until connectionLost") {
    Clock clock;
    Factory inner = Factory::forProtocol<Protocol>();
    policies::LimitConnectionsByPeer byPeer(inner);
    byPeer.maxConnectionsPerPeer = 2;
    byPeer.doStart();
    auto a1 = byPeer.buildProtocol({"TCP", "1.2.3.4", 1, false});
    auto a2 = byPeer.buildProtocol({"TCP", "1.2.3.4", 2, false});
    CHECK(a1);
    CHECK(a2);
    CHECK(!byPeer.buildProtocol({"TCP", "1.2.3.4", 3, false}));
    CHECK(byPeer.buildProtocol({"TCP", "5.6.7.8", 1, false}));  // built and dropped: uncounted again
    CHECK(byPeer.peerConnections == std::vector<std::pair<std::string, int>>{{"1.2.3.4", 2}});
    StringTransport t;
    a1->makeConnection(&t);
    a1->connectionLost(Failure(error::ConnectionDone()));
    CHECK(byPeer.peerConnections == std::vector<std::pair<std::string, int>>{{"1.2.3.4", 1}});
    CHECK(byPeer.buildProtocol({"TCP", "1.2.3.4", 4, false}));
    byPeer.doStop();
    // A limit of 0 refuses every connection, from a host never seen too
    // (Twisted: peerConnections.get(host, 0) >= max; before: one let in).
    policies::LimitConnectionsByPeer none(inner);
    none.maxConnectionsPerPeer = 0;
    none.doStart();
    CHECK(!none.buildProtocol({"TCP", "9.9.9.9", 1, false}));
    CHECK(none.peerConnections.empty());
    none.doStop();
}

// Twisted 22.4: ThrottlingFactory(wrapped, maxConnectionCount=2,
// readLimit=1000, writeLimit=100) on a task.Clock; three buildProtocol ->
// [True, True, False]; one connection reads 3000 bytes and writes 250 with a
// producer registered; clock.advance(1) -> both transports "paused", the
// producers paused at 1.0; at 2.0 still paused; at 3.0 "producing" again
// (the write throttle ends at 2.5); both lost -> connectionCount 0, no
// delayed calls left.
TEST_CASE("ThrottlingFactory: over a limit, every connection waits (bytes / limit - 1) seconds") {
    Clock clock;
    struct Recorder : Protocol, IProducer {
        Clock& clock;
        std::vector<std::string>& log;
        Recorder(Clock& c, std::vector<std::string>& l) : clock(c), log(l) {}
        std::string at() const { return " at " + std::to_string(clock.seconds()).substr(0, 3); }
        void connectionMade() override { transport->registerProducer(this, true); }
        void dataReceived(std::string_view d) override {
            log.push_back(std::to_string(d.size()) + " bytes" + at());
            if (d.size() == 3000) transport->write(std::string(250, 'w'));
        }
        void pauseProducing() override { log.push_back("pause" + at()); }
        void resumeProducing() override { log.push_back("resume" + at()); }
        void stopProducing() override {}
    };
    Log a, b;
    int built = 0;
    Factory inner;
    inner.protocol = [&]() -> std::unique_ptr<Protocol> {
        return std::make_unique<Recorder>(clock, built++ == 0 ? a : b);
    };
    policies::ThrottlingFactory throttled(inner, clock);
    throttled.maxConnectionCount = 2;
    throttled.readLimit = 1000;
    throttled.writeLimit = 100;
    Log third;
    ClientFactory client = ClientFactory::forProtocol<Protocol>();
    ClientFactory thirdClient;
    thirdClient.protocol = [&] { return std::make_unique<Scripted>(third); };
    MemoryNetwork net(clock);
    MemoryConnection& ca = net.connect(throttled, client);
    MemoryConnection& cb = net.connect(throttled, client);
    net.connect(throttled, thirdClient);
    net.flush();
    CHECK(throttled.connectionCount == 2);
    CHECK(third == Log{"made", "lost ConnectionDone"});
    ca.client()->write(std::string(3000, 'r'));
    net.flush();
    net.advance(1.5);
    ca.client()->write("more");
    cb.client()->write("also");
    net.advance(1.4);
    CHECK(a == Log{"3000 bytes at 0.0", "pause at 1.0", "resume at 2.5"});
    CHECK(b == Log{"pause at 1.0", "resume at 2.5"});  // every connection is throttled
    net.advance(0.1);  // t = 3: reading again
    CHECK(a == Log{"3000 bytes at 0.0", "pause at 1.0", "resume at 2.5", "4 bytes at 3.0"});
    CHECK(b == Log{"pause at 1.0", "resume at 2.5", "4 bytes at 3.0"});
    ca.client()->loseConnection();
    cb.client()->loseConnection();
    net.flush();
    CHECK(throttled.connectionCount == 0);
    CHECK(clock.getDelayedCalls().empty());
}

// On real sockets: a limit of one connection and an idle timeout, stacked.
TEST_CASE("LimitTotalConnectionsFactory and TimeoutFactory on loopback TCP") {
    test::CleanReactor t;
    Reactor& r = t.r;
    policies::LimitTotalConnectionsFactory limited;
    limited.connectionLimit = 1;
    limited.protocol = [] {
        struct Hello : Protocol {
            void connectionMade() override { transport->write("hello\r\n"); }
        };
        return std::make_unique<Hello>();
    };
    policies::TimeoutFactory idle(limited, r, 0.2);
    ListeningPort port = r.listenTCP(0, idle, {"127.0.0.1"});
    struct Client : Protocol {
        Log& log;
        explicit Client(Log& l) : log(l) {}
        void dataReceived(std::string_view d) override { log.push_back(std::string(d)); }
        void connectionLost(const Failure& reason) override { log.push_back("lost " + reason.type()); }
    };
    Log first, second;
    ClientFactory f1, f2;
    f1.protocol = [&] { return std::make_unique<Client>(first); };
    f2.protocol = [&] { return std::make_unique<Client>(second); };
    r.connectTCP("127.0.0.1", port.getHost().port, f1);
    REQUIRE(testing::runUntil(r, [&] { return !first.empty(); }));
    r.connectTCP("127.0.0.1", port.getHost().port, f2);
    REQUIRE(testing::runUntil(r, [&] { return !second.empty(); }));
    CHECK(second == Log{"lost ConnectionDone"});  // over the limit: closed at once
    CHECK(first == Log{"hello\r\n"});
    REQUIRE(testing::runUntil(r, [&] { return first.size() == 2; }));  // idle for 0.2 s
    CHECK(first.back() == "lost ConnectionDone");
    CHECK(testing::runUntil(r, [&] { return limited.connectionCount == 0; }));
    port.stopListening();
    CHECK(testing::runUntilClean(r));
}

// On real sockets: one connection per address, and a read limit that
// holds the second second's data back until its throttle ends.
TEST_CASE("LimitConnectionsByPeer and ThrottlingFactory on loopback TCP") {
    test::CleanReactor t;
    Reactor& r = t.r;
    std::string got;
    double lastAt = 0;
    Factory inner;
    inner.protocol = [&]() -> std::unique_ptr<Protocol> {
        struct Collect : Protocol {
            Reactor& r;
            std::string& got;
            double& at;
            Collect(Reactor& re, std::string& g, double& a) : r(re), got(g), at(a) {}
            void dataReceived(std::string_view d) override {
                got.append(d);
                at = r.seconds();
            }
        };
        return std::make_unique<Collect>(r, got, lastAt);
    };
    policies::ThrottlingFactory throttled(inner, r);
    throttled.readLimit = 1000;
    policies::LimitConnectionsByPeer onePerPeer(throttled);
    onePerPeer.maxConnectionsPerPeer = 1;
    ListeningPort port = r.listenTCP(0, onePerPeer, {"127.0.0.1"});
    struct Client : Protocol {
        Log& log;
        explicit Client(Log& l) : log(l) {}
        void connectionMade() override { log.push_back("made"); }
        void connectionLost(const Failure& reason) override { log.push_back("lost " + reason.type()); }
    };
    Log first, second;
    ClientFactory f1, f2;
    ITransport* sender = nullptr;
    f1.protocol = [&]() -> std::unique_ptr<Protocol> {
        struct Sender : Client {
            ITransport*& out;
            Sender(Log& l, ITransport*& o) : Client(l), out(o) {}
            void connectionMade() override {
                Client::connectionMade();
                out = transport;
            }
        };
        return std::make_unique<Sender>(first, sender);
    };
    f2.protocol = [&] { return std::make_unique<Client>(second); };
    const double start = r.seconds();
    r.connectTCP("127.0.0.1", port.getHost().port, f1);
    REQUIRE(testing::runUntil(r, [&] { return sender && onePerPeer.protocols.size() == 1; }));
    r.connectTCP("127.0.0.1", port.getHost().port, f2);
    REQUIRE(testing::runUntil(r, [&] { return second.size() == 2; }));
    CHECK(second == Log{"made", "lost ConnectionDone"});  // a second one from 127.0.0.1: refused
    sender->write(std::string(2000, 'x'));  // twice the limit: the check at 1 s throttles reads for 1 s
    REQUIRE(testing::runUntil(r, [&] { return got.size() == 2000; }));
    REQUIRE(testing::runUntil(r, [&] { return throttled.unthrottleReadsID.active(); }, 3));
    sender->write("late");
    REQUIRE(testing::runUntil(r, [&] { return got.size() == 2004; }, 5));
    CHECK(lastAt - start >= 1.9);  // held until the throttle ended (about 2 s after the start)
    sender->loseConnection();
    REQUIRE(testing::runUntil(r, [&] { return first.size() == 2 && throttled.connectionCount == 0; }));
    CHECK(onePerPeer.peerConnections.empty());
    port.stopListening();
    CHECK(testing::runUntilClean(r));
}

}  // TEST_SUITE policies

// Found by a second reader's reproducers (tests/…: each failed before its fix).
TEST_SUITE("memory") {

TEST_CASE("a server factory destroyed by its own protocol's connectionMade: dropped silently, no crash") {
    test::LogCapture quiet;
    struct SelfDestruct : Protocol {
        std::function<void()> onMade;
        void connectionMade() override { onMade(); }
    };
    reactor::Clock clock;
    ClientFactory client;
    client.protocol = [] { return std::make_unique<Protocol>(); };
    auto* server = new Factory;
    server->protocol = [&] {
        auto p = std::make_unique<SelfDestruct>();
        p->onMade = [&] {
            delete server;  // a one-shot server
            server = nullptr;
        };
        return p;
    };
    MemoryNetwork net(clock);
    auto& c = net.connect(*server, client);
    net.flush();  // crashed: the client's makeConnection ran on an abandoned connection
    CHECK(server == nullptr);
    CHECK_FALSE(c.established());
}

TEST_CASE("an end that aborted gets ConnectionAborted when the peer's reset reaches it too (as on TCP)") {
    reactor::Clock clock;
    std::vector<std::string> seen;
    struct Aborter : Protocol {
        std::vector<std::string>* seen;
        std::string who;
        Aborter(std::vector<std::string>* s, std::string w) : seen(s), who(std::move(w)) {}
        void connectionMade() override { transport->abortConnection(); }
        void connectionLost(const Failure& reason) override { seen->push_back(who + " " + reason.type()); }
    };
    auto server = Factory::forProtocol<Aborter>(&seen, std::string("server"));
    auto client = ClientFactory::forProtocol<Aborter>(&seen, std::string("client"));
    MemoryNetwork net(clock);
    net.connect(server, client);
    net.flush();
    std::sort(seen.begin(), seen.end());
    CHECK(seen == std::vector<std::string>{"client ConnectionAborted", "server ConnectionAborted"});
}

TEST_CASE("TimeoutFactory and ThrottlingFactory around a ReconnectingClientFactory pass its callbacks on") {
    // Twisted 22.4: WrappingFactory forwards startedConnecting and
    // clientConnectionFailed to any wrapped factory; the retry happens.
    reactor::Clock clock;
    Factory server = Factory::forProtocol<Protocol>();
    for (int kind = 0; kind < 2; ++kind) {
        CAPTURE(kind);
        ReconnectingClientFactory rcf(clock);
        rcf.protocol = [] { return std::make_unique<Protocol>(); };
        rcf.jitter = 0;
        std::unique_ptr<policies::WrappingFactory> wrapper;
        if (kind == 0)
            wrapper = std::make_unique<policies::TimeoutFactory>(rcf, clock, 100);
        else
            wrapper = std::make_unique<policies::ThrottlingFactory>(rcf, clock);
        MemoryNetwork net(clock);
        auto& c = net.connect(server, *wrapper);
        c.refuseNext = 1;
        net.advance(10);
        CHECK(c.established());  // refused once, then retried by the factory inside
        CHECK(rcf.retries == 1);
        rcf.stopTrying();
    }
}

}  // TEST_SUITE memory
