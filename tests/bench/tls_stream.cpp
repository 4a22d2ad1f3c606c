// tls_stream — `make bench`'s TLS row: one connection streaming as fast as
// it can on 127.0.0.1, over plain TCP and over TLS (listenSSL/connectSSL,
// TLS 1.3 with OpenSSL's default cipher), in one process on one reactor:
// the same thread encrypts, sends, receives and decrypts, so the TLS figure
// is the whole cost of both ends on one core.
//
//   tls_stream SECONDS      (built with -DREACTOR_WITH_OPENSSL -lssl -lcrypto)
//
// The client is a pull producer writing 64 KiB chunks (the transport asks
// for each when its buffer drains); the server counts what arrives. Each
// mode runs five rounds of SECONDS / 10, alternating; the table shows each
// mode's median throughput and the median of the per-round TLS/TCP ratios.
// A throwaway certificate is made with the openssl command in a temp dir.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include <unistd.h>

#include "reactor.hpp"

using namespace reactor;

namespace {

struct Sink : Protocol {
    std::size_t* count = nullptr;
    void dataReceived(std::string_view d) override { *count += d.size(); }
};

struct Source : Protocol, IProducer {
    const std::string* chunk = nullptr;
    bool stop = false;
    void connectionMade() override { transport->registerProducer(this, false); }
    void resumeProducing() override {
        if (!stop) transport->write(*chunk);
    }
    void stopProducing() override {}
};

/// MiB/s through one connection for `seconds`.
double run(bool tls, double seconds, const ssl::TLSOptions* server, const ssl::TLSOptions* client) {
    Reactor r;
    std::size_t received = 0;
    Factory sf;
    sf.protocol = [&] {
        auto s = std::make_unique<Sink>();
        s->count = &received;
        return std::unique_ptr<Protocol>(std::move(s));
    };
    static const std::string chunk(64 * 1024, 'x');
    Source* source = nullptr;
    ClientFactory cf;
    cf.protocol = [&] {
        auto s = std::make_unique<Source>();
        s->chunk = &chunk;
        source = s.get();
        return std::unique_ptr<Protocol>(std::move(s));
    };
    ListeningPort port = tls ? r.listenSSL(0, sf, *server, ListenOptions{"127.0.0.1"})
                             : r.listenTCP(0, sf, 50, "127.0.0.1");
    if (tls)
        r.connectSSL("127.0.0.1", port.getHost().port, cf, *client);
    else
        r.connectTCP("127.0.0.1", port.getHost().port, cf);
    // Warm up until the first bytes arrive (and the handshake is done).
    testing::runUntil(r, [&] { return received > 0; }, 10);
    std::size_t start = received;
    auto t0 = std::chrono::steady_clock::now();
    testing::runUntil(r, [] { return false; }, seconds);
    double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    double mibps = static_cast<double>(received - start) / elapsed / (1024.0 * 1024.0);
    if (source) source->stop = true;
    r.disconnectAll();
    port.stopListening();
    return mibps;
}

double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v.empty() ? 0 : v[v.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
    double seconds = argc > 1 ? std::atof(argv[1]) : 4;
    if (!(seconds > 0)) seconds = 4;
    char dir[] = "/tmp/reactor-tls-bench-XXXXXX";
    if (!mkdtemp(dir)) return 1;
    std::string d = dir;
    std::string cmd = "cd " + d +
                      " && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes"
                      " -keyout key.pem -out cert.pem -days 1 -subj /CN=localhost"
                      " -addext subjectAltName=DNS:localhost >/dev/null 2>&1";
    if (std::system(cmd.c_str()) != 0) {
        std::fprintf(stderr, "tls_stream: could not make a certificate with the openssl command\n");
        return 1;
    }
    ssl::ServerTLSSettings ss;
    ss.certificate = ssl::pemFile(d + "/cert.pem");
    ss.privateKey = ssl::pemFile(d + "/key.pem");
    ssl::ClientTLSSettings cs;
    cs.trust = ssl::trustRoot(ssl::pemFile(d + "/cert.pem"));
    ssl::TLSOptions server = ssl::serverOptions(ss);
    ssl::TLSOptions client = ssl::optionsForClientTLS("localhost", cs);
    std::vector<double> tcp, tls, ratio;
    const int rounds = 5;
    for (int i = 0; i < rounds; ++i) {
        bool tlsFirst = i % 2 == 1;
        double a = run(tlsFirst, seconds / (2 * rounds), &server, &client);
        double b = run(!tlsFirst, seconds / (2 * rounds), &server, &client);
        double tcpRate = tlsFirst ? b : a, tlsRate = tlsFirst ? a : b;
        tcp.push_back(tcpRate);
        tls.push_back(tlsRate);
        ratio.push_back(tcpRate > 0 ? tlsRate / tcpRate : 0);
    }
    std::system(("rm -rf " + d).c_str());
    std::printf("\n| one connection streaming, both ends on one reactor | TCP | TLS | TLS / TCP |\n");
    std::printf("|---|---|---|---|\n");
    std::printf("| 64 KiB writes, 127.0.0.1 | %.0f MiB/s | %.0f MiB/s | %.2f |\n", median(tcp), median(tls),
                median(ratio));
    return 0;
}
