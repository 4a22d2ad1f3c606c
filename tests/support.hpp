// Shared test helpers: a reactor per test that must be left clean, and a
// log capture. Every socket test drives its own Reactor with a deadline.
#pragma once
#include <doctest/doctest.h>

#include <cstdint>
#include <string>
#include <vector>

#include "reactor.hpp"

#if !defined(_WIN32)
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>
#endif

namespace test {

// ---- raw descriptors, the same on POSIX and Windows --------------------
// Windows has no pipes to poll (WSAPoll watches sockets only) and sockets
// are SOCKET handles closed with closesocket(): tests whose point is
// generic readiness use these instead of pipe()/read()/write()/close().

using Fd = reactor::detail::os::Fd;

/// A stand-in for pipe(): fds[0] reads, fds[1] writes. A pipe on POSIX, a
/// loopback socket pair on Windows.
inline bool makePipe(Fd fds[2]) {
#if defined(_WIN32)
    return reactor::detail::os::socketPair(fds);
#else
    return ::pipe(fds) == 0;
#endif
}

/// write()/send() on a pipe end or socket; bytes written or -1.
inline long writeFd(Fd fd, const char* data, std::size_t n) {
#if defined(_WIN32)
    return ::send(fd, data, static_cast<int>(n), 0);
#else
    return static_cast<long>(::write(fd, data, n));
#endif
}

/// read()/recv() on a pipe end or socket; bytes read, 0 at EOF, or -1.
inline long readFd(Fd fd, char* buf, std::size_t n) {
#if defined(_WIN32)
    return ::recv(fd, buf, static_cast<int>(n), 0);
#else
    return static_cast<long>(::read(fd, buf, n));
#endif
}

inline void closeFd(Fd fd) {
#if defined(_WIN32)
    ::closesocket(fd);
#else
    ::close(fd);
#endif
}

/// socket(), blocking, for a raw peer (Winsock started first on Windows).
inline Fd rawSocket(int family, int type) {
#if defined(_WIN32)
    reactor::detail::os::winsockStarted();
#endif
    return ::socket(family, type, 0);
}

/// The length type of send()/sendto(): int on Windows, size_t on POSIX.
#if defined(_WIN32)
using SendLength = int;
#else
using SendLength = std::size_t;
#endif

/// A blocking TCP client socket connected to 127.0.0.1:port (a raw peer);
/// invalid if the connect failed.
inline Fd rawConnect(int port) {
    Fd fd = rawSocket(AF_INET, SOCK_STREAM);
    if (!reactor::detail::os::validFd(fd)) return fd;
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(static_cast<std::uint16_t>(port));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
        closeFd(fd);
        return reactor::detail::os::invalidFd;
    }
    return fd;
}

/// send() without SIGPIPE; bytes sent or -1.
inline long rawSend(Fd fd, const char* data, std::size_t n) {
#if defined(_WIN32)
    return ::send(fd, data, static_cast<int>(n), 0);
#elif defined(MSG_NOSIGNAL)
    return static_cast<long>(::send(fd, data, n, MSG_NOSIGNAL));
#else
    return static_cast<long>(::send(fd, data, n, 0));
#endif
}

/// recv() that does not block: bytes, 0 at EOF, -1 if nothing is there.
inline long rawRecvNow(Fd fd, char* buf, std::size_t n) {
#if defined(_WIN32)
    u_long on = 1, off = 0;
    ::ioctlsocket(fd, static_cast<long>(FIONBIO), &on);
    long got = ::recv(fd, buf, static_cast<int>(n), 0);
    ::ioctlsocket(fd, static_cast<long>(FIONBIO), &off);
    return got;
#else
    return static_cast<long>(::recv(fd, buf, n, MSG_DONTWAIT));
#endif
}

/// Closes with a reset (SO_LINGER 0).
inline void resetClose(Fd fd) {
    reactor::detail::os::setLingerZero(fd);
    closeFd(fd);
}

/// A Reactor that fails the test if it is left dirty (Trial's janitor).
struct CleanReactor {
    reactor::Reactor r;
    ~CleanReactor() {
        std::string report = reactor::testing::cleanUp(r);
        CHECK_MESSAGE(report.empty(), report);
    }
};

/// Captures log lines while alive (restores the previous logger after).
struct LogCapture {
    std::vector<std::string> lines;
    reactor::Logger previous;
    LogCapture() {
        previous = reactor::setLogger([this](reactor::LogLevel, std::string_view m) { lines.emplace_back(m); });
    }
    ~LogCapture() { reactor::setLogger(std::move(previous)); }
    bool contains(std::string_view needle) const {
        for (auto& l : lines)
            if (l.find(needle) != std::string::npos) return true;
        return false;
    }
};

}  // namespace test

// API misuse (cancelling a called timer, stopping a stopped reactor...)
// throws `E` when exceptions are on; built with -fno-exceptions the library
// logs "E: message" and the call does nothing. These check whichever applies,
// so a misuse test runs in both builds. `text` is part of the message.
#if REACTOR_HAS_EXCEPTIONS
#define CHECK_MISUSE(expr, E) CHECK_THROWS_AS(expr, E)
#define CHECK_MISUSE_WITH(expr, E, text) CHECK_THROWS_WITH_AS(expr, doctest::Contains(text), E)
#else
#define CHECK_MISUSE(expr, E) TEST_CHECK_LOGGED_(expr, E, "")
#define CHECK_MISUSE_WITH(expr, E, text) TEST_CHECK_LOGGED_(expr, E, text)
#define TEST_CHECK_LOGGED_(expr, E, text)                                                       \
    do {                                                                                        \
        ::test::LogCapture misuseLog_;                                                          \
        static_cast<void>(expr);                                                                \
        std::string misuseType_ = std::string(E::typeName) + ": ";                              \
        CHECK_MESSAGE((misuseLog_.contains(misuseType_) && misuseLog_.contains(text)),          \
                      "not logged as misuse: " << misuseType_ << (text));                      \
    } while (false)
#endif
