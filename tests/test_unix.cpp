// UNIX-domain stream sockets on real sockets in a temporary directory:
// listenUNIX / connectUNIX with the same protocols as TCP, addresses, the
// socket file's life, wantPID locks, abstract names, peer credentials.
//
// Twisted 22.4, for the semantics the first tests check:
//   port = reactor.listenUNIX(path, sf, mode=0o600)   # file mode 0o600
//   reactor.listenUNIX(path, sf)    # CannotListenError: ... [Errno 98] Address already in use.
//   client: getHost() UNIXAddress(None), getPeer() UNIXAddress(path)
//   server: getHost() UNIXAddress(path), getPeer() UNIXAddress(None)
//   reactor.connectUNIX(path + "nope", cf)
//       # ConnectError: An error occurred while connecting: 2: No such file or directory.
//   port.stopListening()            # the socket file is removed
#if !defined(_WIN32)  // UNIX-domain sockets and pid lock files: not offered on Windows
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <memory>
#include <string>

#include "support.hpp"

using namespace reactor;

namespace {

/// A fresh directory under /tmp, removed with what is left in it.
struct TempDir {
    std::string path;
    TempDir() {
        char tmpl[] = "/tmp/reactor-unix-XXXXXX";
        char* made = ::mkdtemp(tmpl);
        REQUIRE(made != nullptr);
        path = made;
    }
    ~TempDir() { std::system(("rm -rf '" + path + "'").c_str()); }
    std::string operator/(const std::string& name) const { return path + "/" + name; }
};

bool exists(const std::string& path) {
    struct stat st {};
    return ::lstat(path.c_str(), &st) == 0;
}

struct Seen {
    std::string data;
    bool made = false, lost = false;
    std::string lostType;
    Address host, peer;
    std::optional<PeerCredentials> creds;
};

/// Records what it sees; the server side echoes and the client side closes
/// once it got `expect` bytes back.
struct Probe : Protocol {
    std::shared_ptr<Seen> seen;
    std::size_t expect = 0;
    std::string greeting;
    Probe(std::shared_ptr<Seen> s, std::size_t e, std::string g) : seen(std::move(s)), expect(e), greeting(std::move(g)) {}
    void connectionMade() override {
        seen->made = true;
        seen->host = transport->getHost();
        seen->peer = transport->getPeer();
        seen->creds = transport->getPeerCredentials();
        if (!greeting.empty()) transport->write(greeting);
    }
    void dataReceived(std::string_view d) override {
        seen->data.append(d);
        if (expect == 0)
            transport->write(d);
        else if (seen->data.size() >= expect)
            transport->loseConnection();
    }
    void connectionLost(const Failure& reason) override {
        seen->lost = true;
        seen->lostType = reason.type();
    }
};

struct ProbeServer : Factory {
    std::shared_ptr<Seen> seen = std::make_shared<Seen>();
    Address builtFor;
    std::unique_ptr<Protocol> buildProtocol(const Address& addr) override {
        builtFor = addr;
        return std::make_unique<Probe>(seen, 0, "");
    }
};

struct ProbeClient : ClientFactory {
    std::shared_ptr<Seen> seen = std::make_shared<Seen>();
    std::string send = "hello over a UNIX socket";
    bool failed = false;
    std::string failType, failMessage;
    std::unique_ptr<Protocol> buildProtocol(const Address&) override {
        return std::make_unique<Probe>(seen, send.size(), send);
    }
    void clientConnectionFailed(IConnector&, const Failure& reason) override {
        failed = true;
        failType = reason.type();
        failMessage = reason.getErrorMessage();
    }
};

/// A pid that is certainly dead: a child that has exited and been reaped.
long deadPid() {
    pid_t child = ::fork();
    if (child == 0) ::_exit(0);
    int status = 0;
    ::waitpid(child, &status, 0);
    return child;
}

}  // namespace

