// Endpoints: serverFromString / clientFromString (Twisted's strports
// grammar), listen and connect through them over TCP and UNIX sockets, and
// connectProtocol's ownership.
//
// Twisted 22.4, the grammar:
//   from twisted.internet.endpoints import _parse
//   _parse('a:b:d=1:c')              -> (['a', 'b', 'c'], {'d': '1'})
//   _parse(r'unix:/tmp/a\:b:mode=600') -> (['unix', '/tmp/a:b'], {'mode': '600'})
//   _parse('tcp:8000:interface=x=y') -> (['tcp', '8000'], {'interface': 'x=y'})
// and the endpoints:
//   serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(f)  # Deferred -> port
//   clientFromString(reactor, "tcp:127.0.0.1:%d" % port).connect(f)   # Deferred -> protocol,
//                                                    # fired right after its connectionMade
//   serverFromString(reactor, "unix:/x/s")   # lockfile=1 and mode 0o666 by default
//   d = endpoint.connect(f); d.cancel()      # ConnectingCancelledError(address)
//   serverFromString(reactor, "bogus:1")     # ValueError: Unknown endpoint type: 'bogus'
#if !defined(_WIN32)
#include <sys/stat.h>
#include <unistd.h>
#endif

#include <cstdlib>
#include <map>
#include <memory>
#include <string>

#include "support.hpp"

using namespace reactor;

namespace {

#if !defined(_WIN32)  // for the UNIX socket tests
struct TempDir {
    std::string path;
    TempDir() {
        char tmpl[] = "/tmp/reactor-ep-XXXXXX";
        char* made = ::mkdtemp(tmpl);
        REQUIRE(made != nullptr);
        path = made;
    }
    ~TempDir() { std::system(("rm -rf '" + path + "'").c_str()); }
};

bool exists(const std::string& path) {
    struct stat st {};
    return ::lstat(path.c_str(), &st) == 0;
}
#endif

/// Echoes every byte back.
struct Echo : Protocol {
    void dataReceived(std::string_view d) override { transport->write(d); }
};

/// Sends a greeting, keeps what comes back, and closes after `want` bytes.
struct Greeter : Protocol {
    std::string greeting, got;
    std::size_t want;
    bool made = false, lost = false;
    std::string lostType;
    explicit Greeter(std::string g = "hello") : greeting(std::move(g)), want(greeting.size()) {}
    void connectionMade() override {
        made = true;
        transport->write(greeting);
    }
    void dataReceived(std::string_view d) override {
        got.append(d);
        if (got.size() >= want) transport->loseConnection();
    }
    void connectionLost(const Failure& reason) override {
        lost = true;
        lostType = reason.type();
    }
};

}  // namespace

