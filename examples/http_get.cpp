// http_get — a small HTTP/1.1 client whose request() returns a Deferred.
//
//   make && ./build/examples/http_get http://127.0.0.1:8000/
//   (python3 -m http.server 8000 serves one to try it on)
//   ./build/examples/http_get https://example.org/
//   (https:// when built with -DREACTOR_WITH_OPENSSL -lssl -lcrypto, as
//   `make` does where libssl-dev is installed: the server's certificate
//   must chain to the system's trust store and name the URL's host)
//
// One idea: a Deferred is how an asynchronous API hands back its result.
// `Agent::request` returns at once with a Deferred<Response>; the protocol
// fires it when the whole response has arrived, or errbacks it with a
// Failure (refused connection, malformed response, connection dropped).
// The caller just chains callbacks, exactly like Twisted's
// `Agent(reactor).request(b"GET", url).addCallback(...)`.
//
// Handles Content-Length, chunked transfer encoding, and bodies delimited by
// the connection closing. Redirects are not followed.
#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <utility>
#include <vector>

#include "reactor.hpp"

namespace http {

struct Response {
    int code = 0;
    std::string phrase;
    std::vector<std::pair<std::string, std::string>> headers;  // in order, names lower-cased
    std::string body;

    const std::string* header(const std::string& name) const {
        for (auto& h : headers)
            if (h.first == name) return &h.second;
        return nullptr;
    }
};

struct Url {
    std::string host, path;
    std::uint16_t port = 80;
    bool tls = false;  // https://
};

/// Parses "http[s]://host[:port][/path]" (host may be "[v6]"); false otherwise.
inline bool parseUrl(const std::string& url, Url& out) {
    std::string scheme = "http://";
    out.tls = false;
    out.port = 80;
    if (url.compare(0, 8, "https://") == 0) {
        scheme = "https://";
        out.tls = true;
        out.port = 443;
    } else if (url.compare(0, scheme.size(), scheme) != 0) {
        return false;
    }
    std::string rest = url.substr(scheme.size());
    std::size_t slash = rest.find('/');
    std::string authority = rest.substr(0, slash);
    out.path = slash == std::string::npos ? "/" : rest.substr(slash);
    std::string portText;
    if (!authority.empty() && authority.front() == '[') {  // [::1]:8080
        std::size_t close = authority.find(']');
        if (close == std::string::npos) return false;
        out.host = authority.substr(1, close - 1);
        if (close + 1 < authority.size()) {
            if (authority[close + 1] != ':') return false;
            portText = authority.substr(close + 2);
        }
    } else {
        std::size_t colon = authority.rfind(':');
        out.host = authority.substr(0, colon);
        if (colon != std::string::npos) portText = authority.substr(colon + 1);
    }
    if (!portText.empty()) {
        int port = std::atoi(portText.c_str());
        if (port <= 0 || port > 65535) return false;
        out.port = static_cast<std::uint16_t>(port);
    }
    return !out.host.empty();
}

/// Reads one response: the status line and headers in line mode, then the
/// body in raw mode (or, for chunked encoding, alternating).
class ResponseReader : public reactor::LineReceiver {
public:
    explicit ResponseReader(reactor::Deferred<Response> d, std::string request)
        : done_(std::move(d)), request_(std::move(request)) {}

    void connectionMade() override { transport->write(request_); }

    void lineReceived(std::string_view raw) override {
        std::string_view line = raw;
        if (!line.empty() && line.back() == '\r') line.remove_suffix(1);  // tolerate bare \n
        switch (state_) {
            case State::status: return statusLine(line);
            case State::headers: return headerLine(line);
            case State::chunkSize: return chunkSizeLine(line);
            case State::chunkEnd:
                state_ = State::chunkSize;  // the CRLF after a chunk's data
                return;
            case State::trailers:
                if (line.empty()) finish();
                return;
            default: return;
        }
    }

    void rawDataReceived(std::string_view data) override {
        if (state_ == State::chunkData) {
            std::size_t take = std::min(remaining_, data.size());
            response_.body.append(data.substr(0, take));
            remaining_ -= take;
            if (remaining_ == 0) {
                state_ = State::chunkEnd;
                setLineMode(data.substr(take));
            }
            return;
        }
        if (state_ != State::body) return;
        if (lengthKnown_) {
            std::size_t take = std::min(remaining_, data.size());
            response_.body.append(data.substr(0, take));
            remaining_ -= take;
            if (remaining_ == 0) finish();
        } else {
            response_.body.append(data);  // until the server closes
        }
    }

    void connectionLost(const reactor::Failure& reason) override {
        if (fired_) return;
        if (state_ == State::body && !lengthKnown_ && reason.check<reactor::error::ConnectionDone>()) {
            finish();  // the close marks the end of the body
            return;
        }
        fail("connection closed before the response was complete: " + reason.getErrorMessage());
    }

private:
    enum class State { status, headers, body, chunkSize, chunkData, chunkEnd, trailers, done };

    void statusLine(std::string_view line) {
        // "HTTP/1.1 200 OK"
        if (line.substr(0, 5) != "HTTP/" || line.size() < 12 || line[8] != ' ') return fail("malformed status line");
        response_.code = std::atoi(std::string(line.substr(9, 3)).c_str());
        if (response_.code < 100 || response_.code > 599) return fail("malformed status code");
        response_.phrase = std::string(line.size() > 13 ? line.substr(13) : std::string_view());
        state_ = State::headers;
    }

