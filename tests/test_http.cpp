// examples/http_get.cpp against Python's http.server on loopback: a
// Deferred-returning client, Content-Length, chunked, close-delimited,
// malformed and truncated responses, and a refused port.
#if !defined(_WIN32)
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>
#endif

#include <cstdio>
#include <cstdlib>
#include <string>

#define HTTP_GET_NO_MAIN
#include "../examples/http_get.cpp"
#include "support.hpp"

using namespace reactor;

namespace {

#if !defined(_WIN32)  // fork() and exec of Linux's python3
/// tests/http_server.py, started on a free port and stopped by PID.
struct PythonServer {
    pid_t pid = -1;
    int port = 0;
    PythonServer() {
        int fds[2];
        REQUIRE(::pipe(fds) == 0);
        pid = ::fork();
        if (pid == 0) {
            ::dup2(fds[1], 1);
            ::close(fds[0]);
            ::execlp("python3", "python3", "tests/http_server.py", static_cast<char*>(nullptr));
            std::_Exit(127);
        }
        ::close(fds[1]);
        std::string line;
        char c;
        while (::read(fds[0], &c, 1) == 1 && c != '\n') line += c;
        ::close(fds[0]);
        std::size_t colon = line.rfind(':');
        if (colon != std::string::npos) port = std::atoi(line.c_str() + colon + 1);
    }
    ~PythonServer() {
        if (pid > 0) {
            ::kill(pid, SIGTERM);
            ::waitpid(pid, nullptr, 0);
        }
    }
    std::string url(const std::string& path) const { return "http://127.0.0.1:" + std::to_string(port) + path; }
};
#endif

/// Runs one request to completion; returns the response or the failure text.
struct Outcome {
    bool done = false, ok = false;
    http::Response response;
    std::string failure;
};

Outcome get(Reactor& r, const std::string& url) {
    Outcome out;
    http::Agent agent(r);
    agent.request("GET", url)
        .addCallbacks(
            [&](const http::Response& resp) {
                out.ok = true;
                out.response = resp;
            },
            [&](const Failure& f) { out.failure = f.str(); })
        .addBoth([&](Result<void>) { out.done = true; });
    REQUIRE(testing::runUntil(r, [&] { return out.done; }, 20));
    // Let the closed connection finish on both sides before the clean check.
    testing::runUntil(r, [&] { return r.selectables().empty() && r.pendingCalls().empty(); }, 5);
    return out;
}

}  // namespace

TEST_SUITE("http_get") {

TEST_CASE("URLs are parsed, bad ones fail the Deferred at once") {
    http::Url u;
    REQUIRE(http::parseUrl("http://example.org:8080/a/b?c", u));
    CHECK(u.host == "example.org");
    CHECK(u.port == 8080);
    CHECK(u.path == "/a/b?c");
    REQUIRE(http::parseUrl("http://[::1]:81", u));
    CHECK(u.host == "::1");
    CHECK(u.port == 81);
    CHECK(u.path == "/");
    CHECK_FALSE(http::parseUrl("ftp://x/", u));
    CHECK_FALSE(http::parseUrl("http://x:99999/", u));

    test::CleanReactor t;
    Outcome o = get(t.r, "gopher://nope");
    CHECK_FALSE(o.ok);
    CHECK(o.failure.find("not an http:// URL") != std::string::npos);
}

#if !defined(_WIN32)
TEST_CASE("against python3 http.server: plain, chunked, close-delimited, errors") {
    if (std::system("python3 -c '' >/dev/null 2>&1") != 0) {
        MESSAGE("*** SKIPPED: python3 is not installed (apt-get install python3) ***");
        return;
    }
    PythonServer server;
    REQUIRE(server.port > 0);
    test::CleanReactor t;
    Reactor& r = t.r;

    Outcome plain = get(r, server.url("/plain"));
    REQUIRE(plain.ok);
    CHECK(plain.response.code == 200);
    CHECK(plain.response.phrase == "OK");
    CHECK(plain.response.body == "hello, plain world\n");
    REQUIRE(plain.response.header("x-test"));
    CHECK(*plain.response.header("x-test") == "plain");

    Outcome chunked = get(r, server.url("/chunked"));
    REQUIRE(chunked.ok);
    std::string expected = "hello, chunked ";
    for (int i = 0; i < 1000; ++i) expected += "world";
    CHECK(chunked.response.body == expected);

    Outcome closed = get(r, server.url("/close"));
    REQUIRE(closed.ok);
    CHECK(closed.response.body == "until the close");

    Outcome missing = get(r, server.url("/missing"));
    REQUIRE(missing.ok);  // an HTTP error is still a response
    CHECK(missing.response.code == 404);

    Outcome garbage = get(r, server.url("/garbage"));
    CHECK_FALSE(garbage.ok);
    CHECK(garbage.failure == "ResponseFailed: malformed status line");

    Outcome truncated = get(r, server.url("/truncated"));
    CHECK_FALSE(truncated.ok);
    CHECK(truncated.failure.find("before the response was complete") != std::string::npos);
}
#endif

TEST_CASE("a refused port errbacks with ConnectionRefusedError") {
    test::CleanReactor t;
    Reactor& r = t.r;
    Factory tmp;
    ListeningPort p = r.listenTCP(0, tmp, 50, "127.0.0.1");
    std::string url = "http://127.0.0.1:" + std::to_string(p.getHost().port) + "/";
    p.stopListening();
    Outcome o = get(r, url);
    CHECK_FALSE(o.ok);
    CHECK(o.failure.rfind("ConnectionRefusedError: Connection was refused by other side", 0) == 0);
}

}  // TEST_SUITE http_get