TEST_SUITE("endpoints") {

TEST_CASE("bad descriptions are refused with a message that names the problem") {
    Reactor r;
    struct Case {
        const char* text;
        const char* why;
    };
    const Case servers[] = {
        {"", "no endpoint type"},
        {"8000", "unknown endpoint type '8000'"},
        {"bogus:1", "unknown endpoint type 'bogus' (known: tcp, tcp6, unix)"},
        {"tcp", "missing port"},
        {"tcp:http", "port must be a whole number from 0 to 65535, not 'http'"},
        {"tcp:65536", "port must be a whole number from 0 to 65535, not '65536'"},
        {"tcp:80x", "not '80x'"},
        {"tcp:8000:colour=blue", "unknown parameter 'colour' (tcp: takes port, interface, backlog)"},
        {"tcp:8000:backlog=-1", "backlog must be a whole number"},
        {"tcp:8000:127.0.0.1:5:more", "unexpected field 'more'"},
        {"tcp:8000:=x", "a parameter without a name"},
        {"unix", "missing path"},
        {"unix:/tmp/s:mode=999", "mode must be an octal number"},
        {"unix:/tmp/s:lockfile=yes", "lockfile must be a whole number from 0 to 1"},
        {"unix:/tmp/s\\", "ends with a lone backslash"},
    };
    for (const Case& c : servers) {
        CAPTURE(c.text);
        CHECK_MISUSE_WITH(serverFromString(r, c.text), error::ValueError, c.why);
    }
    const Case clients[] = {
        {"tcp:127.0.0.1", "missing port"},
        {"tcp:port=80", "missing host"},
        {"tcp:h:0", "port must be a whole number from 1 to 65535"},
        {"tcp:h:80:timeout=soon", "timeout must be a number of seconds, not 'soon'"},
        {"tcp:h:80:timeout=-1", "timeout must be a number of seconds"},
        {"unix:timeout=3", "missing path"},
        {"udp:h:53", "unknown endpoint type 'udp'"},
    };
    for (const Case& c : clients) {
        CAPTURE(c.text);
        CHECK_MISUSE_WITH(clientFromString(r, c.text), error::ValueError, c.why);
    }
    // A NUL byte in a description: the OS would read only what precedes it
    // ("tcp:80\0garbage" listened on port 80; Twisted: ValueError).
    using namespace std::string_literals;
    for (const std::string& text : {"tcp:80\0garbage"s, "tcp:0:backlog=5\0x"s, "tcp:0:interface=127.0.0.1\0evil"s,
                                    "unix:/tmp/a\0b"s}) {
        CAPTURE(text.size());
        CHECK_MISUSE_WITH(serverFromString(r, text), error::ValueError, "contains a NUL byte");
    }
    CHECK_MISUSE_WITH(clientFromString(r, "tcp:127.0.0.1:80\0x"s), error::ValueError, "contains a NUL byte");
    CHECK(testing::cleanUp(r) == "");
}

TEST_CASE("the grammar: positional and named fields, escapes, '=' inside a value") {
    Reactor r;
    auto a = serverFromString(r, "tcp:port=0:interface=127.0.0.1:backlog=5");
    CHECK(a->describe() == "TCP port 0 on 127.0.0.1");
    auto b = serverFromString(r, "tcp6:0");
    CHECK(b->describe() == "TCP port 0 on ::");
    auto c = serverFromString(r, "unix:/tmp/a\\:b:mode=600");
    CHECK(c->describe() == "UNIX socket /tmp/a:b");
    auto d = serverFromString(r, "unix:address=@abstract");
    CHECK(d->describe() == "UNIX socket @abstract");
    // A colon inside a value is escaped, IPv6 literals included (as in Twisted).
    auto e = clientFromString(r, "tcp6:host=\\:\\:1:port=6667:timeout=2.5");
    CHECK(e->describe() == "TCP [::1]:6667");
    auto f = clientFromString(r, "tcp:6667:host=example.org");  // Twisted: one positional with host= is the port
    CHECK(f->describe() == "TCP example.org:6667");
    auto g = clientFromString(r, "unix:path=/run/x.sock:lockfile=1");
    CHECK(g->describe() == "UNIX socket /run/x.sock");
    CHECK(testing::cleanUp(r) == "");
}

TEST_CASE("listen and connect through strings over TCP; the protocol outlives its connection") {
    test::CleanReactor t;
    Factory server = Factory::forProtocol<Echo>();
    std::optional<ListeningPort> port;
    serverFromString(t.r, "tcp:0:interface=127.0.0.1")->listen(server).addCallback([&](ListeningPort p) {
        port = p;
    });
    REQUIRE(port.has_value());  // listening is immediate: the Deferred has fired
    REQUIRE(port->listening());

    Factory client = Factory::forProtocol<Greeter>(std::string("ping"));
    std::shared_ptr<Protocol> connected;
    bool madeBeforeFire = false;
    auto endpoint = clientFromString(t.r, "tcp:127.0.0.1:" + std::to_string(port->getHost().port));
    endpoint->connect(client).addCallback([&](std::shared_ptr<Protocol> p) {
        madeBeforeFire = static_cast<Greeter&>(*p).made;  // fired right after connectionMade
        connected = p;
    });
    endpoint.reset();  // the endpoint may go once connect() returned
    REQUIRE(testing::runUntil(t.r, [&] { return connected && static_cast<Greeter&>(*connected).lost; }, 5.0));
    auto& g = static_cast<Greeter&>(*connected);
    CHECK(madeBeforeFire);
    CHECK(g.got == "ping");
    CHECK(g.lostType == "ConnectionDone");
    CHECK(g.factory == &client);
    // After connectionLost the transport is detached from the protocol we kept.
    CHECK(g.transport == nullptr);
    CHECK_FALSE(g.connected);
    port->stopListening();
    CHECK(testing::runUntilClean(t.r));
}

#if !defined(_WIN32)  // UNIX-domain sockets: not offered on Windows
TEST_CASE("connectProtocol: a protocol you own, over TCP and over a UNIX socket") {
    TempDir dir;
    test::CleanReactor t;
    Factory server = Factory::forProtocol<Echo>();
    ListeningPort tcp = t.r.listenTCP(0, server, {"127.0.0.1"});

    std::shared_ptr<Greeter> viaTcp;
    connectProtocol<Greeter>(t.r, "127.0.0.1", tcp.getHost().port, "over tcp")
        .addCallback([&](std::shared_ptr<Greeter> p) { viaTcp = p; });

    std::optional<ListeningPort> unix;
    serverFromString(t.r, "unix:" + dir.path + "/echo.sock:mode=600")->listen(server).addCallback([&](ListeningPort p) {
        unix = p;
    });
    REQUIRE(unix.has_value());
    CHECK(exists(dir.path + "/echo.sock.lock"));  // lockfile=1 is the default, as in Twisted
    auto mine = std::make_shared<Greeter>("over unix");
    std::weak_ptr<Greeter> watch = mine;
    std::shared_ptr<Greeter> viaUnix;
    connectProtocol(*clientFromString(t.r, "unix:path=" + dir.path + "/echo.sock:lockfile=1"), mine)
        .addCallback([&](std::shared_ptr<Greeter> p) { viaUnix = p; });

    REQUIRE(testing::runUntil(t.r, [&] { return viaTcp && viaTcp->lost && viaUnix && viaUnix->lost; }, 5.0));
    CHECK(viaTcp->got == "over tcp");
    CHECK(viaUnix.get() == mine.get());
    CHECK(viaUnix->got == "over unix");
    CHECK(viaUnix->factory == nullptr);  // no factory built it
    viaUnix.reset();
    mine.reset();
    CHECK(watch.expired());  // the connection let go of it at the end of its turn
    tcp.stopListening();
    unix->stopListening();
    CHECK(testing::runUntilClean(t.r));
    CHECK_FALSE(exists(dir.path + "/echo.sock"));
    CHECK_FALSE(exists(dir.path + "/echo.sock.lock"));
}
#endif

TEST_CASE("connect failures and listen failures arrive as Failures in the Deferred") {
    test::CleanReactor t;
    // A port nobody listens on: take one, then close it.
    Factory server = Factory::forProtocol<Echo>();
    ListeningPort taken = t.r.listenTCP(0, server, {"127.0.0.1"});
    int port = taken.getHost().port;

    // Listening on a busy port fails in the Deferred (also without exceptions).
    std::string listenFailure;
    serverFromString(t.r, "tcp:" + std::to_string(port) + ":interface=127.0.0.1")
        ->listen(server)
        .addErrback([&](const Failure& f) {
            listenFailure = f.type() + ": " + f.getErrorMessage();
            return ListeningPort();
        });
    CHECK(listenFailure.find("CannotListenError") == 0);
    CHECK(listenFailure.find("Address already in use") != std::string::npos);
    taken.stopListening();

    Factory client = Factory::forProtocol<Greeter>();
    std::string failed;
    clientFromString(t.r, "tcp:127.0.0.1:" + std::to_string(port))
        ->connect(client)
        .addErrback([&](const Failure& f) {
            failed = f.type();
            return std::shared_ptr<Protocol>();
        });
    REQUIRE(testing::runUntil(t.r, [&] { return !failed.empty(); }, 5.0));
    CHECK(failed == "ConnectionRefusedError");

    // A factory that builds nothing: NoProtocol.
    struct Nothing : Factory {
        std::unique_ptr<Protocol> buildProtocol(const Address&) override { return nullptr; }
    } nothing;
    ListeningPort listening = t.r.listenTCP(0, server, {"127.0.0.1"});
    std::string none;
    clientFromString(t.r, "tcp:127.0.0.1:" + std::to_string(listening.getHost().port))
        ->connect(nothing)
        .addErrback([&](const Failure& f) {
            none = f.type();
            return std::shared_ptr<Protocol>();
        });
    REQUIRE(testing::runUntil(t.r, [&] { return !none.empty(); }, 5.0));
    CHECK(none == "NoProtocol");
    CHECK(nothing.numPorts == 0);  // started and stopped with its attempt
    listening.stopListening();
    CHECK(testing::runUntilClean(t.r));
}

TEST_CASE("cancelling while connecting: ConnectingCancelledError, the attempt stops, nothing is left") {
    test::CleanReactor t;
    Factory client = Factory::forProtocol<Greeter>();
    std::string type, message;
    auto d = clientFromString(t.r, "tcp:127.0.0.1:1")->connect(client);
    d.addErrback([&](const Failure& f) {
        type = f.type();
        message = f.getErrorMessage();
        return std::shared_ptr<Protocol>();
    });
    d.cancel();  // connectTCP never completes inside the call: still connecting
    CHECK(type == "ConnectingCancelledError");
    CHECK(message == "Connecting to 127.0.0.1:1 was cancelled.");
    CHECK(testing::runUntilClean(t.r));
    CHECK(client.numPorts == 0);
}

TEST_CASE("the factory destroyed while connecting: the attempt closes silently") {
    test::CleanReactor t;
    Factory server = Factory::forProtocol<Echo>();
    ListeningPort port = t.r.listenTCP(0, server, {"127.0.0.1"});
    bool fired = false;
    {
        Factory client = Factory::forProtocol<Greeter>();
        clientFromString(t.r, "tcp:127.0.0.1:" + std::to_string(port.getHost().port))
            ->connect(client)
            .addBoth([&](Result<std::shared_ptr<Protocol>>) {
                fired = true;
                return Result<std::shared_ptr<Protocol>>(std::shared_ptr<Protocol>());
            });
    }  // destroyed before the connection completes
    CHECK(testing::runUntilClean(t.r, 1.0) == false);  // the port is still open: not clean
    CHECK_FALSE(fired);  // nothing calls into the dead factory's world
    port.stopListening();
    CHECK(testing::runUntilClean(t.r));
}

}  // TEST_SUITE