TEST_SUITE("unix") {

TEST_CASE("a TCP protocol works unchanged over a UNIX socket: data, addresses, close, file removed") {
    TempDir dir;
    const std::string path = dir / "echo.sock";
    test::CleanReactor t;
    ProbeServer server;
    ListeningPort port = t.r.listenUNIX(path, server);
    REQUIRE(port.listening());
    CHECK(port.getHost() == Address::unixSocket(path));
    CHECK(port.getHost().str() == path);
    CHECK(exists(path));

    ProbeClient client;
    auto connector = t.r.connectUNIX(path, client);
    CHECK(connector->getDestination() == Address::unixSocket(path));
    REQUIRE(testing::runUntil(t.r, [&] { return client.seen->lost && server.seen->lost; }, 5.0));
    CHECK(client.seen->data == client.send);
    CHECK(server.seen->data == client.send);
    CHECK(client.seen->lostType == "ConnectionDone");
    CHECK(server.seen->lostType == "ConnectionDone");
    // Twisted: the client's end is unnamed, its peer the path; the reverse on the server.
    CHECK(client.seen->host == Address::unixSocket(""));
    CHECK(client.seen->peer == Address::unixSocket(path));
    CHECK(server.seen->host == Address::unixSocket(path));
    CHECK(server.seen->peer == Address::unixSocket(""));
    CHECK(server.seen->peer.str() == "(unnamed)");
    CHECK(server.builtFor.type == "UNIX");

    port.stopListening();
    CHECK_FALSE(exists(path));  // the socket file goes with the port
}

TEST_CASE("peer credentials name this process on both ends; TCP has none") {
    TempDir dir;
    test::CleanReactor t;
    ProbeServer server;
    ListeningPort port = t.r.listenUNIX(dir / "s", server);
    ProbeClient client;
    t.r.connectUNIX(dir / "s", client);
    REQUIRE(testing::runUntil(t.r, [&] { return client.seen->lost && server.seen->lost; }, 5.0));
    REQUIRE(server.seen->creds.has_value());
    CHECK(server.seen->creds->pid == static_cast<long>(::getpid()));
    CHECK(server.seen->creds->uid == static_cast<long>(::getuid()));
    CHECK(server.seen->creds->gid == static_cast<long>(::getgid()));
    REQUIRE(client.seen->creds.has_value());
    CHECK(client.seen->creds->pid == static_cast<long>(::getpid()));

    ProbeServer tcpServer;
    ListeningPort tcpPort = t.r.listenTCP(0, tcpServer, {"127.0.0.1"});
    ProbeClient tcpClient;
    t.r.connectTCP("127.0.0.1", tcpPort.getHost().port, tcpClient);
    REQUIRE(testing::runUntil(t.r, [&] { return tcpClient.seen->lost && tcpServer.seen->lost; }, 5.0));
    CHECK_FALSE(tcpServer.seen->creds.has_value());
    port.stopListening();
    tcpPort.stopListening();
}

TEST_CASE("a wrapped protocol (policies::WrappingFactory) still sees its peer's credentials") {
    TempDir dir;
    test::CleanReactor t;
    ProbeServer inner;
    policies::WrappingFactory wrapping(inner);
    ListeningPort port = t.r.listenUNIX(dir / "wrapped", wrapping);
    ProbeClient client;
    t.r.connectUNIX(dir / "wrapped", client);
    REQUIRE(testing::runUntil(t.r, [&] { return client.seen->lost && inner.seen->lost; }, 5.0));
    REQUIRE(inner.seen->creds.has_value());
    CHECK(inner.seen->creds->pid == static_cast<long>(::getpid()));
    port.stopListening();
}

TEST_CASE("mode sets the socket file's permissions") {
    TempDir dir;
    test::CleanReactor t;
    ProbeServer server;
    ListeningPort port = t.r.listenUNIX(dir / "private.sock", server, defaultBacklog, 0600);
    struct stat st {};
    REQUIRE(::stat((dir / "private.sock").c_str(), &st) == 0);
    CHECK(S_ISSOCK(st.st_mode));
    CHECK((st.st_mode & 0777) == 0600);
    port.stopListening();
}

// The mode holds before the socket listens, as in Twisted (bind, chmod,
// listen): with a umask of 0 (a daemon's), the file was 0777 while the
// port already listened and its factory started: anyone could connect in
// that window (found by a second reader with a connection from another uid).
TEST_CASE("mode holds before the UNIX socket listens, whatever the umask") {
    struct StatsOnStart : ProbeServer {
        std::string path;
        unsigned modeAtStart = 0;
        void startFactory() override {
            struct stat st {};
            if (::stat(path.c_str(), &st) == 0) modeAtStart = st.st_mode & 0777;
        }
    };
    TempDir dir;
    test::CleanReactor t;
    StatsOnStart server;
    server.path = dir / "daemon.sock";
    const mode_t previous = ::umask(0);
    ListeningPort port = t.r.listenUNIX(server.path, server, defaultBacklog, 0600);
    ::umask(previous);
    CHECK(server.modeAtStart == 0600);
    port.stopListening();
    // A path with a NUL byte would bind the part before it: refused.
    ProbeServer other;
    CHECK_MISUSE_WITH(t.r.listenUNIX(std::string("/tmp/nul\0byte", 13), other), error::CannotListenError,
                      "contains a NUL byte");
    CHECK(other.numPorts == 0);
}

TEST_CASE("a file already at the path: CannotListenError, and the file is left alone") {
    TempDir dir;
    const std::string path = dir / "busy.sock";
    test::CleanReactor t;
    ProbeServer server;
    ListeningPort first = t.r.listenUNIX(path, server);
    REQUIRE(first.listening());
    const std::string busy = "Couldn't listen on " + path + ": [Errno 98] Address already in use.";
    CHECK_MISUSE_WITH(t.r.listenUNIX(path, server), error::CannotListenError, busy.c_str());
    CHECK(exists(path));  // the failed listen removed nothing
    // The first port still works.
    ProbeClient client;
    t.r.connectUNIX(path, client);
    REQUIRE(testing::runUntil(t.r, [&] { return client.seen->lost && server.seen->lost; }, 5.0));
    CHECK(client.seen->data == client.send);
    first.stopListening();
    CHECK_FALSE(exists(path));
    CHECK(server.numPorts == 0);
}

TEST_CASE("wantPID: a dead owner's lock and socket file are taken over; a live owner's refuse") {
    TempDir dir;
    const std::string path = dir / "daemon.sock";
    const std::string lock = path + ".lock";
    test::CleanReactor t;
    ProbeServer server;

    // What a crashed daemon leaves: a socket file nobody listens on, and a
    // lock naming a process that is gone.
    {
        int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
        sockaddr_un a{};
        a.sun_family = AF_UNIX;
        std::snprintf(a.sun_path, sizeof a.sun_path, "%s", path.c_str());
        REQUIRE(::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
        ::close(fd);
    }
    REQUIRE(::symlink(std::to_string(deadPid()).c_str(), lock.c_str()) == 0);
    // Without wantPID the stale file is in the way, as in Twisted.
    CHECK_MISUSE_WITH(t.r.listenUNIX(path, server), error::CannotListenError, "Address already in use");

    ListeningPort port = t.r.listenUNIX(path, server, defaultBacklog, 0666, true);
    REQUIRE(port.listening());
    char owner[32] = {};
    REQUIRE(::readlink(lock.c_str(), owner, sizeof owner - 1) > 0);
    CHECK(std::string(owner) == std::to_string(::getpid()));

    // A live owner (this process) holds it now: a second server is refused.
    const std::string held = "Couldn't listen on " + path + ": Cannot acquire lock.";
    CHECK_MISUSE_WITH(t.r.listenUNIX(path, server, defaultBacklog, 0666, true), error::CannotListenError,
                      held.c_str());

    // checkPID: a client can insist that a live server holds the lock.
    ProbeClient client;
    t.r.connectUNIX(path, client, 30, true);
    REQUIRE(testing::runUntil(t.r, [&] { return client.seen->lost && server.seen->lost; }, 5.0));
    CHECK(client.seen->data == client.send);

    port.stopListening();
    CHECK_FALSE(exists(path));
    CHECK_FALSE(exists(lock));  // released with the port

    ProbeClient late;
    t.r.connectUNIX(path, late, 30, true);
    REQUIRE(testing::runUntil(t.r, [&] { return late.failed; }, 5.0));
    CHECK(late.failType == "BadFileError");
    CHECK(late.failMessage.find(lock) != std::string::npos);
}

TEST_CASE("connect failures: no file, a socket file nobody listens on, a path too long") {
    TempDir dir;
    test::CleanReactor t;

    ProbeClient missing;
    t.r.connectUNIX(dir / "nope", missing);
    CHECK_FALSE(missing.failed);  // reported from the loop, never inside connectUNIX
    REQUIRE(testing::runUntil(t.r, [&] { return missing.failed; }, 5.0));
    CHECK(missing.failType == "ConnectError");
    CHECK(missing.failMessage == "An error occurred while connecting: 2: No such file or directory.");

    const std::string stale = dir / "stale.sock";
    {
        ProbeServer server;
        ListeningPort p = t.r.listenUNIX(stale, server);
        // A socket file without a listener: bind one by hand and close it.
        p.stopListening();
        int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
        sockaddr_un a{};
        a.sun_family = AF_UNIX;
        std::snprintf(a.sun_path, sizeof a.sun_path, "%s", stale.c_str());
        REQUIRE(::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
        ::close(fd);
    }
    ProbeClient refused;
    t.r.connectUNIX(stale, refused);
    REQUIRE(testing::runUntil(t.r, [&] { return refused.failed; }, 5.0));
    CHECK(refused.failType == "ConnectionRefusedError");

    const std::string tooLong = dir / std::string(200, 'x');
    ProbeClient longPath;
    t.r.connectUNIX(tooLong, longPath);
    REQUIRE(testing::runUntil(t.r, [&] { return longPath.failed; }, 5.0));
    CHECK(longPath.failType == "BadFileError");
    CHECK(longPath.failMessage.find("longer than") != std::string::npos);

    ProbeServer server;
    CHECK_MISUSE_WITH(t.r.listenUNIX(tooLong, server), error::CannotListenError, "longer than");
    CHECK_MISUSE_WITH(t.r.listenUNIX("", server), error::CannotListenError, "needs a path");
    CHECK(server.numPorts == 0);
}

#if defined(__linux__)
TEST_CASE("Linux abstract names: no file, '@' in addresses") {
    test::CleanReactor t;
    const std::string name = std::string(1, '\0') + "reactor-test-" + std::to_string(::getpid());
    ProbeServer server;
    ListeningPort port = t.r.listenUNIX(name, server);
    REQUIRE(port.listening());
    CHECK(port.getHost().str() == "@reactor-test-" + std::to_string(::getpid()));
    ProbeClient client;
    t.r.connectUNIX(name, client);
    REQUIRE(testing::runUntil(t.r, [&] { return client.seen->lost && server.seen->lost; }, 5.0));
    CHECK(client.seen->data == client.send);
    CHECK(client.seen->peer == Address::unixSocket(name));
    CHECK(server.seen->host == Address::unixSocket(name));
    port.stopListening();
    // The name is free again at once (nothing to remove).
    ListeningPort again = t.r.listenUNIX(name, server);
    CHECK(again.listening());
    again.stopListening();
}
#endif

TEST_CASE("half-close and a line protocol over UNIX, as over TCP") {
    TempDir dir;
    test::CleanReactor t;
    struct Lines : LineReceiver {
        std::vector<std::string>* got;
        explicit Lines(std::vector<std::string>* g) : got(g) {}
        void lineReceived(std::string_view line) override {
            got->emplace_back(line);
            sendLine("ack " + std::string(line));
        }
        bool halfCloseable() const override { return true; }
        void readConnectionLost() override { transport->loseConnection(); }  // answered all, then close
    };
    std::vector<std::string> serverLines;
    auto server = Factory::forProtocol<Lines>(&serverLines);
    ListeningPort port = t.r.listenUNIX(dir / "lines", server);

    struct Asker : Protocol {
        std::string* got;
        bool* done;
        Asker(std::string* g, bool* d) : got(g), done(d) {}
        void connectionMade() override {
            transport->write("one\r\ntwo\r\n");
            transport->loseWriteConnection();  // the server still answers
        }
        void dataReceived(std::string_view d) override { got->append(d); }
        void connectionLost(const Failure&) override { *done = true; }
    };
    std::string answers;
    bool done = false;
    auto client = ClientFactory::forProtocol<Asker>(&answers, &done);
    t.r.connectUNIX(dir / "lines", client);
    REQUIRE(testing::runUntil(t.r, [&] { return done; }, 5.0));
    CHECK(serverLines == std::vector<std::string>{"one", "two"});
    CHECK(answers == "ack one\r\nack two\r\n");
    port.stopListening();
}

TEST_CASE("cleanUp names a leftover UNIX port and removes its file; a factory's death closes it") {
    TempDir dir;
    const std::string path = dir / "left.sock";
    Reactor r;
    {
        ProbeServer server;
        ListeningPort port = r.listenUNIX(path, server);
        REQUIRE(port.listening());
        std::string report = testing::cleanUp(r);
        CHECK(report.find("UNIX port listening on " + path) != std::string::npos);
        CHECK_FALSE(exists(path));
        ListeningPort again = r.listenUNIX(path, server);
        CHECK(again.listening());
    }  // the factory goes first: its port closes and its file goes
    CHECK_FALSE(exists(path));
    CHECK(testing::cleanUp(r) == "");
}

TEST_CASE("the shared_ptr factory overload of connectUNIX owns the factory") {
    TempDir dir;
    test::CleanReactor t;
    ProbeServer server;
    ListeningPort port = t.r.listenUNIX(dir / "s", server);
    auto client = std::make_shared<ProbeClient>();
    auto seen = client->seen;
    std::weak_ptr<ProbeClient> watch = client;
    auto connector = t.r.connectUNIX(dir / "s", std::move(client));
    REQUIRE(testing::runUntil(t.r, [&] { return seen->lost && server.seen->lost; }, 5.0));
    CHECK(seen->data == "hello over a UNIX socket");
    connector.reset();
    REQUIRE(testing::runUntil(t.r, [&] { return watch.expired(); }, 5.0));
    port.stopListening();
}

// (POSIX-only, so kept in this file.) A child forked from a process whose
// reactor listens, and that destroys its copy of that reactor as it exits:
// with epoll the child's removals edited the set it shares with its parent,
// whose port then never heard another connection (found by a second reader).
TEST_CASE("a forked child destroying its copy of the reactor leaves the parent's port working") {
    test::CleanReactor t;
    ProbeServer server;
    ListeningPort port = t.r.listenTCP(0, server, 50, "127.0.0.1");
    pid_t child = ::fork();
    REQUIRE(child >= 0);
    if (child == 0) {
        t.r.~Reactor();  // what returning from main would do in the child
        ::_exit(0);
    }
    int status = 0;
    REQUIRE(::waitpid(child, &status, 0) == child);
    CHECK(WIFEXITED(status));
    ProbeClient client;
    t.r.connectTCP("127.0.0.1", port.getHost().port, client);
    CHECK(testing::runUntil(t.r, [&] { return server.seen->made; }, 10));
    port.stopListening();
    t.r.disconnectAll();
}

}  // TEST_SUITE
#endif  // !_WIN32
