// TLS (section 10a) on real loopback sockets: our client and our server,
// against `openssl s_server` / `openssl s_client`, certificate failures,
// truncation, a stalled handshake, startTLS. Compiled only with
// REACTOR_WITH_OPENSSL (the Makefile adds it when libssl-dev is present).
//
// The certificates are made once per run with the `openssl` command in a
// temporary directory: a CA, a server certificate for localhost and
// 127.0.0.1, a client certificate, a self-signed one, an expired one.
#if defined(REACTOR_WITH_OPENSSL)

#include <fcntl.h>
#include <malloc.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#define REACTOR_WITH_IRC
#include "support.hpp"

#define HTTP_GET_NO_MAIN
#include "../examples/http_get.cpp"

extern char** environ;

using namespace reactor;

namespace {

bool contains(const std::string& s, std::string_view needle) { return s.find(needle) != std::string::npos; }

/// The throwaway PKI, made on first use, removed at exit.
struct Pki {
    std::string dir;
    bool ok = false;
    std::string path(const std::string& name) const { return dir + "/" + name; }
    Pki() {
        char tmpl[] = "/tmp/reactor-tls-XXXXXX";
        if (!mkdtemp(tmpl)) return;
        dir = tmpl;
        const std::string ec = " -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes ";
        const std::string d = " 2>>" + path("log") + " >&2";
        std::string cmd =
            "cd " + dir + " && printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\\n' > san.ext" +
            " && printf 'subjectAltName=DNS:wrong.example\\n' > wrong.ext" +
            " && openssl req -x509" + ec + "-keyout ca.key -out ca.pem -days 2 -subj '/CN=Reactor Test CA'" + d +
            " && openssl req" + ec + "-keyout server.key -out server.csr -subj '/CN=localhost'" + d +
            " && openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -extfile san.ext"
            " -out server.pem" + d +
            " && openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days -1 -extfile san.ext"
            " -out expired.pem" + d +
            " && openssl req" + ec + "-keyout wrong.key -out wrong.csr -subj '/CN=wrong.example'" + d +
            " && openssl x509 -req -in wrong.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -extfile wrong.ext"
            " -out wrong.pem" + d +
            " && openssl req -x509" + ec + "-keyout self.key -out self.pem -days 2 -subj '/CN=localhost'"
            " -addext subjectAltName=DNS:localhost,IP:127.0.0.1" + d +
            " && openssl req" + ec + "-keyout client.key -out client.csr -subj '/CN=reactor client'" + d +
            " && openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2"
            " -out client.pem" + d;
        ok = std::system(cmd.c_str()) == 0;
    }
    ~Pki() {
        if (!dir.empty()) std::system(("rm -rf " + dir).c_str());
    }
    ssl::ServerTLSSettings server(const std::string& cert = "server.pem", const std::string& key = "server.key") const {
        ssl::ServerTLSSettings s;
        s.certificate = ssl::pemFile(path(cert));
        s.privateKey = ssl::pemFile(path(key));
        return s;
    }
    ssl::ClientTLSSettings client() const {
        ssl::ClientTLSSettings s;
        s.trust = ssl::trustRoot(ssl::pemFile(path("ca.pem")));
        return s;
    }
};

const Pki& pki() {
    static Pki p;
    REQUIRE_MESSAGE(p.ok, "could not make the test certificates with the openssl command");
    return p;
}

/// The `openssl` command makes the certificates and plays the peer in some
/// tests; libssl-dev does not bring it.
bool haveOpensslCommand() {
    static const bool have = std::system("openssl version >/dev/null 2>&1") == 0;
    if (!have) MESSAGE("*** TLS test SKIPPED: the openssl command is missing (apt-get install openssl) ***");
    return have;
}
/// Each test's first line: the certificates, or a loud skip.
#define NEED_PKI(p)                    \
    if (!haveOpensslCommand()) return; \
    const Pki& p = pki()

/// What a test protocol saw; outlives the protocol.
struct Record {
    bool made = false, handshake = false;
    std::string data;
    std::size_t bytes = 0;  // every byte received, kept in `data` or not
    int lostCount = 0;
    std::string lostType, lostMessage;
    std::vector<std::string> lostChain;
    std::string alpn, peerSubject, version;
    bool readLost = false;
    ITransport* transport = nullptr;
    bool lost() const { return lostCount > 0; }
    bool is(const char* type) const {
        for (auto& t : lostChain)
            if (t == type) return true;
        return false;
    }
};

struct Recorder : Protocol {
    std::shared_ptr<Record> rec;
    bool echo = false, halfClose = false, countOnly = false;
    std::string greeting;  // written in connectionMade (before the handshake completes)
    explicit Recorder(std::shared_ptr<Record> r) : rec(std::move(r)) {}
    void connectionMade() override {
        rec->made = true;
        rec->transport = transport;
        if (!greeting.empty()) transport->write(greeting);
    }
    void handshakeCompleted() override {
        rec->handshake = true;
        ssl::ISSLTransport* t = transport->getTLS();
        REQUIRE(t != nullptr);
        rec->alpn = t->negotiatedProtocol();
        rec->peerSubject = t->peerCertificateSubject();
        rec->version = t->protocolVersion();
    }
    void dataReceived(std::string_view d) override {
        rec->bytes += d.size();
        if (!countOnly) rec->data.append(d);
        if (echo) transport->write(d);
    }
    bool halfCloseable() const override { return halfClose; }
    void readConnectionLost() override { rec->readLost = true; }
    void connectionLost(const Failure& reason) override {
        ++rec->lostCount;
        rec->lostType = reason.type();
        rec->lostMessage = reason.getErrorMessage();
        for (const char* t : {"SSLError", "CertificateError", "TLSHandshakeTimeout", "ConnectionLost", "ConnectionDone",
                              "ConnectionAborted"})
            if (reason.check(t)) rec->lostChain.push_back(t);
        rec->transport = nullptr;
    }
};

struct ServerFactory : Factory {
    std::vector<std::shared_ptr<Record>> records;
    bool echo = false, halfClose = false, countOnly = false;
    std::unique_ptr<Protocol> buildProtocol(const Address&) override {
        records.push_back(std::make_shared<Record>());
        auto p = std::make_unique<Recorder>(records.back());
        p->echo = echo;
        p->countOnly = countOnly;
        p->halfClose = halfClose;
        return p;
    }
    std::shared_ptr<Record> last() const { return records.empty() ? nullptr : records.back(); }
};

struct Client : ClientFactory {
    std::vector<std::shared_ptr<Record>> records;
    std::vector<std::string> failed, lost;
    std::string greeting;
    bool halfClose = false;
    std::unique_ptr<Protocol> buildProtocol(const Address&) override {
        records.push_back(std::make_shared<Record>());
        auto p = std::make_unique<Recorder>(records.back());
        p->greeting = greeting;
        p->halfClose = halfClose;
        return p;
    }
    void clientConnectionFailed(IConnector&, const Failure& reason) override { failed.push_back(reason.str()); }
    void clientConnectionLost(IConnector&, const Failure& reason) override { lost.push_back(reason.str()); }
    std::shared_ptr<Record> last() const { return records.empty() ? nullptr : records.back(); }
};

/// A child process (openssl s_server / s_client) with its stdin and its
/// stdout+stderr on pipes; killed and reaped by stop() or the destructor.
struct Child {
    pid_t pid = -1;
    int in = -1, out = -1;
    std::string output;
    bool eof = false;
    Reactor* reactor = nullptr;