// The README's testing chapter, verbatim but for the KV server it leaves to
// the reader: keep the two in step.
namespace readme {
struct KVProtocol : reactor::LineReceiver {
    std::map<std::string, std::string> store;
    void lineReceived(std::string_view line) override {
        std::string l(line);
        if (l.rfind("SET ", 0) == 0) {
            auto sp = l.find(' ', 4);
            store[l.substr(4, sp - 4)] = l.substr(sp + 1);
            sendLine("OK");
        } else if (l.rfind("GET ", 0) == 0) {
            sendLine("VALUE " + store[l.substr(4)]);
        }
    }
};
struct KVFactory : reactor::Factory {
    KVFactory() { protocol = [] { return std::make_unique<KVProtocol>(); }; }
};
// The test's client: sends two commands, keeps the replies, then closes.
struct KVClient : reactor::LineReceiver {
    std::vector<std::string> replies;
    bool closed = false;
    void connectionMade() override { sendLine("SET k v"); sendLine("GET k"); }
    void lineReceived(std::string_view line) override {
        replies.emplace_back(line);
        if (replies.size() == 2) transport->loseConnection();
    }
    void connectionLost(const reactor::Failure&) override { closed = true; }
};

TEST_CASE("README: SET then GET over loopback") {
    reactor::Reactor r;
    KVFactory server;                                       // your server factory
    auto port = r.listenTCP(0, server, {"127.0.0.1"});      // 0: any free port, loopback only
    auto client = std::make_shared<KVClient>();             // yours: still readable after the close
    reactor::TCP4ClientEndpoint to(r, "127.0.0.1", port.getHost().port);
    reactor::connectProtocol(to, client);

    CHECK(reactor::testing::runUntil(r, [&] { return client->closed; }, 5.0));   // bounded, no sleep
    CHECK(client->replies == std::vector<std::string>{"OK", "VALUE v"});

    port.stopListening();
    CHECK(reactor::testing::runUntilClean(r));      // both ends closed, no timers left
    CHECK(reactor::testing::cleanUp(r) == "");      // else: names each leftover timer
}                                                   // (file:line) and descriptor
}  // namespace readme