    void headerLine(std::string_view line) {
        if (!line.empty()) {
            std::size_t colon = line.find(':');
            if (colon == std::string_view::npos) return fail("malformed header line");
            std::string name(line.substr(0, colon));
            for (char& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
            std::string_view value = line.substr(colon + 1);
            while (!value.empty() && (value.front() == ' ' || value.front() == '\t')) value.remove_prefix(1);
            response_.headers.emplace_back(std::move(name), std::string(value));
            return;
        }
        // End of headers: decide how the body is delimited.
        const std::string* te = response_.header("transfer-encoding");
        const std::string* cl = response_.header("content-length");
        if (te && te->find("chunked") != std::string::npos) {
            state_ = State::chunkSize;
        } else if (cl) {
            char* end = nullptr;
            unsigned long long n = std::strtoull(cl->c_str(), &end, 10);
            if (end == cl->c_str() || *end != '\0') return fail("malformed Content-Length");
            remaining_ = static_cast<std::size_t>(n);
            lengthKnown_ = true;
            state_ = State::body;
            if (remaining_ == 0) return finish();
            setRawMode();
        } else {
            state_ = State::body;
            setRawMode();
        }
    }

    void chunkSizeLine(std::string_view line) {
        std::string hex(line.substr(0, line.find(';')));  // chunk extensions are ignored
        char* end = nullptr;
        unsigned long long n = std::strtoull(hex.c_str(), &end, 16);
        if (hex.empty() || end == hex.c_str()) return fail("malformed chunk size");
        if (n == 0) {
            state_ = State::trailers;
            return;
        }
        remaining_ = static_cast<std::size_t>(n);
        state_ = State::chunkData;
        setRawMode();
    }

    void finish() {
        if (fired_) return;
        fired_ = true;
        state_ = State::done;
        transport->loseConnection();
        done_.callback(std::move(response_));
    }
    void fail(const std::string& why) {
        if (fired_) return;
        fired_ = true;
        state_ = State::done;
        transport->loseConnection();
        done_.errback(reactor::Failure("ResponseFailed", why));
    }

    reactor::Deferred<Response> done_;
    std::string request_;
    Response response_;
    State state_ = State::status;
    std::size_t remaining_ = 0;
    bool lengthKnown_ = false;
    bool fired_ = false;
};

/// Twisted's Agent, reduced to what this example needs.
class Agent {
public:
    explicit Agent(reactor::Reactor& r) : reactor_(r) {}
#if defined(REACTOR_WITH_OPENSSL)
    /// How https:// servers are verified: the system's trust store and the
    /// URL's host name by default (a test sets its own CA here).
    reactor::ssl::ClientTLSSettings tls;
#endif

    reactor::Deferred<Response> request(const std::string& method, const std::string& url) {
        reactor::Deferred<Response> d;
        Url u;
        if (!parseUrl(url, u)) {
            d.errback(reactor::Failure("ValueError", "not an http:// URL: " + url));
            return d;
        }
#if !defined(REACTOR_WITH_OPENSSL)
        if (u.tls) {
            d.errback(reactor::Failure("ValueError", "https:// needs TLS: build with -DREACTOR_WITH_OPENSSL "
                                                     "and link -lssl -lcrypto"));
            return d;
        }
#endif
        std::string hostHeader = u.host.find(':') != std::string::npos ? "[" + u.host + "]" : u.host;
        if (u.port != (u.tls ? 443 : 80)) hostHeader += ":" + std::to_string(u.port);
        std::string request = method + " " + u.path + " HTTP/1.1\r\nHost: " + hostHeader +
                              "\r\nUser-Agent: reactor.hpp-http_get\r\nConnection: close\r\n\r\n";

        // A client factory per request; the connector keeps it alive.
        struct Once : reactor::ClientFactory {
            reactor::Deferred<Response> d;
            std::string request;
            std::unique_ptr<reactor::Protocol> buildProtocol(const reactor::Address&) override {
                return std::make_unique<ResponseReader>(d, request);
            }
            void clientConnectionFailed(reactor::IConnector&, const reactor::Failure& reason) override {
                d.errback(reason);  // refused, timed out, unknown host...
            }
        };
        auto factory = std::make_shared<Once>();
        factory->d = d;
        factory->request = std::move(request);
#if defined(REACTOR_WITH_OPENSSL)
        if (u.tls) {
            // A failed verification ends the connection: ResponseReader's
            // connectionLost errbacks with the reason.
            reactor_.connectSSL(u.host, u.port, factory, reactor::ssl::optionsForClientTLS(u.host, tls));
            return d;
        }
#endif
        reactor_.connectTCP(u.host, u.port, factory);
        return d;
    }

private:
    reactor::Reactor& reactor_;
};

}  // namespace http

#ifndef HTTP_GET_NO_MAIN  // tests/test_http.cpp includes this file for the classes above
int main(int argc, char** argv) {
    if (argc != 2) {
        std::fprintf(stderr, "usage: %s http[s]://HOST[:PORT]/PATH\n", argv[0]);
        return 2;
    }
    reactor::Reactor r;
    http::Agent agent(r);
    int status = 0;
    // Asked once the loop runs: a request that fails at once (a bad URL)
    // then stops a running reactor instead of one not yet started.
    r.callWhenRunning([&] {
        agent.request("GET", argv[1])
            .addCallback([](const http::Response& resp) {
                std::printf("HTTP %d %s\n", resp.code, resp.phrase.c_str());
                for (auto& h : resp.headers) std::printf("%s: %s\n", h.first.c_str(), h.second.c_str());
                std::printf("\n%s", resp.body.c_str());
                if (!resp.body.empty() && resp.body.back() != '\n') std::printf("\n");
            })
            .addErrback([&](const reactor::Failure& f) {
                std::fprintf(stderr, "request failed: %s\n", f.str().c_str());
                status = 1;
            })
            .addBoth([&](reactor::Result<void>) { r.stop(); });
    });
    r.run(true);
    return status;
}
#endif