    bool start(Reactor& r, const std::vector<std::string>& args) {
        int inPipe[2], outPipe[2];
        if (pipe(inPipe) != 0) return false;
        if (pipe(outPipe) != 0) return false;
        posix_spawn_file_actions_t fa;
        posix_spawn_file_actions_init(&fa);
        posix_spawn_file_actions_adddup2(&fa, inPipe[0], 0);
        posix_spawn_file_actions_adddup2(&fa, outPipe[1], 1);
        posix_spawn_file_actions_adddup2(&fa, outPipe[1], 2);
        posix_spawn_file_actions_addclose(&fa, inPipe[1]);
        posix_spawn_file_actions_addclose(&fa, outPipe[0]);
        std::vector<char*> argv;
        for (auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
        argv.push_back(nullptr);
        int rc = posix_spawnp(&pid, argv[0], &fa, nullptr, argv.data(), environ);
        posix_spawn_file_actions_destroy(&fa);
        close(inPipe[0]);
        close(outPipe[1]);
        in = inPipe[1];
        out = outPipe[0];
        fcntl(out, F_SETFL, fcntl(out, F_GETFL) | O_NONBLOCK);
        fcntl(in, F_SETFD, FD_CLOEXEC);
        fcntl(out, F_SETFD, FD_CLOEXEC);
        if (rc != 0) {
            pid = -1;
            return false;
        }
        reactor = &r;
        r.addReader(out, [this] {
            char buf[4096];
            ssize_t n = read(out, buf, sizeof buf);
            if (n > 0)
                output.append(buf, static_cast<std::size_t>(n));
            else if (n == 0) {
                eof = true;
                reactor->removeReader(out);
            }
        });
        return true;
    }
    void send(const std::string& s) {
        if (in >= 0) CHECK(write(in, s.data(), s.size()) == static_cast<ssize_t>(s.size()));
    }
    void closeInput() {
        if (in >= 0) close(in);
        in = -1;
    }
    /// Exit status, waiting at most `timeout` seconds for it; -1 if killed.
    int stop(double timeout = 0) {
        int status = -1;
        if (pid > 0) {
            if (timeout > 0 && reactor) {
                testing::runUntil(*reactor, [&] { return waitpid(pid, &status, WNOHANG) == pid; }, timeout);
                if (status != -1) pid = -1;
            }
            if (pid > 0) {
                kill(pid, SIGKILL);
                waitpid(pid, &status, 0);
                status = -1;
            }
            pid = -1;
        }
        closeInput();
        if (out >= 0) {
            if (reactor) reactor->removeReader(out);
            close(out);
            out = -1;
        }
        return status >= 0 && WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    }
    ~Child() { stop(); }
};

/// A server and a verified client connected over TLS on 127.0.0.1.
ListeningPort tlsPair(Reactor& r, ServerFactory& server, Client& client, const ssl::TLSOptions& serverOptions,
                      const ssl::TLSOptions& clientOptions) {
    ListeningPort port = r.listenSSL(0, server, serverOptions, ListenOptions{"127.0.0.1"});
    r.connectSSL("127.0.0.1", port.getHost().port, client, clientOptions);
    return port;
}

}  // namespace

TEST_SUITE("tls") {

// Twisted 22.4, the same steps (the certificates of this file; P records
// its events, implements IHandshakeListener; the server echoes, the client
// writes b"hello" in connectionMade and calls loseConnection on the echo):
//   port = reactor.listenSSL(0, SF(), ssl.CertificateOptions(privateKey=..., certificate=...,
//                            acceptableProtocols=[b"http/1.1"]), interface="127.0.0.1")
//   reactor.connectSSL("127.0.0.1", port.getHost().port, CF(), ssl.optionsForClientTLS(
//       u"localhost", trustRoot=ca, acceptableProtocols=[b"h2", b"http/1.1"]))
// observed:
//   ('server', 'connectionMade')  ('client', 'connectionMade')
//   ('client', 'handshakeCompleted', b'http/1.1')  ('server', 'handshakeCompleted', b'http/1.1')
//   ('server', 'data', b'hello')  ('client', 'data', b'hello')
//   ('server', 'connectionLost', 'ConnectionDone')  ('client', 'connectionLost', 'ConnectionDone')
//   ('factory', 'clientConnectionLost', 'ConnectionDone')
TEST_CASE("echo over TLS: verified, ALPN, SNI, writes before the handshake, clean close both sides") {
    test::CleanReactor t;
    Reactor& r = t.r;
    NEED_PKI(p);
    auto ss = p.server();
    ss.acceptableProtocols = {"http/1.1"};
    auto cs = p.client();
    cs.acceptableProtocols = {"h2", "http/1.1"};
    ServerFactory server;
    server.echo = true;
    Client client;
    client.greeting = "hello";  // written in connectionMade, before the handshake
    ListeningPort port = tlsPair(r, server, client, ssl::serverOptions(ss), ssl::optionsForClientTLS("localhost", cs));
    REQUIRE(testing::runUntil(r, [&] { return client.last() && client.last()->data == "hello"; }));
    auto c = client.last();
    auto s = server.last();
    CHECK(c->made);
    CHECK(c->handshake);
    CHECK(s->handshake);
    CHECK(c->alpn == "http/1.1");
    CHECK(s->alpn == "http/1.1");
    CHECK(c->peerSubject == "/CN=localhost");
    CHECK(s->peerSubject == "");  // no client certificate asked
    CHECK(c->version.rfind("TLSv1.", 0) == 0);
    // getPeer/getHost are the TCP ends.
    CHECK(c->transport->getPeer() == port.getHost());
    CHECK(s->transport->getPeer() == c->transport->getHost());
    CHECK(c->transport->getTLS()->getHandle() != nullptr);
    c->transport->loseConnection();
    REQUIRE(testing::runUntil(r, [&] { return c->lost() && s->lost(); }));
    CHECK(c->lostType == "ConnectionDone");
    CHECK(s->lostType == "ConnectionDone");
    CHECK(c->lostCount == 1);
    CHECK(s->lostCount == 1);
    REQUIRE(client.lost.size() == 1);
    CHECK(contains(client.lost[0], "ConnectionDone"));
    CHECK(client.failed.empty());
    port.stopListening();
}

namespace {
long heapInUseKiB() {
    struct mallinfo2 m = ::mallinfo2();
    return static_cast<long>((m.uordblks + m.hblkhd) / 1024);
}
#if defined(__SANITIZE_ADDRESS__)
constexpr bool underASan = true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
constexpr bool underASan = true;
#else
constexpr bool underASan = false;
#endif
#else
constexpr bool underASan = false;
#endif

unsigned char patternAt(std::size_t i) { return static_cast<unsigned char>((i * 131u) ^ (i >> 16)); }

/// Sends `total` bytes of the pattern as a pull producer, checks the echo byte by byte.
struct Streamer : Protocol, IProducer {
    std::size_t total = 0, sent = 0, received = 0, mismatches = 0;
    long heapBase = 0, heapPeak = 0;
    bool done = false;
    std::string* lost = nullptr;  // outlives the protocol
    void connectionMade() override {
        heapBase = heapInUseKiB();
        transport->registerProducer(this, false);
    }
    void resumeProducing() override {
        if (sent >= total) return;
        std::string chunk(std::min<std::size_t>(64 * 1024, total - sent), '\0');
        for (std::size_t i = 0; i < chunk.size(); ++i) chunk[i] = static_cast<char>(patternAt(sent + i));
        sent += chunk.size();
        transport->write(chunk);
        if (sent >= total) transport->unregisterProducer();
        heapPeak = std::max(heapPeak, heapInUseKiB() - heapBase);
    }
    void stopProducing() override {}
    void dataReceived(std::string_view d) override {
        for (char ch : d)
            if (static_cast<unsigned char>(ch) != patternAt(received++)) ++mismatches;
        heapPeak = std::max(heapPeak, heapInUseKiB() - heapBase);
        if (received == total) done = true;
    }
    void connectionLost(const Failure& reason) override { *lost = reason.type(); }
};
}  // namespace

TEST_CASE("64 MiB through a TLS echo, both ways, byte-exact, with the heap bounded by backpressure") {
    test::CleanReactor t;
    Reactor& r = t.r;
    NEED_PKI(p);
    ServerFactory server;
    server.echo = true;  // writes in dataReceived: the TCP read-side backpressure holds it
    server.countOnly = true;
    ClientFactory client;
    Streamer* streamer = nullptr;
    std::string clientLost;
    const std::size_t total = underASan ? (16u << 20) : (64u << 20);
    client.protocol = [&] {
        auto s = std::make_unique<Streamer>();
        s->total = total;
        s->lost = &clientLost;
        streamer = s.get();
        return std::unique_ptr<Protocol>(std::move(s));
    };
    ListeningPort port = r.listenSSL(0, server, ssl::serverOptions(p.server()), ListenOptions{"127.0.0.1"});
    r.connectSSL("127.0.0.1", port.getHost().port, client, ssl::optionsForClientTLS("127.0.0.1", p.client()));
    REQUIRE(testing::runUntil(r, [&] { return streamer && streamer->done; }, 120));
    CHECK(streamer->received == total);
    CHECK(streamer->mismatches == 0);
    CHECK(server.last()->bytes == total);
    // Unbounded buffering would hold tens of MiB; backpressure keeps both
    // ends' buffers (plaintext and ciphertext) to a few hundred KiB.
    if (!underASan) CHECK_MESSAGE(streamer->heapPeak < 2 * 1024, "heap grew by " << streamer->heapPeak << " KiB");
    streamer->transport->loseConnection();
    REQUIRE(testing::runUntil(r, [&] { return server.last()->lost() && !clientLost.empty(); }));
    CHECK(server.last()->lostType == "ConnectionDone");
    CHECK(clientLost == "ConnectionDone");
    port.stopListening();
}

namespace {
/// A streaming producer that writes 64 KiB chunks until paused, registered
/// in connectionMade (before the handshake), then closes.
struct Pusher : Protocol, IProducer {
    std::size_t total = 0, sent = 0;
    int pauses = 0, pausesBeforeHandshake = 0;
    bool paused = false, handshake = false;
    void connectionMade() override {
        transport->registerProducer(this, true);
        resumeProducing();
    }
    void handshakeCompleted() override { handshake = true; }
    void pauseProducing() override {
        paused = true;
        ++pauses;
        if (!handshake) ++pausesBeforeHandshake;
    }
    void resumeProducing() override {
        paused = false;
        while (!paused && sent < total) {
            std::size_t n = std::min<std::size_t>(64 * 1024, total - sent);
            sent += n;
            transport->write(std::string(n, 'p'));
        }
        if (sent == total && transport) {
            transport->unregisterProducer();
            transport->loseConnection();  // after everything written
            sent = total + 1;
        }
    }
    void stopProducing() override {}
};
}  // namespace

TEST_CASE("a streaming producer registered before the handshake is paused, resumed, and all its bytes arrive") {
    test::CleanReactor t;
    Reactor& r = t.r;
    NEED_PKI(p);
    ServerFactory server;
    server.countOnly = true;
    ClientFactory client;
    Pusher* pusher = nullptr;
    client.protocol = [&] {
        auto s = std::make_unique<Pusher>();
        s->total = 8u << 20;
        pusher = s.get();
        return std::unique_ptr<Protocol>(std::move(s));
    };
    ListeningPort port = r.listenSSL(0, server, ssl::serverOptions(p.server()), ListenOptions{"127.0.0.1"});
    r.connectSSL("127.0.0.1", port.getHost().port, client, ssl::optionsForClientTLS("localhost", p.client()));
    REQUIRE(testing::runUntil(r, [&] { return pusher != nullptr; }));  // connectionMade ran
    CHECK_FALSE(pusher->handshake);
    int before = pusher->pausesBeforeHandshake;
    CHECK(before == 1);  // its first burst stopped above the high-water mark, held in the TLS layer
    REQUIRE(testing::runUntil(r, [&] { return server.last() && server.last()->lost(); }, 30));
    CHECK(server.last()->bytes == (8u << 20));
    CHECK(server.last()->lostType == "ConnectionDone");
    port.stopListening();
    CHECK(testing::runUntilClean(r));
}

TEST_CASE("testing::cleanUp names a TLS connection left open, and closes it") {
    NEED_PKI(p);
    Reactor r;
    ServerFactory server;
    Client client;
    ListeningPort port = tlsPair(r, server, client, ssl::serverOptions(p.server()),
                                 ssl::optionsForClientTLS("localhost", p.client()));
    REQUIRE(testing::runUntil(r, [&] { return client.last() && client.last()->handshake && server.last() &&
                                              server.last()->handshake; }));
    std::string report = testing::cleanUp(r);
    CHECK(contains(report, "TLS("));
    CHECK(client.last()->lost());
    CHECK(server.last()->lost());
    CHECK(testing::cleanUp(r) == "");
}

TEST_CASE("our client against openssl s_server (-rev): verified, a line each way, TLS 1.3 and 1.2") {
    test::CleanReactor t;
    Reactor& r = t.r;
    NEED_PKI(p);
    std::vector<std::string> args = {"openssl", "s_server", "-accept", "127.0.0.1:0", "-cert", p.path("server.pem"),
                                     "-key", p.path("server.key"), "-rev", "-naccept", "1"};
    std::string version = "TLSv1.3";
    SUBCASE("TLS 1.3 (the default)") {}
    SUBCASE("a server limited to TLS 1.2") {
        args.push_back("-tls1_2");
        version = "TLSv1.2";
    }
    Child srv;
    REQUIRE(srv.start(r, args));
    REQUIRE(testing::runUntil(r, [&] {
        std::size_t a = srv.output.find("ACCEPT 127.0.0.1:");
        return a != std::string::npos && srv.output.find('\n', a) != std::string::npos;
    }, 10));
    int portNumber = std::atoi(srv.output.c_str() + srv.output.find("ACCEPT 127.0.0.1:") + 17);
    REQUIRE(portNumber > 0);
    Client client;
    client.greeting = "hello tls\n";
    r.connectSSL("127.0.0.1", portNumber, client, ssl::optionsForClientTLS("localhost", p.client()));
    REQUIRE(testing::runUntil(r, [&] { return client.last() && contains(client.last()->data, "slt olleh"); }, 10));
    CHECK(client.last()->peerSubject == "/CN=localhost");
    CHECK(client.last()->version == version);
    client.last()->transport->loseConnection();
    REQUIRE(testing::runUntil(r, [&] { return client.last()->lost(); }));
    CHECK(client.last()->lostType == "ConnectionDone");
    srv.stop(5);
}

TEST_CASE("openssl s_client against our server: it verifies us, we echo, then close") {
    test::CleanReactor t;
    Reactor& r = t.r;
    NEED_PKI(p);
    ServerFactory server;
    server.echo = true;
    ListeningPort port = r.listenSSL(0, server, ssl::serverOptions(p.server()), ListenOptions{"127.0.0.1"});
    Child cli;
    REQUIRE(cli.start(r, {"openssl", "s_client", "-connect", "127.0.0.1:" + std::to_string(port.getHost().port),
                          "-CAfile", p.path("ca.pem"), "-verify_return_error", "-verify_hostname", "localhost",
                          "-servername", "localhost", "-quiet"}));
    cli.send("ping from s_client\n");
    REQUIRE(testing::runUntil(r, [&] { return server.last() && contains(server.last()->data, "ping from s_client\n"); }, 10));
    REQUIRE(testing::runUntil(r, [&] { return contains(cli.output, "ping from s_client"); }, 10));
    CHECK(server.last()->handshake);
    server.last()->transport->loseConnection();  // close_notify: s_client ends
    REQUIRE(testing::runUntil(r, [&] { return server.last()->lost() && cli.eof; }, 10));
    CHECK(server.last()->lostType == "ConnectionDone");
    CHECK(cli.stop(5) == 0);
    CHECK_FALSE(contains(cli.output, "verify error"));
    port.stopListening();
}

TEST_CASE("against Python's ssl module: our client to its server, its client to our server") {
    if (std::system("python3 -c 'import ssl' >/dev/null 2>&1") != 0) {
        MESSAGE("*** SKIPPED: python3 is not installed (apt-get install python3) ***");
        return;
    }
    test::CleanReactor t;
    Reactor& r = t.r;
    NEED_PKI(p);
    SUBCASE("Python's server: it upper-cases a line and closes with close_notify (unwrap)") {
        std::string script =
            "import socket, ssl\n"
            "ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)\n"
            "ctx.load_cert_chain('" + p.path("server.pem") + "', '" + p.path("server.key") + "')\n"
            "s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(1)\n"
            "print('PORT', s.getsockname()[1], flush=True)\n"
            "c, _ = s.accept()\n"
            "t = ctx.wrap_socket(c, server_side=True)\n"
            "data = t.recv(1024)\n"
            "t.sendall(data.upper())\n"
            "t.unwrap()\n"
            "print('CLEAN', flush=True)\n";
        Child py;
        REQUIRE(py.start(r, {"python3", "-c", script}));
        REQUIRE(testing::runUntil(r, [&] { return contains(py.output, "\n"); }, 10));
        int portNumber = std::atoi(py.output.c_str() + py.output.find("PORT ") + 5);
        REQUIRE(portNumber > 0);
        Client client;
        client.greeting = "hello python";
        r.connectSSL("127.0.0.1", portNumber, client, ssl::optionsForClientTLS("localhost", p.client()));
        REQUIRE(testing::runUntil(r, [&] { return client.last() && client.last()->lost(); }, 10));
        CHECK(client.last()->data == "HELLO PYTHON");
        CHECK(client.last()->lostType == "ConnectionDone");  // its close_notify, answered
        REQUIRE(testing::runUntil(r, [&] { return py.eof; }, 10));
        CHECK(contains(py.output, "CLEAN"));
        CHECK(py.stop(5) == 0);
    }
    SUBCASE("Python's client: it verifies us, sends, reads the echo, closes with close_notify (unwrap)") {
        ServerFactory server;
        server.echo = true;
        ListeningPort port = r.listenSSL(0, server, ssl::serverOptions(p.server()), ListenOptions{"127.0.0.1"});
        std::string script =
            "import socket, ssl\n"
            "ctx = ssl.create_default_context(cafile='" + p.path("ca.pem") + "')\n"
            "s = socket.create_connection(('127.0.0.1', " + std::to_string(port.getHost().port) + "))\n"
            "t = ctx.wrap_socket(s, server_hostname='localhost')\n"
            "t.sendall(b'ping from python')\n"
            "got = b''\n"
            "while len(got) < 16: got += t.recv(100)\n"
            "print(got.decode(), t.version(), flush=True)\n"
            "t.unwrap()\n"
            "print('CLEAN', flush=True)\n";
        Child py;
        REQUIRE(py.start(r, {"python3", "-c", script}));
        REQUIRE(testing::runUntil(r, [&] { return server.last() && server.last()->lost() && py.eof; }, 10));
        CHECK(server.last()->data == "ping from python");
        CHECK(server.last()->lostType == "ConnectionDone");
        CHECK(contains(py.output, "ping from python TLSv1.3"));
        CHECK(contains(py.output, "CLEAN"));
        CHECK(py.stop(5) == 0);
        port.stopListening();
    }
}

namespace {
/// Connects a verifying client for `host` to a server using `cert`; returns the client's record.
std::shared_ptr<Record> failedHandshake(Reactor& r, const std::string& host, const std::string& cert,
                                        const std::string& key, Client& client, ServerFactory& server) {
    const Pki& p = pki();
    ListeningPort port = r.listenSSL(0, server, ssl::serverOptions(p.server(cert, key)), ListenOptions{"127.0.0.1"});
    r.connectSSL("127.0.0.1", port.getHost().port, client, ssl::optionsForClientTLS(host, p.client()));
    REQUIRE(testing::runUntil(r, [&] {
        return client.last() && client.last()->lost() && server.last() && server.last()->lost();
    }));
    port.stopListening();
    return client.last();
}
}  // namespace

// Twisted 22.4, the steps of the echo test with a server certificate for
// wrong.example (optionsForClientTLS(u"localhost", trustRoot=ca)):
//   ('client', 'connectionMade')
//   ('client', 'handshakeCompleted', b'http/1.1')      <- service_identity checks the name after it
//   ('client', 'connectionLost', 'VerificationError', "...DNSMismatch(mismatched_id=DNS_ID(hostname=b'localhost'))")
//   ('factory', 'clientConnectionLost', 'ConnectionAborted')
//   ('server', 'connectionLost', 'ConnectionLost')
// The same order here (connectionMade, then connectionLost; never
// clientConnectionFailed), but the name is checked inside the handshake
// (no handshakeCompleted), and clientConnectionLost gets the reason the
// protocol got, not the TCP transport's (a deliberate departure: the
// factory is where reconnecting code logs why).
TEST_CASE("verification failures reach connectionLost and clientConnectionLost as CertificateError, saying why") {
    if (!haveOpensslCommand()) return;
    test::CleanReactor t;
    Reactor& r = t.r;
    SUBCASE("wrong host name") {
        Client client;
        ServerFactory server;
        auto c = failedHandshake(r, "localhost", "wrong.pem", "wrong.key", client, server);
        CHECK(c->made);  // as in Twisted: connectionMade, then connectionLost
        CHECK_FALSE(c->handshake);
        CHECK(c->is("CertificateError"));
        CHECK(c->is("SSLError"));
        CHECK(c->is("ConnectionLost"));
        CHECK(contains(c->lostMessage, "host 'localhost'"));
        CHECK(contains(c->lostMessage, "ostname mismatch"));
        CHECK(contains(c->lostMessage, "/CN=wrong.example"));
        REQUIRE(client.lost.size() == 1);
        CHECK(contains(client.lost[0], "CertificateError"));
        CHECK(client.failed.empty());
        CHECK(server.last()->is("SSLError"));  // the server hears the client's alert
        CHECK_FALSE(server.last()->handshake);
    }
    SUBCASE("an IP literal checked against the certificate's IP addresses") {
        Client client;
        ServerFactory server;
        auto c = failedHandshake(r, "127.0.0.2", "server.pem", "server.key", client, server);
        CHECK(c->is("CertificateError"));
        CHECK(contains(c->lostMessage, "host '127.0.0.2'"));
        CHECK(contains(c->lostMessage, "IP address mismatch"));
    }
    SUBCASE("self-signed") {
        Client client;
        ServerFactory server;
        auto c = failedHandshake(r, "localhost", "self.pem", "self.key", client, server);
        CHECK(c->is("CertificateError"));
        CHECK(contains(c->lostMessage, "self-signed certificate"));
        CHECK(contains(c->lostMessage, "/CN=localhost"));
    }
    SUBCASE("expired") {
        Client client;
        ServerFactory server;
        auto c = failedHandshake(r, "localhost", "expired.pem", "server.key", client, server);
        CHECK(c->is("CertificateError"));
        CHECK(contains(c->lostMessage, "certificate has expired"));
        CHECK(contains(c->lostMessage, "/CN=localhost"));
    }
    SUBCASE("the system trust store does not know our test CA") {
        Client client;
        ServerFactory server;
        const Pki& p = pki();
        ListeningPort port = r.listenSSL(0, server, ssl::serverOptions(p.server()), ListenOptions{"127.0.0.1"});
        r.connectSSL("127.0.0.1", port.getHost().port, client, ssl::optionsForClientTLS("localhost"));
        REQUIRE(testing::runUntil(r, [&] { return client.last() && client.last()->lost(); }));
        CHECK(client.last()->is("CertificateError"));
        CHECK(contains(client.last()->lostMessage, "unable to get local issuer certificate"));
        REQUIRE(testing::runUntil(r, [&] { return server.last() && server.last()->lost(); }));
        port.stopListening();
    }
}

TEST_CASE("insecureNoVerify connects to a self-signed server, and says so in the log") {
    test::CleanReactor t;
    Reactor& r = t.r;
    test::LogCapture log;
    NEED_PKI(p);
    ServerFactory server;
    server.echo = true;
    Client client;
    client.greeting = "x";
    ssl::ClientTLSSettings cs;
    cs.trust = ssl::insecureNoVerify();
    ListeningPort port = tlsPair(r, server, client, ssl::serverOptions(p.server("self.pem", "self.key")),
                                 ssl::optionsForClientTLS("wrong.example", cs));
    CHECK(log.contains("certificate verification is OFF"));
    REQUIRE(testing::runUntil(r, [&] { return client.last() && client.last()->data == "x"; }));
    client.last()->transport->loseConnection();
    REQUIRE(testing::runUntil(r, [&] { return server.last()->lost() && client.last()->lost(); }));
    port.stopListening();
}

TEST_CASE("client certificates: required and absent fails both sides; present, the server sees its subject") {
    test::CleanReactor t;
    Reactor& r = t.r;
    NEED_PKI(p);
    auto ss = p.server();
    ss.requireClientCertificate = ssl::pemFile(p.path("ca.pem"));
    ServerFactory server;
    server.echo = true;
    ListeningPort port = r.listenSSL(0, server, ssl::serverOptions(ss), ListenOptions{"127.0.0.1"});
    SUBCASE("absent") {
        Client client;
        client.greeting = "let me in";
        r.connectSSL("127.0.0.1", port.getHost().port, client, ssl::optionsForClientTLS("localhost", p.client()));
        REQUIRE(testing::runUntil(r, [&] { return client.last() && client.last()->lost() && server.last() &&
                                                  server.last()->lost(); }));
        CHECK(server.last()->is("SSLError"));
        CHECK(contains(server.last()->lostMessage, "peer did not return a certificate"));
        CHECK(server.last()->data.empty());
        // TLS 1.3: the client finished its side and hears the server's alert.
        CHECK(client.last()->is("SSLError"));
        CHECK(contains(client.last()->lostMessage, "certificate required"));
    }
    SUBCASE("present") {
        auto cs = p.client();
        cs.certificate = ssl::pemFile(p.path("client.pem"));
        cs.privateKey = ssl::pemFile(p.path("client.key"));
        Client client;
        client.greeting = "let me in";
        r.connectSSL("127.0.0.1", port.getHost().port, client, ssl::optionsForClientTLS("localhost", cs));
        REQUIRE(testing::runUntil(r, [&] { return client.last() && client.last()->data == "let me in"; }));
        CHECK(server.last()->peerSubject == "/CN=reactor client");
        client.last()->transport->loseConnection();
        REQUIRE(testing::runUntil(r, [&] { return server.last()->lost() && client.last()->lost(); }));
        CHECK(server.last()->lostType == "ConnectionDone");
        CHECK(client.last()->lostType == "ConnectionDone");
    }
    port.stopListening();
}

namespace {
/// A plain TCP server protocol that answers "STARTTLS\n" with "OK\n" and
/// starts TLS at once; keeps the raw TCP transport for the tests.
struct StartTlsServer : Protocol {
    std::shared_ptr<Record> rec;
    ssl::TLSOptions options;
    ITransport* tcp = nullptr;
    std::string clear;  // what arrived before TLS
    bool tls = false;
    void connectionMade() override { tcp = transport; }
    void dataReceived(std::string_view d) override {
        if (tls) {
            rec->data.append(d);
            transport->write(d);  // echo, encrypted
            return;
        }
        clear.append(d);
        if (clear == "STARTTLS\n") {
            transport->write("OK\n");  // in clear: written before startTLS
            transport->startTLS(options);
            tls = true;
        }
    }
    void handshakeCompleted() override { rec->handshake = true; }
    void connectionLost(const Failure& reason) override {
        ++rec->lostCount;
        rec->lostType = reason.type();
        rec->lostMessage = reason.getErrorMessage();
    }
};
struct StartTlsClient : Protocol {
    std::shared_ptr<Record> rec;
    ssl::TLSOptions options;
    std::string clear;
    bool tls = false;
    void connectionMade() override { transport->write("STARTTLS\n"); }
    void dataReceived(std::string_view d) override {
        if (tls) {
            rec->data.append(d);
            return;
        }
        clear.append(d);
        if (clear == "OK\n") {
            transport->startTLS(options);
            tls = true;
            transport->write("secret");  // waits for the handshake
        }
    }
    void handshakeCompleted() override {
        rec->handshake = true;
        rec->peerSubject = transport->getTLS()->peerCertificateSubject();
    }
    void connectionLost(const Failure& reason) override {
        ++rec->lostCount;
        rec->lostType = reason.type();
        rec->lostMessage = reason.getErrorMessage();
    }
};
}  // namespace

TEST_CASE("startTLS after a plaintext exchange (the STARTTLS pattern), and close_notify at the end") {
    test::CleanReactor t;
    Reactor& r = t.r;
    NEED_PKI(p);
    auto srec = std::make_shared<Record>(), crec = std::make_shared<Record>();
    StartTlsServer* srv = nullptr;
    Factory sf;
    sf.protocol = [&] {
        auto s = std::make_unique<StartTlsServer>();
        s->rec = srec;
        s->options = ssl::serverOptions(p.server());
        srv = s.get();
        return std::unique_ptr<Protocol>(std::move(s));
    };
    ClientFactory cf;
    StartTlsClient* cli = nullptr;
    cf.protocol = [&] {
        auto c = std::make_unique<StartTlsClient>();
        c->rec = crec;
        c->options = ssl::optionsForClientTLS("localhost", p.client());
        cli = c.get();
        return std::unique_ptr<Protocol>(std::move(c));
    };
    ListeningPort port = r.listenTCP(0, sf, 50, "127.0.0.1");
    r.connectTCP("127.0.0.1", port.getHost().port, cf);
    REQUIRE(testing::runUntil(r, [&] { return crec->data == "secret"; }));
    CHECK(srv->clear == "STARTTLS\n");
    CHECK(cli->clear == "OK\n");
    CHECK(srec->handshake);
    CHECK(crec->handshake);
    CHECK(crec->peerSubject == "/CN=localhost");
    CHECK(srec->data == "secret");
    CHECK(srv->transport != srv->tcp);  // the protocol's transport is now the TLS layer
    CHECK(srv->transport->getTLS() != nullptr);
    CHECK(srv->tcp->getTLS() == nullptr);
    // Starting TLS twice is misuse.
    CHECK_MISUSE_WITH(cli->transport->startTLS(cli->options), error::RuntimeError, "already");
    cli->transport->loseConnection();
    REQUIRE(testing::runUntil(r, [&] { return srec->lost() && crec->lost(); }));
    CHECK(srec->lostType == "ConnectionDone");
    CHECK(crec->lostType == "ConnectionDone");
    port.stopListening();
}

TEST_CASE("startTLS from a protocol connected through an endpoint (connectProtocol's wrapper passes it on)") {
    test::CleanReactor t;
    Reactor& r = t.r;
    NEED_PKI(p);
    auto srec = std::make_shared<Record>(), crec = std::make_shared<Record>();
    Factory sf;
    sf.protocol = [&] {
        auto s = std::make_unique<StartTlsServer>();
        s->rec = srec;
        s->options = ssl::serverOptions(p.server());
        return std::unique_ptr<Protocol>(std::move(s));
    };
    ListeningPort port = r.listenTCP(0, sf, 50, "127.0.0.1");
    auto cli = std::make_shared<StartTlsClient>();
    cli->rec = crec;
    cli->options = ssl::optionsForClientTLS("localhost", p.client());
    TCP4ClientEndpoint to(r, "127.0.0.1", port.getHost().port);
    connectProtocol(to, cli);
    REQUIRE(testing::runUntil(r, [&] { return crec->data == "secret"; }));
    CHECK(srec->data == "secret");  // decrypted by the server: it was not sent in clear
    CHECK(crec->handshake);         // handshakeCompleted reached the protocol through the wrapper
    CHECK(cli->transport->getTLS() != nullptr);
    cli->transport->loseConnection();
    REQUIRE(testing::runUntil(r, [&] { return srec->lost() && crec->lost(); }));
    CHECK(crec->lostType == "ConnectionDone");
    port.stopListening();
}

TEST_CASE("startTLS inside a policies wrapper: the wrapped server's writes are encrypted too") {
    test::CleanReactor t;
    Reactor& r = t.r;
    NEED_PKI(p);
    auto srec = std::make_shared<Record>(), crec = std::make_shared<Record>();
    StartTlsServer* srv = nullptr;
    Factory sf;
    sf.protocol = [&] {
        auto s = std::make_unique<StartTlsServer>();
        s->rec = srec;
        s->options = ssl::serverOptions(p.server());
        srv = s.get();
        return std::unique_ptr<Protocol>(std::move(s));
    };
    policies::TimeoutFactory wrapped(sf, r, 60);  // the server protocol's transport is the wrapper
    ListeningPort port = r.listenTCP(0, wrapped, 50, "127.0.0.1");
    auto cli = std::make_shared<StartTlsClient>();
    cli->rec = crec;
    cli->options = ssl::optionsForClientTLS("localhost", p.client());
    TCP4ClientEndpoint to(r, "127.0.0.1", port.getHost().port);
    connectProtocol(to, cli);
    REQUIRE(testing::runUntil(r, [&] { return crec->data == "secret" && srec->data == "secret"; }));
    CHECK(srec->handshake);  // handshakeCompleted reached the wrapped protocol
    CHECK(crec->handshake);
    REQUIRE(srv != nullptr);
    CHECK(srv->transport->getTLS() != nullptr);  // through the wrapper, to the TLS layer
    cli->transport->loseConnection();
    REQUIRE(testing::runUntil(r, [&] { return srec->lost() && crec->lost(); }));
    CHECK(srec->lostType == "ConnectionDone");
    port.stopListening();
}

TEST_CASE("irc::IRCClient over TLS (what irc_bot --tls does): it signs on and joins, verified") {
    test::CleanReactor t;
    Reactor& r = t.r;
    NEED_PKI(p);
    // A minimal IRC server: welcomes on USER, answers JOIN with the join.
    struct MiniIrc : LineOnlyReceiver {
        std::vector<std::string>* heard;
        explicit MiniIrc(std::vector<std::string>* h) : heard(h) {}
        void lineReceived(std::string_view line) override {
            heard->emplace_back(line);
            if (line.rfind("USER ", 0) == 0) sendLine(":srv 001 tlsbot :Welcome over TLS");
            if (line.rfind("JOIN ", 0) == 0) sendLine(":tlsbot!u@h JOIN " + std::string(line.substr(5)));
        }
    };
    std::vector<std::string> heard;
    auto sf = Factory::forProtocol<MiniIrc>(&heard);
    ListeningPort port = r.listenSSL(0, sf, ssl::serverOptions(p.server()), ListenOptions{"127.0.0.1"});
    struct Bot : irc::IRCClient {
        std::vector<std::string>* events;
        explicit Bot(std::vector<std::string>* e) : events(e) {
            nickname = "tlsbot";
            capNegotiation = false;  // the mini server knows no CAP
        }
        void signedOn() override {
            events->push_back("signedOn");
            join("#secure");
        }
        void joined(const std::string& channel) override {
            events->push_back("joined " + channel);
            transport->loseConnection();
        }
    };
    std::vector<std::string> events;
    auto cf = ClientFactory::forProtocol<Bot>(&events);
    r.connectSSL("localhost", port.getHost().port, cf, ssl::optionsForClientTLS("localhost", p.client()));
    REQUIRE(testing::runUntil(r, [&] { return events.size() == 2; }, 10.0));
    CHECK(events == std::vector<std::string>{"signedOn", "joined #secure"});
    CHECK(std::find(heard.begin(), heard.end(), "NICK tlsbot") != heard.end());
    port.stopListening();
    CHECK(testing::runUntilClean(r));
}

// Twisted 22.4, the echo test's steps with the server closing the TCP
// connection under its TLS layer after echoing:
//   self.transport.write(d); self.transport.transport.loseConnection()
// observed: ('client', 'data', b'hello')
//           ('client', 'connectionLost', 'ConnectionLost', 'Connection to the other side was lost in a
//            non-clean fashion: Connection lost.')
TEST_CASE("a peer that closes TCP without close_notify: ConnectionLost, the data may be truncated") {
    test::CleanReactor t;
    Reactor& r = t.r;
    NEED_PKI(p);
    auto srec = std::make_shared<Record>(), crec = std::make_shared<Record>();
    StartTlsServer* srv = nullptr;
    Factory sf;
    sf.protocol = [&] {
        auto s = std::make_unique<StartTlsServer>();
        s->rec = srec;
        s->options = ssl::serverOptions(p.server());
        srv = s.get();
        return std::unique_ptr<Protocol>(std::move(s));
    };
    ClientFactory cf;
    cf.protocol = [&] {
        auto c = std::make_unique<StartTlsClient>();
        c->rec = crec;
        c->options = ssl::optionsForClientTLS("localhost", p.client());
        return std::unique_ptr<Protocol>(std::move(c));
    };
    ListeningPort port = r.listenTCP(0, sf, 50, "127.0.0.1");
    r.connectTCP("127.0.0.1", port.getHost().port, cf);
    REQUIRE(testing::runUntil(r, [&] { return crec->data == "secret"; }));
    srv->tcp->loseConnection();  // under the TLS layer: a FIN, no close_notify
    REQUIRE(testing::runUntil(r, [&] { return crec->lost() && srec->lost(); }));
    CHECK(crec->lostType == "ConnectionLost");
    CHECK(contains(crec->lostMessage, "without a TLS close_notify"));
    port.stopListening();
}

TEST_CASE("a handshake that stalls (a TCP server that never answers) fails with TLSHandshakeTimeout") {
    test::CleanReactor t;
    Reactor& r = t.r;
    NEED_PKI(p);
    Factory silent;
    silent.protocol = [] { return std::make_unique<Protocol>(); };
    ListeningPort port = r.listenTCP(0, silent, 50, "127.0.0.1");
    auto cs = p.client();
    cs.handshakeTimeout = 0.2;
    Client client;
    double start = r.seconds();
    r.connectSSL("127.0.0.1", port.getHost().port, client, ssl::optionsForClientTLS("localhost", cs));
    REQUIRE(testing::runUntil(r, [&] { return client.last() && client.last()->lost(); }, 10));
    CHECK(r.seconds() - start >= 0.2);
    CHECK(client.last()->is("TLSHandshakeTimeout"));
    CHECK(client.last()->is("SSLError"));
    CHECK(contains(client.last()->lostMessage, "did not complete within 0.2 s"));
    CHECK(contains(client.last()->lostMessage, "localhost"));
    REQUIRE(client.lost.size() == 1);
    port.stopListening();
    CHECK(testing::runUntilClean(r));  // the silent server's side saw the reset
}

TEST_CASE("half-close over TLS: loseWriteConnection sends close_notify; the peer reads EOF and still writes") {
    test::CleanReactor t;
    Reactor& r = t.r;
    NEED_PKI(p);
    ServerFactory server;
    server.halfClose = true;
    Client client;
    client.halfClose = true;
    client.greeting = "request";
    ListeningPort port = tlsPair(r, server, client, ssl::serverOptions(p.server()),
                                 ssl::optionsForClientTLS("localhost", p.client()));
    REQUIRE(testing::runUntil(r, [&] { return server.last() && server.last()->data == "request"; }));
    client.last()->transport->loseWriteConnection();
    REQUIRE(testing::runUntil(r, [&] { return server.last()->readLost; }));
    server.last()->transport->write("reply after your EOF");
    REQUIRE(testing::runUntil(r, [&] { return client.last()->data == "reply after your EOF"; }));
    server.last()->transport->loseConnection();
    REQUIRE(testing::runUntil(r, [&] { return server.last()->lost() && client.last()->readLost; }));
    client.last()->transport->loseConnection();
    REQUIRE(testing::runUntil(r, [&] { return client.last()->lost(); }));
    CHECK(server.last()->lostType == "ConnectionDone");
    CHECK(client.last()->lostType == "ConnectionDone");
    port.stopListening();
}

TEST_CASE("abortConnection over TLS: ConnectionAborted here, ConnectionLost there") {
    test::CleanReactor t;
    Reactor& r = t.r;
    NEED_PKI(p);
    ServerFactory server;
    Client client;
    client.greeting = "x";
    ListeningPort port = tlsPair(r, server, client, ssl::serverOptions(p.server()),
                                 ssl::optionsForClientTLS("localhost", p.client()));
    REQUIRE(testing::runUntil(r, [&] { return server.last() && server.last()->data == "x"; }));
    client.last()->transport->write(std::string(1 << 20, 'y'));  // mostly still buffered
    client.last()->transport->abortConnection();
    client.last()->transport->write("after the abort: ignored");
    REQUIRE(testing::runUntil(r, [&] { return client.last()->lost() && server.last()->lost(); }));
    CHECK(client.last()->lostType == "ConnectionAborted");
    CHECK(server.last()->is("ConnectionLost"));
    CHECK(client.lost.size() == 1);
    port.stopListening();
}

#if REACTOR_HAS_EXCEPTIONS
namespace {
struct Thrower : Protocol {
    void dataReceived(std::string_view) override { throw std::runtime_error("protocol bug"); }
};
}  // namespace

TEST_CASE("a protocol that throws in dataReceived over TLS loses its own connection, with that error") {
    test::CleanReactor t;
    Reactor& r = t.r;
    test::LogCapture log;
    NEED_PKI(p);
    Factory sf = Factory::forProtocol<Thrower>();
    ListeningPort port = r.listenSSL(0, sf, ssl::serverOptions(p.server()), ListenOptions{"127.0.0.1"});
    Client client;
    client.greeting = "boom";
    r.connectSSL("127.0.0.1", port.getHost().port, client, ssl::optionsForClientTLS("localhost", p.client()));
    REQUIRE(testing::runUntil(r, [&] { return client.last() && client.last()->lost(); }));
    CHECK(client.last()->is("ConnectionLost"));
    CHECK(log.contains("protocol bug"));
    port.stopListening();
}
#endif

TEST_CASE("bad TLS options: a clear error naming the file; a connection with them fails, never plaintext") {
    test::CleanReactor t;
    Reactor& r = t.r;
    NEED_PKI(p);
    ssl::ServerTLSSettings missing;
    missing.certificate = ssl::pemFile(p.path("nope.pem"));
    missing.privateKey = ssl::pemFile(p.path("server.key"));
    CHECK_MISUSE_WITH(ssl::serverOptions(missing), error::ValueError, "nope.pem");
    ssl::ServerTLSSettings mismatched = p.server("server.pem", "client.key");
    CHECK_MISUSE_WITH(ssl::serverOptions(mismatched), error::ValueError, "does not match");
    ssl::ClientTLSSettings garbage;
    garbage.trust = ssl::trustRoot(ssl::pemData("not a certificate"));
    CHECK_MISUSE_WITH(ssl::optionsForClientTLS("localhost", garbage), error::ValueError, "no PEM certificate");
    // A device as a key file is refused, not read forever (before: memory
    // grew without end; found by a second reader).
    ssl::ServerTLSSettings device;
    device.certificate = ssl::pemFile(p.path("server.pem"));
    device.privateKey = ssl::pemFile("/dev/zero");
    CHECK_MISUSE_WITH(ssl::serverOptions(device), error::ValueError, "larger than 16 MiB");
    // Default-made options: the connection is made and fails with the reason.
    ServerFactory server;
    ListeningPort port = r.listenTCP(0, server, 50, "127.0.0.1");
    Client client;
    client.greeting = "must never go out in clear";
    r.connectSSL("127.0.0.1", port.getHost().port, client, ssl::TLSOptions());
    REQUIRE(testing::runUntil(r, [&] { return client.last() && client.last()->lost(); }));
    CHECK(client.last()->is("SSLError"));
    CHECK(contains(client.last()->lostMessage, "never made"));
    REQUIRE(testing::runUntil(r, [&] { return server.last() && server.last()->lost(); }));
    CHECK(server.last()->data.empty());
    CHECK_MISUSE_WITH(r.listenSSL(0, server, ssl::TLSOptions()), error::ValueError, "listenSSL");
    port.stopListening();
}

TEST_CASE("the trace shows the handshake, its result and the close_notify") {
    test::CleanReactor t;
    Reactor& r = t.r;
    std::vector<std::string> lines;
    r.setTracer([&](std::string_view l) { lines.emplace_back(l); });
    NEED_PKI(p);
    ServerFactory server;
    Client client;
    client.greeting = "hi";
    ListeningPort port = tlsPair(r, server, client, ssl::serverOptions(p.server()),
                                 ssl::optionsForClientTLS("localhost", p.client()));
    REQUIRE(testing::runUntil(r, [&] { return server.last() && server.last()->data == "hi"; }));
    client.last()->transport->loseConnection();
    REQUIRE(testing::runUntil(r, [&] { return server.last()->lost() && client.last()->lost(); }));
    r.setTracer(nullptr);
    auto seen = [&](std::string_view needle) {
        for (auto& l : lines)
            if (contains(l, needle)) return true;
        return false;
    };
    CHECK(seen("handshake started as the client"));
    CHECK(seen("handshake started as the server"));
    CHECK(seen("handshake done: TLSv1.3"));
    CHECK(seen("peer /CN=localhost"));
    CHECK(seen("close_notify sent"));
    CHECK(seen("the peer sent close_notify"));
    CHECK(seen("-> TLS("));  // the TCP transport's lines name the layer and the protocol inside
    port.stopListening();
}

namespace {
/// Answers any request with a fixed response (and a Content-Length).
struct TinyHttp : Protocol {
    std::string request;
    void dataReceived(std::string_view d) override {
        request.append(d);
        if (request.find("\r\n\r\n") != std::string::npos)
            transport->write("HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nhello https");
    }
};
}  // namespace

TEST_CASE("examples/http_get fetches https://, verified; a certificate for another name fails it") {
    test::CleanReactor t;
    Reactor& r = t.r;
    NEED_PKI(p);
    http::Url u;
    REQUIRE(http::parseUrl("https://example.org/x", u));
    CHECK(u.tls);
    CHECK(u.port == 443);
    REQUIRE(http::parseUrl("http://example.org/x", u));
    CHECK_FALSE(u.tls);
    CHECK(u.port == 80);
    Factory good = Factory::forProtocol<TinyHttp>(), wrong = Factory::forProtocol<TinyHttp>();
    ListeningPort goodPort = r.listenSSL(0, good, ssl::serverOptions(p.server()), ListenOptions{"127.0.0.1"});
    ListeningPort wrongPort =
        r.listenSSL(0, wrong, ssl::serverOptions(p.server("wrong.pem", "wrong.key")), ListenOptions{"127.0.0.1"});
    http::Agent agent(r);
    agent.tls = p.client();
    std::optional<http::Response> response;
    std::string failure;
    agent.request("GET", "https://localhost:" + std::to_string(goodPort.getHost().port) + "/")
        .addCallback([&](const http::Response& resp) { response = resp; });
    agent.request("GET", "https://localhost:" + std::to_string(wrongPort.getHost().port) + "/")
        .addErrback([&](const Failure& f) { failure = f.getErrorMessage(); });
    REQUIRE(testing::runUntil(r, [&] { return response && !failure.empty(); }));
    CHECK(response->code == 200);
    CHECK(response->body == "hello https");
    CHECK(contains(failure, "TLS certificate verification failed for host 'localhost'"));
    goodPort.stopListening();
    wrongPort.stopListening();
    CHECK(testing::runUntilClean(r));
}

TEST_CASE("endpoint strings: ssl: servers and tls: clients, verified; bad ones say why") {
    test::CleanReactor t;
    Reactor& r = t.r;
    NEED_PKI(p);
    ServerFactory server;
    server.echo = true;
    auto ep = serverFromString(r, "ssl:0:interface=127.0.0.1:privateKey=" + p.path("server.key") +
                                      ":certKey=" + p.path("server.pem"));
    CHECK(contains(ep->describe(), "TLS on TCP port 0 on 127.0.0.1"));
    ListeningPort port;
    ep->listen(server).addCallback([&](ListeningPort lp) { port = lp; });
    REQUIRE(port.listening());
    std::string where = "tls:localhost:" + std::to_string(port.getHost().port) + ":trustRoots=" + p.path("ca.pem");
    auto client = clientFromString(r, where);
    CHECK(contains(client->describe(), "verifying localhost"));
    auto rec = std::make_shared<Record>();
    std::shared_ptr<Recorder> proto;
    connectProtocol(*client, std::make_shared<Recorder>(rec)).addCallback([&](std::shared_ptr<Recorder> pr) {
        proto = pr;
        pr->transport->write("via endpoints");
    });
    REQUIRE(testing::runUntil(r, [&] { return rec->data == "via endpoints"; }));
    CHECK(rec->peerSubject == "/CN=localhost");
    proto->transport->loseConnection();
    REQUIRE(testing::runUntil(r, [&] { return rec->lost() && server.last()->lost(); }));
    CHECK(rec->lostType == "ConnectionDone");
    // The system trust store (no trustRoots) does not know the test CA.
    auto rec2 = std::make_shared<Record>();
    connectProtocol(*clientFromString(r, "tls:host=localhost:port=" + std::to_string(port.getHost().port)),
                    std::make_shared<Recorder>(rec2));
    REQUIRE(testing::runUntil(r, [&] { return rec2->lost(); }));
    CHECK(rec2->is("CertificateError"));
    port.stopListening();
    REQUIRE(testing::runUntilClean(r));

    CHECK_MISUSE_WITH(serverFromString(r, "ssl:0:privateKey=" + p.path("nope.key")), error::ValueError, "nope.key");
    CHECK_MISUSE_WITH(serverFromString(r, "ssl:0"), error::ValueError, "missing privateKey");
    CHECK_MISUSE_WITH(clientFromString(r, "tls:localhost"), error::ValueError, "missing port");
    CHECK_MISUSE_WITH(clientFromString(r, "tls:localhost:443:trustRoots=" + p.path("nope.pem")), error::ValueError,
                      "nope.pem");
    CHECK_MISUSE_WITH(clientFromString(r, "tls:localhost:443:verify=no"), error::ValueError,
                      "unknown parameter 'verify'");
}

}  // TEST_SUITE("tls")

#endif  // REACTOR_WITH_OPENSSL