// Found by a second reader's reproducers (each failed before its fix).
TEST_SUITE("endpoints") {

TEST_CASE("a kept protocol is detached when its connection is closed silently (reactor destroyed)") {
    Factory server = Factory::forProtocol<Echo>();
    auto kept = std::make_shared<Greeter>("x");
    {
        Reactor r;
        ListeningPort port = r.listenTCP(0, server, {"127.0.0.1"});
        TCP4ClientEndpoint to(r, "127.0.0.1", port.getHost().port);
        kept->want = 1000;  // never closes by itself
        connectProtocol(to, kept);
        REQUIRE(testing::runUntil(r, [&] { return kept->got.size() == 1; }, 5.0));
        CHECK(kept->transport != nullptr);
    }  // ~Reactor closes it without connectionLost
    CHECK(kept->transport == nullptr);  // was a dangling pointer to the freed connection
    CHECK_FALSE(kept->connected);
    CHECK_FALSE(kept->lost);
}

TEST_CASE("the user's factory is stopped again when the reactor goes with an endpoint attempt open") {
    struct Counting : Factory {
        int starts = 0;
        void startFactory() override { ++starts; }
    } client;
    client.protocol = [] { return std::make_unique<Greeter>(); };
    {
        Reactor r;
        clientFromString(r, "tcp:127.0.0.1:1")->connect(client);  // pending when the reactor goes
        CHECK(client.numPorts == 1);
    }
    CHECK(client.numPorts == 0);  // stayed 1 before: a later use never started it again
    test::CleanReactor t;
    ListeningPort p = t.r.listenTCP(0, client, {"127.0.0.1"});
    CHECK(client.starts == 2);
    p.stopListening();
}

TEST_CASE("cancelled or stopped inside buildProtocol: reported failed, and no connection after all") {
    test::CleanReactor t;
    Factory server = Factory::forProtocol<Echo>();
    ListeningPort port = t.r.listenTCP(0, server, {"127.0.0.1"});
    struct Canceller : ClientFactory {
        std::function<void()> inBuild;
        Greeter* built = nullptr;
        bool failed = false;
        std::unique_ptr<Protocol> buildProtocol(const Address&) override {
            inBuild();
            auto p = std::make_unique<Greeter>();
            built = p.get();
            return p;
        }
        void clientConnectionFailed(IConnector&, const Failure&) override { failed = true; }
    };
    {
        Canceller f;
        Deferred<std::shared_ptr<Protocol>> d;
        f.inBuild = [&] { d.cancel(); };
        std::string why;
        d = clientFromString(t.r, "tcp:127.0.0.1:" + std::to_string(port.getHost().port))->connect(f);
        d.addErrback([&](const Failure& e) {
            why = e.type();
            return std::shared_ptr<Protocol>();
        });
        REQUIRE(testing::runUntil(t.r, [&] { return !why.empty(); }, 5.0));
        CHECK(why == "ConnectingCancelledError");
        CHECK(testing::runUntilClean(t.r, 0.5) == false);  // only the listening port is left
        CHECK(f.numPorts == 0);
    }
    {
        Canceller f;
        std::shared_ptr<IConnector> c;
        f.inBuild = [&] { c->stopConnecting(); };
        c = t.r.connectTCP("127.0.0.1", port.getHost().port, f);
        REQUIRE(testing::runUntil(t.r, [&] { return f.failed; }, 5.0));
        testing::runUntil(t.r, [] { return false; }, 0.2);
        CHECK(c->getDestination().port == port.getHost().port);
        CHECK_FALSE(c->isConnecting());
    }
    port.stopListening();
    CHECK(testing::runUntilClean(t.r));
}

TEST_CASE("cancelled inside connectionMade: the Deferred fails and the connection closes") {
    test::CleanReactor t;
    Factory server = Factory::forProtocol<Echo>();
    ListeningPort port = t.r.listenTCP(0, server, {"127.0.0.1"});
    struct SelfCancel : Protocol {
        Deferred<std::shared_ptr<Protocol>>* d = nullptr;
        bool lost = false;
        void connectionMade() override { d->cancel(); }
        void connectionLost(const Failure&) override { lost = true; }
    };
    auto p = std::make_shared<SelfCancel>();
    TCP4ClientEndpoint to(t.r, "127.0.0.1", port.getHost().port);
    std::string why;
    Deferred<std::shared_ptr<Protocol>> d = detail::connectEndpoint(to, nullptr, p);
    p->d = &d;
    d.addErrback([&](const Failure& e) {
        why = e.type();
        return std::shared_ptr<Protocol>();
    });
    REQUIRE(testing::runUntil(t.r, [&] { return p->lost; }, 5.0));
    CHECK(why == "ConnectingCancelledError");
    port.stopListening();
    CHECK(testing::runUntilClean(t.r));
}

#if REACTOR_HAS_EXCEPTIONS
TEST_CASE("exceptions: from buildProtocol the Deferred fails with it; from connectionMade and connectionLost too") {
    test::LogCapture quiet;
    test::CleanReactor t;
    Factory server = Factory::forProtocol<Echo>();
    ListeningPort port = t.r.listenTCP(0, server, {"127.0.0.1"});
    const std::string where = "tcp:127.0.0.1:" + std::to_string(port.getHost().port);

    struct Throws : Factory {
        std::unique_ptr<Protocol> buildProtocol(const Address&) override { throw error::ValueError("no protocol today"); }
    } throwing;
    std::string why;
    clientFromString(t.r, where)->connect(throwing).addErrback([&](const Failure& e) {
        why = e.type() + ": " + e.getErrorMessage();
        return std::shared_ptr<Protocol>();
    });
    REQUIRE(testing::runUntil(t.r, [&] { return !why.empty(); }, 5.0));
    CHECK(why == "ValueError: no protocol today");

    struct Broken : Protocol {
        void connectionMade() override { throw error::RuntimeError("made"); }
        void connectionLost(const Failure&) override { throw error::RuntimeError("lost"); }
    };
    std::string why2;
    connectProtocol(*clientFromString(t.r, where), std::make_shared<Broken>()).addErrback([&](const Failure& e) {
        why2 = e.getErrorMessage();
        return std::shared_ptr<Broken>();
    });
    REQUIRE(testing::runUntil(t.r, [&] { return !why2.empty(); }, 5.0));  // never fired before
    CHECK(why2 == "made");
    port.stopListening();
    CHECK(testing::runUntilClean(t.r));
}
#endif

TEST_CASE("the grammar, as Twisted: positional server fields, the last of a repeated parameter") {
    Reactor r;
    CHECK(serverFromString(r, "tcp:0:127.0.0.1:7")->describe() == "TCP port 0 on 127.0.0.1");
    CHECK(serverFromString(r, "tcp:0:")->describe() == "TCP port 0 on every IPv4 address");
    CHECK(serverFromString(r, "tcp:0:interface=10.0.0.1:interface=127.0.0.1")->describe() ==
          "TCP port 0 on 127.0.0.1");
    CHECK_MISUSE_WITH(serverFromString(r, "unix:/tmp/x:4777"), error::ValueError,
                      "mode must be an octal number from 0 to 777");
    Factory f = Factory::forProtocol<Echo>();
    CHECK_MISUSE_WITH(r.listenUNIX("/tmp/never-made", f, defaultBacklog, -1), error::CannotListenError,
                      "mode must be a permission from 0 to 0777");
    CHECK(testing::cleanUp(r) == "");
}

}  // TEST_SUITE
