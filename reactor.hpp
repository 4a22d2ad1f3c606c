// reactor.hpp — Twisted's event-driven networking engine as one C++17 header.
// MIT licensed, see LICENSE. https://example.invalid/reactor.hpp
//
// ============================================================================
// MANUAL
// ============================================================================
//
// What it is
//   An event loop (`Reactor`, on poll(); epoll or select() on request) that
//   dispatches socket readiness, timers and cross-thread calls; TCP
//   transports kept apart from the protocols that use them; Twisted's
//   `Protocol`/`Factory` family, framing protocols, an IRC client (in the
//   files that define REACTOR_WITH_IRC), a `Deferred<T>` promise, and test
//   helpers (`StringTransport`, `Clock`, `testing::MemoryNetwork`) so
//   protocols are tested without sockets or real time. Names follow
//   Twisted, so Twisted's documentation maps 1:1.
//
// Quick start
//     #include "reactor.hpp"
//     int main() {
//         reactor::Reactor r;                           // no global reactor
//         r.callLater(1.0, [&] { std::puts("tick"); r.stop(); });
//         r.run();                                      // returns after stop()
//     }
//
// Configuration (define before including)
//   REACTOR_USE_EPOLL      use epoll instead of poll() (Linux): the cost of a
//                          turn follows the ready descriptors, not the
//                          watched ones. Worth it from a few thousand
//                          mostly idle connections (README, "Performance").
//   REACTOR_USE_SELECT     use select() instead of poll() (descriptors must be
//                          below FD_SETSIZE; larger ones are refused).
//   REACTOR_NO_EXCEPTIONS  force the no-exceptions code paths. Normally
//                          detected from the compiler (-fno-exceptions).
//   REACTOR_READ_BUFFER_SIZE  bytes read per recv() (default 65536).
//   REACTOR_WITH_IRC       the IRC client (section 13, irc::IRCClient):
//                          compiled only in the TUs that ask for it, so
//                          that every other includer does not pay for it.
//   REACTOR_WITH_OPENSSL   TLS (section 10a): listenSSL, connectSSL,
//                          startTLS. Link with -lssl -lcrypto (Debian:
//                          libssl-dev). Without it nothing of OpenSSL is
//                          included.
//   REACTOR_SEPARATE_COMPILATION  compile the library once instead of in
//                          every TU that includes it (section 15). Define
//                          it for the whole program (-D on every compile),
//                          and in exactly one .cpp file write
//                              #define REACTOR_IMPLEMENTATION
//                              #include "reactor.hpp"
//                          The other TUs then see declarations and templates
//                          only: an echo server compiles in 0.5 s
//                          instead of 3 s at -O0 (the implementation TU
//                          takes about 7 s, once). Worth it from two .cpp
//                          files up. Every TU must agree on all the
//                          REACTOR_* switches and on -fno-exceptions.
//
// Threads
//   Everything runs on the thread that calls `run()`/`iterate()`. The one
//   method safe to call from any other thread is `Reactor::callFromThread`.
//   Blocking work belongs on the thread pool (`callInThread`, `deferToThread`).
//   Logging (`log`, `setLogger`) is thread-safe: the log hook runs on the
//   thread that logs, one call at a time.
//
// Errors
//   Failures are values (`Failure`). API misuse (cancelling a called timer,
//   stopping a stopped reactor, firing a Deferred twice) throws the matching
//   `reactor::error::*` exception; with exceptions disabled it is logged
//   through the log hook and the call does nothing.
//
// ============================================================================
// TABLE OF CONTENTS  (grep for the banner text, e.g. "==== TIME")
// ============================================================================
//   1. CONFIG          the REACTOR_* switches and feature detection
//   2. INCLUDES        what the header pulls in, and why
//   3. PLATFORM        the OS layer: sockets, poll/select, wake-up, signals
//   4. UTILITIES       logging, errors, Failure, call-site capture
//   5. TIME            IReactorTime, DelayedCall, Clock
//   6. DEFERRED        Deferred<T>, Result<T>, DeferredList, gatherResults
//   7. THREADS         ThreadPool
//   8. REACTOR         the event loop
//   9. PROTOCOLS       Address, ITransport, Protocol, Factory, ClientFactory,
//                      policies: TimeoutMixin, WrappingFactory and friends
//  10. TCP             listenTCP, connectTCP, the TCP transport; UNIX
//                      sockets; endpoints (serverFromString, connectProtocol);
//                      UDP (listenUDP, listenMulticast, DatagramProtocol)
//  10a. TLS            listenSSL, connectSSL, startTLS (only with
//                      REACTOR_WITH_OPENSSL: OpenSSL, opt-in)
//  11. BASIC FRAMING   LineReceiver, LineOnlyReceiver, Netstring, IntN
//  12. TASK            LoopingCall, deferLater, deferToThread
//  13. IRC             irc::parsemsg, irc::IRCClient (REACTOR_WITH_IRC)
//  14. TESTING         StringTransport, dirty-reactor checks, runUntil,
//                      MemoryNetwork (protocols connected in memory)
//  15. IMPLEMENTATION  the bodies of the non-template functions above
//
// ============================================================================
// A switch defined after this file was first included in a TU would be
// ignored (the include guard): refuse it instead of building without it.
#if defined(REACTOR_HPP_INCLUDED) && defined(REACTOR_WITH_IRC) && !REACTOR_HAS_IRC
#error "define REACTOR_WITH_IRC before the first #include \"reactor.hpp\" of this file"
#endif
#if defined(REACTOR_HPP_INCLUDED) && defined(REACTOR_WITH_OPENSSL) && !REACTOR_HAS_OPENSSL
#error "define REACTOR_WITH_OPENSSL before the first #include \"reactor.hpp\" of this file (and in every file)"
#endif
#if defined(REACTOR_HPP_INCLUDED) && defined(REACTOR_SEPARATE_COMPILATION) && defined(REACTOR_IMPLEMENTATION) && \
    !REACTOR_SEES_INTERNALS
#error "define REACTOR_IMPLEMENTATION before the first #include \"reactor.hpp\" of its file"
#define REACTOR_IMPLEMENTATION_INCLUDED  // (and nothing else: one clear error)
#endif

#ifndef REACTOR_HPP_INCLUDED
#define REACTOR_HPP_INCLUDED

// ============================================================================
// ==== 1. CONFIG ====
// ============================================================================

#if !defined(REACTOR_NO_EXCEPTIONS) && (defined(__cpp_exceptions) || defined(__EXCEPTIONS))
#define REACTOR_HAS_EXCEPTIONS 1
#else
#define REACTOR_HAS_EXCEPTIONS 0
#endif

#if defined(__cpp_rtti) || defined(__GXX_RTTI)
#define REACTOR_HAS_RTTI 1
#else
#define REACTOR_HAS_RTTI 0
#endif

#ifndef REACTOR_READ_BUFFER_SIZE
#define REACTOR_READ_BUFFER_SIZE 65536
#endif

#if defined(REACTOR_USE_EPOLL) && defined(REACTOR_USE_SELECT)
#error "define at most one of REACTOR_USE_EPOLL and REACTOR_USE_SELECT"
#endif
#if defined(REACTOR_USE_EPOLL) && !defined(__linux__)
#error "REACTOR_USE_EPOLL needs Linux (epoll); the default poll() backend works everywhere"
#endif
#if defined(REACTOR_USE_EPOLL) && defined(REACTOR_POSIX_ONLY)
#error "REACTOR_POSIX_ONLY builds what macOS and the BSDs run: poll() (or select()), not epoll"
#endif

// The inline namespace every name lives in (reactor::v0::Reactor, spelled
// reactor::Reactor) carries the settings that change layouts: exceptions
// (Failure, the vtable of Error) and REACTOR_WITH_OPENSSL (the vtables of
// ITransport and Protocol). Objects built with different settings then fail
// to link together instead of crashing at run time. A new major version
// would change the v0 (two vendored copies of different versions can then
// coexist).
#if defined(REACTOR_WITH_OPENSSL)
#define REACTOR_HAS_OPENSSL 1
#else
#define REACTOR_HAS_OPENSSL 0
#endif
#if REACTOR_HAS_EXCEPTIONS && defined(REACTOR_WITH_OPENSSL)
#define REACTOR_ABI v0_tls
#elif REACTOR_HAS_EXCEPTIONS
#define REACTOR_ABI v0
#elif defined(REACTOR_WITH_OPENSSL)
#define REACTOR_ABI v0_noexc_tls
#else
#define REACTOR_ABI v0_noexc
#endif

// Modules a program asks for: the IRC client (section 13) is 2,900 lines
// that every includer would otherwise parse and check (about a quarter of
// an echo server's compile time); like Twisted's `from twisted.words.protocols
// import irc`, a TU that uses it says so. REACTOR_IMPLEMENTATION (separate
// compilation) always compiles it, so one library object serves both kinds
// of TU.
#if defined(REACTOR_WITH_IRC) || (defined(REACTOR_SEPARATE_COMPILATION) && defined(REACTOR_IMPLEMENTATION))
#define REACTOR_HAS_IRC 1
#else
#define REACTOR_HAS_IRC 0
#endif

// Header-only by default: every function is inline. With
// REACTOR_SEPARATE_COMPILATION the non-template bodies (section 15) are
// compiled once, in the TU that defines REACTOR_IMPLEMENTATION. Virtual
// functions are declared REACTOR_INLINE too: a class whose virtuals are all
// inline has no "key function", so a header-only build emits its vtable only
// where it is used (otherwise every program would link every protocol).
#if defined(REACTOR_SEPARATE_COMPILATION)
#define REACTOR_INLINE
#else
#define REACTOR_INLINE inline
#endif

// The library's internal classes (the TCP connection, port and connector,
// the UDP port, the TLS layer) are defined only where their bodies are
// compiled: in every header-only TU, and in the one implementation TU of a
// separately compiled program. The other TUs of such a program never name
// them, and skip the work of compiling their definitions.
#if !defined(REACTOR_SEPARATE_COMPILATION) || defined(REACTOR_IMPLEMENTATION)
#define REACTOR_SEES_INTERNALS 1
#else
#define REACTOR_SEES_INTERNALS 0
#endif

// ============================================================================
// ==== 2. INCLUDES ====
// ============================================================================

#include <cstddef>      // offsetof (sockaddr_un lengths)
#include <cstdint>      // fixed-width integers
#include <cstring>      // std::strerror, std::memcpy
#include <exception>    // std::exception, std::exception_ptr
#include <functional>   // std::function for user callbacks
#include <initializer_list>  // writeSequence({a, b})
#include <memory>       // std::shared_ptr, std::unique_ptr
#include <string>       // messages, buffers
#include <string_view>  // zero-copy data to protocols
#include <type_traits>  // SFINAE helpers
#include <utility>      // std::move, std::exchange
#include <vector>       // everything array-like
#include <optional>     // a log-only errback's Deferred<optional<T>>; IRC: absent CTCP data, optional arguments

// C++20 coroutines: Deferred<T> is awaitable and a coroutine return type.
#if defined(__cpp_impl_coroutine) && defined(__has_include)
#if __has_include(<coroutine>)
#include <coroutine>    // std::coroutine_handle, std::suspend_never
#define REACTOR_HAS_COROUTINES 1
#endif
#endif

// The OS headers, used by section 3 alone.
#include <cerrno>
#include <csignal>
#if defined(_WIN32)
// Windows: Winsock 2 (link -lws2_32). <winsock2.h> must come before
// anything includes <windows.h>, whose default (not lean) contents pull in
// the old <winsock.h>; the two macros are only defined if the program has
// not chosen, and only for these includes. `interface` (a COM macro that
// <windows.h> may define) is a name this header uses, and `min`/`max`
// (macros of a <windows.h> included first without NOMINMAX) would break
// std::min/std::max: the three are saved here and restored at the end of
// the header.
#if !defined(WIN32_LEAN_AND_MEAN)
#define WIN32_LEAN_AND_MEAN
#define REACTOR_DEFINED_LEAN_AND_MEAN
#endif
#if !defined(NOMINMAX)
#define NOMINMAX
#define REACTOR_DEFINED_NOMINMAX
#endif
#include <winsock2.h>
#include <ws2tcpip.h>
#include <windows.h>
#if defined(REACTOR_DEFINED_LEAN_AND_MEAN)
#undef WIN32_LEAN_AND_MEAN
#undef REACTOR_DEFINED_LEAN_AND_MEAN
#endif
#if defined(REACTOR_DEFINED_NOMINMAX)
#undef NOMINMAX
#undef REACTOR_DEFINED_NOMINMAX
#endif
#pragma push_macro("interface")
#pragma push_macro("min")
#pragma push_macro("max")
#undef interface
#undef min
#undef max
#else
#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <unistd.h>
#if defined(__linux__) && !defined(REACTOR_POSIX_ONLY)
#include <sys/eventfd.h>
#endif
#if defined(REACTOR_USE_EPOLL)
#include <sys/epoll.h>
#endif
#endif  // _WIN32

// TLS (section 10a), opt-in: OpenSSL 1.1.1 or 3.
#if defined(REACTOR_WITH_OPENSSL)
#include <cstdio>        // std::snprintf (timeouts in messages)
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#endif

namespace reactor {
inline namespace REACTOR_ABI {

// ============================================================================
// ==== 3. PLATFORM ====
// The OS layer. Everything above the socket API lives here so that a port to
// another OS (Windows: WSAPoll + Winsock) touches this section only.
// ============================================================================
// The calls that differ between systems, decided once. Each Linux-only call
// has a POSIX fallback, which is what macOS and the BSDs run;
// REACTOR_POSIX_ONLY selects every fallback on Linux too, so that code is
// compiled and tested here (make check runs the whole suite that way).
//   wake-up descriptor    eventfd (Linux)       | a non-blocking self-pipe
//   accepted sockets      accept4 with flags    | accept, then fcntl
//   new sockets           SOCK_NONBLOCK|CLOEXEC | socket, then fcntl
//   no SIGPIPE on send    MSG_NOSIGNAL          | SO_NOSIGPIPE on the socket
//                                               | (macOS, BSD), else SIGPIPE
//                                               | blocked in this thread
//                                               | around the send
//
// Windows (REACTOR_OS_WINDOWS: Winsock 2, started once by the first socket)
// replaces the POSIX calls one for one:
//   descriptors           SOCKET handles (os::Fd), not small integers: the
//                         fd-indexed tables use fdIndex() (handle / 4)
//   readiness             WSAPoll (sockets only; POLLIN/POLLOUT requested)
//   wake-up descriptor    a connected loopback TCP pair
//   non-blocking          ioctlsocket(FIONBIO); no inheritance by children
//   errors                WSAGetLastError(), WSAE* values behind the same
//                         os:: predicates
//   gather write          WSASend with WSABUFs; no SIGPIPE exists
//   run(true)             SetConsoleCtrlHandler: Ctrl-C, Ctrl-Break, close
//   connect failures      WSAPoll may never report one (older Windows):
//                         the reactor always arms a connect timeout
//   not available         UNIX-domain sockets, pid lock files, select()
#if defined(_WIN32)
#define REACTOR_OS_WINDOWS 1
#if defined(REACTOR_USE_SELECT)
#error "REACTOR_USE_SELECT is not supported on Windows: the default WSAPoll backend is what it runs"
#endif
#else
#if defined(__linux__) && !defined(REACTOR_POSIX_ONLY)
#define REACTOR_OS_EVENTFD 1
#define REACTOR_OS_ACCEPT4 1
#endif
#if defined(SOCK_NONBLOCK) && defined(SOCK_CLOEXEC) && !defined(REACTOR_POSIX_ONLY)
#define REACTOR_OS_SOCKET_FLAGS 1
#endif
#if defined(MSG_NOSIGNAL) && !defined(REACTOR_POSIX_ONLY)
#define REACTOR_OS_MSG_NOSIGNAL 1
#elif defined(SO_NOSIGPIPE)
#define REACTOR_OS_SO_NOSIGPIPE 1
#endif
#endif  // _WIN32

namespace detail {
namespace os {

/// Which of the paths above this build takes, for tests and `make footprint`.
inline constexpr bool posixFallbacks =
#if defined(REACTOR_OS_EVENTFD) || defined(REACTOR_OS_ACCEPT4) || defined(REACTOR_OS_MSG_NOSIGNAL)
    false;
#else
    true;
#endif

#if defined(REACTOR_OS_WINDOWS)
using Fd = SOCKET;
inline constexpr Fd invalidFd = INVALID_SOCKET;
/// Where a descriptor is kept in the fd-indexed tables (the reactor's slots,
/// the poll array): a SOCKET is a handle, a multiple of 4.
inline std::size_t fdIndex(Fd fd) { return static_cast<std::size_t>(fd / 4); }
inline bool validFd(Fd fd) { return fd != INVALID_SOCKET; }
/// Starts Winsock once per process (every socket-making call does it first);
/// 0, or WSAStartup's error.
int winsockStarted();

inline int lastError() { return ::WSAGetLastError(); }
/// Sets what lastError() returns (os:: functions that fail without a call).
inline void setLastError(int err) { ::WSASetLastError(err); }
inline bool interrupted(int err) { return err == WSAEINTR; }
inline bool wouldBlock(int err) { return err == WSAEWOULDBLOCK; }
std::string errorString(int err);
inline constexpr int errConnectionRefused = WSAECONNREFUSED;
inline constexpr int errTooManyFiles = WSAEMFILE;
inline constexpr int errConnectionReset = WSAECONNRESET;
inline bool connectionAborted(int err) { return err == WSAECONNABORTED || err == WSAECONNRESET; }
#else
using Fd = int;
inline constexpr Fd invalidFd = -1;
/// Where a descriptor is kept in the fd-indexed tables (the reactor's slots,
/// the poll array): the number itself.
inline std::size_t fdIndex(Fd fd) { return static_cast<std::size_t>(fd); }
inline bool validFd(Fd fd) { return fd >= 0; }

inline int lastError() { return errno; }
/// Sets what lastError() returns (os:: functions that fail without a call).
inline void setLastError(int err) { errno = err; }
inline bool interrupted(int err) { return err == EINTR; }
inline bool wouldBlock(int err) { return err == EAGAIN || err == EWOULDBLOCK; }
inline std::string errorString(int err) { return std::strerror(err); }
/// Error values the layers above set or test by name.
inline constexpr int errConnectionRefused = ECONNREFUSED;
inline constexpr int errTooManyFiles = EMFILE;
/// What a peer's reset reads as (the in-memory network's reset, section 14).
inline constexpr int errConnectionReset = ECONNRESET;
/// accept() found the connection already reset by the peer: try the next one.
inline bool connectionAborted(int err) { return err == ECONNABORTED; }
#endif

/// What a failed connect() means, for Twisted's ConnectError subclasses.
enum class ConnectErrorKind { refused, timedOut, noRoute, bindError, other };
ConnectErrorKind classifyConnectError(int err);

void closeFd(Fd fd);

bool setNonBlocking(Fd fd);

bool setCloseOnExec(Fd fd);

/// The event bits the reactor uses, named once; poll() values on POSIX.
inline constexpr short evRead = POLLIN;
inline constexpr short evWrite = POLLOUT;
inline constexpr short evError = POLLERR | POLLHUP;
inline constexpr short evInvalid = POLLNVAL;

/// The local time as C's asctime() writes it ("Sun Dec  6 08:55:00 2026"),
/// or "" if the system cannot tell (CTCP TIME).
std::string localTimeText();

/// Sleeps `ms` milliseconds without watching anything: the back-off after a
/// failed wait, so a persistent error cannot spin the CPU.
#if defined(REACTOR_OS_WINDOWS)
inline void pause(int ms) { ::Sleep(static_cast<DWORD>(ms)); }
#else
inline void pause(int ms) { ::poll(nullptr, 0, ms); }
#endif

// ---- readiness backends -----------------------------------------------------
//
// The reactor asks the OS one question: which of these descriptors are
// ready? Each backend answers it behind the same calls, and the reactor is
// compiled against exactly one of them (`Poller`, chosen at the end of this
// block), never learning which. The contract they share:
//   add(fd, interest)     start watching (interest: evRead|evWrite, not 0);
//   modify(fd, interest)  change what is watched (not to 0: use remove);
//   remove(fd)            stop watching;
//   wait(ms, ready)       block at most `ms` (-1: forever), then fill
//                         `ready` with one entry per ready descriptor and
//                         return their count (0: timeout, -1: failed, with
//                         lastError()).
// Readiness comes back as ev* bits: evError (hang-up, error) is reported
// whatever the interest; evInvalid means the descriptor was closed while
// watched (poll and select; epoll cannot tell, the kernel forgets it).
// add/modify are forgiving about an fd the backend still knows or already
// forgot (closed and reused behind its back); false, with lastError(), only
// when the descriptor cannot be watched at all.

/// One ready descriptor. `tag` is the caller's: the reactor stamps each
/// entry to recognise a descriptor re-armed while the turn's entries run.
struct Ready {
    Fd fd;
    short events;
    std::uint64_t tag;
};

/// The storage poll() and select() share: a pollfd array kept
/// incrementally (handed to poll() as is), and each fd's place in it.
class PollArray {
public:
    bool add(Fd fd, short interest);
    bool modify(Fd fd, short interest) { return add(fd, interest); }
    void remove(Fd fd);

protected:
    /// After a wait that returned `n`: moves the entries with revents into `ready`.
    int collect(int n, std::vector<Ready>& ready);
    std::vector<pollfd> fds_;
    std::vector<std::size_t> position_;  // fd -> index in fds_, npos if absent
    static constexpr std::size_t npos = static_cast<std::size_t>(-1);
};

/// The default: poll(), everywhere POSIX; WSAPoll on Windows.
class PollBackend : public PollArray {
public:
#if defined(REACTOR_OS_WINDOWS)
    static constexpr const char* name = "WSAPoll";
#else
    static constexpr const char* name = "poll()";
#endif
    static bool canWatch(Fd fd) { return validFd(fd); }
    static std::string limit() { return ""; }
    int error() const { return 0; }
    int wait(int timeoutMs, std::vector<Ready>& ready);
#if defined(REACTOR_OS_WINDOWS)
    bool add(Fd fd, short interest) { unstall(fd); return PollArray::add(fd, interest); }
    bool modify(Fd fd, short interest) { return add(fd, interest); }
    void remove(Fd fd) { unstall(fd); PollArray::remove(fd); }

private:
    /// After the peer's FIN, WSAPoll reports a socket as hung up on every
    /// wait (poll() does not): one watched only for writing whose output
    /// the peer is not reading would be reported, and its writer called,
    /// thousands of times a second. Such a socket is reported once, then
    /// left out of the wait and probed at least every stallProbeMs until
    /// it is writable or fails.
    static constexpr int stallProbeMs = 20;
    void unstall(Fd fd);
    std::vector<Fd> stalled_;
    std::vector<pollfd> call_;  // what one WSAPoll call watches (reused)
#endif
};

#if !defined(REACTOR_OS_WINDOWS)
/// REACTOR_USE_SELECT: select(), for the rare system without poll(). It
/// cannot watch a descriptor at or above FD_SETSIZE.
class SelectBackend : public PollArray {
public:
    static constexpr const char* name = "select()";
    static bool canWatch(Fd fd) { return fd >= 0 && fd < FD_SETSIZE; }
    static std::string limit() { return "FD_SETSIZE is " + std::to_string(FD_SETSIZE); }
    int error() const { return 0; }
    int wait(int timeoutMs, std::vector<Ready>& ready);
};
#endif

#if defined(REACTOR_USE_EPOLL)
/// REACTOR_USE_EPOLL: Linux epoll, level-triggered (poll()'s semantics, so
/// the reactor above needs no change), one epoll_ctl per change of interest.
/// epoll refuses regular files (EPERM): like Twisted's epoll reactor, such
/// descriptors are reported ready on every turn, which is what poll() says
/// of them too.
class EpollBackend {
public:
    static constexpr const char* name = "epoll";
    static bool canWatch(Fd fd) { return fd >= 0; }
    static std::string limit() { return ""; }
    EpollBackend();
    ~EpollBackend();
    EpollBackend(const EpollBackend&) = delete;
    EpollBackend& operator=(const EpollBackend&) = delete;
    /// Why the epoll descriptor could not be made (0: it was).
    int error() const { return error_; }
    bool add(Fd fd, short interest);
    bool modify(Fd fd, short interest);
    void remove(Fd fd);
    int wait(int timeoutMs, std::vector<Ready>& ready);

private:
    bool control(int op, Fd fd, short interest);
    /// Where `fd` is in alwaysReady_, or alwaysReady_.size().
    std::size_t alwaysReadyIndex(Fd fd) const;
    Fd epfd_ = invalidFd;
    int error_ = 0;
    long owner_ = 0;  // the process that made epfd_: a forked child shares its set, and must not edit it
    std::size_t watched_ = 0;                   // registered with the kernel
    std::vector<epoll_event> events_;           // epoll_wait's output, reused
    std::vector<std::pair<Fd, short>> alwaysReady_;  // regular files (EPERM)
};
using Poller = EpollBackend;
#elif defined(REACTOR_USE_SELECT)
using Poller = SelectBackend;
#else
using Poller = PollBackend;
#endif

/// A connected pair of stream sockets, blocking and not inherited: a UNIX
/// socketpair on POSIX, a loopback TCP pair on Windows (its waker; and what
/// tests use where POSIX code would use a pipe). False with lastError().
bool socketPair(Fd out[2]);

/// A self-pipe (eventfd on Linux; a loopback socket pair on Windows) that
/// another thread, or a signal handler, writes to so that a reactor blocked
/// in poll() wakes up.
class Waker {
public:
    Waker();
    ~Waker();
    Waker(const Waker&) = delete;
    Waker& operator=(const Waker&) = delete;

    /// invalidFd if it could not be made (error() says why).
    Fd readFd() const { return readFd_; }
    Fd writeFd() const { return writeFd_; }
    int error() const { return error_; }

    /// Async-signal-safe; a full pipe already means "wake up", so errors are ignored.
    static void wake(Fd writeFd);
    void wake() const { wake(writeFd_); }

    void drain() const;

private:
    Fd readFd_ = invalidFd;
    Fd writeFd_ = invalidFd;
    int error_ = 0;
};

// ---- sockets ----------------------------------------------------------------

/// A socket address of either family.
struct SockAddr {
    sockaddr_storage storage{};
    socklen_t length = 0;
    int family() const { return storage.ss_family; }
    bool ipv6() const { return storage.ss_family == AF_INET6; }
    bool isUnix() const { return storage.ss_family == AF_UNIX; }
    const sockaddr* get() const { return reinterpret_cast<const sockaddr*>(&storage); }
    sockaddr* get() { return reinterpret_cast<sockaddr*>(&storage); }
};

/// Parses an IPv4 or IPv6 literal ("127.0.0.1", "::1"). False if `host`
/// is not a literal (a name, or garbage).
bool parseLiteral(const std::string& host, std::uint16_t port, SockAddr& out);

/// Blocking name resolution (run it on a thread). Returns the addresses,
/// or an empty vector with `error` set to the resolver's reason.
std::vector<SockAddr> resolve(const std::string& host, std::uint16_t port, std::string& error);

/// The host string and port of an address.
void describe(const SockAddr& a, std::string& host, std::uint16_t& port, bool& ipv6);

/// An IPv4 or IPv6 address and port in 20 bytes (a SockAddr takes 128):
/// what each connection keeps to name its two ends after the socket is gone.
struct CompactAddr {
    std::uint8_t ip[16] = {};
    std::uint16_t port = 0;  // host byte order
    bool ipv6 = false;
};
CompactAddr compact(const SockAddr& a);
SockAddr expand(const CompactAddr& c);

/// A non-blocking, close-on-exec stream socket (TCP; UNIX-domain for
/// AF_UNIX), or invalidFd with errno set.
Fd tcpSocket(int family);

bool setIntOption(Fd fd, int level, int name, int value);
#if defined(REACTOR_OS_WINDOWS)
/// Windows: a listener may rebind at once by default, and SO_REUSEADDR there
/// would let another socket take the port: nothing to do (as Twisted).
inline bool setReuseAddress(Fd) { return true; }
#else
inline bool setReuseAddress(Fd fd) { return setIntOption(fd, SOL_SOCKET, SO_REUSEADDR, 1); }
#endif
/// SO_REUSEPORT: false with lastError() ENOPROTOOPT where the system lacks it.
bool setReusePort(Fd fd);
bool setNoDelay(Fd fd, bool on);
bool setKeepAlive(Fd fd, bool on);
bool getIntOption(Fd fd, int level, int name);
inline bool getNoDelay(Fd fd) { return getIntOption(fd, IPPROTO_TCP, TCP_NODELAY); }
inline bool getKeepAlive(Fd fd) { return getIntOption(fd, SOL_SOCKET, SO_KEEPALIVE); }
/// Makes close() send a reset instead of a FIN (abortConnection).
void setLingerZero(Fd fd);

inline int bindTo(Fd fd, const SockAddr& a) { return ::bind(fd, a.get(), a.length); }
inline int listenOn(Fd fd, int backlog) { return ::listen(fd, backlog); }
/// The largest accept queue the system offers (the kernel caps it further,
/// at net.core.somaxconn on Linux).
inline constexpr int maxBacklog = SOMAXCONN;

/// Starts a non-blocking connect: 0 when connected at once, -1 with errno
/// (EINPROGRESS: wait for writability, then check socketError()).
int startConnect(Fd fd, const SockAddr& a);
#if defined(REACTOR_OS_WINDOWS)
inline bool connectInProgress(int err) { return err == WSAEWOULDBLOCK || err == WSAEINPROGRESS || err == WSAEALREADY; }
#else
inline bool connectInProgress(int err) { return err == EINPROGRESS || err == EALREADY; }
#endif

/// The timeout (seconds) a connect gets when the caller asked for none:
/// WSAPoll may never report a failed connect (older Windows 10), so there a
/// connect always has one. 0 (none) on POSIX.
#if defined(REACTOR_OS_WINDOWS)
inline constexpr double fallbackConnectTimeout = 30;
#else
inline constexpr double fallbackConnectTimeout = 0;
#endif

/// The pending error of a socket (SO_ERROR): how a non-blocking connect ended.
int socketError(Fd fd);

/// Accepts one connection, non-blocking and close-on-exec; EINTR retried.
Fd acceptOne(Fd listener, SockAddr& peer);
/// accept() failed because the process or system is out of descriptors
/// (or memory): retrying at once would spin.
bool outOfDescriptors(int err);

/// A descriptor kept in reserve so that, out of descriptors, the listener
/// can still accept-and-close the connection at the head of the queue.
#if defined(REACTOR_OS_WINDOWS)
inline Fd openSpareFd() { return invalidFd; }  // no per-process descriptor limit to run into
#else
inline Fd openSpareFd() { return ::open("/dev/null", O_RDONLY | O_CLOEXEC); }
#endif

bool localAddress(Fd fd, SockAddr& a);
bool peerAddress(Fd fd, SockAddr& a);

// ---- UNIX-domain sockets ----------------------------------------------------

/// A UNIX-domain address for `path`. A path starting with '\0' names
/// Linux's abstract namespace (no file). False, with `why`, if the path is
/// empty or too long for sockaddr_un.
bool unixAddress(const std::string& path, SockAddr& out, std::string& why);
/// The name in a UNIX-domain address: "" for an unnamed socket, a leading
/// '\0' for an abstract one.
std::string unixName(const SockAddr& a);
inline bool abstractName(const std::string& path) { return !path.empty() && path[0] == '\0'; }
/// Removes `path` if it is a socket (a dead listener's), best effort.
void removeStaleSocket(const std::string& path);
#if defined(REACTOR_OS_WINDOWS)
inline void removeFile(const std::string& path) { ::DeleteFileA(path.c_str()); }
inline bool changeMode(const std::string&, int) { return false; }
#else
inline void removeFile(const std::string& path) { ::unlink(path.c_str()); }
inline bool changeMode(const std::string& path, int mode) {
    return ::chmod(path.c_str(), static_cast<mode_t>(mode)) == 0;
}
#endif

/// A lock file naming its owner, as Twisted's FilesystemLock: a symbolic
/// link whose target is the owner's process id, so a lock whose owner died
/// can be recognised and taken over.
enum class PidLock { acquired, acquiredStale, held, failed };
PidLock lockPidFile(const std::string& name);
/// True if `name` is a lock held by a live process.
bool pidFileLocked(const std::string& name);
inline void unlockPidFile(const std::string& name) { removeFile(name); }

/// The process, user and group at the other end of a connected UNIX socket
/// (SO_PEERCRED on Linux, getpeereid() on the BSDs and macOS, where the pid
/// is unknown: -1). False where the system cannot say.
bool peerCredentials(Fd fd, long& pid, long& uid, long& gid);

/// recv(); EINTR retried. Returns bytes, 0 at EOF, -1 with errno.
long receive(Fd fd, char* buf, std::size_t size);

/// Gather-write without SIGPIPE (see the table at the top of this section).
long sendParts(Fd fd, const std::string_view* parts, std::size_t count);

#if defined(REACTOR_OS_WINDOWS)
inline int shutdownWrite(Fd fd) { return ::shutdown(fd, SD_SEND); }
#else
inline int shutdownWrite(Fd fd) { return ::shutdown(fd, SHUT_WR); }
#endif

// ---- datagram sockets (UDP) -------------------------------------------------

/// A non-blocking, close-on-exec UDP socket, or invalidFd with errno set.
Fd udpSocket(int family);
/// Sends one datagram to `to`, or to the connected peer when `to` is null;
/// EINTR retried. Bytes sent, or -1 with errno.
long sendTo(Fd fd, std::string_view data, const SockAddr* to);
/// Receives one datagram into `buf` (recvmsg; EINTR retried) and its sender
/// into `from`. Returns the bytes stored (at most `size`), or -1 with errno;
/// `truncated` says the datagram was longer than `size` (MSG_TRUNC), and
/// `fullLength` is then its real length where the system tells (Linux), else `size`.
long receiveFrom(Fd fd, char* buf, std::size_t size, SockAddr& from, bool& truncated, std::size_t& fullLength);
#if defined(REACTOR_OS_WINDOWS)
inline constexpr int errMessageSize = WSAEMSGSIZE;
/// Windows reports the ICMP as a reset (WSAECONNRESET) on a datagram socket.
inline bool refused(int err) { return err == WSAECONNREFUSED || err == WSAECONNRESET; }
#else
/// Error values a datagram socket reports, by name.
inline constexpr int errMessageSize = EMSGSIZE;
/// An ICMP "port unreachable" reported on a connected datagram socket.
inline bool refused(int err) { return err == ECONNREFUSED; }
#endif
inline bool setBroadcast(Fd fd, bool on) { return setIntOption(fd, SOL_SOCKET, SO_BROADCAST, on ? 1 : 0); }
inline bool getBroadcast(Fd fd) { return getIntOption(fd, SOL_SOCKET, SO_BROADCAST); }
/// SO_REUSEADDR and, where the system has it, SO_REUSEPORT: several
/// sockets bound to one multicast port all receive its datagrams.
bool setReuseMultiple(Fd fd);
/// Joins (or leaves) the multicast group `group` on the interface with the
/// IPv4 address `iface` (null: the system's choice; IPv6 always uses it).
bool joinGroup(Fd fd, const SockAddr& group, const SockAddr* iface, bool join);
/// Multicast options of an IPv4 or IPv6 socket (time-to-live / hop limit,
/// loopback of our own datagrams). false / -1 with errno on failure.
bool setMulticastTTL(Fd fd, bool ipv6, int ttl);
int getMulticastTTL(Fd fd, bool ipv6);
bool setMulticastLoop(Fd fd, bool ipv6, bool on);
bool getMulticastLoop(Fd fd, bool ipv6);
/// The IPv4 interface multicast datagrams leave from (IP_MULTICAST_IF).
bool setMulticastInterface(Fd fd, const SockAddr& iface);
std::string getMulticastInterface(Fd fd);

#if defined(REACTOR_OS_WINDOWS)
BOOL WINAPI reactorConsoleHandler(DWORD event);
#else
extern "C" void reactorSignalHandler(int sig);
#endif

const char* signalName(int sig);

/// Installs the handlers, remembering the previous ones so they can be put back.
class SignalHandlers {
public:
    explicit SignalHandlers(Fd wakeFd);
    ~SignalHandlers();
    SignalHandlers(const SignalHandlers&) = delete;
    SignalHandlers& operator=(const SignalHandlers&) = delete;
    /// The signal this reactor was sent since the last call, or 0.
    int take();

private:
    int slot_ = -1;  // in signalSlots(): every reactor in run(true) has one
};

}  // namespace os
}  // namespace detail

// ============================================================================
// ==== 4. UTILITIES ====
// Logging, the error classes, Failure, and the call-site capture used to
// name leaked timers.
// ============================================================================

/// Severity of a log line.
enum class LogLevel { debug, info, warning, error, critical };

/// The level's lower-case name ("debug" ... "critical"), as the default logger prints it.
const char* logLevelName(LogLevel level);

/// The one log hook (Twisted's log observer). Called on the thread that
/// logs: the reactor's thread for what the reactor does, a pool worker for
/// a pool job's uncaught exception, any thread that calls log(). Calls
/// never overlap: a lock serializes them (as Twisted's log publisher), so
/// a sink needs no lock of its own. To touch reactor-thread objects (a
/// transport, say), a sink hands the line over with callFromThread.
using Logger = std::function<void(LogLevel, std::string_view)>;

namespace detail {
void defaultLog(LogLevel level, std::string_view message);

/// Owns one object made with `new`: std::unique_ptr for the private
/// members the declarations name (a class's hidden state, a pool made on
/// first use), without instantiating std::unique_ptr in every TU (each
/// instantiation cost a separately compiled TU about 1%). T may be
/// incomplete wherever the owner's destructor is not compiled.
template <class T>
class Owner {
public:
    Owner() = default;
    explicit Owner(T* p) : p_(p) {}
    ~Owner() { delete p_; }
    Owner(const Owner&) = delete;
    Owner& operator=(const Owner&) = delete;
    /// Holds `p` instead, then deletes the object held before.
    void reset(T* p = nullptr) {
        T* old = p_;
        p_ = p;
        delete old;
    }
    T* get() const { return p_; }
    T* operator->() const { return p_; }
    T& operator*() const { return *p_; }
    explicit operator bool() const { return p_ != nullptr; }

private:
    T* p_ = nullptr;
};
}  // namespace detail

/// Replaces the log hook and returns the previous one; an empty function
/// restores the default (stderr). Thread-safe: waits for a call in
/// progress on another thread. A sink may call it (and log()) itself.
Logger setLogger(Logger logger);

/// Sends one line to the log hook. Thread-safe.
void log(LogLevel level, std::string_view message);

/// Receives one trace line per loop event (Reactor::setTracer).
using Tracer = std::function<void(std::string_view line)>;

namespace detail {

/// Where the tracer of the reactor turning on this thread is kept, or null.
/// Lets code that does not know its reactor (a Deferred firing) report to
/// the trace.
const std::shared_ptr<const Tracer>*& activeTracer();
/// Sends `line` to the tracer kept at `slot`, if there is one. The tracer is
/// held for the call (it may replace itself), and one that throws is
/// logged, not let through: tracing never changes what a program does.
void emitTrace(const std::shared_ptr<const Tracer>* slot, std::string_view line);

/// "12.3 ms" / "850 us": a short human duration for trace lines.
std::string formatDuration(double seconds);

/// `text` with each NUL byte written as \0: for messages, which what()
/// would otherwise cut at the first one.
std::string showNul(std::string_view text);

/// Where a call was made from, captured by default arguments so that a
/// leaked timer can be reported with the line that scheduled it.
struct Where {
#if defined(__has_builtin)
#if __has_builtin(__builtin_FILE) && __has_builtin(__builtin_LINE)
#define REACTOR_HAS_BUILTIN_WHERE 1
#endif
#endif
#if defined(REACTOR_HAS_BUILTIN_WHERE) || (defined(__GNUC__) && __GNUC__ >= 5)
    constexpr Where(const char* f = __builtin_FILE(), int l = __builtin_LINE()) : file(f), line(l) {}
#else
    constexpr Where(const char* f = "?", int l = 0) : file(f), line(l) {}
#endif
    const char* file;
    int line;
    std::string str() const { return std::string(file) + ":" + std::to_string(line); }
};

/// Up to this many names: a Failure's type and its ancestors.
inline constexpr std::size_t maxErrorDepth = 8;

struct TypeChain {
    const char* names[maxErrorDepth] = {};
    std::size_t size = 0;
    void push(const char* name) {
        if (size < maxErrorDepth) names[size++] = name;
    }
    bool contains(const char* name) const;
};

}  // namespace detail

/// The root of every error this library reports. Errors carry their type
/// names as data, so Failure::check works without RTTI or exceptions.
class Error : public std::exception {
public:
    /// The name Failure::check and Failure::type see; every error class declares its own.
    static constexpr const char* typeName = "Error";
    /// An error carrying `message` (what() returns it).
    explicit Error(std::string message = "") : message_(std::move(message)) {}
    /// The message (std::exception's interface).
    const char* what() const noexcept override { return message_.c_str(); }
    /// The message given to the constructor.
    const std::string& message() const { return message_; }
    /// Appends this error's type name and its ancestors', most derived first.
    virtual void typeNames(detail::TypeChain& chain) const { chain.push(typeName); }
    /// A copy of the most derived object (a Failure keeps the real error,
    /// even when given it through a base-class reference).
    virtual std::shared_ptr<const Error> clone() const { return std::shared_ptr<const Error>(new Error(*this)); }
#if REACTOR_HAS_EXCEPTIONS
    /// The error as an exception_ptr of its most derived type.
    virtual std::exception_ptr toExceptionPtr() const { return std::make_exception_ptr(*this); }
#endif

private:
    std::string message_;
};

/// CRTP glue: declares `Self` as an error type derived from `Parent`.
template <class Self, class Parent>
class ErrorType : public Parent {
public:
    using Parent::Parent;
    /// Pushes Self::typeName, then the Parent's names.
    void typeNames(detail::TypeChain& chain) const override {
        chain.push(Self::typeName);
        Parent::typeNames(chain);
    }
    /// A copy of this object as a Self (not sliced to the base).
    std::shared_ptr<const Error> clone() const override {
        // Owned through an Error*: one shared_ptr control-block type for
        // every error class instead of one per class (make_shared<Self>),
        // which keeps each error class's cost in a binary to its vtable.
        const Error* copy = new Self(static_cast<const Self&>(*this));
        return std::shared_ptr<const Error>(copy);
    }
#if REACTOR_HAS_EXCEPTIONS
    /// The error as an exception_ptr holding a Self.
    std::exception_ptr toExceptionPtr() const override {
        return std::make_exception_ptr(static_cast<const Self&>(*this));
    }
#endif
};

/// The error classes, Twisted's `twisted.internet.error` with the same names
/// and messages.
namespace error {

#define REACTOR_ERROR_CLASS(Name, Parent, DefaultMessage)                              \
    class Name : public ErrorType<Name, Parent> {                                      \
    public:                                                                            \
        static constexpr const char* typeName = #Name;                                 \
        explicit Name(std::string message = DefaultMessage);                           \
    }

// API misuse.
REACTOR_ERROR_CLASS(ValueError, Error, "Invalid value.");
REACTOR_ERROR_CLASS(RuntimeError, Error, "Invalid state.");
REACTOR_ERROR_CLASS(AlreadyCalled, ValueError, "Tried to cancel an already-called event.");
REACTOR_ERROR_CLASS(AlreadyCancelled, ValueError, "Tried to cancel an already-cancelled event.");
REACTOR_ERROR_CLASS(ReactorNotRunning, RuntimeError, "Can't stop reactor that isn't running.");
REACTOR_ERROR_CLASS(ReactorAlreadyRunning, RuntimeError, "Reactor already running.");
// Connections ending.
REACTOR_ERROR_CLASS(ConnectionClosed, Error, "Connection was closed.");
REACTOR_ERROR_CLASS(ConnectionDone, ConnectionClosed, "Connection was closed cleanly.");
REACTOR_ERROR_CLASS(ConnectionLost, ConnectionClosed,
                    "Connection to the other side was lost in a non-clean fashion.");
REACTOR_ERROR_CLASS(ConnectionAborted, ConnectionLost,
                    "Connection was aborted locally using ITCPTransport.abortConnection.");
// Connections not starting.
REACTOR_ERROR_CLASS(ConnectError, Error, "An error occurred while connecting.");
REACTOR_ERROR_CLASS(ConnectBindError, ConnectError, "Couldn't bind.");
REACTOR_ERROR_CLASS(UnknownHostError, ConnectError, "Hostname couldn't be looked up.");
REACTOR_ERROR_CLASS(DNSLookupError, ConnectError, "DNS lookup failed.");
REACTOR_ERROR_CLASS(NoRouteError, ConnectError, "No route to host.");
REACTOR_ERROR_CLASS(ConnectionRefusedError, ConnectError, "Connection was refused by other side.");
REACTOR_ERROR_CLASS(TCPTimedOutError, ConnectError, "TCP connection timed out.");
REACTOR_ERROR_CLASS(BadFileError, ConnectError, "File used for UNIX socket is no good.");
REACTOR_ERROR_CLASS(UserError, ConnectError, "User aborted connection.");
REACTOR_ERROR_CLASS(TimeoutError, UserError, "User timeout caused connection failure.");
REACTOR_ERROR_CLASS(NotConnectingError, RuntimeError, "The Connector was not connecting when it was asked to stop connecting.");
REACTOR_ERROR_CLASS(BindError, Error, "An error occurred binding to an interface.");
REACTOR_ERROR_CLASS(CannotListenError, BindError, "Couldn't listen.");
REACTOR_ERROR_CLASS(NotListeningError, RuntimeError, "The Port was not listening when it was asked to stop listening.");
REACTOR_ERROR_CLASS(ConnectingCancelledError, Error, "Connecting was cancelled.");
REACTOR_ERROR_CLASS(NoProtocol, Error, "The factory built no protocol.");
// Datagrams (UDP).
REACTOR_ERROR_CLASS(InvalidAddressError, ValueError, "An invalid address was specified.");
REACTOR_ERROR_CLASS(MessageLengthError, Error, "Message is too long to send.");
REACTOR_ERROR_CLASS(MulticastJoinError, Error, "An attempt to join a multicast group failed.");

#undef REACTOR_ERROR_CLASS

}  // namespace error

namespace detail {

#if REACTOR_HAS_RTTI && defined(__GNUG__)
std::string demangle(const char* name);
/// "a::b::Echo<x::Y>" -> "Echo<x::Y>": the class's own name, for logPrefix.
std::string unqualifiedName(const std::string& name);
#endif

/// What Failure::raiseException throws for a Failure known only by name
/// (`Failure("ParseError", ...)`, the library's "ResultConsumed" marker):
/// it carries the names, so the Failure caught again (by an errback after
/// trap<E>(), or from a coroutine's co_await) keeps its type and message.
/// what() is "ParseError: bad header", for code that only sees an Error.
// The virtual members are defined in the class, as Error's are: a class
// with an out-of-line virtual (a key function) would have its vtable in
// every TU that includes the header.
class NamedError : public Error {
public:
    NamedError(const TypeChain& names, std::string message);
    const char* what() const noexcept override { return what_.c_str(); }
    void typeNames(TypeChain& chain) const override {
        for (std::size_t i = 0; i < names_.size; ++i) chain.push(names_.names[i]);
    }
    std::shared_ptr<const Error> clone() const override { return std::shared_ptr<const Error>(new NamedError(*this)); }
#if REACTOR_HAS_EXCEPTIONS
    std::exception_ptr toExceptionPtr() const override { return std::make_exception_ptr(*this); }
#endif

private:
    TypeChain names_;   // the Failure's names, most derived first
    std::string what_;  // "Name: message"
};

/// API misuse: throw `E` when exceptions are on, otherwise log it and let the
/// caller return without doing anything.
template <class E>
inline void raise(std::string message) {
#if REACTOR_HAS_EXCEPTIONS
    throw E(std::move(message));
#else
    std::string line = E::typeName;
    line += ": ";
    line += message;
    log(LogLevel::error, line);
#endif
}

template <class E>
inline void raise() {
    raise<E>(E().message());
}

}  // namespace detail

/// An error as a value: its type name (and ancestors'), a message, and, when
/// exceptions are on, the original exception. Twisted's `Failure`.
class Failure {
public:
    /// An error of unknown type.
    Failure() { chain_.push("Failure"); }

    /// From any exception object: `Failure(error::ConnectionDone())`.
    template <class E, class = std::enable_if_t<std::is_base_of<std::exception, std::decay_t<E>>::value>>
    Failure(const E& e) {  // NOLINT: implicit on purpose, like Twisted's Failure(exc)
        if constexpr (std::is_base_of<Error, E>::value) {
            adopt(e);  // one body for every library error type
        } else {
            message_ = e.what();
            describe(e);
#if REACTOR_HAS_EXCEPTIONS
            exception_ = std::make_exception_ptr(e);
#endif
        }
    }

    /// An error known only by name: `Failure("ParseError", "bad header")`.
    Failure(const char* typeName, std::string message) : message_(std::move(message)) { chain_.push(typeName); }

#if REACTOR_HAS_EXCEPTIONS
    /// From a caught exception: `catch (...) { return Failure::current(); }`.
    static Failure current() { return fromException(std::current_exception()); }

    /// From an exception_ptr: a library Error keeps its type names (no RTTI
    /// needed), another std::exception is named by its dynamic type (RTTI) or
    /// "std::exception", anything else is "UnknownException".
    static Failure fromException(std::exception_ptr ep);

    /// The original exception, or null for a Failure built from a name.
    std::exception_ptr exception() const { return exception_; }
#endif

    /// The most derived type name, e.g. "ConnectionDone".
    std::string type() const;
    /// Twisted's getErrorMessage(): the exception's message.
    const std::string& getErrorMessage() const { return message_; }
    /// "ConnectionDone: Connection was closed cleanly."
    std::string str() const { return type() + ": " + message_; }

    /// True when the error is an `E` (or derives from one).
    template <class E>
    bool check() const {
        if constexpr (std::is_base_of<Error, E>::value) {
            return chain_.contains(E::typeName);
        } else {
#if REACTOR_HAS_EXCEPTIONS
            if (!exception_) return false;
            try {
                std::rethrow_exception(exception_);
            } catch (const E&) {
                return true;
            } catch (...) {
                return false;
            }
#else
            return false;
#endif
        }
    }
    /// True when the error is of the named type or derives from it.
    bool check(const char* name) const { return chain_.contains(name) || dynamicName_ == name; }

    /// Twisted's trap(): returns if the error is an `E`; otherwise re-raises
    /// the original error so the errback fails again. Without exceptions,
    /// write `if (!f.check<E>()) return f;` instead.
    template <class E>
    void trap() const {
        if (!check<E>()) raiseException();
    }

    /// Twisted's `failure.value`: the error object when it is an `E` (a
    /// library error class), else null. Works without exceptions and RTTI.
    template <class E>
    const E* value() const {
        static_assert(std::is_base_of<Error, E>::value, "Failure::value<E>: E must derive from reactor::Error");
        if (!check<E>()) return nullptr;
        if (error_) return static_cast<const E*>(error_.get());
#if REACTOR_HAS_EXCEPTIONS
        if (exception_) {
            try {
                std::rethrow_exception(exception_);
            } catch (const E& e) {
                return &e;  // the exception_ptr keeps the object alive
            } catch (...) {
            }
        }
#endif
        return nullptr;
    }

    /// Throws the original exception; a Failure known only by name throws
    /// an Error that keeps the name (caught again, it is the same Failure).
    [[noreturn]] void raiseException() const;

private:
    template <class E>
    void describe(const E& e) {
#if REACTOR_HAS_RTTI && defined(__GNUG__)
        dynamicName_ = detail::demangle(typeid(e).name());
#else
        (void)e;
        chain_.push("std::exception");
#endif
    }
    // From a library error: its message, type names, a copy (for value<E>()
    // without exceptions; never sliced) and, with exceptions, an
    // exception_ptr of its most derived type.
    void adopt(const Error& e);
    void describe(const std::exception& e);
    static const Error* dynamicError(const std::exception& e);

    std::string message_;
    std::string dynamicName_;  // a demangled type name for non-library exceptions
    detail::TypeChain chain_;  // static names: the type and its ancestors
    std::shared_ptr<const Error> error_;  // the library error object, when built from one
#if REACTOR_HAS_EXCEPTIONS
    std::exception_ptr exception_;
#endif
};

namespace detail {

#if REACTOR_HAS_EXCEPTIONS
/// Inside a catch block: logs "Unhandled error in <context>: <error>" and
/// stores the Failure in `failure` if given. One body for every runGuarded
/// instantiation, so each of those is only its try/catch.
void reportUnhandled(std::string_view context, Failure* failure);
#endif

/// For log lines quoting what a peer sent: control characters (a
/// terminal's escape sequences, say: C0, DEL and the C1 range U+0080..9F)
/// and bytes that are not UTF-8 as \xHH; whole UTF-8 characters as they
/// are; at most 200 bytes of input, then "...".
std::string printable(std::string_view s);

/// Runs `f`, catching what it throws at the reactor's edge: the error is
/// logged with `context()` (called only then, so the happy path builds no
/// string) and returned as a Failure. Returns true if `f` completed normally.
template <class Context, class F>
inline bool runGuardedWith(Context&& context, F&& f, Failure* failure = nullptr) {
#if REACTOR_HAS_EXCEPTIONS
    try {
        f();
        return true;
    } catch (...) {
        reportUnhandled(context(), failure);
        return false;
    }
#else
    (void)context;
    (void)failure;
    f();
    return true;
#endif
}

/// The same with a fixed context string.
template <class F>
inline bool runGuarded(const char* context, F&& f, Failure* failure = nullptr) {
    return runGuardedWith([context] { return context; }, std::forward<F>(f), failure);
}

}  // namespace detail

// ============================================================================
// ==== 5. TIME ====
// Timers: the interface every time user takes (IReactorTime), the handle to
// a scheduled call (DelayedCall), the shared timer heap, and the
// deterministic Clock for tests.
// ============================================================================

namespace detail {
class TimerQueue;

/// One scheduled call. Shared by the queue's heap and the user's handles.
struct TimerEntry {
    double time = 0;
    std::uint64_t seq = 0;  // FIFO tie-breaker; renewed by reset()/delay()
    std::function<void()> fn;
    TimerQueue* queue = nullptr;  // null once the owning clock is gone
    bool called = false;
    bool cancelled = false;
    Where where;
};
}  // namespace detail

/// A handle to a call scheduled with `callLater` (Twisted's IDelayedCall).
/// Copies refer to the same call; dropping every handle does not cancel it.
class DelayedCall {
public:
    DelayedCall() = default;
    /// Wraps a scheduled entry; made by Reactor::callLater and Clock::callLater.
    explicit DelayedCall(std::shared_ptr<detail::TimerEntry> entry) : entry_(std::move(entry)) {}

    /// Unschedules the call. Cancelling a called or cancelled call is an
    /// error (`error::AlreadyCalled` / `error::AlreadyCancelled`).
    void cancel();
    /// Reschedules to `secondsFromNow` from now (earlier or later).
    void reset(double secondsFromNow);
    /// Moves the scheduled time `secondsLater` later (relative to the old time).
    void delay(double secondsLater);
    /// Neither called nor cancelled.
    bool active() const { return entry_ && !entry_->called && !entry_->cancelled; }
    /// The absolute time (on its clock's `seconds()` scale) it runs at.
    double getTime() const { return entry_ ? entry_->time : 0.0; }
    /// It has run (set just before the call, so it is true inside it).
    bool called() const { return entry_ && entry_->called; }
    /// cancel() was called on it.
    bool cancelled() const { return entry_ && entry_->cancelled; }
    /// "file.cpp:42": where the call was scheduled (for leak reports).
    std::string where() const { return entry_ ? entry_->where.str() : std::string(); }
    /// Refers to a call (false for a default-constructed handle), active or not.
    explicit operator bool() const { return static_cast<bool>(entry_); }
    /// Both handles refer to the same call.
    friend bool operator==(const DelayedCall& a, const DelayedCall& b) { return a.entry_ == b.entry_; }
    /// The handles refer to different calls.
    friend bool operator!=(const DelayedCall& a, const DelayedCall& b) { return a.entry_ != b.entry_; }

private:
    bool checkActive(const char* what) const;
    std::shared_ptr<detail::TimerEntry> entry_;
};

/// What every time user takes: the Reactor and the test Clock both provide it.
class IReactorTime {
public:
    virtual ~IReactorTime() = default;
    /// The current time in seconds, on a monotonic scale.
    virtual double seconds() const = 0;
    /// Runs `f` after `delay` seconds (>= 0). Calls due at the same time run
    /// in the order they were scheduled.
    virtual DelayedCall callLater(double delay, std::function<void()> f, detail::Where where = {}) = 0;
    /// The calls that are scheduled and neither called nor cancelled, in
    /// the order they will run (time, then scheduling order).
    virtual std::vector<DelayedCall> getDelayedCalls() const = 0;
};

namespace detail {

/// A binary min-heap of timers ordered by (time, seq). Cancelled and
/// rescheduled entries are dropped lazily as they surface, and the heap is
/// compacted when more than half of it is garbage (a connection timeout
/// that is reset on every packet would otherwise grow it forever).
class TimerQueue {
public:
    explicit TimerQueue(const IReactorTime& clock) : clock_(clock) {}
    /// Releases the pending calls' functions (what they capture may own a
    /// handle to their own DelayedCall: a cycle through the entry otherwise).
    /// Destroying them may run code that touches timers, so they die last,
    /// after the queue is detached and emptied.
    ~TimerQueue() { clear(); }
    TimerQueue(const TimerQueue&) = delete;
    TimerQueue& operator=(const TimerQueue&) = delete;

    std::shared_ptr<TimerEntry> schedule(double delay, std::function<void()> fn, Where where);

    /// Called through DelayedCall: the entry's time changed.
    void reschedule(const std::shared_ptr<TimerEntry>& entry, double newTime);
    void cancelled();

    /// Drops every pending call uncalled (their handles read inactive,
    /// neither called nor cancelled: the clock is gone). A destructor that
    /// schedules more is handled: the loop runs until the queue is empty.
    void clear();

    std::size_t liveCount() const { return live_; }
    double now() const { return clock_.seconds(); }

    /// Sets `time` to the earliest live call's time (which may be negative:
    /// DelayedCall::delay() can move a call before the clock began) and
    /// returns true; false if there is none.
    bool nextTime(double& time);

    /// Runs every call due at `now`. Calls scheduled (or rescheduled) while
    /// this runs wait for the next pass unless `includeNew` (the Clock's
    /// behaviour). `runOne` invokes a call (the Reactor guards it; the
    /// Clock lets exceptions out, like Twisted's Clock).
    template <class RunOne>
    std::size_t runDue(double now, bool includeNew, RunOne&& runOne) {
        const std::uint64_t passLimit = includeNew ? UINT64_MAX : nextSeq_;
        std::size_t ran = 0;
        deferred_.clear();
        while (!heap_.empty() && heap_.front().time <= now) {
            Node node = popTop();
            TimerEntry& e = *node.entry;
            if (isStale(node)) {
                --stale_;
                continue;
            }
            if (node.seq >= passLimit) {  // scheduled during this pass
                deferred_.push_back(std::move(node));
                continue;
            }
            e.called = true;  // before the call: cancelling itself is AlreadyCalled
            --live_;
            std::function<void()> fn = std::move(e.fn);
            ++ran;
            runOne(fn, e);
            if (includeNew) now = std::max(now, clock_.seconds());
        }
        for (Node& node : deferred_) pushNode(std::move(node));
        deferred_.clear();
        return ran;
    }

    std::vector<DelayedCall> delayedCalls() const;

private:
    struct Node {
        double time;
        std::uint64_t seq;
        std::shared_ptr<TimerEntry> entry;
    };
    static bool later(const Node& a, const Node& b);
    static bool isStale(const Node& node);
    void push(const std::shared_ptr<TimerEntry>& entry);
    void pushNode(Node node);
    Node popTop();
    void dropStaleTop();
    void maybeCompact();

    const IReactorTime& clock_;
    std::vector<Node> heap_;
    std::vector<Node> deferred_;  // reused: no allocation per pass
    std::uint64_t nextSeq_ = 0;
    std::size_t live_ = 0;
    std::size_t stale_ = 0;
};

}  // namespace detail





/// A deterministic clock for tests (Twisted's `task.Clock`): time stands
/// still until `advance()` moves it. Calls run inside `advance`, in time
/// order, FIFO on ties, including calls scheduled while advancing.
/// Exceptions thrown by a call propagate out of `advance`.
class Clock : public IReactorTime {
public:
    Clock() = default;
    double seconds() const override { return now_; }
    REACTOR_INLINE DelayedCall callLater(double delay, std::function<void()> f, detail::Where where = {}) override;
    std::vector<DelayedCall> getDelayedCalls() const override { return timers_.delayedCalls(); }

    /// Moves time forward by `amount` seconds and runs what became due.
    void advance(double amount);
    /// Calls `advance` for each amount in turn.
    void pump(const std::vector<double>& amounts) {
        for (double a : amounts) advance(a);
    }

private:
    double now_ = 0.0;
    detail::TimerQueue timers_{*this};
};

// ============================================================================
// ==== 6. DEFERRED ====
// Twisted's Deferred: a result that is not there yet, with a chain of
// (callback, errback) pairs that runs when it arrives.
//
//       d.callback(v)             d.errback(f)
//            |                         |
//     [ callback 1 ]            [ errback 1 ]      one pair
//            |     \ fails      / recovers |
//            |      \          /          |
//            v       v        v            v
//     [ callback 2 ]            [ errback 2 ]      the next pair
//
// Design (who owns what):
//   - `Deferred<T>` is a handle: copies share one `detail::DeferredState<T>`.
//   - Callbacks that keep the type (`T -> T`, `T -> Failure`, `T ->
//     Deferred<T>`, errbacks) go on the Deferred's own chain and the call
//     returns the same Deferred, as in Twisted.
//   - A callback that changes the type (`A -> B`) returns a *new*
//     `Deferred<B>` fed by the original: when the chain reaches that pair,
//     the result (value or failure) *moves* into the new Deferred. Until
//     then, cancelling the new Deferred cancels the original (in Twisted
//     they are one Deferred): if that one has fired and waits on a
//     Deferred a callback returned, only that inner one is cancelled.
//   - A Deferred whose result moved on (to a type-changing branch, to the
//     outer Deferred whose callback returned it, to a DeferredList with
//     consumeErrors, to a co_await, to chainDeferred's target) holds the
//     empty value T{} on the success track: Twisted leaves None there. A T
//     that cannot be default-constructed holds a handled "ResultConsumed"
//     failure instead (callbacks added later do not run; never logged).
//   - A callback may fail without exceptions by returning a `Failure` or a
//     `Result<T>` (value or Failure).
//   - The chain is run by one loop over an explicit stack (Twisted's
//     `_runCallbacks`), so long chains and deeply nested Deferreds do not
//     grow the C++ stack.
//   - A Deferred whose result is an unhandled Failure logs "Unhandled error
//     in Deferred" when its last owner lets go (a handle, or a pending
//     callback of another Deferred that would have fed it).
// ============================================================================

template <class T>
class Deferred;
template <class T>
class Result;

namespace detail {
/// Stands in for "no value": the stored value of `Result<void>`.
struct Unit {};
template <class T>
using Stored = std::conditional_t<std::is_void<T>::value, Unit, T>;

#if defined(REACTOR_HAS_COROUTINES)
template <class T, bool AsResult>
struct DeferredAwaiter;
template <class T>
struct DeferredPromise;
#endif

template <class T>
struct TypeTag {
    using type = T;
};
template <class T>
TypeTag<T> deferredTag(const Deferred<T>*);
void deferredTag(...);
/// `R` is a Deferred<T> or derives from one (a DeferredList<T>).
template <class R>
struct IsDeferred : std::negation<std::is_void<decltype(deferredTag(std::declval<R*>()))>> {};
/// The T of a Deferred<T> (or of a class derived from one).
template <class R>
using DeferredValueOf = typename decltype(deferredTag(std::declval<R*>()))::type;
template <class T>
struct IsOptional : std::false_type {};
template <class T>
struct IsOptional<std::optional<T>> : std::true_type {};
template <class R>
struct IsResult : std::false_type {};
template <class T>
struct IsResult<Result<T>> : std::true_type {};
}  // namespace detail

/// The errors a Deferred reports (Twisted's `twisted.internet.defer`). Their
/// type names carry a "defer." prefix so that `defer::TimeoutError` is not
/// mistaken for `error::TimeoutError` by `Failure::check`.
namespace defer {

/// Firing a Deferred that has already been fired.
class AlreadyCalledError : public ErrorType<AlreadyCalledError, Error> {
public:
    static constexpr const char* typeName = "defer.AlreadyCalledError";
    explicit AlreadyCalledError(std::string message = "Deferred was already called");
};

/// What a cancelled Deferred errbacks with (unless its canceller fired it).
class CancelledError : public ErrorType<CancelledError, Error> {
public:
    static constexpr const char* typeName = "defer.CancelledError";
    explicit CancelledError(std::string message = "Deferred was cancelled");
};

/// What `addTimeout` turns the CancelledError of a timed-out Deferred into.
class TimeoutError : public ErrorType<TimeoutError, Error> {
public:
    static constexpr const char* typeName = "defer.TimeoutError";
    explicit TimeoutError(std::string message = "Deferred timed out");
};

/// A DeferredList with fireOnOneErrback (and gatherResults) fails with this:
/// `subFailure` is the member's failure, `index` its position in the list.
/// Read it with `f.value<defer::FirstError>()` (works without exceptions).
class FirstError : public ErrorType<FirstError, Error> {
public:
    static constexpr const char* typeName = "defer.FirstError";
    FirstError(Failure failure, std::size_t failedIndex);
    /// The failing member's Failure.
    Failure subFailure;
    /// The failing member's position in the list.
    std::size_t index;
};

}  // namespace defer

/// A value or a Failure: what a callback returns to fail without throwing,
/// what `addBoth` callbacks receive, what `asResult(d)` gives a coroutine.
/// `Result<void>` holds nothing or a Failure.
template <class T>
class Result {
public:
    using value_type = T;
    using Stored = detail::Stored<T>;
    /// A success holding a default value (for `Result<void>`: plain success).
    Result() : value_(std::in_place) {}
    Result(Stored value) : value_(std::move(value)) {}  // NOLINT: implicit on purpose
    Result(Failure failure) : failure_(std::move(failure)) {}  // NOLINT
    Result(const Result&) = default;
    Result(Result&&) = default;
    /// Copy or move assignment. The copy is made before anything changes,
    /// and the new state is engaged before the old one is dropped: a copy
    /// or move that throws leaves the Result as it was (holding a value
    /// or a Failure, never neither).
    Result& operator=(Result other) noexcept(std::is_nothrow_move_constructible<Stored>::value &&
                                             std::is_nothrow_move_assignable<Stored>::value) {
        if (other.ok()) {
            value_ = std::move(other.value_);
            failure_.reset();
        } else {
            failure_ = std::move(other.failure_);
            value_.reset();
        }
        return *this;
    }

    /// Holds a value (for Result<void>: a success).
    bool ok() const { return value_.has_value(); }
    /// Holds a Failure.
    bool failed() const { return !ok(); }
    /// Same as ok().
    explicit operator bool() const { return ok(); }
    /// The value; on a failure this raises it (Failure::raiseException).
    Stored& value() {
        if (!ok()) failure().raiseException();
        return *value_;
    }
    const Stored& value() const {
        if (!ok()) failure().raiseException();
        return *value_;
    }
    /// The failure; only meaningful when failed().
    Failure& failure() { return *failure_; }
    const Failure& failure() const { return *failure_; }

private:
    // Exactly one is engaged. Two optionals rather than a std::variant: the
    // variant's machinery, instantiated for every T, was a fifth of what a
    // new Deferred<T> cost to compile; optional<Failure> is shared by all.
    std::optional<Stored> value_;
    std::optional<Failure> failure_;
};

namespace detail {

class DeferredBase;
using DeferredPtr = std::shared_ptr<DeferredBase>;

/// The untyped part of a Deferred: firing state, pause count, cancellation,
/// and the run loop. Only touched on the thread that owns the Deferred.
class DeferredBase : public std::enable_shared_from_this<DeferredBase> {
public:
    DeferredBase() = default;
    DeferredBase(const DeferredBase&) = delete;
    DeferredBase& operator=(const DeferredBase&) = delete;
    virtual ~DeferredBase() = default;

    bool called = false;                 // callback/errback happened
    bool running = false;                // on a run loop's stack right now
    bool suppressAlreadyCalled = false;  // cancelled without canceller: ignore the next fire
    int paused = 0;                      // user pauses + waiting on an inner Deferred
    int userPaused = 0;                  // the pause() calls not yet undone
    std::weak_ptr<DeferredBase> waitingOn;  // the inner Deferred a callback returned
    std::function<void()> canceller;
    /// A type-changed Deferred not fed yet: the Deferred whose chain feeds
    /// it. In Twisted the two are one Deferred, so its cancel() is the
    /// feeder's (which may be fired already and waiting on an inner one).
    std::weak_ptr<DeferredBase> feeder;
    /// cancel() only calls the canceller, on every cancel() while unfired,
    /// and never errbacks by itself: a DeferredList cancels its members and
    /// fires from their results (Twisted's DeferredList.cancel).
    bool cancellerOnly = false;
    /// The last cancel() pass that went on from here to another Deferred
    /// (an inner or a feeder): going on once per pass ends cycles.
    std::uint64_t forwardedIn = 0;

    /// One link of the chain. It runs on this Deferred (a DeferredState<T>
    /// its own code knows the T of) and returns a Deferred the loop must run
    /// first, or null. Untyped on purpose: every Deferred<T> shares this
    /// vector, the loop and the teardown, so a new T costs its compiler only
    /// its result type and its callbacks.
    using Step = std::function<DeferredPtr(DeferredBase&)>;
    std::vector<Step> steps;
    std::size_t nextStep = 0;  // the index of the next step to run

    /// Runs the chain's pairs until it is exhausted or paused. Returns a
    /// Deferred the loop must run first (then this one again), or null.
    DeferredPtr advance();
    virtual void errbackCancelled() = 0;
    /// Replaces the result with `f`: a step threw outside a callback (the
    /// copy or move of a value whose copy throws), and the chain goes on
    /// with the failure as if a callback had thrown it.
    virtual void failWith(Failure f) = 0;

    /// Appends a step (running it now if the chain is fired and idle) and
    /// returns its index in `steps`, which holds until it runs: steps are
    /// cleared only once all have run.
    std::size_t addStep(Step step);
    /// Turns the step at `index`, not run yet, into a pass-through: its
    /// owner is gone (the coroutine frame of a DeferredAwaiter).
    void dropStep(std::size_t index);
    /// Destroys the pending steps without recursion: a step may own the
    /// last reference to another Deferred whose steps own the next... (a
    /// nest of 10,000 unfired Deferreds). Nested destructors hand their
    /// steps to the outermost one, which destroys them in a loop.
    void destroySteps();

    /// Twisted's cancel(): the canceller (or "suppress the next fire"), then
    /// CancelledError if still unfired; a fired Deferred waiting on an inner
    /// one cancels that one instead.
    void cancel();
    /// cancel()'s work for this one Deferred, in the outermost cancel()'s
    /// `pass` (cancel() bounds the recursion).
    void cancelHere(std::uint64_t pass);

    void pause();
    /// Undoes a user pause(); an extra unpause() is ignored, so it cannot
    /// release the wait on a Deferred returned by a callback.
    void unpause();

    /// The loop (Twisted's `_runCallbacks`): an explicit stack instead of
    /// recursion, so a chain finishing an outer Deferred that finishes an
    /// outer one... runs in constant C++ stack depth.
    static void run(DeferredPtr start);
};

Failure consumedFailure();
inline bool isConsumedMarker(const Failure& f) { return f.check("ResultConsumed"); }

/// One Deferred's chain and result.
template <class T>
class DeferredState final : public DeferredBase {
public:
    Result<T> result{Failure()};
    bool consumed = false;  // the result moved on: nothing to report

    ~DeferredState() override {
        if (called && !consumed && result.failed())
            log(LogLevel::critical, "Unhandled error in Deferred: " + result.failure().str());
        destroySteps();
    }

    /// DeferredBase::addStep for a step written against this state's type.
    template <class F>
    std::size_t addStep(F f) {
        return DeferredBase::addStep(typed(std::move(f)));
    }
    /// `f(DeferredState&)` as an untyped Step.
    template <class F>
    static Step typed(F f) {
        return [f = std::move(f)](DeferredBase& b) mutable -> DeferredPtr { return f(static_cast<DeferredState&>(b)); };
    }

    void errbackCancelled() override { fire(Result<T>(Failure(defer::CancelledError()))); }
    void failWith(Failure f) override { setResult(Result<T>(std::move(f))); }

    std::shared_ptr<DeferredState> self() { return std::static_pointer_cast<DeferredState>(shared_from_this()); }

    /// Stores a result. The "ResultConsumed" marker stays handled as it
    /// passes on down the chain (e.g. through a pass-through half of a pair
    /// added after the result moved on): only a real failure is reported.
    void setResult(Result<T>&& r) {
        result = std::move(r);
        consumed = result.failed() && isConsumedMarker(result.failure());
    }
    /// Moves the result out and leaves what Twisted leaves (None): an
    /// empty value, T{}, on the success track; for a T that cannot be
    /// default-constructed, the handled "ResultConsumed" marker.
    Result<T> take() {
        Result<T> r = std::move(result);
        if constexpr (std::is_default_constructible<Stored<T>>::value)
            result = Result<T>();
        else
            result = consumedFailure();
        consumed = true;
        return r;
    }
    /// callback()/errback(): AlreadyCalledError on a second fire.
    void fire(Result<T>&& r) {
        if (called) {
            if (suppressAlreadyCalled) {
                suppressAlreadyCalled = false;
                return;
            }
            raise<defer::AlreadyCalledError>();
            return;
        }
        setResult(std::move(r));  // first: a T whose move throws leaves it unfired
        called = true;
        canceller = nullptr;
        if (const auto* tracer = activeTracer(); tracer && *tracer)
            emitTrace(tracer, result.ok() ? std::string("  Deferred fired with a value")
                                          : "  Deferred fired with a failure: " + result.failure().str());
        run(shared_from_this());
    }
    /// Fires without running: the caller (a step) returns it to the loop.
    DeferredPtr prime(Result<T>&& r) {
        if (called) return nullptr;
        setResult(std::move(r));
        called = true;
        canceller = nullptr;
        return shared_from_this();
    }
};

/// Reaches a handle's state (the handle class befriends it).
struct DeferredAccess {
    template <class T>
    static const std::shared_ptr<DeferredState<T>>& state(const Deferred<T>& d) {
        return d.s_;
    }
};
template <class T>
const std::shared_ptr<DeferredState<T>>& stateOf(const Deferred<T>& d) {
    return DeferredAccess::state(d);
}

/// A half of a pair that passes the result through.
struct Pass {};

template <class U>
DeferredPtr settle(DeferredState<U>& s, Result<U>&& r) {
    s.setResult(std::move(r));
    return nullptr;
}

/// A callback returned `inner`: take its result now if it has one,
/// otherwise pause `s` until `inner` finishes its chain.
template <class U>
DeferredPtr settleDeferred(DeferredState<U>& s, const std::shared_ptr<DeferredState<U>>& inner) {
    if (inner.get() == &s)
        return settle(s, Result<U>(Failure(error::RuntimeError("a callback returned the Deferred it was attached to"))));
    if (inner->called && !inner->running && inner->paused == 0 && inner->nextStep == inner->steps.size())
        return settle(s, inner->take());
    ++s.paused;
    s.waitingOn = inner;
    // No result until `inner` gives one (the failure an errback got has moved
    // into it): nothing to report if this Deferred is dropped meanwhile.
    s.setResult(Result<U>(Failure("ResultConsumed", "waiting for the Deferred a callback returned")));
    std::shared_ptr<DeferredState<U>> parent = s.self();
    inner->steps.push_back(DeferredState<U>::typed([parent](DeferredState<U>& me) -> DeferredPtr {
#if REACTOR_HAS_EXCEPTIONS
        try {
            parent->setResult(me.take());
        } catch (...) {  // a value whose copy throws: the outer chain gets the failure
            parent->failWith(Failure::current());
        }
#else
        parent->setResult(me.take());
#endif
        parent->waitingOn.reset();
        return --parent->paused == 0 ? DeferredPtr(parent) : nullptr;
    }));
    return inner->called && !inner->running ? DeferredPtr(inner) : nullptr;
}

template <class U, class R>
DeferredPtr settleReturn(DeferredState<U>& s, R&& r) {
    if constexpr (IsDeferred<std::decay_t<R>>::value)
        return settleDeferred(s, stateOf(r));
    else
        return settle(s, Result<U>(std::forward<R>(r)));
}

/// chainDeferred's step: `target` gets `s`'s result, and `s` goes on with
/// the empty value take() leaves. The loop runs `target`'s chain (no
/// recursion). A target fired already is AlreadyCalledError on `s`'s chain,
/// unless a cancel() without canceller said to ignore its next fire.
template <class T>
DeferredPtr forwardTo(DeferredState<T>& s, DeferredState<T>& target) {
#if REACTOR_HAS_EXCEPTIONS
    if (!target.called) {
        try {
            return target.prime(s.take());
        } catch (...) {  // a value whose copy throws: the target gets the failure
            return target.prime(Result<T>(Failure::current()));
        }
    }
#else
    if (!target.called) return target.prime(s.take());
#endif
    if (target.suppressAlreadyCalled) {
        target.suppressAlreadyCalled = false;
        s.take();
    } else {
        s.setResult(Result<T>(Failure(defer::AlreadyCalledError())));
    }
    return nullptr;
}

template <class F, class A>
decltype(auto) callWith(F& f, A&& a) {
    if constexpr (std::is_same<std::decay_t<A>, Unit>::value)
        return f();
    else
        return f(std::forward<A>(a));
}

/// Calls a user callback and stores what it returns (or throws) in `s`.
template <class U, class F, class A>
DeferredPtr invokeInto(DeferredState<U>& s, F& f, A&& a) {
#if REACTOR_HAS_EXCEPTIONS
    try {
#endif
        using R = decltype(callWith(f, std::forward<A>(a)));
        if constexpr (std::is_void<R>::value) {
            callWith(f, std::forward<A>(a));
            return settle(s, Result<U>());
        } else {
            return settleReturn(s, callWith(f, std::forward<A>(a)));
        }
#if REACTOR_HAS_EXCEPTIONS
    } catch (...) {
        return settle(s, Result<U>(Failure::current()));
    }
#endif
}

/// Runs one (callback, errback) pair on `r`, storing the outcome in `target`.
template <class U, class T, class CB, class EB>
DeferredPtr runPair(DeferredState<U>& target, Result<T>&& r, CB& cb, EB& eb) {
    if (r.ok()) {
        if constexpr (std::is_same<CB, Pass>::value)
            return settle(target, std::move(r));
        else
            return invokeInto(target, cb, std::move(r.value()));
    }
    if constexpr (std::is_same<EB, Pass>::value)
        return settle(target, Result<U>(std::move(r.failure())));
    else
        return invokeInto(target, eb, std::move(r.failure()));
}

/// The result type of calling a callback of a Deferred<T>.
template <class F, class T>
struct CallbackReturn {
    static_assert(std::is_invocable<F&, T&&>::value, "a callback of Deferred<T> must be callable with a T");
    using type = std::decay_t<std::invoke_result_t<F&, T&&>>;
};
template <class F>
struct CallbackReturn<F, void> {
    static_assert(std::is_invocable<F&>::value, "a callback of Deferred<void> takes no arguments");
    using type = std::decay_t<std::invoke_result_t<F&>>;
};

/// What type a callback returning `R` gives the chain of a Deferred<T>.
template <class R, class T, bool = IsDeferred<R>::value>
struct Unwrap {
    using type = R;
};
template <class T>
struct Unwrap<Failure, T, false> {
    using type = T;
};
template <class V, class T>
struct Unwrap<Result<V>, T, false> {
    using type = V;
};
template <class R, class T>
struct Unwrap<R, T, true> {  // a Deferred<V> or a DeferredList (a Deferred<DeferredListResult<V>>)
    using type = DeferredValueOf<R>;
};

/// Whether a half returning `R` can feed a Deferred<U>.
template <class R, class U>
constexpr bool feeds() {
    if constexpr (std::is_void<R>::value)
        return std::is_void<U>::value;
    else if constexpr (IsDeferred<R>::value)
        return std::is_same<DeferredValueOf<R>, U>::value;
    else
        return std::is_convertible<R, Result<U>>::value;
}

std::string formatSeconds(double s);

}  // namespace detail

/// A result that will arrive later, with a chain of callbacks (Twisted's
/// Deferred). A handle: copies refer to the same Deferred. Single-threaded:
/// use it on the reactor thread (deferToThread brings results there).
template <class T>
class Deferred {
    static_assert(!detail::IsDeferred<T>::value,
                  "Deferred<Deferred<T>>: return the inner Deferred from a callback instead");
    static_assert(!detail::IsResult<T>::value && !std::is_same<T, Failure>::value,
                  "Deferred<Result<T>> / Deferred<Failure>: use Deferred<T> and errback");

public:
    using value_type = T;

    /// A new, unfired Deferred.
    Deferred() : s_(std::make_shared<detail::DeferredState<T>>()) {}
    /// With a canceller, called by cancel() while unfired; it may fire the
    /// Deferred itself (otherwise it errbacks with defer::CancelledError).
    explicit Deferred(std::function<void(Deferred&)> canceller) : Deferred() {
        std::weak_ptr<detail::DeferredState<T>> weak = s_;
        s_->canceller = [weak, c = std::move(canceller)] {
            if (auto s = weak.lock()) {
                Deferred d(std::move(s));
                c(d);
            }
        };
    }

    // ---- firing (the producer calls one of these, once) ----------------

    /// Fires the callback track with `value` and runs the chain now.
    /// A second fire is defer::AlreadyCalledError.
    template <class U = T, std::enable_if_t<!std::is_void<U>::value, int> = 0>
    void callback(detail::Stored<U> value) {
        s_->fire(Result<T>(std::move(value)));
    }
    template <class U = T, std::enable_if_t<std::is_void<U>::value, int> = 0>
    void callback() {
        s_->fire(Result<T>());
    }
    /// Fires the errback track with `failure`.
    void errback(Failure failure) { s_->fire(Result<T>(std::move(failure))); }
    /// Without an argument, inside a `catch` block: the exception being
    /// handled (as Twisted's Failure() captures the current exception);
    /// elsewhere (or without exceptions) an unknown Failure.
    void errback() {
#if REACTOR_HAS_EXCEPTIONS
        if (std::current_exception()) {
            s_->fire(Result<T>(Failure::current()));
            return;
        }
#endif
        s_->fire(Result<T>(Failure()));
    }

    // ---- the chain (the consumer adds these) -----------------------------

    /// Adds ONE pair: `cb` runs on a value, `eb` on a failure; `eb` never
    /// sees what `cb` throws or returns (use addCallback(cb).addErrback(eb)
    /// for that). `cb` takes the value (nothing for Deferred<void>) and
    /// returns a value, nothing, a Failure, a Result<U> or a Deferred<U>;
    /// `eb` takes a Failure and must produce the same type as `cb`.
    /// Returns this Deferred, or a new Deferred<U> if `cb` changes the type.
    template <class CB, class EB>
    auto addCallbacks(CB cb, EB eb) {
        using R1 = typename detail::CallbackReturn<CB, T>::type;
        using U = typename detail::Unwrap<R1, T>::type;
        static_assert(std::is_invocable<EB&, Failure&&>::value, "an errback takes a Failure");
        using R2 = std::decay_t<std::invoke_result_t<EB&, Failure&&>>;
        static_assert(detail::feeds<R2, U>(),
                      "addCallbacks: the errback must return what the callback gives (a U, Result<U>, "
                      "Failure or Deferred<U>; nothing for void)");
        return chain<U>(std::move(cb), std::move(eb));
    }
    /// Adds (cb, pass-through). Returns this Deferred, or a Deferred<U> if
    /// `cb` returns another type U (the result then moves to it).
    template <class CB>
    auto addCallback(CB cb) {
        using R1 = typename detail::CallbackReturn<CB, T>::type;
        using U = typename detail::Unwrap<R1, T>::type;
        return chain<U>(std::move(cb), detail::Pass{});
    }
    /// Adds (pass-through, eb). `eb(Failure)` returns a T (recovers), a
    /// Failure (fails on), a Result<T> or a Deferred<T>, and this Deferred
    /// is returned. An `eb` that returns nothing (Twisted's
    /// `addErrback(log.err)`: it only logs) recovers with "no value": on a
    /// Deferred<void> or Deferred<std::optional<X>> that is nothing or
    /// std::nullopt on the same Deferred; on any other Deferred<T> the call
    /// returns a new Deferred<std::optional<T>> fed by this one, holding the
    /// value or, after `eb` ran, std::nullopt.
    template <class EB>
    auto addErrback(EB eb) {
        static_assert(std::is_invocable<EB&, Failure&&>::value, "an errback takes a Failure");
        using R2 = std::decay_t<std::invoke_result_t<EB&, Failure&&>>;
        if constexpr (std::is_void<R2>::value && detail::IsOptional<T>::value) {
            return chain<T>(detail::Pass{}, [eb = std::move(eb)](Failure f) mutable -> T {
                eb(std::move(f));
                return std::nullopt;
            });
        } else if constexpr (std::is_void<R2>::value && !std::is_void<T>::value) {
            using O = std::optional<T>;
            return chain<O>([](T v) { return O(std::move(v)); }, [eb = std::move(eb)](Failure f) mutable -> O {
                eb(std::move(f));
                return std::nullopt;
            });
        } else {
            static_assert(detail::feeds<R2, T>(),
                          "addErrback on Deferred<T>: the errback must return T, Result<T>, Failure, "
                          "Deferred<T> or nothing");
            return chain<T>(detail::Pass{}, std::move(eb));
        }
    }
    /// Adds (f, f): `f(Result<T>)` sees either track and returns like a callback.
    template <class F>
    auto addBoth(F f) {
        static_assert(std::is_invocable<F&, Result<T>&&>::value, "addBoth: the function takes a Result<T>");
        using R = std::decay_t<std::invoke_result_t<F&, Result<T>&&>>;
        using U = typename detail::Unwrap<R, T>::type;
        return chainBoth<U>(std::move(f));
    }
    /// Twisted's chainDeferred: when the chain gets here, `other` is fired
    /// with the result (value or failure), and this chain goes on with the
    /// empty value T{} (Twisted: None). Returns this Deferred. Caveats, as
    /// in Twisted: nobody else may fire `other` (if it has fired, this chain
    /// gets defer::AlreadyCalledError instead), and cancelling `other` does
    /// not cancel this one (cancelling this one reaches `other` as the
    /// CancelledError). Unlike Twisted, a long line of chained Deferreds
    /// runs without growing the stack.
    Deferred chainDeferred(Deferred other) {
        s_->addStep([target = other.s_](detail::DeferredState<T>& s) -> detail::DeferredPtr {
            return detail::forwardTo(s, *target);
        });
        return *this;
    }

    // ---- flow control -------------------------------------------------------

    /// Stops the chain from running until unpause() (a counter).
    void pause() { s_->pause(); }
    /// Undoes one pause(); at zero a fired chain runs on at once. Extra calls are ignored.
    void unpause() { s_->unpause(); }
    /// Twisted's cancel(): unfired → canceller (or "ignore the next fire"),
    /// then CancelledError if still unfired; waiting on a Deferred returned
    /// by a callback → cancels that one; otherwise nothing. A Deferred made
    /// by a type-changing callback, before the result reaches it, cancels
    /// the Deferred that feeds it (in Twisted they are one).
    void cancel() { s_->cancel(); }
    /// Cancels this Deferred if it has not fired after `seconds` on `clock`
    /// and turns that CancelledError into defer::TimeoutError. Covers the
    /// callbacks added before this call. The timer does not keep the
    /// Deferred alive; it is cancelled when the Deferred fires or is
    /// dropped unfired.
    Deferred addTimeout(double seconds, IReactorTime& clock) {
        auto timedOut = std::make_shared<bool>(false);
        std::weak_ptr<detail::DeferredState<T>> weak = s_;
        DelayedCall call = clock.callLater(seconds, [weak, timedOut] {
            if (auto s = weak.lock()) {
                *timedOut = true;
                s->cancel();
            }
        });
        // Owned by the step: if the Deferred is dropped unfired, the step
        // dies with it and so does the timer.
        struct CancelOnDrop {
            DelayedCall call;
            ~CancelOnDrop() {
                if (call.active()) call.cancel();
            }
        };
        auto timer = std::make_shared<CancelOnDrop>();
        timer->call = std::move(call);
        return addBoth([timer, timedOut, seconds](Result<T> r) mutable -> Result<T> {
            if (timer->call.active()) timer->call.cancel();
            if (*timedOut && r.failed() && r.failure().template check<defer::CancelledError>())
                return Failure(defer::TimeoutError("Deferred timed out after " + detail::formatSeconds(seconds) + " seconds"));
            return r;
        });
    }

    /// callback() or errback() has happened (the chain may still be paused).
    bool called() const { return s_->called; }
    /// Paused by pause() or waiting for a Deferred a callback returned.
    bool paused() const { return s_->paused > 0; }

    /// Both handles share one chain (copies of a Deferred do).
    friend bool operator==(const Deferred& a, const Deferred& b) { return a.s_ == b.s_; }
    /// The handles are different Deferreds.
    friend bool operator!=(const Deferred& a, const Deferred& b) { return a.s_ != b.s_; }

#if defined(REACTOR_HAS_COROUTINES)
    using promise_type = detail::DeferredPromise<T>;
    /// `co_await d` in a coroutine: the value, or the failure thrown.
    auto operator co_await() const { return detail::DeferredAwaiter<T, false>{s_}; }
#endif

private:
    friend struct detail::DeferredAccess;
    template <class>
    friend class Deferred;
    explicit Deferred(std::shared_ptr<detail::DeferredState<T>> s) : s_(std::move(s)) {}

    /// Same type: append to this chain. New type: a Deferred<U> fed by it.
    template <class U, class Fn>
    Deferred<U> append(Fn fn) {
        if constexpr (std::is_same<U, T>::value) {
            s_->addStep([fn = std::move(fn)](detail::DeferredState<T>& s) mutable -> detail::DeferredPtr {
                Result<T> r = std::move(s.result);
                return fn(s, std::move(r));
            });
            return *this;
        } else {
            Deferred<U> out;
            std::shared_ptr<detail::DeferredState<U>> target = out.s_;
            target->feeder = s_;  // until fed, cancelling the branch cancels its source
            s_->addStep([target, fn = std::move(fn)](detail::DeferredState<T>& s) mutable -> detail::DeferredPtr {
                if (target->called) {  // fired by hand meanwhile (misuse): drop
                    s.take();
                    return nullptr;
                }
                target->called = true;
                target->feeder.reset();
                // Callbacks added to the branch while `fn` runs wait for its
                // result, as on one Deferred in Twisted: the loop runs them
                // once `fn` has stored it.
                target->running = true;
                detail::DeferredPtr first;
#if REACTOR_HAS_EXCEPTIONS
                try {
                    first = fn(*target, s.take());
                } catch (...) {  // taking or passing on a value whose copy throws
                    target->failWith(Failure::current());
                }
#else
                first = fn(*target, s.take());
#endif
                target->running = false;
                if (first) return first;
                return target->paused == 0 ? detail::DeferredPtr(target) : nullptr;
            });
            return out;
        }
    }
    template <class U, class CB, class EB>
    Deferred<U> chain(CB cb, EB eb) {
        if constexpr (std::is_same<U, T>::value && std::is_same<CB, detail::Pass>::value) {
            // addErrback: skip the value track without moving the result.
            s_->addStep([eb = std::move(eb)](detail::DeferredState<T>& s) mutable -> detail::DeferredPtr {
                if (s.result.ok()) return nullptr;
                Failure f = std::move(s.result.failure());
                return detail::invokeInto(s, eb, std::move(f));
            });
            return *this;
        } else {
            return append<U>([cb = std::move(cb), eb = std::move(eb)](detail::DeferredState<U>& target,
                                                                      Result<T>&& r) mutable {
                return detail::runPair(target, std::move(r), cb, eb);
            });
        }
    }
    template <class U, class F>
    Deferred<U> chainBoth(F f) {
        return append<U>([f = std::move(f)](detail::DeferredState<U>& target, Result<T>&& r) mutable {
            return detail::invokeInto(target, f, std::move(r));
        });
    }

    std::shared_ptr<detail::DeferredState<T>> s_;
};

/// An already-fired Deferred (Twisted's succeed).
template <class V>
Deferred<std::decay_t<V>> succeed(V&& value) {
    Deferred<std::decay_t<V>> d;
    d.callback(std::forward<V>(value));
    return d;
}
Deferred<void> succeed();
/// An already-failed Deferred<T> (Twisted's fail).
template <class T = void>
Deferred<T> fail(Failure failure) {
    Deferred<T> d;
    d.errback(std::move(failure));
    return d;
}

/// Calls `f()` now and wraps what it gives in a Deferred: a Deferred as is,
/// a value or nothing → succeed, a Failure or a throw → fail.
template <class F>
auto maybeDeferred(F&& f) {
    using R = std::decay_t<std::invoke_result_t<F&>>;
    using U = typename detail::Unwrap<R, void>::type;
    if constexpr (detail::IsDeferred<R>::value) {
#if REACTOR_HAS_EXCEPTIONS
        try {
            return Deferred<U>(f());
        } catch (...) {
            return fail<U>(Failure::current());
        }
#else
        return Deferred<U>(f());
#endif
    } else {
        Deferred<U> d;
        const auto& s = detail::stateOf(d);
        s->called = true;
        detail::invokeInto(*s, f, detail::Unit{});
        return d;
    }
}

// ---- DeferredList and gatherResults -----------------------------------------

/// What a DeferredList<T> fires with: one (success, value-or-Failure) pair
/// per input Deferred, in input order. With fireOnOneCallback, `index` is
/// the position of the success that fired the list (the pairs of members
/// that had not fired yet hold a "NotFired" failure); otherwise npos.
template <class T>
struct DeferredListResult : std::vector<std::pair<bool, Result<T>>> {
    /// `index` when no single success fired the list.
    static constexpr std::size_t npos = static_cast<std::size_t>(-1);
    /// With fireOnOneCallback, the position of the success that fired the list; else npos.
    std::size_t index = npos;
};

/// Twisted's DeferredList: a Deferred that fires when every member has
/// (or on the first success / failure with the flags). Members' failures
/// stay in the members unless `consumeErrors` (then they are handled).
/// An empty list fires at once, except with fireOnOneCallback (never).
/// cancel() cancels every member while the list is unfired and nothing
/// else: the list fires from the members' results, as they come.
template <class T>
class DeferredList : public Deferred<DeferredListResult<T>> {
public:
    /// Watches `members` (the handles stay usable); `fireOnOneCallback` fires
    /// with the first success, `fireOnOneErrback` fails with defer::FirstError
    /// on the first failure, `consumeErrors` takes members' failures (so they
    /// are not reported as unhandled).
    explicit DeferredList(std::vector<Deferred<T>> members, bool fireOnOneCallback = false,
                          bool fireOnOneErrback = false, bool consumeErrors = false) {
        using ListState = detail::DeferredState<DeferredListResult<T>>;
        std::shared_ptr<ListState> self = detail::stateOf<DeferredListResult<T>>(*this);
        std::vector<std::weak_ptr<detail::DeferredState<T>>> weak;
        for (auto& m : members) weak.push_back(detail::stateOf(m));
        // Twisted's DeferredList.cancel: cancel every member, and let the
        // list fire from what they give (a member may catch its
        // cancellation and finish later with a real result).
        self->cancellerOnly = true;
        self->canceller = [weak] {
            for (auto& w : weak)
                if (auto m = w.lock())
                    detail::runGuarded("a DeferredList member's canceller", [&m] { m->cancel(); });
        };
        struct Shared {
            DeferredListResult<T> results;
            std::size_t finished = 0;
        };
        auto shared = std::make_shared<Shared>();
        const std::size_t n = members.size();
        for (std::size_t i = 0; i < n; ++i)
            shared->results.emplace_back(false, Result<T>(Failure("NotFired", "this Deferred had not fired")));
        if (n == 0) {
            if (!fireOnOneCallback) this->callback(DeferredListResult<T>{});
            return;
        }
        for (std::size_t i = 0; i < n; ++i) {
            detail::stateOf(members[i])->addStep([self, shared, i, n, fireOnOneCallback, fireOnOneErrback,
                                                  consumeErrors](detail::DeferredState<T>& m) -> detail::DeferredPtr {
                Result<T> r = copyOrTake(m, consumeErrors);
                if (self->called) return nullptr;  // fired already (results moved on)
                const bool ok = r.ok();
                Failure failure = ok ? Failure() : r.failure();
                shared->results[i] = {ok, std::move(r)};
                ++shared->finished;
                if (ok && fireOnOneCallback) {
                    shared->results.index = i;
                    return self->prime(std::move(shared->results));
                }
                if (!ok && fireOnOneErrback)
                    return self->prime(Result<DeferredListResult<T>>(Failure(defer::FirstError(failure, i))));
                if (shared->finished == n) return self->prime(std::move(shared->results));
                return nullptr;
            });
        }
    }

private:
    /// The member keeps its value if it can be copied (else it moves on);
    /// its failure stays unless consumeErrors.
    static Result<T> copyOrTake(detail::DeferredState<T>& m, bool consumeErrors) {
        if (m.result.failed()) {
            if (consumeErrors) return m.take();
            return Result<T>(m.result.failure());
        }
        if constexpr (std::is_copy_constructible<detail::Stored<T>>::value)
            return m.result;
        else
            return m.take();
    }
};

namespace detail {
template <class T>
struct GatherType {
    using type = std::vector<T>;
};
template <>
struct GatherType<void> {
    using type = void;
};
}  // namespace detail

/// Every member's value in input order (a Deferred<void> for void members);
/// the first failure fails it as defer::FirstError (with the index).
template <class T>
Deferred<typename detail::GatherType<T>::type> gatherResults(std::vector<Deferred<T>> members,
                                                             bool consumeErrors = false) {
    DeferredList<T> list(std::move(members), false, true, consumeErrors);
    if constexpr (std::is_void<T>::value) {
        return list.addCallback([](DeferredListResult<T>) {});
    } else {
        return list.addCallback([](DeferredListResult<T> results) {
            std::vector<T> values;
            values.reserve(results.size());
            for (auto& entry : results) values.push_back(std::move(entry.second.value()));
            return values;
        });
    }
}

// ---- C++20: coroutines (Twisted's inlineCallbacks / ensureDeferred) ---------

#if defined(REACTOR_HAS_COROUTINES)
namespace detail {

/// Resumes coroutines through a trampoline: a coroutine that finishes
/// fires its Deferred, whose chain resumes the coroutine awaiting it, which
/// finishes... Resumed one inside the other, 10,000 such levels would
/// overflow the stack; instead a resumption that happens while another is
/// running on this thread is queued and run by the outermost one once the
/// running coroutine suspends or ends. Unlike Twisted's inlineCallbacks
/// (deliberately): a coroutine that fires a Deferred another coroutine
/// awaits sees that one resume only after it suspends itself or ends; the
/// rest of the fired Deferred's chain runs at once as usual.
inline std::vector<std::coroutine_handle<>>*& resumeQueue() {
    static thread_local std::vector<std::coroutine_handle<>>* queue = nullptr;  // a pointer: no thread-exit destructor
    return queue;
}
inline void resumeCoroutine(std::coroutine_handle<> h) {
    std::vector<std::coroutine_handle<>>*& active = resumeQueue();
    if (active) {
        active->push_back(h);
        return;
    }
    std::vector<std::coroutine_handle<>> queue;
    struct Reset {
        std::vector<std::coroutine_handle<>>*& active;
        ~Reset() { active = nullptr; }
    } reset{active};
    active = &queue;
    // A coroutine's own errors end in its Deferred; should anything still
    // escape resume(), it is logged and the coroutines queued behind still
    // run.
    runGuarded("a coroutine", [h] { h.resume(); });
    for (std::size_t i = 0; i < queue.size(); ++i) {
        std::coroutine_handle<> next = queue[i];  // resume() may grow the queue
        runGuarded("a coroutine", [next] { next.resume(); });
    }
}

/// Forgets a queued resumption of `h`, whose frame is being destroyed.
inline void unqueueResume(std::coroutine_handle<> h) {
    if (std::vector<std::coroutine_handle<>>* queue = resumeQueue())
        for (std::coroutine_handle<>& queued : *queue)
            if (queued == h) queued = std::noop_coroutine();
}

/// The part of a Deferred coroutine's promise that its awaiters fill in:
/// the Deferred it is suspended on, which cancelling the coroutine's own
/// Deferred cancels (Twisted's inlineCallbacks does the same).
struct CoroutineAwaiting {
    std::weak_ptr<DeferredBase> awaiting;
    bool awaitingAsResult = false;  // through asResult(): a failure needs no exception
    bool queued = false;            // what it awaited fired; the trampoline has yet to resume it
    bool cancelPending = false;     // cancelled while queued: cancel what it awaits next
    /// Without exceptions, for a cancel a plain co_await cannot receive:
    /// fails the coroutine's Deferred with CancelledError now and ignores
    /// what the coroutine returns later.
    virtual void failCancelled() = 0;

protected:
    ~CoroutineAwaiting() = default;
};

/// `co_await d` (AsResult = false: the value, failures thrown) or
/// `co_await asResult(d)` (a Result<T>, for -fno-exceptions code).
/// Lives in the awaiting coroutine's frame, which may be any coroutine
/// type; whoever owns that frame may destroy it while it is suspended
/// here, and then the destructor unhooks the frame from `s` (and from the
/// resume queue), so firing `s` later resumes nothing.
template <class T, bool AsResult>
struct DeferredAwaiter {
    std::shared_ptr<DeferredState<T>> s;
    Result<T> result{Failure()};
    bool inSuspend = false;
    bool ready = false;
    bool hooked = false;        // our step is on s's chain and has not run
    bool resumeQueued = false;  // s fired; the trampoline has yet to resume us
    std::size_t step = 0;       // the step's index in s->steps
    std::coroutine_handle<> frame;

    explicit DeferredAwaiter(std::shared_ptr<DeferredState<T>> state) : s(std::move(state)) {}
    DeferredAwaiter(const DeferredAwaiter&) = delete;  // our step points here
    DeferredAwaiter& operator=(const DeferredAwaiter&) = delete;
    ~DeferredAwaiter() {
        if (hooked) s->dropStep(step);  // the frame is destroyed while suspended here
        if (resumeQueued) unqueueResume(frame);
    }

    bool await_ready() const noexcept { return false; }
    CoroutineAwaiting* owner = nullptr;

    template <class Promise>
    bool await_suspend(std::coroutine_handle<Promise> h) {
        if constexpr (std::is_base_of<CoroutineAwaiting, Promise>::value) {
            owner = &h.promise();  // a Deferred coroutine: cancel() reaches `s`
            owner->awaiting = s;
            owner->awaitingAsResult = AsResult;
        }
        inSuspend = true;
        frame = h;
        CoroutineAwaiting* promise = owner;
        hooked = true;
        step = s->addStep([this, h, promise](DeferredState<T>& st) -> DeferredPtr {
            hooked = false;
            if (promise) promise->awaiting.reset();
            result = st.take();
            if (inSuspend) {
                ready = true;  // fired already: resume without suspending
            } else {
                if (promise) promise->queued = true;
                // Queued behind a running coroutine, or resumed now (then
                // this awaiter may be gone when resumeCoroutine returns).
                if (resumeQueue()) resumeQueued = true;
                resumeCoroutine(h);
            }
            return nullptr;
        });
        if (owner && owner->cancelPending && !ready) {
            // Cancelled between being resumed and suspending again: Twisted
            // resumes synchronously, so it would be waiting on this one.
            owner->cancelPending = false;
            if constexpr (AsResult || REACTOR_HAS_EXCEPTIONS)
                s->cancel();
            else
                owner->failCancelled();
        }
        inSuspend = false;
        return !ready;
    }
    auto await_resume() {
        resumeQueued = false;
        if (owner) owner->queued = false;
        if constexpr (AsResult) {
            return std::move(result);
        } else if constexpr (std::is_void<T>::value) {
            if (result.failed()) result.failure().raiseException();
        } else {
            return std::move(result.value());
        }
    }
};

template <class T>
struct DeferredPromiseBase : CoroutineAwaiting {
    Deferred<T> deferred;  // what the coroutine returns
    // What the coroutine's co_return fires: `deferred` until a cancel()
    // makes it wait for a fresh one (see cancelled()).
    std::shared_ptr<DeferredState<T>> target = stateOf(deferred);

    DeferredPromiseBase() { arm(target); }
    DeferredPromiseBase(const DeferredPromiseBase&) = delete;
    DeferredPromiseBase& operator=(const DeferredPromiseBase&) = delete;
    ~DeferredPromiseBase() {
        if (!target->called) target->canceller = nullptr;  // the frame is going: nothing to cancel
    }

    Deferred<T> get_return_object() { return deferred; }
    std::suspend_never initial_suspend() noexcept { return {}; }  // runs at once, like ensureDeferred
    std::suspend_never final_suspend() noexcept { return {}; }
    void unhandled_exception() {
#if REACTOR_HAS_EXCEPTIONS
        finish(Result<T>(Failure::current()));
#else
        std::abort();
#endif
    }
    /// Fires the coroutine's Deferred with its result. If someone fired it
    /// by hand meanwhile, the result is dropped with a log line: raising
    /// AlreadyCalledError here would escape the coroutine and leak its frame.
    void finish(Result<T>&& r) {
        if (target->called && !target->suppressAlreadyCalled) {
            log(LogLevel::error,
                "Unhandled error in a coroutine: defer.AlreadyCalledError: its Deferred was fired "
                "before it returned; the coroutine's result is dropped");
            return;
        }
        target->fire(std::move(r));
    }

    void failCancelled() override {
        std::shared_ptr<DeferredState<T>> t = target;
        t->fire(Result<T>(Failure(defer::CancelledError())));
        t->suppressAlreadyCalled = true;
    }

    void arm(const std::shared_ptr<DeferredState<T>>& d) {
        std::weak_ptr<DeferredState<T>> weak = d;
        d->canceller = [this, weak] {
            if (auto cancelledOne = weak.lock()) cancelled(*cancelledOne);
        };
    }
    /// Twisted's _cancellableInlineCallbacks: the cancelled Deferred now
    /// waits for a fresh one that the coroutine fires when it ends, and the
    /// Deferred the coroutine is suspended on is cancelled. Its
    /// CancelledError (or what its canceller fires instead) goes into the
    /// coroutine, and what the coroutine then returns or throws is the
    /// result, so a coroutine may catch the cancellation and clean up.
    void cancelled(DeferredState<T>& d) {
#if !REACTOR_HAS_EXCEPTIONS
        if (!awaitingAsResult && awaiting.lock()) {
            // A plain co_await cannot take a CancelledError without
            // exceptions (raising it would abort): d fails with it now, as
            // a Deferred without canceller, and the coroutine's own result
            // is ignored when it comes.
            d.suppressAlreadyCalled = true;
            return;
        }
#endif
        auto next = std::make_shared<DeferredState<T>>();
        arm(next);
        target = next;
        d.called = true;
        ++d.paused;  // as Twisted's handleCancel: cancelling d again meanwhile does nothing
        if (DeferredPtr inner = awaiting.lock())
            inner->cancel();
        else if (queued)
            cancelPending = true;
        --d.paused;
        // Takes next's result if the coroutine already ended, else waits for it.
        if (DeferredPtr more = settleDeferred(d, next)) DeferredBase::run(more);
        if (d.paused == 0) DeferredBase::run(d.self());
    }
};

template <class T>
struct DeferredPromise : DeferredPromiseBase<T> {
    /// `co_return value;`, `co_return failure;` or `co_return result;`.
    template <class V>
    void return_value(V&& v) {
        if constexpr (std::is_convertible<V, Result<T>>::value)
            this->finish(Result<T>(std::forward<V>(v)));
        else
            this->finish(Result<T>(T(std::forward<V>(v))));
    }
};
template <>
struct DeferredPromise<void> : DeferredPromiseBase<void> {
    void return_void() { this->finish(Result<void>()); }
};

}  // namespace detail

/// `co_await asResult(d)`: the Result<T> instead of a throw on failure.
template <class T>
detail::DeferredAwaiter<T, true> asResult(const Deferred<T>& d) {
    return detail::DeferredAwaiter<T, true>{detail::stateOf(d)};
}
#endif  // REACTOR_HAS_COROUTINES

// ============================================================================
// ==== 7. THREADS ====
// A small thread pool for blocking work (database calls, name lookups).
// Every callback still runs on the reactor thread: results come back with
// Reactor::callFromThread.
// ============================================================================

/// Runs jobs on up to `maxThreads` worker threads, started lazily. `stop()`
/// lets queued jobs finish, joins the workers, and leaves the pool reusable.
class ThreadPool {
public:
    /// At most `maxThreads` workers (0 counts as 1); none starts before the first job.
    explicit ThreadPool(std::size_t maxThreads = 10);
    ~ThreadPool();
    ThreadPool(const ThreadPool&) = delete;
    ThreadPool& operator=(const ThreadPool&) = delete;

    /// Queues `job`; thread-safe. A job that throws is logged (from its
    /// worker thread, see Logger) and dropped.
    void callInThread(std::function<void()> job);
    /// Twisted's adjustPoolsize(maxthreads=n); existing workers are kept.
    void setMaxThreads(std::size_t n);
    /// The current maximum number of workers. Thread-safe.
    std::size_t maxThreads() const;
    /// Jobs waiting for a worker (not counting the ones running).
    std::size_t queueDepth() const;
    /// Workers started and not yet joined by stop(). Thread-safe.
    std::size_t threadCount() const;
    /// Finishes the queued jobs, including those that jobs queue meanwhile,
    /// and joins every worker. Call from the owner's thread, not from a job.
    void stop();
    /// Destroys the jobs no worker has started (the running ones go on) and
    /// returns how many: the reactor does this to its name lookups when it
    /// stops, so that shutdown waits for no lookup that has not begun.
    std::size_t discardQueued();

private:
    // The queue, its lock and the workers, defined in section 15: a
    // separately compiled TU that uses the pool never parses <thread> or
    // <condition_variable>.
    struct State;
    detail::Owner<State> state_;
};

// ============================================================================
// ==== 8. REACTOR ====
// The event loop. One turn:
//
//     +--> wait in the poller (until an fd is ready, the next timer is due,
//     |    or another thread calls callFromThread)
//     |      |
//     |    dispatch ready descriptors (read, then write)
//     |      |
//     |    run due timers (calls scheduled meanwhile wait one turn)
//     |      |
//     |    run calls queued from other threads
//     |      |
//     +----- repeat until stop(), then fire the "shutdown" event
// ============================================================================

/// Identifies a trigger added with addSystemEventTrigger.
using TriggerId = std::uint64_t;

class Factory;

namespace detail {
/// What the reactor calls when a descriptor is ready: `events` is
/// evRead for a reader, evWrite for a writer. An interface rather than a
/// std::function so that a connection is its own handler (no allocation,
/// no 32-byte function object per direction).
class IoHandler {
public:
    virtual void onReady(short events) = 0;

protected:
    ~IoHandler() = default;
};
/// A readiness callback. Shared so that a callback that removes or replaces
/// itself keeps running on a live object until it returns (a connection
/// hands out aliasing pointers that share its own ownership).
using Handler = std::shared_ptr<IoHandler>;

/// A handler around a plain function (addReader/addWriter, ports, connectors).
Handler makeHandler(std::function<void()> f);

/// Where a trigger is in the three-phase event.
enum class Phase { before, during, after };

/// Something the reactor owns and closes at shutdown: a TCP connection, a
/// listening port, a connector (section 9). It may also use a Factory (a
/// reference the user keeps alive): linked into that factory's list of
/// users, so that a factory destroyed too early detaches them first.
class Owned {
public:
    Owned() = default;
    Owned(const Owned&) = delete;
    Owned& operator=(const Owned&) = delete;
    /// Subclasses call stopUsingFactory() first thing in their destructor,
    /// while they are still whole.
    virtual ~Owned() = default;
    /// Close now, with the usual callbacks: called by shutdown and disconnectAll.
    virtual void shutdownNow() = 0;
    /// Close now without calling any user code (no connectionLost, no
    /// factory callback): the reactor or the factory is being destroyed.
    virtual void abandon() = 0;
    /// An open connection (whose protocol would miss its connectionLost if abandoned).
    virtual bool openConnection() const { return false; }
    /// The descriptor it watches (os::invalidFd if none) and what it is, for
    /// dirty-reactor reports: "TCP connection to 127.0.0.1:5555 (Echo)".
    virtual os::Fd descriptor() const = 0;
    virtual std::string describe() const = 0;
    std::size_t ownedIndex = static_cast<std::size_t>(-1);

    /// Joins `f`'s list of users (a doubly linked list through the users:
    /// no allocation). A user is in at most one list.
    void useFactory(Factory& f);
    /// Leaves the list; idempotent.
    void stopUsingFactory();
    /// Still linked to a live factory (false once the factory is destroyed).
    bool usingFactory() const { return usedFactory_ != nullptr; }

private:
    friend class reactor::Factory;
    Factory* usedFactory_ = nullptr;
    Owned* prevUser_ = nullptr;
    Owned* nextUser_ = nullptr;
};
struct ReactorAccess;
}  // namespace detail

/// A transport endpoint address: Twisted's IPv4Address / IPv6Address
/// (type "TCP" or "UDP", host, port) and UNIXAddress (type "UNIX", the path
/// in `host`).
struct Address {
    /// The transport type: "TCP", "UDP" (a datagram's sender, a UDP port) or "UNIX".
    std::string type = "TCP";
    /// The IP literal, without brackets: "127.0.0.1", "::1". UNIX: the
    /// socket's path (Twisted's UNIXAddress.name); "" for an unnamed socket
    /// (a client's end); a leading '\0' for Linux's abstract namespace.
    std::string host;
    /// The port number (host byte order).
    std::uint16_t port = 0;
    /// An IPv6 address (Twisted's IPv6Address); str() brackets the host.
    bool ipv6 = false;
    /// "127.0.0.1:8000", "[::1]:8000" for IPv6; for UNIX the path,
    /// "@name" for an abstract name, "(unnamed)" for an unnamed socket.
    std::string str() const;
    /// All four fields are equal.
    friend bool operator==(const Address& a, const Address& b) {
        return a.type == b.type && a.host == b.host && a.port == b.port && a.ipv6 == b.ipv6;
    }
    /// A UNIX address (Twisted's UNIXAddress(path)).
    static Address unixSocket(std::string path) {
        Address a;
        a.type = "UNIX";
        a.host = std::move(path);
        return a;
    }
};

/// The process, user and group ids of a UNIX socket's peer
/// (ITransport::getPeerCredentials). `pid` is -1 where the system does not
/// report it (macOS, the BSDs).
struct PeerCredentials {
    long pid = -1;  ///< the peer's process id when it connected (or listened)
    long uid = -1;  ///< its effective user id
    long gid = -1;  ///< its effective group id
};

class Factory;
class ClientFactory;
class IConnector;
class ListeningPort;
class DatagramProtocol;
class IUDPTransport;
#if defined(REACTOR_WITH_OPENSSL)
namespace ssl {
class TLSOptions;
class ISSLTransport;
}  // namespace ssl
namespace detail {
struct EndpointDescription;
namespace tls {
struct Context;
class TlsConnection;
}  // namespace tls
}  // namespace detail
#endif

/// listenTCP's default accept-queue length: the system's maximum.
inline constexpr int defaultBacklog = detail::os::maxBacklog;

/// How listenTCP binds, beyond the port. An aggregate: fill in the fields you
/// need (`ListenOptions o; o.interface = "127.0.0.1";`), or in order
/// (`r.listenTCP(8000, f, {"127.0.0.1"})`).
struct ListenOptions {
    /// An IP literal to bind; "" = every IPv4 address, "::" = every IPv6
    /// address (and IPv4 too, where the system maps it). Twisted's name.
    std::string interface;
    /// The accept queue; the default, the system's maximum (SOMAXCONN),
    /// absorbs a burst of connects (Twisted's 50 overflows at ~50
    /// simultaneous connects and costs each extra client a 1 s SYN retry).
    int backlog = defaultBacklog;
    /// SO_REUSEPORT (Linux 3.9+, the BSDs): several sockets, in one process
    /// or several, listen on the same port and the kernel spreads new
    /// connections between them. One reactor per core, each with its own
    /// port on the same number, is how a server uses more than one core
    /// (examples/echo_server.cpp --threads). Every socket sharing the port
    /// must set it. Where the system lacks it, listening fails and says so.
    bool reusePort = false;
};

/// A descriptor as the system names it, what addReader/addWriter watch: an
/// int on POSIX, a SOCKET on Windows (where only sockets can be watched).
using Descriptor = detail::os::Fd;

/// The event loop (Twisted's reactor). Create as many as you like; nothing
/// is shared between two reactors. Not thread-safe except callFromThread.
class Reactor : public IReactorTime {
public:
    /// A stopped reactor, time zero now. REACTOR_TRACE set (and not "0") in the
    /// environment installs a tracer that writes to stderr. Throws
    /// error::RuntimeError if it cannot make its wake-up descriptor (out of
    /// descriptors, or one select() cannot watch); without exceptions that is
    /// logged and the reactor wakes every 10 ms to notice other threads.
    Reactor();
    /// Destroying is not shutting down: it calls none of your code. Open
    /// connections, ports and connection attempts are closed silently (no
    /// connectionLost, no clientConnection*, no stopFactory) and their
    /// protocols destroyed; pending timers, descriptor callbacks and calls
    /// from threads are destroyed uncalled (Asio's io_context does the same);
    /// the thread pools are stopped first (running jobs finish, their results
    /// are dropped). So factories and other state your callbacks use may be
    /// destroyed before the reactor. For connectionLost and stopFactory, end
    /// with stop() (or disconnectAll()) while everything is alive.
    REACTOR_INLINE ~Reactor();
    Reactor(const Reactor&) = delete;
    Reactor& operator=(const Reactor&) = delete;

    // ---- running ------------------------------------------------------

    /// Runs the loop until stop() (or crash()) and the shutdown event has
    /// completed. May be called again after it returns (unlike Twisted).
    /// With `installSignalHandlers`, SIGINT and SIGTERM call stop().
    void run(bool installSignalHandlers = false);
    /// Asks the loop to shut down: fires the "shutdown" event at the end of
    /// the current turn, then run() returns. Safe from any callback.
    void stop();
    /// Leaves run() at the end of this turn without the shutdown event.
    void crash();
    /// True from "during startup" until "during shutdown".
    bool running() const { return running_; }
    /// True from stop() until run() returns: the shutdown event's triggers,
    /// and the connectionLost and clientConnection* calls its closing of
    /// connections causes, can tell a shutdown from an outage.
    bool stopping() const { return stopRequested_ && inRun_; }
    /// One turn of the loop, waiting at most `timeout` seconds for events
    /// (0: don't wait). For embedding in a foreign loop. Not re-entrant.
    void iterate(double timeout = 0);

    /// Runs `f` when the reactor starts (now, if it is already running).
    TriggerId callWhenRunning(std::function<void()> f);
    /// Twisted's system event triggers: `phase` is "before", "during" or
    /// "after"; `eventType` is "startup", "shutdown" or your own name.
    /// Triggers persist across runs and run in the order they were added.
    TriggerId addSystemEventTrigger(std::string_view phase, std::string_view eventType,
                                    std::function<void()> f);
    /// A trigger that returns a Deferred (any `Deferred<T>`): the event
    /// waits until it fires, as in Twisted ("before" phase). A failure is
    /// left in that Deferred (logged as unhandled when it is dropped).
    template <class F, class R = std::decay_t<std::invoke_result_t<F&>>,
              std::enable_if_t<detail::IsDeferred<R>::value, int> = 0>
    TriggerId addSystemEventTrigger(std::string_view phase, std::string_view eventType, F f) {
        return addAsyncSystemEventTrigger(phase, eventType, [f = std::move(f)](std::function<void()> done) mutable {
            R d = f();
            d.addBoth([done = std::move(done)](Result<typename R::value_type> r) {
                done();
                return r;
            });
        });
    }
    /// The asynchronous form: a "before" trigger receives a `done` function
    /// and the event waits until every such trigger has called it.
    TriggerId addAsyncSystemEventTrigger(std::string_view phase, std::string_view eventType,
                                         std::function<void(std::function<void()> done)> f);
    /// Removes a trigger; false if the id is unknown.
    bool removeSystemEventTrigger(TriggerId id);
    /// Runs an event's before/during/after triggers.
    void fireSystemEvent(std::string_view eventType);

    // ---- tracing (for teaching) ----------------------------------------

    /// Reports every turn of the loop, one readable line per event: how long
    /// the poller waited and why it woke, each ready descriptor and the protocol
    /// callback it led to, timers (and how late), thread calls, connections
    /// made and lost, Deferreds fired. REACTOR_TRACE=1 in the environment
    /// turns it on (to stderr) for every new Reactor. Off: one branch per event.
    /// The tracer observes: it may replace itself, and what it throws is
    /// logged, but it must not call the reactor.
    void setTracer(Tracer tracer);
    /// A tracer is set: callers can skip building trace lines when not.
    bool tracing() const { return static_cast<bool>(tracer_); }
    /// Sends a line to the tracer (indented under the current turn).
    void trace(std::string_view line) const;

    // ---- time ---------------------------------------------------------

    /// Seconds on the monotonic clock (steady_clock), not the wall clock.
    REACTOR_INLINE double seconds() const override;
    REACTOR_INLINE DelayedCall callLater(double delay, std::function<void()> f, detail::Where where = {}) override;
    std::vector<DelayedCall> getDelayedCalls() const override { return timers_.delayedCalls(); }

    // ---- foreign file descriptors -------------------------------------

    /// Calls `f` whenever `fd` is readable (or has hung up / failed).
    /// Replaces an earlier reader of the same fd. Returns false if the fd
    /// cannot be watched (negative, or >= FD_SETSIZE with select()). A
    /// Descriptor is an int on POSIX, a SOCKET on Windows, where only
    /// sockets can be watched (WSAPoll).
    bool addReader(Descriptor fd, std::function<void()> f);
    /// Calls `f` whenever `fd` is writable.
    bool addWriter(Descriptor fd, std::function<void()> f);
    /// Stops calling the reader of `fd`; removing what is not watched is not an
    /// error. Safe inside any callback: a removed fd is not dispatched later in
    /// the turn. The callback is destroyed once it is not running and the
    /// descriptor table is consistent (so its destructor, too, may add or
    /// remove descriptors): before this returns, or after the current pass.
    void removeReader(Descriptor fd);
    /// Stops calling the writer of `fd` (as removeReader).
    void removeWriter(Descriptor fd);
    /// Removes every reader and writer added with addReader/addWriter and returns their fds.
    /// TCP transports and ports are not touched: close them (disconnectAll),
    /// or they would be left open and deaf.
    std::vector<Descriptor> removeAll();
    /// Closes every TCP connection (their protocols get connectionLost with
    /// ConnectionLost), listening port and connection attempt. Shutdown
    /// does this; tests use it to clean up. Safe from any callback, even one
    /// of a protocol it closes: protocols are destroyed at the end of the turn.
    void disconnectAll();
    /// Every fd watched for reading: addReader's, TCP connections and ports
    /// (not the reactor's own wake-up pipe). Twisted's getReaders.
    std::vector<Descriptor> getReaders() const { return fdsWith(os::evRead); }
    /// Every fd watched for writing (addWriter's, TCP connections with data to send).
    std::vector<Descriptor> getWriters() const { return fdsWith(os::evWrite); }
    /// Every watched fd (the dirty-reactor check: empty after a clean test).
    std::vector<Descriptor> selectables() const { return fdsWith(os::evRead | os::evWrite); }
    /// What is behind a watched descriptor, for reports: a TCP connection or
    /// port (with its protocol), or "added with addReader/addWriter".
    std::string describeSelectable(Descriptor fd) const;
    /// Pending timers (the dirty-reactor check: empty after a clean test).
    std::vector<DelayedCall> pendingCalls() const { return getDelayedCalls(); }

    // ---- threads ------------------------------------------------------

    /// The only thread-safe method: runs `f` on the reactor thread at the
    /// next turn, waking the loop. Calls from one thread keep their order.
    /// Queued calls wait if the reactor is not running. From another thread,
    /// stop() is `callFromThread([&r] { r.stop(); })`. The reactor must
    /// outlive every thread that may still call this: join them first.
    void callFromThread(std::function<void()> f);
    /// Runs `f` on the reactor's thread pool (blocking work goes here).
    void callInThread(std::function<void()> f) { getThreadPool().callInThread(std::move(f)); }
    /// The reactor's pool (10 threads at most by default; Twisted's 0/10),
    /// stopped during shutdown and when the reactor is destroyed.
    ThreadPool& getThreadPool();
    /// Sets the pool's maximum number of threads (0 counts as 1): now if the
    /// pool exists, else when getThreadPool() makes it. Twisted's name.
    void suggestThreadPoolSize(std::size_t n);

    // ---- TCP (defined in section 9) -------------------------------------

    /// Listens on `port` (0: a free one; see getHost()) as `options` say
    /// (interface, backlog, port sharing). `factory` should outlive the port
    /// and its connections (see Factory). A bind failure throws
    /// `error::CannotListenError` (without exceptions: logged, and the
    /// returned port is not listening).
    ListeningPort listenTCP(int port, Factory& factory, const ListenOptions& options);
    /// Twisted's positional form: `listenTCP(8000, f, 50, "127.0.0.1")`.
    ListeningPort listenTCP(int port, Factory& factory, int backlog = defaultBacklog, std::string_view interface = "");
    /// Connects to `host` (an IP literal, connected at once, or a name,
    /// resolved on a thread without blocking the loop). Failures reach
    /// `factory.clientConnectionFailed` with the reason, always after this
    /// returns. `timeout` <= 0 means none. `bindAddress.host` non-empty:
    /// bind the local end first. `factory` must outlive the connector.
    std::shared_ptr<IConnector> connectTCP(const std::string& host, int port, ClientFactory& factory,
                                                  double timeout = 30, const Address& bindAddress = {});
    /// The same, with the connector sharing ownership of the factory: handy
    /// for a factory per connection (a proxy's outgoing side, say).
    std::shared_ptr<IConnector> connectTCP(const std::string& host, int port,
                                                  std::shared_ptr<ClientFactory> factory, double timeout = 30,
                                                  const Address& bindAddress = {});

    /// Listens on a UNIX-domain socket at `path` (a file; a path starting
    /// with '\0' is a name in Linux's abstract namespace, no file). The
    /// same factories and protocols as TCP work unchanged. `mode` is set on
    /// the socket file (who may connect). The file is removed when the port
    /// stops listening. A file already at `path` makes this fail
    /// (CannotListenError, "Address already in use"), unless `wantPID`:
    /// then a lock file "<path>.lock" names this process, and a socket file
    /// whose lock's owner has died is removed first (Twisted's wantPID; a
    /// live owner makes it fail with "Cannot acquire lock").
    ListeningPort listenUNIX(const std::string& path, Factory& factory, int backlog = defaultBacklog,
                             int mode = 0666, bool wantPID = false);
    /// Connects to the UNIX socket at `path`. With `checkPID`, fails at once
    /// (BadFileError) unless a live process holds "<path>.lock" (a server
    /// listening with wantPID). Failures and losses reach the factory as
    /// for connectTCP; the peer's address is Address::unixSocket(path).
    std::shared_ptr<IConnector> connectUNIX(const std::string& path, ClientFactory& factory, double timeout = 30,
                                            bool checkPID = false);
    /// The same, with the connector sharing ownership of the factory.
    std::shared_ptr<IConnector> connectUNIX(const std::string& path, std::shared_ptr<ClientFactory> factory,
                                            double timeout = 30, bool checkPID = false);
    // ---- UDP (section 10) -------------------------------------------------

    /// Binds a UDP port (0: a free one) on `interface` (an IP literal; ""
    /// every IPv4 address, "::" every IPv6 one) and hands it to `protocol`
    /// (its transport; startProtocol runs before this returns). Datagrams
    /// longer than `maxPacketSize` arrive truncated to it. The reactor keeps
    /// the port until stopListening() or shutdown; the returned pointer is
    /// optional. `protocol` must outlive the port, or its destructor closes
    /// it. A bind failure throws `error::CannotListenError` (without
    /// exceptions: logged, and the returned port is not listening).
    std::shared_ptr<IUDPTransport> listenUDP(int port, DatagramProtocol& protocol, std::string_view interface = "",
                                             std::size_t maxPacketSize = 8192);
    /// listenUDP for multicast (Twisted's listenMulticast): the same port;
    /// `listenMultiple` lets several sockets bind the same port (SO_REUSEADDR
    /// and SO_REUSEPORT), so that each receives the group's datagrams.
    std::shared_ptr<IUDPTransport> listenMulticast(int port, DatagramProtocol& protocol,
                                                   std::string_view interface = "", std::size_t maxPacketSize = 8192,
                                                   bool listenMultiple = false);

#if defined(REACTOR_WITH_OPENSSL)
    /// listenTCP, with TLS on every connection (section 10a): `options`
    /// from ssl::serverOptions. The protocols are unchanged; they see
    /// plaintext. Invalid or client options raise error::ValueError
    /// (without exceptions: logged, and the port returned is not listening).
    ListeningPort listenSSL(int port, Factory& factory, const ssl::TLSOptions& options,
                            const ListenOptions& listenOptions = {});
    /// connectTCP, then TLS as `options` say (ssl::optionsForClientTLS:
    /// the certificate is verified, for the host named there). A failed or
    /// timed-out handshake ends the connection: connectionLost and
    /// clientConnectionLost get the error::SSLError.
    std::shared_ptr<IConnector> connectSSL(const std::string& host, int port, ClientFactory& factory,
                                           const ssl::TLSOptions& options, double timeout = 30,
                                           const Address& bindAddress = {});
    /// The same, with the connector sharing ownership of the factory.
    std::shared_ptr<IConnector> connectSSL(const std::string& host, int port, std::shared_ptr<ClientFactory> factory,
                                           const ssl::TLSOptions& options, double timeout = 30,
                                           const Address& bindAddress = {});
#endif

private:
    friend struct detail::ReactorAccess;

    static constexpr std::size_t npos = static_cast<std::size_t>(-1);
    // Shorthand for the platform layer inside the class.
    struct os {
        using Fd = detail::os::Fd;
        static constexpr Fd invalidFd = detail::os::invalidFd;
        static bool validFd(Fd fd) { return detail::os::validFd(fd); }
        static constexpr short evRead = detail::os::evRead;
        static constexpr short evWrite = detail::os::evWrite;
        static constexpr short evError = detail::os::evError;
        static constexpr short evInvalid = detail::os::evInvalid;
        using SignalHandlers = detail::os::SignalHandlers;
    };

    struct Slot {
        detail::os::Fd fd = os::invalidFd;
        short interest = 0;    // os::evRead | os::evWrite, as the poller has it
        bool internal = false;
        bool foreign = false;  // added with addReader/addWriter (traced here, not by a transport)
        std::uint64_t armed = 0;  // changes on every watch(): see dispatch()
        detail::Handler reader;
        detail::Handler writer;
    };
    struct Trigger {
        TriggerId id;
        detail::Phase phase;
        std::string event;
        std::function<void(std::function<void()>)> fn;
        bool once;
    };

    static std::function<void(std::function<void()>)> syncTrigger(std::function<void()> f);
    static bool parsePhase(std::string_view phase, detail::Phase& out);
    TriggerId addTrigger(detail::Phase phase, std::string_view event,
                         std::function<void(std::function<void()>)> fn, bool once);

    /// Runs the triggers of one phase; calls `done` when every one has
    /// finished (only "before" triggers may finish later).
    void runPhase(const std::string& event, detail::Phase phase, std::function<void()> done);

    void fireEvent(const std::string& event, std::function<void()> whenDone);
    /// Twisted's built-in "during" triggers, which run before the user's.
    void builtinDuring(const std::string& event);

    // ---- the descriptor table: slots, and the poller that watches them --

    std::size_t watch(detail::os::Fd fd, short event, detail::Handler handler, bool foreign = false);

    /// Drops a handler. It is never destroyed here: it may be the one
    /// running, and its destructor is user code that may add or remove
    /// descriptors while the tables are half-updated. releaseRetired()
    /// destroys it once the tables are consistent.
    void retire(detail::Handler& handler);
    /// Destroys retired handlers (and what they own), unless a dispatch pass
    /// is running. A destructor may retire more: they go too.
    void releaseRetired();
    /// Frees the connections, ports and connectors closed this turn. Their
    /// destructors (a protocol's, a factory a connector owned) may close more.
    void releaseDead();

    void unwatch(detail::os::Fd fd, short events);

    void removeSlot(std::size_t slot);
    /// Every slot, dropped (the reactor's destructor).
    void unwatchAll();

    std::size_t slotOf(detail::os::Fd fd) const;

    std::vector<os::Fd> fdsWith(short events) const;

    void dispatch();

    // ---- one turn -----------------------------------------------------

    void turn(double maxWait /* < 0: no limit */);

    /// Publishes this reactor's tracer to code that does not know it
    /// (Deferreds) for the duration of a turn.
    struct TraceScope {
        const std::shared_ptr<const Tracer>* previous;
        explicit TraceScope(const Reactor& r) : previous(detail::activeTracer()) {
            if (r.tracer_) detail::activeTracer() = &r.tracer_;
        }
        ~TraceScope() { detail::activeTracer() = previous; }
        TraceScope(const TraceScope&) = delete;
        TraceScope& operator=(const TraceScope&) = delete;
    };

    void traceTurn(int ready, int timeoutMs, bool timerLimited, double waited);

    // ---- state ----------------------------------------------------------

    std::int64_t epochNanos_;  // the monotonic clock at construction (std::chrono::steady_clock, in ns)
    std::shared_ptr<const Tracer> tracer_;  // shared with a trace call running: it may replace itself
    std::uint64_t turnNumber_ = 0;
    detail::TimerQueue timers_{*this};
    detail::os::Waker waker_;
    bool wakerWatched_ = false;

    detail::os::Poller poller_;           // the readiness backend (section 3)
    std::vector<detail::os::Ready> ready_;  // what the last wait found (reused)
    std::vector<Slot> slots_;             // one per watched fd, in no order
    std::vector<std::size_t> slotOf_;     // fd -> index in slots_, npos if unwatched
    std::uint64_t lastArmed_ = 0;
    std::vector<detail::Handler> retired_;  // removed; freed by releaseRetired()
    std::vector<detail::Handler> releasing_;  // the batch being freed (reused)
    bool dispatching_ = false;
    bool releasingRetired_ = false;

    // callFromThread's queue (section 15: its mutex and atomics stay out of
    // the declarations every TU of a separately compiled program reads).
    struct CrossThread;
    detail::Owner<CrossThread> crossThread_;
    static std::int64_t steadyNanos();

    detail::Owner<ThreadPool> pool_;
    std::size_t poolSize_ = 10;

    std::vector<Trigger> triggers_;
    TriggerId lastTriggerId_ = 0;

    bool running_ = false;
    bool inRun_ = false;
    std::uint64_t runNumber_ = 0;  // changes as each run() starts and ends
    bool inTurn_ = false;
    std::uint64_t pollErrors_ = 0;
    bool stopRequested_ = false;
    bool shutdownStarted_ = false;
    bool loopDone_ = false;
    detail::Owner<os::SignalHandlers> signalHandlers_;

    // TCP state (section 9).
    std::vector<std::shared_ptr<detail::Owned>> owned_;  // live connections, ports, connectors
    std::vector<std::shared_ptr<detail::Owned>> dead_;   // closed this turn; freed at its end
    std::vector<std::shared_ptr<detail::Owned>> dying_;  // the batch being freed (reused)
    bool releasingDead_ = false;
    std::vector<char> readBuffer_;                       // one buffer for every recv()
    detail::Owner<ThreadPool> resolver_;               // name lookups, apart from the user's pool
    os::Fd spareFd_ = os::invalidFd;                     // see TcpPort::acceptError
    std::shared_ptr<bool> alive_;  // false from ~Reactor on
};



// ============================================================================
// ==== 9. PROTOCOLS ====
// The transport/protocol split. A transport moves bytes (a TCP socket, or a
// StringTransport in tests); a protocol decides what the bytes mean. A
// factory makes one protocol per connection.
//
//   connection accepted/connected
//        -> factory.buildProtocol(addr)       1. a protocol per connection
//        -> protocol.makeConnection(transport) 2. transport attached
//        -> protocol.connectionMade()          3. say hello
//        -> protocol.dataReceived(bytes) ...   4. as bytes arrive
//        -> protocol.connectionLost(reason)    5. exactly once; then destroyed
//
// Ends with the policies a protocol opts into (an idle timeout) and the
// wrapping factories (limits, timeouts) a server puts around its factory.
// ============================================================================

/// Something that produces data on demand (Twisted's IPushProducer and
/// IPullProducer in one). A consumer (a transport) pauses a streaming
/// producer when its buffer is full and resumes it when it drains; a
/// non-streaming (pull) producer gets resumeProducing() for each chunk.
class IProducer {
public:
    virtual ~IProducer() = default;
    /// Stop producing until resumeProducing() (a streaming producer; the
    /// consumer calls it when its buffer is full). Default: nothing.
    virtual void pauseProducing() {}
    /// Streaming: start producing again. Pull: produce one chunk now (the
    /// consumer calls it each time its buffer drains).
    virtual void resumeProducing() = 0;
    /// Stop for good: the consumer is going away (a TCP transport calls it
    /// when the connection closes with the producer still registered).
    virtual void stopProducing() = 0;
};

/// The byte pipe a protocol writes to (Twisted's ITCPTransport). As a
/// producer it stands for the *incoming* data: pauseProducing() stops
/// reading, resumeProducing() starts again.
class ITransport : public IProducer {
public:
    /// Queues bytes to send. Bytes written after loseConnection() are still
    /// sent (Twisted's behaviour); after the connection is gone, ignored.
    virtual void write(std::string_view data) = 0;
    /// Queues several pieces, as if written one after the other.
    REACTOR_INLINE virtual void writeSequence(const std::string_view* parts, std::size_t count);
    void writeSequence(std::initializer_list<std::string_view> parts) { writeSequence(parts.begin(), parts.size()); }
    void writeSequence(const std::vector<std::string_view>& parts) { writeSequence(parts.data(), parts.size()); }
    void writeSequence(const std::vector<std::string>& parts) {
        for (const auto& part : parts) write(part);
    }
    /// Closes after everything buffered has been sent. Nothing more is
    /// delivered to the protocol; a TCP transport reads on and drops what
    /// arrives meanwhile, so that a peer busy sending to us can finish.
    virtual void loseConnection() = 0;
    /// Closes now, dropping buffered data (the peer sees a reset).
    virtual void abortConnection() = 0;
    /// Half-close: shuts down the sending side once the buffer drains.
    virtual void loseWriteConnection() = 0;
    /// The other end's address.
    virtual Address getPeer() const = 0;
    /// Our end's address.
    virtual Address getHost() const = 0;
    /// Flow control for outgoing data: a streaming producer is paused while
    /// the buffer is above the high-water mark and resumed below the low
    /// one; a pull producer is asked for more each time the buffer drains.
    virtual void registerProducer(IProducer* producer, bool streaming) = 0;
    /// Detaches the registered producer. A loseConnection() that was
    /// waiting for it (on TCP) then completes.
    virtual void unregisterProducer() = 0;
    /// Sets TCP_NODELAY; false where the transport has no such option.
    REACTOR_INLINE virtual bool setTcpNoDelay(bool enabled);
    /// Sets SO_KEEPALIVE; false where the transport has no such option.
    REACTOR_INLINE virtual bool setTcpKeepAlive(bool enabled);
    /// The current TCP_NODELAY setting (false where there is none).
    virtual bool getTcpNoDelay() const { return false; }
    /// The current SO_KEEPALIVE setting (false where there is none).
    virtual bool getTcpKeepAlive() const { return false; }
    /// Who is at the other end of a UNIX socket (pid, uid, gid), checked by
    /// the kernel: how a local daemon authorises a client. Empty for other
    /// transports, after the close, and where the system cannot say.
    virtual std::optional<PeerCredentials> getPeerCredentials() const { return std::nullopt; }
#if defined(REACTOR_WITH_OPENSSL)
    /// Starts TLS on this established connection (section 10a; Twisted's
    /// ITLSTransport.startTLS): the STARTTLS pattern. What was written
    /// before goes out in clear first; from now on the protocol's
    /// `transport` is the TLS layer. TCP transports only (others raise
    /// error::RuntimeError).
    REACTOR_INLINE virtual void startTLS(const ssl::TLSOptions& options);
    /// The TLS layer (what was negotiated, the peer's certificate), or null
    /// for a transport without TLS.
    virtual ssl::ISSLTransport* getTLS() { return nullptr; }
#endif

    bool connected = false;      ///< true until the connection is gone
    /// loseConnection() was called, or the connection is gone (framing
    /// protocols stop delivering messages once it is set).
    bool disconnecting = false;
};

class Factory;

/// The base of every protocol. Override the event methods; the transport
/// calls them, always on the reactor thread.
class Protocol {
public:
    virtual ~Protocol() = default;

    /// Attaches the transport and calls connectionMade(). Called by the
    /// transport (or by a test with a StringTransport).
    void makeConnection(ITransport* t);
    /// The connection is up; `transport` is set.
    virtual void connectionMade() {}
    /// Bytes arrived. The view is valid only during the call; chunks are
    /// arbitrary (a "message" may arrive in pieces or several at once).
    virtual void dataReceived(std::string_view data) { (void)data; }
    /// The connection is gone (exactly once): `error::ConnectionDone` for a
    /// clean close, `error::ConnectionLost` (or the error) otherwise. The
    /// transport destroys a protocol it owns right after this returns.
    virtual void connectionLost(const Failure& reason) { (void)reason; }

    /// Half-close (Twisted's IHalfCloseableProtocol): return true to get
    /// readConnectionLost() when the peer stops sending, instead of
    /// connectionLost(ConnectionDone); you then call loseConnection() yourself.
    virtual bool halfCloseable() const { return false; }
    /// The peer stopped sending (halfCloseable protocols only); reading has
    /// stopped and we can still write.
    virtual void readConnectionLost() {}
    /// Our loseWriteConnection() completed (only for halfCloseable protocols).
    virtual void writeConnectionLost() {}
#if defined(REACTOR_WITH_OPENSSL)
    /// TLS (section 10a): the handshake completed and the peer is verified
    /// (Twisted's IHandshakeListener). transport->getTLS() says what was agreed.
    virtual void handshakeCompleted() {}
    /// TLS: startTLS made `t` (the TLS layer) this protocol's transport.
    /// A wrapper that hands its transport to an inner protocol overrides it
    /// to pass `t` on, so the inner protocol's writes are encrypted too.
    virtual void transportReplaced(ITransport* t) { transport = t; }
#endif

    /// The name used in logs and traces (Twisted's logPrefix): the class
    /// name when RTTI is available, else "Protocol". Override to choose.
    REACTOR_INLINE virtual std::string logPrefix() const;

    ITransport* transport = nullptr;  ///< valid from makeConnection until connectionLost returns
    Factory* factory = nullptr;       ///< the factory that built this protocol, if any
    /// Set by makeConnection; false again before connectionLost is called.
    bool connected = false;
};

/// Makes protocols for connections (Twisted's Factory). Set `protocol` (or
/// use forProtocol), or override buildProtocol.
///
/// Lifetime: listenTCP/connectTCP keep a reference, not a copy; the factory
/// should outlive its ports, connectors and connections. If it does not (it
/// was declared after the Reactor, say, and a test ended early), its
/// destructor closes them first, silently (no connectionLost: the protocols
/// may use the factory) and logs a warning, so nothing calls a dead factory.
/// A protocol's destructor must not use its factory for that reason. A copy
/// is a new factory: it shares `protocol` but no ports or connections.
class Factory {
public:
    Factory() = default;
    /// A new factory with the same `protocol` (no ports, no connections, numPorts 0).
    Factory(const Factory& other) : protocol(other.protocol) {}
    /// Takes `other`'s `protocol`; what uses this factory keeps using it.
    Factory& operator=(const Factory& other) {
        protocol = other.protocol;
        return *this;
    }
    REACTOR_INLINE virtual ~Factory();

    /// Makes a protocol (Twisted's `protocol` class attribute, as a function).
    std::function<std::unique_ptr<Protocol>()> protocol;

    /// A factory whose protocol is `P(args...)`.
    template <class P, class... Args>
    static Factory forProtocol(Args... args) {
        Factory f;
        f.setProtocol<P>(args...);
        return f;
    }

    /// Called for each new connection; return null to refuse it (the
    /// connection is closed). The default calls `protocol` and sets
    /// the new protocol's `factory`.
    REACTOR_INLINE virtual std::unique_ptr<Protocol> buildProtocol(const Address& addr);
    /// Called once before the first port (or connector) starts using it.
    virtual void startFactory() {}
    /// Called once after the last one stops.
    virtual void stopFactory() {}

    /// Called by a port or connector when it starts using the factory; the
    /// first call runs startFactory().
    void doStart() {
        if (numPorts++ == 0) startFactory();
    }
    /// Called when one stops; the last call runs stopFactory(). Extra calls are ignored.
    void doStop();
    /// How many ports and connectors are using the factory (Twisted's numPorts).
    int numPorts = 0;

protected:
    /// `protocol` = make `P(args...)`. Without arguments, a plain function
    /// whose std::function wrapper is compiled once (section 15), not in
    /// every file that names a protocol class.
    template <class P, class... Args>
    void setProtocol(Args... args) {
        if constexpr (sizeof...(Args) == 0)
            setProtocolMaker([]() -> std::unique_ptr<Protocol> { return std::unique_ptr<Protocol>(new P()); });
        else
            protocol = [args...]() -> std::unique_ptr<Protocol> { return std::make_unique<P>(args...); };
    }
    void setProtocolMaker(std::unique_ptr<Protocol> (*make)());

private:
    friend class detail::Owned;
    detail::Owned* users_ = nullptr;  // ports, connectors, connections using it
};

/// A client connection attempt (Twisted's IConnector), handed to the
/// ClientFactory's callbacks; `connect()` tries again.
class IConnector : public std::enable_shared_from_this<IConnector> {
public:
    virtual ~IConnector() = default;
    /// Starts a new attempt (only when disconnected).
    virtual void connect() = 0;
    /// Stops an attempt in progress, or closes the connection.
    virtual void disconnect() = 0;
    /// Stops an attempt in progress (`error::NotConnectingError` otherwise).
    virtual void stopConnecting() = 0;
    /// True while an attempt is in progress, so that stopConnecting() is
    /// legal; lets callers built without exceptions ask instead of catching.
    virtual bool isConnecting() const = 0;
    /// Where it connects to (host as given, and port).
    virtual Address getDestination() const = 0;
};

/// A factory for outgoing connections (Twisted's ClientFactory).
class ClientFactory : public Factory {
public:
    /// A client factory whose protocol is `P(args...)` (Factory::forProtocol
    /// for clients, so that connectTCP accepts it).
    template <class P, class... Args>
    static ClientFactory forProtocol(Args... args) {
        ClientFactory f;
        f.setProtocol<P>(args...);
        return f;
    }
    /// An attempt started (called before connectTCP returns).
    virtual void startedConnecting(IConnector& connector) { (void)connector; }
    /// The attempt failed: refused, timed out, unknown host...
    REACTOR_INLINE virtual void clientConnectionFailed(IConnector& connector, const Failure& reason);
    /// An established connection ended.
    REACTOR_INLINE virtual void clientConnectionLost(IConnector& connector, const Failure& reason);
};

// ---- policies: an idle timeout --------------------------------------------

namespace policies {

/// Twisted's policies.TimeoutMixin: closes a connection that stays idle.
/// Put it between your protocol and the one it extends, and give it a clock
/// (the Reactor, or a Clock in tests):
///
///     struct Session : reactor::policies::TimeoutMixin<reactor::LineReceiver> {
///         explicit Session(reactor::IReactorTime& clock) { timeoutClock = &clock; }
///         void connectionMade() override { setTimeout(60); }
///         void lineReceived(std::string_view line) override { resetTimeout(); ... }
///     };
///
/// Ownership: the timer belongs to the protocol. It is cancelled when the
/// protocol is destroyed (a timer must never call a dead object) and, as a
/// convenience Twisted lacks, when the connection is lost; a timer that
/// fires after connectionLost (your override did not call this one) does
/// nothing.
template <class Base = Protocol>
class TimeoutMixin : public Base {
public:
    using Base::Base;
    TimeoutMixin() = default;
    TimeoutMixin(const TimeoutMixin&) = delete;
    TimeoutMixin& operator=(const TimeoutMixin&) = delete;
    ~TimeoutMixin() override { cancelTimer(); }

    /// The clock the timer runs on (Twisted's `callLater` attribute). Set it
    /// before setTimeout; it must outlive the protocol's timer.
    IReactorTime* timeoutClock = nullptr;
    /// The idle period in seconds, or none (Twisted's `timeOut`).
    std::optional<double> timeOut;

    /// Sets the period and returns the previous one. A running timer is
    /// restarted with the new period, or cancelled by std::nullopt; with no
    /// timer running, a period starts one.
    /// (`where`: your call, named by traces and dirty-reactor reports.)
    std::optional<double> setTimeout(std::optional<double> period, detail::Where where = {}) {
        std::optional<double> previous = timeOut;
        timeOut = period;
        if (timeoutCall_.active()) {
            if (period)
                timeoutCall_.reset(*period);
            else
                timeoutCall_.cancel();
        } else if (period) {
            if (!timeoutClock) {
                detail::raise<error::ValueError>("TimeoutMixin: set timeoutClock before setTimeout");
                return previous;
            }
            timeoutCall_ = timeoutClock->callLater(
                *period,
                [this] {
                    if (this->connected) timeoutConnection();
                },
                where);
        }
        return previous;
    }

    /// The peer showed life: the full period starts again. Call it from
    /// dataReceived (or lineReceived...). Does nothing with no timer running.
    void resetTimeout() {
        if (timeoutCall_.active() && timeOut) timeoutCall_.reset(*timeOut);
    }

    /// The period passed without resetTimeout(): closes the connection
    /// (loseConnection, so queued output is still sent). Override to warn
    /// the peer first, or to abort instead.
    virtual void timeoutConnection() {
        if (this->transport) this->transport->loseConnection();
    }

    /// Cancels the timer, then runs Base's. Your override should call this.
    void connectionLost(const Failure& reason) override {
        cancelTimer();
        Base::connectionLost(reason);
    }

private:
    void cancelTimer() {
        if (timeoutCall_.active()) timeoutCall_.cancel();
    }
    DelayedCall timeoutCall_;
};

// ---- policies: wrapping factories -------------------------------------------

/// Forwards every event of the Protocol interface to another protocol,
/// `forwardee`: connectionMade (as forwardee->makeConnection), dataReceived,
/// connectionLost, halfCloseable, readConnectionLost, writeConnectionLost
/// and logPrefix. The one place that knows the full list, for any protocol
/// that stands in front of another (ProtocolWrapper below). It does not own
/// the forwardee: an owner sets the pointer and keeps the object alive
/// until connectionLost has returned.
class ForwardingProtocol : public Protocol {
public:
    /// Where the events go; null: they are dropped.
    Protocol* forwardee = nullptr;

    REACTOR_INLINE void connectionMade() override;
    REACTOR_INLINE void dataReceived(std::string_view data) override;
    /// Clears the forwardee's `connected`, then forwards.
    REACTOR_INLINE void connectionLost(const Failure& reason) override;
    REACTOR_INLINE bool halfCloseable() const override;
    REACTOR_INLINE void readConnectionLost() override;
    REACTOR_INLINE void writeConnectionLost() override;
    /// "Forwardee (ThisClass)", as Twisted's wrappers name themselves.
    REACTOR_INLINE std::string logPrefix() const override;
#if defined(REACTOR_WITH_OPENSSL)
    /// Passed on to the forwardee.
    REACTOR_INLINE void handshakeCompleted() override;
    /// startTLS put a TLS layer under this protocol: the forwardee, if it
    /// shares this protocol's transport, moves onto the layer too (a
    /// subclass that hands its own transport on needs nothing more).
    REACTOR_INLINE void transportReplaced(ITransport* t) override;
#endif

protected:
    /// What the forwardee gets as its transport: this protocol's own.
    virtual ITransport* forwardeeTransport() { return transport; }
};

class WrappingFactory;

/// Twisted's ProtocolWrapper: stands between the transport and the
/// protocol it wraps, which sees the wrapper as its transport. Every event
/// goes on to the wrapped protocol (ForwardingProtocol); every transport
/// call the wrapped protocol makes goes through the wrapper's virtual
/// method of the same name (write, loseConnection, registerProducer...),
/// then to the real transport. Override those to watch or change traffic.
///
/// Ownership: the wrapper owns the wrapped protocol (they die together,
/// after connectionLost). It registers with its factory in connectionMade
/// and unregisters exactly once: in connectionLost, or when destroyed
/// without one. A factory destroyed first is forgotten, never called.
class ProtocolWrapper : public ForwardingProtocol {
public:
    /// Wraps `wrapped` (taking it); `factory` is told when it connects and ends.
    REACTOR_INLINE ProtocolWrapper(WrappingFactory& factory, std::unique_ptr<Protocol> wrapped);
    REACTOR_INLINE ~ProtocolWrapper() override;
    ProtocolWrapper(const ProtocolWrapper&) = delete;
    ProtocolWrapper& operator=(const ProtocolWrapper&) = delete;

    /// The protocol inside (owned).
    std::unique_ptr<Protocol> wrappedProtocol;
    /// The factory that built this wrapper; null once it is destroyed.
    WrappingFactory* wrappingFactory;

    /// Registers with the factory, then connects the wrapped protocol to the wrapper.
    REACTOR_INLINE void connectionMade() override;
    REACTOR_INLINE void dataReceived(std::string_view data) override;
    /// Unregisters, then forwards.
    REACTOR_INLINE void connectionLost(const Failure& reason) override;
    REACTOR_INLINE void readConnectionLost() override;

    // ---- the wrapped protocol's transport calls (to the real transport) --

    /// The wrapped protocol wrote: passed to transport->write.
    REACTOR_INLINE virtual void write(std::string_view data);
    /// The same for writeSequence.
    REACTOR_INLINE virtual void writeSequence(const std::string_view* parts, std::size_t count);
    /// The wrapped protocol closes: `disconnecting` is set at once for it, then passed on.
    REACTOR_INLINE virtual void loseConnection();
    /// As loseConnection, for abortConnection.
    REACTOR_INLINE virtual void abortConnection();
    /// Passed to transport->loseWriteConnection.
    REACTOR_INLINE virtual void loseWriteConnection();
    /// The wrapped protocol's producer is registered with the real transport.
    REACTOR_INLINE virtual void registerProducer(IProducer* producer, bool streaming);
    /// Passed to transport->unregisterProducer.
    REACTOR_INLINE virtual void unregisterProducer();
    /// The reading side (the wrapped protocol pausing its input).
    REACTOR_INLINE virtual void pauseProducing();
    /// The reading side: reading again.
    REACTOR_INLINE virtual void resumeProducing();
    /// Passed to transport->stopProducing (which closes).
    REACTOR_INLINE virtual void stopProducing();
    /// The real transport's peer (an empty Address before connectionMade).
    REACTOR_INLINE Address getPeer() const;
    /// The real transport's host.
    REACTOR_INLINE Address getHost() const;

    /// What the wrapped protocol has as `transport`.
    ITransport& wrapperTransport() { return facet_; }

protected:
    ITransport* forwardeeTransport() override { return &facet_; }

private:
    // The ITransport the wrapped protocol holds: each call goes to the
    // wrapper's virtual of the same name. Its `connected`/`disconnecting`
    // follow the real transport's (the framing protocols read them).
    class Facet final : public ITransport {
    public:
        explicit Facet(ProtocolWrapper& w) : w_(w) {}
        void write(std::string_view data) override { w_.write(data); }
        void writeSequence(const std::string_view* parts, std::size_t count) override { w_.writeSequence(parts, count); }
        void loseConnection() override { w_.loseConnection(); }
        void abortConnection() override { w_.abortConnection(); }
        void loseWriteConnection() override { w_.loseWriteConnection(); }
        Address getPeer() const override { return w_.getPeer(); }
        Address getHost() const override { return w_.getHost(); }
        void registerProducer(IProducer* producer, bool streaming) override { w_.registerProducer(producer, streaming); }
        void unregisterProducer() override { w_.unregisterProducer(); }
        void pauseProducing() override { w_.pauseProducing(); }
        void resumeProducing() override { w_.resumeProducing(); }
        void stopProducing() override { w_.stopProducing(); }
        bool setTcpNoDelay(bool enabled) override { return w_.transport && w_.transport->setTcpNoDelay(enabled); }
        bool setTcpKeepAlive(bool enabled) override { return w_.transport && w_.transport->setTcpKeepAlive(enabled); }
        bool getTcpNoDelay() const override { return w_.transport && w_.transport->getTcpNoDelay(); }
        bool getTcpKeepAlive() const override { return w_.transport && w_.transport->getTcpKeepAlive(); }
        std::optional<PeerCredentials> getPeerCredentials() const override {
            return w_.transport ? w_.transport->getPeerCredentials() : std::nullopt;
        }
#if defined(REACTOR_WITH_OPENSSL)
        // STARTTLS from the wrapped protocol: the layer goes under the
        // wrapper, whose writes (the wrapped protocol's) it then encrypts.
        void startTLS(const ssl::TLSOptions& options) override {
            if (w_.transport)
                w_.transport->startTLS(options);
            else
                ITransport::startTLS(options);
        }
        ssl::ISSLTransport* getTLS() override { return w_.transport ? w_.transport->getTLS() : nullptr; }
#endif

    private:
        ProtocolWrapper& w_;
    };
    friend class WrappingFactory;
    void syncFlags();
    void unregisterOnce();
    Facet facet_{*this};
    bool unregistered_ = false;
};

/// Twisted's policies.WrappingFactory: wraps another factory's protocols in
/// ProtocolWrappers and keeps a list of the live ones. Listen (or connect)
/// with the wrapping factory; the wrapped one builds the protocols.
/// startFactory/stopFactory and, for a wrapped ClientFactory, the client
/// callbacks are passed on. Both factories are the caller's; the wrapped
/// one must outlive the wrapping one.
class WrappingFactory : public ClientFactory {
public:
    explicit WrappingFactory(Factory& wrapped) : wrappedFactory(&wrapped) {}
    /// Wrapping a client factory: its startedConnecting and
    /// clientConnection* are called too.
    explicit WrappingFactory(ClientFactory& wrapped) : wrappedFactory(&wrapped), wrappedClientFactory(&wrapped) {}
    /// Its live wrappers forget it (their unregistering is skipped).
    REACTOR_INLINE ~WrappingFactory() override;
    WrappingFactory(const WrappingFactory&) = delete;
    WrappingFactory& operator=(const WrappingFactory&) = delete;

    Factory* wrappedFactory = nullptr;             ///< builds the wrapped protocols
    ClientFactory* wrappedClientFactory = nullptr;  ///< the same, when it is a ClientFactory
    /// The connected wrappers (Twisted's `protocols`), in connection order.
    std::vector<ProtocolWrapper*> protocols;

    /// The wrapped factory's protocol in a wrapper made by wrapProtocol;
    /// null when the wrapped factory refuses.
    REACTOR_INLINE std::unique_ptr<Protocol> buildProtocol(const Address& addr) override;
    /// Makes the wrapper (Twisted's `protocol` attribute): override to use
    /// your own ProtocolWrapper subclass.
    REACTOR_INLINE virtual std::unique_ptr<ProtocolWrapper> wrapProtocol(std::unique_ptr<Protocol> wrapped,
                                                                         const Address& addr);
    /// A wrapper connected: adds it to `protocols`.
    REACTOR_INLINE virtual void registerProtocol(ProtocolWrapper& p);
    /// A wrapper is done (exactly once for each one built): removes it.
    REACTOR_INLINE virtual void unregisterProtocol(ProtocolWrapper& p);

    REACTOR_INLINE void startFactory() override;
    REACTOR_INLINE void stopFactory() override;
    REACTOR_INLINE void startedConnecting(IConnector& connector) override;
    REACTOR_INLINE void clientConnectionFailed(IConnector& connector, const Failure& reason) override;
    REACTOR_INLINE void clientConnectionLost(IConnector& connector, const Failure& reason) override;

protected:
    /// For a subclass that builds the protocols itself (LimitTotalConnectionsFactory).
    WrappingFactory() = default;
};

/// Twisted's TimeoutProtocol: closes the connection after `timeoutPeriod`
/// seconds without traffic either way (data received, or written by the
/// wrapped protocol). Made by TimeoutFactory.
class TimeoutProtocol : public ProtocolWrapper {
public:
    /// Arms the timer now (the connection is made right after).
    REACTOR_INLINE TimeoutProtocol(WrappingFactory& factory, std::unique_ptr<Protocol> wrapped, IReactorTime& clock,
                                   std::optional<double> timeoutPeriod);
    ~TimeoutProtocol() override { cancelTimeout(); }

    /// The period in seconds, or none.
    std::optional<double> timeoutPeriod;
    /// Cancels the timer and, with a period, starts a new one (Twisted's
    /// setTimeout: no argument means no timeout).
    REACTOR_INLINE void setTimeout(std::optional<double> period = std::nullopt);
    /// Stops the timer (no period from now on); doing it twice is fine.
    REACTOR_INLINE void cancelTimeout();
    /// Traffic: the period starts again.
    REACTOR_INLINE void resetTimeout();
    /// The period passed in silence: loseConnection(). Override to do otherwise.
    virtual void timeoutFunc() { loseConnection(); }

    /// Traffic out: resetTimeout(), then passed on.
    REACTOR_INLINE void write(std::string_view data) override;
    /// Traffic out: resetTimeout(), then passed on.
    REACTOR_INLINE void writeSequence(const std::string_view* parts, std::size_t count) override;
    /// Traffic in: resetTimeout(), then passed on.
    REACTOR_INLINE void dataReceived(std::string_view data) override;
    /// Cancels the timer, then passed on.
    REACTOR_INLINE void connectionLost(const Failure& reason) override;

private:
    IReactorTime& clock_;
    DelayedCall timeoutCall_;
};

/// Twisted's TimeoutFactory: every connection of the wrapped factory is
/// closed after `timeoutPeriod` seconds of silence (default 30 minutes).
/// Timers run on `clock` (the Reactor; a Clock in tests), which must
/// outlive the connections.
class TimeoutFactory : public WrappingFactory {
public:
    /// Wraps `wrapped`'s protocols; timers run on `clockRef`.
    TimeoutFactory(Factory& wrapped, IReactorTime& clockRef, double period = 30 * 60)
        : WrappingFactory(wrapped), timeoutPeriod(period), clock(&clockRef) {}
    /// Wrapping a ClientFactory passes its client callbacks on (a
    /// ReconnectingClientFactory inside still retries).
    TimeoutFactory(ClientFactory& wrapped, IReactorTime& clockRef, double period = 30 * 60)
        : WrappingFactory(wrapped), timeoutPeriod(period), clock(&clockRef) {}
    double timeoutPeriod;  ///< seconds of silence before the close
    IReactorTime* clock;   ///< where the timers run
    /// A TimeoutProtocol.
    REACTOR_INLINE std::unique_ptr<ProtocolWrapper> wrapProtocol(std::unique_ptr<Protocol> wrapped,
                                                                 const Address& addr) override;
};

/// Twisted's LimitTotalConnectionsFactory: at most `connectionLimit`
/// connections at once. Set `protocol` as for any Factory; a connection
/// over the limit gets `overflowProtocol` (to say "too busy", say) or,
/// without one, is refused: buildProtocol returns null and the transport
/// closes it at once (the client sees connectionMade, then
/// connectionLost(ConnectionDone)). Protocols are wrapped in ProtocolWrappers;
/// their `factory` is this factory. Unlike Twisted's, it is a WrappingFactory
/// (so `protocols` lists the live ones).
class LimitTotalConnectionsFactory : public WrappingFactory {
public:
    LimitTotalConnectionsFactory() = default;
    /// Connections now (counted from buildProtocol to connectionLost).
    int connectionCount = 0;
    /// The limit; none: unlimited.
    std::optional<int> connectionLimit;
    /// What a connection over the limit gets; empty: it is refused.
    std::function<std::unique_ptr<Protocol>()> overflowProtocol;

    REACTOR_INLINE std::unique_ptr<Protocol> buildProtocol(const Address& addr) override;
    REACTOR_INLINE void unregisterProtocol(ProtocolWrapper& p) override;
    void startFactory() override {}
    void stopFactory() override {}
};

/// Twisted's LimitConnectionsByPeer: at most `maxConnectionsPerPeer`
/// connections from one peer host (an IP address) at once; more are
/// refused (buildProtocol returns null, the transport closes them).
class LimitConnectionsByPeer : public WrappingFactory {
public:
    using WrappingFactory::WrappingFactory;
    int maxConnectionsPerPeer = 5;  ///< Twisted's default
    /// Open connections per host.
    std::vector<std::pair<std::string, int>> peerConnections;

    /// Starts with no connections counted (Twisted's startFactory).
    REACTOR_INLINE void startFactory() override;
    REACTOR_INLINE std::unique_ptr<Protocol> buildProtocol(const Address& addr) override;
    REACTOR_INLINE void unregisterProtocol(ProtocolWrapper& p) override;

private:
    int* countOf(const std::string& host);
    std::vector<std::pair<ProtocolWrapper*, std::string>> hostOf_;  // counted wrappers
};

class ThrottlingFactory;

/// Twisted's ThrottlingProtocol: counts its connection's bytes for its
/// ThrottlingFactory, and pauses or resumes on the factory's orders. Made by
/// ThrottlingFactory.
class ThrottlingProtocol : public ProtocolWrapper {
public:
    /// Wraps `wrapped` for `factory`.
    ThrottlingProtocol(ThrottlingFactory& factory, std::unique_ptr<Protocol> wrapped);
    /// Counted as written, then passed on.
    REACTOR_INLINE void write(std::string_view data) override;
    /// Counted as written, then passed on.
    REACTOR_INLINE void writeSequence(const std::string_view* parts, std::size_t count) override;
    /// Counted as read, then passed on.
    REACTOR_INLINE void dataReceived(std::string_view data) override;
    /// Remembered (write throttling pauses it), then passed on.
    REACTOR_INLINE void registerProducer(IProducer* producer, bool streaming) override;
    /// Forgotten, then passed on.
    REACTOR_INLINE void unregisterProducer() override;
    /// Stops reading (transport->pauseProducing()).
    REACTOR_INLINE void throttleReads();
    /// Reads again.
    REACTOR_INLINE void unthrottleReads();
    /// Pauses the registered producer, if any (writes are throttled only through one).
    REACTOR_INLINE void throttleWrites();
    /// Resumes the registered producer, if any.
    REACTOR_INLINE void unthrottleWrites();

private:
    ThrottlingFactory* throttling() const;
    IProducer* producer_ = nullptr;
};

/// Twisted's ThrottlingFactory: limits the connections (maxConnectionCount,
/// more are refused) and the bandwidth of all of them together. Every
/// second it compares the bytes read (and written) in that second with
/// readLimit (writeLimit); over the limit, reading stops on every connection
/// (every registered producer is paused) for (bytes / limit - 1) seconds, so
/// the average comes back to the limit. Writes are throttled only through a
/// registered producer, as in Twisted. The checks run on `clock` while
/// there is a connection. Set the fields before the first connection.
class ThrottlingFactory : public WrappingFactory {
public:
    /// Wraps `wrapped`'s protocols; the per-second checks run on `clockRef`.
    ThrottlingFactory(Factory& wrapped, IReactorTime& clockRef) : WrappingFactory(wrapped), clock(&clockRef) {}
    /// Wrapping a ClientFactory passes its client callbacks on.
    ThrottlingFactory(ClientFactory& wrapped, IReactorTime& clockRef) : WrappingFactory(wrapped), clock(&clockRef) {}
    /// Cancels its timers.
    REACTOR_INLINE ~ThrottlingFactory() override;

    IReactorTime* clock;  ///< where the checks run
    /// At most this many connections at once; none: no limit.
    std::optional<int> maxConnectionCount;
    /// Bytes per second read, over all connections; none: no limit.
    std::optional<double> readLimit;
    /// Bytes per second written, over all connections; none: no limit.
    std::optional<double> writeLimit;
    /// Connections now (from buildProtocol until connectionLost).
    int connectionCount = 0;
    double readThisSecond = 0;     ///< bytes read since the last check
    double writtenThisSecond = 0;  ///< bytes written since the last check
    /// The pending calls (inactive when none).
    DelayedCall unthrottleReadsID, checkReadBandwidthID, unthrottleWritesID, checkWriteBandwidthID;

    /// A protocol counts bytes it wrote.
    void registerWritten(std::size_t length) { writtenThisSecond += static_cast<double>(length); }
    /// A protocol counts bytes it read.
    void registerRead(std::size_t length) { readThisSecond += static_cast<double>(length); }
    /// The read check (every second): over the limit, throttles reads for a while.
    REACTOR_INLINE void checkReadBandwidth();
    /// The write check (every second).
    REACTOR_INLINE void checkWriteBandwidth();
    /// Every connection stops reading.
    REACTOR_INLINE void throttleReads();
    /// Every connection reads again.
    REACTOR_INLINE void unthrottleReads();
    /// Every registered producer is paused.
    REACTOR_INLINE void throttleWrites();
    /// Every registered producer is resumed.
    REACTOR_INLINE void unthrottleWrites();

    /// Starts the checks with the first connection; null over maxConnectionCount.
    REACTOR_INLINE std::unique_ptr<Protocol> buildProtocol(const Address& addr) override;
    /// A ThrottlingProtocol (an override must return one too).
    REACTOR_INLINE std::unique_ptr<ProtocolWrapper> wrapProtocol(std::unique_ptr<Protocol> wrapped,
                                                                 const Address& addr) override;
    /// One fewer; the last one cancels the checks.
    REACTOR_INLINE void unregisterProtocol(ProtocolWrapper& p) override;

private:
    void cancelAll();
    template <class F>
    void forEach(F f) {
        std::vector<ProtocolWrapper*> all = protocols;  // a call may close one
        for (ProtocolWrapper* p : all) f(static_cast<ThrottlingProtocol&>(*p));
    }
};

}  // namespace policies

// ============================================================================
// ==== 10. TCP ====
// The TCP transport (one per connection), listening ports, connectors, and
// ReconnectingClientFactory. Only this section and section 3 know sockets.
// ============================================================================

namespace detail {

#if REACTOR_SEES_INTERNALS
/// The reactor internals the TCP classes use (a narrow friend interface).
struct ReactorAccess {
    static bool watch(Reactor& r, os::Fd fd, short event, const Handler& h) {
        return r.watch(fd, event, h) != Reactor::npos;
    }
    static void unwatch(Reactor& r, os::Fd fd, short events) { r.unwatch(fd, events); }
    /// True while the reactor exists: for objects a user handle can keep
    /// alive past it (a connector between attempts).
    static std::shared_ptr<const bool> aliveFlag(Reactor& r) { return r.alive_; }
    static void adopt(Reactor& r, std::shared_ptr<Owned> o);
    /// Stops owning `o`; it is freed at the end of the turn, so a method of
    /// `o` on the stack may still return through it.
    static void release(Reactor& r, Owned* o);
    static std::vector<char>& readBuffer(Reactor& r);
    static ThreadPool& resolver(Reactor& r);
    static os::Fd& spareFd(Reactor& r) { return r.spareFd_; }
    /// False for a descriptor the backend cannot watch (select(): >= FD_SETSIZE).
    static bool canWatch(os::Fd fd);
};
#endif  // REACTOR_SEES_INTERNALS

/// A seed that differs between objects and runs (time, a counter), mixed
/// with splitmix64; for jitter, not for cryptography.
std::uint64_t randomSeed();

Address toAddress(const os::SockAddr& a);

/// The reason a connection ended, from an errno value.
Failure lostFailure(int err);

/// `E` with Twisted's ConnectError wording: "<doc>: <detail>."
template <class E>
inline Failure connectError(const std::string& detail) {
    std::string base = E().message();
    if (!base.empty() && base.back() == '.') base.pop_back();
    return Failure(E(base + ": " + detail + "."));
}

/// The reason a connect failed, from an errno value (Twisted's messages).
Failure connectFailure(int err);

class TcpConnector;
class TcpConnection;
class TcpPort;

/// A TCP connection's output flow control (the in-memory network's ends
/// follow it too), here for the tests of every build to read.
struct TcpFlow {
    /// Outgoing data above this many buffered bytes pauses a streaming
    /// producer, or (with no producer registered, when a dataReceived call
    /// took it there) reading from the socket...
    static constexpr std::size_t highWaterMark = 64 * 1024;
    /// ...and at or below this many resumes it.
    static constexpr std::size_t lowWaterMark = 16 * 1024;
    /// Whether a buffer that never quite drains drops its `sent` prefix now:
    /// once it is large and at least half of the `size` bytes (a memmove of
    /// the rest, paid for by the bytes sent since the last one).
    static constexpr bool dropSentPrefix(std::size_t sent, std::size_t size) {
        return sent >= 64 * 1024 && sent * 2 >= size;
    }
};

#if REACTOR_SEES_INTERNALS
/// A connection's unsent bytes. Eight bytes until something is queued (most
/// connections never queue: writes go straight to the socket), then a
/// string whose capacity is kept for the next burst (up to a limit).
class OutputBuffer {
public:
    std::size_t size() const { return s_ ? s_->size() : 0; }
    const char* data() const { return s_ ? s_->data() : ""; }
    std::size_t capacity() const { return s_ ? s_->capacity() : 0; }
    void append(const char* p, std::size_t n) {
        if (!s_) s_ = std::make_unique<std::string>();
        s_->append(p, n);
    }
    /// Empties it, keeping the capacity (no allocation next time).
    void clear() {
        if (s_) s_->clear();
    }
    /// Drops the first `n` bytes.
    void consume(std::size_t n) {
        if (s_) s_->erase(0, n);
    }
    /// Empties it and gives the memory back.
    void release() { s_.reset(); }

private:
    std::unique_ptr<std::string> s_;
};

/// One TCP connection: the ITransport a protocol writes to. Owned by the
/// reactor; it owns its protocol and destroys it after connectionLost.
class TcpConnection final : public ITransport,
                            public Owned,
                            private IoHandler,
                            public std::enable_shared_from_this<TcpConnection> {
public:
    static constexpr std::size_t highWaterMark = TcpFlow::highWaterMark;  // see TcpFlow
    static constexpr std::size_t lowWaterMark = TcpFlow::lowWaterMark;
    /// A drained output buffer keeps at most this much capacity; a burst
    /// larger than that gives its memory back once sent.
    static constexpr std::size_t retainedBufferLimit = 128 * 1024;

    TcpConnection(Reactor& r, os::Fd fd, std::unique_ptr<Protocol> p, std::shared_ptr<TcpConnector> connector);
    ~TcpConnection() override {
        stopUsingFactory();
        os::closeFd(fd_);
    }

    /// Starts reading and hands the transport to the protocol. False if the
    /// descriptor cannot be watched (the caller closes the connection).
    bool start();

    // ---- ITransport -----------------------------------------------------

    REACTOR_INLINE void write(std::string_view data) override;
    REACTOR_INLINE void writeSequence(const std::string_view* parts, std::size_t count) override;
    REACTOR_INLINE void loseConnection() override;
    REACTOR_INLINE void abortConnection() override;
    REACTOR_INLINE void loseWriteConnection() override;
    REACTOR_INLINE Address getPeer() const override;
    Address getHost() const override { return unix_ ? Address::unixSocket(unix_->host) : toAddress(os::expand(host_)); }
    bool setTcpNoDelay(bool enabled) override { return os::validFd(fd_) && os::setNoDelay(fd_, enabled); }
    bool setTcpKeepAlive(bool enabled) override { return os::validFd(fd_) && os::setKeepAlive(fd_, enabled); }
    bool getTcpNoDelay() const override { return os::validFd(fd_) && os::getNoDelay(fd_); }
    bool getTcpKeepAlive() const override { return os::validFd(fd_) && os::getKeepAlive(fd_); }
    REACTOR_INLINE std::optional<PeerCredentials> getPeerCredentials() const override;

    /// The reading side: stop and restart reading.
    REACTOR_INLINE void pauseProducing() override;
    REACTOR_INLINE void resumeProducing() override;
    void stopProducing() override { loseConnection(); }

    REACTOR_INLINE void registerProducer(IProducer* producer, bool streaming) override;
    REACTOR_INLINE void unregisterProducer() override;

    REACTOR_INLINE void shutdownNow() override;
    REACTOR_INLINE void abandon() override;
    bool openConnection() const override { return !closing_; }
    os::Fd descriptor() const override { return fd_; }
    REACTOR_INLINE std::string describe() const override;

    /// The other end as accept() or connect() saw it (a UNIX socket keeps
    /// its names apart: a path does not fit the 20 bytes an IP end takes).
    void setPeer(const os::SockAddr& a) {
        if (a.isUnix())
            unix_ = std::make_unique<UnixNames>(UnixNames{os::unixName(a), std::string()});
        else
            peer_ = os::compact(a);
    }
    Protocol* protocol() const { return protocol_.get(); }
#if defined(REACTOR_WITH_OPENSSL)
    /// Section 10a. Puts a TLS layer between this and its protocol (before start()).
    void wrapTLS(std::shared_ptr<const tls::Context> c);
    REACTOR_INLINE void startTLS(const ssl::TLSOptions& options) override;
#endif

private:
    std::size_t pending() const { return out_.size() - outPos_; }

    /// Reads while nothing holds reading back: the protocol (pauseProducing),
    /// unsent output above the high-water mark, a close or the peer's EOF.
    void updateReading();
    void stopReading();
    void startWriting();
    void stopWriting();

    void doRead();

    void doWrite();

    /// The one way a connection ends: connectionLost exactly once, then the
    /// protocol is destroyed and the reactor frees this object after the turn.
    void closeWith(const Failure& reason, bool reset);
    /// The first half of closeWith and abandon: stop watching, close the
    /// socket (with a reset if asked), read as closed. False if already closing.
    bool closeSocket(bool reset);

    Reactor& reactor_;
    os::Fd fd_;
    std::unique_ptr<Protocol> protocol_;
    std::shared_ptr<TcpConnector> connector_;  // client side only
    // The connection is its own readiness handler, handed to the reactor as
    // a pointer that shares this object's ownership (the aliasing
    // shared_ptr constructor): watching and pausing allocate nothing, and a
    // retired handler keeps the connection alive until the end of the turn.
    void onReady(short events) override { events == os::evRead ? doRead() : doWrite(); }
    Handler handler() { return Handler(shared_from_this(), static_cast<IoHandler*>(this)); }
    /// The peer as it was when the connection was made.
    Address peerAddress() const { return unix_ ? Address::unixSocket(unix_->peer) : toAddress(os::expand(peer_)); }
    /// "TCP" or "UNIX", for log lines.
    const char* kind() const { return unix_ ? "UNIX" : "TCP"; }
    OutputBuffer out_;                         // unsent bytes, from outPos_
    std::size_t outPos_ = 0;
    os::CompactAddr peer_, host_;  // the ends, still known after the close
    struct UnixNames {
        std::string peer, host;
    };
    std::unique_ptr<UnixNames> unix_;  // a UNIX socket's ends instead
    IProducer* producer_ = nullptr;
    DelayedCall abortCall_;
    int writeError_ = 0;
    bool streaming_ = false, producerPaused_ = false;
    bool reading_ = false, writing_ = false;
    bool userPaused_ = false;    // pauseProducing() until resumeProducing()
    bool outputPaused_ = false;  // read-side backpressure: too much unsent output
    std::size_t answered_ = 0;   // unsent bytes written by dataReceived (at most pending())
    bool readShut_ = false, writeShut_ = false, wantWriteShut_ = false;
    bool aborting_ = false, closing_ = false;
    bool abandoned_ = false;  // no more user callbacks, even in a close under way
#if defined(REACTOR_WITH_OPENSSL)
    tls::TlsConnection* tls_ = nullptr;  // the TLS layer protocol_ is, if any (section 10a)
#endif
};

/// An outgoing connection attempt and its lifecycle (Twisted's
/// tcp.Connector): disconnected -> connecting -> connected -> disconnected.
class TcpConnector final : public IConnector, public Owned {
public:
    TcpConnector(Reactor& r, std::string host, int port, ClientFactory& factory, double timeout,
                 Address bindAddress)
        : reactor_(r), host_(std::move(host)), port_(port > 0 && port <= 65535 ? static_cast<std::uint16_t>(port) : 0),
          badPort_(port_ == 0 ? port : 0), factory_(factory), timeout_(timeout), bindAddress_(std::move(bindAddress)) {
        useFactory(factory);
    }
    ~TcpConnector() override {
        stopUsingFactory();
        dropSocket();
    }

    REACTOR_INLINE void connect() override;
    REACTOR_INLINE void disconnect() override;
    REACTOR_INLINE void stopConnecting() override;
    bool isConnecting() const override { return state_ == State::connecting; }
    REACTOR_INLINE Address getDestination() const override;
    REACTOR_INLINE void shutdownNow() override;
    REACTOR_INLINE void abandon() override;
    os::Fd descriptor() const override { return fd_; }
    REACTOR_INLINE std::string describe() const override;

    /// Called by the transport when the established connection ends.
    void connectionLost(const Failure& reason);
    /// Makes this a UNIX-domain connector for the path given as `host`
    /// (before connect()). `checkPID`: see Reactor::connectUNIX.
    void targetUnix(bool checkPID) {
        unix_ = true;
        checkPID_ = checkPID;
    }
    /// Bounds this attempt and its connection by `owner`'s life instead of
    /// the client factory's (endpoints: the client factory is an internal
    /// adapter, `owner` the user's factory that builds the protocols).
    void ownedBy(Factory& owner) {
        stopUsingFactory();
        useFactory(owner);
        owner_ = &owner;
    }

private:
    enum class State { disconnected, connecting, connected };

    void beginAttempt();

    /// Tries the next resolved address; `lastErr` is why the previous failed.
    void tryNext(int lastErr);

    void connectDone();

    void connected(const os::SockAddr& peer);

    void dropSocket();
    void cancelTimeout();
    /// Failures are reported from the loop, never inside connect()'s caller.
    void failSoon(Failure reason);
    void fail(const Failure& reason);
    /// After the factory's callback: if it did not reconnect, the cycle ends.
    void finishCycle();

public:
    std::shared_ptr<ClientFactory> keepFactory;  // set by the shared_ptr overload of connectTCP
#if defined(REACTOR_WITH_OPENSSL)
    std::shared_ptr<const tls::Context> tls;  // connectSSL: the connection gets a TLS layer (section 10a)
#endif

private:
    Reactor& reactor_;
    std::string host_;
    std::uint16_t port_;  // 0: the port given was out of range (badPort_)
    int badPort_;
    ClientFactory& factory_;
    double timeout_;
    Address bindAddress_;
    State state_ = State::disconnected;
    os::Fd fd_ = os::invalidFd;
    std::vector<os::SockAddr> candidates_;
    std::size_t next_ = 0;
    os::SockAddr target_;
    std::uint64_t attempt_ = 0;  // answers for an older attempt are ignored
    DelayedCall timeoutCall_, failCall_;
    TcpConnection* transport_ = nullptr;
    bool factoryStarted_ = false;  // doStart once per cycle, however often connect() retries
    bool abandoned_ = false;       // the reactor or the factory is gone: connect() refused
    bool unix_ = false, checkPID_ = false;  // a UNIX socket: host_ is its path
    Factory* owner_ = nullptr;              // see ownedBy()
    std::shared_ptr<const bool> reactorAlive_ = ReactorAccess::aliveFlag(reactor_);
};

/// A listening socket (Twisted's tcp.Port).
class TcpPort final : public Owned, public std::enable_shared_from_this<TcpPort> {
public:
    TcpPort(Reactor& r, Factory& factory) : reactor_(r), factory_(factory) {}
    ~TcpPort() override {
        stopUsingFactory();
        closeSocket();
    }

    /// Binds and listens; on failure returns the reason (and listens not).
    bool listen(int port, const ListenOptions& options, std::string& why);
    /// The same on a UNIX socket (Reactor::listenUNIX has the details).
    bool listenUnix(const std::string& path, int backlog, int mode, bool wantPID, std::string& why);

    Address getHost() const { return host_; }
    bool listening() const { return listening_; }
#if defined(REACTOR_WITH_OPENSSL)
    std::shared_ptr<const tls::Context> tls;  // listenSSL: every connection gets a TLS layer (section 10a)
#endif

    /// Stops accepting now; established connections stay open.
    void stopListening();
    void shutdownNow() override { stopListening(); }
    REACTOR_INLINE void abandon() override;
    os::Fd descriptor() const override { return fd_; }
    std::string describe() const override { return host_.type + " port listening on " + host_.str(); }

private:
    /// What listen and listenUnix share once the address is known.
    bool startListening(const os::SockAddr& a, int backlog, bool reusePort, const std::string& where,
                        std::string& why,
                        int fileMode = -1);
    void closeSocket();

    /// Accepts a bounded batch per wake-up (Twisted: 100, growing by 20 when
    /// full) so one busy listener cannot starve the rest of the loop.
    void doRead();

    /// Out of descriptors. Retrying at once would spin the CPU (the listener
    /// stays readable), so use the spare descriptor to accept and close the
    /// connection at the head of the queue, and pause accepting briefly.
    void acceptError(int err);

    Reactor& reactor_;
    Factory& factory_;
    os::Fd fd_ = os::invalidFd;
    Address host_;
    Handler handler_;
    DelayedCall resumeCall_;
    int numberAccepts_ = 100;
    bool listening_ = false;
    std::string socketFile_;  // UNIX: the file our bind() made, removed at the close
    std::string lockFile_;    // UNIX with wantPID: "<path>.lock", released at the close
};

/// listenTCP, listenUNIX and the server endpoints: a new port that `listen`
/// sets up; the port, or an empty handle and the reason (nothing raised).
template <class Listen>
ListeningPort startPort(Reactor& r, Factory& factory, std::string& why, Listen listen);
#endif  // REACTOR_SEES_INTERNALS

}  // namespace detail

/// A handle to a listening port (Twisted's IListeningPort). Copies refer to
/// the same port; the reactor keeps it open until stopListening() or
/// shutdown, whether or not a handle is kept.
class ListeningPort {
public:
    ListeningPort() = default;
    /// Wraps a port; Reactor::listenTCP makes these.
    explicit ListeningPort(std::shared_ptr<detail::TcpPort> port) : port_(std::move(port)) {}
    /// Where it listens; with port 0, the port the OS picked.
    Address getHost() const;
    /// Stops accepting (now; Twisted returns a Deferred). Established
    /// connections stay open. The factory's stopFactory runs if this was
    /// its last port.
    void stopListening();
    /// Accepting connections: the bind succeeded and stopListening() has not run.
    bool listening() const;
    /// Same as listening().
    explicit operator bool() const { return listening(); }

private:
    std::shared_ptr<detail::TcpPort> port_;
};

#if REACTOR_SEES_INTERNALS
namespace detail {
template <class Listen>
ListeningPort startPort(Reactor& r, Factory& factory, std::string& why, Listen listen) {
    auto p = std::make_shared<TcpPort>(r, factory);
    if (!listen(*p, why)) return ListeningPort();
    ReactorAccess::adopt(r, p);
    return ListeningPort(std::move(p));
}
}  // namespace detail
#endif





// ---- endpoints ----------------------------------------------------------------
//
// Twisted's endpoints: where to listen or connect, as an object or as a
// string ("tcp:8000:interface=127.0.0.1", "unix:/run/app.sock",
// "tcp:host=example.org:port=6667"), so a program takes its address from
// the command line and works over TCP or UNIX sockets unchanged.

/// Where a server listens (Twisted's IStreamServerEndpoint).
class IStreamServerEndpoint {
public:
    virtual ~IStreamServerEndpoint() = default;
    /// Starts listening. Fires with the port at once, or fails with
    /// error::CannotListenError. `factory` must outlive the port, as for
    /// listenTCP.
    virtual Deferred<ListeningPort> listen(Factory& factory) = 0;
    /// What it listens on, for logs: "TCP port 8000 on 127.0.0.1".
    virtual std::string describe() const = 0;
};

/// Where a client connects (Twisted's IStreamClientEndpoint).
class IStreamClientEndpoint {
public:
    virtual ~IStreamClientEndpoint() = default;
    /// Connects, and fires with the protocol `factory` built once its
    /// connectionMade has run; fails with the reason the attempt failed
    /// (error::ConnectionRefusedError, DNSLookupError, TimeoutError...),
    /// error::NoProtocol if the factory built none, or
    /// error::ConnectingCancelledError if cancelled while connecting.
    ///
    /// Ownership: the protocol is shared between the connection (until
    /// connectionLost has returned) and the handles you keep, so a test may
    /// read it after the close. `factory` must outlive the connection, as
    /// for connectTCP: if it is destroyed first, the attempt or connection
    /// is closed silently and the Deferred never fires. The endpoint object
    /// itself may go as soon as this returns.
    REACTOR_INLINE Deferred<std::shared_ptr<Protocol>> connect(Factory& factory);
    /// What it connects to, for logs: "TCP 127.0.0.1:8000".
    virtual std::string describe() const = 0;
    /// The primitive an endpoint type implements: starts one attempt for
    /// `factory` (which the attempt owns). `owner`, if not null, is the
    /// factory whose destruction closes the attempt and its connection.
    virtual std::shared_ptr<IConnector> connectWith(std::shared_ptr<ClientFactory> factory, Factory* owner) = 0;
};

/// TCP over IPv4 (Twisted's TCP4ServerEndpoint): listenTCP(port, factory,
/// backlog, interface). `interface` "" is every IPv4 address.
class TCP4ServerEndpoint : public IStreamServerEndpoint {
public:
    /// listenTCP(port, factory, backlog, interface) on `r`, at listen().
    TCP4ServerEndpoint(Reactor& r, int port, int backlog = defaultBacklog, std::string interface = "")
        : reactor_(r), port_(port), backlog_(backlog), interface_(std::move(interface)) {}
    REACTOR_INLINE Deferred<ListeningPort> listen(Factory& factory) override;
    REACTOR_INLINE std::string describe() const override;

protected:
    Reactor& reactor_;
    int port_;
    int backlog_;
    std::string interface_;
};

/// TCP over IPv6 (Twisted's TCP6ServerEndpoint): `interface` "::" (the
/// default) is every IPv6 address.
class TCP6ServerEndpoint : public TCP4ServerEndpoint {
public:
    /// As TCP4ServerEndpoint, on every IPv6 address unless told otherwise.
    TCP6ServerEndpoint(Reactor& r, int port, int backlog = defaultBacklog, std::string interface = "::")
        : TCP4ServerEndpoint(r, port, backlog, std::move(interface)) {}
};

/// A UNIX socket (Twisted's UNIXServerEndpoint): listenUNIX(path, factory,
/// backlog, mode, wantPID).
class UNIXServerEndpoint : public IStreamServerEndpoint {
public:
    /// listenUNIX(path, factory, backlog, mode, wantPID) on `r`, at listen().
    UNIXServerEndpoint(Reactor& r, std::string path, int backlog = defaultBacklog, int mode = 0666,
                       bool wantPID = false)
        : reactor_(r), path_(std::move(path)), backlog_(backlog), mode_(mode), wantPID_(wantPID) {}
    REACTOR_INLINE Deferred<ListeningPort> listen(Factory& factory) override;
    REACTOR_INLINE std::string describe() const override;

private:
    Reactor& reactor_;
    std::string path_;
    int backlog_;
    int mode_;
    bool wantPID_;
};

/// TCP to a host (an IP literal, or a name resolved off the loop) and
/// port (Twisted's TCP4ClientEndpoint): connectTCP's arguments.
class TCP4ClientEndpoint : public IStreamClientEndpoint {
public:
    /// connectTCP(host, port, factory, timeout, bindAddress) on `r`, at connect().
    TCP4ClientEndpoint(Reactor& r, std::string host, int port, double timeout = 30, Address bindAddress = {})
        : reactor_(r), host_(std::move(host)), port_(port), timeout_(timeout), bindAddress_(std::move(bindAddress)) {}
    REACTOR_INLINE std::string describe() const override;
    REACTOR_INLINE std::shared_ptr<IConnector> connectWith(std::shared_ptr<ClientFactory> factory,
                                                           Factory* owner) override;

private:
    Reactor& reactor_;
    std::string host_;
    int port_;
    double timeout_;
    Address bindAddress_;
};

/// Twisted's TCP6ClientEndpoint. connectTCP already tries every address a
/// name resolves to, IPv6 ones included, so this is TCP4ClientEndpoint.
using TCP6ClientEndpoint = TCP4ClientEndpoint;

/// A UNIX socket (Twisted's UNIXClientEndpoint): connectUNIX's arguments.
class UNIXClientEndpoint : public IStreamClientEndpoint {
public:
    /// connectUNIX(path, factory, timeout, checkPID) on `r`, at connect().
    UNIXClientEndpoint(Reactor& r, std::string path, double timeout = 30, bool checkPID = false)
        : reactor_(r), path_(std::move(path)), timeout_(timeout), checkPID_(checkPID) {}
    REACTOR_INLINE std::string describe() const override;
    REACTOR_INLINE std::shared_ptr<IConnector> connectWith(std::shared_ptr<ClientFactory> factory,
                                                           Factory* owner) override;

private:
    Reactor& reactor_;
    std::string path_;
    double timeout_;
    bool checkPID_;
};

/// Parses a server description (Twisted's serverFromString). Fields are
/// separated by ':' (write "\:" for a colon inside a value), positional
/// first, then name=value:
///   tcp:PORT[:interface=IP][:backlog=N]      (also port=PORT; or by
///                                            position: tcp:PORT:IP:N)
///   tcp6:PORT[:interface=IP6][:backlog=N]    (interface defaults to ::)
///   unix:PATH[:mode=OCTAL][:backlog=N][:lockfile=0|1]   (or by position)
///                                            (also address=PATH; mode 666
///                                            and lockfile=1 by default, as
///                                            in Twisted; "@name" is a Linux
///                                            abstract name)
///   ssl:PORT:privateKey=KEY.pem[:certKey=CERT.pem][:interface=IP]
///       [:backlog=N][:caCerts=CA.pem]        (REACTOR_WITH_OPENSSL only,
///                                            section 10a; "tls:" too)
/// A parameter given twice takes its last value, as in Twisted.
/// Bad input (an unknown type or parameter, a missing or malformed value)
/// raises error::ValueError naming the problem; without exceptions it is
/// logged and the endpoint returned fails every listen() with it.
REACTOR_INLINE std::shared_ptr<IStreamServerEndpoint> serverFromString(Reactor& r, std::string_view description);

/// Parses a client description (Twisted's clientFromString):
///   tcp:HOST:PORT  or  tcp:host=HOST:port=PORT[:timeout=SECONDS][:bindAddress=IP]
///   tcp6:...       (the same)
///   unix:PATH  or  unix:path=PATH[:timeout=SECONDS][:lockfile=0|1]
///   tls:HOST:PORT[:trustRoots=CA.pem][:certificate=C.pem][:privateKey=K.pem]
///       [:timeout=SECONDS][:bindAddress=IP]  (REACTOR_WITH_OPENSSL only,
///                                            section 10a; "ssl:" too;
///                                            always verified)
/// Errors as for serverFromString.
REACTOR_INLINE std::shared_ptr<IStreamClientEndpoint> clientFromString(Reactor& r, std::string_view description);

namespace detail {
/// connect() and connectProtocol: the attempt's client factory. It builds
/// the protocol (with the user's factory, or hands over the one given),
/// keeps it in a shared_ptr and gives the connection a forwarder to it.
REACTOR_INLINE Deferred<std::shared_ptr<Protocol>> connectEndpoint(IStreamClientEndpoint& endpoint, Factory* factory,
                                                                   std::shared_ptr<Protocol> given);
}  // namespace detail

/// Connects `protocol` through `endpoint` (Twisted's connectProtocol) and
/// fires with it once its connectionMade has run. You own the protocol:
/// the connection shares it until connectionLost has returned, after which
/// `transport` is null and `connected` false, and your handle stays valid.
///
///     auto d = connectProtocol(*clientFromString(r, "tcp:127.0.0.1:8000"),
///                              std::make_shared<Greeter>());
template <class P>
Deferred<std::shared_ptr<P>> connectProtocol(IStreamClientEndpoint& endpoint, std::shared_ptr<P> protocol) {
    static_assert(std::is_base_of<Protocol, P>::value, "connectProtocol: P must derive from reactor::Protocol");
    return detail::connectEndpoint(endpoint, nullptr, std::move(protocol))
        .addCallback([](std::shared_ptr<Protocol> p) { return std::static_pointer_cast<P>(std::move(p)); });
}

/// The shortest way to a connected protocol over TCP (Twisted's
/// ClientCreator): `connectProtocol<Echo>(r, "127.0.0.1", 8000)` makes a
/// P(args...) and connects it, as connectProtocol(endpoint, protocol).
template <class P, class... Args>
Deferred<std::shared_ptr<P>> connectProtocol(Reactor& r, const std::string& host, int port, Args&&... args) {
    TCP4ClientEndpoint endpoint(r, host, port);
    return connectProtocol(endpoint, std::make_shared<P>(std::forward<Args>(args)...));
}

/// A ClientFactory that reconnects with exponential backoff (Twisted's
/// ReconnectingClientFactory, with the same formula and defaults). Call
/// resetDelay() when a connection succeeds (e.g. in connectionMade), and
/// stopTrying() before shutting down. Time comes from `clock`, so tests can
/// use a Clock.
class ReconnectingClientFactory : public ClientFactory {
public:
    /// Retry timers go on `clockRef` (a Reactor, or a Clock in tests), which
    /// must outlive the factory.
    explicit ReconnectingClientFactory(IReactorTime& clockRef) : clock(&clockRef) {}
    /// The same on a Reactor, which also tells it about shutdown: a
    /// connection lost or failed while the reactor is stopping (see
    /// Reactor::stopping) is not retried.
    explicit ReconnectingClientFactory(Reactor& r) : clock(&r), reactor_(&r) {}

    /// The longest delay between attempts, in seconds.
    double maxDelay = 3600;
    /// What resetDelay() sets `delay` back to, in seconds.
    double initialDelay = 1.0;
    /// Each retry multiplies the delay by this.
    double factor = 2.7182818284590451;  // e
    /// The random spread: standard deviation as a fraction of the delay (0: none).
    double jitter = 0.119626565582;      // Twisted's: the molar Planck constant times c
    double delay = 1.0;                  ///< the current delay (initialDelay after resetDelay)
    /// Retries since the last resetDelay() (compared with maxRetries).
    int retries = 0;
    int maxRetries = -1;                 ///< -1: retry forever
    /// Retry after a failure or a loss; stopTrying() clears it, resetDelay() sets it.
    bool continueTrying = true;
    /// The connector being retried. Weak: a connector made with the
    /// shared_ptr overload of connectTCP owns its factory, and a strong
    /// reference back would keep both alive forever.
    std::weak_ptr<IConnector> connector;
    IReactorTime* clock;  ///< where the retry timers are scheduled

    /// Cancels a pending retry. A retry timer it no longer holds (one
    /// resetDelay() forgot, or another connector's) finds the factory gone
    /// and does nothing: no timer ever calls a destroyed factory.
    ~ReconnectingClientFactory() override {
        if (callID.active()) callID.cancel();
    }

    /// Remembers the connector, so stopTrying() can stop even the first attempt.
    void startedConnecting(IConnector& c) override { connector = c.weak_from_this(); }
    /// The attempt failed: retry() while continueTrying (and the reactor is not stopping).
    REACTOR_INLINE void clientConnectionFailed(IConnector& c, const Failure& reason) override;
    /// The connection ended: retry() while continueTrying (and the reactor is not stopping).
    REACTOR_INLINE void clientConnectionLost(IConnector& c, const Failure& reason) override;

    /// Schedules the next attempt: delay = min(delay * factor, maxDelay),
    /// then a normal variate with standard deviation delay * jitter.
    void retry(std::shared_ptr<IConnector> c = nullptr);
    /// Stops reconnecting: cancels a scheduled retry, and calls
    /// `connector->stopConnecting()` on the connector it knows (ignoring
    /// error::NotConnectingError), which stops an attempt in progress.
    /// Twisted does the same once a connection failed or was lost; this one
    /// also knows the connector of the first attempt (startedConnecting).
    /// Without exceptions it calls stopConnecting() only if isConnecting().
    void stopTrying();
    /// Back to the first delay and zero retries (call it once connected).
    void resetDelay();
    /// The pending retry, if any.
    DelayedCall callID;

    /// The random source for jitter; replace it for deterministic tests.
    std::function<double()> uniform01 = defaultUniform01();

private:
    /// xorshift64 from a fresh seed: plenty for jitter, no <random> cost.
    static std::function<double()> defaultUniform01();
    double normalVariate(double mean, double stddev);
    Reactor* reactor_ = nullptr;  // set by the Reactor constructor: no retry while it stops
    std::shared_ptr<bool> alive_;  // made by the first retry(); its timers hold it weakly
};

// ---- UDP ----
//
// Datagrams: no connection, no stream. One DatagramProtocol per port (not a
// factory): the port is its transport, every datagram arrives whole, with
// the address it came from. Twisted's udp.Port, DatagramProtocol,
// IUDPTransport and IMulticastTransport.
//
//   listenUDP(port, protocol)            bind; protocol.transport = the port
//     -> protocol.startProtocol()         1. say hello (write, join groups)
//     -> protocol.datagramReceived(d, a)  2. per datagram, with its sender
//     -> protocol.connectionRefused()     (a connected port only: ICMP said no)
//   stopListening() / shutdown
//     -> protocol.stopProtocol()          3. once; transport is null again

/// What a DatagramProtocol writes to: a bound UDP port (Twisted's
/// IUDPTransport and IMulticastTransport in one; a listenUDP port can use
/// the multicast calls too). Addresses are IP literals, never names (as in
/// Twisted: resolve first, off the loop). Owned by the reactor until
/// stopListening() or shutdown; a shared_ptr to it keeps the object (not the
/// socket) alive, and every call on a closed port is harmless.
class IUDPTransport {
public:
    virtual ~IUDPTransport() = default;

    /// Sends one datagram to `addr` (its host and port; the type is
    /// ignored). True if the system took it. Never queued or blocking: when
    /// the socket buffer is full the datagram is dropped (false; Twisted
    /// raises the socket error instead). Throws error::MessageLengthError
    /// for a datagram the system cannot send whole (EMSGSIZE),
    /// error::InvalidAddressError for a name or the other IP family, and
    /// error::ValueError for another peer than the connected one. A closed
    /// port, an unreachable network: false (logged or traced).
    virtual bool write(std::string_view datagram, const Address& addr) = 0;
    /// Sends one datagram to `host`:`port` (an IP literal; Twisted's tuple).
    bool write(std::string_view datagram, const std::string& host, int port) {
        Address a;
        a.type = "UDP";
        a.host = host;
        if (port < 0 || port > 65535) {
            detail::raise<error::ValueError>("write(): port " + std::to_string(port) + " is outside 0-65535");
            return false;
        }
        a.port = static_cast<std::uint16_t>(port);
        return write(datagram, a);
    }
    /// Sends to the peer given to connect() (error::RuntimeError before).
    virtual bool write(std::string_view datagram) = 0;
    /// Sends the pieces joined as ONE datagram to `addr` (Twisted's
    /// writeSequence; copies them into one string first).
    bool writeSequence(std::initializer_list<std::string_view> parts, const Address& addr) {
        std::string joined;
        for (std::string_view part : parts) joined.append(part);
        return write(joined, addr);
    }
    /// Fixes the peer (an IP literal): write(data) goes there, only its
    /// datagrams are received, and an ICMP "port unreachable" for it reaches
    /// the protocol's connectionRefused(). Once per port (Twisted: no
    /// reconnecting). error::InvalidAddressError for a name.
    virtual void connect(const std::string& host, int port) = 0;
    /// The bound address, type "UDP" (with port 0 asked, the port chosen).
    virtual Address getHost() const = 0;
    /// Closes the socket now (Twisted: at the next turn, with a Deferred);
    /// the protocol's stopProtocol() runs before this returns and nothing
    /// more is delivered, even from the datagrams of the current wake-up.
    virtual void stopListening() = 0;
    /// Bound and not stopped.
    virtual bool listening() const = 0;
    /// SO_BROADCAST: may datagrams go to a broadcast address ("<broadcast>"
    /// is 255.255.255.255, as in Twisted).
    virtual void setBroadcastAllowed(bool enabled) = 0;
    /// The SO_BROADCAST setting.
    virtual bool getBroadcastAllowed() const = 0;

    // Multicast (Twisted's IMulticastTransport).

    /// Joins the group `addr` (an IP literal) on the IPv4 interface
    /// `interface` ("": the system's choice; IPv6 groups always use it). The
    /// Deferred has fired when this returns: with nothing, or with
    /// error::MulticastJoinError (error::InvalidAddressError for a bad literal).
    virtual Deferred<void> joinGroup(const std::string& addr, const std::string& interface = "") = 0;
    /// Leaves a group joined with joinGroup (same arguments, same Deferred).
    virtual Deferred<void> leaveGroup(const std::string& addr, const std::string& interface = "") = 0;
    /// The multicast time-to-live (IPv6: hop limit), 0-255 (else error::ValueError).
    virtual void setTTL(int ttl) = 0;
    /// The multicast time-to-live (1 by default; -1 on a closed port).
    virtual int getTTL() const = 0;
    /// Whether our own multicast datagrams come back to us (on by default).
    virtual void setLoopbackMode(bool enabled) = 0;
    /// The loopback setting.
    virtual bool getLoopbackMode() const = 0;
    /// The IPv4 interface (its address) multicast datagrams leave from.
    /// False if the system refused it; error::InvalidAddressError for a non-IPv4 literal.
    virtual bool setOutgoingInterface(const std::string& addr) = 0;
    /// The outgoing interface ("0.0.0.0": the system's choice).
    virtual std::string getOutgoingInterface() const = 0;
};

namespace detail {
class UdpPort;
}

/// The base of every datagram protocol (Twisted's DatagramProtocol).
/// Override the event methods; the port calls them on the reactor thread.
///
/// Ownership: listenUDP takes the protocol by reference, as Twisted takes
/// an instance. Keep it alive while it listens; if it is destroyed first,
/// its destructor closes the port silently (no stopProtocol: the object is
/// half gone), so nothing ever calls a destroyed protocol. One port at a
/// time (Twisted asserts the same); after stopListening it can listen again.
class DatagramProtocol {
public:
    DatagramProtocol() = default;
    DatagramProtocol(const DatagramProtocol&) = delete;
    DatagramProtocol& operator=(const DatagramProtocol&) = delete;
    /// Closes the port still using it (silently).
    REACTOR_INLINE virtual ~DatagramProtocol();

    /// The port is bound and `transport` set: write, connect, join groups.
    virtual void startProtocol() {}
    /// The port closed (stopListening or shutdown); `transport` is null again.
    virtual void stopProtocol() {}
    /// One datagram from `addr` (type "UDP"). The view is valid only during
    /// the call; at most maxPacketSize bytes (a longer datagram is cut).
    virtual void datagramReceived(std::string_view datagram, const Address& addr) {
        (void)datagram;
        (void)addr;
    }
    /// A connected port only: the peer's host answered "port unreachable"
    /// (ICMP) to an earlier datagram. Called from the loop, never inside write().
    virtual void connectionRefused() {}

    /// Sets `transport` and calls doStart() (the port calls it).
    void makeConnection(IUDPTransport* t) {
        transport = t;
        doStart();
    }
    /// Counts the port, and the first one runs startProtocol() (Twisted's
    /// numPorts; counted before startProtocol, Twisted counts after, so
    /// that a stopListening() from startProtocol balances it).
    REACTOR_INLINE void doStart();
    /// The last port's stop clears `transport` and runs stopProtocol().
    REACTOR_INLINE void doStop();
    /// The name used in traces: the class name with RTTI, else "DatagramProtocol".
    REACTOR_INLINE virtual std::string logPrefix() const;

    /// The port, from makeConnection until stopProtocol; null otherwise.
    IUDPTransport* transport = nullptr;
    /// How many ports use it (0 or 1: one port at a time).
    int numPorts = 0;

private:
    friend class detail::UdpPort;
    friend class Reactor;
    detail::UdpPort* port_ = nullptr;  // the port reading for it (cleared by whichever side ends first)
};

namespace detail {
/// How much a UDP port reads per wake-up (Twisted's maxThroughput), so that
/// a flooded port cannot starve the loop; here for the tests of every build.
struct UdpLimits {
    static constexpr std::size_t maxThroughput = 256 * 1024;
    static constexpr int maxDatagramsPerRead = 256;
};
}  // namespace detail

#if REACTOR_SEES_INTERNALS
namespace detail {

/// A bound UDP socket (Twisted's udp.Port / MulticastPort). Owned by the
/// reactor while open; it reads for its protocol and is its transport.
class UdpPort final : public IUDPTransport, public Owned, public std::enable_shared_from_this<UdpPort> {
public:
    static constexpr std::size_t maxThroughput = UdpLimits::maxThroughput;  // see UdpLimits
    static constexpr int maxDatagramsPerRead = UdpLimits::maxDatagramsPerRead;

    UdpPort(Reactor& r, DatagramProtocol& p) : reactor_(r), protocol_(&p) {}
    ~UdpPort() override { closeSocket(); }

    /// Binds; on failure returns the reason (and is closed).
    bool bind(std::uint16_t port, const os::SockAddr& where, std::size_t maxPacketSize, bool listenMultiple,
              std::string& why);
    /// Links the protocol, starts it, then reads (unless it stopped the port).
    void start();

    using IUDPTransport::write;
    REACTOR_INLINE bool write(std::string_view datagram, const Address& addr) override;
    REACTOR_INLINE bool write(std::string_view datagram) override;
    REACTOR_INLINE void connect(const std::string& host, int port) override;
    Address getHost() const override { return host_; }
    REACTOR_INLINE void stopListening() override;
    bool listening() const override { return listening_; }
    REACTOR_INLINE void setBroadcastAllowed(bool enabled) override;
    bool getBroadcastAllowed() const override { return os::validFd(fd_) && os::getBroadcast(fd_); }
    REACTOR_INLINE Deferred<void> joinGroup(const std::string& addr, const std::string& interface) override;
    REACTOR_INLINE Deferred<void> leaveGroup(const std::string& addr, const std::string& interface) override;
    REACTOR_INLINE void setTTL(int ttl) override;
    int getTTL() const override { return os::validFd(fd_) ? os::getMulticastTTL(fd_, ipv6_) : -1; }
    REACTOR_INLINE void setLoopbackMode(bool enabled) override;
    bool getLoopbackMode() const override { return os::validFd(fd_) && os::getMulticastLoop(fd_, ipv6_); }
    REACTOR_INLINE bool setOutgoingInterface(const std::string& addr) override;
    std::string getOutgoingInterface() const override { return os::validFd(fd_) ? os::getMulticastInterface(fd_) : ""; }

    void shutdownNow() override { stopListening(); }
    REACTOR_INLINE void abandon() override;
    os::Fd descriptor() const override { return fd_; }
    REACTOR_INLINE std::string describe() const override;

private:
    void doRead();
    /// Sends, mapping errno as Twisted does; `to` null: the connected peer.
    bool send(std::string_view datagram, const os::SockAddr* to, const Address& shown);
    /// ECONNREFUSED for the connected peer: connectionRefused from the loop.
    void refusedSoon();
    void deliverRefused();
    /// Parses an IP literal of this port's family, or raises InvalidAddressError.
    bool parsePeer(const std::string& host, std::uint16_t port, os::SockAddr& out, const char* what);
    Deferred<void> changeGroup(const std::string& addr, const std::string& interface, bool join);
    /// Unlinks the protocol (and returns it, or null if none was linked).
    DatagramProtocol* unlinkProtocol();
    void closeSocket();

    Reactor& reactor_;
    DatagramProtocol* protocol_;  // null once unlinked (stopped, abandoned, protocol destroyed)
    os::Fd fd_ = os::invalidFd;
    bool ipv6_ = false;
    bool listening_ = false;
    bool connected_ = false;
    bool warnedTruncation_ = false;
    Address host_;
    Address peer_;                // connect()'s peer
    std::vector<char> buffer_;    // maxPacketSize bytes, reused for every datagram
    Address from_;                // the sender, reused (no allocation per datagram)
    Handler handler_;
    DelayedCall refusedCall_;
};

}  // namespace detail
#endif  // REACTOR_SEES_INTERNALS

// ============================================================================
// ==== 10a. TLS ====
// TLS over any TCP connection, with OpenSSL, compiled only when the program
// defines REACTOR_WITH_OPENSSL (and links -lssl -lcrypto): without it this
// section is empty and the header includes nothing of OpenSSL.
//
// Twisted's design (twisted.protocols.tls.TLSMemoryBIOProtocol): TLS is a
// layer between the TCP transport and your protocol. It is the TCP
// connection's protocol, and your protocol's transport:
//
//     socket <-> TcpConnection <-> detail::TlsConnection <-> your Protocol
//                 (ciphertext:      (OpenSSL on two memory   (plaintext, the
//                  buffering,        buffers: never touches   usual events)
//                  backpressure)     a socket, never blocks)
//
// Your protocol is unchanged: connectionMade at once (what it writes before
// the handshake completes is sent right after it), dataReceived with
// plaintext, connectionLost exactly once. A failed handshake (a certificate
// that does not verify, no shared protocol version) or one that takes too
// long reaches connectionLost as an error::SSLError, as in Twisted; a
// client factory gets it in clientConnectionLost (the TCP connection was
// made). Every OpenSSL call is behind detail::tls.
// ============================================================================

#if defined(REACTOR_WITH_OPENSSL)

namespace error {
/// TLS failed: the handshake (no common version or cipher, a bad
/// certificate, an alert from the peer) or a corrupt record. The message
/// says what OpenSSL said. A ConnectionLost, for code that only asks that.
class SSLError : public ErrorType<SSLError, ConnectionLost> {
public:
    static constexpr const char* typeName = "SSLError";
    explicit SSLError(std::string message = "TLS error.") : ErrorType(std::move(message)) {}
};
/// The peer's certificate did not verify. The message names the host, the
/// reason (OpenSSL's: "certificate has expired", "Hostname mismatch",
/// "self-signed certificate"...) and the certificate's subject.
class CertificateError : public ErrorType<CertificateError, SSLError> {
public:
    static constexpr const char* typeName = "CertificateError";
    explicit CertificateError(std::string message = "The peer's certificate did not verify.")
        : ErrorType(std::move(message)) {}
};
/// The handshake did not complete within the options' handshakeTimeout.
class TLSHandshakeTimeout : public ErrorType<TLSHandshakeTimeout, SSLError> {
public:
    static constexpr const char* typeName = "TLSHandshakeTimeout";
    explicit TLSHandshakeTimeout(std::string message = "The TLS handshake timed out.")
        : ErrorType(std::move(message)) {}
};
}  // namespace error

namespace detail {
namespace tls {
struct Context;
}
}  // namespace detail

namespace ssl {

/// PEM text (certificates, a private key), or the name of a file holding
/// it. Made by pemFile() and pemData().
struct PEM {
    std::string text;  ///< the PEM itself, or
    std::string path;  ///< a file to read it from
    /// Neither text nor a file: not given.
    bool empty() const { return text.empty() && path.empty(); }
};
/// PEM read from the file at `path` (when the options are made).
inline PEM pemFile(std::string path) { return PEM{std::string(), std::move(path)}; }
/// PEM given as text ("-----BEGIN CERTIFICATE-----...").
inline PEM pemData(std::string text) { return PEM{std::move(text), std::string()}; }

/// Which certificates a client trusts (Twisted's trustRoot).
struct TrustRoot {
    /// The system's store, given CA certificates, or no verification.
    enum class Kind { platform, pem, none };
    Kind kind = Kind::platform;  ///< which of the three
    PEM certificates;            ///< Kind::pem: the CA certificates
};
/// The system's trust store (Debian: /etc/ssl/certs): the default.
inline TrustRoot platformTrust() { return TrustRoot{}; }
/// Only these CA certificates (a private CA, a test CA).
inline TrustRoot trustRoot(PEM caCertificates) { return TrustRoot{TrustRoot::Kind::pem, std::move(caCertificates)}; }
/// No verification at all: any certificate, any name. A man in the middle
/// reads and changes everything. Making options with it logs a warning.
inline TrustRoot insecureNoVerify() { return TrustRoot{TrustRoot::Kind::none, PEM{}}; }

/// A client's settings beyond the host name (optionsForClientTLS).
struct ClientTLSSettings {
    /// Who may sign the server's certificate.
    TrustRoot trust = platformTrust();
    /// A client certificate (chain, leaf first) and its key, for servers
    /// that ask for one. Both or neither.
    PEM certificate, privateKey;
    /// ALPN protocols to offer, most preferred first ("h2", "http/1.1").
    std::vector<std::string> acceptableProtocols;
    /// Seconds the handshake may take before the connection is closed
    /// with error::TLSHandshakeTimeout (<= 0: no limit).
    double handshakeTimeout = 30;
};

/// A server's settings (Twisted's CertificateOptions).
struct ServerTLSSettings {
    /// The certificate chain, leaf first, and its private key.
    PEM certificate, privateKey;
    /// Not empty: clients must present a certificate signed by one of these
    /// CAs (the handshake fails otherwise).
    PEM requireClientCertificate;
    /// ALPN protocols accepted, most preferred first.
    std::vector<std::string> acceptableProtocols;
    /// As ClientTLSSettings::handshakeTimeout.
    double handshakeTimeout = 30;
};

/// What TLS a connection speaks: a client's or a server's configuration,
/// made once and shared by every connection that uses it (an OpenSSL
/// SSL_CTX). Copies share it. Made by optionsForClientTLS and
/// serverOptions; a default-made one is not valid().
class TLSOptions {
public:
    /// Not valid: a connection made with it fails (never falls back to plaintext).
    TLSOptions() = default;
    /// Wraps a made configuration (optionsForClientTLS and serverOptions do).
    explicit TLSOptions(std::shared_ptr<const detail::tls::Context> c) : context_(std::move(c)) {}
    /// Made without error (a bad certificate or key file is an error).
    REACTOR_INLINE bool valid() const;
    /// Why it is not valid ("" if it is).
    REACTOR_INLINE std::string error() const;
    /// The shared configuration (for the transports).
    const std::shared_ptr<const detail::tls::Context>& context() const { return context_; }

private:
    std::shared_ptr<const detail::tls::Context> context_;
};

/// Options for a client connecting to `hostname` (Twisted's
/// optionsForClientTLS): TLS 1.2 or later; the server's certificate must
/// chain to `settings.trust` (the system's trust store by default) and
/// name `hostname` (a DNS name, or an IP literal matched against the
/// certificate's IP addresses); SNI sends `hostname` (not for an IP).
/// Bad settings (a missing file, a malformed PEM) raise error::ValueError
/// naming the problem; without exceptions that is logged and the options
/// returned make every connection fail with it.
REACTOR_INLINE TLSOptions optionsForClientTLS(const std::string& hostname, const ClientTLSSettings& settings = {});
/// Options for a server: TLS 1.2 or later, `settings.certificate` and
/// `settings.privateKey` (checked to match); client certificates as
/// `settings.requireClientCertificate` says. Errors as optionsForClientTLS.
REACTOR_INLINE TLSOptions serverOptions(const ServerTLSSettings& settings);

/// The TLS side of a transport (Twisted's ISSLTransport), for a protocol
/// that wants to know what was negotiated: `transport->getTLS()`.
class ISSLTransport : public ITransport {
public:
    /// The handshake has completed (the peer is verified, if asked).
    virtual bool handshakeDone() const = 0;
    /// The ALPN protocol agreed on, "" if none.
    virtual std::string negotiatedProtocol() const = 0;
    /// The peer certificate's subject ("/CN=example.org"), "" if none.
    virtual std::string peerCertificateSubject() const = 0;
    /// "TLSv1.3", "TLSv1.2"; "" before the handshake.
    virtual std::string protocolVersion() const = 0;
    /// The OpenSSL SSL* of the connection (Twisted's getHandle), for what
    /// this API does not cover. Null once the connection is gone.
    virtual void* getHandle() const = 0;
};

}  // namespace ssl

/// TLS over TCP (Twisted's SSL4ServerEndpoint): listenSSL(port, factory,
/// options, {interface, backlog}). The string form: serverFromString's
/// `ssl:PORT:certKey=CERT.pem:privateKey=KEY.pem`.
class SSL4ServerEndpoint : public TCP4ServerEndpoint {
public:
    /// listenSSL on `r` with `options` (ssl::serverOptions), at listen().
    SSL4ServerEndpoint(Reactor& r, int port, ssl::TLSOptions options, int backlog = defaultBacklog,
                       std::string interface = "")
        : TCP4ServerEndpoint(r, port, backlog, std::move(interface)), options_(std::move(options)) {}
    REACTOR_INLINE Deferred<ListeningPort> listen(Factory& factory) override;
    REACTOR_INLINE std::string describe() const override;

private:
    ssl::TLSOptions options_;
};

/// TLS to a host and port (Twisted's SSL4ClientEndpoint): connectSSL's
/// arguments. The string form: clientFromString's `tls:HOST:PORT`.
class SSL4ClientEndpoint : public IStreamClientEndpoint {
public:
    /// connectSSL(host, port, factory, options, timeout, bindAddress) on `r`, at connect().
    SSL4ClientEndpoint(Reactor& r, std::string host, int port, ssl::TLSOptions options, double timeout = 30,
                       Address bindAddress = {})
        : reactor_(r), host_(std::move(host)), port_(port), options_(std::move(options)), timeout_(timeout),
          bindAddress_(std::move(bindAddress)) {}
    REACTOR_INLINE std::string describe() const override;
    REACTOR_INLINE std::shared_ptr<IConnector> connectWith(std::shared_ptr<ClientFactory> factory,
                                                           Factory* owner) override;

private:
    Reactor& reactor_;
    std::string host_;
    int port_;
    ssl::TLSOptions options_;
    double timeout_;
    Address bindAddress_;
};

#if REACTOR_SEES_INTERNALS
namespace detail {
namespace tls {

/// A TLSOptions' shared state: the SSL_CTX (an opaque pointer here, so
/// that OpenSSL's headers stay out of every declaration) and the settings
/// each connection needs.
struct Context {
    Context() = default;
    Context(const Context&) = delete;
    Context& operator=(const Context&) = delete;
    REACTOR_INLINE ~Context();
    void* ctx = nullptr;  // SSL_CTX*
    bool client = true;
    bool verify = true;
    std::string hostname;
    double handshakeTimeout = 30;
    std::string error;  // why it could not be made
    std::vector<unsigned char> alpn;  // ALPN list, wire format
};

/// How many TlsConnection reads are on this thread's stack.
int& readNesting();

/// serverFromString's and clientFromString's `ssl:`/`tls:` types: the
/// endpoint, or null with d.error set.
std::shared_ptr<IStreamServerEndpoint> serverEndpoint(Reactor& r, EndpointDescription& d);
std::shared_ptr<IStreamClientEndpoint> clientEndpoint(Reactor& r, EndpointDescription& d);

/// Both connectSSL overloads and SSL4ClientEndpoint (`keep`: the factory
/// to own, if any; `owner`: see TcpConnector::ownedBy).
std::shared_ptr<IConnector> connect(Reactor& r, const std::string& host, int port, ClientFactory& factory,
                                    std::shared_ptr<ClientFactory> keep, const ssl::TLSOptions& options,
                                    double timeout, const Address& bindAddress, Factory* owner = nullptr);

/// Makes a context (errors in `error`).
REACTOR_INLINE std::shared_ptr<Context> makeClientContext(const std::string& hostname,
                                                          const ssl::ClientTLSSettings& s);
REACTOR_INLINE std::shared_ptr<Context> makeServerContext(const ssl::ServerTLSSettings& s);

/// One connection's OpenSSL state: an SSL over two memory buffers. Bytes
/// from the network go in with feed(), bytes for the network come out
/// with takeOutput(); nothing here touches a socket.
class Session {
public:
    enum class Status { done, wantMore, closed, failed };
    REACTOR_INLINE explicit Session(const Context& c);
    REACTOR_INLINE ~Session();
    Session(const Session&) = delete;
    Session& operator=(const Session&) = delete;
    /// Set up without error (else error() says why).
    bool ok() const { return ssl_ != nullptr; }
    /// Network bytes received.
    REACTOR_INLINE void feed(std::string_view cipher);
    /// Network bytes to send (empties the output buffer); "" if none.
    REACTOR_INLINE std::string_view pendingOutput();
    REACTOR_INLINE void consumeOutput();
    /// Drives the handshake: done, wantMore (waiting for the peer), failed.
    REACTOR_INLINE Status handshake();
    /// Plaintext into `buf`: done (`n` bytes), wantMore, closed (the peer's
    /// close_notify), failed.
    REACTOR_INLINE Status read(char* buf, std::size_t size, std::size_t& n);
    /// Encrypts all of `data` into the output buffer; false on failure.
    REACTOR_INLINE bool write(std::string_view data);
    /// Queues our close_notify.
    REACTOR_INLINE void shutdown();
    /// The failure after a `failed` status: what OpenSSL said, or the
    /// verification error with the host and the certificate's subject.
    REACTOR_INLINE Failure failure(const std::string& when) const;
    REACTOR_INLINE std::string negotiatedProtocol() const;
    REACTOR_INLINE std::string peerSubject() const;
    REACTOR_INLINE std::string version() const;
    REACTOR_INLINE std::string cipher() const;
    void* handle() const { return ssl_; }
    const std::string& error() const { return error_; }

    // What the verify callback saw (the first certificate that failed).
    long verifyError = 0;
    int verifyDepth = -1;
    std::string verifySubject;

private:
    REACTOR_INLINE Status status(int ret);
    const Context& context_;
    void* ssl_ = nullptr;   // SSL*
    void* wbio_ = nullptr;  // BIO* we read the network bytes from
    void* rbio_ = nullptr;  // BIO* we write the received bytes into
    std::string error_;
    std::string lastError_;  // OpenSSL's error queue at the last failure
};

/// The TLS layer of one connection (Twisted's TLSMemoryBIOProtocol): the
/// TCP connection's protocol, and `inner`'s transport. It owns `inner`.
class TlsConnection final : public Protocol, public ssl::ISSLTransport {
public:
    REACTOR_INLINE TlsConnection(Reactor& r, std::shared_ptr<const Context> c, std::unique_ptr<Protocol> inner);
    REACTOR_INLINE ~TlsConnection() override;

    /// startTLS: the TCP connection `tcp` is established and `inner`
    /// already connected; start the handshake without connectionMade.
    REACTOR_INLINE void startOn(ITransport* tcp);
    Protocol* inner() const { return inner_.get(); }
    /// The reason connectionLost gave the protocol (the TCP transport's
    /// `tcpReason` unless TLS had its own), for the client factory.
    Failure lostReason(const Failure& tcpReason) const { return finalReason_ ? *finalReason_ : tcpReason; }

    // ---- Protocol (the TCP side) ----------------------------------------
    REACTOR_INLINE void connectionMade() override;
    REACTOR_INLINE void dataReceived(std::string_view data) override;
    REACTOR_INLINE void connectionLost(const Failure& reason) override;
    bool halfCloseable() const override { return true; }  // EOF: close_notify or truncation? (readConnectionLost)
    REACTOR_INLINE void readConnectionLost() override;
    REACTOR_INLINE void writeConnectionLost() override;
    REACTOR_INLINE std::string logPrefix() const override;

    // ---- ITransport (the protocol's side) -------------------------------
    REACTOR_INLINE void write(std::string_view data) override;
    REACTOR_INLINE void writeSequence(const std::string_view* parts, std::size_t count) override;
    REACTOR_INLINE void loseConnection() override;
    REACTOR_INLINE void abortConnection() override;
    REACTOR_INLINE void loseWriteConnection() override;
    Address getPeer() const override { return tcp_ ? tcp_->getPeer() : peer_; }
    Address getHost() const override { return tcp_ ? tcp_->getHost() : host_; }
    REACTOR_INLINE void registerProducer(IProducer* producer, bool streaming) override;
    REACTOR_INLINE void unregisterProducer() override;
    REACTOR_INLINE void pauseProducing() override;
    REACTOR_INLINE void resumeProducing() override;
    void stopProducing() override { loseConnection(); }
    bool setTcpNoDelay(bool enabled) override { return tcp_ && tcp_->setTcpNoDelay(enabled); }
    bool setTcpKeepAlive(bool enabled) override { return tcp_ && tcp_->setTcpKeepAlive(enabled); }
    bool getTcpNoDelay() const override { return tcp_ && tcp_->getTcpNoDelay(); }
    bool getTcpKeepAlive() const override { return tcp_ && tcp_->getTcpKeepAlive(); }
    REACTOR_INLINE void startTLS(const ssl::TLSOptions& options) override;
    ssl::ISSLTransport* getTLS() override { return this; }

    // ---- ISSLTransport ---------------------------------------------------
    bool handshakeDone() const override { return handshakeDone_; }
    std::string negotiatedProtocol() const override { return session_ ? session_->negotiatedProtocol() : ""; }
    std::string peerCertificateSubject() const override { return session_ ? session_->peerSubject() : ""; }
    std::string protocolVersion() const override { return handshakeDone_ && session_ ? session_->version() : ""; }
    void* getHandle() const override { return session_ ? session_->handle() : nullptr; }

private:
    /// Sets up the session and starts the handshake (a client speaks first).
    void begin();
    void checkHandshake();
    /// Delivers the plaintext OpenSSL has, while the protocol reads.
    void flushReceive();
    /// Hands OpenSSL's output to the TCP transport.
    void flushSend();
    void writeNow(std::string_view data);
    /// After the handshake: the writes made before it, then a pending close.
    void unbufferPendingWrites();
    /// Our close_notify, then the TCP close.
    void finishClose();
    /// TLS is over (an error, the peer's close_notify, a timeout): remember
    /// the reason connectionLost will give, and close the TCP connection.
    void tlsFailed(const Failure& reason, bool abort);
    void trace(const std::string& line) const;

    Reactor& reactor_;
    std::shared_ptr<const Context> context_;
    std::unique_ptr<Protocol> inner_;
    std::unique_ptr<Session> session_;
    ITransport* tcp_ = nullptr;  // the TCP transport (Protocol::transport), null once lost
    Address peer_, host_;        // remembered for after the close
    std::string appSendBuffer_;  // written before the handshake completed
    std::optional<Failure> reason_;  // what connectionLost will report instead of the TCP reason
    std::optional<Failure> finalReason_;  // what it reported
    DelayedCall handshakeTimer_;  // also bounds the wait for the peer's close_notify
    IProducer* producer_ = nullptr;
    // A producer registered before the handshake completed: it is handed to
    // the TCP transport after the buffered writes (until then its writes
    // pile up here, so a streaming one is paused above the high-water mark).
    bool producerWaiting_ = false, producerStreaming_ = false, producerPausedHere_ = false;
    bool handshakeDone_ = false;
    bool lost_ = false;          // TLS is over: nothing more in or out (Twisted's _lostTLSConnection)
    bool closeAfterHandshake_ = false, writeShutAfterHandshake_ = false;
    bool shutdownSent_ = false;  // our close_notify went out
    bool awaitingClose_ = false; // we closed: the TCP closes at the peer's close_notify or EOF
    bool peerClosed_ = false;    // the peer's close_notify arrived
    bool readPaused_ = false, receiving_ = false;
    bool innerHalfClosed_ = false;  // readConnectionLost given to the protocol
};

}  // namespace tls
}  // namespace detail
#endif  // REACTOR_SEES_INTERNALS

#endif  // REACTOR_WITH_OPENSSL

// ============================================================================
// ==== 11. BASIC FRAMING ====
// Protocols that cut a byte stream into messages. TCP delivers bytes, not
// messages: one dataReceived may carry half a message, or three and a bit.
// These classes buffer the bytes and call back once per complete message.
//   LineReceiver        lines ("\r\n"), with a raw mode for binary payloads
//   LineOnlyReceiver    lines only: simpler and a little faster
//   NetstringReceiver   "<length>:<bytes>,"
//   Int32/16/8StringReceiver  a big-endian length prefix, then the bytes
// Every callback runs on the reactor thread, inside dataReceived. The
// string_view handed to a callback is valid only during that call.
// ============================================================================

namespace error {
/// sendString was given more bytes than the length prefix can encode
/// (Twisted's basic.StringTooLongError).
class StringTooLongError : public ErrorType<StringTooLongError, ValueError> {
public:
    static constexpr const char* typeName = "StringTooLongError";
    explicit StringTooLongError(std::string message = "String too long.");
};
}  // namespace error

namespace detail {

/// `a + b` without wrapping around (a huge MAX_LENGTH means "no limit").
std::size_t addSaturated(std::size_t a, std::size_t b);

/// Receive-side buffer shared by the framing protocols: `data` holds bytes
/// from `pos` on not yet delivered. Callbacks get views into `data`, so while
/// one runs, bytes that arrive re-entrantly (setLineMode(extra), a nested
/// dataReceived) go to `incoming`; merge() moves them over once no view is
/// outstanding. Consumed bytes are erased once per dataReceived, so feeding
/// byte by byte or in huge chunks stays linear.
struct FrameBuffer {
    std::string data;
    std::string incoming;
    std::size_t pos = 0;
    bool busy = false;  ///< a dataReceived is on the stack

    std::size_t size() const { return data.size() - pos + incoming.size(); }
    std::string_view pending() const { return std::string_view(data).substr(pos); }
    /// Appends newly received bytes, behind anything still in `incoming`.
    void append(std::string_view bytes);
    /// Moves re-entrant arrivals behind the buffered bytes. Only call when no
    /// view into `data` is held by a callback.
    void merge();
    void compact();
    /// Removes and returns everything buffered (both parts). Unless
    /// `noViews`, `data` is not reallocated, so a view that a running
    /// callback holds stays valid.
    std::string take(bool noViews = false);
    void clear();
};

/// Clears FrameBuffer::busy when dataReceived unwinds, even through an
/// exception thrown by a user callback (the reactor catches it at its edge).
struct BusyScope {
    explicit BusyScope(bool& flag) : flag_(flag) { flag_ = true; }
    ~BusyScope() { flag_ = false; }
    BusyScope(const BusyScope&) = delete;
    BusyScope& operator=(const BusyScope&) = delete;

private:
    bool& flag_;
};

/// dataReceived for a protocol that parses with `feed`: bytes that arrive
/// while one of its callbacks is running (it re-entered dataReceived) wait
/// in `queued` and are fed, in order, once the running feed returns.
template <class Feed>
void feedInOrder(bool& busy, std::string& queued, std::string_view data, Feed feed) {
    if (busy) {
        queued.append(data.data(), data.size());
        return;
    }
    BusyScope scope(busy);
    feed(data);
    while (!queued.empty()) {
        std::string more;
        more.swap(queued);
        feed(more);
    }
}

}  // namespace detail

/// A protocol that can hold delivery of what it has framed (Twisted's
/// _PauseableMixin): as a producer, pausing it stops both the callbacks and
/// the transport's reading; resuming delivers what was held, in order.
/// The base of LineReceiver and IntNStringReceiver.
class PauseableProtocol : public Protocol, public IProducer {
public:
    /// Stop delivering messages (buffered ones wait) and stop reading.
    REACTOR_INLINE void pauseProducing() override;
    /// Start reading again and deliver what was held, in order.
    REACTOR_INLINE void resumeProducing() override;
    /// Stops delivering messages for good and stops the transport (on TCP:
    /// loseConnection()).
    REACTOR_INLINE void stopProducing() override;
    /// pauseProducing() (or stopProducing()) is in effect.
    bool paused() const { return paused_; }

protected:
    bool paused_ = false;
};

/// Splits incoming data into lines (Twisted's LineReceiver), with a raw
/// mode for binary payloads. Semantics follow Twisted exactly:
/// - a line longer than MAX_LENGTH calls lineLengthExceeded (default: close
///   the connection): when its delimiter arrives, with line + delimiter +
///   everything buffered after it; and, with no delimiter, as soon as
///   MAX_LENGTH + delimiter.size() bytes are buffered, with all of them.
///   Either way the buffer is emptied, so it never holds more than
///   MAX_LENGTH + delimiter + one read;
/// - a MAX_LENGTH line is accepted even when its delimiter arrives split
///   across reads (Twisted #6556);
/// - setRawMode(), setLineMode(), pauseProducing(), a changed delimiter or
///   loseConnection() inside lineReceived take effect at the very next byte:
///   the rest of the buffer goes to rawDataReceived in the same call, or
///   waits for resumeProducing(), or (after loseConnection) stays buffered.
///   Nothing is lost, reordered or delivered twice.
/// - once transport->disconnecting is set, no more lines are delivered
///   (Twisted checks only after each lineReceived, so a later read could
///   still deliver one line; here it does not depend on how reads are cut);
///   later bytes are kept for clearLineBuffer() up to MAX_LENGTH +
///   delimiter, then discarded.
class LineReceiver : public PauseableProtocol {
public:
    /// The line delimiter; settable per instance, even from lineReceived.
    std::string delimiter = "\r\n";
    /// The longest line accepted (without delimiter).
    std::size_t MAX_LENGTH = 16384;

    /// Called by dataReceived for each complete line, without its delimiter.
    virtual void lineReceived(std::string_view line) = 0;
    /// Called by dataReceived in raw mode with every byte buffered so far.
    virtual void rawDataReceived(std::string_view data) { (void)data; }
    /// Called by dataReceived for a line over MAX_LENGTH (see the class
    /// comment for `line`); the buffer is already empty. Default: close the
    /// connection (Twisted's transport.loseConnection()).
    REACTOR_INLINE virtual void lineLengthExceeded(std::string_view line);

    /// Sends `line` followed by the delimiter (no escaping: a delimiter
    /// inside `line` makes two lines at the peer, as in Twisted).
    void sendLine(std::string_view line);
    /// From now on (the very next buffered byte) data goes to rawDataReceived.
    void setRawMode() { lineMode_ = false; }
    /// From now on data is split into lines. `extra` (bytes that
    /// rawDataReceived did not consume) is processed first: call it from
    /// rawDataReceived, or from outside any callback.
    void setLineMode(std::string_view extra = {});
    /// Twisted's `line_mode`.
    bool lineMode() const { return lineMode_; }
    /// Returns and discards everything received but not yet delivered. Safe
    /// inside lineReceived: the current line's view stays valid.
    std::string clearLineBuffer();
    /// Bytes buffered and not yet delivered (for tests and monitoring).
    std::size_t bufferedSize() const { return buf_.size(); }

    /// Called by the transport with each chunk read. Re-entrant calls (from
    /// inside a callback) only queue the bytes.
    REACTOR_INLINE void dataReceived(std::string_view data) override;

private:
    void process();

    bool closing() const { return transport && transport->disconnecting; }

    /// For the trace: a line over MAX_LENGTH is about to be refused.
    void traceExceeded(std::size_t length);

    detail::FrameBuffer buf_;
    std::size_t searchFrom_ = 0;  // offset in buf_.pending() where the search resumes
    std::string searchDelimiter_ = "\r\n";
    bool lineMode_ = true;
};

/// Lines only (Twisted's LineOnlyReceiver): no raw mode, no pausing, a
/// little faster. Differences from LineReceiver, all Twisted's:
/// - an over-long line whose delimiter arrived calls lineLengthExceeded
///   with that line alone; the complete lines after it in the same read are
///   dropped;
/// - an unterminated tail calls lineLengthExceeded when it is strictly longer
///   than MAX_LENGTH (a partial delimiter counts);
/// - once transport->disconnecting is set, complete lines are dropped.
/// One deliberate difference: after lineLengthExceeded(tail) the tail is
/// discarded, so the buffer stays bounded even if the override does not
/// close the connection (Twisted keeps it, #7500).
class LineOnlyReceiver : public Protocol {
public:
    /// The line delimiter; must not be empty.
    std::string delimiter = "\r\n";
    /// The longest line accepted (without delimiter).
    std::size_t MAX_LENGTH = 16384;

    /// Called by dataReceived for each complete line, without its delimiter.
    virtual void lineReceived(std::string_view line) = 0;
    /// Called by dataReceived for a line over MAX_LENGTH. Default: close.
    REACTOR_INLINE virtual void lineLengthExceeded(std::string_view line);
    /// Sends `line` followed by the delimiter.
    void sendLine(std::string_view line);
    /// Bytes buffered and not yet delivered (for tests and monitoring).
    std::size_t bufferedSize() const { return buffer_.size() + queued_.size(); }

    /// Called by the transport with each chunk read. Re-entrant calls only
    /// queue the bytes; they are processed when the outer call finishes.
    REACTOR_INLINE void dataReceived(std::string_view data) override;

private:
    void feed(std::string_view data);

    std::string buffer_;  // the unterminated tail
    std::string queued_;  // arrived re-entrantly
    bool busy_ = false;
};

/// Netstrings, "<decimal length>:<bytes>," (Twisted's NetstringReceiver).
/// A malformed length (not a decimal, a leading zero, no digits before ':'),
/// a length over MAX_LENGTH (detected as soon as the digits pass it), or a
/// missing ',' makes the peer broken: Twisted's behaviour, brokenPeer is
/// set, the reason is logged (warning) and transport->loseConnection() is
/// called; everything received afterwards is ignored.
class NetstringReceiver : public Protocol {
public:
    /// The longest string accepted.
    std::size_t MAX_LENGTH = 99999;
    /// Set when the peer sent a malformed netstring.
    bool brokenPeer = false;

    /// Called by dataReceived for each complete string (may be empty).
    virtual void stringReceived(std::string_view string) = 0;

    /// Sends `string` as a netstring ("" is sent as "0:,").
    void sendString(std::string_view string);
    /// Bytes buffered and not yet delivered (for tests and monitoring).
    std::size_t bufferedSize() const { return payload_.size() + queued_.size(); }

    /// Called by the transport with each chunk read. Re-entrant calls only
    /// queue the bytes.
    REACTOR_INLINE void dataReceived(std::string_view data) override;

private:
    enum class State { length, payload, comma };

    void feed(std::string_view data);
    void reset();
    void fail(const std::string& why);

    State state_ = State::length;
    std::size_t length_ = 0;
    std::size_t digits_ = 0;
    std::string payload_;  // a string that arrived in pieces
    std::string queued_;   // arrived re-entrantly
    bool busy_ = false;
};

/// Strings with a big-endian unsigned length prefix of `prefixLength` bytes
/// (Twisted's IntNStringReceiver). Use Int32StringReceiver,
/// Int16StringReceiver or Int8StringReceiver. Pausable like LineReceiver:
/// pauseProducing() inside stringReceived holds the following strings until
/// resumeProducing().
class IntNStringReceiver : public PauseableProtocol {
public:
    /// A length prefix of `prefixBytes` bytes (Twisted uses 1, 2 or 4); outside
    /// 1 to 8 it is an error::ValueError (without exceptions: logged, 4 is used).
    explicit IntNStringReceiver(std::size_t prefixBytes);

    /// The size of the length prefix in bytes (1 to 8), fixed at construction.
    const std::size_t prefixLength;
    /// The longest string accepted.
    std::size_t MAX_LENGTH = 99999;

    /// Called by dataReceived for each complete string (may be empty).
    virtual void stringReceived(std::string_view string) = 0;
    /// Called by dataReceived when a prefix announces more than MAX_LENGTH
    /// bytes. Default: close the connection. The stream cannot be re-synced,
    /// so the buffer is discarded and later data ignored (Twisted keeps it
    /// and calls again on every read; we stay bounded instead).
    REACTOR_INLINE virtual void lengthLimitExceeded(std::size_t length);

    /// Sends the prefix and `string`. A string the prefix cannot encode
    /// (2^(8*prefixLength) bytes or more) raises error::StringTooLongError
    /// (logged and not sent without exceptions); returns whether it was sent.
    bool sendString(std::string_view string);
    /// Bytes buffered and not yet delivered (for tests and monitoring).
    std::size_t bufferedSize() const { return buf_.size(); }

    /// Called by the transport with each chunk read. Re-entrant calls only
    /// queue the bytes.
    REACTOR_INLINE void dataReceived(std::string_view data) override;

private:
    detail::FrameBuffer buf_;
    bool exceeded_ = false;
};

/// A 4-byte big-endian length prefix (Twisted's Int32StringReceiver).
class Int32StringReceiver : public IntNStringReceiver {
public:
    /// prefixLength 4.
    Int32StringReceiver() : IntNStringReceiver(4) {}
};
/// A 2-byte big-endian length prefix (Twisted's Int16StringReceiver).
class Int16StringReceiver : public IntNStringReceiver {
public:
    /// prefixLength 2.
    Int16StringReceiver() : IntNStringReceiver(2) {}
};
/// A 1-byte length prefix (Twisted's Int8StringReceiver).
class Int8StringReceiver : public IntNStringReceiver {
public:
    /// prefixLength 1.
    Int8StringReceiver() : IntNStringReceiver(1) {}
};

// ============================================================================
// ==== 12. TASK ====
// Time-based helpers on any IReactorTime (a Reactor, or a Clock in tests):
// LoopingCall and deferLater (Twisted's twisted.internet.task), and
// deferToThread (Twisted's threads.deferToThread).
// ============================================================================

namespace detail {
/// The same Deferred without its value (LoopingCall only needs "done").
template <class T>
Deferred<void> asVoid(Deferred<T> d) {
    if constexpr (std::is_void<T>::value)
        return d;
    else
        return d.addCallback([](const T&) {});
}

/// Runs `f` (on a worker thread) and captures its outcome as a Result.
template <class U, class F>
Result<U> captureResult(F& f) {
#if REACTOR_HAS_EXCEPTIONS
    try {
#endif
        if constexpr (std::is_void<std::invoke_result_t<F&>>::value) {
            f();
            return Result<U>();
        } else {
            return Result<U>(f());
        }
#if REACTOR_HAS_EXCEPTIONS
    } catch (...) {
        return Result<U>(Failure::current());
    }
#endif
}
}  // namespace detail

/// Runs `f()` on `r`'s thread pool and returns a Deferred fired with its
/// result (or what it threw, or the Failure it returned) on the reactor
/// thread, through callFromThread. `f` must not touch the reactor; every
/// callback on the returned Deferred runs on the reactor thread.
/// Call from the reactor thread.
template <class F>
auto deferToThread(Reactor& r, F f) {
    using R = std::decay_t<std::invoke_result_t<F&>>;
    static_assert(!detail::IsDeferred<R>::value, "deferToThread: f runs on a worker thread; it cannot return a Deferred");
    if constexpr (!std::is_copy_constructible<F>::value) {
        // The pool's jobs are std::functions, which copy: a move-only `f`
        // (one that owns a unique_ptr) goes in shared.
        auto shared = std::make_shared<F>(std::move(f));
        return deferToThread(r, [shared]() -> R { return (*shared)(); });
    } else {
        using U = typename detail::Unwrap<R, void>::type;
        Deferred<U> d;
        r.getThreadPool().callInThread([&r, d, f = std::move(f)]() mutable {
            auto outcome = std::make_shared<Result<U>>(detail::captureResult<U>(f));
            // Move the handle and the result out: this worker keeps no
            // reference, so neither is ever destroyed on it.
            r.callFromThread([d = std::move(d), outcome = std::move(outcome)]() mutable {
                detail::stateOf(d)->fire(std::move(*outcome));
            });
        });
        return d;
    }
}

namespace task {

/// Calls `f` every `interval` seconds on `clock` (Twisted's LoopingCall).
///   - `f` may return nothing, a value, a Failure/Result, or a Deferred: the
///     next call is scheduled only after that Deferred fires.
///   - Missed intervals are skipped: the next call is at the next multiple
///     of `interval` after the start time that is strictly in the future.
///   - If `f` throws or fails, or the next call cannot be scheduled, the
///     loop stops and the start() Deferred errbacks (unobserved, that
///     Deferred logs "Unhandled error").
/// Not copyable or movable: the start() Deferred fires with `this`.
/// Destroying it cancels the pending call (the start() Deferred never fires).
class LoopingCall {
public:
    /// Will call `f` on `clock` (which must outlive it); nothing runs before start().
    template <class F>
    LoopingCall(IReactorTime& clock, F f) : clock_(clock), alive_(std::make_shared<LoopingCall*>(this)) {
        f_ = std::make_shared<std::function<Deferred<void>()>>(
            [f = std::move(f)]() mutable { return detail::asVoid(maybeDeferred(f)); });
    }
    ~LoopingCall();
    LoopingCall(const LoopingCall&) = delete;
    LoopingCall& operator=(const LoopingCall&) = delete;

    /// Starts calling: now (if `now`) and then every `seconds`. Returns a
    /// Deferred fired with this LoopingCall by stop(), or failed by `f`.
    /// Starting a running loop is error::RuntimeError (Twisted asserts),
    /// like stop() and reset() of a stopped one; a negative interval is
    /// error::ValueError. Without exceptions they are logged, and start()
    /// then returns the running loop's Deferred or a failed one.
    Deferred<LoopingCall*> start(double seconds, bool now = true);

    /// Stops the loop and fires the start() Deferred (after `f` returns or
    /// its Deferred fires, if called from inside). Stopping a loop that is
    /// not running (never started, stopped, or ended by a failure of `f`)
    /// is error::RuntimeError, as start() of a running one (Twisted asserts
    /// both); check running() first if unsure. Returns true when it
    /// stopped the loop (false only after a logged misuse without exceptions).
    bool stop();

    /// Restarts the interval from now (the next call is `interval` from now).
    void reset();

    /// Between start() and stop() (or a failure of `f`).
    bool running() const { return running_; }
    /// When the loop was started (or last reset), on the clock's scale.
    double starttime() const { return starttime_; }
    /// Seconds between calls; takes effect at the next scheduling.
    double interval = 0;

private:
    // Each start() is a generation. If stop() comes while f's Deferred is
    // pending and start() follows before it fires, that Deferred belongs to
    // the old generation: when it fires it finishes the old start()
    // Deferred and schedules nothing (Twisted would start a second loop).
    void call();
    void schedule();
    void finish();

    IReactorTime& clock_;
    // Shared with a call in progress: `f` may destroy this LoopingCall
    // (its owner), and must not be destroyed while it runs.
    std::shared_ptr<std::function<Deferred<void>()>> f_;
    std::shared_ptr<LoopingCall*> alive_;  // callbacks hold it weakly: safe after destruction
    Deferred<LoopingCall*> deferred_;
    DelayedCall call_;
    double starttime_ = 0;
    unsigned generation_ = 0;  // bumped by start(); see call()
    bool running_ = false;
};

/// A Deferred fired with `f()` after `delay` seconds on `clock` (Twisted's
/// deferLater). cancel() cancels the timer and errbacks CancelledError.
Deferred<void> deferLater(IReactorTime& clock, double delay);
template <class F>
auto deferLater(IReactorTime& clock, double delay, F f) {
    return deferLater(clock, delay).addCallback(std::move(f));
}

}  // namespace task

// ============================================================================
// ==== 13. IRC ====
// Twisted's twisted.words.protocols.irc client side: parsemsg, the CTCP
// quoting helpers, ServerSupportedFeatures (ISUPPORT), parseModes, split,
// and IRCClient, a LineReceiver that speaks IRC. Beyond Twisted 22.4:
// INVITE, a QUIT at reactor shutdown, and IRCv3 (capability negotiation,
// SASL PLAIN, message tags, server-time, away/account-notify,
// extended-join). DCC offers are parsed, never transferred.
//
// Lines are bytes (std::string), not decoded text: UTF-8 passes through
// untouched, and msg() never cuts a UTF-8 character in two.
//
// Outgoing CR/LF/NUL policy (Twisted M-quotes them; we REJECT):
//   - every IRCClient command refuses an argument that contains CR, LF or
//     NUL: nothing is sent, a warning is logged, the command returns false;
//   - the message text of msg/notice/say is the one exception for CR and
//     LF: a line break there starts a new PRIVMSG/NOTICE (Twisted's msg
//     behaviour), each with its own "PRIVMSG target :" header; NUL is
//     still refused;
//   - IRCClient::sendLine itself refuses a line containing CR, LF or NUL,
//     so even raw lines cannot smuggle in a second command.
// Incoming (liberal): CR, LF and CRLF all end a line; an empty line is
// skipped; lines longer than IRC's 512 bytes (IRCv3 tags, a raised LINELEN)
// are delivered whole up to MAX_LENGTH (16384, Twisted's); a longer line, or
// one that is malformed or contains NUL, is dropped with a log line and the
// connection stays up. Outgoing (strict): every line is at most 512 bytes.
// Compiled only with REACTOR_WITH_IRC (see CONFIG); without it, naming
// irc::IRCClient, irc::parsemsg or irc::split is a compile error that says so.
// ============================================================================
#if REACTOR_HAS_IRC
namespace irc {

/// The longest line, CRLF included (RFC 2812 section 2.3).
inline constexpr std::size_t MAX_COMMAND_LENGTH = 512;
/// The longest IRCv3 tag section a server sends ("@..." up to the space);
/// incoming lines are bounded by IRCClient::MAX_LENGTH instead.
inline constexpr std::size_t MAX_TAGS_LENGTH = 8191;
/// Channel prefixes assumed until the server announces CHANTYPES.
inline constexpr std::string_view CHANNEL_PREFIXES = "&#!+";

/// X_DELIM: CTCP messages are wrapped in it.
inline constexpr char X_DELIM = '\x01';
/// M_QUOTE: the low-level quote character.
inline constexpr char M_QUOTE = '\x10';
/// X_QUOTE: the CTCP quote character.
inline constexpr char X_QUOTE = '\\';

/// One parsed server line (what Twisted's parsemsg returns, plus tags).
/// On malformed input `error` says why and the other fields are partial.
struct Message {
    /// IRCv3 message tags, in order, values unescaped ("" when absent).
    std::vector<std::pair<std::string, std::string>> tags;
    std::string prefix;   ///< "nick!user@host" or a server name; "" if none
    std::string command;  ///< as sent ("PRIVMSG", "001")
    std::vector<std::string> params;  ///< middle params, then the trailing one
    std::string error;    ///< non-empty: the line was malformed

    /// The line parsed: `error` is empty.
    bool ok() const { return error.empty(); }
    /// Same as ok().
    explicit operator bool() const { return ok(); }
    /// The value of tag `key`, or null when the tag is absent.
    const std::string* tag(std::string_view key) const;
};

namespace detail {

bool hasUnsafeChar(std::string_view s);

char asciiUpper(char c);
char asciiLower(char c);

/// Parses a non-negative decimal int; false on anything else (or overflow).
bool parseInt(std::string_view s, int& out);

/// Twisted's _intOrDefault(value): an optionally signed decimal int, or
/// nullopt for "" and anything else (or overflow).
std::optional<int> intOrNone(std::string_view s);
/// The same for 64-bit values (up to 18 digits): DCC sizes and positions.
std::optional<std::int64_t> int64OrNone(std::string_view s);

/// Splits words as a POSIX shell does (Python's shlex.split): whitespace
/// separates, '...' is literal, "..." allows \" and \\, a backslash
/// outside quotes escapes the next character. False on an unclosed quote.
bool shellSplit(std::string_view s, std::vector<std::string>& out);

/// Twisted's dccParseAddress: a dotted address as is, a number as the
/// dotted quad of its low 32 bits; false otherwise.
bool dccParseAddress(const std::string& address, std::string& out);

/// IRCv3 tag value escaping (the reverse of unescapeTagValue).
std::string escapeTagValue(std::string_view v);
/// Standard base64 with padding (SASL PLAIN's payload).
std::string base64(std::string_view in);
/// An IRCv3 server-time value ("2011-10-19T16:40:51.620Z") as seconds since
/// the Unix epoch; nullopt when malformed.
std::optional<double> parseServerTime(std::string_view v);

std::string unescapeTagValue(std::string_view v);

/// The part of "nick!user@host" before '!'.
inline std::string nickOf(std::string_view prefix) {
    return std::string(prefix.substr(0, prefix.find('!')));
}

}  // namespace detail

/// Splits a server line into tags, prefix, command and params (Twisted's
/// parsemsg, plus IRCv3 tags). Never throws: malformed input gives a
/// Message whose `error` is set ("Empty line.", "Prefix without command.").
Message parsemsg(std::string_view line);

// ---- quoting (Twisted's lowQuote, ctcpQuote and friends) -------------------

/// Low-level quoting: \x10 -> \x10\x10, NUL -> \x10 0, LF -> \x10 n, CR -> \x10 r.
/// IRCClient does not apply it on the wire (see the CR/LF policy above).
std::string lowQuote(std::string_view s);

/// Reverses lowQuote; an unknown escape \x10 z gives z.
std::string lowDequote(std::string_view s);

/// CTCP-level quoting: \ -> \\, \x01 -> \a.
std::string ctcpQuote(std::string_view s);

/// Reverses ctcpQuote: \a -> \x01, \\ -> \, \z -> z.
std::string ctcpDequote(std::string_view s);

/// One CTCP message: a tag ("PING") and its data (absent for "\x01VERSION\x01").
struct CtcpMessage {
    /// The CTCP command as sent: "PING", "ACTION".
    std::string tag;
    /// What follows the first space; absent when there is no space.
    std::optional<std::string> data;
    /// Same tag and same data.
    friend bool operator==(const CtcpMessage& a, const CtcpMessage& b) { return a.tag == b.tag && a.data == b.data; }
};

/// What ctcpExtract returns: the CTCP (extended) messages and the plain text
/// pieces around them, empty pieces dropped.
struct CtcpExtracted {
    /// The CTCP messages, dequoted, in order.
    std::vector<CtcpMessage> extended;
    /// The plain-text pieces around them, in order.
    std::vector<std::string> normal;
};

/// Splits a PRIVMSG/NOTICE text on \x01: pieces alternate normal, extended,
/// normal... (an unterminated \x01 still opens an extended piece).
CtcpExtracted ctcpExtract(std::string_view message);

/// Builds "\x01TAG data\x01..." from CTCP messages (data absent or empty:
/// the tag alone).
std::string ctcpStringify(const std::vector<CtcpMessage>& messages);

/// Splits text into chunks of at most `length` bytes (Twisted's irc.split):
/// breaks at LF (and CR), fills each line greedily with whole words (a
/// word longer than `length` is cut to fill the line it starts on, as
/// textwrap does), drops empty lines and the spaces at each break, expands
/// tabs to the next multiple of 8 columns (textwrap's expandtabs), and
/// never cuts a UTF-8 character in two. `length` 0 gives nothing. Unlike
/// textwrap it does not break after hyphens.
std::vector<std::string> split(std::string_view text, std::size_t length = 80);

// ---- modes -------------------------------------------------------------------

/// One mode change: the mode letter and its parameter, if it takes one.
struct ModeChange {
    /// The mode letter ('o').
    char mode = 0;
    /// Its parameter ("alice" in "+o alice"); absent for a mode without one.
    std::optional<std::string> param;
    /// Same letter and same parameter.
    friend bool operator==(const ModeChange& a, const ModeChange& b) { return a.mode == b.mode && a.param == b.param; }
};

/// What parseModes returns; `error` is set for a malformed mode string
/// (Twisted raises IRCBadModes with the same messages).
struct ParsedModes {
    /// The modes after a '+', in order.
    std::vector<ModeChange> added;
    /// The modes after a '-', in order.
    std::vector<ModeChange> removed;
    /// Why the mode string is malformed; empty if it parsed (else the lists are partial).
    std::string error;
    /// The mode string parsed: `error` is empty.
    bool ok() const { return error.empty(); }
};

/// Parses "+o-v", with `params` consumed by the modes listed in
/// `paramModes` (first: modes taking a param when added; second: removed).
ParsedModes parseModes(std::string_view modes, std::vector<std::string> params,
                              const std::pair<std::string, std::string>& paramModes = {});

// ---- numerics ----------------------------------------------------------------

/// "001" -> "RPL_WELCOME" (Twisted's numeric_to_symbolic); "" if unknown.
std::string_view numericToSymbolic(std::string_view numeric);

// ---- ISUPPORT ------------------------------------------------------------------

/// The server's RPL_ISUPPORT (005) announcements (Twisted's
/// ServerSupportedFeatures). Starts with Twisted's defaults; parse() adds
/// what the server says, keeping the old value for a malformed NICKLEN,
/// CHANNELLEN, PREFIX or CHANMODES. Values are kept as strings
/// (getFeature); the typed accessors give what Twisted's parsers make of
/// them, and a feature Twisted parses to None reads as absent.
class ServerSupportedFeatures {
public:
    /// A PREFIX entry: mode 'o' shows as symbol '@'; priority 0 is the highest.
    struct PrefixMode {
        /// The mode letter ('o').
        char mode;
        /// The prefix shown before a nick ('@').
        char symbol;
        /// Its position in PREFIX; 0 is the highest.
        int priority;
    };
    /// CHANMODES, in its four categories.
    struct ChanModes {
        std::string addressModes;  ///< list modes, always with a param (b)
        std::string param;         ///< always with a param (k on some servers)
        std::string setParam;      ///< a param only when set (l)
        std::string noParam;       ///< never a param (n, t)
    };

    /// Twisted's defaults, not marked announced: CHANNELLEN 200, CHANTYPES #&,
    /// MODES 3, NICKLEN 9, PREFIX (ovh)@+%, CHANMODES b,,lk,.
    ServerSupportedFeatures();

    /// Parses 005 tokens ("KEY", "KEY=v1,v2", "-KEY"). Values are \xHH
    /// unescaped; a token with a bad escape is skipped with a log line.
    void parse(const std::vector<std::string>& params);
    /// At most this many distinct features are kept (real servers announce
    /// a few dozen): new ones past it are ignored, with one log line, so a
    /// hostile server cannot grow memory without bound.
    static constexpr std::size_t maxFeatures = 256;

    /// Whether the feature is present (Twisted's hasFeature).
    bool hasFeature(std::string_view feature) const { return find(feature) != nullptr; }
    /// The feature's values (split on ','), or nullopt (Twisted's getFeature).
    std::optional<std::vector<std::string>> getFeature(std::string_view feature) const;
    /// Whether the server itself announced the feature (not just a default).
    bool announced(std::string_view feature) const;
    /// An integer feature, or `fallback` when absent or not a number.
    int getFeatureInt(std::string_view feature, int fallback) const;
    /// A string feature's first value, or `fallback`.
    std::string getFeatureString(std::string_view feature, std::string fallback = {}) const;

    /// CHANTYPES ("#&" by default; "" if the server removed it).
    std::string chanTypes() const { return getFeatureString("CHANTYPES"); }
    /// PREFIX, highest priority first.
    std::vector<PrefixMode> prefix() const;
    /// CHANMODES.
    ChanModes chanModes() const;
    /// NICKLEN (9 when absent or not a number).
    int nickLen() const { return getFeatureInt("NICKLEN", 9); }
    /// CHANNELLEN (200 when absent or not a number).
    int channelLen() const { return getFeatureInt("CHANNELLEN", 200); }
    /// Params accepted per MODE command; nullopt when unlimited/unknown.
    std::optional<int> modes() const;
    /// NETWORK, the network's name ("" when not announced).
    std::string network() const { return getFeatureString("NETWORK"); }
    /// CASEMAPPING ("rfc1459" when not announced).
    std::string caseMapping() const { return getFeatureString("CASEMAPPING", "rfc1459"); }

    /// Pairs "key:number" as Twisted's _splitParamArgs with _intOrDefault
    /// makes them: "#&:10,+:" is {("#&", 10), ("+", nullopt)}; a value
    /// without ':' is a key with no number.
    using NumberedList = std::vector<std::pair<std::string, std::optional<int>>>;
    /// CHANLIMIT: how many channels of each group of prefixes we may join
    /// (empty when not announced).
    NumberedList chanLimit() const { return numbered("CHANLIMIT"); }
    /// MAXLIST: how many entries each group of list modes may hold.
    NumberedList maxList() const { return numbered("MAXLIST"); }
    /// TARGMAX: how many targets each command takes (nullopt: no limit
    /// given). Twisted's dict: one entry per command, the last value wins.
    NumberedList targMax() const;
    /// IDCHAN: (channel prefix, length of the channel ID) pairs, as strings.
    std::vector<std::pair<std::string, std::string>> idChan() const;
    /// KICKLEN: the longest kick reason; nullopt when absent, empty or not
    /// a number (Twisted's None).
    std::optional<int> kickLen() const { return numberOrNone("KICKLEN"); }
    /// TOPICLEN: the longest topic; nullopt as for kickLen.
    std::optional<int> topicLen() const { return numberOrNone("TOPICLEN"); }
    /// EXCEPTS: the ban-exception mode letter ("e" when announced without
    /// one); nullopt when not announced.
    std::optional<std::string> excepts() const { return stringOrNone("EXCEPTS"); }
    /// INVEX: the invite-exception mode letter ("I" when announced without
    /// one); nullopt when not announced.
    std::optional<std::string> invex() const { return stringOrNone("INVEX"); }
    /// SAFELIST: LIST will not flood us off the server.
    bool safeList() const { return hasFeature("SAFELIST"); }
    /// STATUSMSG: the status prefixes a message target may carry ("@+"
    /// sends to a channel's ops and voiced); nullopt when not announced.
    std::optional<std::string> statusMsg() const { return stringOrNone("STATUSMSG"); }

private:
    struct Entry {
        std::string key;
        std::vector<std::string> values;
        bool announced;
    };
    const Entry* find(std::string_view key) const;
    void set(const std::string& key, std::vector<std::string> values, bool announced);
    void erase(const std::string& key);
    static bool unescape(std::string_view in, std::string& out);
    NumberedList numbered(std::string_view key) const;
    std::optional<int> numberOrNone(std::string_view key) const;
    std::optional<std::string> stringOrNone(std::string_view key) const;
    /// Twisted's processors that keep the old value on a malformed one.
    static bool acceptable(const std::string& key, const std::vector<std::string>& values);
    std::vector<Entry> entries_;
    bool overflowLogged_ = false;
};

/// An IRC client protocol (Twisted's IRCClient). Subclass it, override the
/// callbacks you care about, and call the commands; the transport calls
/// dataReceived, which delivers one lineReceived per server line, which
/// dispatches through handleCommand to irc_<COMMAND> and then to the
/// callbacks. Everything runs on the reactor thread.
///
///     struct Bot : reactor::irc::IRCClient {
///         void signedOn() override { join("#foo"); }
///         void userJoined(const std::string& user, const std::string& channel) override {
///             say(channel, "Hello " + user);
///         }
///     };
///
/// Time (flood control with `lineRate`, the heartbeat PING, CTCP PING
/// round trips) comes from `clock`, an IReactorTime: pass the Reactor in
/// production and a Clock in tests. Without a clock there is no heartbeat
/// and lines are never delayed. Commands return false, send nothing and log
/// a warning when an argument contains CR, LF or NUL (see the section notes).
class IRCClient : public LineReceiver {
public:
    /// `timeSource`: the clock for lineRate and the heartbeat (may be null).
    explicit IRCClient(IReactorTime* timeSource = nullptr);
    /// On a Reactor (also the clock): while connected, the client takes part
    /// in the reactor's shutdown ("before" trigger): stopping the reactor
    /// (stop(), or SIGINT/SIGTERM with run(true)) sends what the lineRate
    /// queue holds, then `QUIT :shutdownMessage`, and half-closes once that
    /// is flushed; the shutdown waits for the server to close the
    /// connection, at most quitTimeout seconds (then aborts it). The
    /// Reactor must outlive the client (on TCP it does: it owns it). A
    /// subclass that takes an IReactorTime* and passes that on gets the
    /// other constructor, and no QUIT.
    explicit IRCClient(Reactor* r);
    REACTOR_INLINE ~IRCClient() override;
    IRCClient(const IRCClient&) = delete;
    IRCClient& operator=(const IRCClient&) = delete;

    // ---- attributes (Twisted's; an empty string stands for Twisted's None) ----
    std::string nickname = "irc";   ///< our nick; updated on 001 and by nickChanged
    std::string password;           ///< sent as PASS before NICK/USER when non-empty
    std::string realname;           ///< USER's real name (empty: the nickname; Twisted sends "None")
    std::string username;           ///< USER's user name (empty: the nickname)
    std::string userinfo;           ///< CTCP USERINFO reply; empty: no reply
    std::string fingerReply;        ///< CTCP FINGER reply; empty: no reply
    std::string versionName;        ///< CTCP VERSION reply name; empty: no reply
    /// CTCP VERSION reply version (sent only when versionName is set).
    std::string versionNum;
    /// CTCP VERSION reply environment (sent only when versionName is set).
    std::string versionEnv;
    std::string sourceURL = "https://example.invalid/reactor.hpp";  ///< CTCP SOURCE reply
    double lineRate = 0;            ///< seconds between lines sent (needs `clock`); 0: no delay
    bool performLogin = true;       ///< register (PASS/NICK/USER) in connectionMade
    std::string erroneousNickFallback = "defaultnick";  ///< nick to try after 432 before 001
    double heartbeatInterval = 120; ///< PING the server this often after 001 (needs `clock`); 0: off
    std::string hostname;           ///< the server's name, from the prefix of 001
    std::optional<std::vector<std::string>> motd;  ///< the MOTD being collected (375..376)
    ServerSupportedFeatures supported;  ///< ISUPPORT (005), reset in connectionMade
    IReactorTime* clock = nullptr;  ///< lineRate, heartbeat, CTCP PING timing
    /// The QUIT message sent when the reactor shuts down (Reactor* constructor).
    std::string shutdownMessage = "Shutting down";
    /// How long a shutdown waits for the server to close the connection
    /// after our QUIT before aborting it, in seconds.
    double quitTimeout = 3;

    // ---- IRCv3 capabilities (not in Twisted 22.4) ----------------------------
    /// Negotiate IRCv3 capabilities: connectionMade sends `CAP LS 302` just
    /// before registering, requests what the server offers of capRequests
    /// (and `sasl` with saslUsername/saslPassword), authenticates, then sends
    /// `CAP END`. A server without CAP answers 421 (or nothing) and
    /// registers us as usual. false: Twisted's registration, byte for byte.
    bool capNegotiation = true;
    /// The capabilities requested when offered (CAP LS, or CAP NEW later).
    std::vector<std::string> capRequests = {"message-tags", "server-time",    "multi-prefix", "away-notify",
                                            "account-notify", "extended-join", "cap-notify"};
    /// SASL PLAIN credentials: with both set, `sasl` is requested when the
    /// server offers PLAIN; authzid and authcid are both saslUsername.
    std::string saslUsername;
    /// See saslUsername.
    std::string saslPassword;
    /// What the server offered (CAP LS and NEW, less DEL), with values
    /// ("sasl" -> "PLAIN,EXTERNAL"; "" when none).
    const std::vector<std::pair<std::string, std::string>>& availableCaps() const { return capsAvailable_; }
    /// The capabilities the server acknowledged (and has not removed).
    const std::vector<std::string>& enabledCaps() const { return capsEnabled_; }
    /// Whether `cap` is enabled.
    bool capEnabled(std::string_view cap) const;
    /// The account SASL logged us in as (900), "" if none.
    const std::string& account() const { return account_; }
    /// server-time: the time tag of the line being dispatched, as seconds
    /// since the Unix epoch (UTC); nullopt when it has none or it is malformed.
    std::optional<double> serverTime() const;

    /// True between 001 and the end of the connection.
    bool registered() const { return registered_; }
    /// The nick we asked for last (NICK); becomes `nickname` on 001.
    const std::string& attemptedNick() const { return attemptedNick_; }
    /// The IRCv3 tags of the line being dispatched (empty outside callbacks).
    const std::vector<std::pair<std::string, std::string>>& tags() const;

    // ---- the wire: called by the transport ----------------------------------

    /// Called by the transport on connect: resets ISUPPORT and registers
    /// (PASS, NICK, USER) when performLogin.
    REACTOR_INLINE void connectionMade() override;
    /// Called by the transport once: stops the heartbeat and the send queue
    /// and drops what this connection left half received (a partial line,
    /// a MOTD being collected), so a reused client starts afresh.
    REACTOR_INLINE void connectionLost(const Failure& reason) override;
    /// Bytes from the server: CR becomes LF (so CR, LF and CRLF all end a
    /// line), then LineReceiver splitting.
    REACTOR_INLINE void dataReceived(std::string_view data) override;
    /// A line longer than MAX_LENGTH (LineReceiver's, 16384 as in Twisted;
    /// raise it for a network whose lines are longer): dropped with a log
    /// line; the connection stays up and the following lines still count.
    REACTOR_INLINE void lineLengthExceeded(std::string_view line) override;
    /// One server line (also callable directly from tests): checked,
    /// parsed, and dispatched through handleCommand. Bad lines go to
    /// badMessage and are otherwise ignored.
    REACTOR_INLINE void lineReceived(std::string_view line) override;
    /// Calls irc_<command> (command upper-cased, numerics by symbolic
    /// name, "001" -> RPL_WELCOME), or irc_unknown.
    REACTOR_INLINE virtual void handleCommand(const std::string& command, const std::string& prefix,
                                              const std::vector<std::string>& params);

    // ---- server -> client handlers (override to change the protocol) ----------

    /// PING: answers PONG with the last param, at once.
    REACTOR_INLINE virtual void irc_PING(const std::string& prefix, const std::vector<std::string>& params);
    /// PRIVMSG: CTCP queries go to ctcpQuery (only when the text starts with
    /// \x01), the rest to privmsg(user = full prefix, channel = target).
    REACTOR_INLINE virtual void irc_PRIVMSG(const std::string& prefix, const std::vector<std::string>& params);
    /// NOTICE: CTCP replies go to ctcpReply, the rest to noticed.
    REACTOR_INLINE virtual void irc_NOTICE(const std::string& prefix, const std::vector<std::string>& params);
    /// JOIN: joined(channel) for us, else userJoined(nick, channel).
    REACTOR_INLINE virtual void irc_JOIN(const std::string& prefix, const std::vector<std::string>& params);
    /// PART: left(channel) for us, else userLeft(nick, channel).
    REACTOR_INLINE virtual void irc_PART(const std::string& prefix, const std::vector<std::string>& params);
    /// QUIT: userQuit(nick, message), also for our own nick (as Twisted).
    REACTOR_INLINE virtual void irc_QUIT(const std::string& prefix, const std::vector<std::string>& params);
    /// KICK: kickedFrom(channel, kicker, message) for us, else userKicked.
    REACTOR_INLINE virtual void irc_KICK(const std::string& prefix, const std::vector<std::string>& params);
    /// TOPIC: topicUpdated(nick, channel, newTopic).
    REACTOR_INLINE virtual void irc_TOPIC(const std::string& prefix, const std::vector<std::string>& params);
    /// CAP: LS (collected over continuation lines), ACK, NAK, NEW, DEL and
    /// LIST replies of the capability negotiation (see capNegotiation).
    REACTOR_INLINE virtual void irc_CAP(const std::string& prefix, const std::vector<std::string>& params);
    /// AUTHENTICATE +: the server is ready for our SASL PLAIN payload.
    REACTOR_INLINE virtual void irc_AUTHENTICATE(const std::string& prefix, const std::vector<std::string>& params);
    /// AWAY (away-notify): userAway(nick, message, or nullopt when back).
    REACTOR_INLINE virtual void irc_AWAY(const std::string& prefix, const std::vector<std::string>& params);
    /// ACCOUNT (account-notify): userAccount(nick, account, or nullopt for "*").
    REACTOR_INLINE virtual void irc_ACCOUNT(const std::string& prefix, const std::vector<std::string>& params);
    /// TAGMSG (message-tags): tagMessage(user, target); the tags are in tags().
    REACTOR_INLINE virtual void irc_TAGMSG(const std::string& prefix, const std::vector<std::string>& params);
    /// 900: loggedIn(account).
    REACTOR_INLINE virtual void irc_RPL_LOGGEDIN(const std::string& prefix, const std::vector<std::string>& params);
    /// 903: SASL done; negotiation ends (CAP END).
    REACTOR_INLINE virtual void irc_RPL_SASLSUCCESS(const std::string& prefix, const std::vector<std::string>& params);
    /// 902, 904, 905, 906: saslFailed(the server's text), once per attempt.
    REACTOR_INLINE virtual void irc_ERR_SASLFAIL(const std::string& prefix, const std::vector<std::string>& params);
    /// 907: already authenticated; negotiation ends.
    REACTOR_INLINE virtual void irc_ERR_SASLALREADY(const std::string& prefix, const std::vector<std::string>& params);
    /// 421: if it is our CAP, the server has no capabilities; nothing waits for them.
    REACTOR_INLINE virtual void irc_ERR_UNKNOWNCOMMAND(const std::string& prefix, const std::vector<std::string>& params);
    /// INVITE: invited(inviter's nick, channel) when we are the one invited
    /// (not in Twisted 22.4). An invite-notify line about someone else is
    /// ignored.
    REACTOR_INLINE virtual void irc_INVITE(const std::string& prefix, const std::vector<std::string>& params);
    /// NICK: nickChanged(new) for us, else userRenamed(old, new).
    REACTOR_INLINE virtual void irc_NICK(const std::string& prefix, const std::vector<std::string>& params);
    /// MODE: parsed with the ISUPPORT-derived parameter modes, then
    /// modeChanged(user, channel, true, added...) and (..., false, removed...).
    REACTOR_INLINE virtual void irc_MODE(const std::string& prefix, const std::vector<std::string>& params);
    /// 001: we are registered. Sets hostname and nickname (the nick the
    /// server says we got), calls signedOn, starts the heartbeat.
    REACTOR_INLINE virtual void irc_RPL_WELCOME(const std::string& prefix, const std::vector<std::string>& params);
    /// 002: yourHost(text).
    REACTOR_INLINE virtual void irc_RPL_YOURHOST(const std::string& prefix, const std::vector<std::string>& params);
    /// 003: created(text).
    REACTOR_INLINE virtual void irc_RPL_CREATED(const std::string& prefix, const std::vector<std::string>& params);
    /// 004: both ":srv 004 me srv ver umodes cmodes" and the one-trailing
    /// form fill all four fields (Twisted reads only the trailing form).
    REACTOR_INLINE virtual void irc_RPL_MYINFO(const std::string& prefix, const std::vector<std::string>& params);
    /// 005: `supported.parse(options)` then isupport(options), where options
    /// drops our nick and the trailing "are supported by this server".
    REACTOR_INLINE virtual void irc_RPL_ISUPPORT(const std::string& prefix, const std::vector<std::string>& params);
    /// 010: bounce(text).
    REACTOR_INLINE virtual void irc_RPL_BOUNCE(const std::string& prefix, const std::vector<std::string>& params);
    /// 251: luserClient(text).
    REACTOR_INLINE virtual void irc_RPL_LUSERCLIENT(const std::string& prefix, const std::vector<std::string>& params);
    /// 252: luserOp(count); a non-number is ignored.
    REACTOR_INLINE virtual void irc_RPL_LUSEROP(const std::string& prefix, const std::vector<std::string>& params);
    /// 254: luserChannels(count); a non-number is ignored.
    REACTOR_INLINE virtual void irc_RPL_LUSERCHANNELS(const std::string& prefix, const std::vector<std::string>& params);
    /// 255: luserMe(text).
    REACTOR_INLINE virtual void irc_RPL_LUSERME(const std::string& prefix, const std::vector<std::string>& params);
    /// 332: topicUpdated(server, channel, topic) on joining.
    REACTOR_INLINE virtual void irc_RPL_TOPIC(const std::string& prefix, const std::vector<std::string>& params);
    /// 331: topicUpdated(server, channel, "").
    REACTOR_INLINE virtual void irc_RPL_NOTOPIC(const std::string& prefix, const std::vector<std::string>& params);
    /// 375: starts a new MOTD (a leading "- " is stripped from each line).
    REACTOR_INLINE virtual void irc_RPL_MOTDSTART(const std::string& prefix, const std::vector<std::string>& params);
    /// 372: one more MOTD line.
    REACTOR_INLINE virtual void irc_RPL_MOTD(const std::string& prefix, const std::vector<std::string>& params);
    /// 376: receivedMOTD(lines); `motd` is reset.
    REACTOR_INLINE virtual void irc_RPL_ENDOFMOTD(const std::string& prefix, const std::vector<std::string>& params);
    /// 353: collects nicks for receivedNames (an addition to Twisted).
    REACTOR_INLINE virtual void irc_RPL_NAMREPLY(const std::string& prefix, const std::vector<std::string>& params);
    /// 366: receivedNames(channel, nicks) with what 353 collected.
    REACTOR_INLINE virtual void irc_RPL_ENDOFNAMES(const std::string& prefix, const std::vector<std::string>& params);
    /// 433: tries alterCollidedNick(attempted nick) at once.
    REACTOR_INLINE virtual void irc_ERR_NICKNAMEINUSE(const std::string& prefix, const std::vector<std::string>& params);
    /// 432 before registration: tries erroneousNickFallback.
    REACTOR_INLINE virtual void irc_ERR_ERRONEUSNICKNAME(const std::string& prefix, const std::vector<std::string>& params);
    /// 464: logged (Twisted raises IRCPasswordMismatch, which it logs).
    REACTOR_INLINE virtual void irc_ERR_PASSWDMISMATCH(const std::string& prefix, const std::vector<std::string>& params);
    /// Everything without a handler, e.g. irc_unknown(prefix, "RPL_WHOISUSER", params)
    /// or an unknown numeric "999". Default: nothing.
    REACTOR_INLINE virtual void irc_unknown(const std::string& prefix, const std::string& command,
                                            const std::vector<std::string>& params);

    // ---- callbacks: override these ------------------------------------------

    /// 001 arrived: registration is complete. Join channels here.
    virtual void signedOn() {}
    /// 003: when the server was created (the server's free text).
    virtual void created(const std::string& when) { (void)when; }
    /// 002: the server's name and version (free text).
    virtual void yourHost(const std::string& info) { (void)info; }
    /// 004; fields the server left out are "".
    virtual void myInfo(const std::string& servername, const std::string& version, const std::string& umodes,
                        const std::string& cmodes) {
        (void)servername, (void)version, (void)umodes, (void)cmodes;
    }
    /// 251: how many users and servers there are (free text).
    virtual void luserClient(const std::string& info) { (void)info; }
    /// 010: the server points us to another server (free text).
    virtual void bounce(const std::string& info) { (void)info; }
    /// 005 tokens, after `supported` has parsed them.
    virtual void isupport(const std::vector<std::string>& options) { (void)options; }
    /// 254: how many channels there are.
    virtual void luserChannels(int channels) { (void)channels; }
    /// 252: how many IRC operators are online.
    virtual void luserOp(int ops) { (void)ops; }
    /// 255: this server's own clients and servers (free text).
    virtual void luserMe(const std::string& info) { (void)info; }
    /// The MOTD lines between 375 and 376.
    virtual void receivedMOTD(const std::vector<std::string>& lines) { (void)lines; }
    /// The nicks of `channel` (353 ... 366), with status prefixes ("@alice").
    virtual void receivedNames(const std::string& channel, const std::vector<std::string>& nicks) {
        (void)channel, (void)nicks;
    }
    /// We joined `channel` (the server echoed our JOIN).
    virtual void joined(const std::string& channel) { (void)channel; }
    /// We left `channel` (the server echoed our PART).
    virtual void left(const std::string& channel) { (void)channel; }
    /// We were kicked from `channel` by `kicker` (a nick), with `message`.
    virtual void kickedFrom(const std::string& channel, const std::string& kicker, const std::string& message) {
        (void)channel, (void)kicker, (void)message;
    }
    /// The server acknowledged these capabilities (CAP ACK).
    virtual void capsEnabled(const std::vector<std::string>& caps) { (void)caps; }
    /// The server refused a request for these capabilities (CAP NAK).
    virtual void capsRefused(const std::vector<std::string>& caps) { (void)caps; }
    /// These capabilities are off again (CAP DEL, or an ACK of "-cap").
    virtual void capsDisabled(const std::vector<std::string>& caps) { (void)caps; }
    /// SASL logged us in as `account` (900).
    virtual void loggedIn(const std::string& accountName) { (void)accountName; }
    /// SASL failed (`reason` is the server's text). Called once; nothing
    /// is retried. Default: an error log line, `QUIT :SASL authentication
    /// failed` and close: a client that was given credentials does not go
    /// on without them. To go on unauthenticated, override it and call
    /// endCapNegotiation(); to stop a ReconnectingClientFactory from trying
    /// again with the same credentials, call its stopTrying() here.
    REACTOR_INLINE virtual void saslFailed(const std::string& reason);
    /// away-notify: `user` (a nick) is away with `message`, or back (nullopt).
    virtual void userAway(const std::string& user, const std::optional<std::string>& message) {
        (void)user, (void)message;
    }
    /// account-notify: `user` (a nick) logged in as `accountName`, or out (nullopt).
    virtual void userAccount(const std::string& user, const std::optional<std::string>& accountName) {
        (void)user, (void)accountName;
    }
    /// extended-join: the JOIN also named the account (nullopt: none) and
    /// real name. Called after joined/userJoined; `user` is the nick.
    virtual void extendedJoin(const std::string& user, const std::string& channel,
                              const std::optional<std::string>& accountName, const std::string& realName) {
        (void)user, (void)channel, (void)accountName, (void)realName;
    }
    /// message-tags: a TAGMSG (a message of tags only, e.g. +typing) from
    /// `user` ("nick!user@host") to `target`; read them with tags().
    virtual void tagMessage(const std::string& user, const std::string& target) { (void)user, (void)target; }
    /// `inviter` (a nick) invites us to `channel`. Default: nothing; a bot
    /// that should follow invitations calls join(channel) here.
    virtual void invited(const std::string& inviter, const std::string& channel) { (void)inviter, (void)channel; }
    /// Our nick changed; the default records it in `nickname`.
    virtual void nickChanged(const std::string& nick) { nickname = nick; }
    /// A CTCP PING we sent with ping() came back after `secs` seconds.
    virtual void pong(const std::string& user, double secs) { (void)user, (void)secs; }
    /// A message: `user` is "nick!user@host"; `channel` is the target (our
    /// nick for a private message: see isChannel).
    virtual void privmsg(const std::string& user, const std::string& channel, const std::string& message) {
        (void)user, (void)channel, (void)message;
    }
    /// A NOTICE (CTCP replies go to ctcpReply); arguments as for privmsg.
    virtual void noticed(const std::string& user, const std::string& channel, const std::string& message) {
        (void)user, (void)channel, (void)message;
    }
    /// A CTCP ACTION ("/me waves"). `data` is absent for a bare
    /// "\x01ACTION\x01" and "" for "\x01ACTION \x01" (Twisted: None and '').
    virtual void action(const std::string& user, const std::string& channel, const std::optional<std::string>& data) {
        (void)user, (void)channel, (void)data;
    }
    /// A DCC SEND offer (Twisted's dccDoSend): `address` dotted (a numeric
    /// address is converted), `size` -1 when not given or not a number,
    /// `data` the offer's words. Parsed only: nothing is transferred.
    virtual void dccDoSend(const std::string& user, const std::string& address, int port, const std::string& fileName,
                           std::int64_t size, const std::vector<std::string>& data) {
        (void)user, (void)address, (void)port, (void)fileName, (void)size, (void)data;
    }
    /// A DCC CHAT offer (Twisted's dccDoChat); `data` as for dccDoSend.
    virtual void dccDoChat(const std::string& user, const std::string& channel, const std::string& address, int port,
                           const std::vector<std::string>& data) {
        (void)user, (void)channel, (void)address, (void)port, (void)data;
    }
    /// A DCC RESUME request for a file we offered (Twisted's dccDoResume).
    virtual void dccDoResume(const std::string& user, const std::string& file, int port, std::int64_t resumePos) {
        (void)user, (void)file, (void)port, (void)resumePos;
    }
    /// A DCC ACCEPT of our RESUME request (Twisted's dccDoAcceptResume).
    virtual void dccDoAcceptResume(const std::string& user, const std::string& file, int port, std::int64_t resumePos) {
        (void)user, (void)file, (void)port, (void)resumePos;
    }
    /// Someone else joined; `user` is the nick only.
    virtual void userJoined(const std::string& user, const std::string& channel) { (void)user, (void)channel; }
    /// Someone else left `channel`; `user` is the nick only.
    virtual void userLeft(const std::string& user, const std::string& channel) { (void)user, (void)channel; }
    /// Someone quit (we too: see irc_QUIT); `user` is the nick only.
    virtual void userQuit(const std::string& user, const std::string& quitMessage) { (void)user, (void)quitMessage; }
    /// Someone else (`kickee`) was kicked from `channel` by `kicker` (nicks).
    virtual void userKicked(const std::string& kickee, const std::string& channel, const std::string& kicker,
                            const std::string& message) {
        (void)kickee, (void)channel, (void)kicker, (void)message;
    }
    /// TOPIC, or 332/331 on joining (`user` is then the server).
    virtual void topicUpdated(const std::string& user, const std::string& channel, const std::string& newTopic) {
        (void)user, (void)channel, (void)newTopic;
    }
    /// Someone else changed nick from `oldname` to `newname`.
    virtual void userRenamed(const std::string& oldname, const std::string& newname) { (void)oldname, (void)newname; }
    /// Modes set (`set`) or unset on `channel` (or on us); `args[i]` is the
    /// parameter of `modes[i]`, if it has one.
    REACTOR_INLINE virtual void modeChanged(const std::string& user, const std::string& channel, bool set, const std::string& modes,
                                            const std::vector<std::optional<std::string>>& args);
    /// A line that could not be parsed or broke a limit. Default: a log line.
    REACTOR_INLINE virtual void badMessage(std::string_view line, const std::string& why);
    /// Something odd but harmless (a VERSION query with data). Default: log.
    virtual void quirkyMessage(const std::string& s) { reactor::log(LogLevel::info, "irc: " + reactor::detail::printable(s)); }

    // ---- hooks -----------------------------------------------------------------

    /// The nick to try after 433. Default: append '_' (Twisted); once at
    /// NICKLEN, cycle the last character through digits instead, so a
    /// server that truncates nicks cannot loop us forever on one name.
    REACTOR_INLINE virtual std::string alterCollidedNick(const std::string& nick);
    /// Modes that take a parameter on us (added, removed): none.
    virtual std::pair<std::string, std::string> getUserModeParams() { return {"", ""}; }
    /// From ISUPPORT: (PREFIX modes + address + param + setParam,
    /// PREFIX modes + address + param); "ovhblk","ovhb" by default.
    REACTOR_INLINE virtual std::pair<std::string, std::string> getChannelModeParams();
    /// Starts PINGing the server every heartbeatInterval (called after 001).
    void startHeartbeat();
    /// Cancels the heartbeat; connectionLost and the destructor call it.
    void stopHeartbeat();

    // ---- CTCP ----------------------------------------------------------------

    /// CTCP queries in one PRIVMSG. Each tag is answered once per message
    /// (Twisted's flood fix); unknown tags go to ctcpUnknownQuery.
    REACTOR_INLINE virtual void ctcpQuery(const std::string& user, const std::string& channel, const std::vector<CtcpMessage>& messages);
    /// ACTION: action(user, channel, data).
    virtual void ctcpQuery_ACTION(const std::string& user, const std::string& channel, const std::optional<std::string>& data) {
        action(user, channel, data);
    }
    /// DCC: "SEND", "CHAT", "RESUME" and "ACCEPT" offers are parsed (words
    /// split as a POSIX shell does, so "my file.txt" in quotes is one) and
    /// go to the dccDo* callbacks; a malformed one is logged and ignored;
    /// another type gets an ERRMSG reply (as Twisted). No transfer.
    REACTOR_INLINE virtual void ctcpQuery_DCC(const std::string& user, const std::string& channel, const std::optional<std::string>& data);
    /// PING: echoes the data back to the sender's nick.
    REACTOR_INLINE virtual void ctcpQuery_PING(const std::string& user, const std::string& channel, const std::optional<std::string>& data);
    /// Replies versionName:versionNum:versionEnv; nothing without versionName.
    REACTOR_INLINE virtual void ctcpQuery_VERSION(const std::string& user, const std::string& channel, const std::optional<std::string>& data);
    /// Replies with sourceURL, then an empty SOURCE (end of list); nothing
    /// when sourceURL is empty.
    REACTOR_INLINE virtual void ctcpQuery_SOURCE(const std::string& user, const std::string& channel, const std::optional<std::string>& data);
    /// Replies with userinfo; nothing when it is empty.
    REACTOR_INLINE virtual void ctcpQuery_USERINFO(const std::string& user, const std::string& channel, const std::optional<std::string>& data);
    /// Replies with fingerReply; nothing when it is empty.
    REACTOR_INLINE virtual void ctcpQuery_FINGER(const std::string& user, const std::string& channel, const std::optional<std::string>& data);
    /// No data: the tags we answer; "CLIENTINFO TAG": what TAG does.
    REACTOR_INLINE virtual void ctcpQuery_CLIENTINFO(const std::string& user, const std::string& channel, const std::optional<std::string>& data);
    /// Replies ERRMSG "<data> :No error has occurred.".
    REACTOR_INLINE virtual void ctcpQuery_ERRMSG(const std::string& user, const std::string& channel, const std::optional<std::string>& data);
    /// Replies ":" + the local time in asctime() format.
    REACTOR_INLINE virtual void ctcpQuery_TIME(const std::string& user, const std::string& channel, const std::optional<std::string>& data);
    /// An unknown CTCP query: logged, never answered (no reflection floods).
    REACTOR_INLINE virtual void ctcpUnknownQuery(const std::string& user, const std::string& channel, const std::string& tag,
                                                 const std::optional<std::string>& data);
    /// CTCP replies in one NOTICE (no de-duplication, as Twisted).
    REACTOR_INLINE virtual void ctcpReply(const std::string& user, const std::string& channel, const std::vector<CtcpMessage>& messages);
    /// The answer to our ping(): pong(user, seconds), or a log line for a
    /// PING reply we never asked for.
    REACTOR_INLINE virtual void ctcpReply_PING(const std::string& user, const std::string& channel, const std::optional<std::string>& data);
    /// A CTCP reply other than PING. Default: a log line.
    REACTOR_INLINE virtual void ctcpUnknownReply(const std::string& user, const std::string& channel, const std::string& tag,
                                                 const std::optional<std::string>& data);

    // ---- commands ----------------------------------------------------------------
    // Each returns true when the line was sent (or queued by lineRate) and
    // false, having sent nothing, when an argument contains CR, LF or NUL.

    /// JOIN #channel [key] ("chan" gets a '#').
    bool join(const std::string& channel, const std::string& key = "");
    /// PART #channel [:reason].
    bool leave(const std::string& channel, const std::string& reason = "");
    /// Same as leave (Twisted's alias).
    bool part(const std::string& channel, const std::string& reason = "") { return leave(channel, reason); }
    /// KICK #channel user [:reason].
    bool kick(const std::string& channel, const std::string& user, const std::string& reason = "");
    /// INVITE user #channel.
    bool invite(const std::string& user, const std::string& channel);
    /// TOPIC #channel (ask), or TOPIC #channel :text (set; "" clears it).
    bool topic(const std::string& channel, const std::optional<std::string>& newTopic = std::nullopt);
    /// MODE chan +modes|-modes [limit | user | mask] (the first given wins).
    bool mode(const std::string& chan, bool set, const std::string& modes, std::optional<int> limit = std::nullopt,
              const std::optional<std::string>& user = std::nullopt,
              const std::optional<std::string>& mask = std::nullopt);
    /// PRIVMSG to a channel ("chan" gets a '#'), split like msg.
    bool say(const std::string& channel, const std::string& message, std::size_t length = 0);
    /// PRIVMSG user :message, split into as many lines as needed: at line
    /// breaks, then (preferably at spaces, never inside a UTF-8 character)
    /// so that each line the server relays, with its ":nick!user@host "
    /// prefix, fits in 512 bytes. `length` > 0 is Twisted's explicit limit
    /// (the whole line, command included, with 2 bytes to spare).
    bool msg(const std::string& user, const std::string& message, std::size_t length = 0) {
        return sendMessage("PRIVMSG", user, message, length);
    }
    /// NOTICE user :message, split like msg (Twisted trunk).
    bool notice(const std::string& user, const std::string& message, std::size_t length = 0) {
        return sendMessage("NOTICE", user, message, length);
    }
    /// PRIVMSG target :\x01ACTION text\x01 (a /me). CR/LF are refused here.
    bool describe(const std::string& channel, const std::string& text) {
        return ctcpMakeQuery(channel, {{"ACTION", text}});
    }
    /// AWAY :message.
    bool away(const std::string& message = "");
    /// Not away any more (AWAY :).
    bool back() { return away(); }
    /// WHOIS nick, or WHOIS server nick.
    bool whois(const std::string& nick, const std::string& server = "");
    /// NICK nick (nickname changes when the server confirms).
    bool setNick(const std::string& nick);
    /// QUIT :message.
    bool quit(const std::string& message = "");
    /// NAMES #channel; the answer arrives as receivedNames (not in Twisted).
    bool names(const std::string& channel);
    /// CTCP PING to `user` (the key is `text`, or 12 random letters); the
    /// answer comes back as pong(user, seconds). Keeps the newest 12.
    bool ping(const std::string& user, const std::string& text = "");
    /// Registers: [PASS password], NICK nick, USER (username or nick)
    /// hostName serverName :(realname or nick). Called by connectionMade
    /// when performLogin. (Twisted's `register`, a C++ keyword.) All or
    /// nothing: a nick, user name, hostName or serverName that is empty,
    /// has a space or starts with ':' (Twisted sends them as they are,
    /// shifting USER's parameters), or any CR, LF or NUL, sends nothing
    /// and returns false. A password with a space goes as "PASS :pass".
    bool register_(const std::string& nick, const std::string& hostName = "foo", const std::string& serverName = "bar");
    /// Sends `line` with IRCv3 client tags ("+example.com/key" -> value,
    /// "" for a tag without value), escaped. Needs the message-tags
    /// capability; refused (false, logged) without it, for a key that is
    /// not [+][vendor/]name, or when the tags exceed 4094 bytes.
    bool sendWithTags(const std::vector<std::pair<std::string, std::string>>& tags, std::string_view line);
    /// Ends capability negotiation (CAP END) if it is still going on; the
    /// server then completes registration.
    void endCapNegotiation();
    /// Sends CTCP queries to `user` in one PRIVMSG.
    bool ctcpMakeQuery(const std::string& user, const std::vector<CtcpMessage>& messages);
    /// Sends CTCP replies to `user` in one NOTICE.
    bool ctcpMakeReply(const std::string& user, const std::vector<CtcpMessage>& messages);

    /// Sends one raw line (CRLF added), through the lineRate queue. Refuses
    /// (returns false, logs) a line containing CR, LF or NUL. Hides
    /// LineReceiver::sendLine, which knows nothing of IRC.
    bool sendLine(std::string_view line);
    /// The longest line sent, CRLF excluded (RFC 1459: 512 with it).
    static constexpr std::size_t maxLineBytes = 510;
    /// With lineRate, at most this many lines wait; more are dropped (logged).
    std::size_t maxQueuedLines = 1000;
    /// At most this many MOTD lines are collected (375 and 372s); the rest
    /// are dropped with one log line, and 376 delivers what was kept.
    std::size_t maxMOTDLines = 1000;
    /// At most this many nicknames (counting each channel as one more) wait
    /// in NAMES replies (353) for their 366, over all channels. To make room
    /// the oldest other channel's replies are dropped (a plain NAMES ends
    /// with one "366 *" and leaves every channel's waiting); with none left,
    /// the new names are. One log line per connection.
    std::size_t maxPendingNames = 100000;
    /// At most this many channels' NAMES replies wait for their 366 (each
    /// reply looks its channel up among them); the oldest make room.
    static constexpr std::size_t maxPendingNamesChannels = 1000;
    /// Lines waiting for their lineRate slot.
    std::size_t queuedLines() const { return queue_.size() - queueHead_; }

    /// Whether `target` names a channel: its first character (after any
    /// STATUSMSG prefix such as '@') is a CHANTYPES character.
    bool isChannel(std::string_view target) const;
    /// CHANTYPES once the server announced it, else Twisted's "&#!+".
    std::string channelPrefixes() const;
    /// Nick comparison under the server's CASEMAPPING (rfc1459 by default:
    /// "[]\~" are the upper case of "{}|^").
    bool nickEquals(std::string_view a, std::string_view b) const;
    /// The most text one PRIVMSG/NOTICE to `target` can carry so that the
    /// relayed line fits 512 bytes (assumes NICKLEN/USERLEN/HOSTLEN maxima
    /// until our own JOIN echo tells us our exact "!user@host").
    std::size_t maxMessageLength(const std::string& command, const std::string& target) const;

private:
    struct Ping {
        std::string user;
        std::string key;
        double sent;
    };

    bool sendMessage(const std::string& command, const std::string& target, const std::string& message,
                     std::size_t length);

    /// sendLine, where the first `tagged` bytes (an IRCv3 tag section) do
    /// not count toward maxLineBytes.
    bool sendCapped(std::string_view line, std::size_t tagged);
    void reallySendLine(std::string_view line);
    /// The lineRate pump: one line now, the next after lineRate seconds
    /// (Twisted's _sendLine, on our injectable clock).
    void sendQueued();
    void sendHeartbeat();
    void cancelTimers();
    /// The "before shutdown" trigger: QUIT, close, then `done` (from connectionLost).
    void quitForShutdown(std::function<void()> done);
    void dropShutdownTrigger();

    bool checkArgs(const char* command, std::initializer_list<std::string_view> args);
    /// Middle parameters (targets, nicks, channels, keys): a space or a
    /// leading ':' would shift or swallow the parameters after it, and an
    /// empty one drops it. The first `required` must not be empty.
    bool checkMiddle(const char* command, std::initializer_list<std::string_view> params, std::size_t required = 1);
    bool checkCtcp(const char* command, const std::string& user, const std::vector<CtcpMessage>& messages);
    static bool need(const std::vector<std::string>& params, std::size_t n, const char* command);
    std::string withChannelPrefix(const std::string& channel) const;
    static std::string join(const std::vector<std::string>& pieces);
    static std::string motdLine(const std::vector<std::string>& params);
    bool namesRoom(std::size_t& keep);
    double now() const;
    std::string randomKey();

    bool registered_ = false;
    std::string attemptedNick_;
    std::string userHost_;  // "!user@host" from our own JOIN echo
    std::string inbound_;   // dataReceived's CR-normalised copy (reused)
    bool discarding_ = false;
    std::string afterOverflow_;  // what followed an over-long line in the same chunk
    const std::vector<std::pair<std::string, std::string>>* currentTags_ = nullptr;
    std::vector<std::string> queue_;
    std::size_t queueHead_ = 0;
    DelayedCall queueTimer_;
    DelayedCall heartbeat_;
    // IRCv3 capability negotiation (reset per connection).
    void capRequest(const std::vector<std::string>& offered);
    void capDone();
    bool negotiating_ = false;  // CAP LS sent, CAP END not yet
    std::vector<std::pair<std::string, std::string>> capsAvailable_;
    std::vector<std::string> capsEnabled_;
    std::vector<std::string> lsOffered_;  // CAP LS continuation lines collected
    std::size_t capsPending_ = 0;         // CAP REQ lines not yet ACKed/NAKed
    enum class Sasl { idle, started, done } sasl_ = Sasl::idle;
    bool capLsDue_ = false;  // register_ sends CAP LS 302 first (set by connectionMade)
    std::string account_;
    Reactor* reactor_ = nullptr;     // the Reactor* constructor's: QUIT at its shutdown
    TriggerId shutdownTrigger_ = 0;  // while connected, on reactor_
    std::function<void()> shutdownDone_;  // the shutdown waits for this call
    DelayedCall quitTimer_;
    std::vector<Ping> pings_;
    std::vector<std::pair<std::string, std::vector<std::string>>> names_;
    std::size_t namesHeld_ = 0;  // nicknames + channels in names_
    bool namesOverflowLogged_ = false;
    bool motdOverflowLogged_ = false;
    std::uint64_t rng_ = 0;
};

}  // namespace irc
#else
namespace irc {
/// Stand-ins that say what is missing (section 13 is not compiled).
template <bool compiled>
struct ModuleNotCompiled {
    static_assert(compiled, "reactor::irc needs #define REACTOR_WITH_IRC before #include \"reactor.hpp\"");
};
using IRCClient = ModuleNotCompiled<false>;
template <class... Args>
ModuleNotCompiled<sizeof...(Args) == 0> parsemsg(Args&&...) { return {}; }
template <class... Args>
ModuleNotCompiled<sizeof...(Args) == 0> split(Args&&...) { return {}; }
}  // namespace irc
#endif  // REACTOR_HAS_IRC

// ============================================================================
// ==== 14. TESTING ====
// Helpers for tests that drive a real Reactor: run until a condition holds
// (never sleep), and fail when a test leaves timers or descriptors behind
// (Trial's "dirty reactor" check). Then the in-memory network, for tests
// that connect protocols without sockets.
// ============================================================================
/// An in-memory transport for protocol tests (Twisted's StringTransport):
/// what the protocol writes accumulates in value(); nothing touches a
/// socket or the clock.
///
///     MyProtocol p; reactor::StringTransport t;
///     p.makeConnection(&t);
///     p.dataReceived("hello\r\n");
///     CHECK(t.value() == "expected reply\r\n");
class StringTransport : public ITransport {
public:
    /// Connected from the start; getHost()/getPeer() return `host` and `peer`
    /// (Twisted's defaults).
    explicit StringTransport(Address host = {"TCP", "10.0.0.1", 12345, false},
                             Address peer = {"TCP", "192.168.1.1", 54321, false})
        : hostAddress(std::move(host)), peerAddress(std::move(peer)) {
        connected = true;
    }

    /// Everything written since the last clear().
    const std::string& value() const { return io_; }
    /// Empties value().
    void clear() { io_.clear(); }

    /// Appends `data` to value().
    void write(std::string_view data) override { io_.append(data); }  // accepted even after loseConnection, as Twisted
    /// Appends each piece to value().
    REACTOR_INLINE void writeSequence(const std::string_view* parts, std::size_t count) override;
    /// Only records the request: connectionLost is not called (see
    /// StringTransportWithDisconnection for that).
    void loseConnection() override { disconnecting = true; }
    /// Only records the request: sets disconnecting and aborted.
    REACTOR_INLINE void abortConnection() override;
    /// Only records the request: sets writeConnectionLost.
    void loseWriteConnection() override { writeConnectionLost = true; }
    /// peerAddress.
    Address getPeer() const override { return peerAddress; }
    /// hostAddress.
    Address getHost() const override { return hostAddress; }

    /// The reading side, as the protocol controls it: producerState = "paused";
    /// an error after loseConnection.
    REACTOR_INLINE void pauseProducing() override;
    /// producerState = "producing"; an error after loseConnection.
    REACTOR_INLINE void resumeProducing() override;
    /// producerState = "stopped".
    void stopProducing() override { producerState = "stopped"; }

    /// Records `producer` and `streaming`; registering a second one is an error.
    REACTOR_INLINE void registerProducer(IProducer* p, bool isStreaming) override;
    /// Clears `producer`; an error when none is registered.
    REACTOR_INLINE void unregisterProducer() override;
    /// Records the setting in noDelay; returns true.
    bool setTcpNoDelay(bool enabled) override { return noDelay = enabled, true; }
    /// Records the setting in keepAlive; returns true.
    bool setTcpKeepAlive(bool enabled) override { return keepAlive = enabled, true; }
    /// The recorded noDelay.
    bool getTcpNoDelay() const override { return noDelay; }
    /// The recorded keepAlive.
    bool getTcpKeepAlive() const override { return keepAlive; }

    /// What the protocol asked of the reading side: "producing", "paused", "stopped".
    std::string producerState = "producing";
    IProducer* producer = nullptr;  ///< the registered producer, if any
    /// The registered producer is a streaming one (registerProducer's argument).
    bool streaming = false;
    /// abortConnection() was called.
    bool aborted = false;
    bool writeConnectionLost = false;  ///< loseWriteConnection() was called
    /// The last setTcpNoDelay() value.
    bool noDelay = false;
    /// The last setTcpKeepAlive() value.
    bool keepAlive = false;
    /// What getHost() returns.
    Address hostAddress;
    /// What getPeer() returns.
    Address peerAddress;

private:
    bool checkNotDisconnecting(const char* what);
    std::string io_;
};

/// A StringTransport whose loseConnection() does complete: it calls the
/// protocol's connectionLost(ConnectionDone) (Twisted's
/// StringTransportWithDisconnection). Set `protocol` first.
class StringTransportWithDisconnection : public StringTransport {
public:
    using StringTransport::StringTransport;
    /// The protocol to tell (not owned): loseConnection() calls its connectionLost.
    Protocol* protocol = nullptr;
    /// Once: sets disconnecting, clears connected (ours and the protocol's) and
    /// calls protocol->connectionLost(ConnectionDone).
    REACTOR_INLINE void loseConnection() override;
};

namespace testing {

/// Turns the loop until `done()` is true or `timeout` real seconds pass.
/// Returns `done()`. The bounded wait every socket test should use.
template <class Pred>
bool runUntil(Reactor& r, Pred&& done, double timeout = 5.0) {
    const double deadline = r.seconds() + timeout;
    while (!done()) {
        double left = deadline - r.seconds();
        if (left <= 0) return done();
        r.iterate(std::min(left, 0.05));
    }
    return true;
}

/// Turns the loop until nothing is left (no timers, no watched
/// descriptors: connections closed on both ends) or `timeout` passes.
/// Returns true when clean. The end of a socket test:
///     port.stopListening();
///     CHECK(testing::runUntilClean(r));
bool runUntilClean(Reactor& r, double timeout = 5.0);

/// Empty if `r` has no pending timers and no watched descriptors; otherwise
/// names each leftover (timers with the line that scheduled them).
std::string dirtyReport(const Reactor& r);


/// Trial's janitor: returns dirtyReport(r), then cancels the leftover
/// timers and stops watching the leftover descriptors so the next test
/// starts clean.
std::string cleanUp(Reactor& r);

}  // namespace testing

// ---- the in-memory network (Twisted's iosim) --------------------------------

namespace testing {

class MemoryNetwork;
class MemoryConnection;
class MemoryConnector;

/// One end of an in-memory connection: the ITransport its protocol writes to
/// (Twisted's iosim.FakeTransport, with TCP's semantics). Nothing moves
/// until the network is pumped; then every callback a protocol sees is the
/// one a TcpConnection would make: loseConnection() flushes first, then
/// connectionLost(ConnectionDone) on both ends; abortConnection() drops the
/// buffer, connectionLost(ConnectionAborted) here and a reset
/// (ConnectionLost) there; a peer's half-close reaches readConnectionLost()
/// of a halfCloseable protocol; bytes written after loseConnection() are
/// still sent, bytes arriving after it are dropped; flow control pauses a
/// streaming producer above detail::TcpFlow::highWaterMark unsent bytes and
/// resumes it at lowWaterMark, and with no producer the end stops reading
/// while input it got pushed its unsent output over the mark.
///
/// Owned by its MemoryConnection (which also owns the protocol): valid until
/// the network is destroyed, even after the connection closed.
class MemoryTransport final : public ITransport {
public:
    // ---- ITransport -----------------------------------------------------

    REACTOR_INLINE void write(std::string_view data) override;
    REACTOR_INLINE void writeSequence(const std::string_view* parts, std::size_t count) override;
    REACTOR_INLINE void loseConnection() override;
    REACTOR_INLINE void abortConnection() override;
    REACTOR_INLINE void loseWriteConnection() override;
    Address getPeer() const override { return peer_; }
    Address getHost() const override { return host_; }
    /// The reading side, as on TCP: nothing is delivered while paused.
    REACTOR_INLINE void pauseProducing() override;
    REACTOR_INLINE void resumeProducing() override;
    void stopProducing() override { loseConnection(); }
    REACTOR_INLINE void registerProducer(IProducer* producer, bool streaming) override;
    REACTOR_INLINE void unregisterProducer() override;
    bool setTcpNoDelay(bool enabled) override { return noDelay_ = enabled, true; }
    bool setTcpKeepAlive(bool enabled) override { return keepAlive_ = enabled, true; }
    bool getTcpNoDelay() const override { return noDelay_; }
    bool getTcpKeepAlive() const override { return keepAlive_; }

    // ---- what a test looks at and scripts -------------------------------

    /// Bytes written here and not yet delivered to the peer (TCP's unsent output).
    std::size_t pending() const { return out_.size() - outPos_; }
    /// The protocol on this end; null once it has been destroyed (after its
    /// connectionLost, at the end of the pump step) or if none was built.
    Protocol* protocol() const { return protocol_.get(); }
    /// connectionLost has run on this end.
    bool closed() const { return closed_; }
    /// The application stopped reading: nothing is delivered to this end
    /// (its peer's unsent output grows, so backpressure shows) until it is
    /// false again. A fault the test sets; the protocol's own pause is
    /// pauseProducing().
    bool readerStopped = false;
    /// A slow reader: at most this many bytes delivered to this end per
    /// pump() step (0: no limit).
    std::size_t readRate = 0;

    /// Made by MemoryConnection only.
    MemoryTransport(MemoryConnection& connection, Address host, Address peer)
        : connection_(connection), host_(std::move(host)), peer_(std::move(peer)) {
        connected = true;
    }

private:
    friend class MemoryConnection;
    friend class MemoryNetwork;
    /// Delivery to this end is possible now (nothing holds reading back).
    bool reading() const;

    MemoryConnection& connection_;
    MemoryTransport* peerEnd_ = nullptr;
    std::unique_ptr<Protocol> protocol_;
    Address host_, peer_;
    std::string out_;  // unsent bytes, from outPos_
    std::size_t outPos_ = 0;
    std::uint64_t written_ = 0, sent_ = 0;  // bytes ever written and ever delivered
    std::uint64_t readyEnd_ = 0;            // bytes up to here have arrived (latency)
    // (total written after a write, the time it may arrive): with a latency,
    // bytes wait here until the clock reaches their time.
    std::vector<std::pair<std::uint64_t, double>> marks_;
    std::size_t markPos_ = 0;
    IProducer* producer_ = nullptr;
    bool streaming_ = false, producerPaused_ = false, wantPull_ = false;
    bool userPaused_ = false, outputPaused_ = false;
    std::size_t answered_ = 0;  // unsent bytes written by dataReceived, as TcpConnection's
    bool wantWriteShut_ = false, writeShut_ = false;
    bool eofIncoming_ = false, readShut_ = false;  // the peer sent its FIN / we processed it
    bool aborting_ = false, closed_ = false;
    bool noDelay_ = false, keepAlive_ = false;
};

/// The IConnector of a MemoryConnection: Twisted's tcp.Connector lifecycle
/// (disconnected -> connecting -> connected -> disconnected), with the
/// ClientFactory's startedConnecting / clientConnectionFailed /
/// clientConnectionLost at the same moments and with the same reasons as
/// TcpConnector's. Shared, like every IConnector; once the network is gone
/// connect() is refused.
class MemoryConnector final : public IConnector {
public:
    /// Made by MemoryConnection.
    MemoryConnector(MemoryConnection& connection, double timeout) : conn_(&connection), timeout_(timeout) {}
    REACTOR_INLINE void connect() override;
    REACTOR_INLINE void disconnect() override;
    REACTOR_INLINE void stopConnecting() override;
    bool isConnecting() const override { return state_ == State::connecting; }
    REACTOR_INLINE Address getDestination() const override;

private:
    friend class MemoryConnection;
    enum class State { disconnected, connecting, connected };
    void fail(const Failure& reason);
    void lost(const Failure& reason);
    void finishCycle();
    void cancelTimeout();
    void abandon();

    MemoryConnection* conn_;  // null once the network is gone
    double timeout_;
    State state_ = State::disconnected;
    DelayedCall timeoutCall_;
    bool factoryStarted_ = false;  // doStart once per cycle, as TcpConnector
    Address destination_;
};

/// A client's link to a server factory through a MemoryNetwork: its
/// connector (what the ClientFactory's callbacks get) and, once an attempt
/// succeeds, the two ends. Made by MemoryNetwork::connect, owned by the
/// network. Each new attempt of the connector (a ReconnectingClientFactory's
/// retry) makes two new ends; the old ones stay readable.
///
/// The fault knobs below may be set at any time; they act at the next pump
/// step.
class MemoryConnection {
public:
    /// Refuse this many of the next attempts: clientConnectionFailed with
    /// ConnectionRefusedError, the reason TCP gives.
    int refuseNext = 0;
    /// Attempts get no answer: they fail by the connector's timeout
    /// (TimeoutError, as connectTCP's), when the clock gets there.
    bool unreachable = false;
    /// At most this many bytes per dataReceived call (1: byte by byte; 0:
    /// everything that is ready in one call).
    std::size_t chunkSize = 0;
    /// Seconds a byte spends on the wire (simulated time: the network's
    /// Clock must reach it). Applies to bytes written from now on.
    double latency = 0;
    /// The network resets the connection: at the next step both ends get
    /// connectionLost(ConnectionLost: connection reset by peer), buffers dropped.
    void reset() { resetPending_ = true; }

    /// The client's end (null until an attempt succeeds).
    MemoryTransport* client() const { return client_.get(); }
    /// The server's end (null until an attempt succeeds).
    MemoryTransport* server() const { return server_.get(); }
    /// The client's protocol (null before, and once destroyed after connectionLost).
    Protocol* clientProtocol() const { return client_ ? client_->protocol() : nullptr; }
    /// The server's protocol (the same).
    Protocol* serverProtocol() const { return server_ ? server_->protocol() : nullptr; }
    /// The connector the client factory's callbacks receive.
    IConnector& connector() const { return *connector_; }
    /// Both ends are connected now.
    bool established() const { return client_ && !client_->closed_ && server_ && !server_->closed_; }
    /// How many attempts succeeded so far.
    int connections = 0;

    /// Made by MemoryNetwork::connect.
    MemoryConnection(MemoryNetwork& net, Factory& server, ClientFactory& client, Address serverAddress,
                     Address clientAddress, double timeout);
    ~MemoryConnection();
    MemoryConnection(const MemoryConnection&) = delete;
    MemoryConnection& operator=(const MemoryConnection&) = delete;

private:
    friend class MemoryTransport;
    friend class MemoryNetwork;
    friend class MemoryConnector;
    bool step();
    bool stepPair(MemoryTransport& client, MemoryTransport& server);
    void establish();
    void makeConnection(MemoryTransport& end, Failure& failure, bool& failed);
    bool deliver(MemoryTransport& from, MemoryTransport& to);
    bool settle(MemoryTransport& end);
    bool readEof(MemoryTransport& end);
    void closeEnd(MemoryTransport& end, const Failure& reason, bool resetPeer);
    /// What a reset tells `end`: ConnectionAborted if it was aborting itself.
    static Failure resetReason(const MemoryTransport& end);
    void abandon();

    MemoryNetwork& net_;
    Factory& serverFactory_;
    ClientFactory& clientFactory_;
    Address serverAddress_, clientAddress_;
    std::shared_ptr<MemoryConnector> connector_;
    std::unique_ptr<MemoryTransport> client_, server_;
    std::vector<std::unique_ptr<MemoryTransport>> retired_;  // ends of earlier attempts, client then server
    bool resetPending_ = false;
    bool attemptPending_ = false;  // connect() was called; answered at the next step
    bool gone_ = false;            // a factory of it was destroyed: dropped, never touched again
};

/// Twisted's iosim: client and server protocols connected in memory and
/// pumped deterministically, with faults a test can script, and a Clock for
/// time. Nothing moves between pump()s: a write only queues.
///
///     reactor::Clock clock;
///     EchoFactory server;  reactor::ClientFactory client = ...;   // declared first: they outlive the network
///     reactor::testing::MemoryNetwork net(clock);
///     auto& c = net.connect(server, client);
///     c.chunkSize = 1;                  // deliver byte by byte
///     net.flush();                      // connect, connectionMade, greetings...
///     c.client()->write("hello");
///     net.flush();                      // delivered, answered, answer delivered
///
/// Ownership: the network owns the connections, their ends and their
/// protocols (built by the factories, destroyed at the end of the pump
/// step after their connectionLost); the factories and the clock are the
/// test's and should outlive the network (the clock must: a factory
/// destroyed first drops its connections silently and logs a warning, as
/// with a Reactor). Destroying the network is like destroying a Reactor:
/// open connections are dropped silently (no connectionLost, no
/// clientConnection*), their protocols destroyed.
///
/// Callbacks may call anything: write, close, connect(), reset() a
/// connection; a pump()/flush()/advance() from inside a callback the
/// network is delivering does nothing and returns false (the outer one
/// goes on). Failures and closes are never reported inside the call that
/// caused them: always from a pump step, as TCP reports them from the loop.
class MemoryNetwork {
public:
    REACTOR_INLINE explicit MemoryNetwork(Clock& clockRef);
    /// With a Clock of its own (`net.clock`), for tests that need no other.
    REACTOR_INLINE MemoryNetwork();
    REACTOR_INLINE ~MemoryNetwork();
    MemoryNetwork(const MemoryNetwork&) = delete;
    MemoryNetwork& operator=(const MemoryNetwork&) = delete;

    /// Starts a connection attempt from `client` to `server` (both the
    /// test's, outliving the network): startedConnecting now, the outcome
    /// at the next pump step. The server factory is started (doStart) the
    /// first time it is used, like a listening port. `serverAddress` is what
    /// getPeer() returns on the client's end; the client's end is
    /// 127.0.0.1 on a port counting up from 50001. `timeout` as connectTCP's.
    REACTOR_INLINE MemoryConnection& connect(Factory& server, ClientFactory& client,
                                             Address serverAddress = {"TCP", "127.0.0.1", 8000, false},
                                             double timeout = 30);

    /// One step: for every connection, an attempt is answered (a connection
    /// made in a step carries no data in it), or ready bytes are delivered (in chunkSize pieces) both ways, drained ends close,
    /// FINs are read. Returns whether anything happened.
    REACTOR_INLINE bool pump();
    /// Pumps until nothing happens (Twisted's IOPump.flush). Two protocols
    /// that always answer each other never settle: after `maxSteps` it
    /// stops with error::RuntimeError. Returns whether anything happened.
    REACTOR_INLINE bool flush(int maxSteps = 10000);
    /// Moves the clock `seconds` forward, stopping at each moment something
    /// is due (a timer, bytes arriving after their latency) to flush, so a
    /// conversation with latency runs as it would on a real wire.
    REACTOR_INLINE void advance(double seconds);
    /// The connections made so far, in order.
    const std::vector<std::unique_ptr<MemoryConnection>>& connections() const { return connections_; }

private:
    std::unique_ptr<Clock> ownClock_;  // the default constructor's (before `clock`: initialised first)

public:
    Clock& clock;  ///< latency, connect timeouts and advance() run on it

private:
    friend class MemoryConnection;
    /// The network's place in a factory's list of users (as a port's or a
    /// connection's): a factory destroyed before the network drops its
    /// connections silently, with the Factory's warning, instead of being
    /// called when dead.
    class FactoryUse final : public detail::Owned {
    public:
        FactoryUse(MemoryNetwork& net, Factory& f) : net_(net), factory_(&f) { useFactory(f); }
        ~FactoryUse() override { stopUsingFactory(); }
        void shutdownNow() override {}
        void abandon() override { net_.factoryGone(std::exchange(factory_, nullptr)); }
        REACTOR_INLINE bool openConnection() const override;
        detail::os::Fd descriptor() const override { return detail::os::invalidFd; }
        std::string describe() const override { return "in-memory connection (testing::MemoryNetwork)"; }
        Factory* factory() const { return factory_; }

    private:
        MemoryNetwork& net_;
        Factory* factory_;
    };
    /// Joins `f`'s users once.
    void use(Factory& f);
    /// `f` is being destroyed: its connections are dropped without callbacks.
    void factoryGone(Factory* f);
    /// Frees the protocols closed meanwhile, once no step is running.
    void releaseDead();
    std::vector<std::unique_ptr<FactoryUse>> uses_;
    std::vector<std::unique_ptr<MemoryConnection>> connections_;
    std::vector<std::unique_ptr<Protocol>> dead_;  // closed this step; freed at its end
    std::vector<Factory*> started_;                // server factories we doStart()ed
    int depth_ = 0;                                // pump steps running (re-entry guard)
    std::uint16_t nextPort_ = 50001;
};

}  // namespace testing



}  // namespace REACTOR_ABI
}  // namespace reactor

#if defined(_WIN32)
#pragma pop_macro("interface")
#pragma pop_macro("min")
#pragma pop_macro("max")
#endif
#endif  // REACTOR_HPP_INCLUDED

// ============================================================================
// ==== 15. IMPLEMENTATION ====
// The bodies of the non-template functions declared in sections 3-14, in
// the same order. Header-only (the default): they are `inline` and every
// translation unit sees them. REACTOR_SEPARATE_COMPILATION: only the one TU
// that also defines REACTOR_IMPLEMENTATION compiles them, and the others
// see declarations alone (see the manual at the top). Templates and
// one-line accessors stay next to their declarations in both modes.
// ============================================================================
#if !defined(REACTOR_SEPARATE_COMPILATION) || defined(REACTOR_IMPLEMENTATION)
#ifndef REACTOR_IMPLEMENTATION_INCLUDED
#define REACTOR_IMPLEMENTATION_INCLUDED

// What the bodies need beyond section 2: in a separately compiled build the
// other TUs never parse these (<mutex>, <atomic> and <chrono> alone were a
// fifth of such a TU's compile time).
#include <algorithm>    // std::push_heap, std::pop_heap, std::find_if
#include <atomic>       // wake-up flag, signal flag
#include <chrono>       // steady_clock: the monotonic time source
#include <mutex>        // cross-thread call queue
#if REACTOR_HAS_RTTI && defined(__GNUG__)
#include <cxxabi.h>     // demangled type names for Failure
#include <typeinfo>
#endif
#include <cmath>        // std::floor (LoopingCall), std::sqrt/log/cos (reconnect jitter)
#include <cstdio>       // std::fputs for the default logger
#include <cstdlib>      // std::getenv for REACTOR_TRACE
#include <ctime>        // CTCP TIME: std::time, std::strftime, localtime_r (os::localTimeText)
#include <condition_variable>  // thread pool: idle workers wait for jobs
#include <thread>       // thread pool workers

#if defined(_WIN32)
#pragma push_macro("interface")
#pragma push_macro("min")
#pragma push_macro("max")
#undef interface
#undef min
#undef max
#endif

namespace reactor {
inline namespace REACTOR_ABI {

// ---- 3. PLATFORM -----------------------------------------------------------
namespace detail {
namespace os {

/// SIGINT/SIGTERM handling for `Reactor::run(true)`. A signal handler can
/// only touch lock-free atomics, so each reactor in run(true) publishes its
/// wake-up descriptor in a slot of its own while it runs, and the handler,
/// installed while at least one does, tells every one of them (two reactors
/// on two threads both stop). Windows: a console control handler (Ctrl-C,
/// Ctrl-Break, the console closing), which Windows runs on a thread of its
/// own; the "signal" is the CTRL_*_EVENT value + 1.
struct SignalSlot {
    std::atomic<Fd> wakeFd{invalidFd};
    std::atomic<int> received{0};
};
enum : int { signalSlotCount = 64 };  // (an enumerator: no symbol in a TU that only includes)
SignalSlot* signalSlots();
/// Guards taking and giving back slots, and installing the handler.
std::mutex& signalSlotsLock();
/// How many slots are taken (the handler is installed while it is not 0).
int& signalSlotsTaken();
/// Stores `sig` for, and wakes, every reactor with a slot.
void deliverSignal(int sig);
/// A reactor has a slot now.
bool anySignalSlot();
/// Takes a free slot for `wakeFd` (-1 if all are taken) and says whether
/// it is the first, so the caller installs the handler.
int takeSignalSlot(Fd wakeFd, bool& first);
/// Gives the slot back and says whether it was the last.
bool giveSignalSlot(int slot);

#if !defined(REACTOR_OS_WINDOWS)
REACTOR_INLINE ConnectErrorKind classifyConnectError(int err) {
    switch (err) {
        case ECONNREFUSED: return ConnectErrorKind::refused;
        case ETIMEDOUT: return ConnectErrorKind::timedOut;
        case ENETUNREACH:
        case EHOSTUNREACH: return ConnectErrorKind::noRoute;
        case EADDRINUSE:
        case EADDRNOTAVAIL: return ConnectErrorKind::bindError;
        default: return ConnectErrorKind::other;
    }
}

REACTOR_INLINE void closeFd(Fd fd) {
    if (fd >= 0) ::close(fd);  // never retried on EINTR: the fd is gone either way on Linux
}

REACTOR_INLINE bool setNonBlocking(Fd fd) {
    int flags = ::fcntl(fd, F_GETFL, 0);
    return flags >= 0 && ::fcntl(fd, F_SETFL, flags | O_NONBLOCK) == 0;
}

REACTOR_INLINE bool setReusePort(Fd fd) {
#if defined(SO_REUSEPORT)
    return setIntOption(fd, SOL_SOCKET, SO_REUSEPORT, 1);
#else
    (void)fd;
    errno = ENOPROTOOPT;
    return false;
#endif
}

REACTOR_INLINE bool setCloseOnExec(Fd fd) {
    int flags = ::fcntl(fd, F_GETFD, 0);
    return flags >= 0 && ::fcntl(fd, F_SETFD, flags | FD_CLOEXEC) == 0;
}
#endif  // !REACTOR_OS_WINDOWS (their Windows bodies: at the end of this part)

REACTOR_INLINE std::string localTimeText() {
    char text[64] = {};
    std::time_t now = std::time(nullptr);
    std::tm local{};
#if defined(REACTOR_OS_WINDOWS)
    // No localtime_r, and the C runtime's strftime has no %e (its day is
    // padded with a zero, which asctime's is not).
    if (::localtime_s(&local, &now) != 0 || std::strftime(text, sizeof text, "%a %b %d %H:%M:%S %Y", &local) == 0)
        return "";
    if (text[8] == '0') text[8] = ' ';
#else
    if (::localtime_r(&now, &local) == nullptr || std::strftime(text, sizeof text, "%a %b %e %H:%M:%S %Y", &local) == 0)
        return "";
#endif
    return text;
}

REACTOR_INLINE bool PollArray::add(Fd fd, short interest) {
    const std::size_t i = fdIndex(fd);
    if (i >= position_.size()) position_.resize(i + 1, npos);
    if (position_[i] == npos) {
        position_[i] = fds_.size();
        pollfd p{};
        p.fd = fd;
        fds_.push_back(p);
    }
    fds_[position_[i]].events = interest;
    return true;
}

REACTOR_INLINE void PollArray::remove(Fd fd) {
    const std::size_t i = fdIndex(fd);
    if (!validFd(fd) || i >= position_.size() || position_[i] == npos) return;
    const std::size_t at = position_[i];
    position_[i] = npos;
    if (at + 1 != fds_.size()) {  // the last entry fills the hole
        fds_[at] = fds_.back();
        position_[fdIndex(fds_[at].fd)] = at;
    }
    fds_.pop_back();
}

REACTOR_INLINE int PollArray::collect(int n, std::vector<Ready>& ready) {
    for (std::size_t i = 0; i < fds_.size() && static_cast<int>(ready.size()) < n; ++i) {
        if (fds_[i].revents == 0) continue;
        ready.push_back(Ready{fds_[i].fd, fds_[i].revents, 0});
        fds_[i].revents = 0;
    }
    return static_cast<int>(ready.size());
}

#if defined(REACTOR_OS_WINDOWS)
REACTOR_INLINE void PollBackend::unstall(Fd fd) {
    for (std::size_t i = 0; i < stalled_.size(); ++i) {
        if (stalled_[i] != fd) continue;
        stalled_[i] = stalled_.back();
        stalled_.pop_back();
        return;
    }
}
#endif

REACTOR_INLINE int PollBackend::wait(int timeoutMs, std::vector<Ready>& ready) {
    ready.clear();
#if defined(REACTOR_OS_WINDOWS)
    // The stalled sockets first, without waiting: back in the wait once
    // writable or failed (reported now); while any stays out, the wait is
    // capped so that they are probed again soon.
    for (std::size_t i = 0; i < stalled_.size();) {
        pollfd probe{};
        probe.fd = stalled_[i];
        probe.events = evWrite;
        if (::WSAPoll(&probe, 1, 0) != 0 && (probe.revents & (evWrite | POLLERR | evInvalid))) {
            ready.push_back(Ready{probe.fd, probe.revents, 0});
            stalled_[i] = stalled_.back();
            stalled_.pop_back();
        } else {
            ++i;
        }
    }
    if (!ready.empty()) timeoutMs = 0;
    else if (!stalled_.empty() && (timeoutMs < 0 || timeoutMs > stallProbeMs)) timeoutMs = stallProbeMs;
    // Usually nothing is stalled and the array is handed over as it is.
    std::vector<pollfd>& set = stalled_.empty() ? fds_ : call_;
    if (!stalled_.empty()) {
        call_.clear();
        for (const pollfd& p : fds_) {
            if (std::find(stalled_.begin(), stalled_.end(), p.fd) == stalled_.end()) call_.push_back(p);
        }
    }
    if (set.empty()) {  // WSAPoll refuses an empty set (WSAEINVAL)
        if (ready.empty()) pause(timeoutMs < 0 ? 10 : timeoutMs);
        return static_cast<int>(ready.size());
    }
    int n = ::WSAPoll(set.data(), static_cast<ULONG>(set.size()), timeoutMs);
    if (n < 0 && lastError() == WSAENOTSOCK) {
        // A watched socket was closed (wine fails the whole call where
        // Windows reports POLLNVAL): report it as POLLNVAL.
        const std::size_t before = ready.size();
        for (pollfd& p : set) {
            int type = 0;
            socklen_t len = sizeof type;
            if ((p.revents & evInvalid) ||
                ::getsockopt(p.fd, SOL_SOCKET, SO_TYPE, reinterpret_cast<char*>(&type), &len) != 0)
                ready.push_back(Ready{p.fd, evInvalid, 0});
            p.revents = 0;
        }
        if (ready.size() > before) return static_cast<int>(ready.size());
        setLastError(WSAENOTSOCK);
    }
    if (n < 0) return ready.empty() ? n : static_cast<int>(ready.size());
    // Every entry is looked at: wine leaves a closed socket's POLLNVAL out
    // of the count it returns.
    for (pollfd& p : set) {
        if (p.revents == 0) continue;
        const bool hungUpOnly = (p.revents & POLLHUP) && !(p.revents & (evRead | evWrite | POLLERR | evInvalid));
        if (hungUpOnly && p.events == evWrite) stalled_.push_back(p.fd);  // reported this once
        ready.push_back(Ready{p.fd, p.revents, 0});
        p.revents = 0;
    }
    return static_cast<int>(ready.size());
#else
    int n = ::poll(fds_.data(), static_cast<nfds_t>(fds_.size()), timeoutMs);
    return n <= 0 ? n : collect(n, ready);
#endif
}

#if !defined(REACTOR_OS_WINDOWS)

REACTOR_INLINE int SelectBackend::wait(int timeoutMs, std::vector<Ready>& ready) {
    ready.clear();
    fd_set readSet, writeSet, errorSet;
    FD_ZERO(&readSet);
    FD_ZERO(&writeSet);
    FD_ZERO(&errorSet);
    int maxFd = -1;
    for (const pollfd& p : fds_) {  // add() never takes an fd at or above FD_SETSIZE
        if (p.events & evRead) FD_SET(p.fd, &readSet);
        if (p.events & evWrite) FD_SET(p.fd, &writeSet);
        FD_SET(p.fd, &errorSet);
        maxFd = std::max(maxFd, p.fd);
    }
    timeval tv{};
    timeval* tvp = nullptr;
    if (timeoutMs >= 0) {
        tv.tv_sec = timeoutMs / 1000;
        tv.tv_usec = static_cast<decltype(tv.tv_usec)>((timeoutMs % 1000) * 1000);
        tvp = &tv;
    }
    int n = ::select(maxFd + 1, &readSet, &writeSet, &errorSet, tvp);
    if (n < 0 && errno == EBADF) {
        // A watched descriptor was closed: report it as poll() would
        // (POLLNVAL) instead of failing every turn.
        for (pollfd& p : fds_)
            if (::fcntl(p.fd, F_GETFD) < 0) ready.push_back(Ready{p.fd, evInvalid, 0});
        if (!ready.empty()) return static_cast<int>(ready.size());
        errno = EBADF;
    }
    if (n <= 0) return n;
    for (pollfd& p : fds_) {
        short rev = 0;
        if (FD_ISSET(p.fd, &readSet)) rev = static_cast<short>(rev | evRead);
        if (FD_ISSET(p.fd, &writeSet)) rev = static_cast<short>(rev | evWrite);
        if (FD_ISSET(p.fd, &errorSet)) rev = static_cast<short>(rev | POLLERR);
        if (rev) ready.push_back(Ready{p.fd, rev, 0});
    }
    return static_cast<int>(ready.size());
}

#if defined(REACTOR_USE_EPOLL)
REACTOR_INLINE EpollBackend::EpollBackend() {
    epfd_ = ::epoll_create1(EPOLL_CLOEXEC);
    if (epfd_ < 0) error_ = errno;
    owner_ = static_cast<long>(::getpid());
    events_.resize(64);
}

REACTOR_INLINE EpollBackend::~EpollBackend() {
    if (epfd_ >= 0) closeFd(epfd_);
}

REACTOR_INLINE bool EpollBackend::control(int op, Fd fd, short interest) {
    epoll_event e{};
    e.events = ((interest & evRead) ? EPOLLIN : 0u) | ((interest & evWrite) ? EPOLLOUT : 0u);
    e.data.fd = fd;
    return ::epoll_ctl(epfd_, op, fd, &e) == 0;
}

REACTOR_INLINE std::size_t EpollBackend::alwaysReadyIndex(Fd fd) const {
    std::size_t i = 0;
    while (i < alwaysReady_.size() && alwaysReady_[i].first != fd) ++i;
    return i;
}

REACTOR_INLINE bool EpollBackend::add(Fd fd, short interest) {
    const std::size_t i = alwaysReadyIndex(fd);
    if (i < alwaysReady_.size()) {
        // Still the regular file? Its number may have been closed behind our
        // back and reused by something epoll can watch.
        if (control(EPOLL_CTL_ADD, fd, interest)) {
            alwaysReady_.erase(alwaysReady_.begin() + static_cast<std::ptrdiff_t>(i));
            ++watched_;
            return true;
        }
        alwaysReady_[i].second = interest;
        return true;
    }
    if (control(EPOLL_CTL_ADD, fd, interest)) {
        ++watched_;
        return true;
    }
    if (errno == EEXIST) return control(EPOLL_CTL_MOD, fd, interest);  // still registered: a dup of a closed fd
    if (errno == EPERM) {  // a regular file or a directory: always ready, as poll() says
        alwaysReady_.emplace_back(fd, interest);
        return true;
    }
    return false;
}

REACTOR_INLINE bool EpollBackend::modify(Fd fd, short interest) {
    if (alwaysReadyIndex(fd) < alwaysReady_.size()) return add(fd, interest);
    if (control(EPOLL_CTL_MOD, fd, interest)) return true;
    if (errno != ENOENT) return false;
    // The kernel forgot it (closed behind our back, the number reused).
    --watched_;
    return add(fd, interest);
}

REACTOR_INLINE void EpollBackend::remove(Fd fd) {
    const std::size_t i = alwaysReadyIndex(fd);
    if (i < alwaysReady_.size()) {
        alwaysReady_.erase(alwaysReady_.begin() + static_cast<std::ptrdiff_t>(i));
        return;
    }
    if (watched_) --watched_;
    // A forked child's reactor going away (its copy of the descriptors
    // closing) must not take them out of the set it shares with its parent.
    if (static_cast<long>(::getpid()) != owner_) return;
    // EBADF/ENOENT: already closed, and with it gone from the kernel's set.
    epoll_event e{};
    ::epoll_ctl(epfd_, EPOLL_CTL_DEL, fd, &e);
}

REACTOR_INLINE int EpollBackend::wait(int timeoutMs, std::vector<Ready>& ready) {
    ready.clear();
    // Room for every watched descriptor up to a cap: level-triggered, so
    // what does not fit is reported again next turn.
    const std::size_t room = std::min<std::size_t>(std::max<std::size_t>(watched_, 64), 4096);
    if (events_.size() < room) events_.resize(room);
    if (!alwaysReady_.empty()) timeoutMs = 0;
    if (epfd_ < 0) {  // never made (the reactor said so): sleep as a wait would
        pause(timeoutMs < 0 ? 10 : timeoutMs);
        return 0;
    }
    int n = ::epoll_wait(epfd_, events_.data(), static_cast<int>(room), timeoutMs);
    if (n < 0) return n;
    for (int i = 0; i < n; ++i) {
        const std::uint32_t e = events_[static_cast<std::size_t>(i)].events;
        short rev = 0;
        if (e & (EPOLLIN | EPOLLPRI)) rev = static_cast<short>(rev | evRead);
        if (e & EPOLLOUT) rev = static_cast<short>(rev | evWrite);
        if (e & EPOLLERR) rev = static_cast<short>(rev | POLLERR);
        if (e & EPOLLHUP) rev = static_cast<short>(rev | POLLHUP);
        ready.push_back(Ready{events_[static_cast<std::size_t>(i)].data.fd, rev, 0});
    }
    for (auto& a : alwaysReady_) ready.push_back(Ready{a.first, a.second, 0});
    return static_cast<int>(ready.size());
}
#endif

#endif  // !REACTOR_OS_WINDOWS

#if !defined(REACTOR_OS_WINDOWS)
REACTOR_INLINE bool socketPair(Fd out[2]) {
    if (::socketpair(AF_UNIX, SOCK_STREAM, 0, out) != 0) return false;
    setCloseOnExec(out[0]);
    setCloseOnExec(out[1]);
    return true;
}

REACTOR_INLINE Waker::Waker() {
#if defined(REACTOR_OS_EVENTFD)
    readFd_ = writeFd_ = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
#else
    int p[2];
    if (::pipe(p) == 0) {
        readFd_ = p[0];
        writeFd_ = p[1];
        for (int fd : p) { setNonBlocking(fd); setCloseOnExec(fd); }
    }
#endif
    if (readFd_ < 0) error_ = errno;
}

REACTOR_INLINE Waker::~Waker() {
    closeFd(readFd_);
    if (writeFd_ != readFd_) closeFd(writeFd_);
}

REACTOR_INLINE void Waker::wake(Fd writeFd) {
    if (writeFd < 0) return;
#if defined(REACTOR_OS_EVENTFD)
    std::uint64_t one = 1;
    ssize_t n = ::write(writeFd, &one, sizeof one);
#else
    char byte = 1;
    ssize_t n = ::write(writeFd, &byte, 1);
#endif
    (void)n;
}

REACTOR_INLINE void Waker::drain() const {
    char buf[64];
    while (::read(readFd_, buf, sizeof buf) > 0) {
    }
}
#endif  // !REACTOR_OS_WINDOWS

REACTOR_INLINE bool parseLiteral(const std::string& host, std::uint16_t port, SockAddr& out) {
    out = SockAddr{};
    if (host.find('\0') != std::string::npos) return false;  // inet_pton would read only the part before it
    auto* v4 = reinterpret_cast<sockaddr_in*>(&out.storage);
    if (::inet_pton(AF_INET, host.c_str(), &v4->sin_addr) == 1) {
        v4->sin_family = AF_INET;
        v4->sin_port = htons(port);
        out.length = sizeof(sockaddr_in);
        return true;
    }
    auto* v6 = reinterpret_cast<sockaddr_in6*>(&out.storage);
    if (::inet_pton(AF_INET6, host.c_str(), &v6->sin6_addr) == 1) {
        v6->sin6_family = AF_INET6;
        v6->sin6_port = htons(port);
        out.length = sizeof(sockaddr_in6);
        return true;
    }
    return false;
}

REACTOR_INLINE std::vector<SockAddr> resolve(const std::string& host, std::uint16_t port, std::string& error) {
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_ADDRCONFIG;
    addrinfo* list = nullptr;
    std::vector<SockAddr> out;
    if (host.find('\0') != std::string::npos) {  // getaddrinfo would look up only the part before it
        error = "the host name contains a NUL byte";
        return out;
    }
#if defined(REACTOR_OS_WINDOWS)
    if (int err = winsockStarted()) {
        error = errorString(err);
        return out;
    }
#endif
    int rc = ::getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &list);
    if (rc != 0) {
#if defined(REACTOR_OS_WINDOWS)
        // mingw's gai_strerror writes into one static buffer (resolver
        // threads would race on it) and keeps the system's ". " ending.
        error = errorString(rc);
#else
        error = ::gai_strerror(rc);
#endif
        return out;
    }
    for (addrinfo* ai = list; ai; ai = ai->ai_next) {
        if (ai->ai_addrlen > sizeof(sockaddr_storage)) continue;
        SockAddr a;
        std::memcpy(&a.storage, ai->ai_addr, ai->ai_addrlen);
        a.length = static_cast<socklen_t>(ai->ai_addrlen);
        out.push_back(a);
    }
    ::freeaddrinfo(list);
    if (out.empty()) error = "no addresses";
    return out;
}

REACTOR_INLINE CompactAddr compact(const SockAddr& a) {
    CompactAddr c;
    c.ipv6 = a.family() == AF_INET6;
    if (c.ipv6) {
        auto* v6 = reinterpret_cast<const sockaddr_in6*>(&a.storage);
        std::memcpy(c.ip, &v6->sin6_addr, 16);
        c.port = ntohs(v6->sin6_port);
    } else {
        auto* v4 = reinterpret_cast<const sockaddr_in*>(&a.storage);
        std::memcpy(c.ip, &v4->sin_addr, 4);
        c.port = ntohs(v4->sin_port);
    }
    return c;
}

REACTOR_INLINE SockAddr expand(const CompactAddr& c) {
    SockAddr a;
    if (c.ipv6) {
        auto* v6 = reinterpret_cast<sockaddr_in6*>(&a.storage);
        v6->sin6_family = AF_INET6;
        std::memcpy(&v6->sin6_addr, c.ip, 16);
        v6->sin6_port = htons(c.port);
        a.length = sizeof(sockaddr_in6);
    } else {
        auto* v4 = reinterpret_cast<sockaddr_in*>(&a.storage);
        v4->sin_family = AF_INET;
        std::memcpy(&v4->sin_addr, c.ip, 4);
        v4->sin_port = htons(c.port);
        a.length = sizeof(sockaddr_in);
    }
    return a;
}

REACTOR_INLINE void describe(const SockAddr& a, std::string& host, std::uint16_t& port, bool& ipv6) {
    char buf[INET6_ADDRSTRLEN] = {};
    ipv6 = a.family() == AF_INET6;
    if (ipv6) {
        auto* v6 = reinterpret_cast<const sockaddr_in6*>(&a.storage);
        ::inet_ntop(AF_INET6, &v6->sin6_addr, buf, sizeof buf);
        port = ntohs(v6->sin6_port);
    } else {
        auto* v4 = reinterpret_cast<const sockaddr_in*>(&a.storage);
        ::inet_ntop(AF_INET, &v4->sin_addr, buf, sizeof buf);
        port = ntohs(v4->sin_port);
    }
    host = buf;
}

#if !defined(REACTOR_OS_WINDOWS)
REACTOR_INLINE Fd tcpSocket(int family) {
#if defined(REACTOR_OS_SOCKET_FLAGS)
    Fd fd = ::socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
#else
    Fd fd = ::socket(family, SOCK_STREAM, 0);
    if (fd >= 0) { setNonBlocking(fd); setCloseOnExec(fd); }
#endif
#if defined(REACTOR_OS_SO_NOSIGPIPE)  // macOS/BSD: no SIGPIPE from this socket
    if (fd >= 0) { int one = 1; ::setsockopt(fd, SOL_SOCKET, SO_NOSIGPIPE, &one, sizeof one); }
#endif
    return fd;
}

REACTOR_INLINE bool setIntOption(Fd fd, int level, int name, int value) {
    return ::setsockopt(fd, level, name, &value, sizeof value) == 0;
}

REACTOR_INLINE bool setNoDelay(Fd fd, bool on) { return setIntOption(fd, IPPROTO_TCP, TCP_NODELAY, on ? 1 : 0); }

REACTOR_INLINE bool setKeepAlive(Fd fd, bool on) { return setIntOption(fd, SOL_SOCKET, SO_KEEPALIVE, on ? 1 : 0); }

REACTOR_INLINE bool getIntOption(Fd fd, int level, int name) {
    int value = 0;
    socklen_t len = sizeof value;
    return ::getsockopt(fd, level, name, &value, &len) == 0 && value != 0;
}

REACTOR_INLINE void setLingerZero(Fd fd) {
    linger l{};
    l.l_onoff = 1;
    l.l_linger = 0;
    ::setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof l);
}

REACTOR_INLINE int startConnect(Fd fd, const SockAddr& a) {
    int rc;
    do rc = ::connect(fd, a.get(), a.length);
    while (rc < 0 && errno == EINTR);
    return rc;
}

REACTOR_INLINE int socketError(Fd fd) {
    int err = 0;
    socklen_t len = sizeof err;
    if (::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0) return errno;
    return err;
}

REACTOR_INLINE Fd acceptOne(Fd listener, SockAddr& peer) {
    Fd fd;
    do {
        peer.length = sizeof peer.storage;
#if defined(REACTOR_OS_ACCEPT4)
        fd = ::accept4(listener, peer.get(), &peer.length, SOCK_NONBLOCK | SOCK_CLOEXEC);
#else
        fd = ::accept(listener, peer.get(), &peer.length);
        if (fd >= 0) { setNonBlocking(fd); setCloseOnExec(fd); }
#endif
    } while (fd < 0 && errno == EINTR);
    return fd;
}

REACTOR_INLINE bool outOfDescriptors(int err) { return err == EMFILE || err == ENFILE || err == ENOBUFS || err == ENOMEM; }

REACTOR_INLINE bool localAddress(Fd fd, SockAddr& a) {
    a.length = sizeof a.storage;
    return ::getsockname(fd, a.get(), &a.length) == 0;
}

REACTOR_INLINE bool peerAddress(Fd fd, SockAddr& a) {
    a.length = sizeof a.storage;
    return ::getpeername(fd, a.get(), &a.length) == 0;
}

REACTOR_INLINE bool unixAddress(const std::string& path, SockAddr& out, std::string& why) {
    auto* un = reinterpret_cast<sockaddr_un*>(&out.storage);
    if (path.empty()) {
        why = "a UNIX socket needs a path";
        return false;
    }
    if (!abstractName(path) && path.find('\0') != std::string::npos) {  // the file would be named by the part before it
        why = "the path contains a NUL byte";
        return false;
    }
    if (path.size() >= sizeof un->sun_path + (abstractName(path) ? 1 : 0)) {
        why = "the path is longer than the " + std::to_string(sizeof un->sun_path - (abstractName(path) ? 0 : 1)) +
              " bytes a UNIX socket address holds";
        return false;
    }
    out = SockAddr();
    un->sun_family = AF_UNIX;
    std::memcpy(un->sun_path, path.data(), path.size());
    // An abstract name is exactly its bytes; a file name ends at its NUL.
    out.length = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + path.size() + (abstractName(path) ? 0 : 1));
    return true;
}

REACTOR_INLINE std::string unixName(const SockAddr& a) {
    auto* un = reinterpret_cast<const sockaddr_un*>(&a.storage);
    std::size_t offset = offsetof(sockaddr_un, sun_path);
    if (a.family() != AF_UNIX || a.length <= offset) return "";
    std::size_t n = a.length - offset;
    if (un->sun_path[0] != '\0') n = ::strnlen(un->sun_path, n);
    return std::string(un->sun_path, n);
}

REACTOR_INLINE void removeStaleSocket(const std::string& path) {
    struct stat st {};
    if (::lstat(path.c_str(), &st) == 0 && S_ISSOCK(st.st_mode)) ::unlink(path.c_str());
}

REACTOR_INLINE PidLock lockPidFile(const std::string& name) {
    bool clean = true;
    for (int round = 0; round < 16; ++round) {  // bounded: another process may race us
        std::string pid = std::to_string(::getpid());
        if (::symlink(pid.c_str(), name.c_str()) == 0) return clean ? PidLock::acquired : PidLock::acquiredStale;
        if (errno != EEXIST) return PidLock::failed;
        char owner[32] = {};
        ssize_t n = ::readlink(name.c_str(), owner, sizeof owner - 1);
        if (n < 0) {
            if (errno == ENOENT) continue;  // released meanwhile: try again
            return PidLock::failed;
        }
        owner[n] = '\0';
        long ownerPid = std::strtol(owner, nullptr, 10);
        if (ownerPid > 0 && (::kill(static_cast<pid_t>(ownerPid), 0) == 0 || errno != ESRCH)) return PidLock::held;
        if (::unlink(name.c_str()) != 0 && errno != ENOENT) return PidLock::failed;  // its owner is gone
        clean = false;
    }
    return PidLock::held;
}

REACTOR_INLINE bool pidFileLocked(const std::string& name) {
    char owner[32] = {};
    ssize_t n = ::readlink(name.c_str(), owner, sizeof owner - 1);
    if (n < 0) return false;
    long ownerPid = std::strtol(owner, nullptr, 10);
    return ownerPid > 0 && (::kill(static_cast<pid_t>(ownerPid), 0) == 0 || errno != ESRCH);
}

REACTOR_INLINE bool peerCredentials(Fd fd, long& pid, long& uid, long& gid) {
#if defined(SO_PEERCRED)
    ucred cred{};
    socklen_t len = sizeof cred;
    if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) return false;
    pid = cred.pid;
    uid = static_cast<long>(cred.uid);
    gid = static_cast<long>(cred.gid);
    return true;
#elif defined(__APPLE__) || defined(__FreeBSD__) || defined(__OpenBSD__) || defined(__NetBSD__)
    uid_t u;
    gid_t g;
    if (::getpeereid(fd, &u, &g) != 0) return false;
    pid = -1;
    uid = static_cast<long>(u);
    gid = static_cast<long>(g);
    return true;
#else
    (void)fd; (void)pid; (void)uid; (void)gid;
    return false;
#endif
}

REACTOR_INLINE long receive(Fd fd, char* buf, std::size_t size) {
    ssize_t n;
    do n = ::recv(fd, buf, size, 0);
    while (n < 0 && errno == EINTR);
    return static_cast<long>(n);
}

#if !defined(REACTOR_OS_MSG_NOSIGNAL) && !defined(REACTOR_OS_SO_NOSIGPIPE)
/// Neither MSG_NOSIGNAL nor SO_NOSIGPIPE: SIGPIPE is blocked in this thread
/// while the send runs, and one that the send raised is taken off the
/// pending set before the mask is restored. Neither the process's signal
/// handlers nor other threads are touched; a SIGPIPE that was already
/// pending (someone else's) is left alone.
class QuietSigpipe {
public:
    QuietSigpipe() {
        sigemptyset(&pipe_);
        sigaddset(&pipe_, SIGPIPE);
        pthread_sigmask(SIG_BLOCK, &pipe_, &old_);
        sigset_t pending;
        sigpending(&pending);
        alreadyPending_ = sigismember(&pending, SIGPIPE) == 1;
    }
    ~QuietSigpipe() {
        int err = errno;  // the caller reads the send's errno after this
        if (raised_ && !alreadyPending_) {
            timespec zero{};
            while (sigtimedwait(&pipe_, nullptr, &zero) < 0 && errno == EINTR) {
            }
        }
        pthread_sigmask(SIG_SETMASK, &old_, nullptr);
        errno = err;
    }
    QuietSigpipe(const QuietSigpipe&) = delete;
    QuietSigpipe& operator=(const QuietSigpipe&) = delete;
    /// After the send: whether it failed with EPIPE (and so raised SIGPIPE).
    void sent(long result) { raised_ = result < 0 && errno == EPIPE; }

private:
    sigset_t pipe_{}, old_{};
    bool alreadyPending_ = false, raised_ = false;
};
#endif

/// send()/sendmsg() with `flags`, EINTR retried.
REACTOR_INLINE long sendWithFlags(Fd fd, const std::string_view* parts, std::size_t count, int flags) {
    ssize_t sent;
    if (count == 1) {  // the common case: send() skips sendmsg's message header
        do sent = ::send(fd, parts[0].data(), parts[0].size(), flags);
        while (sent < 0 && errno == EINTR);
        return static_cast<long>(sent);
    }
    constexpr std::size_t maxParts = 16;
    iovec iov[maxParts];
    std::size_t n = std::min(count, maxParts);
    for (std::size_t i = 0; i < n; ++i) {
        iov[i].iov_base = const_cast<char*>(parts[i].data());
        iov[i].iov_len = parts[i].size();
    }
    msghdr msg{};
    msg.msg_iov = iov;
    msg.msg_iovlen = static_cast<decltype(msg.msg_iovlen)>(n);
    do sent = ::sendmsg(fd, &msg, flags);
    while (sent < 0 && errno == EINTR);
    return static_cast<long>(sent);
}

REACTOR_INLINE long sendParts(Fd fd, const std::string_view* parts, std::size_t count) {
#if defined(REACTOR_OS_MSG_NOSIGNAL)
    return sendWithFlags(fd, parts, count, MSG_NOSIGNAL);
#elif defined(REACTOR_OS_SO_NOSIGPIPE)
    return sendWithFlags(fd, parts, count, 0);  // SO_NOSIGPIPE is set on the socket
#else
    QuietSigpipe quiet;
    long sent = sendWithFlags(fd, parts, count, 0);
    quiet.sent(sent);
    return sent;
#endif
}

REACTOR_INLINE Fd udpSocket(int family) {
#if defined(REACTOR_OS_SOCKET_FLAGS)
    Fd fd = ::socket(family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
#else
    Fd fd = ::socket(family, SOCK_DGRAM, 0);
    if (fd >= 0) { setNonBlocking(fd); setCloseOnExec(fd); }
#endif
    return fd;
}

REACTOR_INLINE long sendTo(Fd fd, std::string_view data, const SockAddr* to) {
#if defined(REACTOR_OS_MSG_NOSIGNAL)  // datagrams raise no SIGPIPE; the flag costs nothing
    constexpr int flags = MSG_NOSIGNAL;
#else
    constexpr int flags = 0;
#endif
    ssize_t sent;
    do sent = to ? ::sendto(fd, data.data(), data.size(), flags, to->get(), to->length)
                 : ::send(fd, data.data(), data.size(), flags);
    while (sent < 0 && errno == EINTR);
    return static_cast<long>(sent);
}

REACTOR_INLINE long receiveFrom(Fd fd, char* buf, std::size_t size, SockAddr& from, bool& truncated,
                                std::size_t& fullLength) {
    iovec iov;
    iov.iov_base = buf;
    iov.iov_len = size;
    msghdr msg{};
    msg.msg_name = &from.storage;
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
#if defined(__linux__)
    constexpr int flags = MSG_TRUNC;  // Linux: return the datagram's real length
#else
    constexpr int flags = 0;
#endif
    ssize_t n;
    do {
        msg.msg_namelen = sizeof from.storage;
        msg.msg_flags = 0;
        n = ::recvmsg(fd, &msg, flags);
    } while (n < 0 && errno == EINTR);
    if (n < 0) return -1;
    from.length = msg.msg_namelen;
    truncated = (msg.msg_flags & MSG_TRUNC) != 0;
    fullLength = static_cast<std::size_t>(n);
    if (fullLength > size) n = static_cast<ssize_t>(size);
    if (truncated && fullLength < size) fullLength = size;
    return static_cast<long>(n);
}

REACTOR_INLINE bool setReuseMultiple(Fd fd) {
    if (!setReuseAddress(fd)) return false;
#if defined(SO_REUSEPORT)
    // Some kernels define it and refuse it (ENOPROTOOPT): SO_REUSEADDR is
    // then what shares the port, as in Twisted.
    if (!setIntOption(fd, SOL_SOCKET, SO_REUSEPORT, 1) && errno != ENOPROTOOPT) return false;
#endif
    return true;
}

REACTOR_INLINE bool setMulticastTTL(Fd fd, bool ipv6, int ttl) {
    if (ipv6) return setIntOption(fd, IPPROTO_IPV6, IPV6_MULTICAST_HOPS, ttl);
    unsigned char v = static_cast<unsigned char>(ttl);  // a byte on every system
    return ::setsockopt(fd, IPPROTO_IP, IP_MULTICAST_TTL, &v, sizeof v) == 0;
}

REACTOR_INLINE int getMulticastTTL(Fd fd, bool ipv6) {
    if (ipv6) {
        int v = 0;
        socklen_t len = sizeof v;
        return ::getsockopt(fd, IPPROTO_IPV6, IPV6_MULTICAST_HOPS, &v, &len) == 0 ? v : -1;
    }
    unsigned char v = 0;
    socklen_t len = sizeof v;
    return ::getsockopt(fd, IPPROTO_IP, IP_MULTICAST_TTL, &v, &len) == 0 ? v : -1;
}

REACTOR_INLINE bool setMulticastLoop(Fd fd, bool ipv6, bool on) {
    if (ipv6) {
        unsigned int v = on ? 1u : 0u;
        return ::setsockopt(fd, IPPROTO_IPV6, IPV6_MULTICAST_LOOP, &v, sizeof v) == 0;
    }
    unsigned char v = on ? 1 : 0;
    return ::setsockopt(fd, IPPROTO_IP, IP_MULTICAST_LOOP, &v, sizeof v) == 0;
}

REACTOR_INLINE bool getMulticastLoop(Fd fd, bool ipv6) {
    if (ipv6) {
        unsigned int v = 0;
        socklen_t len = sizeof v;
        return ::getsockopt(fd, IPPROTO_IPV6, IPV6_MULTICAST_LOOP, &v, &len) == 0 && v != 0;
    }
    unsigned char v = 0;
    socklen_t len = sizeof v;
    return ::getsockopt(fd, IPPROTO_IP, IP_MULTICAST_LOOP, &v, &len) == 0 && v != 0;
}

REACTOR_INLINE void reactorSignalHandler(int sig) {
    int savedErrno = errno;  // the interrupted code may be about to read it
    deliverSignal(sig);
    errno = savedErrno;
}

REACTOR_INLINE const char* signalName(int sig) { return sig == SIGINT ? "SIGINT" : sig == SIGTERM ? "SIGTERM" : "a signal"; }

// The program's own handlers, put back when the last reactor in run(true)
// returns (not when the first does: another may still be running).
REACTOR_INLINE struct sigaction* savedSignalActions() {
    static struct sigaction saved[2] = {};
    return saved;
}

REACTOR_INLINE SignalHandlers::SignalHandlers(Fd wakeFd) {
    std::lock_guard<std::mutex> lock(signalSlotsLock());
    bool first = false;
    slot_ = takeSignalSlot(wakeFd, first);
    if (!first) return;
    struct sigaction sa {};
    sa.sa_handler = &reactorSignalHandler;
    sigemptyset(&sa.sa_mask);
    ::sigaction(SIGINT, &sa, &savedSignalActions()[0]);
    ::sigaction(SIGTERM, &sa, &savedSignalActions()[1]);
}

REACTOR_INLINE SignalHandlers::~SignalHandlers() {
    std::lock_guard<std::mutex> lock(signalSlotsLock());
    if (!giveSignalSlot(slot_)) return;
    ::sigaction(SIGINT, &savedSignalActions()[0], nullptr);
    ::sigaction(SIGTERM, &savedSignalActions()[1], nullptr);
}

#else  // REACTOR_OS_WINDOWS: the bodies of the calls above, on Winsock 2

REACTOR_INLINE int winsockStarted() {
    static const int error = [] {
        WSADATA data;
        return ::WSAStartup(MAKEWORD(2, 2), &data);
    }();
    return error;
}

REACTOR_INLINE std::string errorString(int err) {
    // The errors a program meets on sockets read as on POSIX (the system's
    // text is long, localised, and wine has none for some); others as the
    // system words them.
    switch (err) {
        case WSAEADDRINUSE: return "Address already in use";
        case WSAEADDRNOTAVAIL: return "Cannot assign requested address";
        case WSAECONNREFUSED: return "Connection refused";
        case WSAECONNRESET: return "Connection reset by peer";
        case WSAECONNABORTED: return "Software caused connection abort";
        case WSAETIMEDOUT: return "Connection timed out";
        case WSAENETUNREACH: return "Network is unreachable";
        case WSAEHOSTUNREACH: return "No route to host";
        case WSAEMFILE: return "Too many open files";
        case WSAEMSGSIZE: return "Message too long";
        case WSAEWOULDBLOCK: return "Resource temporarily unavailable";
        case WSAENOTSOCK: return "Socket operation on non-socket";
        case WSAEAFNOSUPPORT: return "Address family not supported by protocol";
        case WSAENOPROTOOPT: return "Protocol not available";
        case WSAEACCES: return "Permission denied";
        case WSAEINVAL: return "Invalid argument";
        // wine's FormatMessage has no text for these ("error 10055" was all
        // a log line said); Windows' is long and localised.
        case WSAENETDOWN: return "Network is down";
        case WSAENETRESET: return "Network dropped connection on reset";
        case WSAENOBUFS: return "No buffer space available";
        case WSAEISCONN: return "Transport endpoint is already connected";
        case WSAENOTCONN: return "Transport endpoint is not connected";
        case WSAESHUTDOWN: return "Cannot send after transport endpoint shutdown";
        case WSAEHOSTDOWN: return "Host is down";
        case WSAEINPROGRESS: return "Operation now in progress";
        case WSAEALREADY: return "Operation already in progress";
        case WSAEDESTADDRREQ: return "Destination address required";
        case WSAEPROTONOSUPPORT: return "Protocol not supported";
        case WSAEOPNOTSUPP: return "Operation not supported";
        case WSAEINTR: return "Interrupted system call";
        case WSAEFAULT: return "Bad address";
        // getaddrinfo's EAI_* values are these on Windows (resolve()).
        case WSAHOST_NOT_FOUND: return "Name or service not known";
        case WSATRY_AGAIN: return "Temporary failure in name resolution";
        case WSANO_RECOVERY: return "Non-recoverable failure in name resolution";
        case WSANO_DATA: return "No address associated with hostname";
        case WSATYPE_NOT_FOUND: return "Servname not supported for ai_socktype";
        case WSAESOCKTNOSUPPORT: return "ai_socktype not supported";
        default: break;
    }
    char buf[256] = {};
    DWORD n = ::FormatMessageA(FORMAT_MESSAGE_FROM_SYSTEM | FORMAT_MESSAGE_IGNORE_INSERTS, nullptr,
                               static_cast<DWORD>(err), 0, buf, sizeof buf, nullptr);
    while (n > 0 && (buf[n - 1] == '\r' || buf[n - 1] == '\n' || buf[n - 1] == ' ' || buf[n - 1] == '.')) --n;
    if (n == 0) return "error " + std::to_string(err);
    return std::string(buf, n);
}

REACTOR_INLINE ConnectErrorKind classifyConnectError(int err) {
    switch (err) {
        case WSAECONNREFUSED: return ConnectErrorKind::refused;
        case WSAETIMEDOUT: return ConnectErrorKind::timedOut;
        case WSAENETUNREACH:
        case WSAEHOSTUNREACH: return ConnectErrorKind::noRoute;
        case WSAEADDRINUSE:
        case WSAEADDRNOTAVAIL: return ConnectErrorKind::bindError;
        default: return ConnectErrorKind::other;
    }
}

REACTOR_INLINE void closeFd(Fd fd) {
    if (validFd(fd)) ::closesocket(fd);
}

REACTOR_INLINE bool setNonBlocking(Fd fd) {
    u_long on = 1;
    return ::ioctlsocket(fd, static_cast<long>(FIONBIO), &on) == 0;
}

REACTOR_INLINE bool setReusePort(Fd) {
    setLastError(WSAENOPROTOOPT);
    return false;
}

REACTOR_INLINE bool setCloseOnExec(Fd fd) {
    return ::SetHandleInformation(reinterpret_cast<HANDLE>(fd), HANDLE_FLAG_INHERIT, 0) != 0;
}

REACTOR_INLINE bool socketPair(Fd out[2]) {
    out[0] = out[1] = invalidFd;
    if (int err = winsockStarted()) {
        setLastError(err);
        return false;
    }
    // A listener on a free loopback port, a client connected to it, the
    // accepted end; the listener is closed at once. The accepted peer must
    // be our client (another local process could race us to the port).
    Fd listener = ::socket(AF_INET, SOCK_STREAM, IPPROTO_TCP);
    if (!validFd(listener)) return false;
    SockAddr a;
    parseLiteral("127.0.0.1", 0, a);
    Fd client = invalidFd, server = invalidFd;
    SockAddr bound, mine, peer;
    bool ok = ::bind(listener, a.get(), a.length) == 0 && ::listen(listener, 1) == 0 && localAddress(listener, bound);
    if (ok) client = ::socket(AF_INET, SOCK_STREAM, IPPROTO_TCP);
    ok = ok && validFd(client) && ::connect(client, bound.get(), bound.length) == 0 && localAddress(client, mine);
    if (ok) {
        peer.length = sizeof peer.storage;
        server = ::accept(listener, peer.get(), &peer.length);
        ok = validFd(server) && peer.length == mine.length && std::memcmp(&peer.storage, &mine.storage, mine.length) == 0;
    }
    const int err = lastError();
    ::closesocket(listener);
    if (!ok) {
        closeFd(client);
        closeFd(server);
        setLastError(err ? err : WSAECONNABORTED);
        return false;
    }
    setCloseOnExec(client);
    setCloseOnExec(server);
    setNoDelay(client, true);
    setNoDelay(server, true);
    out[0] = server;
    out[1] = client;
    return true;
}

REACTOR_INLINE Waker::Waker() {
    Fd p[2];
    if (!socketPair(p)) {
        error_ = lastError();
        return;
    }
    readFd_ = p[0];
    writeFd_ = p[1];
    setNonBlocking(readFd_);
    setNonBlocking(writeFd_);
}

REACTOR_INLINE Waker::~Waker() {
    closeFd(readFd_);
    closeFd(writeFd_);
}

REACTOR_INLINE void Waker::wake(Fd writeFd) {
    if (!validFd(writeFd)) return;
    char byte = 1;
    ::send(writeFd, &byte, 1, 0);  // a full buffer already means "wake up"
}

REACTOR_INLINE void Waker::drain() const {
    char buf[64];
    while (::recv(readFd_, buf, sizeof buf, 0) > 0) {
    }
}

REACTOR_INLINE Fd tcpSocket(int family) {
    if (int err = winsockStarted()) {
        setLastError(err);
        return invalidFd;
    }
    if (family == AF_UNIX) {  // not offered: see unixAddress
        setLastError(WSAEAFNOSUPPORT);
        return invalidFd;
    }
    Fd fd = ::socket(family, SOCK_STREAM, IPPROTO_TCP);
    if (validFd(fd)) { setNonBlocking(fd); setCloseOnExec(fd); }
    if (validFd(fd) && family == AF_INET6) setIntOption(fd, IPPROTO_IPV6, IPV6_V6ONLY, 0);  // "::" takes IPv4 too, as on Linux
    return fd;
}

REACTOR_INLINE bool setIntOption(Fd fd, int level, int name, int value) {
    return ::setsockopt(fd, level, name, reinterpret_cast<const char*>(&value), sizeof value) == 0;
}

REACTOR_INLINE bool setNoDelay(Fd fd, bool on) { return setIntOption(fd, IPPROTO_TCP, TCP_NODELAY, on ? 1 : 0); }

REACTOR_INLINE bool setKeepAlive(Fd fd, bool on) { return setIntOption(fd, SOL_SOCKET, SO_KEEPALIVE, on ? 1 : 0); }

REACTOR_INLINE bool getIntOption(Fd fd, int level, int name) {
    int value = 0;
    socklen_t len = sizeof value;
    return ::getsockopt(fd, level, name, reinterpret_cast<char*>(&value), &len) == 0 && value != 0;
}

REACTOR_INLINE void setLingerZero(Fd fd) {
    linger l{};
    l.l_onoff = 1;
    l.l_linger = 0;
    ::setsockopt(fd, SOL_SOCKET, SO_LINGER, reinterpret_cast<const char*>(&l), sizeof l);
}

REACTOR_INLINE int startConnect(Fd fd, const SockAddr& a) { return ::connect(fd, a.get(), a.length); }

REACTOR_INLINE int socketError(Fd fd) {
    int err = 0;
    socklen_t len = sizeof err;
    if (::getsockopt(fd, SOL_SOCKET, SO_ERROR, reinterpret_cast<char*>(&err), &len) != 0) return lastError();
    return err;
}

REACTOR_INLINE Fd acceptOne(Fd listener, SockAddr& peer) {
    peer.length = sizeof peer.storage;
    Fd fd = ::accept(listener, peer.get(), &peer.length);
    if (validFd(fd)) { setNonBlocking(fd); setCloseOnExec(fd); }
    return fd;
}

REACTOR_INLINE bool outOfDescriptors(int err) { return err == WSAEMFILE || err == WSAENOBUFS; }

REACTOR_INLINE bool localAddress(Fd fd, SockAddr& a) {
    a.length = sizeof a.storage;
    return ::getsockname(fd, a.get(), &a.length) == 0;
}

REACTOR_INLINE bool peerAddress(Fd fd, SockAddr& a) {
    a.length = sizeof a.storage;
    return ::getpeername(fd, a.get(), &a.length) == 0;
}

REACTOR_INLINE bool unixAddress(const std::string&, SockAddr&, std::string& why) {
    why = "UNIX-domain sockets are not supported on Windows";
    return false;
}

REACTOR_INLINE std::string unixName(const SockAddr&) { return ""; }

REACTOR_INLINE void removeStaleSocket(const std::string&) {}

REACTOR_INLINE PidLock lockPidFile(const std::string&) { return PidLock::failed; }

REACTOR_INLINE bool pidFileLocked(const std::string&) { return false; }

REACTOR_INLINE bool peerCredentials(Fd, long&, long&, long&) { return false; }

/// Winsock counts in int: larger requests are cut (a short read or write,
/// which every caller handles).
inline int winsockLength(std::size_t size) { return static_cast<int>(std::min<std::size_t>(size, 0x40000000)); }

REACTOR_INLINE long receive(Fd fd, char* buf, std::size_t size) {
    return ::recv(fd, buf, winsockLength(size), 0);
}

REACTOR_INLINE long sendParts(Fd fd, const std::string_view* parts, std::size_t count) {
    if (count == 1) return ::send(fd, parts[0].data(), winsockLength(parts[0].size()), 0);
    constexpr std::size_t maxParts = 16;
    WSABUF bufs[maxParts];
    // At most winsockLength's limit in all (the count returned is a long,
    // 32 bits on Windows); a part cut to it ends the gather: bytes of the
    // next part sent after a cut one would be counted as the cut part's.
    std::size_t n = 0, room = static_cast<std::size_t>(winsockLength(static_cast<std::size_t>(-1)));
    while (n < std::min(count, maxParts) && room > 0) {
        bufs[n].buf = const_cast<char*>(parts[n].data());
        bufs[n].len = static_cast<ULONG>(std::min(parts[n].size(), room));
        room -= bufs[n].len;
        const bool cut = bufs[n].len != parts[n].size();
        ++n;
        if (cut) break;
    }
    DWORD sent = 0;
    if (::WSASend(fd, bufs, static_cast<DWORD>(n), &sent, 0, nullptr, nullptr) != 0) return -1;
    return static_cast<long>(sent);
}

REACTOR_INLINE Fd udpSocket(int family) {
    if (int err = winsockStarted()) {
        setLastError(err);
        return invalidFd;
    }
    Fd fd = ::socket(family, SOCK_DGRAM, IPPROTO_UDP);
    if (validFd(fd)) { setNonBlocking(fd); setCloseOnExec(fd); }
    if (validFd(fd) && family == AF_INET6) setIntOption(fd, IPPROTO_IPV6, IPV6_V6ONLY, 0);  // "::" takes IPv4 too, as on Linux
    return fd;
}

REACTOR_INLINE long sendTo(Fd fd, std::string_view data, const SockAddr* to) {
    return to ? ::sendto(fd, data.data(), winsockLength(data.size()), 0, to->get(), to->length)
              : ::send(fd, data.data(), winsockLength(data.size()), 0);
}

REACTOR_INLINE long receiveFrom(Fd fd, char* buf, std::size_t size, SockAddr& from, bool& truncated,
                                std::size_t& fullLength) {
    from.length = sizeof from.storage;
    int n = ::recvfrom(fd, buf, winsockLength(size), 0, from.get(), &from.length);
    truncated = false;
    if (n < 0) {
        if (lastError() != WSAEMSGSIZE) return -1;
        // Windows fills the buffer and reports the rest as an error; the
        // datagram's real length is not told.
        truncated = true;
        n = winsockLength(size);
    }
    fullLength = static_cast<std::size_t>(n);
    return n;
}

REACTOR_INLINE bool setReuseMultiple(Fd fd) { return setIntOption(fd, SOL_SOCKET, SO_REUSEADDR, 1); }

// Winsock's IPv4 multicast options are DWORDs (not bytes as on POSIX).
REACTOR_INLINE bool setMulticastTTL(Fd fd, bool ipv6, int ttl) {
    return setIntOption(fd, ipv6 ? IPPROTO_IPV6 : IPPROTO_IP, ipv6 ? IPV6_MULTICAST_HOPS : IP_MULTICAST_TTL, ttl);
}

REACTOR_INLINE int getMulticastTTL(Fd fd, bool ipv6) {
    DWORD v = 0;
    socklen_t len = sizeof v;
    if (::getsockopt(fd, ipv6 ? IPPROTO_IPV6 : IPPROTO_IP, ipv6 ? IPV6_MULTICAST_HOPS : IP_MULTICAST_TTL,
                     reinterpret_cast<char*>(&v), &len) != 0)
        return -1;
    return static_cast<int>(v & (len == 1 ? 0xffu : 0xffffffffu));
}

REACTOR_INLINE bool setMulticastLoop(Fd fd, bool ipv6, bool on) {
    return setIntOption(fd, ipv6 ? IPPROTO_IPV6 : IPPROTO_IP, ipv6 ? IPV6_MULTICAST_LOOP : IP_MULTICAST_LOOP, on ? 1 : 0);
}

REACTOR_INLINE bool getMulticastLoop(Fd fd, bool ipv6) {
    return getIntOption(fd, ipv6 ? IPPROTO_IPV6 : IPPROTO_IP, ipv6 ? IPV6_MULTICAST_LOOP : IP_MULTICAST_LOOP);
}

REACTOR_INLINE BOOL WINAPI reactorConsoleHandler(DWORD event) {
    if (event != CTRL_C_EVENT && event != CTRL_BREAK_EVENT && event != CTRL_CLOSE_EVENT) return FALSE;
    deliverSignal(static_cast<int>(event) + 1);
    // The console closing ends the process as soon as this returns (or
    // after 5 s): give the reactors' shutdown that long to finish.
    for (int waited = 0; event == CTRL_CLOSE_EVENT && anySignalSlot() && waited < 4500; waited += 10)
        ::Sleep(10);
    return TRUE;  // handled: the reactor shuts down
}

REACTOR_INLINE const char* signalName(int sig) {
    switch (sig - 1) {
        case CTRL_C_EVENT: return "Ctrl-C";
        case CTRL_BREAK_EVENT: return "Ctrl-Break";
        case CTRL_CLOSE_EVENT: return "the console closing";
        default: return "a console event";
    }
}

REACTOR_INLINE SignalHandlers::SignalHandlers(Fd wakeFd) {
    std::lock_guard<std::mutex> lock(signalSlotsLock());
    bool first = false;
    slot_ = takeSignalSlot(wakeFd, first);
    if (first) ::SetConsoleCtrlHandler(&reactorConsoleHandler, TRUE);
}

REACTOR_INLINE SignalHandlers::~SignalHandlers() {
    std::lock_guard<std::mutex> lock(signalSlotsLock());
    if (giveSignalSlot(slot_)) ::SetConsoleCtrlHandler(&reactorConsoleHandler, FALSE);
}
#endif  // REACTOR_OS_WINDOWS

// The same on both: the option buffers are passed as char* (Winsock's type;
// POSIX takes void*, which a char* converts to).
REACTOR_INLINE bool joinGroup(Fd fd, const SockAddr& group, const SockAddr* iface, bool join) {
    if (group.ipv6()) {
        ipv6_mreq m{};
        m.ipv6mr_multiaddr = reinterpret_cast<const sockaddr_in6*>(&group.storage)->sin6_addr;
        m.ipv6mr_interface = 0;
        return ::setsockopt(fd, IPPROTO_IPV6, join ? IPV6_JOIN_GROUP : IPV6_LEAVE_GROUP,
                            reinterpret_cast<const char*>(&m), sizeof m) == 0;
    }
    ip_mreq m{};
    m.imr_multiaddr = reinterpret_cast<const sockaddr_in*>(&group.storage)->sin_addr;
    m.imr_interface.s_addr = htonl(INADDR_ANY);
    if (iface) m.imr_interface = reinterpret_cast<const sockaddr_in*>(&iface->storage)->sin_addr;
    return ::setsockopt(fd, IPPROTO_IP, join ? IP_ADD_MEMBERSHIP : IP_DROP_MEMBERSHIP,
                        reinterpret_cast<const char*>(&m), sizeof m) == 0;
}

REACTOR_INLINE bool setMulticastInterface(Fd fd, const SockAddr& iface) {
    in_addr a = reinterpret_cast<const sockaddr_in*>(&iface.storage)->sin_addr;
    return ::setsockopt(fd, IPPROTO_IP, IP_MULTICAST_IF, reinterpret_cast<const char*>(&a), sizeof a) == 0;
}

REACTOR_INLINE std::string getMulticastInterface(Fd fd) {
    in_addr a{};
    socklen_t len = sizeof a;
    if (::getsockopt(fd, IPPROTO_IP, IP_MULTICAST_IF, reinterpret_cast<char*>(&a), &len) != 0) return "";
    char buf[INET_ADDRSTRLEN] = {};
    ::inet_ntop(AF_INET, &a, buf, sizeof buf);
    return buf;
}

REACTOR_INLINE SignalSlot* signalSlots() {
    static SignalSlot slots[signalSlotCount];
    return slots;
}

REACTOR_INLINE std::mutex& signalSlotsLock() {
    static std::mutex lock;
    return lock;
}

REACTOR_INLINE int& signalSlotsTaken() {
    static int taken = 0;
    return taken;
}

REACTOR_INLINE void deliverSignal(int sig) {
    for (int i = 0; i < signalSlotCount; ++i) {
        SignalSlot& slot = signalSlots()[i];
        Fd fd = slot.wakeFd.load();
        if (!validFd(fd)) continue;
        slot.received.store(sig);
        Waker::wake(fd);
    }
}

REACTOR_INLINE bool anySignalSlot() {
    for (int i = 0; i < signalSlotCount; ++i)
        if (validFd(signalSlots()[i].wakeFd.load())) return true;
    return false;
}

REACTOR_INLINE int takeSignalSlot(Fd wakeFd, bool& first) {
    first = signalSlotsTaken()++ == 0;
    for (int i = 0; i < signalSlotCount; ++i) {
        SignalSlot& slot = signalSlots()[i];
        if (validFd(slot.wakeFd.load())) continue;
        slot.received.store(0);
        slot.wakeFd.store(wakeFd);
        return i;
    }
    return -1;  // 64 reactors in run(true) at once: this one hears no signals
}

REACTOR_INLINE bool giveSignalSlot(int slot) {
    if (slot >= 0) signalSlots()[slot].wakeFd.store(invalidFd);
    return --signalSlotsTaken() == 0;
}

REACTOR_INLINE int SignalHandlers::take() { return slot_ < 0 ? 0 : signalSlots()[slot_].received.exchange(0); }

}  // namespace os
}  // namespace detail

// ---- 4. UTILITIES ----------------------------------------------------------

REACTOR_INLINE void Failure::adopt(const Error& e) {
    message_ = e.message();  // not what(): a NamedError's what() has its name too
    e.typeNames(chain_);
    error_ = e.clone();
#if REACTOR_HAS_EXCEPTIONS
    exception_ = e.toExceptionPtr();
#endif
}

#if REACTOR_HAS_EXCEPTIONS
REACTOR_INLINE Failure Failure::fromException(std::exception_ptr ep) {
    Failure f;
    f.chain_ = {};
    f.exception_ = ep;
    try {
        std::rethrow_exception(ep);
    } catch (const Error& e) {  // the library's own: names without RTTI
        f.message_ = e.message();
        e.typeNames(f.chain_);
    } catch (const std::exception& e) {
        f.message_ = e.what();
        f.describe(e);
    } catch (...) {
        f.chain_.push("UnknownException");
        f.message_ = "an exception that is not a std::exception";
    }
    return f;
}
#endif

namespace detail {
#if REACTOR_HAS_EXCEPTIONS
REACTOR_INLINE void reportUnhandled(std::string_view context, Failure* failure) {
    Failure caught = Failure::current();
    log(LogLevel::error, "Unhandled error in " + std::string(context) + ": " + caught.str());
    if (failure) *failure = std::move(caught);
}
#endif

REACTOR_INLINE std::string printable(std::string_view s) {
    static const char hex[] = "0123456789abcdef";
    auto escape = [&](std::string& out, unsigned char u) {
        out += "\\x";
        out += hex[u >> 4];
        out += hex[u & 15];
    };
    std::string out;
    std::size_t i = 0;
    while (i < s.size() && i < 200) {
        unsigned char u = static_cast<unsigned char>(s[i]);
        if (u < 0x80) {
            if (u < 0x20 || u == 0x7f) escape(out, u);  // C0 controls and DEL
            else out += static_cast<char>(u);
            ++i;
            continue;
        }
        // Whole UTF-8 characters pass, except the C1 controls U+0080..U+009F
        // (U+009B is CSI to some terminals); any other byte >= 0x80 is escaped.
        std::size_t n = u >= 0xC2 && u <= 0xDF ? 2 : u >= 0xE0 && u <= 0xEF ? 3 : u >= 0xF0 && u <= 0xF4 ? 4 : 0;
        bool whole = n != 0 && i + n <= s.size();
        for (std::size_t k = 1; whole && k < n; ++k)
            whole = (static_cast<unsigned char>(s[i + k]) & 0xC0) == 0x80;
        if (whole && u == 0xC2 && static_cast<unsigned char>(s[i + 1]) <= 0x9F) whole = false;
        if (whole) {
            out.append(s.data() + i, n);
            i += n;
        } else {
            escape(out, u);
            ++i;
        }
    }
    if (i < s.size()) out += "...";
    return out;
}
}  // namespace detail

// The error classes' constructors live here, not in their classes, so that
// a separately compiled build instantiates ErrorType's virtual functions
// (clone, toExceptionPtr) in this TU only.
#define REACTOR_ERROR_CONSTRUCTOR(Name) \
    REACTOR_INLINE error::Name::Name(std::string message) : ErrorType(std::move(message)) {}
REACTOR_ERROR_CONSTRUCTOR(ValueError)
REACTOR_ERROR_CONSTRUCTOR(RuntimeError)
REACTOR_ERROR_CONSTRUCTOR(AlreadyCalled)
REACTOR_ERROR_CONSTRUCTOR(AlreadyCancelled)
REACTOR_ERROR_CONSTRUCTOR(ReactorNotRunning)
REACTOR_ERROR_CONSTRUCTOR(ReactorAlreadyRunning)
REACTOR_ERROR_CONSTRUCTOR(ConnectionClosed)
REACTOR_ERROR_CONSTRUCTOR(ConnectionDone)
REACTOR_ERROR_CONSTRUCTOR(ConnectionLost)
REACTOR_ERROR_CONSTRUCTOR(ConnectionAborted)
REACTOR_ERROR_CONSTRUCTOR(ConnectError)
REACTOR_ERROR_CONSTRUCTOR(ConnectBindError)
REACTOR_ERROR_CONSTRUCTOR(UnknownHostError)
REACTOR_ERROR_CONSTRUCTOR(DNSLookupError)
REACTOR_ERROR_CONSTRUCTOR(NoRouteError)
REACTOR_ERROR_CONSTRUCTOR(ConnectionRefusedError)
REACTOR_ERROR_CONSTRUCTOR(TCPTimedOutError)
REACTOR_ERROR_CONSTRUCTOR(BadFileError)
REACTOR_ERROR_CONSTRUCTOR(UserError)
REACTOR_ERROR_CONSTRUCTOR(TimeoutError)
REACTOR_ERROR_CONSTRUCTOR(NotConnectingError)
REACTOR_ERROR_CONSTRUCTOR(BindError)
REACTOR_ERROR_CONSTRUCTOR(CannotListenError)
REACTOR_ERROR_CONSTRUCTOR(NotListeningError)
REACTOR_ERROR_CONSTRUCTOR(ConnectingCancelledError)
REACTOR_ERROR_CONSTRUCTOR(NoProtocol)
REACTOR_ERROR_CONSTRUCTOR(InvalidAddressError)
REACTOR_ERROR_CONSTRUCTOR(MessageLengthError)
REACTOR_ERROR_CONSTRUCTOR(MulticastJoinError)
#undef REACTOR_ERROR_CONSTRUCTOR

namespace detail {
#if REACTOR_HAS_RTTI && defined(__GNUG__)
REACTOR_INLINE std::string unqualifiedName(const std::string& name) {
    // The last "::" outside template (and function) arguments: the name
    // of a class template's instance keeps its arguments whole.
    std::size_t start = 0;
    int depth = 0;
    for (std::size_t i = 0; i + 1 < name.size(); ++i) {
        const char c = name[i];
        if (c == '<' || c == '(') {
            ++depth;
        } else if ((c == '>' || c == ')') && depth > 0) {
            --depth;
        } else if (depth == 0 && c == ':' && name[i + 1] == ':') {
            start = i + 2;
            ++i;
        }
    }
    return name.substr(start);
}

REACTOR_INLINE std::string demangle(const char* name) {
    int status = 0;
    char* out = abi::__cxa_demangle(name, nullptr, nullptr, &status);
    std::string result = (status == 0 && out) ? out : name;
    std::free(out);
    return result;
}
#endif
}  // namespace detail

REACTOR_INLINE const char* logLevelName(LogLevel level) {
    switch (level) {
        case LogLevel::debug: return "debug";
        case LogLevel::info: return "info";
        case LogLevel::warning: return "warning";
        case LogLevel::error: return "error";
        case LogLevel::critical: return "critical";
    }
    return "?";
}
namespace detail {

/// The log hook and the lock that serializes its calls (recursive: a sink
/// may log). Held through a shared_ptr so that a sink which calls
/// setLogger keeps running on a live object.
struct LogHook {
    std::recursive_mutex mutex;
    std::shared_ptr<Logger> logger;  // null: the default stderr writer
};

REACTOR_INLINE LogHook& logHook() {
    static LogHook hook;
    return hook;
}

REACTOR_INLINE void defaultLog(LogLevel level, std::string_view message) {
    std::string line = "[reactor ";
    line += logLevelName(level);
    line += "] ";
    line += message;
    line += '\n';
    std::fputs(line.c_str(), stderr);
}
}  // namespace detail

REACTOR_INLINE Logger setLogger(Logger logger) {
    detail::LogHook& hook = detail::logHook();
    std::shared_ptr<Logger> next = logger ? std::make_shared<Logger>(std::move(logger)) : nullptr;
    std::lock_guard<std::recursive_mutex> lock(hook.mutex);
    std::shared_ptr<Logger> previous = std::exchange(hook.logger, std::move(next));
    if (!previous) return Logger();
    // Shared only with a call in progress on this thread (the sink replaced
    // itself; other threads wait for the lock): that call keeps the original.
    if (previous.use_count() > 1) return *previous;
    return std::move(*previous);
}

REACTOR_INLINE void log(LogLevel level, std::string_view message) {
    detail::LogHook& hook = detail::logHook();
    std::lock_guard<std::recursive_mutex> lock(hook.mutex);
    if (!hook.logger) return detail::defaultLog(level, message);
    const std::shared_ptr<Logger> running = hook.logger;
    (*running)(level, message);
}
namespace detail {

REACTOR_INLINE const std::shared_ptr<const Tracer>*& activeTracer() {
    static thread_local const std::shared_ptr<const Tracer>* tracer = nullptr;
    return tracer;
}

REACTOR_INLINE void emitTrace(const std::shared_ptr<const Tracer>* slot, std::string_view line) {
    if (!slot || !*slot) return;
    std::shared_ptr<const Tracer> tracer = *slot;  // kept alive while it runs
#if REACTOR_HAS_EXCEPTIONS
    try {
        (*tracer)(line);
    } catch (const std::exception& e) {
        log(LogLevel::error, std::string("the tracer threw: ") + e.what());
    } catch (...) {
        log(LogLevel::error, "the tracer threw");
    }
#else
    (*tracer)(line);
#endif
}

REACTOR_INLINE std::string showNul(std::string_view text) {
    std::string out;
    for (char c : text) {
        if (c == '\0')
            out += "\\0";
        else
            out += c;
    }
    return out;
}

REACTOR_INLINE std::string formatDuration(double seconds) {
    char buf[32];
    if (seconds >= 1)
        std::snprintf(buf, sizeof buf, "%.2f s", seconds);
    else if (seconds >= 0.001)
        std::snprintf(buf, sizeof buf, "%.1f ms", seconds * 1e3);
    else
        std::snprintf(buf, sizeof buf, "%.0f us", seconds * 1e6);
    return buf;
}

REACTOR_INLINE bool TypeChain::contains(const char* name) const {
    for (std::size_t i = 0; i < size; ++i)
        if (std::strcmp(names[i], name) == 0) return true;
    return false;
}
}  // namespace detail

REACTOR_INLINE std::string Failure::type() const {
    if (!dynamicName_.empty()) return dynamicName_;
    return chain_.size ? chain_.names[0] : "Failure";
}

REACTOR_INLINE void Failure::raiseException() const {
#if REACTOR_HAS_EXCEPTIONS
    if (exception_) std::rethrow_exception(exception_);
    throw detail::NamedError(chain_, message_);
#else
    log(LogLevel::critical, "Failure::raiseException without exceptions: " + str());
    std::abort();
#endif
}

namespace detail {
REACTOR_INLINE NamedError::NamedError(const TypeChain& names, std::string message)
    : Error(std::move(message)), names_(names) {
    what_ = names_.size ? names_.names[0] : "Failure";
    what_ += ": ";
    what_ += this->message();
}
}  // namespace detail

REACTOR_INLINE void Failure::describe(const std::exception& e) {
    if (auto* err = dynamicError(e)) {
        err->typeNames(chain_);
        return;
    }
#if REACTOR_HAS_RTTI && defined(__GNUG__)
    dynamicName_ = detail::demangle(typeid(e).name());
#else
    chain_.push("std::exception");
#endif
}

REACTOR_INLINE const Error* Failure::dynamicError(const std::exception& e) {
#if REACTOR_HAS_RTTI
    return dynamic_cast<const Error*>(&e);
#else
    (void)e;
    return nullptr;
#endif
}

// ---- 5. TIME ---------------------------------------------------------------
namespace detail {

REACTOR_INLINE void TimerQueue::clear() {
    while (!heap_.empty() || !deferred_.empty()) {
        std::vector<std::function<void()>> dying;
        std::vector<Node> nodes;
        nodes.swap(heap_);
        for (Node& node : deferred_) nodes.push_back(std::move(node));
        deferred_.clear();
        live_ = stale_ = 0;
        for (Node& node : nodes) {
            node.entry->queue = nullptr;
            if (node.entry->fn) {
                dying.push_back(std::move(node.entry->fn));
                node.entry->fn = nullptr;
            }
        }
        // The queue is empty and consistent now; what the functions capture
        // is destroyed last, and may schedule (or cancel) calls of its own.
    }
}

REACTOR_INLINE std::shared_ptr<TimerEntry> TimerQueue::schedule(double delay, std::function<void()> fn, Where where) {
    if (!(delay >= 0)) {  // also catches NaN
        raise<error::ValueError>("callLater: delay must be >= 0 seconds, got " + std::to_string(delay));
        return nullptr;  // without exceptions: logged, nothing scheduled (an empty handle)
    }
    auto entry = std::make_shared<TimerEntry>();
    entry->time = clock_.seconds() + delay;
    entry->fn = std::move(fn);
    entry->queue = this;
    entry->where = where;
    push(entry);
    ++live_;
    return entry;
}

REACTOR_INLINE void TimerQueue::reschedule(const std::shared_ptr<TimerEntry>& entry, double newTime) {
    entry->time = newTime;
    ++stale_;  // the old node is now garbage
    push(entry);
    maybeCompact();
}

REACTOR_INLINE void TimerQueue::cancelled() {
    --live_;
    ++stale_;
    maybeCompact();
}

REACTOR_INLINE bool TimerQueue::nextTime(double& time) {
    dropStaleTop();
    if (heap_.empty()) return false;
    time = heap_.front().time;
    return true;
}

REACTOR_INLINE std::vector<DelayedCall> TimerQueue::delayedCalls() const {
    // Every live call, including those a pass has set aside for the next
    // one (deferred_), in the order they will run: time, then scheduling
    // order. Popping a heap of them uses the queue's own heap functions,
    // so no sort is compiled into every program for this one query.
    std::vector<Node> live;
    for (const std::vector<Node>* nodes : {&heap_, &deferred_})
        for (const Node& node : *nodes)
            if (!isStale(node)) live.push_back(Node{node.time, node.seq, node.entry});  // (pushNode's growth path)
    std::make_heap(live.begin(), live.end(), later);
    std::vector<DelayedCall> out;
    while (!live.empty()) {
        std::pop_heap(live.begin(), live.end(), later);
        out.emplace_back(std::move(live.back().entry));
        live.pop_back();
    }
    return out;
}

REACTOR_INLINE bool TimerQueue::later(const Node& a, const Node& b) {
    return a.time > b.time || (a.time == b.time && a.seq > b.seq);
}

REACTOR_INLINE bool TimerQueue::isStale(const Node& node) {
    const TimerEntry& e = *node.entry;
    return e.called || e.cancelled || e.seq != node.seq;
}

REACTOR_INLINE void TimerQueue::push(const std::shared_ptr<TimerEntry>& entry) {
    entry->seq = nextSeq_++;
    pushNode(Node{entry->time, entry->seq, entry});
}

REACTOR_INLINE void TimerQueue::pushNode(Node node) {
    heap_.push_back(std::move(node));
    std::push_heap(heap_.begin(), heap_.end(), later);
}

REACTOR_INLINE TimerQueue::Node TimerQueue::popTop() {
    std::pop_heap(heap_.begin(), heap_.end(), later);
    Node node = std::move(heap_.back());
    heap_.pop_back();
    return node;
}

REACTOR_INLINE void TimerQueue::dropStaleTop() {
    while (!heap_.empty() && isStale(heap_.front())) {
        popTop();
        --stale_;
    }
}

REACTOR_INLINE void TimerQueue::maybeCompact() {
    if (stale_ < 64 || stale_ * 2 < heap_.size()) return;
    heap_.erase(std::remove_if(heap_.begin(), heap_.end(), [](const Node& n) { return isStale(n); }),
                heap_.end());
    std::make_heap(heap_.begin(), heap_.end(), later);
    // Nodes a pass has set aside (runDue's deferred_) come back to the
    // heap when it ends: the stale ones among them are still to be counted.
    stale_ = 0;
    for (const Node& node : deferred_)
        if (isStale(node)) ++stale_;
}
}  // namespace detail

REACTOR_INLINE bool DelayedCall::checkActive(const char* what) const {
    if (!entry_) {
        detail::raise<error::ValueError>(std::string(what) + " on an empty DelayedCall handle");
        return false;
    }
    if (entry_->cancelled) {
        detail::raise<error::AlreadyCancelled>();
        return false;
    }
    if (entry_->called) {
        detail::raise<error::AlreadyCalled>();
        return false;
    }
    return true;
}

REACTOR_INLINE void DelayedCall::cancel() {
    if (!checkActive("cancel")) return;
    // The function may own this very handle (a session that owns its idle
    // timer, kept alive only by that timer's function): finish with the
    // entry first and destroy the function last, touching nothing after.
    std::shared_ptr<detail::TimerEntry> entry = entry_;
    entry->cancelled = true;
    std::function<void()> dying = std::move(entry->fn);  // release captures now, not when the node surfaces
    entry->fn = nullptr;
    if (entry->queue) entry->queue->cancelled();
}

REACTOR_INLINE void DelayedCall::reset(double secondsFromNow) {
    if (!checkActive("reset")) return;
    if (!(secondsFromNow >= 0)) {  // also NaN; infinity is "not until reset again", as callLater's
        detail::raise<error::ValueError>("DelayedCall::reset: seconds must be >= 0, got " +
                                         std::to_string(secondsFromNow));
        return;
    }
    if (!entry_->queue) return;
    detail::TimerQueue& q = *entry_->queue;
    q.reschedule(entry_, q.now() + secondsFromNow);
}

REACTOR_INLINE void DelayedCall::delay(double secondsLater) {
    if (!checkActive("delay")) return;
    if (!std::isfinite(secondsLater)) {  // negative is fine: earlier, as Twisted
        detail::raise<error::ValueError>("DelayedCall::delay: seconds must be finite");
        return;
    }
    if (entry_->queue) entry_->queue->reschedule(entry_, entry_->time + secondsLater);
}

REACTOR_INLINE DelayedCall Clock::callLater(double delay, std::function<void()> f, detail::Where where) {
    return DelayedCall(timers_.schedule(delay, std::move(f), where));
}

REACTOR_INLINE void Clock::advance(double amount) {
    if (!(amount >= 0)) {
        detail::raise<error::ValueError>("Clock::advance: amount must be >= 0");
        return;
    }
    now_ += amount;
    timers_.runDue(now_, true, [](std::function<void()>& fn, detail::TimerEntry&) {
        if (fn) fn();
    });
}

// ---- 6. DEFERRED -----------------------------------------------------------
namespace defer {

REACTOR_INLINE AlreadyCalledError::AlreadyCalledError(std::string message) : ErrorType(std::move(message)) {}
REACTOR_INLINE CancelledError::CancelledError(std::string message) : ErrorType(std::move(message)) {}
REACTOR_INLINE TimeoutError::TimeoutError(std::string message) : ErrorType(std::move(message)) {}

REACTOR_INLINE FirstError::FirstError(Failure failure, std::size_t failedIndex)
    : ErrorType("FirstError[#" + std::to_string(failedIndex) + ", " + failure.str() + "]"),
      subFailure(std::move(failure)),
      index(failedIndex) {}

}  // namespace defer

namespace detail {

REACTOR_INLINE void DeferredBase::cancel() {
    // A cancel reaches inner Deferreds (the one a callback returned, the one
    // a coroutine awaits) by recursion, synchronously as in Twisted. Past
    // maxCancelDepth nested levels the rest is queued and cancelled by the
    // outermost cancel() before it returns, so a chain of 100,000 nested
    // Deferreds or coroutines cancels without overflowing the stack.
    constexpr int maxCancelDepth = 256;
    struct CancelPass {
        int depth = 0;
        std::uint64_t id = 0;  // numbers the outermost cancel() calls
        std::vector<DeferredPtr>* deeper = nullptr;
    };
    static thread_local CancelPass pass;
    if (pass.depth >= maxCancelDepth) {
        pass.deeper->push_back(shared_from_this());
        return;
    }
    std::vector<DeferredPtr> deeper;
    bool outermost = pass.depth == 0;
    struct Level {
        CancelPass& p;
        bool outermost;
        ~Level() {
            --p.depth;
            if (outermost) p.deeper = nullptr;
        }
    };
    if (outermost) {
        pass.deeper = &deeper;
        ++pass.id;
    }
    ++pass.depth;
    Level level{pass, outermost};
    cancelHere(pass.id);
    if (!outermost) return;
    for (std::size_t i = 0; i < deeper.size(); ++i) {
        DeferredPtr next = deeper[i];  // cancelHere() may grow the queue
        next->cancelHere(pass.id);
    }
}

REACTOR_INLINE void DeferredBase::cancelHere(std::uint64_t pass) {
    DeferredPtr keep = shared_from_this();
    // Going on to another Deferred happens once per Deferred and pass, so a
    // cycle (two Deferreds waiting on each other: Twisted recurses until
    // RecursionError) ends instead of looping; they stay deadlocked.
    auto goOn = [this, pass](const DeferredPtr& other) {
        if (forwardedIn == pass) return;
        forwardedIn = pass;
        other->cancel();
    };
    if (!called) {
        if (DeferredPtr source = feeder.lock()) {
            goOn(source);
            return;
        }
        if (cancellerOnly) {
            if (canceller) {
                std::function<void()> c = canceller;  // a copy: firing clears it, and it is kept for the next cancel()
                c();
            }
            return;
        }
        if (canceller) {
            std::function<void()> c = std::move(canceller);
            canceller = nullptr;
            c();
        } else {
            suppressAlreadyCalled = true;
        }
        if (!called) errbackCancelled();
    } else if (cancellerOnly) {
        return;  // Twisted's DeferredList: a fired list ignores cancel(), even while waiting
    } else if (DeferredPtr inner = waitingOn.lock()) {
        goOn(inner);
    }
}

REACTOR_INLINE void DeferredBase::pause() {
    ++paused;
    ++userPaused;
}

REACTOR_INLINE void DeferredBase::unpause() {
    if (userPaused == 0) return;
    --userPaused;
    if (--paused == 0 && called) run(shared_from_this());
}

REACTOR_INLINE void DeferredBase::run(DeferredPtr start) {
    if (start->running || !start->called) return;  // the running loop will see new pairs
    std::vector<DeferredPtr> stack;
    start->running = true;
    stack.push_back(std::move(start));
    while (!stack.empty()) {
        DeferredPtr next = stack.back()->advance();
        if (next) {
            if (!next->running && next->called) {
                next->running = true;
                stack.push_back(std::move(next));
            }
        } else {
            stack.back()->running = false;
            stack.pop_back();
        }
    }
}

REACTOR_INLINE DeferredPtr DeferredBase::advance() {
    while (nextStep < steps.size()) {
        if (paused) return nullptr;
        Step step = std::move(steps[nextStep++]);
#if REACTOR_HAS_EXCEPTIONS
        DeferredPtr other;
        try {
            other = step(*this);
        } catch (...) {
            failWith(Failure::current());
            continue;
        }
        if (other) return other;
#else
        if (DeferredPtr other = step(*this)) return other;
#endif
    }
    steps.clear();
    nextStep = 0;
    return nullptr;
}

REACTOR_INLINE std::size_t DeferredBase::addStep(Step step) {
    const std::size_t index = steps.size();
    steps.push_back(std::move(step));
    if (called && !running && paused == 0) run(shared_from_this());
    return index;
}

REACTOR_INLINE void DeferredBase::dropStep(std::size_t index) {
    steps[index] = [](DeferredBase&) -> DeferredPtr { return nullptr; };
}

/// The teardown list of the outermost Deferred destructor running on this
/// thread (null when none): a pointer, so it needs no thread-exit destructor.
REACTOR_INLINE std::vector<std::vector<DeferredBase::Step>>*& teardownList() {
    static thread_local std::vector<std::vector<DeferredBase::Step>>* list = nullptr;
    return list;
}

REACTOR_INLINE void DeferredBase::destroySteps() {
    if (steps.empty()) return;
    std::vector<std::vector<Step>>*& list = teardownList();
    if (list) {
        list->push_back(std::move(steps));
        return;
    }
    std::vector<std::vector<Step>> pending;
    list = &pending;
    { std::vector<Step> dying = std::move(steps); }
    while (!pending.empty()) {
        std::vector<Step> batch = std::move(pending.back());
        pending.pop_back();
    }
    list = nullptr;
}

REACTOR_INLINE Failure consumedFailure() {
    return Failure("ResultConsumed", "this Deferred's result was passed on to another Deferred");
}

REACTOR_INLINE std::string formatSeconds(double s) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%g", s);
    return buf;
}
}  // namespace detail

REACTOR_INLINE Deferred<void> succeed() {
    Deferred<void> d;
    d.callback();
    return d;
}

// ---- 7. THREADS ------------------------------------------------------------

struct ThreadPool::State {
    explicit State(std::size_t maxThreads) : max(maxThreads) {}
    void work();

    std::mutex mutex;
    std::condition_variable wake;
    std::vector<std::function<void()>> queue;
    std::size_t head = 0;
    std::vector<std::thread> workers;
    std::size_t max;
    std::size_t idle = 0;
    bool stopping = false;
};

REACTOR_INLINE ThreadPool::ThreadPool(std::size_t maxThreads)
    : state_(new State(maxThreads ? maxThreads : 1)) {}

REACTOR_INLINE ThreadPool::~ThreadPool() { stop(); }

REACTOR_INLINE void ThreadPool::callInThread(std::function<void()> job) {
    State& st = *state_;
    std::lock_guard<std::mutex> lock(st.mutex);
    st.queue.push_back(std::move(job));
    // More jobs waiting than idle workers to take them (a notified worker
    // counts as idle until it wakes): start another, up to the maximum.
    if (st.queue.size() - st.head > st.idle && st.workers.size() < st.max)
        st.workers.emplace_back([&st] { st.work(); });
    st.wake.notify_one();
}

REACTOR_INLINE void ThreadPool::setMaxThreads(std::size_t n) {
    std::lock_guard<std::mutex> lock(state_->mutex);
    state_->max = n ? n : 1;
}

REACTOR_INLINE std::size_t ThreadPool::maxThreads() const {
    std::lock_guard<std::mutex> lock(state_->mutex);
    return state_->max;
}

REACTOR_INLINE std::size_t ThreadPool::queueDepth() const {
    std::lock_guard<std::mutex> lock(state_->mutex);
    return state_->queue.size() - std::min(state_->queue.size(), state_->head);
}

REACTOR_INLINE std::size_t ThreadPool::threadCount() const {
    std::lock_guard<std::mutex> lock(state_->mutex);
    return state_->workers.size();
}

REACTOR_INLINE void ThreadPool::stop() {
    State& st = *state_;
    std::unique_lock<std::mutex> lock(st.mutex);
    st.stopping = true;
    // A job running now may queue another (callInThread is thread-safe),
    // and that can start a worker after the swap below: join in rounds
    // until a round started none, so no thread outlives stop() (a joinable
    // std::thread in ~State would be std::terminate).
    while (!st.workers.empty()) {
        std::vector<std::thread> workers;
        workers.swap(st.workers);
        lock.unlock();
        st.wake.notify_all();
        for (auto& t : workers) t.join();
        lock.lock();
    }
    st.stopping = false;
    st.idle = 0;
}

REACTOR_INLINE std::size_t ThreadPool::discardQueued() {
    State& st = *state_;
    std::vector<std::function<void()>> dropped;
    {
        std::lock_guard<std::mutex> lock(st.mutex);
        for (std::size_t i = st.head; i < st.queue.size(); ++i) dropped.push_back(std::move(st.queue[i]));
        st.queue.clear();
        st.head = 0;
    }
    return dropped.size();  // destroyed here, outside the lock (their captures may call back)
}

REACTOR_INLINE void ThreadPool::State::work() {
    std::unique_lock<std::mutex> lock(mutex);
    for (;;) {
        ++idle;
        wake.wait(lock, [this] { return stopping || head < queue.size(); });
        --idle;
        if (head >= queue.size()) return;  // stopping and nothing left
        std::function<void()> job = std::move(queue[head++]);
        if (head == queue.size()) {
            queue.clear();
            head = 0;
        } else if (head >= 1024 && head * 2 >= queue.size()) {
            // A queue that never empties (jobs that queue jobs) must not
            // keep a slot for every job it ever ran.
            queue.erase(queue.begin(), queue.begin() + static_cast<std::ptrdiff_t>(head));
            head = 0;
        }
        lock.unlock();
        detail::runGuarded("thread pool job", job);
        job = nullptr;  // destroy captures outside the lock
        lock.lock();
    }
}

// ---- 8. REACTOR ------------------------------------------------------------
namespace detail {

REACTOR_INLINE Handler makeHandler(std::function<void()> f) {
    struct FunctionHandler final : IoHandler {
        std::function<void()> f;
        explicit FunctionHandler(std::function<void()> fn) : f(std::move(fn)) {}
        void onReady(short) override { f(); }
    };
    return std::make_shared<FunctionHandler>(std::move(f));
}
}  // namespace detail

REACTOR_INLINE std::string Address::str() const {
    if (type == "UNIX") {
        if (host.empty()) return "(unnamed)";
        return host[0] == '\0' ? "@" + detail::showNul(std::string_view(host).substr(1)) : detail::showNul(host);
    }
    return (ipv6 ? "[" + host + "]" : host) + ":" + std::to_string(port);
}

REACTOR_INLINE std::int64_t Reactor::steadyNanos() {
    using namespace std::chrono;
    return duration_cast<nanoseconds>(steady_clock::now().time_since_epoch()).count();
}

struct Reactor::CrossThread {
    std::mutex mutex;
    std::vector<std::function<void()>> calls;
    std::vector<std::function<void()>> running;  // swapped in: no allocation per turn
    std::atomic<bool> pending{false};
    std::atomic<bool> wakePending{false};
};

REACTOR_INLINE Reactor::Reactor()
    : epochNanos_(steadyNanos()),
      crossThread_(new CrossThread()),
      alive_(std::make_shared<bool>(true)) {
    const char* env = std::getenv("REACTOR_TRACE");
    if (env && *env && std::strcmp(env, "0") != 0)
        tracer_ = std::make_shared<const Tracer>([](std::string_view line) {
            std::string out(line);
            out += '\n';
            std::fflush(stdout);  // keep the program's own output in order with the trace
            std::fputs(out.c_str(), stderr);
        });
    // Without its wake-up descriptor the reactor cannot hear other threads
    // (callFromThread, a signal's stop() under run(true)) while it waits: refuse
    // to exist, or (no exceptions) poll for them every 10 ms instead.
    // The same for the epoll backend's own descriptor.
    std::string why;
    std::size_t wakerSlot = npos;
    if (poller_.error() != 0)
        why = std::string("cannot create its ") + detail::os::Poller::name +
              " descriptor: " + detail::os::errorString(poller_.error());
    else if (!os::validFd(waker_.readFd()))
        why = "cannot create its wake-up descriptor: " + detail::os::errorString(waker_.error());
    else if (!detail::os::Poller::canWatch(waker_.readFd()))
        why = "cannot watch its wake-up descriptor " + std::to_string(waker_.readFd()) + " (the " +
              detail::os::Poller::name + " backend: " + detail::os::Poller::limit() + ")";
    else
        wakerSlot = watch(waker_.readFd(), os::evRead, detail::makeHandler([this] {
                              waker_.drain();
                              crossThread_->wakePending.store(false);
                          }));
    if (wakerSlot == npos) {
        if (why.empty()) why = "cannot watch its wake-up descriptor " + std::to_string(waker_.readFd());
        detail::raise<error::RuntimeError>("Reactor " + why);
        log(LogLevel::error, "Reactor " + why + "; waking every 10 ms to look for calls from other threads");
        return;
    }
    slots_[wakerSlot].internal = true;
    wakerWatched_ = true;
}

REACTOR_INLINE Reactor::~Reactor() {
    // No user callback runs from here on (see the declaration). Destructors
    // do run, and may call back into this reactor (cancel a timer, remove a
    // descriptor, close a connection): each step leaves the reactor
    // consistent, and the loop repeats until nothing is left.
    if (resolver_) {  // lookups not begun are dropped; running ones cannot be interrupted
        resolver_->discardQueued();
        resolver_->stop();
    }
    if (pool_) pool_->stop();
    for (int round = 0; round < 16; ++round) {
        std::vector<std::shared_ptr<detail::Owned>> all = owned_;
        for (auto& o : all) o->abandon();
        all.clear();
        releaseDead();
        timers_.clear();
        unwatchAll();
        releaseRetired();
        std::vector<std::function<void()>> calls;
        {
            std::lock_guard<std::mutex> lock(crossThread_->mutex);
            calls.swap(crossThread_->calls);
            crossThread_->pending.store(false);
        }
        calls.clear();
        // The system event triggers: each one's function is destroyed while
        // its entry is still listed (so a destructor that removes it, or
        // another, finds it), then the entry goes.
        for (std::size_t n = triggers_.size(); n > 0 && !triggers_.empty(); --n) {
            const TriggerId id = triggers_.back().id;
            {
                std::function<void(std::function<void()>)> fn = std::move(triggers_.back().fn);
                triggers_.back().fn = nullptr;
            }
            auto it = std::find_if(triggers_.begin(), triggers_.end(), [id](const Trigger& t) { return t.id == id; });
            if (it != triggers_.end()) triggers_.erase(it);
        }
        if (owned_.empty() && dead_.empty() && timers_.liveCount() == 0 && slots_.empty() && retired_.empty() &&
            triggers_.empty())
            break;
    }
    *alive_ = false;  // a connector a user still holds (between attempts) no longer calls us
    if (detail::os::validFd(spareFd_)) detail::os::closeFd(spareFd_);
}

REACTOR_INLINE void Reactor::crash() {
    loopDone_ = true;
    running_ = false;
}

REACTOR_INLINE void Reactor::iterate(double timeout) {
    if (inTurn_ || inRun_) {
        detail::raise<error::ReactorAlreadyRunning>(
            "iterate() called from inside a reactor callback or while run() is active (the loop is not re-entrant)");
        return;
    }
    turn(timeout < 0 ? 0 : timeout);
}

REACTOR_INLINE TriggerId Reactor::callWhenRunning(std::function<void()> f) {
    if (running_) {
        detail::runGuarded("callWhenRunning", f);
        return 0;
    }
    return addTrigger(detail::Phase::after, "startup", syncTrigger(std::move(f)), true);
}

REACTOR_INLINE TriggerId Reactor::addSystemEventTrigger(std::string_view phase, std::string_view eventType,
                                                        std::function<void()> f) {
    detail::Phase p;
    if (!parsePhase(phase, p)) return 0;
    return addTrigger(p, eventType, syncTrigger(std::move(f)), false);
}

REACTOR_INLINE TriggerId Reactor::addAsyncSystemEventTrigger(std::string_view phase, std::string_view eventType,
                                                             std::function<void(std::function<void()> done)> f) {
    detail::Phase p;
    if (!parsePhase(phase, p)) return 0;
    return addTrigger(p, eventType, std::move(f), false);
}

REACTOR_INLINE bool Reactor::removeSystemEventTrigger(TriggerId id) {
    auto it = std::find_if(triggers_.begin(), triggers_.end(), [id](const Trigger& t) { return t.id == id; });
    if (it == triggers_.end()) {
        detail::raise<error::ValueError>("removeSystemEventTrigger: unknown trigger id " + std::to_string(id));
        return false;
    }
    // The function goes after its entry: what it owns may add or remove
    // triggers from a destructor, which must not run inside erase().
    std::function<void(std::function<void()>)> fn = std::move(it->fn);
    triggers_.erase(it);
    return true;
}

REACTOR_INLINE void Reactor::trace(std::string_view line) const {
    if (!tracer_) return;
    std::string out = "  ";
    out += line;
    detail::emitTrace(&tracer_, out);
}

REACTOR_INLINE double Reactor::seconds() const {
    return static_cast<double>(steadyNanos() - epochNanos_) / 1e9;
}

REACTOR_INLINE DelayedCall Reactor::callLater(double delay, std::function<void()> f, detail::Where where) {
    return DelayedCall(timers_.schedule(delay, std::move(f), where));
}

REACTOR_INLINE bool Reactor::addReader(os::Fd fd, std::function<void()> f) {
    bool ok = watch(fd, os::evRead, detail::makeHandler(std::move(f)), true) != npos;
    releaseRetired();  // the reader it replaced, if any
    return ok;
}

REACTOR_INLINE bool Reactor::addWriter(os::Fd fd, std::function<void()> f) {
    bool ok = watch(fd, os::evWrite, detail::makeHandler(std::move(f)), true) != npos;
    releaseRetired();
    return ok;
}

REACTOR_INLINE void Reactor::removeReader(os::Fd fd) {
    unwatch(fd, os::evRead);
    releaseRetired();
}

REACTOR_INLINE void Reactor::removeWriter(os::Fd fd) {
    unwatch(fd, os::evWrite);
    releaseRetired();
}

REACTOR_INLINE std::vector<Reactor::os::Fd> Reactor::removeAll() {
    std::vector<os::Fd> fds;
    for (const Slot& slot : slots_)
        if (slot.foreign) fds.push_back(slot.fd);
    for (auto fd : fds) unwatch(fd, os::evRead | os::evWrite);
    releaseRetired();
    return fds;
}

REACTOR_INLINE void Reactor::disconnectAll() {
    std::vector<std::shared_ptr<detail::Owned>> all = owned_;
    for (auto& o : all) o->shutdownNow();
}

REACTOR_INLINE std::string Reactor::describeSelectable(os::Fd fd) const {
    for (const auto& o : owned_)
        if (o->descriptor() == fd) return o->describe();
    return "added with addReader/addWriter";
}

REACTOR_INLINE void Reactor::fireSystemEvent(std::string_view eventType) {
    fireEvent(std::string(eventType), [] {});
}

REACTOR_INLINE void Reactor::setTracer(Tracer tracer) {
    tracer_ = tracer ? std::make_shared<const Tracer>(std::move(tracer)) : nullptr;
}

REACTOR_INLINE void Reactor::callFromThread(std::function<void()> f) {
    {
        std::lock_guard<std::mutex> lock(crossThread_->mutex);
        crossThread_->calls.push_back(std::move(f));
        crossThread_->pending.store(true);
    }
    if (!crossThread_->wakePending.exchange(true)) waker_.wake();
}

REACTOR_INLINE ThreadPool& Reactor::getThreadPool() {
    if (!pool_) pool_.reset(new ThreadPool(poolSize_));
    return *pool_;
}

REACTOR_INLINE void Reactor::suggestThreadPoolSize(std::size_t n) {
    poolSize_ = n;
    if (pool_) pool_->setMaxThreads(n);
    if (resolver_) resolver_->setMaxThreads(n);
}

REACTOR_INLINE std::function<void(std::function<void()>)> Reactor::syncTrigger(std::function<void()> f) {
    return [f = std::move(f)](std::function<void()> done) {
        detail::runGuarded("system event trigger", f);
        done();
    };
}

REACTOR_INLINE bool Reactor::parsePhase(std::string_view phase, detail::Phase& out) {
    if (phase == "before") out = detail::Phase::before;
    else if (phase == "during") out = detail::Phase::during;
    else if (phase == "after") out = detail::Phase::after;
    else {
        detail::raise<error::ValueError>("invalid phase \"" + std::string(phase) +
                                         "\" (expected \"before\", \"during\" or \"after\")");
        return false;
    }
    return true;
}

REACTOR_INLINE TriggerId Reactor::addTrigger(detail::Phase phase, std::string_view event,
                                             std::function<void(std::function<void()>)> fn, bool once) {
    TriggerId id = ++lastTriggerId_;
    triggers_.push_back(Trigger{id, phase, std::string(event), std::move(fn), once});
    return id;
}

REACTOR_INLINE void Reactor::runPhase(const std::string& event, detail::Phase phase, std::function<void()> done) {
    // The phase's triggers as it starts (one added meanwhile waits for the
    // next firing), each run unless an earlier one of the phase removed it.
    // A trigger runs as its stored function, moved out for the call and put
    // back after (so state it keeps persists from one firing to the next,
    // and removing itself, or any trigger, from inside is safe); a trigger
    // already running higher up the stack (an event fired from inside its
    // own trigger) is not run again. Only "before" triggers are waited for:
    // the results of "during" and "after" ones are ignored, as in Twisted.
    std::vector<TriggerId> ids;
    for (const Trigger& t : triggers_)
        if (t.event == event && t.phase == phase) ids.push_back(t.id);
    const bool wait = phase == detail::Phase::before;
    auto outstanding = std::make_shared<std::size_t>(1);
    auto finishOne = [outstanding, done]() {
        if (--*outstanding == 0) done();
    };
    auto find = [this](TriggerId id) {
        return std::find_if(triggers_.begin(), triggers_.end(), [id](const Trigger& t) { return t.id == id; });
    };
    for (TriggerId id : ids) {
        auto it = find(id);
        if (it == triggers_.end() || !it->fn) continue;
        std::function<void(std::function<void()>)> fn = std::move(it->fn);
        it->fn = nullptr;
        const bool once = it->once;
        if (once) triggers_.erase(it);
        std::function<void()> doneOnce = [] {};
        if (wait) {
            ++*outstanding;
            auto fired = std::make_shared<bool>(false);
            doneOnce = [fired, finishOne]() {
                if (*fired) return;
                *fired = true;
                finishOne();
            };
        }
        if (!detail::runGuarded("system event trigger", [&] { fn(doneOnce); }) && wait) doneOnce();
        if (!once) {
            it = find(id);  // unless it removed itself meanwhile
            if (it != triggers_.end()) it->fn = std::move(fn);
        }
    }
    finishOne();
}

REACTOR_INLINE void Reactor::fireEvent(const std::string& event, std::function<void()> whenDone) {
    // The startup of a run() that has ended, or is shutting down (stop()
    // while an asynchronous "before startup" trigger was pending), does not
    // go on when that trigger finishes: the reactor is not running.
    const bool runStartup = event == "startup" && inRun_;
    const std::uint64_t run = runNumber_;
    runPhase(event, detail::Phase::before, [this, event, whenDone, runStartup, run]() {
        if (runStartup && (runNumber_ != run || shutdownStarted_)) return;
        builtinDuring(event);
        runPhase(event, detail::Phase::during, [this, event, whenDone]() {
            runPhase(event, detail::Phase::after, whenDone);
        });
    });
}

REACTOR_INLINE void Reactor::builtinDuring(const std::string& event) {
    if (event == "startup") {
        running_ = true;
    } else if (event == "shutdown") {
        running_ = false;
        disconnectAll();
        if (resolver_) {  // shutdown waits for no lookup that has not begun
            resolver_->discardQueued();
            resolver_->stop();
        }
        if (pool_) pool_->stop();
    }
}

REACTOR_INLINE std::size_t Reactor::watch(os::Fd fd, short event, detail::Handler handler, bool foreign) {
    using Poller = detail::os::Poller;
    if (!os::validFd(fd)) {
        detail::raise<error::ValueError>("cannot watch a negative file descriptor");
        return npos;
    }
    if (!Poller::canWatch(fd)) {
        log(LogLevel::error, std::string(Poller::name) + " backend cannot watch fd " + std::to_string(fd) + " (" +
                                 Poller::limit() + ")");
        return npos;
    }
    auto refused = [&] {
        log(LogLevel::error, std::string(Poller::name) + " cannot watch fd " + std::to_string(fd) + ": " +
                                 detail::os::errorString(detail::os::lastError()));
        return npos;
    };
    std::size_t slot = slotOf(fd);
    const short interest = static_cast<short>((slot == npos ? 0 : slots_[slot].interest) | event);
    if (slot == npos) {
        if (!poller_.add(fd, interest)) return refused();
        slot = slots_.size();
        slots_.emplace_back();
        slots_[slot].fd = fd;
        const std::size_t at = detail::os::fdIndex(fd);
        if (at >= slotOf_.size()) slotOf_.resize(at + 1, npos);
        slotOf_[at] = slot;
    } else if ((interest != slots_[slot].interest || foreign) && !poller_.modify(fd, interest)) {
        // (A user's addReader may name a number closed and reused behind our
        // back: it tells the poller again; epoll forgot the old descriptor.)
        return refused();
    }
    Slot& s = slots_[slot];
    s.interest = interest;
    s.armed = ++lastArmed_;  // a new interest is not dispatched this turn
    s.foreign = foreign;
    detail::Handler& target = event == os::evRead ? s.reader : s.writer;
    retire(target);
    target = std::move(handler);
    return slot;
}

REACTOR_INLINE void Reactor::retire(detail::Handler& handler) {
    if (handler) retired_.push_back(std::move(handler));
}

REACTOR_INLINE void Reactor::releaseRetired() {
    if (dispatching_ || releasingRetired_) return;  // the outer call finishes the job
    releasingRetired_ = true;
    while (!retired_.empty()) {
        releasing_.swap(retired_);
        releasing_.clear();  // destructors may retire more into retired_
    }
    releasingRetired_ = false;
}

REACTOR_INLINE void Reactor::releaseDead() {
    if (releasingDead_) return;
    releasingDead_ = true;
    while (!dead_.empty()) {
        dying_.swap(dead_);
        dying_.clear();  // destructors may release more into dead_
    }
    releasingDead_ = false;
}

REACTOR_INLINE void Reactor::unwatch(os::Fd fd, short events) {
    std::size_t slot = slotOf(fd);
    if (slot == npos || slots_[slot].internal) return;
    Slot& s = slots_[slot];
    if (events & os::evRead) retire(s.reader);
    if (events & os::evWrite) retire(s.writer);
    const short interest = static_cast<short>(s.interest & ~events);
    if (interest == s.interest) return;
    s.interest = interest;
    if (interest != 0) {
        if (!poller_.modify(fd, interest))
            log(LogLevel::error, std::string(detail::os::Poller::name) + " cannot change what it watches on fd " +
                                     std::to_string(fd) + ": " + detail::os::errorString(detail::os::lastError()));
        return;
    }
    poller_.remove(fd);
    slotOf_[detail::os::fdIndex(fd)] = npos;
    removeSlot(slot);
}

// Slots are found by fd, never by position, so removing one in the middle of
// a dispatch pass is safe: the last slot fills the hole.
REACTOR_INLINE void Reactor::removeSlot(std::size_t slot) {
    const std::size_t last = slots_.size() - 1;
    if (slot != last) {
        slots_[slot] = std::move(slots_[last]);
        slotOf_[detail::os::fdIndex(slots_[slot].fd)] = slot;
    }
    slots_.pop_back();
}

REACTOR_INLINE void Reactor::unwatchAll() {
    for (Slot& slot : slots_) {
        poller_.remove(slot.fd);
        retire(slot.reader);
        retire(slot.writer);
    }
    slots_.clear();
    slotOf_.clear();
    wakerWatched_ = false;
}

REACTOR_INLINE std::size_t Reactor::slotOf(os::Fd fd) const {
    const std::size_t i = detail::os::fdIndex(fd);
    return os::validFd(fd) && i < slotOf_.size() ? slotOf_[i] : npos;
}

REACTOR_INLINE std::vector<Reactor::os::Fd> Reactor::fdsWith(short events) const {
    std::vector<os::Fd> out;
    for (const Slot& slot : slots_)
        if (!slot.internal && (slot.interest & events)) out.push_back(slot.fd);
    return out;
}

// The ready list was stamped with each slot's `armed` right after the wait.
// A slot whose stamp no longer matches was re-armed (or removed and its fd
// reused) by an earlier callback of this pass: what the wait saw is not
// about it, and it waits for the next turn. Handlers removed during the pass
// are only retired, so the one running stays alive until the pass ends.
REACTOR_INLINE void Reactor::dispatch() {
    dispatching_ = true;
    for (detail::os::Ready& r : ready_) {
        const std::size_t found = slotOf(r.fd);
        r.tag = found == npos ? 0 : slots_[found].armed;
    }
    for (const detail::os::Ready& r : ready_) {
        const os::Fd fd = r.fd;
        std::size_t slot = npos;
        auto stillArmed = [&] {  // finds the slot again: a callback may have moved or removed it
            slot = slotOf(fd);
            return slot != npos && slots_[slot].armed == r.tag;
        };
        if (!stillArmed()) continue;
        if (r.events & os::evInvalid) {
            log(LogLevel::error, "fd " + std::to_string(fd) + " was closed while still watched; no longer watching it");
            unwatch(fd, os::evRead | os::evWrite);
            continue;
        }
        if ((r.events & (os::evRead | os::evError)) && slots_[slot].reader) {
            if (tracer_ && slots_[slot].foreign) {
                trace("fd " + std::to_string(fd) + " readable -> reader callback");
                if (!stillArmed()) continue;  // (a tracer that calls the reactor)
            }
            if (slots_[slot].reader) {
                detail::IoHandler& h = *slots_[slot].reader;  // kept alive by retire() if removed
                detail::runGuarded("reader callback", [&h] { h.onReady(os::evRead); });
                if (!stillArmed()) continue;  // the reader may have removed the writer, or the whole fd
            }
        }
        if ((r.events & (os::evWrite | os::evError)) && slots_[slot].writer) {
            if (tracer_ && slots_[slot].foreign) {
                trace("fd " + std::to_string(fd) + " writable -> writer callback");
                if (!stillArmed()) continue;
            }
            if (slots_[slot].writer) {
                detail::IoHandler& h = *slots_[slot].writer;
                detail::runGuarded("writer callback", [&h] { h.onReady(os::evWrite); });
            }
        }
    }
    dispatching_ = false;
    releaseRetired();  // last: the tables are consistent again
}

REACTOR_INLINE void Reactor::turn(double maxWait /* < 0: no limit */) {
    struct InTurn {  // re-entrant turns would corrupt the dispatch and timer passes
        bool& flag;
        explicit InTurn(bool& f) : flag(f) { flag = true; }
        ~InTurn() { flag = false; }
        InTurn(const InTurn&) = delete;
        InTurn& operator=(const InTurn&) = delete;
    } inTurn(inTurn_);
    double wait = maxWait;
    double next = 0;
    bool timerLimited = false;  // for the trace: why a wait without events ended
    if (timers_.nextTime(next)) {
        double untilNext = std::max(0.0, next - seconds());
        timerLimited = wait < 0 || untilNext <= wait;
        wait = wait < 0 ? untilNext : std::min(wait, untilNext);
    }
    if (crossThread_->pending.load() || (stopRequested_ && !shutdownStarted_) || (inRun_ && loopDone_)) wait = 0;
    if (!wakerWatched_ && (wait < 0 || wait > 0.01)) wait = 0.01;  // no waker: look for other threads' calls
    int ms = -1;
    if (wait >= 0) ms = static_cast<int>(std::min(std::ceil(wait * 1000.0), 2147483000.0));

    const double waitStart = tracer_ ? seconds() : 0.0;
    int ready = poller_.wait(ms, ready_);
    TraceScope traceScope(*this);
    if (tracer_) traceTurn(ready, ms, timerLimited, seconds() - waitStart);
    if (ready < 0) {
        int err = detail::os::lastError();
        if (!detail::os::interrupted(err)) {  // EINTR: simply the next turn
            // Persistent (too many descriptors for RLIMIT_NOFILE, say):
            // log it, and back off instead of spinning.
            if (pollErrors_++ % 1000 == 0)
                log(LogLevel::error, std::string(detail::os::Poller::name) + " failed: " + detail::os::errorString(err) + " (" +
                                         std::to_string(pollErrors_) + " time(s)); retrying in 10 ms");
            detail::os::pause(10);
        }
    } else if (ready > 0) {
        dispatch();
    }

    if (timers_.liveCount()) {  // no clock read on turns without timers
        const double now = seconds();
        timers_.runDue(now, false, [this, now](std::function<void()>& fn, detail::TimerEntry& e) {
            if (!fn) return;
            if (tracer_) trace("timer from " + e.where.str() + " fired, " + detail::formatDuration(now - e.time) + " late");
            detail::runGuardedWith([&e] { return "timed call scheduled at " + e.where.str(); }, fn);
        });
    }

    if (crossThread_->pending.load()) {
        {
            std::lock_guard<std::mutex> lock(crossThread_->mutex);
            crossThread_->running.swap(crossThread_->calls);
            crossThread_->pending.store(false);
        }
        std::vector<std::function<void()>>& running = crossThread_->running;
        if (tracer_) trace(std::to_string(running.size()) + " call(s) from other threads");
        for (auto& f : running) detail::runGuarded("callFromThread call", f);
        running.clear();
    }

    releaseRetired();
    releaseDead();  // connections closed this turn: nothing on the stack uses them now

    if (int sig = signalHandlers_ ? signalHandlers_->take() : 0) {
        log(LogLevel::info, std::string("Received ") + detail::os::signalName(sig) + ", shutting down.");
        if (inRun_ && !stopRequested_) stop();
    }
}

REACTOR_INLINE void Reactor::traceTurn(int ready, int timeoutMs, bool timerLimited, double waited) {
    std::string line = "turn " + std::to_string(++turnNumber_) + ": ";
    line += detail::os::Poller::name;
    line += " waited " + detail::formatDuration(waited) + ", woke: ";
    if (ready > 0)
        line += std::to_string(ready) + (ready == 1 ? " descriptor ready" : " descriptors ready");
    else if (ready < 0)
        line += "interrupted";
    else if (timeoutMs == 0)
        line += "no wait (work pending)";
    else if (timerLimited)
        line += "timeout (a timer is due)";
    else
        line += "timeout (the caller's time limit)";
    detail::emitTrace(&tracer_, line);
}

REACTOR_INLINE void Reactor::run(bool installSignalHandlers) {
    if (inRun_ || inTurn_) {
        detail::raise<error::ReactorAlreadyRunning>();
        return;
    }
    inRun_ = true;
    ++runNumber_;
    stopRequested_ = shutdownStarted_ = loopDone_ = false;
    if (installSignalHandlers) signalHandlers_.reset(new os::SignalHandlers(waker_.writeFd()));
    fireEvent("startup", [] {});
    while (!loopDone_) {
        turn(-1);
        if (stopRequested_ && !shutdownStarted_) {
            shutdownStarted_ = true;
            fireEvent("shutdown", [this] { loopDone_ = true; });
        }
    }
    signalHandlers_.reset();
    running_ = false;
    inRun_ = false;
    ++runNumber_;
    loopDone_ = false;  // iterate() after run() waits normally again
}

REACTOR_INLINE void Reactor::stop() {
    // From run()'s start, as Twisted: a "before startup" trigger, or a timer
    // while an asynchronous one is pending, may stop the reactor too.
    if (!inRun_ || stopRequested_) {
        detail::raise<error::ReactorNotRunning>();
        return;
    }
    stopRequested_ = true;
    waker_.wake();  // harmless if called on the loop thread; needed for foreign wake-ups
}

// ---- 9. PROTOCOLS ----------------------------------------------------------

REACTOR_INLINE void ITransport::writeSequence(const std::string_view* parts, std::size_t count) {
    for (std::size_t i = 0; i < count; ++i) write(parts[i]);
}

REACTOR_INLINE bool ITransport::setTcpNoDelay(bool enabled) { (void)enabled; return false; }

REACTOR_INLINE bool ITransport::setTcpKeepAlive(bool enabled) { (void)enabled; return false; }

REACTOR_INLINE void Protocol::makeConnection(ITransport* t) {
    connected = true;
    transport = t;
    connectionMade();
}

REACTOR_INLINE std::string Protocol::logPrefix() const {
#if REACTOR_HAS_RTTI && defined(__GNUG__)
    return detail::unqualifiedName(detail::demangle(typeid(*this).name()));
#else
    return "Protocol";
#endif
}

REACTOR_INLINE std::unique_ptr<Protocol> Factory::buildProtocol(const Address& addr) {
    (void)addr;
    if (!protocol) return nullptr;
    std::unique_ptr<Protocol> p = protocol();
    if (p) p->factory = this;
    return p;
}

REACTOR_INLINE void Factory::setProtocolMaker(std::unique_ptr<Protocol> (*make)()) { protocol = make; }

REACTOR_INLINE Factory::~Factory() {
    // Ports and connection attempts simply stop. Open connections are closed
    // without connectionLost: say so, it is probably not what was meant.
    std::size_t open = 0;
    std::string example;
    for (detail::Owned* u = users_; u; u = u->nextUser_)
        if (u->openConnection() && open++ == 0) example = u->describe();
    if (open > 0)
        log(LogLevel::warning, "a Factory was destroyed with " + std::to_string(open) +
                                   " open connection(s) (" + example +
                                   "); closed without connectionLost. Close connections (or destroy the Reactor) "
                                   "before their factory.");
    while (users_) {
        detail::Owned* u = users_;
        u->stopUsingFactory();
        u->abandon();
    }
}

REACTOR_INLINE void detail::Owned::useFactory(Factory& f) {
    stopUsingFactory();
    usedFactory_ = &f;
    prevUser_ = nullptr;
    nextUser_ = f.users_;
    if (nextUser_) nextUser_->prevUser_ = this;
    f.users_ = this;
}

REACTOR_INLINE void detail::Owned::stopUsingFactory() {
    if (!usedFactory_) return;
    if (prevUser_) prevUser_->nextUser_ = nextUser_;
    else usedFactory_->users_ = nextUser_;
    if (nextUser_) nextUser_->prevUser_ = prevUser_;
    usedFactory_ = nullptr;
    prevUser_ = nextUser_ = nullptr;
}

REACTOR_INLINE void Factory::doStop() {
    if (numPorts == 0) return;
    if (--numPorts == 0) stopFactory();
}

REACTOR_INLINE void ClientFactory::clientConnectionFailed(IConnector& connector, const Failure& reason) {
    (void)connector;
    (void)reason;
}

REACTOR_INLINE void ClientFactory::clientConnectionLost(IConnector& connector, const Failure& reason) {
    (void)connector;
    (void)reason;
}

namespace policies {

REACTOR_INLINE void ForwardingProtocol::connectionMade() {
    if (forwardee) forwardee->makeConnection(forwardeeTransport());
}

REACTOR_INLINE void ForwardingProtocol::dataReceived(std::string_view data) {
    if (forwardee) forwardee->dataReceived(data);
}

REACTOR_INLINE void ForwardingProtocol::connectionLost(const Failure& reason) {
    if (!forwardee) return;
    forwardee->connected = false;
    forwardee->connectionLost(reason);
}

REACTOR_INLINE bool ForwardingProtocol::halfCloseable() const { return forwardee && forwardee->halfCloseable(); }

REACTOR_INLINE void ForwardingProtocol::readConnectionLost() {
    if (forwardee) forwardee->readConnectionLost();
}

REACTOR_INLINE void ForwardingProtocol::writeConnectionLost() {
    if (forwardee) forwardee->writeConnectionLost();
}

#if defined(REACTOR_WITH_OPENSSL)
REACTOR_INLINE void ForwardingProtocol::handshakeCompleted() {
    if (forwardee) forwardee->handshakeCompleted();
}

REACTOR_INLINE void ForwardingProtocol::transportReplaced(ITransport* t) {
    ITransport* shared = forwardeeTransport() == transport ? t : nullptr;
    transport = t;
    if (forwardee && shared) forwardee->transportReplaced(shared);
}
#endif

REACTOR_INLINE std::string ForwardingProtocol::logPrefix() const {
    std::string own = Protocol::logPrefix();
    return forwardee ? forwardee->logPrefix() + " (" + own + ")" : own;
}

REACTOR_INLINE ProtocolWrapper::ProtocolWrapper(WrappingFactory& f, std::unique_ptr<Protocol> wrapped)
    : wrappedProtocol(std::move(wrapped)), wrappingFactory(&f) {
    forwardee = wrappedProtocol.get();
    factory = &f;
}

REACTOR_INLINE ProtocolWrapper::~ProtocolWrapper() { unregisterOnce(); }

REACTOR_INLINE void ProtocolWrapper::unregisterOnce() {
    if (std::exchange(unregistered_, true)) return;
    if (wrappingFactory) wrappingFactory->unregisterProtocol(*this);
}

REACTOR_INLINE void ProtocolWrapper::syncFlags() {
    facet_.connected = transport && transport->connected && connected;
    facet_.disconnecting = !facet_.connected || (transport && transport->disconnecting);
}

REACTOR_INLINE void ProtocolWrapper::connectionMade() {
    if (wrappingFactory) wrappingFactory->registerProtocol(*this);
    syncFlags();
    ForwardingProtocol::connectionMade();
}

REACTOR_INLINE void ProtocolWrapper::dataReceived(std::string_view data) {
    syncFlags();
    ForwardingProtocol::dataReceived(data);
}

REACTOR_INLINE void ProtocolWrapper::connectionLost(const Failure& reason) {
    unregisterOnce();
    facet_.connected = false;
    facet_.disconnecting = true;
    ForwardingProtocol::connectionLost(reason);
}

REACTOR_INLINE void ProtocolWrapper::readConnectionLost() {
    syncFlags();
    ForwardingProtocol::readConnectionLost();
}

REACTOR_INLINE void ProtocolWrapper::write(std::string_view data) {
    if (transport) transport->write(data);
}

REACTOR_INLINE void ProtocolWrapper::writeSequence(const std::string_view* parts, std::size_t count) {
    if (transport) transport->writeSequence(parts, count);
}

REACTOR_INLINE void ProtocolWrapper::loseConnection() {
    facet_.disconnecting = true;
    if (transport) transport->loseConnection();
}

REACTOR_INLINE void ProtocolWrapper::abortConnection() {
    facet_.disconnecting = true;
    if (transport) transport->abortConnection();
}

REACTOR_INLINE void ProtocolWrapper::loseWriteConnection() {
    if (transport) transport->loseWriteConnection();
}

REACTOR_INLINE void ProtocolWrapper::registerProducer(IProducer* producer, bool streaming) {
    if (transport) transport->registerProducer(producer, streaming);
}

REACTOR_INLINE void ProtocolWrapper::unregisterProducer() {
    if (transport) transport->unregisterProducer();
}

REACTOR_INLINE void ProtocolWrapper::pauseProducing() {
    if (transport) transport->pauseProducing();
}

REACTOR_INLINE void ProtocolWrapper::resumeProducing() {
    if (transport) transport->resumeProducing();
}

REACTOR_INLINE void ProtocolWrapper::stopProducing() {
    if (transport) transport->stopProducing();
}

REACTOR_INLINE Address ProtocolWrapper::getPeer() const { return transport ? transport->getPeer() : Address{}; }

REACTOR_INLINE Address ProtocolWrapper::getHost() const { return transport ? transport->getHost() : Address{}; }

REACTOR_INLINE WrappingFactory::~WrappingFactory() {
    for (ProtocolWrapper* p : protocols) p->wrappingFactory = nullptr;
}

REACTOR_INLINE std::unique_ptr<Protocol> WrappingFactory::buildProtocol(const Address& addr) {
    if (!wrappedFactory) return nullptr;
    std::unique_ptr<Protocol> wrapped = wrappedFactory->buildProtocol(addr);
    if (!wrapped) return nullptr;
    return wrapProtocol(std::move(wrapped), addr);
}

REACTOR_INLINE std::unique_ptr<ProtocolWrapper> WrappingFactory::wrapProtocol(std::unique_ptr<Protocol> wrapped,
                                                                              const Address& addr) {
    (void)addr;
    return std::make_unique<ProtocolWrapper>(*this, std::move(wrapped));
}

REACTOR_INLINE void WrappingFactory::registerProtocol(ProtocolWrapper& p) { protocols.push_back(&p); }

REACTOR_INLINE void WrappingFactory::unregisterProtocol(ProtocolWrapper& p) {
    auto it = std::find(protocols.begin(), protocols.end(), &p);
    if (it != protocols.end()) protocols.erase(it);
}

REACTOR_INLINE void WrappingFactory::startFactory() {
    if (wrappedFactory) wrappedFactory->doStart();
}

REACTOR_INLINE void WrappingFactory::stopFactory() {
    if (wrappedFactory) wrappedFactory->doStop();
}

REACTOR_INLINE void WrappingFactory::startedConnecting(IConnector& connector) {
    if (wrappedClientFactory) wrappedClientFactory->startedConnecting(connector);
}

REACTOR_INLINE void WrappingFactory::clientConnectionFailed(IConnector& connector, const Failure& reason) {
    if (wrappedClientFactory) wrappedClientFactory->clientConnectionFailed(connector, reason);
}

REACTOR_INLINE void WrappingFactory::clientConnectionLost(IConnector& connector, const Failure& reason) {
    if (wrappedClientFactory) wrappedClientFactory->clientConnectionLost(connector, reason);
}

REACTOR_INLINE TimeoutProtocol::TimeoutProtocol(WrappingFactory& f, std::unique_ptr<Protocol> wrapped,
                                                IReactorTime& clock, std::optional<double> period)
    : ProtocolWrapper(f, std::move(wrapped)), clock_(clock) {
    setTimeout(period);
}

REACTOR_INLINE void TimeoutProtocol::setTimeout(std::optional<double> period) {
    cancelTimeout();
    timeoutPeriod = period;
    if (period) timeoutCall_ = clock_.callLater(*period, [this] {
        timeoutCall_ = DelayedCall();
        timeoutFunc();
    });
}

REACTOR_INLINE void TimeoutProtocol::cancelTimeout() {
    timeoutPeriod.reset();
    if (timeoutCall_.active()) timeoutCall_.cancel();
    timeoutCall_ = DelayedCall();
}

REACTOR_INLINE void TimeoutProtocol::resetTimeout() {
    if (timeoutCall_.active() && timeoutPeriod) timeoutCall_.reset(*timeoutPeriod);
}

REACTOR_INLINE void TimeoutProtocol::write(std::string_view data) {
    resetTimeout();
    ProtocolWrapper::write(data);
}

REACTOR_INLINE void TimeoutProtocol::writeSequence(const std::string_view* parts, std::size_t count) {
    resetTimeout();
    ProtocolWrapper::writeSequence(parts, count);
}

REACTOR_INLINE void TimeoutProtocol::dataReceived(std::string_view data) {
    resetTimeout();
    ProtocolWrapper::dataReceived(data);
}

REACTOR_INLINE void TimeoutProtocol::connectionLost(const Failure& reason) {
    cancelTimeout();
    ProtocolWrapper::connectionLost(reason);
}

REACTOR_INLINE std::unique_ptr<ProtocolWrapper> TimeoutFactory::wrapProtocol(std::unique_ptr<Protocol> wrapped,
                                                                             const Address& addr) {
    (void)addr;
    return std::make_unique<TimeoutProtocol>(*this, std::move(wrapped), *clock, timeoutPeriod);
}

REACTOR_INLINE std::unique_ptr<Protocol> LimitTotalConnectionsFactory::buildProtocol(const Address& addr) {
    std::unique_ptr<Protocol> wrapped;
    if (!connectionLimit || connectionCount < *connectionLimit) {
        if (protocol) wrapped = protocol();
    } else if (overflowProtocol) {
        wrapped = overflowProtocol();
    }
    if (!wrapped) return nullptr;
    wrapped->factory = this;
    std::unique_ptr<ProtocolWrapper> p = wrapProtocol(std::move(wrapped), addr);
    ++connectionCount;
    return p;
}

REACTOR_INLINE void LimitTotalConnectionsFactory::unregisterProtocol(ProtocolWrapper& p) {
    WrappingFactory::unregisterProtocol(p);
    --connectionCount;
}

REACTOR_INLINE void LimitConnectionsByPeer::startFactory() {
    peerConnections.clear();
    WrappingFactory::startFactory();
}

REACTOR_INLINE int* LimitConnectionsByPeer::countOf(const std::string& host) {
    for (auto& entry : peerConnections)
        if (entry.first == host) return &entry.second;
    return nullptr;
}

REACTOR_INLINE std::unique_ptr<Protocol> LimitConnectionsByPeer::buildProtocol(const Address& addr) {
    int* count = countOf(addr.host);
    if ((count ? *count : 0) >= maxConnectionsPerPeer) return nullptr;  // (a limit of 0 refuses all, as Twisted)
    std::unique_ptr<Protocol> built = WrappingFactory::buildProtocol(addr);
    if (!built) return nullptr;
    if (count)
        ++*count;
    else
        peerConnections.emplace_back(addr.host, 1);
    hostOf_.emplace_back(static_cast<ProtocolWrapper*>(built.get()), addr.host);
    return built;
}

REACTOR_INLINE void LimitConnectionsByPeer::unregisterProtocol(ProtocolWrapper& p) {
    WrappingFactory::unregisterProtocol(p);
    for (auto it = hostOf_.begin(); it != hostOf_.end(); ++it) {
        if (it->first != &p) continue;
        for (auto e = peerConnections.begin(); e != peerConnections.end(); ++e)
            if (e->first == it->second && --e->second <= 0) {
                peerConnections.erase(e);
                break;
            }
        hostOf_.erase(it);
        return;
    }
}

REACTOR_INLINE ThrottlingProtocol::ThrottlingProtocol(ThrottlingFactory& f, std::unique_ptr<Protocol> wrapped)
    : ProtocolWrapper(f, std::move(wrapped)) {}

REACTOR_INLINE ThrottlingFactory* ThrottlingProtocol::throttling() const {
    return static_cast<ThrottlingFactory*>(wrappingFactory);  // null once the factory is gone
}

REACTOR_INLINE void ThrottlingProtocol::write(std::string_view data) {
    if (ThrottlingFactory* f = throttling()) f->registerWritten(data.size());
    ProtocolWrapper::write(data);
}

REACTOR_INLINE void ThrottlingProtocol::writeSequence(const std::string_view* parts, std::size_t count) {
    std::size_t total = 0;
    for (std::size_t i = 0; i < count; ++i) total += parts[i].size();
    if (ThrottlingFactory* f = throttling()) f->registerWritten(total);
    ProtocolWrapper::writeSequence(parts, count);
}

REACTOR_INLINE void ThrottlingProtocol::dataReceived(std::string_view data) {
    if (ThrottlingFactory* f = throttling()) f->registerRead(data.size());
    ProtocolWrapper::dataReceived(data);
}

REACTOR_INLINE void ThrottlingProtocol::registerProducer(IProducer* producer, bool streaming) {
    producer_ = producer;
    ProtocolWrapper::registerProducer(producer, streaming);
}

REACTOR_INLINE void ThrottlingProtocol::unregisterProducer() {
    producer_ = nullptr;
    ProtocolWrapper::unregisterProducer();
}

REACTOR_INLINE void ThrottlingProtocol::throttleReads() {
    if (transport) transport->pauseProducing();
}

REACTOR_INLINE void ThrottlingProtocol::unthrottleReads() {
    if (transport) transport->resumeProducing();
}

REACTOR_INLINE void ThrottlingProtocol::throttleWrites() {
    if (producer_) producer_->pauseProducing();
}

REACTOR_INLINE void ThrottlingProtocol::unthrottleWrites() {
    if (producer_) producer_->resumeProducing();
}

REACTOR_INLINE ThrottlingFactory::~ThrottlingFactory() { cancelAll(); }

REACTOR_INLINE void ThrottlingFactory::cancelAll() {
    for (DelayedCall* c : {&unthrottleReadsID, &checkReadBandwidthID, &unthrottleWritesID, &checkWriteBandwidthID}) {
        if (c->active()) c->cancel();
        *c = DelayedCall();
    }
}

REACTOR_INLINE void ThrottlingFactory::checkReadBandwidth() {
    if (readLimit && readThisSecond > *readLimit) {
        throttleReads();
        double throttleTime = readThisSecond / *readLimit - 1.0;
        if (unthrottleReadsID.active()) unthrottleReadsID.cancel();
        unthrottleReadsID = clock->callLater(throttleTime, [this] { unthrottleReads(); });
    }
    readThisSecond = 0;
    checkReadBandwidthID = clock->callLater(1, [this] { checkReadBandwidth(); });
}

REACTOR_INLINE void ThrottlingFactory::checkWriteBandwidth() {
    if (writeLimit && writtenThisSecond > *writeLimit) {
        throttleWrites();
        double throttleTime = writtenThisSecond / *writeLimit - 1.0;
        if (unthrottleWritesID.active()) unthrottleWritesID.cancel();
        unthrottleWritesID = clock->callLater(throttleTime, [this] { unthrottleWrites(); });
    }
    writtenThisSecond = 0;
    checkWriteBandwidthID = clock->callLater(1, [this] { checkWriteBandwidth(); });
}

REACTOR_INLINE void ThrottlingFactory::throttleReads() {
    forEach([](ThrottlingProtocol& p) { p.throttleReads(); });
}

REACTOR_INLINE void ThrottlingFactory::unthrottleReads() {
    unthrottleReadsID = DelayedCall();
    forEach([](ThrottlingProtocol& p) { p.unthrottleReads(); });
}

REACTOR_INLINE void ThrottlingFactory::throttleWrites() {
    forEach([](ThrottlingProtocol& p) { p.throttleWrites(); });
}

REACTOR_INLINE void ThrottlingFactory::unthrottleWrites() {
    unthrottleWritesID = DelayedCall();
    forEach([](ThrottlingProtocol& p) { p.unthrottleWrites(); });
}

REACTOR_INLINE std::unique_ptr<Protocol> ThrottlingFactory::buildProtocol(const Address& addr) {
    if (connectionCount == 0) {
        if (readLimit && !checkReadBandwidthID.active()) checkReadBandwidth();
        if (writeLimit && !checkWriteBandwidthID.active()) checkWriteBandwidth();
    }
    if (maxConnectionCount && connectionCount >= *maxConnectionCount) return nullptr;
    std::unique_ptr<Protocol> p = WrappingFactory::buildProtocol(addr);
    if (p)
        ++connectionCount;
    else if (connectionCount == 0)
        cancelAll();  // refused by the wrapped factory: no connection to check for
    return p;
}

REACTOR_INLINE std::unique_ptr<ProtocolWrapper> ThrottlingFactory::wrapProtocol(std::unique_ptr<Protocol> wrapped,
                                                                                const Address& addr) {
    (void)addr;
    return std::make_unique<ThrottlingProtocol>(*this, std::move(wrapped));
}

REACTOR_INLINE void ThrottlingFactory::unregisterProtocol(ProtocolWrapper& p) {
    WrappingFactory::unregisterProtocol(p);
    if (--connectionCount == 0) cancelAll();
}

}  // namespace policies

// ---- 10. TCP ---------------------------------------------------------------
namespace detail {

REACTOR_INLINE void ReactorAccess::adopt(Reactor& r, std::shared_ptr<Owned> o) {
    o->ownedIndex = r.owned_.size();
    r.owned_.push_back(std::move(o));
}

REACTOR_INLINE void ReactorAccess::release(Reactor& r, Owned* o) {
    std::size_t i = o->ownedIndex;
    if (i >= r.owned_.size() || r.owned_[i].get() != o) return;
    r.dead_.push_back(std::move(r.owned_[i]));
    if (i + 1 != r.owned_.size()) {
        r.owned_[i] = std::move(r.owned_.back());
        r.owned_[i]->ownedIndex = i;
    }
    r.owned_.pop_back();
    o->ownedIndex = static_cast<std::size_t>(-1);
}

REACTOR_INLINE std::vector<char>& ReactorAccess::readBuffer(Reactor& r) {
    if (r.readBuffer_.empty()) r.readBuffer_.resize(REACTOR_READ_BUFFER_SIZE);
    return r.readBuffer_;
}

REACTOR_INLINE ThreadPool& ReactorAccess::resolver(Reactor& r) {
    // As many lookups at once as the reactor's pool has threads (Twisted
    // resolves on that pool): a name that never answers holds one thread.
    if (!r.resolver_) r.resolver_.reset(new ThreadPool(r.poolSize_));
    return *r.resolver_;
}

REACTOR_INLINE bool ReactorAccess::canWatch(os::Fd fd) { return os::Poller::canWatch(fd); }

REACTOR_INLINE std::uint64_t randomSeed() {
    static std::atomic<std::uint64_t> counter{0};
    std::uint64_t z = static_cast<std::uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count()) +
                      0x9E3779B97F4A7C15ull * (counter.fetch_add(1) + 1);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return z ? z : 1;  // xorshift must not start at 0
}

REACTOR_INLINE Address toAddress(const os::SockAddr& a) {
    if (a.isUnix()) return Address::unixSocket(os::unixName(a));
    Address out;
    os::describe(a, out.host, out.port, out.ipv6);
    return out;
}

REACTOR_INLINE Failure lostFailure(int err) {
    if (err == 0) return Failure(error::ConnectionDone());
    // Twisted's wording: "<doc>: <reason>." with the doc's own period dropped.
    std::string base = error::ConnectionLost().message();
    if (!base.empty() && base.back() == '.') base.pop_back();
    return Failure(error::ConnectionLost(base + ": " + os::errorString(err) + "."));
}

REACTOR_INLINE Failure connectFailure(int err) {
    std::string detail = std::to_string(err) + ": " + os::errorString(err);
    switch (os::classifyConnectError(err)) {
        case os::ConnectErrorKind::refused: return connectError<error::ConnectionRefusedError>(detail);
        case os::ConnectErrorKind::timedOut: return connectError<error::TCPTimedOutError>(detail);
        case os::ConnectErrorKind::noRoute: return connectError<error::NoRouteError>(detail);
        case os::ConnectErrorKind::bindError: return connectError<error::ConnectBindError>(detail);
        case os::ConnectErrorKind::other: break;
    }
    return connectError<error::ConnectError>(detail);
}

REACTOR_INLINE TcpConnection::TcpConnection(Reactor& r, os::Fd fd, std::unique_ptr<Protocol> p, std::shared_ptr<TcpConnector> connector)
    : reactor_(r), fd_(fd), protocol_(std::move(p)), connector_(std::move(connector)) {
    connected = true;
}

REACTOR_INLINE bool TcpConnection::start() {
    if (!ReactorAccess::watch(reactor_, fd_, os::evRead, handler())) return false;
    reading_ = true;
    os::SockAddr local;
    if (os::localAddress(fd_, local)) {
        if (unix_)
            unix_->host = os::unixName(local);
        else
            host_ = os::compact(local);
    }
    Protocol* p = protocol_.get();
    if (reactor_.tracing())
        reactor_.trace("fd " + std::to_string(fd_) + (connector_ ? ": connected to " : ": connection from ") +
                       peerAddress().str() + " -> " + p->logPrefix() + ".connectionMade");
    Failure failure;
    if (!runGuarded("connectionMade", [&] { p->makeConnection(this); }, &failure)) closeWith(failure, true);
    return true;
}

REACTOR_INLINE void TcpConnection::write(std::string_view data) {
    if (data.empty()) return;
    writeSequence(&data, 1);
}

REACTOR_INLINE void TcpConnection::writeSequence(const std::string_view* parts, std::size_t count) {
    if (!connected || writeShut_ || closing_ || aborting_) return;  // gone, half-closed or aborted: ignored
    std::size_t total = 0;
    for (std::size_t i = 0; i < count; ++i) total += parts[i].size();
    if (total == 0) return;
    std::size_t skip = 0;
    if (pending() == 0 && !writeError_) {
        // Nothing queued: try the socket now (writev, no copy).
        long sent = os::sendParts(fd_, parts, count);
        if (sent < 0) {
            int err = os::lastError();
            if (!os::wouldBlock(err)) {
                writeError_ = err;  // reported from the loop, never inside the caller's write()
                startWriting();
                return;
            }
            sent = 0;
        }
        skip = static_cast<std::size_t>(sent);
        if (reactor_.tracing())
            reactor_.trace("transport.write(" + std::to_string(total) + " bytes): " +
                           (skip == total ? std::string("sent at once")
                                          : std::to_string(skip) + " sent, the rest buffered until writable"));
        if (skip == total) {
            // A pull producer is asked for more when the socket can take
            // it, and only doWrite asks: make sure doWrite runs.
            if (producer_ && !streaming_) startWriting();
            return;
        }
    }
    for (std::size_t i = 0; i < count; ++i) {
        std::string_view part = parts[i];
        if (skip >= part.size()) {
            skip -= part.size();
            continue;
        }
        out_.append(part.data() + skip, part.size() - skip);
        skip = 0;
    }
    startWriting();
    if (producer_ && streaming_ && !producerPaused_ && pending() > highWaterMark) {
        producerPaused_ = true;
        producer_->pauseProducing();
    }
}

REACTOR_INLINE void TcpConnection::loseConnection() {
    if (!connected || disconnecting || aborting_) return;
    if (reactor_.tracing())
        reactor_.trace("transport.loseConnection(): closing once " + std::to_string(pending()) +
                       " buffered bytes are sent");
    disconnecting = true;
    updateReading();
    startWriting();  // doWrite closes once the buffer is empty
}

REACTOR_INLINE void TcpConnection::abortConnection() {
    if (!connected || aborting_) return;
    if (reactor_.tracing()) reactor_.trace("transport.abortConnection(): dropping the buffer, resetting");
    aborting_ = true;
    stopReading();
    stopWriting();
    out_.clear();
    outPos_ = 0;
    // Asynchronous, as Twisted: connectionLost never runs inside the caller.
    abortCall_ = reactor_.callLater(0, [this] { closeWith(Failure(error::ConnectionAborted()), true); });
}

REACTOR_INLINE void TcpConnection::loseWriteConnection() {
    if (!connected || writeShut_ || aborting_) return;
    wantWriteShut_ = true;
    startWriting();
}

REACTOR_INLINE Address TcpConnection::getPeer() const {
    os::SockAddr a;
    return !unix_ && os::peerAddress(fd_, a) ? toAddress(a) : peerAddress();
}

REACTOR_INLINE std::optional<PeerCredentials> TcpConnection::getPeerCredentials() const {
    PeerCredentials c;
    if (!unix_ || !os::validFd(fd_) || !os::peerCredentials(fd_, c.pid, c.uid, c.gid)) return std::nullopt;
    return c;
}

REACTOR_INLINE void TcpConnection::pauseProducing() {
    userPaused_ = true;
    updateReading();
}

REACTOR_INLINE void TcpConnection::resumeProducing() {
    userPaused_ = false;
    updateReading();
}

REACTOR_INLINE void TcpConnection::registerProducer(IProducer* producer, bool streaming) {
    if (producer_) {
        raise<error::RuntimeError>("Cannot register producer, because another producer was never unregistered.");
        return;
    }
    if (!connected) {
        producer->stopProducing();
        return;
    }
    producer_ = producer;
    streaming_ = streaming;
    producerPaused_ = false;
    if (outputPaused_) {  // the producer limits the output from now on
        outputPaused_ = false;
        updateReading();
    }
    if (!streaming) {
        producer->resumeProducing();  // a pull producer is asked at once
    } else if (pending() > highWaterMark) {
        producerPaused_ = true;
        producer->pauseProducing();
    }
}

REACTOR_INLINE void TcpConnection::unregisterProducer() {
    producer_ = nullptr;
    if (connected && disconnecting) startWriting();  // the close was waiting for it
}

REACTOR_INLINE void TcpConnection::shutdownNow() { closeWith(Failure(error::ConnectionLost("Connection lost")), false); }

REACTOR_INLINE void TcpConnection::abandon() {
    stopUsingFactory();
    abandoned_ = true;  // a closeWith() under way (its factory died in a callback) calls no one else
    if (!closeSocket(false)) return;
    producer_ = nullptr;
    if (protocol_) protocol_->connected = false;
    if (connector_) connector_->abandon();
    ReactorAccess::release(reactor_, this);
}

REACTOR_INLINE std::string TcpConnection::describe() const {
    return std::string(kind()) + " connection " + (connector_ ? "to " : "from ") + peerAddress().str() +
           (protocol_ ? " (" + protocol_->logPrefix() + ")" : std::string());
}

REACTOR_INLINE void TcpConnection::updateReading() {
    // Closing (disconnecting) reads on to drop what arrives: see doRead.
    bool want = connected && !closing_ && !aborting_ && !readShut_ &&
                (disconnecting || (!userPaused_ && !outputPaused_));
    if (want && !reading_)
        reading_ = ReactorAccess::watch(reactor_, fd_, os::evRead, handler());
    else if (!want)
        stopReading();
}

REACTOR_INLINE void TcpConnection::stopReading() {
    if (reading_) ReactorAccess::unwatch(reactor_, fd_, os::evRead);
    reading_ = false;
}

REACTOR_INLINE void TcpConnection::startWriting() {
    if (!writing_ && connected && !closing_ && !aborting_)
        writing_ = ReactorAccess::watch(reactor_, fd_, os::evWrite, handler());
}

REACTOR_INLINE void TcpConnection::stopWriting() {
    if (writing_) ReactorAccess::unwatch(reactor_, fd_, os::evWrite);
    writing_ = false;
}

REACTOR_INLINE void TcpConnection::doRead() {
    if (!connected || closing_ || aborting_) return;
    std::vector<char>& buf = ReactorAccess::readBuffer(reactor_);
    long n = os::receive(fd_, buf.data(), buf.size());
    if (n > 0 && disconnecting) {
        // Closing: what still arrives is read and dropped, never delivered.
        // Reading on lets a peer that is itself waiting to send (its own
        // close, or its reading paused until its output drains) finish:
        // two peers that both stopped reading would wait for each other.
        if (reactor_.tracing())
            reactor_.trace("fd " + std::to_string(fd_) + ": " + std::to_string(n) +
                           " bytes arrived after loseConnection(): dropped");
        return;
    }
    if (n > 0) {
        Protocol* p = protocol_.get();
        std::string_view data(buf.data(), static_cast<std::size_t>(n));
        if (reactor_.tracing())
            reactor_.trace("fd " + std::to_string(fd_) + " readable -> " + p->logPrefix() + ".dataReceived(" +
                           std::to_string(n) + " bytes)");
        const std::size_t before = pending();
        Failure failure;
        // A protocol that throws loses its own connection, nothing else.
        if (!runGuarded("dataReceived", [&] { p->dataReceived(data); }, &failure)) {
            closeWith(failure, true);
            return;
        }
        // Read-side backpressure: the output written in answer to input
        // and not sent yet is over the high-water mark, and nobody else
        // limits it (no producer). Reading more would only make more output
        // for a peer that is not taking it, so stop until it drains. Only
        // answers count: a bulk the protocol sends of its own (from
        // connectionMade, a timer) never stops reading, so two peers that
        // both send megabytes and acknowledge what they read finish; and a
        // client that floods without reading cannot make a server buffer its
        // flood, whatever that server had queued before. (The answers are
        // the queue's newest bytes: at most pending() of them are unsent.)
        answered_ = std::min(answered_, before) + (pending() - before);
        if (!producer_ && !outputPaused_ && connected && !closing_ && answered_ > highWaterMark) {
            outputPaused_ = true;
            if (reactor_.tracing())
                reactor_.trace("fd " + std::to_string(fd_) + ": " + std::to_string(pending()) +
                               " bytes unsent, over the high-water mark: reading paused until they drain");
            updateReading();
        }
        return;
    }
    if (n < 0) {
        int err = os::lastError();
        if (os::wouldBlock(err)) return;
        closeWith(lostFailure(err), true);
        return;
    }
    // EOF. If a send already failed, the kernel handed its error to that
    // send and reports only "closed" here: the send's error is the reason.
    if (writeError_) {
        closeWith(lostFailure(writeError_), true);
        return;
    }
    // The peer stopped sending.
    readShut_ = true;
    stopReading();
    if (protocol_->halfCloseable() && !disconnecting) {
        Protocol* p = protocol_.get();
        Failure failure;
        if (!runGuarded("readConnectionLost", [&] { p->readConnectionLost(); }, &failure)) closeWith(failure, true);
        return;
    }
    if (pending() == 0 && !writing_) {
        closeWith(Failure(error::ConnectionDone()), false);
        return;
    }
    // Output is still queued (a reply to what the peer sent before its
    // FIN, which it may well be waiting for): send it, then close cleanly,
    // as loseConnection() does. Never throw the queued bytes away.
    if (reactor_.tracing() && !disconnecting)
        reactor_.trace("fd " + std::to_string(fd_) + ": the peer stopped sending; closing once " +
                       std::to_string(pending()) + " queued bytes are sent");
    disconnecting = true;
    startWriting();
}

REACTOR_INLINE void TcpConnection::doWrite() {
    if (!connected || closing_ || aborting_) return;
    if (writeError_) {
        closeWith(lostFailure(writeError_), true);
        return;
    }
    if (reactor_.tracing() && pending() > 0)
        reactor_.trace("fd " + std::to_string(fd_) + " writable -> sending " + std::to_string(pending()) +
                       " buffered bytes");
    while (pending() > 0) {
        std::string_view rest(out_.data() + outPos_, pending());
        long sent = os::sendParts(fd_, &rest, 1);
        if (sent < 0) {
            int err = os::lastError();
            if (os::wouldBlock(err)) break;  // still writable-interested; poll tells us when
            closeWith(lostFailure(err), true);
            return;
        }
        outPos_ += static_cast<std::size_t>(sent);
    }
    if (pending() == 0) {
        if (out_.capacity() > retainedBufferLimit)
            out_.release();  // a burst is over: give its memory back
        else
            out_.clear();  // keeps its capacity: no allocation next time
        outPos_ = 0;
    } else if (TcpFlow::dropSentPrefix(outPos_, out_.size())) {
        out_.consume(outPos_);  // a buffer that never quite drains must not keep its sent prefix
        outPos_ = 0;
    }
    // Below the low-water mark a paused streaming producer resumes
    // (it may write more, straight into the buffer).
    if (producer_ && streaming_ && producerPaused_ && pending() <= lowWaterMark) {
        producerPaused_ = false;
        producer_->resumeProducing();
        if (closing_ || aborting_) return;
    }
    if (outputPaused_ && pending() <= lowWaterMark) {
        outputPaused_ = false;
        if (reactor_.tracing())
            reactor_.trace("fd " + std::to_string(fd_) + ": unsent output down to " + std::to_string(pending()) +
                           " bytes: reading again");
        updateReading();
    }
    if (pending() > 0) return;
    stopWriting();
    if (producer_ && !streaming_) {  // a pull producer: one chunk per drained buffer
        producer_->resumeProducing();
        if (closing_ || aborting_ || pending() > 0 || writing_) return;
    }
    if (wantWriteShut_ && !writeShut_) {
        writeShut_ = true;
        os::shutdownWrite(fd_);
        if (protocol_->halfCloseable()) {
            Protocol* p = protocol_.get();
            runGuarded("writeConnectionLost", [&] { p->writeConnectionLost(); });
            if (closing_ || aborting_) return;  // it aborted: a reset, not the clean close below
        }
    }
    // Closing waits for the buffer, not for the producer: a streaming
    // producer that is not paused, or a pull producer that had nothing
    // more, does not keep a closing connection open (it is told
    // stopProducing). Twisted does the same for streaming producers.
    if (disconnecting) closeWith(Failure(error::ConnectionDone()), false);
}

REACTOR_INLINE void TcpConnector::disconnect() {
    if (state_ == State::connecting)
        stopConnecting();
    else if (state_ == State::connected && transport_)
        transport_->loseConnection();
}

REACTOR_INLINE void TcpConnector::stopConnecting() {
    if (state_ != State::connecting) {
        raise<error::NotConnectingError>();
        return;
    }
    fail(Failure(error::UserError()));
}

REACTOR_INLINE Address TcpConnector::getDestination() const {
    if (unix_) return Address::unixSocket(host_);
    Address a;
    a.host = host_;
    a.port = port_;
    a.ipv6 = host_.find(':') != std::string::npos;
    return a;
}

REACTOR_INLINE void TcpConnector::shutdownNow() {
    if (state_ == State::connecting) fail(Failure(error::UserError("Reactor shut down while connecting.")));
}

REACTOR_INLINE void TcpConnector::abandon() {
    stopUsingFactory();
    if (abandoned_) return;
    abandoned_ = true;
    if (std::exchange(factoryStarted_, false)) {  // silently: a later first use starts them again
        if (factory_.numPorts > 0) --factory_.numPorts;
        if (owner_ && owner_->numPorts > 0) --owner_->numPorts;  // started through factory_
    }
    if (!*reactorAlive_) {  // between attempts when the reactor went: nothing of ours is left in it
        state_ = State::disconnected;
        return;
    }
    dropSocket();
    cancelTimeout();
    if (failCall_.active()) failCall_.cancel();
    ++attempt_;
    state_ = State::disconnected;
    if (TcpConnection* t = std::exchange(transport_, nullptr)) t->abandon();
    ReactorAccess::release(reactor_, this);
}

REACTOR_INLINE std::string TcpConnector::describe() const {
    return std::string(unix_ ? "UNIX" : "TCP") + " connection attempt to " + getDestination().str();
}

REACTOR_INLINE void TcpConnector::beginAttempt() {
    if (unix_) {
        os::SockAddr a;
        std::string why;
        if (!os::unixAddress(host_, a, why)) {
            failSoon(connectError<error::BadFileError>(Address::unixSocket(host_).str() + ": " + why));
        } else if (checkPID_ && !os::abstractName(host_) && !os::pidFileLocked(host_ + ".lock")) {
            failSoon(connectError<error::BadFileError>(host_ + ": no live process holds " + host_ + ".lock"));
        } else {
            candidates_.assign(1, a);
            next_ = 0;
            tryNext(0);
        }
        return;
    }
    if (port_ == 0) {  // bad input: a clear failure, reported like any other
        failSoon(connectError<error::ConnectError>("invalid port " + std::to_string(badPort_) +
                                                  " (a port is 1 to 65535)"));
        return;
    }
    os::SockAddr literal;
    if (os::parseLiteral(host_, port_, literal)) {
        candidates_.assign(1, literal);
        next_ = 0;
        tryNext(0);
        return;
    }
    // A name: resolve on a thread, hand the answer back to the loop.
    std::uint64_t attempt = attempt_;
    std::weak_ptr<IConnector> self = weak_from_this();
    Reactor* r = &reactor_;
    std::string host = host_;
    std::uint16_t port = port_;
    ReactorAccess::resolver(reactor_).callInThread([r, self, attempt, host, port] {
        std::string err;
        std::vector<os::SockAddr> found = os::resolve(host, port, err);
        r->callFromThread([self, attempt, found = std::move(found), err, host]() mutable {
            auto strong = self.lock();
            if (!strong) return;
            auto* c = static_cast<TcpConnector*>(strong.get());
            if (c->attempt_ != attempt || c->state_ != State::connecting) return;  // stale answer
            if (found.empty()) {
                c->fail(connectError<error::DNSLookupError>("address '" + host + "' not found: " + err));
                return;
            }
            c->candidates_ = std::move(found);
            c->next_ = 0;
            c->tryNext(0);
        });
    });
}

REACTOR_INLINE void TcpConnector::tryNext(int lastErr) {
    while (next_ < candidates_.size()) {
        const os::SockAddr& a = candidates_[next_++];
        fd_ = os::tcpSocket(a.family());
        if (!os::validFd(fd_)) {
            lastErr = os::lastError();
            continue;
        }
        if (!bindAddress_.host.empty() || bindAddress_.port != 0) {
            // A port alone binds the wildcard address of the target's family.
            std::string host = !bindAddress_.host.empty() ? bindAddress_.host
                               : a.ipv6() ? std::string("::") : std::string("0.0.0.0");
            os::SockAddr local;
            std::string why;
            if (!os::parseLiteral(host, bindAddress_.port, local))
                why = "not an IP address (bindAddress.host must be a literal such as 127.0.0.1 or ::1)";
            else if (os::bindTo(fd_, local) != 0)
                why = os::errorString(os::lastError());
            if (!why.empty()) {
                dropSocket();
                failSoon(connectError<error::ConnectBindError>(bindAddress_.str() + ": " + why));
                return;
            }
        }
        // Connected at once (possible on loopback) or in progress: either
        // way completion is seen as writability on a later turn, so
        // connectionMade never runs inside connectTCP.
        int err = os::startConnect(fd_, a) == 0 ? 0 : os::lastError();
        if (err == 0 || os::connectInProgress(err)) {
            target_ = a;
            auto h = makeHandler([this] { connectDone(); });
            if (ReactorAccess::watch(reactor_, fd_, os::evWrite, h)) return;
            err = os::errTooManyFiles;  // select() cannot watch it
        }
        dropSocket();
        lastErr = err;
    }
    failSoon(connectFailure(lastErr ? lastErr : os::errConnectionRefused));
}

REACTOR_INLINE void TcpConnector::connectDone() {
    ReactorAccess::unwatch(reactor_, fd_, os::evWrite);
    int err = os::socketError(fd_);
    if (err == 0) {
        connected(target_);
        return;
    }
    dropSocket();
    tryNext(err);
}

REACTOR_INLINE void TcpConnector::dropSocket() {
    if (os::validFd(fd_)) {
        ReactorAccess::unwatch(reactor_, fd_, os::evRead | os::evWrite);
        os::closeFd(fd_);
        fd_ = os::invalidFd;
    }
}

REACTOR_INLINE void TcpConnector::cancelTimeout() {
    if (timeoutCall_.active()) timeoutCall_.cancel();
    timeoutCall_ = DelayedCall();
}

REACTOR_INLINE void TcpConnector::failSoon(Failure reason) {
    std::uint64_t attempt = attempt_;
    std::weak_ptr<IConnector> self = weak_from_this();
    failCall_ = reactor_.callLater(0, [self, attempt, reason] {
        auto strong = self.lock();
        auto* c = static_cast<TcpConnector*>(strong.get());
        if (c && c->attempt_ == attempt && c->state_ == State::connecting) c->fail(reason);
    });
}

REACTOR_INLINE void TcpConnector::fail(const Failure& reason) {
    auto keep = shared_from_this();
    dropSocket();
    cancelTimeout();
    if (failCall_.active()) failCall_.cancel();
    ++attempt_;
    state_ = State::disconnected;
    if (reactor_.tracing())
        reactor_.trace("connect to " + getDestination().str() + " failed -> clientConnectionFailed(" + reason.str() +
                       ")");
    runGuarded("clientConnectionFailed", [&] { factory_.clientConnectionFailed(*this, reason); });
    finishCycle();
}

REACTOR_INLINE void TcpConnector::finishCycle() {
    if (state_ == State::disconnected) {
        if (std::exchange(factoryStarted_, false)) factory_.doStop();
        ReactorAccess::release(reactor_, this);
    }
}

REACTOR_INLINE bool TcpPort::listen(int port, const ListenOptions& options, std::string& why) {
    if (port < 0 || port > 65535) {
        why = "Couldn't listen on port " + std::to_string(port) + ": a port is 0 (any free port) to 65535.";
        return false;
    }
    const std::string host = options.interface.empty() ? "0.0.0.0" : options.interface;
    os::SockAddr a;
    const std::string where = detail::showNul(host) + ":" + std::to_string(port);
    if (!os::parseLiteral(host, static_cast<std::uint16_t>(port), a)) {
        why = "Couldn't listen on " + where + ": the interface must be an IP address.";
        return false;
    }
    return startListening(a, options.backlog, options.reusePort, where, why);
}

REACTOR_INLINE bool TcpPort::listenUnix(const std::string& path, int backlog, int mode, bool wantPID,
                                        std::string& why) {
    const std::string where = Address::unixSocket(path).str();
    os::SockAddr a;
    if (mode < 0 || mode > 0777) {
        why = "Couldn't listen on " + where + ": mode must be a permission from 0 to 0777 (octal).";
        return false;
    }
    if (!os::unixAddress(path, a, why)) {
        why = "Couldn't listen on " + where + ": " + why + ".";
        return false;
    }
    host_ = Address::unixSocket(path);
    if (wantPID && !os::abstractName(path)) {
        // Twisted's wantPID: a lock naming this process guards the path, and
        // a socket file left by a dead owner is removed before binding.
        std::string lock = path + ".lock";
        os::PidLock got = os::lockPidFile(lock);
        if (got == os::PidLock::held || got == os::PidLock::failed) {
            why = "Couldn't listen on " + where + ": Cannot acquire lock" +
                  (got == os::PidLock::failed ? " (" + os::errorString(os::lastError()) + ")" : std::string()) + ".";
            return false;
        }
        lockFile_ = lock;
        if (got == os::PidLock::acquiredStale) os::removeStaleSocket(path);
    }
    return startListening(a, backlog, false, where, why, mode);
}

REACTOR_INLINE bool TcpPort::startListening(const os::SockAddr& a, int backlog, bool reusePort,
                                            const std::string& where, std::string& why, int fileMode) {
    auto fail = [&](const char* step) {
        int err = os::lastError();
        why = "Couldn't listen on " + where + ": " + step + "[Errno " + std::to_string(err) + "] " +
              os::errorString(err) + ".";
        closeSocket();
        return false;
    };
    fd_ = os::tcpSocket(a.family());
    if (!os::validFd(fd_) || (!a.isUnix() && !os::setReuseAddress(fd_))) return fail("");
    if (reusePort && !os::setReusePort(fd_)) return fail("SO_REUSEPORT: ");
    if (os::bindTo(fd_, a) != 0) return fail("");
    if (a.isUnix() && !os::abstractName(host_.host)) socketFile_ = host_.host;  // ours from here: removed on failure too
    // The file's mode before listen(), as Twisted: nobody the mode keeps
    // out can connect in between (bind made it with the umask's mode).
    if (fileMode >= 0 && !socketFile_.empty() && !os::changeMode(socketFile_, fileMode)) return fail("chmod: ");
    if (os::listenOn(fd_, backlog) != 0) return fail("");
    os::SockAddr bound;
    if (!a.isUnix() && os::localAddress(fd_, bound)) host_ = toAddress(bound);
    os::Fd& spare = ReactorAccess::spareFd(reactor_);
    if (!os::validFd(spare)) spare = os::openSpareFd();
    handler_ = makeHandler([this] { doRead(); });
    if (!ReactorAccess::watch(reactor_, fd_, os::evRead, handler_)) {
        why = "Couldn't listen on " + where + ": descriptor cannot be watched.";
        closeSocket();
        return false;
    }
    listening_ = true;
    useFactory(factory_);
    factory_.doStart();
    return true;
}

REACTOR_INLINE void TcpPort::stopListening() {
    if (!listening_) return;
    listening_ = false;
    if (resumeCall_.active()) resumeCall_.cancel();
    closeSocket();
    factory_.doStop();
    ReactorAccess::release(reactor_, this);
}

REACTOR_INLINE void TcpPort::abandon() {
    stopUsingFactory();
    if (listening_) {
        listening_ = false;
        if (factory_.numPorts > 0) --factory_.numPorts;  // silently: no stopFactory
        if (resumeCall_.active()) resumeCall_.cancel();
        closeSocket();
    }
    ReactorAccess::release(reactor_, this);
}

REACTOR_INLINE void TcpPort::closeSocket() {
    if (os::validFd(fd_)) {
        ReactorAccess::unwatch(reactor_, fd_, os::evRead);
        os::closeFd(fd_);
        fd_ = os::invalidFd;
    }
    // UNIX: the socket file goes with the socket (a later listener would
    // otherwise find the path taken), then the lock.
    if (!socketFile_.empty()) os::removeFile(std::exchange(socketFile_, std::string()));
    if (!lockFile_.empty()) os::unlockPidFile(std::exchange(lockFile_, std::string()));
}

REACTOR_INLINE void TcpPort::acceptError(int err) {
    log(LogLevel::error, "accept() on " + host_.str() + " failed: " + os::errorString(err) +
                             "; dropping a pending connection and pausing accepts for 0.1s");
    os::Fd& spare = ReactorAccess::spareFd(reactor_);
    if (os::validFd(spare)) {
        os::closeFd(spare);
        os::SockAddr peer;
        os::Fd fd = os::acceptOne(fd_, peer);
        if (os::validFd(fd)) os::closeFd(fd);
        spare = os::openSpareFd();
    }
    ReactorAccess::unwatch(reactor_, fd_, os::evRead);
    resumeCall_ = reactor_.callLater(0.1, [this] {
        if (listening_) ReactorAccess::watch(reactor_, fd_, os::evRead, handler_);
    });
}

REACTOR_INLINE bool TcpConnection::closeSocket(bool reset) {
    if (closing_) return false;
    closing_ = true;
    if (abortCall_.active()) abortCall_.cancel();
    stopReading();
    stopWriting();
    if (reset) os::setLingerZero(fd_);  // the peer sees a reset, not a clean close
    os::closeFd(fd_);
    fd_ = os::invalidFd;
    connected = false;
    disconnecting = true;  // a protocol method still on the stack stops delivering
    return true;
}

REACTOR_INLINE void TcpConnection::closeWith(const Failure& reason, bool reset) {
    if (!closeSocket(reset)) return;
    IProducer* producer = producer_;
    producer_ = nullptr;
    if (producer) runGuarded("stopProducing", [&] { producer->stopProducing(); });
    Protocol* p = protocol_.get();
    p->connected = false;
    // Each user call may destroy the factory (which abandons this
    // connection): after one, call no one else.
    if (!abandoned_) {
        if (reactor_.tracing())
            reactor_.trace("connection to " + peerAddress().str() + " closed -> " + p->logPrefix() +
                           ".connectionLost(" + reason.str() + ")");
        runGuarded("connectionLost", [&] { p->connectionLost(reason); });
    }
#if defined(REACTOR_WITH_OPENSSL)
    // A TLS layer's reason (a certificate that did not verify) is the factory's too.
    if (connector_ && !abandoned_ && tls_) {
        connector_->connectionLost(tls_->lostReason(reason));
        ReactorAccess::release(reactor_, this);
        return;
    }
#endif
    if (connector_ && !abandoned_) connector_->connectionLost(reason);
    // The protocol's life ends with this object's, at the end of the turn:
    // connectionLost may run while one of its own methods is on the stack
    // (disconnectAll() from its lineReceived, say), which must return
    // through a live object.
    ReactorAccess::release(reactor_, this);
}

REACTOR_INLINE void TcpConnector::connect() {
    if (abandoned_ || !*reactorAlive_) {
        raise<error::RuntimeError>("can't connect: the reactor or the factory of this connector is gone");
        return;
    }
    if (state_ != State::disconnected) {
        raise<error::RuntimeError>("can't connect in this state");
        return;
    }
    if (ownedIndex == static_cast<std::size_t>(-1))
        ReactorAccess::adopt(reactor_, std::static_pointer_cast<TcpConnector>(shared_from_this()));
    state_ = State::connecting;
    ++attempt_;
    // Twisted's factoryStarted: connect() from inside clientConnectionFailed
    // or clientConnectionLost (its documented retry) is the same cycle.
    if (!std::exchange(factoryStarted_, true)) factory_.doStart();
    if (const double timeout = timeout_ > 0 ? timeout_ : os::fallbackConnectTimeout; timeout > 0) {
        timeoutCall_ = reactor_.callLater(timeout, [this] {
            timeoutCall_ = DelayedCall();
            if (state_ == State::connecting) fail(Failure(error::TimeoutError()));
        });
    }
    beginAttempt();
    runGuarded("startedConnecting", [&] { factory_.startedConnecting(*this); });
}

REACTOR_INLINE void TcpConnector::connected(const os::SockAddr& peer) {
    cancelTimeout();
    os::Fd fd = std::exchange(fd_, os::invalidFd);
    Address peerAddress = toAddress(peer);
    std::unique_ptr<Protocol> p;
    std::uint64_t attempt = attempt_;
    runGuarded("buildProtocol", [&] { p = factory_.buildProtocol(peerAddress); });
    if (abandoned_) {  // buildProtocol destroyed the factory: nothing more for it
        os::closeFd(fd);
        return;
    }
    if (attempt_ != attempt || state_ != State::connecting) {
        // buildProtocol stopped this attempt (stopConnecting, a cancelled
        // endpoint Deferred), and maybe started another: it was reported
        // failed, so it must not connect after all.
        os::closeFd(fd);
        return;
    }
    if (!p) {
        os::closeFd(fd);
        fail(Failure(error::ConnectError("An error occurred while connecting: the factory refused to build a protocol.")));
        return;
    }
    if (!p->factory) p->factory = &factory_;
    state_ = State::connected;
    auto conn = std::make_shared<TcpConnection>(reactor_, fd, std::move(p),
                                                std::static_pointer_cast<TcpConnector>(shared_from_this()));
    conn->useFactory(owner_ ? *owner_ : factory_);
    conn->setPeer(peer);
#if defined(REACTOR_WITH_OPENSSL)
    if (tls) conn->wrapTLS(tls);
#endif
    transport_ = conn.get();
    ReactorAccess::adopt(reactor_, conn);
    if (!conn->start()) {
        log(LogLevel::error, "connection to " + peerAddress.str() + " closed: its descriptor cannot be watched");
        conn->shutdownNow();
    }
}

REACTOR_INLINE void TcpConnector::connectionLost(const Failure& reason) {
    if (abandoned_) return;  // its factory is gone
    auto keep = shared_from_this();
    transport_ = nullptr;
    state_ = State::disconnected;
    runGuarded("clientConnectionLost", [&] { factory_.clientConnectionLost(*this, reason); });
    finishCycle();
}

REACTOR_INLINE void TcpPort::doRead() {
    auto keep = shared_from_this();  // a protocol may stop this port while we accept
    int accepted = 0;
    for (; accepted < numberAccepts_ && listening_; ++accepted) {
        os::SockAddr peer;
        os::Fd fd = os::acceptOne(fd_, peer);
        if (!os::validFd(fd)) {
            int err = os::lastError();
            if (os::wouldBlock(err) || os::connectionAborted(err)) break;
            if (os::outOfDescriptors(err)) {
                acceptError(err);
                return;
            }
            log(LogLevel::error, "accept() on " + host_.str() + " failed: " + os::errorString(err));
            break;
        }
        Address peerAddress = toAddress(peer);
        if (!ReactorAccess::canWatch(fd)) {  // select() and fd >= FD_SETSIZE: refuse before any callback
            log(LogLevel::error, "connection from " + peerAddress.str() + " refused: descriptor " + std::to_string(fd) +
                                     " cannot be watched by the select() backend (FD_SETSIZE)");
            os::closeFd(fd);
            continue;
        }
        std::unique_ptr<Protocol> p;
        runGuarded("buildProtocol", [&] { p = factory_.buildProtocol(peerAddress); });
        if (!usingFactory()) {  // buildProtocol destroyed the factory (which abandoned this port)
            os::closeFd(fd);
            return;
        }
        if (!p) {  // refused by the factory
            os::closeFd(fd);
            continue;
        }
        if (!p->factory) p->factory = &factory_;
        auto conn = std::make_shared<TcpConnection>(reactor_, fd, std::move(p), nullptr);
        conn->useFactory(factory_);
        conn->setPeer(peer);
#if defined(REACTOR_WITH_OPENSSL)
        if (tls) conn->wrapTLS(tls);
#endif
        ReactorAccess::adopt(reactor_, conn);
        if (!conn->start()) {
            log(LogLevel::error, "connection from " + peerAddress.str() + " closed: its descriptor cannot be watched");
            conn->shutdownNow();
        }
    }
    numberAccepts_ = accepted == numberAccepts_ ? numberAccepts_ + 20 : std::max(1, accepted);
    numberAccepts_ = std::max(numberAccepts_, 100);
}
}  // namespace detail

REACTOR_INLINE Address ListeningPort::getHost() const { return port_ ? port_->getHost() : Address{}; }

REACTOR_INLINE void ListeningPort::stopListening() {
    if (port_) port_->stopListening();
}

REACTOR_INLINE bool ListeningPort::listening() const { return port_ && port_->listening(); }

REACTOR_INLINE ListeningPort Reactor::listenTCP(int port, Factory& factory, int backlog, std::string_view interface) {
    ListenOptions options;
    options.interface = std::string(interface);
    options.backlog = backlog;
    return listenTCP(port, factory, options);
}

REACTOR_INLINE ListeningPort Reactor::listenTCP(int port, Factory& factory, const ListenOptions& options) {
    std::string why;
    ListeningPort made = detail::startPort(*this, factory, why, [&](detail::TcpPort& p, std::string& w) {
        return p.listen(port, options, w);
    });
    if (!made) detail::raise<error::CannotListenError>(why);
    return made;
}

REACTOR_INLINE std::shared_ptr<IConnector> Reactor::connectTCP(const std::string& host, int port,
                                                               ClientFactory& factory, double timeout,
                                                               const Address& bindAddress) {
    auto c = std::make_shared<detail::TcpConnector>(*this, host, port, factory, timeout, bindAddress);
    c->connect();
    return c;
}

REACTOR_INLINE std::shared_ptr<IConnector> Reactor::connectTCP(const std::string& host, int port,
                                                               std::shared_ptr<ClientFactory> factory, double timeout,
                                                               const Address& bindAddress) {
    auto c = std::make_shared<detail::TcpConnector>(*this, host, port, *factory, timeout, bindAddress);
    c->keepFactory = std::move(factory);
    c->connect();
    return c;
}

REACTOR_INLINE ListeningPort Reactor::listenUNIX(const std::string& path, Factory& factory, int backlog, int mode,
                                                bool wantPID) {
    std::string why;
    ListeningPort made = detail::startPort(*this, factory, why, [&](detail::TcpPort& p, std::string& w) {
        return p.listenUnix(path, backlog, mode, wantPID, w);
    });
    if (!made) detail::raise<error::CannotListenError>(why);
    return made;
}

REACTOR_INLINE std::shared_ptr<IConnector> Reactor::connectUNIX(const std::string& path, ClientFactory& factory,
                                                                double timeout, bool checkPID) {
    auto c = std::make_shared<detail::TcpConnector>(*this, path, 1, factory, timeout, Address());
    c->targetUnix(checkPID);
    c->connect();
    return c;
}

REACTOR_INLINE std::shared_ptr<IConnector> Reactor::connectUNIX(const std::string& path,
                                                                std::shared_ptr<ClientFactory> factory,
                                                                double timeout, bool checkPID) {
    auto c = std::make_shared<detail::TcpConnector>(*this, path, 1, *factory, timeout, Address());
    c->keepFactory = std::move(factory);
    c->targetUnix(checkPID);
    c->connect();
    return c;
}

// ---- endpoints ----

namespace detail {

/// Lives in the connection in place of the protocol it shares: forwards
/// every event, and lets go of the transport after connectionLost so a
/// protocol kept by its owner never points at a freed transport.
class SharedProtocol final : public policies::ForwardingProtocol {
public:
    SharedProtocol(std::shared_ptr<Protocol> inner, Deferred<std::shared_ptr<Protocol>> onConnection)
        : inner_(std::move(inner)), onConnection_(std::move(onConnection)) {
        forwardee = inner_.get();
    }
    /// Also when the connection is closed silently (its factory or the
    /// reactor destroyed): the protocol you keep is left detached.
    ~SharedProtocol() override { detach(); }
    SharedProtocol(const SharedProtocol&) = delete;
    SharedProtocol& operator=(const SharedProtocol&) = delete;
    void connectionMade() override {
        ForwardingProtocol::connectionMade();
        if (!onConnection_.called()) onConnection_.callback(inner_);
    }
    void connectionLost(const Failure& reason) override {
        // connectionMade failed before the Deferred fired: it fails, first,
        // so that nothing the protocol does next can keep it pending.
        if (!onConnection_.called()) onConnection_.errback(reason);
        struct Detach {  // also when connectionLost throws
            SharedProtocol* self;
            ~Detach() { self->detach(); }
        } detachAfter{this};
        ForwardingProtocol::connectionLost(reason);
    }
    /// Traces and logs name your protocol, not this go-between.
    std::string logPrefix() const override { return inner_->logPrefix(); }

private:
    void detach() {
        inner_->transport = nullptr;
        inner_->connected = false;
    }
    std::shared_ptr<Protocol> inner_;
    Deferred<std::shared_ptr<Protocol>> onConnection_;
};

/// The client factory of one endpoint attempt (owned by its connector).
class EndpointFactory final : public ClientFactory {
public:
    EndpointFactory(Factory* wrapped, std::shared_ptr<Protocol> given, Deferred<std::shared_ptr<Protocol>> d)
        : wrapped_(wrapped), given_(std::move(given)), onConnection_(std::move(d)) {}
    std::unique_ptr<Protocol> buildProtocol(const Address& addr) override {
        std::shared_ptr<Protocol> p = std::move(given_);
#if REACTOR_HAS_EXCEPTIONS
        if (!p && wrapped_) {
            try {
                p = wrapped_->buildProtocol(addr);
            } catch (...) {  // Twisted: the Deferred fails with it
                if (!onConnection_.called()) onConnection_.errback(Failure::current());
                return nullptr;
            }
        }
#else
        if (!p && wrapped_) p = wrapped_->buildProtocol(addr);
#endif
        if (!p) {
            if (!onConnection_.called()) onConnection_.errback(Failure(error::NoProtocol()));
            return nullptr;  // the connector closes the socket
        }
        return std::make_unique<SharedProtocol>(std::move(p), onConnection_);
    }
    void startFactory() override {
        if (wrapped_) wrapped_->doStart();
    }
    void stopFactory() override {
        if (wrapped_) wrapped_->doStop();
    }
    void clientConnectionFailed(IConnector&, const Failure& reason) override {
        if (!onConnection_.called()) onConnection_.errback(reason);
    }

private:
    Factory* wrapped_;
    std::shared_ptr<Protocol> given_;
    Deferred<std::shared_ptr<Protocol>> onConnection_;
};

REACTOR_INLINE Deferred<std::shared_ptr<Protocol>> connectEndpoint(IStreamClientEndpoint& endpoint, Factory* factory,
                                                                   std::shared_ptr<Protocol> given) {
    // The canceller needs the connector, which exists only once the
    // attempt has started: it reads it through this slot.
    auto connector = std::make_shared<std::weak_ptr<IConnector>>();
    Deferred<std::shared_ptr<Protocol>> d([connector](Deferred<std::shared_ptr<Protocol>>& self) {
        auto c = connector->lock();
        if (!c) return;  // plain CancelledError
        // Twisted: the Deferred fails first, then the attempt stops (its
        // clientConnectionFailed finds the Deferred fired).
        self.errback(Failure(error::ConnectingCancelledError("Connecting to " + c->getDestination().str() +
                                                             " was cancelled.")));
        if (c->isConnecting())
            c->stopConnecting();
        else
            c->disconnect();  // cancelled inside connectionMade: the connection goes too
    });
    auto adapter = std::make_shared<EndpointFactory>(factory, std::move(given), d);
    *connector = endpoint.connectWith(std::move(adapter), factory);
    return d;
}

/// Parsing endpoint descriptions (Twisted's strports grammar).
struct EndpointDescription {
    std::string type;
    std::vector<std::string> args;
    std::vector<std::pair<std::string, std::string>> params;
    std::string error;  // non-empty: what is wrong
};

REACTOR_INLINE EndpointDescription parseDescription(std::string_view text) {
    EndpointDescription out;
    std::vector<std::string> field(1);  // one field: its ':'-free pieces split at the first '='
    auto finish = [&] {
        if (field.size() == 1)
            out.args.push_back(std::move(field[0]));
        else
            out.params.emplace_back(std::move(field[0]), std::move(field[1]));
        field.assign(1, std::string());
    };
    for (std::size_t i = 0; i < text.size(); ++i) {
        char c = text[i];
        if (c == '\0') {  // no field may hold one: the OS would read up to it ("tcp:80\0x" as port 80)
            out.error = "contains a NUL byte";
            return out;
        }
        if (c == '\\') {
            if (++i == text.size()) {
                out.error = "ends with a lone backslash";
                return out;
            }
            field.back() += text[i];
        } else if (c == ':') {
            finish();
        } else if (c == '=' && field.size() == 1) {
            field.emplace_back();
        } else {
            field.back() += c;
        }
    }
    finish();
    if (out.args.empty() || out.args[0].empty()) {
        out.error = "no endpoint type (it starts with one: tcp:, tcp6:, unix:)";
        return out;
    }
    out.type = out.args[0];
    out.args.erase(out.args.begin());
    for (const auto& kv : out.params)
        if (kv.first.empty()) out.error = "a parameter without a name ('=" + kv.second + "')";
    return out;
}

/// Reads the fields of one description by name or position, and collects
/// the first problem.
class DescriptionReader {
public:
    DescriptionReader(EndpointDescription& d, std::initializer_list<const char*> known) : d_(d) {
        for (const auto& kv : d_.params) {
            bool ok = false;
            for (const char* k : known) ok = ok || kv.first == k;
            if (!ok) {
                std::string names;
                for (const char* k : known) names += std::string(names.empty() ? "" : ", ") + k;
                fail("unknown parameter '" + kv.first + "' (" + d_.type + ": takes " + names + ")");
            }
        }
    }
    /// The value named `name`, else the next positional one, else `fallback`.
    std::optional<std::string> take(const char* name, bool positional) {
        for (auto kv = d_.params.rbegin(); kv != d_.params.rend(); ++kv)  // the last one wins, as in Twisted
            if (kv->first == name) return kv->second;
        if (positional && next_ < d_.args.size()) return d_.args[next_++];
        return std::nullopt;
    }
    std::string text(const char* name, bool positional, std::string fallback) {
        auto v = take(name, positional);
        return v ? *v : fallback;
    }
    long number(const char* name, bool positional, long fallback, long lo, long hi, int base = 10) {
        auto v = take(name, positional);
        return v ? parseNumber(name, *v, lo, hi, base) : fallback;
    }
    /// A field that must be there: "missing <what>" if it is not.
    long requiredNumber(const char* name, bool positional, const char* what, long lo, long hi) {
        auto v = take(name, positional);
        need(v, what);
        return v && !v->empty() ? parseNumber(name, *v, lo, hi, 10) : 0;
    }
    long parseNumber(const char* name, const std::string& v, long lo, long hi, int base) {
        char* end = nullptr;
        errno = 0;
        long n = v.empty() ? 0 : std::strtol(v.c_str(), &end, base);
        if (v.empty() || *end != '\0' || errno != 0 || n < lo || n > hi)
            fail(std::string(name) + " must be " + (base == 8 ? "an octal number" : "a whole number") + " from " +
                 (base == 8 ? "0 to 777" : std::to_string(lo) + " to " + std::to_string(hi)) + ", not '" + v + "'");
        return n;
    }
    double seconds(const char* name, double fallback) {
        auto v = take(name, false);
        if (!v) return fallback;
        char* end = nullptr;
        double x = v->empty() ? -1 : std::strtod(v->c_str(), &end);
        if (v->empty() || *end != '\0' || !(x >= 0)) fail(std::string(name) + " must be a number of seconds, not '" + *v + "'");
        return x;
    }
    void need(const std::optional<std::string>& v, const char* what) {
        if (!v || v->empty()) fail(std::string("missing ") + what);
    }
    /// Positional fields nobody asked for.
    void finish() {
        if (next_ < d_.args.size()) fail("unexpected field '" + d_.args[next_] + "'");
    }
    void fail(std::string why) {
        if (d_.error.empty()) d_.error = std::move(why);
    }

private:
    EndpointDescription& d_;
    std::size_t next_ = 0;
};

/// "@name" in a description is Linux's abstract name "\0name".
inline std::string unixPathFromDescription(std::string path) {
    if (!path.empty() && path[0] == '@') path[0] = '\0';
    return path;
}

/// What serverFromString/clientFromString return for bad input when they
/// cannot throw: an endpoint that fails with the parse error.
class BrokenEndpoint final : public IStreamServerEndpoint, public IStreamClientEndpoint {
public:
    explicit BrokenEndpoint(Failure why) : why_(std::move(why)) {}
    Deferred<ListeningPort> listen(Factory&) override { return fail<ListeningPort>(why_); }
    std::string describe() const override { return "invalid endpoint (" + why_.getErrorMessage() + ")"; }
    std::shared_ptr<IConnector> connectWith(std::shared_ptr<ClientFactory> factory, Factory*) override {
        Failure why = why_;
        struct Refused final : IConnector {
            void connect() override {}
            void disconnect() override {}
            void stopConnecting() override {}
            bool isConnecting() const override { return false; }
            Address getDestination() const override { return Address(); }
        };
        auto c = std::make_shared<Refused>();
        factory->clientConnectionFailed(*c, why);
        return c;
    }

private:
    Failure why_;
};

/// Bad input to serverFromString/clientFromString: raised, and (without
/// exceptions) an endpoint that fails with it.
inline std::shared_ptr<BrokenEndpoint> refuseDescription(const char* kind, std::string_view description,
                                                         const std::string& why) {
    std::string message = std::string("invalid ") + kind + " endpoint '" + detail::showNul(description) + "': " + why;
    raise<error::ValueError>(message);
    return std::make_shared<BrokenEndpoint>(Failure(error::ValueError(message)));
}

}  // namespace detail

REACTOR_INLINE Deferred<std::shared_ptr<Protocol>> IStreamClientEndpoint::connect(Factory& factory) {
    return detail::connectEndpoint(*this, &factory, nullptr);
}

REACTOR_INLINE Deferred<ListeningPort> TCP4ServerEndpoint::listen(Factory& factory) {
    std::string why;
    ListenOptions options;
    options.interface = interface_;
    options.backlog = backlog_;
    ListeningPort port = detail::startPort(reactor_, factory, why, [&](detail::TcpPort& p, std::string& w) {
        return p.listen(port_, options, w);
    });
    if (!port) return fail<ListeningPort>(Failure(error::CannotListenError(why)));
    return succeed(std::move(port));
}

REACTOR_INLINE std::string TCP4ServerEndpoint::describe() const {
    return "TCP port " + std::to_string(port_) + " on " + (interface_.empty() ? "every IPv4 address" : interface_);
}

REACTOR_INLINE Deferred<ListeningPort> UNIXServerEndpoint::listen(Factory& factory) {
    std::string why;
    ListeningPort port = detail::startPort(reactor_, factory, why, [&](detail::TcpPort& p, std::string& w) {
        return p.listenUnix(path_, backlog_, mode_, wantPID_, w);
    });
    if (!port) return fail<ListeningPort>(Failure(error::CannotListenError(why)));
    return succeed(std::move(port));
}

REACTOR_INLINE std::string UNIXServerEndpoint::describe() const {
    return "UNIX socket " + Address::unixSocket(path_).str();
}

REACTOR_INLINE std::string TCP4ClientEndpoint::describe() const {
    Address a;
    a.host = host_;
    a.port = static_cast<std::uint16_t>(port_);
    a.ipv6 = host_.find(':') != std::string::npos;
    return "TCP " + a.str();
}

REACTOR_INLINE std::shared_ptr<IConnector> TCP4ClientEndpoint::connectWith(std::shared_ptr<ClientFactory> factory,
                                                                          Factory* owner) {
    auto c = std::make_shared<detail::TcpConnector>(reactor_, host_, port_, *factory, timeout_, bindAddress_);
    c->keepFactory = std::move(factory);
    if (owner) c->ownedBy(*owner);
    c->connect();
    return c;
}

REACTOR_INLINE std::string UNIXClientEndpoint::describe() const {
    return "UNIX socket " + Address::unixSocket(path_).str();
}

REACTOR_INLINE std::shared_ptr<IConnector> UNIXClientEndpoint::connectWith(std::shared_ptr<ClientFactory> factory,
                                                                          Factory* owner) {
    auto c = std::make_shared<detail::TcpConnector>(reactor_, path_, 1, *factory, timeout_, Address());
    c->keepFactory = std::move(factory);
    c->targetUnix(checkPID_);
    if (owner) c->ownedBy(*owner);
    c->connect();
    return c;
}

REACTOR_INLINE std::shared_ptr<IStreamServerEndpoint> serverFromString(Reactor& r, std::string_view description) {
    detail::EndpointDescription d = detail::parseDescription(description);
    std::shared_ptr<IStreamServerEndpoint> made;
    if (d.error.empty()) {
        if (d.type == "tcp" || d.type == "tcp6") {
            detail::DescriptionReader in(d, {"port", "interface", "backlog"});
            // Twisted's positional order: port, interface, backlog.
            long number = in.requiredNumber("port", true, "port (tcp:8000)", 0, 65535);
            std::string interface = in.text("interface", true, "");
            if (interface.empty() && d.type == "tcp6") interface = "::";
            long backlog = in.number("backlog", true, defaultBacklog, 1, 1L << 30);
            in.finish();
            made = std::make_shared<TCP4ServerEndpoint>(r, static_cast<int>(number), static_cast<int>(backlog),
                                                        interface);
        } else if (d.type == "unix") {
            detail::DescriptionReader in(d, {"address", "mode", "backlog", "lockfile"});
            auto path = in.take("address", true);
            in.need(path, "path (unix:/run/app.sock)");
            // Twisted's positional order: address, mode, backlog, lockfile.
            long mode = in.number("mode", true, 0666, 0, 0777, 8);
            long backlog = in.number("backlog", true, defaultBacklog, 1, 1L << 30);
            bool lock = in.number("lockfile", true, 1, 0, 1) != 0;
            in.finish();
            made = std::make_shared<UNIXServerEndpoint>(r, detail::unixPathFromDescription(path ? *path : ""),
                                                        static_cast<int>(backlog), static_cast<int>(mode), lock);
#if defined(REACTOR_WITH_OPENSSL)
        } else if (d.type == "ssl" || d.type == "tls") {
            made = detail::tls::serverEndpoint(r, d);  // section 10a
#endif
        } else {
            d.error = "unknown endpoint type '" + d.type + "' (known: tcp, tcp6, unix)";
        }
    }
    if (d.error.empty()) return made;
    return detail::refuseDescription("server", description, d.error);
}

REACTOR_INLINE std::shared_ptr<IStreamClientEndpoint> clientFromString(Reactor& r, std::string_view description) {
    detail::EndpointDescription d = detail::parseDescription(description);
    std::shared_ptr<IStreamClientEndpoint> made;
    if (d.error.empty()) {
        if (d.type == "tcp" || d.type == "tcp6") {
            detail::DescriptionReader in(d, {"host", "port", "timeout", "bindAddress"});
            auto host = in.take("host", true);
            in.need(host, "host (tcp:host=example.org:port=6667)");
            long number = in.requiredNumber("port", true, "port (tcp:host=example.org:port=6667)", 1, 65535);
            double timeout = in.seconds("timeout", 30);
            Address bind;
            bind.host = in.text("bindAddress", false, "");
            in.finish();
            made = std::make_shared<TCP4ClientEndpoint>(r, host ? *host : "", static_cast<int>(number), timeout, bind);
        } else if (d.type == "unix") {
            detail::DescriptionReader in(d, {"path", "timeout", "lockfile"});
            auto path = in.take("path", true);
            in.need(path, "path (unix:path=/run/app.sock)");
            double timeout = in.seconds("timeout", 30);
            bool check = in.number("lockfile", false, 0, 0, 1) != 0;
            in.finish();
            made = std::make_shared<UNIXClientEndpoint>(r, detail::unixPathFromDescription(path ? *path : ""), timeout,
                                                        check);
#if defined(REACTOR_WITH_OPENSSL)
        } else if (d.type == "tls" || d.type == "ssl") {
            made = detail::tls::clientEndpoint(r, d);  // section 10a
#endif
        } else {
            d.error = "unknown endpoint type '" + d.type + "' (known: tcp, tcp6, unix)";
        }
    }
    if (d.error.empty()) return made;
    return detail::refuseDescription("client", description, d.error);
}

REACTOR_INLINE void ReconnectingClientFactory::clientConnectionFailed(IConnector& c, const Failure& reason) {
    (void)reason;
    if (continueTrying && !(reactor_ && reactor_->stopping())) {
        connector = c.weak_from_this();
        retry();
    }
}

REACTOR_INLINE void ReconnectingClientFactory::clientConnectionLost(IConnector& c, const Failure& reason) {
    (void)reason;
    if (continueTrying && !(reactor_ && reactor_->stopping())) {
        connector = c.weak_from_this();
        retry();
    }
}

REACTOR_INLINE void ReconnectingClientFactory::retry(std::shared_ptr<IConnector> c) {
    if (!continueTrying) return;
    if (!c) c = connector.lock();
    if (!c) {
        detail::raise<error::ValueError>("no connector to retry");
        return;
    }
    ++retries;
    if (maxRetries >= 0 && retries > maxRetries) {
        log(LogLevel::info, "Abandoning " + c->getDestination().str() + " after " + std::to_string(retries) +
                                " retries.");
        return;
    }
    delay = std::min(delay * factor, maxDelay);
    if (jitter > 0) delay = std::max(0.0, normalVariate(delay, delay * jitter));
    if (!alive_) alive_ = std::make_shared<bool>(true);
    callID = clock->callLater(delay, [this, c, alive = std::weak_ptr<bool>(alive_)] {
        if (alive.expired()) return;  // the factory is gone (its destructor cancels only callID)
        callID = DelayedCall();
        // A retry due while the reactor shuts down (its "before" triggers
        // can wait on Deferreds) would start an attempt shutdown must undo.
        if (reactor_ && reactor_->stopping()) return;
        c->connect();
    });
}

REACTOR_INLINE void ReconnectingClientFactory::stopTrying() {
    if (callID.active()) callID.cancel();
    callID = DelayedCall();
    continueTrying = false;
    std::shared_ptr<IConnector> c = connector.lock();
    if (!c) return;
#if REACTOR_HAS_EXCEPTIONS
    // As Twisted: whatever state the connector is in, and a connector that
    // is not connecting says so with NotConnectingError, which is ignored.
    try {
        c->stopConnecting();
    } catch (const error::NotConnectingError&) {
    }
#else
    // The same call when it can succeed: otherwise it would log a misuse.
    if (c->isConnecting()) c->stopConnecting();
#endif
}

REACTOR_INLINE void ReconnectingClientFactory::resetDelay() {
    delay = initialDelay;
    retries = 0;
    callID = DelayedCall();
    continueTrying = true;
}

REACTOR_INLINE std::function<double()> ReconnectingClientFactory::defaultUniform01() {
    return [state = detail::randomSeed()]() mutable {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        return static_cast<double>(state >> 11) * (1.0 / 9007199254740992.0);
    };
}

REACTOR_INLINE double ReconnectingClientFactory::normalVariate(double mean, double stddev) {
    double u1 = uniform01(), u2 = uniform01();
    if (u1 < 1e-300) u1 = 1e-300;
    return mean + stddev * std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
}

// ---- UDP --------------------------------------------------------------------

REACTOR_INLINE DatagramProtocol::~DatagramProtocol() {
    if (port_) port_->abandon();  // unlinks us first: no call into this half-destroyed object
}

REACTOR_INLINE void DatagramProtocol::doStart() {
    if (numPorts++ == 0) startProtocol();
}

REACTOR_INLINE void DatagramProtocol::doStop() {
    if (numPorts == 0) return;
    transport = nullptr;
    if (--numPorts == 0) stopProtocol();
}

REACTOR_INLINE std::string DatagramProtocol::logPrefix() const {
#if REACTOR_HAS_RTTI && defined(__GNUG__)
    return detail::unqualifiedName(detail::demangle(typeid(*this).name()));
#else
    return "DatagramProtocol";
#endif
}

namespace detail {

REACTOR_INLINE bool UdpPort::bind(std::uint16_t port, const os::SockAddr& where, std::size_t maxPacketSize,
                                  bool listenMultiple, std::string& why) {
    Address shown = toAddress(where);
    const std::string place = shown.host + ":" + std::to_string(port);
    ipv6_ = where.ipv6();
    fd_ = os::udpSocket(where.family());
    bool ok = os::validFd(fd_) && (!listenMultiple || os::setReuseMultiple(fd_)) && os::bindTo(fd_, where) == 0;
    if (!ok) {
        int err = os::lastError();
        why = "Couldn't listen on " + place + ": [Errno " + std::to_string(err) + "] " + os::errorString(err) + ".";
        closeSocket();
        return false;
    }
    os::SockAddr bound;
    if (os::localAddress(fd_, bound)) host_ = toAddress(bound);
    host_.type = "UDP";
    from_.type = "UDP";
    peer_.type = "UDP";
    buffer_.resize(maxPacketSize);
    listening_ = true;
    return true;
}

REACTOR_INLINE void UdpPort::start() {
    auto keep = shared_from_this();
    DatagramProtocol* p = protocol_;
    p->port_ = this;
    if (reactor_.tracing())
        reactor_.trace("fd " + std::to_string(fd_) + ": UDP port on " + host_.str() + " -> " + p->logPrefix() +
                       ".startProtocol");
    runGuarded("startProtocol", [&] { p->makeConnection(this); });
    // startProtocol may have stopped the port, or destroyed the protocol.
    if (!listening_ || !protocol_) return;
    handler_ = makeHandler([this] { doRead(); });
    if (!ReactorAccess::watch(reactor_, fd_, os::evRead, handler_)) {
        log(LogLevel::error, "UDP port on " + host_.str() + " closed: its descriptor cannot be watched");
        stopListening();
    }
}

REACTOR_INLINE DatagramProtocol* UdpPort::unlinkProtocol() {
    DatagramProtocol* p = std::exchange(protocol_, nullptr);
    if (p && p->port_ == this) p->port_ = nullptr;
    return p;
}

REACTOR_INLINE void UdpPort::closeSocket() {
    if (os::validFd(fd_)) {
        if (handler_) ReactorAccess::unwatch(reactor_, fd_, os::evRead);
        os::closeFd(fd_);
        fd_ = os::invalidFd;
    }
}

REACTOR_INLINE void UdpPort::stopListening() {
    if (!listening_) return;
    auto keep = shared_from_this();
    listening_ = false;
    if (refusedCall_.active()) refusedCall_.cancel();
    closeSocket();
    if (DatagramProtocol* p = unlinkProtocol()) {
        if (reactor_.tracing()) reactor_.trace("UDP port on " + host_.str() + " closed -> " + p->logPrefix() + ".stopProtocol");
        runGuarded("stopProtocol", [&] { p->doStop(); });
    }
    ReactorAccess::release(reactor_, this);
}

REACTOR_INLINE void UdpPort::abandon() {
    if (listening_) {
        listening_ = false;
        if (refusedCall_.active()) refusedCall_.cancel();
        closeSocket();
    }
    if (DatagramProtocol* p = unlinkProtocol()) {  // silently: no stopProtocol
        p->transport = nullptr;
        if (p->numPorts > 0) --p->numPorts;
    }
    ReactorAccess::release(reactor_, this);
}

REACTOR_INLINE std::string UdpPort::describe() const {
    return "UDP port on " + host_.str() + (protocol_ ? " (" + protocol_->logPrefix() + ")" : std::string());
}

REACTOR_INLINE void UdpPort::doRead() {
    auto keep = shared_from_this();  // the protocol may stop the port, or destroy itself
    std::size_t bytes = 0;
    for (int i = 0; i < maxDatagramsPerRead && bytes < maxThroughput && listening_ && protocol_; ++i) {
        os::SockAddr from;
        bool truncated = false;
        std::size_t full = 0;
        long n = os::receiveFrom(fd_, buffer_.data(), buffer_.size(), from, truncated, full);
        if (n < 0) {
            int err = os::lastError();
            if (os::wouldBlock(err)) return;
            // ICMP errors: only a connected port hears of them, and only its
            // protocol is told (Twisted). Others: say so once, and go on.
            if (os::refused(err)) {
                if (connected_) deliverRefused();
                return;
            }
            log(LogLevel::error, "UDP port on " + host_.str() + ": recvmsg failed: " + os::errorString(err));
            return;
        }
        std::size_t length = static_cast<std::size_t>(n);
        bytes += length;
        os::describe(from, from_.host, from_.port, from_.ipv6);  // reuses from_'s capacity
        if (truncated) {
            std::string line = "UDP port on " + host_.str() + ": a datagram of " +
                               (full > buffer_.size() ? std::to_string(full) : "more than " + std::to_string(full)) +
                               " bytes from " + from_.str() + " was cut to maxPacketSize (" +
                               std::to_string(buffer_.size()) + " bytes)";
            if (reactor_.tracing()) reactor_.trace(line);
            if (!std::exchange(warnedTruncation_, true))
                log(LogLevel::warning, line + "; raise maxPacketSize to receive them whole (logged once per port)");
        }
        DatagramProtocol* p = protocol_;
        if (reactor_.tracing())
            reactor_.trace("fd " + std::to_string(fd_) + " readable -> " + p->logPrefix() + ".datagramReceived(" +
                           std::to_string(length) + " bytes from " + from_.str() + ")");
        std::string_view data(buffer_.data(), length);
        runGuarded("datagramReceived", [&] { p->datagramReceived(data, from_); });
    }
}

REACTOR_INLINE void UdpPort::deliverRefused() {
    DatagramProtocol* p = protocol_;
    if (!p || !listening_) return;
    if (reactor_.tracing())
        reactor_.trace("UDP port on " + host_.str() + ": " + peer_.str() + " refused -> " + p->logPrefix() +
                       ".connectionRefused");
    runGuarded("connectionRefused", [&] { p->connectionRefused(); });
}

REACTOR_INLINE void UdpPort::refusedSoon() {
    if (refusedCall_.active()) return;  // one notice per turn is enough
    refusedCall_ = reactor_.callLater(0, [this] {
        refusedCall_ = DelayedCall();
        deliverRefused();
    });
}

REACTOR_INLINE bool UdpPort::parsePeer(const std::string& host, std::uint16_t port, os::SockAddr& out,
                                       const char* what) {
    const std::string& literal = host == "<broadcast>" && !ipv6_ ? std::string("255.255.255.255") : host;
    if (!os::parseLiteral(literal, port, out)) {
        raise<error::InvalidAddressError>("'" + host + "': " + what + " only accepts IP addresses, not hostnames");
        return false;
    }
    if (out.ipv6() != ipv6_) {
        raise<error::InvalidAddressError>("'" + host + "': " + (ipv6_ ? "IPv6" : "IPv4") + " port " + what +
                                          " called with an " + (ipv6_ ? "IPv4" : "IPv6") + " address");
        return false;
    }
    return true;
}

REACTOR_INLINE bool UdpPort::send(std::string_view datagram, const os::SockAddr* to, const Address& shown) {
    long n = os::sendTo(fd_, datagram, to);
    if (n >= 0) {
        if (reactor_.tracing())
            reactor_.trace("transport.write(" + std::to_string(datagram.size()) + " bytes to " + shown.str() + "): sent");
        return true;
    }
    int err = os::lastError();
    if (os::wouldBlock(err)) {
        if (reactor_.tracing())
            reactor_.trace("transport.write(" + std::to_string(datagram.size()) + " bytes to " + shown.str() +
                           "): socket buffer full, datagram dropped");
        return false;
    }
    if (err == os::errMessageSize) {
        raise<error::MessageLengthError>("Message is too long to send: " + std::to_string(datagram.size()) +
                                         " bytes to " + shown.str() + ".");
        return false;
    }
    if (os::refused(err)) {
        // An earlier datagram was refused. Unconnected ports ignore it
        // (Twisted); a connected one tells its protocol, from the loop.
        if (connected_) refusedSoon();
        return false;
    }
    log(LogLevel::error, "UDP port on " + host_.str() + ": a datagram to " + shown.str() +
                             " was not sent: " + os::errorString(err));
    return false;
}

REACTOR_INLINE bool UdpPort::write(std::string_view datagram, const Address& addr) {
    if (!listening_) return false;  // closed: ignored, as a TCP transport's writes after the close
    if (connected_) {
        // Any spelling of the connected address will do ("::1" or
        // "0:0:0:0:0:0:0:1"), as in Twisted: compare what they parse to.
        os::SockAddr given;
        bool same = os::parseLiteral(addr.host, addr.port, given) && toAddress(given).host == peer_.host &&
                    addr.port == peer_.port;
        if (!same) {
            raise<error::ValueError>("write() to " + addr.str() + " on a port connected to " + peer_.str());
            return false;
        }
        return send(datagram, nullptr, peer_);
    }
    os::SockAddr to;
    if (!parsePeer(addr.host, addr.port, to, "write()")) return false;
    return send(datagram, &to, addr);
}

REACTOR_INLINE bool UdpPort::write(std::string_view datagram) {
    if (!listening_) return false;
    if (!connected_) {
        raise<error::RuntimeError>("write() without an address needs connect() first");
        return false;
    }
    return send(datagram, nullptr, peer_);
}

REACTOR_INLINE void UdpPort::connect(const std::string& host, int port) {
    if (!listening_) {
        raise<error::RuntimeError>("connect() on a UDP port that is not listening");
        return;
    }
    if (connected_) {
        raise<error::RuntimeError>("already connected, reconnecting is not currently supported");
        return;
    }
    if (port <= 0 || port > 65535) {
        raise<error::ValueError>("connect(): port " + std::to_string(port) + " is outside 1-65535");
        return;
    }
    os::SockAddr to;
    if (!parsePeer(host, static_cast<std::uint16_t>(port), to, "connect()")) return;
    if (os::startConnect(fd_, to) != 0) {
        int err = os::lastError();
        raise<error::ConnectError>("connect() to " + host + ":" + std::to_string(port) + " failed: " +
                                   os::errorString(err));
        return;
    }
    connected_ = true;
    peer_ = toAddress(to);
    peer_.type = "UDP";
}

REACTOR_INLINE void UdpPort::setBroadcastAllowed(bool enabled) {
    if (os::validFd(fd_)) os::setBroadcast(fd_, enabled);
}

REACTOR_INLINE Deferred<void> UdpPort::changeGroup(const std::string& addr, const std::string& interface, bool join) {
    const char* verb = join ? "join" : "leave";
    if (!os::validFd(fd_))
        return fail<void>(Failure(error::MulticastJoinError(std::string("can't ") + verb + " " + addr +
                                                            ": the port is not listening")));
    os::SockAddr group, iface;
    if (!os::parseLiteral(addr, 0, group) || group.ipv6() != ipv6_)
        return fail<void>(Failure(error::InvalidAddressError(
            "'" + addr + "': not an " + (ipv6_ ? "IPv6" : "IPv4") + " address (a group is an IP literal of the port's family)")));
    if (!interface.empty() && (ipv6_ || !os::parseLiteral(interface, 0, iface) || iface.ipv6()))
        return fail<void>(Failure(error::InvalidAddressError(
            "'" + interface + "': the interface is an IPv4 literal (IPv6 groups use the system's choice: pass \"\")")));
    if (!os::joinGroup(fd_, group, interface.empty() ? nullptr : &iface, join)) {
        int err = os::lastError();
        return fail<void>(Failure(error::MulticastJoinError(std::string("can't ") + verb + " " + addr + ": [Errno " +
                                                            std::to_string(err) + "] " + os::errorString(err))));
    }
    if (reactor_.tracing()) reactor_.trace("UDP port on " + host_.str() + ": " + verb + " group " + addr);
    return succeed();
}

REACTOR_INLINE Deferred<void> UdpPort::joinGroup(const std::string& addr, const std::string& interface) {
    return changeGroup(addr, interface, true);
}

REACTOR_INLINE Deferred<void> UdpPort::leaveGroup(const std::string& addr, const std::string& interface) {
    return changeGroup(addr, interface, false);
}

REACTOR_INLINE void UdpPort::setTTL(int ttl) {
    if (ttl < 0 || ttl > 255) {
        raise<error::ValueError>("setTTL(" + std::to_string(ttl) + "): a time-to-live is 0-255");
        return;
    }
    if (os::validFd(fd_)) os::setMulticastTTL(fd_, ipv6_, ttl);
}

REACTOR_INLINE void UdpPort::setLoopbackMode(bool enabled) {
    if (os::validFd(fd_)) os::setMulticastLoop(fd_, ipv6_, enabled);
}

REACTOR_INLINE bool UdpPort::setOutgoingInterface(const std::string& addr) {
    os::SockAddr iface;
    if (!os::parseLiteral(addr, 0, iface) || iface.ipv6()) {
        raise<error::InvalidAddressError>("'" + addr + "': setOutgoingInterface takes an IPv4 literal");
        return false;
    }
    return os::validFd(fd_) && !ipv6_ && os::setMulticastInterface(fd_, iface);
}

}  // namespace detail

REACTOR_INLINE std::shared_ptr<IUDPTransport> Reactor::listenMulticast(int port, DatagramProtocol& protocol,
                                                                      std::string_view interface,
                                                                      std::size_t maxPacketSize, bool listenMultiple) {
    auto p = std::make_shared<detail::UdpPort>(*this, protocol);
    const std::string host = interface.empty() ? "0.0.0.0" : std::string(interface);
    detail::os::SockAddr where;
    if (port < 0 || port > 65535) {
        detail::raise<error::CannotListenError>("Couldn't listen on port " + std::to_string(port) +
                                                ": a port is 0 (any free port) to 65535.");
        return p;
    }
    if (!detail::os::parseLiteral(host, static_cast<std::uint16_t>(port), where)) {
        detail::raise<error::InvalidAddressError>("'" + host + "': not an IPv4 or IPv6 address.");
        return p;
    }
    // A datagram holds at most 65,535 bytes (its length field); the buffer
    // of that size is allocated once, so a larger request is a mistake.
    if (maxPacketSize == 0 || maxPacketSize > 65536) {
        detail::raise<error::ValueError>("maxPacketSize must be 1 to 65536, not " + std::to_string(maxPacketSize));
        return p;
    }
    if (protocol.port_ || protocol.transport) {
        detail::raise<error::RuntimeError>(
            "this DatagramProtocol already has a port (one at a time: stopListening() it first)");
        return p;
    }
    std::string why;
    if (!p->bind(static_cast<std::uint16_t>(port), where, maxPacketSize, listenMultiple, why)) {
        detail::raise<error::CannotListenError>(why);
        return p;
    }
    detail::ReactorAccess::adopt(*this, p);
    p->start();
    return p;
}

REACTOR_INLINE std::shared_ptr<IUDPTransport> Reactor::listenUDP(int port, DatagramProtocol& protocol,
                                                                std::string_view interface, std::size_t maxPacketSize) {
    return listenMulticast(port, protocol, interface, maxPacketSize, false);
}

// ---- 10a. TLS ----------------------------------------------------------------
#if defined(REACTOR_WITH_OPENSSL)

REACTOR_INLINE void ITransport::startTLS(const ssl::TLSOptions& options) {
    (void)options;
    detail::raise<error::RuntimeError>("startTLS: this transport cannot start TLS");
}

REACTOR_INLINE bool ssl::TLSOptions::valid() const { return context_ && context_->error.empty() && context_->ctx; }

REACTOR_INLINE std::string ssl::TLSOptions::error() const {
    if (!context_) return "TLS options were never made (use optionsForClientTLS or serverOptions)";
    return context_->error;
}

namespace detail {
namespace tls {

// The OpenSSL calls, all of them: the rest of the library sees Context and
// Session only.

/// OpenSSL's error queue as one line ("certificate verify failed; ..."),
/// emptied; `fallback` if it was empty.
REACTOR_INLINE std::string takeErrors(const std::string& fallback) {
    std::string out;
    while (unsigned long e = ERR_get_error()) {
        const char* reason = ERR_reason_error_string(e);
        char buf[256];
        if (!reason) {
            ERR_error_string_n(e, buf, sizeof buf);
            reason = buf;
        }
        if (out.find(reason) != std::string::npos) continue;
        if (!out.empty()) out += "; ";
        out += reason;
    }
    return out.empty() ? fallback : out;
}

REACTOR_INLINE bool isIPLiteral(const std::string& host) {
    unsigned char buf[16];
    return inet_pton(AF_INET, host.c_str(), buf) == 1 || inet_pton(AF_INET6, host.c_str(), buf) == 1;
}

/// The PEM's text (read from its file if it names one); false and `why` if unreadable.
REACTOR_INLINE bool pemText(const ssl::PEM& pem, const char* what, std::string& text, std::string& why) {
    if (pem.path.empty()) {
        text = pem.text;
        return true;
    }
    BIO* b = BIO_new_file(pem.path.c_str(), "r");
    if (!b) {
        ERR_clear_error();
        why = std::string("cannot read the ") + what + " file '" + pem.path + "': " + os::errorString(errno);
        return false;
    }
    // PEM files of keys and chains are kilobytes: a path naming a device or
    // a huge file (ssl:...:privateKey=/dev/zero) is refused, not read on.
    constexpr std::size_t limit = 16u << 20;
    char buf[4096];
    int n;
    while ((n = BIO_read(b, buf, sizeof buf)) > 0) {
        text.append(buf, static_cast<std::size_t>(n));
        if (text.size() > limit) {
            BIO_free(b);
            text.clear();
            why = std::string("the ") + what + " file '" + pem.path + "' is larger than 16 MiB: not a PEM file";
            return false;
        }
    }
    BIO_free(b);
    return true;
}

/// Every certificate in a PEM (leaf first). Empty and `why` on failure.
REACTOR_INLINE std::vector<X509*> readCertificates(const ssl::PEM& pem, const char* what, std::string& why) {
    std::vector<X509*> certs;
    std::string text;
    if (!pemText(pem, what, text, why)) return certs;
    BIO* b = BIO_new_mem_buf(text.data(), static_cast<int>(text.size()));
    while (X509* x = PEM_read_bio_X509(b, nullptr, nullptr, nullptr)) certs.push_back(x);
    BIO_free(b);
    ERR_clear_error();  // the end of the input reads as an error
    if (certs.empty())
        why = std::string("no PEM certificate in the ") + what + (pem.path.empty() ? "" : " file '" + pem.path + "'");
    return certs;
}

/// Loads a certificate chain and its key into `ctx`; false and `why` if not.
REACTOR_INLINE bool useCertificate(SSL_CTX* ctx, const ssl::PEM& cert, const ssl::PEM& key, std::string& why) {
    std::vector<X509*> chain = readCertificates(cert, "certificate", why);
    if (chain.empty()) return false;
    bool ok = SSL_CTX_use_certificate(ctx, chain[0]) == 1;
    X509_free(chain[0]);
    for (std::size_t i = 1; i < chain.size(); ++i)
        if (ok)
            ok = SSL_CTX_add0_chain_cert(ctx, chain[i]) == 1;  // takes ownership
        else
            X509_free(chain[i]);
    if (!ok) {
        why = "the certificate was refused: " + takeErrors("unknown error");
        return false;
    }
    std::string text;
    if (!pemText(key, "private key", text, why)) return false;
    BIO* b = BIO_new_mem_buf(text.data(), static_cast<int>(text.size()));
    EVP_PKEY* pkey = PEM_read_bio_PrivateKey(b, nullptr, nullptr, nullptr);
    BIO_free(b);
    if (!pkey) {
        ERR_clear_error();
        why = std::string("no PEM private key in the private key") +
              (key.path.empty() ? "" : " file '" + key.path + "'");
        return false;
    }
    ok = SSL_CTX_use_PrivateKey(ctx, pkey) == 1 && SSL_CTX_check_private_key(ctx) == 1;
    EVP_PKEY_free(pkey);
    if (!ok) why = "the private key does not match the certificate: " + takeErrors("unknown error");
    return ok;
}

/// Adds CA certificates to `ctx`'s trust store.
REACTOR_INLINE bool trustCertificates(SSL_CTX* ctx, const ssl::PEM& pem, std::string& why) {
    std::vector<X509*> certs = readCertificates(pem, "CA certificates", why);
    if (certs.empty()) return false;
    X509_STORE* store = SSL_CTX_get_cert_store(ctx);
    for (X509* x : certs) {
        X509_STORE_add_cert(store, x);  // takes a reference of its own
        X509_free(x);
    }
    ERR_clear_error();  // a certificate already in the store is not an error
    return true;
}

/// Records the first certificate that failed, for the error message.
REACTOR_INLINE int verifyCallback(int preverifyOk, X509_STORE_CTX* store) {
    if (preverifyOk) return preverifyOk;
    SSL* s = static_cast<SSL*>(X509_STORE_CTX_get_ex_data(store, SSL_get_ex_data_X509_STORE_CTX_idx()));
    auto* session = s ? static_cast<Session*>(SSL_get_app_data(s)) : nullptr;
    if (session && session->verifyDepth < 0) {
        session->verifyError = X509_STORE_CTX_get_error(store);
        session->verifyDepth = X509_STORE_CTX_get_error_depth(store);
        if (X509* cert = X509_STORE_CTX_get_current_cert(store)) {
            char buf[512];
            X509_NAME_oneline(X509_get_subject_name(cert), buf, sizeof buf);
            session->verifySubject = buf;
        }
    }
    return preverifyOk;
}

/// The server's ALPN choice: its first protocol the client offers.
REACTOR_INLINE int selectALPN(SSL*, const unsigned char** out, unsigned char* outlen, const unsigned char* in,
                              unsigned int inlen, void* arg) {
    auto* c = static_cast<Context*>(arg);
    unsigned char* chosen = nullptr;
    if (SSL_select_next_proto(&chosen, outlen, c->alpn.data(), static_cast<unsigned int>(c->alpn.size()), in,
                              inlen) != OPENSSL_NPN_NEGOTIATED)
        return SSL_TLSEXT_ERR_NOACK;
    *out = chosen;
    return SSL_TLSEXT_ERR_OK;
}

REACTOR_INLINE bool alpnWire(const std::vector<std::string>& protocols, std::vector<unsigned char>& wire,
                             std::string& why) {
    for (const std::string& p : protocols) {
        if (p.empty() || p.size() > 255) {
            why = "an ALPN protocol name must be 1 to 255 bytes: '" + printable(p) + "'";
            return false;
        }
        wire.push_back(static_cast<unsigned char>(p.size()));
        wire.insert(wire.end(), p.begin(), p.end());
    }
    return true;
}

REACTOR_INLINE Context::~Context() {
    if (ctx) SSL_CTX_free(static_cast<SSL_CTX*>(ctx));
}

/// The common part of both contexts; false and c.error if it fails.
REACTOR_INLINE bool newContext(Context& c, bool client) {
    ERR_clear_error();
    SSL_CTX* ctx = SSL_CTX_new(client ? TLS_client_method() : TLS_server_method());
    if (!ctx) {
        c.error = "cannot make a TLS context: " + takeErrors("out of memory");
        return false;
    }
    c.ctx = ctx;
    c.client = client;
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_mode(ctx, SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    return true;
}

REACTOR_INLINE std::shared_ptr<Context> makeClientContext(const std::string& hostname,
                                                          const ssl::ClientTLSSettings& s) {
    auto c = std::make_shared<Context>();
    c->hostname = hostname;
    c->handshakeTimeout = s.handshakeTimeout;
    if (!newContext(*c, true)) return c;
    SSL_CTX* ctx = static_cast<SSL_CTX*>(c->ctx);
    std::string why;
    switch (s.trust.kind) {
        case ssl::TrustRoot::Kind::platform:
            if (SSL_CTX_set_default_verify_paths(ctx) != 1) why = "cannot load the system's trust store: " + takeErrors("");
            break;
        case ssl::TrustRoot::Kind::pem: trustCertificates(ctx, s.trust.certificates, why); break;
        case ssl::TrustRoot::Kind::none:
            c->verify = false;
            log(LogLevel::warning, "TLS to " + hostname +
                                       ": certificate verification is OFF (insecureNoVerify): anyone on the path "
                                       "can read and change this traffic");
            break;
    }
    if (hostname.empty() && c->verify && why.empty()) why = "optionsForClientTLS: the host name is empty";
    SSL_CTX_set_verify(ctx, c->verify ? SSL_VERIFY_PEER : SSL_VERIFY_NONE, c->verify ? verifyCallback : nullptr);
    if (why.empty() && (!s.certificate.empty() || !s.privateKey.empty())) {
        if (s.certificate.empty() || s.privateKey.empty())
            why = "a client certificate needs both the certificate and its private key";
        else
            useCertificate(ctx, s.certificate, s.privateKey, why);
    }
    if (why.empty() && alpnWire(s.acceptableProtocols, c->alpn, why) && !c->alpn.empty())
        SSL_CTX_set_alpn_protos(ctx, c->alpn.data(), static_cast<unsigned int>(c->alpn.size()));
    c->error = why;
    return c;
}

REACTOR_INLINE std::shared_ptr<Context> makeServerContext(const ssl::ServerTLSSettings& s) {
    auto c = std::make_shared<Context>();
    c->handshakeTimeout = s.handshakeTimeout;
    c->verify = !s.requireClientCertificate.empty();
    if (!newContext(*c, false)) return c;
    SSL_CTX* ctx = static_cast<SSL_CTX*>(c->ctx);
    std::string why;
    if (s.certificate.empty() || s.privateKey.empty())
        why = "a TLS server needs a certificate and its private key";
    else
        useCertificate(ctx, s.certificate, s.privateKey, why);
    if (why.empty() && c->verify && trustCertificates(ctx, s.requireClientCertificate, why))
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, verifyCallback);
    if (why.empty() && alpnWire(s.acceptableProtocols, c->alpn, why) && !c->alpn.empty())
        SSL_CTX_set_alpn_select_cb(ctx, selectALPN, c.get());
    c->error = why;
    return c;
}

REACTOR_INLINE Session::Session(const Context& c) : context_(c) {
    if (!c.error.empty() || !c.ctx) {
        error_ = c.error.empty() ? "TLS options were never made" : c.error;
        return;
    }
    ERR_clear_error();
    SSL* s = SSL_new(static_cast<SSL_CTX*>(c.ctx));
    BIO* in = BIO_new(BIO_s_mem());
    BIO* out = BIO_new(BIO_s_mem());
    if (!s || !in || !out) {
        if (s) SSL_free(s);
        if (in) BIO_free(in);
        if (out) BIO_free(out);
        error_ = "cannot start TLS: " + takeErrors("out of memory");
        return;
    }
    SSL_set_bio(s, in, out);  // the SSL owns both
    SSL_set_app_data(s, this);
    if (c.client) {
        SSL_set_connect_state(s);
        bool ip = isIPLiteral(c.hostname);
        if (!ip && !c.hostname.empty()) SSL_set_tlsext_host_name(s, c.hostname.c_str());
        if (c.verify) {
            if (ip)
                X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(s), c.hostname.c_str());
            else
                SSL_set1_host(s, c.hostname.c_str());
        }
    } else {
        SSL_set_accept_state(s);
    }
    ssl_ = s;
    rbio_ = in;
    wbio_ = out;
}

REACTOR_INLINE Session::~Session() {
    if (ssl_) SSL_free(static_cast<SSL*>(ssl_));
}

REACTOR_INLINE void Session::feed(std::string_view cipher) {
    // A memory BIO grows as needed: the write takes everything.
    if (ssl_ && !cipher.empty()) BIO_write(static_cast<BIO*>(rbio_), cipher.data(), static_cast<int>(cipher.size()));
}

REACTOR_INLINE std::string_view Session::pendingOutput() {
    if (!ssl_) return {};
    char* p = nullptr;
    long n = BIO_get_mem_data(static_cast<BIO*>(wbio_), &p);
    return n > 0 ? std::string_view(p, static_cast<std::size_t>(n)) : std::string_view();
}

REACTOR_INLINE void Session::consumeOutput() {
    if (ssl_) (void)BIO_reset(static_cast<BIO*>(wbio_));
}

REACTOR_INLINE Session::Status Session::status(int ret) {
    SSL* s = static_cast<SSL*>(ssl_);
    switch (SSL_get_error(s, ret)) {
        case SSL_ERROR_NONE: return Status::done;
        case SSL_ERROR_WANT_READ:
        case SSL_ERROR_WANT_WRITE: return Status::wantMore;
        case SSL_ERROR_ZERO_RETURN: return Status::closed;
        default:
            lastError_ = takeErrors("TLS failed");
            return Status::failed;
    }
}

REACTOR_INLINE Session::Status Session::handshake() {
    if (!ssl_) return Status::failed;
    ERR_clear_error();
    int r = SSL_do_handshake(static_cast<SSL*>(ssl_));
    return r == 1 ? Status::done : status(r);
}

REACTOR_INLINE Session::Status Session::read(char* buf, std::size_t size, std::size_t& n) {
    n = 0;
    if (!ssl_) return Status::failed;
    ERR_clear_error();
    int r = SSL_read(static_cast<SSL*>(ssl_), buf, static_cast<int>(std::min<std::size_t>(size, 1 << 30)));
    if (r > 0) {
        n = static_cast<std::size_t>(r);
        return Status::done;
    }
    return status(r);
}

REACTOR_INLINE bool Session::write(std::string_view data) {
    if (!ssl_) return false;
    while (!data.empty()) {
        ERR_clear_error();
        int chunk = static_cast<int>(std::min<std::size_t>(data.size(), 1 << 20));
        int r = SSL_write(static_cast<SSL*>(ssl_), data.data(), chunk);
        if (r <= 0) {
            status(r);
            return false;
        }
        data.remove_prefix(static_cast<std::size_t>(r));
    }
    return true;
}

REACTOR_INLINE void Session::shutdown() {
    if (!ssl_) return;
    ERR_clear_error();
    SSL_shutdown(static_cast<SSL*>(ssl_));  // 0: sent ours, the peer's not seen; fine for a one-way close
    ERR_clear_error();
}

REACTOR_INLINE Failure Session::failure(const std::string& when) const {
    if (!ssl_) return Failure(error::SSLError(error_));
    long v = verifyError ? verifyError : SSL_get_verify_result(static_cast<SSL*>(ssl_));
    if (context_.verify && v != X509_V_OK) {
        std::string who = context_.client ? "host '" + context_.hostname + "'" : std::string("the client");
        std::string m = "TLS certificate verification failed for " + who + ": " +
                        X509_verify_cert_error_string(v);
        if (!verifySubject.empty())
            m += " (certificate subject: " + verifySubject + (verifyDepth > 0 ? ", an issuer of the peer's" : "") + ")";
        return Failure(error::CertificateError(m));
    }
    return Failure(error::SSLError("TLS " + when + " failed: " + lastError_));
}

REACTOR_INLINE std::string Session::negotiatedProtocol() const {
    if (!ssl_) return "";
    const unsigned char* p = nullptr;
    unsigned int n = 0;
    SSL_get0_alpn_selected(static_cast<SSL*>(ssl_), &p, &n);
    return p ? std::string(reinterpret_cast<const char*>(p), n) : std::string();
}

REACTOR_INLINE std::string Session::peerSubject() const {
    if (!ssl_) return "";
    X509* cert = SSL_get0_peer_certificate(static_cast<SSL*>(ssl_));
    if (!cert) return "";
    char buf[512];
    X509_NAME_oneline(X509_get_subject_name(cert), buf, sizeof buf);
    return buf;
}

REACTOR_INLINE std::string Session::version() const { return ssl_ ? SSL_get_version(static_cast<SSL*>(ssl_)) : ""; }

REACTOR_INLINE std::string Session::cipher() const {
    const char* name = ssl_ ? SSL_get_cipher_name(static_cast<SSL*>(ssl_)) : nullptr;
    return name ? name : "";
}

// ---- TlsConnection ----

REACTOR_INLINE int& readNesting() {
    static thread_local int depth = 0;
    return depth;
}

REACTOR_INLINE TlsConnection::TlsConnection(Reactor& r, std::shared_ptr<const Context> c,
                                            std::unique_ptr<Protocol> inner)
    : reactor_(r), context_(std::move(c)), inner_(std::move(inner)) {
    if (inner_) Protocol::factory = inner_->factory;
}

REACTOR_INLINE TlsConnection::~TlsConnection() {
    if (handshakeTimer_.active()) handshakeTimer_.cancel();
}

REACTOR_INLINE void TlsConnection::trace(const std::string& line) const {
    if (reactor_.tracing()) reactor_.trace("TLS " + (tcp_ ? tcp_->getPeer().str() : peer_.str()) + ": " + line);
}

REACTOR_INLINE std::string TlsConnection::logPrefix() const {
    return "TLS(" + (inner_ ? inner_->logPrefix() : std::string("?")) + ")";
}

REACTOR_INLINE void TlsConnection::connectionMade() {
    // listenSSL/connectSSL: the TCP connection is up. The protocol sees its
    // connection at once (Twisted does the same); its writes wait for the
    // handshake.
    tcp_ = Protocol::transport;
    ITransport::connected = true;
    begin();
    if (inner_) inner_->makeConnection(this);
    if (!lost_ && !session_->ok()) tlsFailed(session_->failure("setup"), false);
}

REACTOR_INLINE void TlsConnection::startOn(ITransport* tcp) {
    // startTLS: `inner_` is connected already and keeps its state.
    Protocol::transport = tcp;
    Protocol::connected = true;
    tcp_ = tcp;
    ITransport::connected = true;
    inner_->transportReplaced(this);
    begin();
    if (!session_->ok()) tlsFailed(session_->failure("setup"), false);
}

REACTOR_INLINE void TlsConnection::begin() {
    peer_ = tcp_->getPeer();
    host_ = tcp_->getHost();
    session_ = std::make_unique<Session>(*context_);
    if (!session_->ok()) return;
    if (context_->handshakeTimeout > 0) {
        double limit = context_->handshakeTimeout;
        handshakeTimer_ = reactor_.callLater(limit, [this, limit] {
            if (handshakeDone_ || lost_) return;
            trace("handshake timed out");
            std::string who = context_->client ? " with " + context_->hostname : std::string();
            char secs[32];
            std::snprintf(secs, sizeof secs, "%g", limit);
            tlsFailed(Failure(error::TLSHandshakeTimeout("The TLS handshake" + who + " (" + peer_.str() +
                                                         ") did not complete within " + secs + " s.")),
                      true);
        });
    }
    trace(std::string("handshake started as the ") + (context_->client ? "client" : "server"));
    if (context_->client) checkHandshake();  // the ClientHello
}

REACTOR_INLINE void TlsConnection::flushSend() {
    std::string_view out = session_ ? session_->pendingOutput() : std::string_view();
    if (out.empty()) return;
    if (tcp_) tcp_->write(out);  // the TCP transport copies or sends it now
    session_->consumeOutput();
}

REACTOR_INLINE void TlsConnection::checkHandshake() {
    Session::Status st = session_->handshake();
    flushSend();
    if (st == Session::Status::done) {
        handshakeDone_ = true;
        if (handshakeTimer_.active()) handshakeTimer_.cancel();
        if (reactor_.tracing()) {
            std::string alpn = session_->negotiatedProtocol();
            trace("handshake done: " + session_->version() + " " + session_->cipher() +
                  (alpn.empty() ? "" : ", ALPN " + alpn) +
                  (session_->peerSubject().empty() ? "" : ", peer " + session_->peerSubject()));
        }
        if (inner_ && ITransport::connected) {
            Protocol* p = inner_.get();
            p->handshakeCompleted();
        }
        if (!lost_) unbufferPendingWrites();
    } else if (st != Session::Status::wantMore) {
        Failure f = session_->failure("handshake");
        trace("handshake failed: " + f.str());
        tlsFailed(f, false);
    }
}

REACTOR_INLINE void TlsConnection::unbufferPendingWrites() {
    if (!appSendBuffer_.empty()) {
        std::string pending = std::move(appSendBuffer_);
        appSendBuffer_.clear();
        writeNow(pending);
    }
    if (lost_) return;
    if (producerWaiting_ && tcp_) {
        producerWaiting_ = false;
        IProducer* producer = producer_;
        if (std::exchange(producerPausedHere_, false)) producer->resumeProducing();  // its writes go to TCP now
        if (lost_ || producer_ != producer) return;
        tcp_->registerProducer(producer, producerStreaming_);  // pauses it if TCP's buffer is full
        if (lost_) return;
    }
    if (closeAfterHandshake_)
        finishClose();
    else if (writeShutAfterHandshake_)
        loseWriteConnection();
}

REACTOR_INLINE void TlsConnection::dataReceived(std::string_view data) {
    if (awaitingClose_ && tcp_) {
        // Closing: drop data, close at the peer's close_notify (or an error).
        session_->feed(data);
        std::vector<char>& buf = ReactorAccess::readBuffer(reactor_);
        for (;;) {
            std::size_t n = 0;
            Session::Status st = session_->read(buf.data(), buf.size(), n);
            if (st == Session::Status::done) continue;
            if (st == Session::Status::wantMore) return;
            trace("the peer answered our close_notify: closing");
            awaitingClose_ = false;
            tcp_->loseConnection();
            return;
        }
    }
    if (lost_ || !session_ || !session_->ok()) return;
    session_->feed(data);
    if (!handshakeDone_) {
        checkHandshake();
        if (!handshakeDone_ || lost_) return;
    }
    flushReceive();
}

REACTOR_INLINE void TlsConnection::flushReceive() {
    if (receiving_) return;  // resumeProducing() from inside dataReceived: the loop below goes on
    receiving_ = true;
    // The reactor's read buffer (the TCP bytes are in OpenSSL's buffer
    // already), unless a protocol reached another TLS connection's read
    // from inside its dataReceived: that one gets a buffer of its own.
    struct Nesting {
        int& depth;
        explicit Nesting(int& d) : depth(d) { ++depth; }
        ~Nesting() { --depth; }
    } nesting(readNesting());
    std::vector<char> own;
    std::vector<char>& shared = ReactorAccess::readBuffer(reactor_);
    if (nesting.depth > 1) own.resize(16 * 1024);
    char* buf = nesting.depth > 1 ? own.data() : shared.data();
    std::size_t size = nesting.depth > 1 ? own.size() : shared.size();
    while (!lost_ && !readPaused_ && !peerClosed_) {
        std::size_t n = 0;
        Session::Status st = session_->read(buf, size, n);
        if (st == Session::Status::done) {
            if (!inner_ || ITransport::disconnecting) continue;  // closing: read and drop
            Protocol* p = inner_.get();
            if (reactor_.tracing())
                trace(std::to_string(n) + " bytes decrypted -> " + p->logPrefix() + ".dataReceived");
            p->dataReceived(std::string_view(buf, n));
            continue;
        }
        if (st == Session::Status::wantMore) break;
        if (st == Session::Status::closed) {
            // The peer's close_notify: it sends no more.
            peerClosed_ = true;
            trace("the peer sent close_notify");
            if (inner_ && inner_->halfCloseable() && !ITransport::disconnecting) {
                innerHalfClosed_ = true;
                Protocol* p = inner_.get();
                p->readConnectionLost();
            } else {
                finishClose();
            }
            break;
        }
        tlsFailed(session_->failure("connection"), false);
    }
    receiving_ = false;
    if (!lost_) flushSend();  // a key update, a session ticket
}

REACTOR_INLINE void TlsConnection::writeNow(std::string_view data) {
    if (!session_->write(data)) {
        flushSend();
        tlsFailed(session_->failure("write"), false);
        return;
    }
    flushSend();
}

REACTOR_INLINE void TlsConnection::write(std::string_view data) {
    if (!ITransport::connected || lost_ || shutdownSent_ || data.empty()) return;
    if (!handshakeDone_) {
        appSendBuffer_.append(data.data(), data.size());
        if (producerWaiting_ && producerStreaming_ && !producerPausedHere_ &&
            appSendBuffer_.size() > TcpConnection::highWaterMark) {
            producerPausedHere_ = true;
            producer_->pauseProducing();
        }
        return;
    }
    writeNow(data);
}

REACTOR_INLINE void TlsConnection::writeSequence(const std::string_view* parts, std::size_t count) {
    // Small pieces (a line and its delimiter) go out as one TLS record.
    std::size_t total = 0;
    for (std::size_t i = 0; i < count; ++i) total += parts[i].size();
    if (count > 1 && total <= 16 * 1024) {
        std::string joined;
        joined.reserve(total);
        for (std::size_t i = 0; i < count; ++i) joined.append(parts[i].data(), parts[i].size());
        write(joined);
        return;
    }
    for (std::size_t i = 0; i < count; ++i) write(parts[i]);
}

REACTOR_INLINE void TlsConnection::finishClose() {
    if (lost_) return;
    lost_ = true;
    if (!handshakeDone_ || peerClosed_ || !tcp_) {
        // Nothing to say first, or the reply to the peer's close_notify.
        if (handshakeDone_ && !shutdownSent_) {
            session_->shutdown();
            shutdownSent_ = true;
            trace("close_notify sent in reply; closing");
            flushSend();
        }
        if (tcp_) tcp_->loseConnection();
        return;
    }
    // We close first: our close_notify and a FIN, then read on until the
    // peer's close_notify or EOF. Closing the socket at once would make
    // the kernel answer the peer's close_notify with a reset, and the peer
    // would see ConnectionLost instead of ConnectionDone.
    if (!shutdownSent_) {
        session_->shutdown();
        shutdownSent_ = true;
        flushSend();
    }
    trace("close_notify sent; closing once the peer answers");
    awaitingClose_ = true;
    if (readPaused_) tcp_->resumeProducing();  // the answer must be read
    tcp_->loseWriteConnection();
    if (context_->handshakeTimeout > 0 && !handshakeTimer_.active())
        handshakeTimer_ = reactor_.callLater(context_->handshakeTimeout, [this] {
            trace("no close_notify from the peer in time: closing");
            if (!reason_) reason_ = Failure(error::ConnectionDone());
            if (tcp_) tcp_->abortConnection();
        });
}

REACTOR_INLINE void TlsConnection::loseConnection() {
    if (!ITransport::connected || ITransport::disconnecting) return;
    ITransport::disconnecting = true;
    if (!handshakeDone_ && !lost_ && !appSendBuffer_.empty()) {
        closeAfterHandshake_ = true;  // what was written goes out first
        return;
    }
    finishClose();
}

REACTOR_INLINE void TlsConnection::abortConnection() {
    if (!ITransport::connected) return;
    ITransport::disconnecting = true;
    lost_ = true;
    if (tcp_) tcp_->abortConnection();
}

REACTOR_INLINE void TlsConnection::loseWriteConnection() {
    if (!ITransport::connected || lost_ || shutdownSent_) return;
    if (!handshakeDone_) {
        writeShutAfterHandshake_ = true;
        return;
    }
    // TLS's half-close: our close_notify, then the TCP FIN; we read on.
    session_->shutdown();
    shutdownSent_ = true;
    trace("close_notify sent (half-close)");
    flushSend();
    if (tcp_) tcp_->loseWriteConnection();
}

REACTOR_INLINE void TlsConnection::writeConnectionLost() {
    if (inner_ && inner_->halfCloseable() && shutdownSent_ && !lost_) {
        Protocol* p = inner_.get();
        p->writeConnectionLost();
    }
}

REACTOR_INLINE void TlsConnection::readConnectionLost() {
    // The TCP stream ended (the TCP transport reads no more).
    if (peerClosed_) {
        // After close_notify: the clean end of a TLS stream.
        if (!innerHalfClosed_) finishClose();
        return;
    }
    if (lost_) {
        awaitingClose_ = false;
        if (tcp_) tcp_->loseConnection();
        return;
    }
    // Without close_notify: the data may have been cut short (Twisted
    // reports ConnectionLost too).
    tlsFailed(handshakeDone_ ? Failure(error::ConnectionLost(
                                   "The peer closed the TCP connection without a TLS close_notify: the data "
                                   "received may be truncated."))
                             : Failure(error::SSLError("The peer closed the connection during the TLS handshake.")),
              false);
}

REACTOR_INLINE void TlsConnection::tlsFailed(const Failure& reason, bool abort) {
    if (!reason_) reason_ = reason;
    lost_ = true;
    flushSend();  // an alert that says why
    if (!tcp_) return;
    if (abort)
        tcp_->abortConnection();
    else
        tcp_->loseConnection();
}

REACTOR_INLINE void TlsConnection::connectionLost(const Failure& reason) {
    if (handshakeTimer_.active()) handshakeTimer_.cancel();
    lost_ = true;
    tcp_ = nullptr;
    ITransport::connected = false;
    ITransport::disconnecting = true;
    IProducer* waiting = std::exchange(producerWaiting_, false) ? producer_ : nullptr;
    producer_ = nullptr;  // a registered one: the TCP transport told it stopProducing
    if (waiting) waiting->stopProducing();
    Failure r = reason_ ? *reason_ : reason;
    reason_.reset();
    finalReason_ = r;
    if (!inner_) return;
    Protocol* p = inner_.get();
    p->connected = false;
    p->connectionLost(r);
}

REACTOR_INLINE void TlsConnection::registerProducer(IProducer* producer, bool streaming) {
    // The TCP transport's buffer holds the ciphertext of what the producer
    // writes (after the handshake): its backpressure is the producer's.
    if (producer_) {
        raise<error::RuntimeError>("Cannot register producer, because another producer was never unregistered.");
        return;
    }
    if (!tcp_ || lost_) {
        if (producer) producer->stopProducing();
        return;
    }
    producer_ = producer;
    if (!handshakeDone_) {
        producerWaiting_ = true;  // see unbufferPendingWrites
        producerStreaming_ = streaming;
        producerPausedHere_ = false;
        return;
    }
    tcp_->registerProducer(producer, streaming);
}

REACTOR_INLINE void TlsConnection::unregisterProducer() {
    producer_ = nullptr;
    if (std::exchange(producerWaiting_, false)) return;
    if (tcp_) tcp_->unregisterProducer();
}

REACTOR_INLINE void TlsConnection::pauseProducing() {
    readPaused_ = true;
    if (tcp_) tcp_->pauseProducing();
}

REACTOR_INLINE void TlsConnection::resumeProducing() {
    readPaused_ = false;
    if (tcp_) tcp_->resumeProducing();
    // Records OpenSSL already holds are not in the socket: deliver them now.
    if (handshakeDone_ && !lost_ && !receiving_) flushReceive();
}

REACTOR_INLINE void TlsConnection::startTLS(const ssl::TLSOptions& options) {
    (void)options;
    raise<error::RuntimeError>("startTLS: TLS is already running on this connection");
}

}  // namespace tls

REACTOR_INLINE void TcpConnection::wrapTLS(std::shared_ptr<const tls::Context> c) {
    auto layer = std::make_unique<tls::TlsConnection>(reactor_, std::move(c), std::move(protocol_));
    tls_ = layer.get();
    protocol_ = std::move(layer);
}

REACTOR_INLINE void TcpConnection::startTLS(const ssl::TLSOptions& options) {
    if (!connected || disconnecting || closing_ || aborting_) {
        raise<error::RuntimeError>("startTLS: the connection is closing or closed");
        return;
    }
    if (!options.context()) {
        raise<error::ValueError>("startTLS: " + options.error());
        return;
    }
    if (reactor_.tracing()) reactor_.trace("fd " + std::to_string(fd_) + ": startTLS");
    // Bytes written so far are in out_ (or sent): they go out in clear,
    // before the handshake. The protocol stays the same object; from now on
    // its transport is the TLS layer, which this connection owns instead.
    auto layer = std::make_unique<tls::TlsConnection>(reactor_, options.context(), std::move(protocol_));
    tls::TlsConnection* t = layer.get();
    protocol_ = std::move(layer);
    tls_ = t;
    t->startOn(this);
}

}  // namespace detail

REACTOR_INLINE ssl::TLSOptions ssl::optionsForClientTLS(const std::string& hostname,
                                                        const ClientTLSSettings& settings) {
    auto c = detail::tls::makeClientContext(hostname, settings);
    if (!c->error.empty()) detail::raise<error::ValueError>("optionsForClientTLS(" + hostname + "): " + c->error);
    return TLSOptions(std::move(c));
}

REACTOR_INLINE ssl::TLSOptions ssl::serverOptions(const ServerTLSSettings& settings) {
    auto c = detail::tls::makeServerContext(settings);
    if (!c->error.empty()) detail::raise<error::ValueError>("serverOptions: " + c->error);
    return TLSOptions(std::move(c));
}

REACTOR_INLINE ListeningPort Reactor::listenSSL(int port, Factory& factory, const ssl::TLSOptions& options,
                                               const ListenOptions& listenOptions) {
    if (!options.valid() || options.context()->client) {
        detail::raise<error::ValueError>("listenSSL: " + (options.valid() ? std::string("these are a client's TLS options (use ssl::serverOptions)") : options.error()));
        return ListeningPort();
    }
    std::string why;
    ListeningPort made = detail::startPort(*this, factory, why, [&](detail::TcpPort& p, std::string& w) {
        p.tls = options.context();
        return p.listen(port, listenOptions, w);
    });
    if (!made) detail::raise<error::CannotListenError>(why);
    return made;
}

REACTOR_INLINE std::shared_ptr<IConnector> Reactor::connectSSL(const std::string& host, int port,
                                                               std::shared_ptr<ClientFactory> factory,
                                                               const ssl::TLSOptions& options, double timeout,
                                                               const Address& bindAddress) {
    ClientFactory& f = *factory;  // before the move: argument order is unspecified
    return detail::tls::connect(*this, host, port, f, std::move(factory), options, timeout, bindAddress);
}

REACTOR_INLINE std::shared_ptr<IConnector> Reactor::connectSSL(const std::string& host, int port,
                                                               ClientFactory& factory, const ssl::TLSOptions& options,
                                                               double timeout, const Address& bindAddress) {
    return detail::tls::connect(*this, host, port, factory, nullptr, options, timeout, bindAddress);
}

REACTOR_INLINE std::shared_ptr<IConnector> detail::tls::connect(Reactor& r, const std::string& host, int port,
                                                                ClientFactory& factory,
                                                                std::shared_ptr<ClientFactory> keep,
                                                                const ssl::TLSOptions& options, double timeout,
                                                                const Address& bindAddress, Factory* owner) {
    auto c = std::make_shared<detail::TcpConnector>(r, host, port, factory, timeout, bindAddress);
    c->keepFactory = std::move(keep);
    if (owner) c->ownedBy(*owner);
    // Invalid options: every connection fails with their error (see TlsConnection::connectionMade).
    if (options.valid() && options.context()->client) {
        c->tls = options.context();
    } else {
        auto bad = std::make_shared<detail::tls::Context>();
        bad->hostname = host;
        bad->error = options.valid() ? "connectSSL: these are a server's TLS options (use ssl::optionsForClientTLS)"
                                     : options.error();
        c->tls = std::move(bad);
    }
    c->connect();
    return c;
}

REACTOR_INLINE Deferred<ListeningPort> SSL4ServerEndpoint::listen(Factory& factory) {
    if (!options_.valid() || options_.context()->client)
        return fail<ListeningPort>(Failure(error::CannotListenError(
            "TLS: " + (options_.valid() ? std::string("client options given to a server endpoint") : options_.error()))));
    std::string why;
    ListenOptions options;
    options.interface = interface_;
    options.backlog = backlog_;
    ListeningPort port = detail::startPort(reactor_, factory, why, [&](detail::TcpPort& p, std::string& w) {
        p.tls = options_.context();
        return p.listen(port_, options, w);
    });
    if (!port) return fail<ListeningPort>(Failure(error::CannotListenError(why)));
    return succeed(std::move(port));
}

REACTOR_INLINE std::string SSL4ServerEndpoint::describe() const { return "TLS on " + TCP4ServerEndpoint::describe(); }

REACTOR_INLINE std::string SSL4ClientEndpoint::describe() const {
    Address a;
    a.host = host_;
    a.port = static_cast<std::uint16_t>(port_);
    a.ipv6 = host_.find(':') != std::string::npos;
    return "TLS " + a.str() + (options_.valid() ? " (verifying " + options_.context()->hostname + ")" : "");
}

REACTOR_INLINE std::shared_ptr<IConnector> SSL4ClientEndpoint::connectWith(std::shared_ptr<ClientFactory> factory,
                                                                          Factory* owner) {
    ClientFactory& f = *factory;
    return detail::tls::connect(reactor_, host_, port_, f, std::move(factory), options_, timeout_, bindAddress_, owner);
}

namespace detail {
namespace tls {

REACTOR_INLINE std::shared_ptr<IStreamServerEndpoint> serverEndpoint(Reactor& r, EndpointDescription& d) {
    // Twisted's names: ssl:PORT:privateKey=KEY:certKey=CERT (certKey
    // defaults to privateKey: one PEM with both), interface, backlog; and
    // ours: caCerts=CA.pem requires client certificates signed by it.
    DescriptionReader in(d, {"port", "privateKey", "certKey", "interface", "backlog", "caCerts"});
    auto port = in.take("port", true);
    in.need(port, "port (ssl:443:privateKey=key.pem:certKey=cert.pem)");
    long number = 0;
    if (port && !port->empty()) {
        d.params.emplace_back("port", *port);
        number = in.number("port", false, 0, 0, 65535);
    }
    auto key = in.take("privateKey", false);
    in.need(key, "privateKey (ssl:443:privateKey=key.pem:certKey=cert.pem)");
    std::string cert = in.text("certKey", false, key ? *key : "");
    std::string interface = in.text("interface", false, "");
    long backlog = in.number("backlog", false, defaultBacklog, 1, 1L << 30);
    std::string ca = in.text("caCerts", false, "");
    in.finish();
    if (!d.error.empty()) return nullptr;
    ssl::ServerTLSSettings s;
    s.certificate = ssl::pemFile(cert);
    s.privateKey = ssl::pemFile(*key);
    if (!ca.empty()) s.requireClientCertificate = ssl::pemFile(ca);
    std::shared_ptr<Context> c = makeServerContext(s);
    if (!c->error.empty()) {
        d.error = c->error;
        return nullptr;
    }
    return std::make_shared<SSL4ServerEndpoint>(r, static_cast<int>(number), ssl::TLSOptions(std::move(c)),
                                                static_cast<int>(backlog), interface);
}

REACTOR_INLINE std::shared_ptr<IStreamClientEndpoint> clientEndpoint(Reactor& r, EndpointDescription& d) {
    // Twisted's tls: client: host, port, timeout, bindAddress, trustRoots,
    // certificate, privateKey. trustRoots here is a PEM file of CA
    // certificates (the system's store when absent). Verification is always
    // on (Twisted's older ssl: client does not verify unless given CAs).
    DescriptionReader in(d, {"host", "port", "timeout", "bindAddress", "trustRoots", "certificate", "privateKey"});
    auto host = in.take("host", true);
    in.need(host, "host (tls:example.org:443)");
    auto port = in.take("port", true);
    in.need(port, "port (tls:example.org:443)");
    long number = 0;
    if (port && !port->empty()) {
        d.params.emplace_back("port", *port);
        number = in.number("port", false, 0, 1, 65535);
    }
    double timeout = in.seconds("timeout", 30);
    Address bind;
    bind.host = in.text("bindAddress", false, "");
    std::string roots = in.text("trustRoots", false, "");
    std::string cert = in.text("certificate", false, "");
    std::string key = in.text("privateKey", false, cert);
    in.finish();
    if (!d.error.empty()) return nullptr;
    ssl::ClientTLSSettings s;
    if (!roots.empty()) s.trust = ssl::trustRoot(ssl::pemFile(roots));
    if (!cert.empty()) {
        s.certificate = ssl::pemFile(cert);
        s.privateKey = ssl::pemFile(key);
    }
    std::shared_ptr<Context> c = makeClientContext(*host, s);
    if (!c->error.empty()) {
        d.error = c->error;
        return nullptr;
    }
    return std::make_shared<SSL4ClientEndpoint>(r, *host, static_cast<int>(number), ssl::TLSOptions(std::move(c)),
                                                timeout, bind);
}

}  // namespace tls
}  // namespace detail

#endif  // REACTOR_WITH_OPENSSL

// ---- 11. BASIC FRAMING -----------------------------------------------------
REACTOR_INLINE error::StringTooLongError::StringTooLongError(std::string message)
    : ErrorType(std::move(message)) {}

namespace detail {

REACTOR_INLINE std::size_t addSaturated(std::size_t a, std::size_t b) {
    return a > static_cast<std::size_t>(-1) - b ? static_cast<std::size_t>(-1) : a + b;
}

REACTOR_INLINE void FrameBuffer::append(std::string_view bytes) {
    if (busy || !incoming.empty())
        incoming.append(bytes.data(), bytes.size());
    else
        data.append(bytes.data(), bytes.size());
}

REACTOR_INLINE void FrameBuffer::merge() {
    if (incoming.empty()) return;
    compact();
    data.append(incoming);
    incoming.clear();
}

REACTOR_INLINE void FrameBuffer::compact() {
    if (pos == 0) return;
    data.erase(0, pos);
    pos = 0;
}

REACTOR_INLINE std::string FrameBuffer::take(bool noViews) {
    std::string all;
    if (pos == 0 && (noViews || !busy)) {
        all.swap(data);  // no copy: the 10 MB line handed to lineLengthExceeded
    } else {
        all.assign(data, pos, std::string::npos);
        pos = data.size();
    }
    all += incoming;
    incoming.clear();
    return all;
}

REACTOR_INLINE void FrameBuffer::clear() {
    if (busy) {
        pos = data.size();  // a callback may still hold a view into data
    } else {
        data.clear();
        pos = 0;
    }
    incoming.clear();
}
}  // namespace detail

REACTOR_INLINE void PauseableProtocol::pauseProducing() {
    paused_ = true;
    if (transport) transport->pauseProducing();
}

REACTOR_INLINE void PauseableProtocol::resumeProducing() {
    paused_ = false;
    if (transport) transport->resumeProducing();
    dataReceived({});
}

REACTOR_INLINE void PauseableProtocol::stopProducing() {
    paused_ = true;
    if (transport) transport->stopProducing();
}

REACTOR_INLINE void LineReceiver::lineLengthExceeded(std::string_view line) {
    (void)line;
    if (transport) transport->loseConnection();
}

REACTOR_INLINE void LineReceiver::sendLine(std::string_view line) {
    if (transport) transport->writeSequence({line, std::string_view(delimiter)});
}

REACTOR_INLINE void LineReceiver::setLineMode(std::string_view extra) {
    lineMode_ = true;
    if (!extra.empty()) dataReceived(extra);
}

REACTOR_INLINE std::string LineReceiver::clearLineBuffer() {
    searchFrom_ = 0;
    return buf_.take();
}

REACTOR_INLINE void LineReceiver::dataReceived(std::string_view data) {
    if (buf_.busy) {
        buf_.append(data);
        return;
    }
    detail::BusyScope busy(buf_.busy);
    // After loseConnection() no line is delivered any more; keep what
    // arrives (as Twisted) but only up to one over-long line's worth.
    if (lineMode_ && closing() && buf_.size() >= detail::addSaturated(MAX_LENGTH, delimiter.size())) return;
    if (!lineMode_ && !paused_ && buf_.size() == 0 && !data.empty()) {
        searchFrom_ = 0;
        rawDataReceived(data);  // raw fast path: no copy
    } else {
        buf_.append(data);
    }
    process();
}

REACTOR_INLINE void LineReceiver::process() {
    for (;;) {
        buf_.merge();  // no view is outstanding between callbacks
        if (buf_.pos >= buf_.data.size() || paused_) break;
        if (!lineMode_) {
            std::string_view chunk = buf_.pending();
            buf_.pos = buf_.data.size();
            searchFrom_ = 0;
            rawDataReceived(chunk);
            continue;
        }
        if (closing()) break;  // loseConnection() was called: the rest stays buffered
        if (delimiter.empty()) {
            detail::raise<error::ValueError>("LineReceiver.delimiter is empty");
            break;
        }
        if (delimiter != searchDelimiter_) {  // changed: search the whole buffer again
            searchDelimiter_ = delimiter;
            searchFrom_ = 0;
        }
        const std::string_view pending = buf_.pending();
        const std::size_t at = pending.find(delimiter, std::min(searchFrom_, pending.size()));
        if (at == std::string_view::npos) {
            if (pending.size() >= detail::addSaturated(MAX_LENGTH, delimiter.size())) {
                std::string line = buf_.take(true);
                searchFrom_ = 0;
                traceExceeded(line.size());
                lineLengthExceeded(line);
            } else {  // resume the search where a partial delimiter may start
                searchFrom_ = pending.size() - std::min(pending.size(), delimiter.size() - 1);
            }
            break;
        }
        if (at > MAX_LENGTH) {
            std::string exceeded = buf_.take(true);  // line + delimiter + the rest
            searchFrom_ = 0;
            traceExceeded(at);
            lineLengthExceeded(exceeded);
            break;
        }
        buf_.pos += at + delimiter.size();
        searchFrom_ = 0;
        lineReceived(pending.substr(0, at));
    }
    buf_.merge();  // bytes queued by the last callback stay in order
    buf_.compact();
}

REACTOR_INLINE void LineReceiver::traceExceeded(std::size_t length) {
    if (const auto* tracer = detail::activeTracer(); tracer && *tracer)
        detail::emitTrace(tracer, "  line of " + std::to_string(length) + "+ bytes over MAX_LENGTH (" +
                                      std::to_string(MAX_LENGTH) + ") -> " + logPrefix() + ".lineLengthExceeded");
}

REACTOR_INLINE void LineOnlyReceiver::lineLengthExceeded(std::string_view line) {
    (void)line;
    if (transport) transport->loseConnection();
}

REACTOR_INLINE void LineOnlyReceiver::sendLine(std::string_view line) {
    if (transport) transport->writeSequence({line, std::string_view(delimiter)});
}

REACTOR_INLINE void LineOnlyReceiver::dataReceived(std::string_view data) {
    detail::feedInOrder(busy_, queued_, data, [this](std::string_view bytes) { feed(bytes); });
}

REACTOR_INLINE void LineOnlyReceiver::feed(std::string_view data) {
    if (delimiter.empty()) {
        detail::raise<error::ValueError>("LineOnlyReceiver.delimiter is empty");
        return;
    }
    // Scan the new bytes in place when nothing is buffered (no copy);
    // otherwise append and resume the search where a delimiter may start.
    std::string_view src = data;
    std::size_t from = 0;
    if (!buffer_.empty()) {
        from = buffer_.size() - std::min(buffer_.size(), delimiter.size() - 1);
        buffer_.append(data.data(), data.size());
        src = buffer_;
    }
    std::size_t start = 0;
    bool stop = false;
    for (std::size_t at; (at = src.find(delimiter, from)) != std::string_view::npos;) {
        std::string_view line = src.substr(start, at - start);
        start = from = at + delimiter.size();
        if (stop) continue;  // only locating the tail now
        if (transport && transport->disconnecting) {
            stop = true;
        } else if (line.size() > MAX_LENGTH) {
            lineLengthExceeded(line);
            stop = true;
        } else {
            lineReceived(line);
        }
    }
    // Keep the unterminated tail (src may point into buffer_ itself).
    if (src.data() == buffer_.data())
        buffer_.erase(0, start);
    else
        buffer_.assign(src.data() + start, src.size() - start);
    if (!stop && buffer_.size() > MAX_LENGTH) {
        std::string tail;
        tail.swap(buffer_);
        lineLengthExceeded(tail);
    }
}

REACTOR_INLINE void NetstringReceiver::sendString(std::string_view string) {
    if (!transport) return;
    std::string header = std::to_string(string.size());
    header += ':';
    transport->writeSequence({std::string_view(header), string, std::string_view(",")});
}

REACTOR_INLINE void NetstringReceiver::dataReceived(std::string_view data) {
    detail::feedInOrder(busy_, queued_, data, [this](std::string_view bytes) { feed(bytes); });
}

REACTOR_INLINE void NetstringReceiver::feed(std::string_view data) {
    std::size_t i = 0;
    while (i < data.size() && !brokenPeer) {
        switch (state_) {
            case State::length: {
                const char c = data[i++];
                if (c >= '0' && c <= '9') {
                    if (digits_ == 1 && length_ == 0) return fail("leading zero in the length");
                    // length_ * 10 + digit > MAX_LENGTH, tested without computing
                    // it: with a MAX_LENGTH near SIZE_MAX the sum would wrap
                    // around and a 20-digit length would pass as a small one.
                    const auto digit = static_cast<std::size_t>(c - '0');
                    if (digit > MAX_LENGTH || length_ > (MAX_LENGTH - digit) / 10)
                        return fail("length is over MAX_LENGTH (" + std::to_string(MAX_LENGTH) + ")");
                    length_ = length_ * 10 + digit;
                    ++digits_;
                } else if (c == ':') {
                    if (digits_ == 0) return fail("missing length before ':'");
                    state_ = State::payload;
                    payload_.clear();
                } else {
                    return fail("invalid character in the length");
                }
                break;
            }
            case State::payload: {
                const std::size_t need = length_ - payload_.size();
                const std::size_t avail = data.size() - i;
                if (payload_.empty() && avail > need) {  // whole string and its ',' here: no copy
                    std::string_view string = data.substr(i, need);
                    i += need;
                    if (data[i++] != ',') return fail("missing ',' after the string");
                    reset();
                    stringReceived(string);
                    break;
                }
                const std::size_t n = std::min(need, avail);
                payload_.append(data.data() + i, n);
                i += n;
                if (payload_.size() == length_) state_ = State::comma;
                break;
            }
            case State::comma: {
                if (data[i++] != ',') return fail("missing ',' after the string");
                std::string string;
                string.swap(payload_);
                reset();
                stringReceived(string);
                break;
            }
        }
    }
}

REACTOR_INLINE void NetstringReceiver::reset() {
    state_ = State::length;
    length_ = 0;
    digits_ = 0;
}

REACTOR_INLINE void NetstringReceiver::fail(const std::string& why) {
    brokenPeer = true;
    payload_.clear();
    payload_.shrink_to_fit();
    queued_.clear();
    log(LogLevel::warning, "NetstringReceiver: bad netstring from peer: " + why + "; closing the connection");
    if (transport) transport->loseConnection();
}

REACTOR_INLINE IntNStringReceiver::IntNStringReceiver(std::size_t prefixBytes)
    : prefixLength(prefixBytes >= 1 && prefixBytes <= 8 ? prefixBytes : 4) {
    if (prefixLength != prefixBytes)
        detail::raise<error::ValueError>("IntNStringReceiver: prefixLength must be 1 to 8 bytes");
}

REACTOR_INLINE void IntNStringReceiver::lengthLimitExceeded(std::size_t length) {
    (void)length;
    if (transport) transport->loseConnection();
}

REACTOR_INLINE bool IntNStringReceiver::sendString(std::string_view string) {
    const std::uint64_t limit = prefixLength >= 8 ? ~std::uint64_t(0) : std::uint64_t(1) << (8 * prefixLength);
    if (static_cast<std::uint64_t>(string.size()) >= limit) {
        detail::raise<error::StringTooLongError>("Try to send " + std::to_string(string.size()) +
                                                 " bytes whereas maximum is " + std::to_string(limit));
        return false;
    }
    if (!transport) return false;
    char prefix[8] = {};
    std::uint64_t n = string.size();
    for (std::size_t i = prefixLength; i-- > 0; n >>= 8) prefix[i] = static_cast<char>(n & 0xff);
    transport->writeSequence({std::string_view(prefix, prefixLength), string});
    return true;
}

REACTOR_INLINE void IntNStringReceiver::dataReceived(std::string_view data) {
    if (exceeded_) return;
    if (buf_.busy) {
        buf_.append(data);
        return;
    }
    detail::BusyScope busy(buf_.busy);
    buf_.append(data);
    for (;;) {
        buf_.merge();
        if (paused_ || exceeded_) break;
        const std::string_view pending = buf_.pending();
        if (pending.size() < prefixLength) break;
        std::uint64_t length = 0;
        for (std::size_t i = 0; i < prefixLength; ++i)
            length = (length << 8) | static_cast<unsigned char>(pending[i]);
        if (length > MAX_LENGTH) {
            exceeded_ = true;
            buf_.clear();
            lengthLimitExceeded(static_cast<std::size_t>(length));
            break;
        }
        const std::size_t size = static_cast<std::size_t>(length);
        if (pending.size() - prefixLength < size) break;
        buf_.pos += prefixLength + size;
        stringReceived(pending.substr(prefixLength, size));
    }
    if (exceeded_) {
        buf_.clear();
    } else {
        buf_.merge();
    }
    buf_.compact();
}

// ---- 12. TASK --------------------------------------------------------------
namespace task {

REACTOR_INLINE LoopingCall::~LoopingCall() {
    *alive_ = nullptr;
    if (call_.active()) call_.cancel();
}

REACTOR_INLINE Deferred<LoopingCall*> LoopingCall::start(double seconds, bool now) {
    if (running_) {
        detail::raise<error::RuntimeError>("Tried to start an already running LoopingCall.");
        return deferred_;
    }
    if (!(seconds >= 0)) {
        detail::raise<error::ValueError>("interval must be >= 0");
        return fail<LoopingCall*>(Failure(error::ValueError("interval must be >= 0")));
    }
    running_ = true;
    ++generation_;
    interval = seconds;
    deferred_ = Deferred<LoopingCall*>();
    Deferred<LoopingCall*> d = deferred_;
    starttime_ = clock_.seconds();
    if (now)
        call();
    else
        schedule();
    return d;
}

REACTOR_INLINE bool LoopingCall::stop() {
    if (!running_) {
        detail::raise<error::RuntimeError>("Tried to stop a LoopingCall that was not running.");
        return false;
    }
    running_ = false;
    if (call_) {  // between calls: finish now
        if (call_.active()) call_.cancel();
        call_ = DelayedCall();
        finish();
    }
    return true;
}

REACTOR_INLINE void LoopingCall::reset() {
    if (!running_) {
        detail::raise<error::RuntimeError>("Tried to reset a LoopingCall that was not running.");
        return;
    }
    // Only between calls, as Twisted: from inside `f` (or while its
    // Deferred is pending) the next call is scheduled when `f` finishes,
    // and a second timer would make the loop run twice per interval.
    if (!call_.active()) return;
    call_.cancel();
    call_ = DelayedCall();
    starttime_ = clock_.seconds();
    schedule();
}

REACTOR_INLINE void LoopingCall::call() {
    call_ = DelayedCall();
    std::weak_ptr<LoopingCall*> alive = alive_;
    const unsigned generation = generation_;
    Deferred<LoopingCall*> mine = deferred_;
    // Two pairs, not one (Twisted chains addCallback then addErrback): if
    // scheduling the next call fails, the errback ends the loop and fails
    // the start() Deferred instead of the failure being left on f's chain.
    std::shared_ptr<std::function<Deferred<void>()>> f = f_;  // (f may destroy this LoopingCall)
    (*f)().addCallback(
        [alive, generation, mine]() mutable -> Result<void> {
            auto self = alive.lock();
            if (!self || !*self) return {};
            LoopingCall& lc = **self;
            if (lc.generation_ != generation) {
                if (!mine.called()) mine.callback(&lc);
            } else if (lc.running_) {
                lc.schedule();
                // Without exceptions a refused callLater (say, `interval`
                // set negative) logs and returns an empty handle.
                if (!lc.call_) return Failure(error::ValueError("LoopingCall could not schedule its next call"));
            } else {
                lc.finish();
            }
            return {};
        }).addErrback(
        [alive, generation, mine](Failure failure) mutable -> Result<void> {
            auto self = alive.lock();
            if (!self || !*self) return failure;  // nobody left to tell: report it
            LoopingCall& lc = **self;
            if (lc.generation_ != generation) {
                if (mine.called()) return failure;
                mine.errback(std::move(failure));
                return {};
            }
            lc.running_ = false;
            Deferred<LoopingCall*> d = std::exchange(lc.deferred_, Deferred<LoopingCall*>());
            d.errback(std::move(failure));
            return {};
        });
}

REACTOR_INLINE void LoopingCall::schedule() {
    if (call_.active()) call_.cancel();  // never two timers
    std::weak_ptr<LoopingCall*> alive = alive_;
    auto tick = [alive] {
        auto self = alive.lock();
        if (self && *self && (*self)->running_) (*self)->call();
    };
    const double now = clock_.seconds();
    if (interval == 0) {
        call_ = clock_.callLater(0, tick);
        return;
    }
    // The next boundary start + k*interval strictly after now.
    double k = std::floor((now - starttime_) / interval) + 1;
    double next = starttime_ + k * interval;
    if (next - now < interval * 1e-9) next += interval;  // float noise at a boundary
    call_ = clock_.callLater(next - now, tick);
}

REACTOR_INLINE void LoopingCall::finish() {
    Deferred<LoopingCall*> d = std::exchange(deferred_, Deferred<LoopingCall*>());
    d.callback(this);
}

REACTOR_INLINE Deferred<void> deferLater(IReactorTime& clock, double delay) {
    auto call = std::make_shared<DelayedCall>();
    Deferred<void> d([call](Deferred<void>&) {
        if (call->active()) call->cancel();
    });
    *call = clock.callLater(delay, [d]() mutable { d.callback(); });
    return d;
}
}  // namespace task

// ---- 13. IRC ---------------------------------------------------------------
#if REACTOR_HAS_IRC
namespace irc {

REACTOR_INLINE const std::string* Message::tag(std::string_view key) const {
    for (const auto& t : tags)
        if (t.first == key) return &t.second;
    return nullptr;
}
namespace detail {

REACTOR_INLINE bool hasUnsafeChar(std::string_view s) {
    return s.find_first_of(std::string_view("\r\n\0", 3)) != std::string_view::npos;
}

REACTOR_INLINE char asciiUpper(char c) { return (c >= 'a' && c <= 'z') ? static_cast<char>(c - 'a' + 'A') : c; }

REACTOR_INLINE char asciiLower(char c) { return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c; }

REACTOR_INLINE bool parseInt(std::string_view s, int& out) {
    if (s.empty() || s.size() > 9) return false;
    int v = 0;
    for (char c : s) {
        if (c < '0' || c > '9') return false;
        v = v * 10 + (c - '0');
    }
    out = v;
    return true;
}

REACTOR_INLINE std::optional<std::int64_t> int64OrNone(std::string_view s) {
    bool negative = false;
    if (!s.empty() && (s[0] == '-' || s[0] == '+')) {
        negative = s[0] == '-';
        s.remove_prefix(1);
    }
    if (s.empty() || s.size() > 18) return std::nullopt;
    std::int64_t v = 0;
    for (char c : s) {
        if (c < '0' || c > '9') return std::nullopt;
        v = v * 10 + (c - '0');
    }
    return negative ? -v : v;
}

REACTOR_INLINE std::optional<int> intOrNone(std::string_view s) {
    std::optional<std::int64_t> v = int64OrNone(s);
    if (!v || *v > INT32_MAX || *v < INT32_MIN) return std::nullopt;  // int is 32 bits on every target
    return static_cast<int>(*v);
}

REACTOR_INLINE bool shellSplit(std::string_view s, std::vector<std::string>& out) {
    out.clear();
    std::string word;
    bool inWord = false;
    for (std::size_t i = 0; i < s.size(); ++i) {
        char c = s[i];
        if (c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f') {
            if (inWord) out.push_back(std::move(word));
            word.clear();
            inWord = false;
        } else if (c == '\'') {
            std::size_t close = s.find('\'', i + 1);
            if (close == std::string_view::npos) return false;
            word.append(s.substr(i + 1, close - i - 1));
            i = close;
            inWord = true;
        } else if (c == '"') {
            for (++i;; ++i) {
                if (i >= s.size()) return false;
                if (s[i] == '"') break;
                if (s[i] == '\\' && i + 1 < s.size() && (s[i + 1] == '"' || s[i + 1] == '\\')) ++i;
                word += s[i];
            }
            inWord = true;
        } else if (c == '\\') {
            if (++i == s.size()) return false;  // shlex: "No escaped character"
            word += s[i];
            inWord = true;
        } else {
            word += c;
            inWord = true;
        }
    }
    if (inWord) out.push_back(std::move(word));
    return true;
}

REACTOR_INLINE bool dccParseAddress(const std::string& address, std::string& out) {
    if (address.find('.') != std::string::npos) {
        out = address;
        return true;
    }
    std::optional<std::int64_t> n = int64OrNone(address);
    if (!n) return false;
    const auto v = static_cast<std::uint64_t>(*n);
    out = std::to_string((v >> 24) & 0xFF) + "." + std::to_string((v >> 16) & 0xFF) + "." +
          std::to_string((v >> 8) & 0xFF) + "." + std::to_string(v & 0xFF);
    return true;
}

REACTOR_INLINE std::string escapeTagValue(std::string_view v) {
    std::string out;
    for (char c : v) {
        switch (c) {
            case ';': out += "\\:"; break;
            case ' ': out += "\\s"; break;
            case '\\': out += "\\\\"; break;
            case '\r': out += "\\r"; break;
            case '\n': out += "\\n"; break;
            default: out += c;
        }
    }
    return out;
}

REACTOR_INLINE std::string base64(std::string_view in) {
    static constexpr char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    std::string out;
    std::size_t i = 0;
    for (; i + 2 < in.size(); i += 3) {
        unsigned v = static_cast<unsigned>(static_cast<unsigned char>(in[i])) << 16 |
                     static_cast<unsigned>(static_cast<unsigned char>(in[i + 1])) << 8 |
                     static_cast<unsigned char>(in[i + 2]);
        out += alphabet[v >> 18 & 63];
        out += alphabet[v >> 12 & 63];
        out += alphabet[v >> 6 & 63];
        out += alphabet[v & 63];
    }
    if (i < in.size()) {
        unsigned v = static_cast<unsigned>(static_cast<unsigned char>(in[i])) << 16;
        if (i + 1 < in.size()) v |= static_cast<unsigned>(static_cast<unsigned char>(in[i + 1])) << 8;
        out += alphabet[v >> 18 & 63];
        out += alphabet[v >> 12 & 63];
        out += i + 1 < in.size() ? alphabet[v >> 6 & 63] : '=';
        out += '=';
    }
    return out;
}

REACTOR_INLINE std::optional<double> parseServerTime(std::string_view v) {
    // YYYY-MM-DDThh:mm:ss[.sss]Z, UTC (the IRCv3 server-time format).
    auto num = [&](std::size_t at, std::size_t n, int& out) {
        return at + n <= v.size() && parseInt(v.substr(at, n), out);
    };
    int y = 0, mo = 0, d = 0, h = 0, mi = 0, sec = 0;
    if (v.size() < 20 || v[4] != '-' || v[7] != '-' || v[10] != 'T' || v[13] != ':' || v[16] != ':' ||
        v.back() != 'Z' || !num(0, 4, y) || !num(5, 2, mo) || !num(8, 2, d) || !num(11, 2, h) || !num(14, 2, mi) ||
        !num(17, 2, sec) || mo < 1 || mo > 12 || d < 1 || d > 31 || h > 23 || mi > 59 || sec > 60)
        return std::nullopt;
    double fraction = 0;
    std::string_view rest = v.substr(19, v.size() - 20);
    if (!rest.empty()) {
        if (rest[0] != '.' || rest.size() < 2 || rest.size() > 10) return std::nullopt;
        double scale = 0.1;
        for (char c : rest.substr(1)) {
            if (c < '0' || c > '9') return std::nullopt;
            fraction += (c - '0') * scale;
            scale /= 10;
        }
    }
    // Days from 1970-01-01 to y-mo-d (proleptic Gregorian), no OS call.
    const int yy = mo <= 2 ? y - 1 : y;
    const int era = (yy >= 0 ? yy : yy - 399) / 400;
    const int yoe = yy - era * 400;
    const int doy = (153 * (mo + (mo > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    const int doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    const double days = static_cast<double>(era) * 146097 + doe - 719468;
    return days * 86400 + h * 3600 + mi * 60 + sec + fraction;
}

REACTOR_INLINE std::string unescapeTagValue(std::string_view v) {
    std::string out;
    out.reserve(v.size());
    for (std::size_t i = 0; i < v.size(); ++i) {
        if (v[i] != '\\') {
            out += v[i];
            continue;
        }
        if (++i == v.size()) break;  // a lone trailing backslash is dropped
        switch (v[i]) {
            case ':': out += ';'; break;
            case 's': out += ' '; break;
            case 'r': out += '\r'; break;
            case 'n': out += '\n'; break;
            default: out += v[i]; break;  // "\\" -> "\", "\x" -> "x"
        }
    }
    return out;
}
}  // namespace detail

REACTOR_INLINE Message parsemsg(std::string_view line) {
    Message m;
    if (line.empty()) {
        m.error = "Empty line.";
        return m;
    }
    std::string_view s = line;
    if (s[0] == '@') {
        std::size_t sp = s.find(' ');
        if (sp == std::string_view::npos) {
            m.error = "Tags without command.";
            return m;
        }
        std::string_view tags = s.substr(1, sp - 1);
        if (tags.empty()) {
            m.error = "Empty tag section.";
            return m;
        }
        while (!tags.empty()) {
            std::size_t semi = tags.find(';');
            std::string_view item = tags.substr(0, semi);
            tags = semi == std::string_view::npos ? std::string_view() : tags.substr(semi + 1);
            if (item.empty()) continue;
            std::size_t eq = item.find('=');
            std::string key(item.substr(0, eq));
            if (key.empty()) continue;
            std::string value = eq == std::string_view::npos ? std::string() : detail::unescapeTagValue(item.substr(eq + 1));
            m.tags.emplace_back(std::move(key), std::move(value));
        }
        s = s.substr(sp + 1);
        while (!s.empty() && s[0] == ' ') s.remove_prefix(1);
    }
    if (!s.empty() && s[0] == ':') {
        std::size_t sp = s.find(' ');
        if (sp == std::string_view::npos) {
            m.error = "Prefix without command.";
            return m;
        }
        m.prefix = std::string(s.substr(1, sp - 1));
        if (m.prefix.empty()) {
            m.error = "Empty prefix.";
            return m;
        }
        s = s.substr(sp + 1);
    }
    std::size_t trailingAt = s.find(" :");
    std::string_view head = trailingAt == std::string_view::npos ? s : s.substr(0, trailingAt);
    std::vector<std::string> args;
    while (!head.empty()) {
        std::size_t sp = head.find(' ');
        std::string_view word = head.substr(0, sp);
        if (!word.empty()) args.emplace_back(word);
        if (sp == std::string_view::npos) break;
        head.remove_prefix(sp + 1);
    }
    if (trailingAt != std::string_view::npos) {
        if (args.empty()) {  // " :text" with nothing before it
            m.error = "Missing command.";
            return m;
        }
        args.emplace_back(s.substr(trailingAt + 2));
    }
    if (args.empty() || args[0][0] == ':') {
        m.error = "Missing command.";
        return m;
    }
    m.command = std::move(args[0]);
    m.params.assign(std::make_move_iterator(args.begin() + 1), std::make_move_iterator(args.end()));
    return m;
}

REACTOR_INLINE std::string lowQuote(std::string_view s) {
    std::string out;
    out.reserve(s.size());
    for (char c : s) {
        switch (c) {
            case M_QUOTE: out += M_QUOTE; out += M_QUOTE; break;
            case '\0': out += M_QUOTE; out += '0'; break;
            case '\n': out += M_QUOTE; out += 'n'; break;
            case '\r': out += M_QUOTE; out += 'r'; break;
            default: out += c;
        }
    }
    return out;
}

REACTOR_INLINE std::string lowDequote(std::string_view s) {
    std::string out;
    out.reserve(s.size());
    for (std::size_t i = 0; i < s.size(); ++i) {
        if (s[i] != M_QUOTE || i + 1 == s.size()) {
            out += s[i];
            continue;
        }
        char c = s[++i];
        out += c == '0' ? '\0' : c == 'n' ? '\n' : c == 'r' ? '\r' : c;
    }
    return out;
}

REACTOR_INLINE std::string ctcpQuote(std::string_view s) {
    std::string out;
    out.reserve(s.size());
    for (char c : s) {
        if (c == X_QUOTE) {
            out += X_QUOTE;
            out += X_QUOTE;
        } else if (c == X_DELIM) {
            out += X_QUOTE;
            out += 'a';
        } else {
            out += c;
        }
    }
    return out;
}

REACTOR_INLINE std::string ctcpDequote(std::string_view s) {
    std::string out;
    out.reserve(s.size());
    for (std::size_t i = 0; i < s.size(); ++i) {
        if (s[i] != X_QUOTE || i + 1 == s.size()) {
            out += s[i];
            continue;
        }
        char c = s[++i];
        out += c == 'a' ? X_DELIM : c;
    }
    return out;
}

REACTOR_INLINE CtcpExtracted ctcpExtract(std::string_view message) {
    CtcpExtracted out;
    bool extended = false;
    for (;;) {
        std::size_t at = message.find(X_DELIM);
        std::string_view piece = message.substr(0, at);
        if (!piece.empty()) {
            if (extended) {
                std::string text = ctcpDequote(piece);
                std::size_t sp = text.find(' ');
                CtcpMessage msg;
                msg.tag = text.substr(0, sp);
                if (sp != std::string::npos) msg.data = text.substr(sp + 1);
                out.extended.push_back(std::move(msg));
            } else {
                out.normal.emplace_back(piece);
            }
        }
        if (at == std::string_view::npos) break;
        message.remove_prefix(at + 1);
        extended = !extended;
    }
    return out;
}

REACTOR_INLINE std::string ctcpStringify(const std::vector<CtcpMessage>& messages) {
    std::string out;
    for (const auto& m : messages) {
        std::string body = m.tag;
        if (m.data && !m.data->empty()) body += ' ' + *m.data;
        out += X_DELIM;
        out += ctcpQuote(body);
        out += X_DELIM;
    }
    return out;
}

REACTOR_INLINE std::vector<std::string> split(std::string_view text, std::size_t length) {
    std::vector<std::string> out;
    if (length == 0) return out;
    auto isCont = [](char c) { return (static_cast<unsigned char>(c) & 0xC0) == 0x80; };
    // The longest prefix of `s` of at most `n` bytes that does not end inside
    // a UTF-8 character (n bytes when that would be nothing: invalid UTF-8,
    // or `n` smaller than one character).
    auto fit = [&](std::string_view s, std::size_t n) {
        std::size_t cut = n, back = 0;
        while (cut > 0 && back < 4 && isCont(s[cut])) --cut, ++back;
        return (cut == 0 || back == 4) ? n : cut;
    };
    std::string line;
    while (!text.empty()) {
        std::size_t eol = text.find_first_of("\r\n");
        std::string_view raw = text.substr(0, eol);
        text = eol == std::string_view::npos ? std::string_view() : text.substr(eol + 1);
        // textwrap: tabs to the next multiple of 8 columns (a column per
        // character, not per byte), then every other whitespace to a space.
        line.clear();
        std::size_t column = 0;
        for (char c : raw) {
            if (c == '\t') {
                line.append(8 - column % 8, ' ');
                column += 8 - column % 8;
                continue;
            }
            line += (c == '\v' || c == '\f') ? ' ' : c;
            if (!isCont(c)) ++column;
        }
        std::string_view rest = line;
        while (!rest.empty() && rest.back() == ' ') rest.remove_suffix(1);
        bool first = true;  // textwrap keeps the first line's indentation only
        while (!rest.empty()) {
            if (!first)
                while (!rest.empty() && rest.front() == ' ') rest.remove_prefix(1);
            first = false;
            if (rest.empty()) break;
            if (rest.size() <= length) {
                out.emplace_back(rest);
                break;
            }
            // Greedy, as textwrap: the words that fit, up to the last space
            // at or before `length`; but a following word longer than a
            // whole line is cut to fill this one ("nick: <long word>" does
            // not leave "nick:" alone on its line).
            std::size_t cut = rest.rfind(' ', length);
            std::string_view chunk;
            if (cut != std::string_view::npos) {
                chunk = rest.substr(0, cut);
                while (!chunk.empty() && chunk.back() == ' ') chunk.remove_suffix(1);
                std::size_t word = rest.find_first_not_of(' ', cut);
                std::size_t wordEnd = rest.find(' ', word);
                if (wordEnd == std::string_view::npos) wordEnd = rest.size();
                if (wordEnd - word > length) chunk = {};
            }
            if (chunk.empty()) chunk = rest.substr(0, fit(rest, length));
            out.emplace_back(chunk);
            rest.remove_prefix(chunk.size());
        }
    }
    return out;
}

REACTOR_INLINE ParsedModes parseModes(std::string_view modes, std::vector<std::string> params,
                                      const std::pair<std::string, std::string>& paramModes) {
    ParsedModes out;
    if (modes.empty()) {
        out.error = "Empty mode string";
        return out;
    }
    if (modes[0] != '+' && modes[0] != '-') {
        out.error = "Malformed modes string: " + std::string(modes);
        return out;
    }
    std::size_t next = 0;
    bool adding = true;
    int count = -1;
    for (char ch : modes) {
        if (ch == '+' || ch == '-') {
            if (count == 0) {
                out.error = "Empty mode sequence: " + std::string(modes);
                return out;
            }
            adding = ch == '+';
            count = 0;
            continue;
        }
        ModeChange change{ch, std::nullopt};
        const std::string& takes = adding ? paramModes.first : paramModes.second;
        if (takes.find(ch) != std::string::npos) {
            if (next >= params.size()) {
                out.error = std::string("Not enough parameters: ") + ch;
                return out;
            }
            change.param = std::move(params[next++]);
        }
        (adding ? out.added : out.removed).push_back(std::move(change));
        ++count;
    }
    if (next < params.size()) {
        out.error = "Too many parameters: " + std::string(modes);
        return out;
    }
    if (count == 0) out.error = "Empty mode sequence: " + std::string(modes);
    return out;
}

REACTOR_INLINE std::string_view numericToSymbolic(std::string_view numeric) {
    static constexpr std::pair<std::string_view, std::string_view> table[] = {
        {"001", "RPL_WELCOME"}, {"002", "RPL_YOURHOST"}, {"003", "RPL_CREATED"}, {"004", "RPL_MYINFO"},
        {"005", "RPL_ISUPPORT"}, {"010", "RPL_BOUNCE"}, {"221", "RPL_UMODEIS"},
        {"251", "RPL_LUSERCLIENT"}, {"252", "RPL_LUSEROP"}, {"253", "RPL_LUSERUNKNOWN"},
        {"254", "RPL_LUSERCHANNELS"}, {"255", "RPL_LUSERME"}, {"301", "RPL_AWAY"},
        {"305", "RPL_UNAWAY"}, {"306", "RPL_NOWAWAY"}, {"311", "RPL_WHOISUSER"},
        {"312", "RPL_WHOISSERVER"}, {"313", "RPL_WHOISOPERATOR"}, {"317", "RPL_WHOISIDLE"},
        {"318", "RPL_ENDOFWHOIS"}, {"319", "RPL_WHOISCHANNELS"}, {"321", "RPL_LISTSTART"},
        {"322", "RPL_LIST"}, {"323", "RPL_LISTEND"}, {"324", "RPL_CHANNELMODEIS"},
        {"331", "RPL_NOTOPIC"}, {"332", "RPL_TOPIC"}, {"341", "RPL_INVITING"},
        {"352", "RPL_WHOREPLY"}, {"353", "RPL_NAMREPLY"}, {"366", "RPL_ENDOFNAMES"},
        {"372", "RPL_MOTD"}, {"375", "RPL_MOTDSTART"}, {"376", "RPL_ENDOFMOTD"},
        {"401", "ERR_NOSUCHNICK"}, {"403", "ERR_NOSUCHCHANNEL"}, {"404", "ERR_CANNOTSENDTOCHAN"},
        {"421", "ERR_UNKNOWNCOMMAND"}, {"422", "ERR_NOMOTD"}, {"431", "ERR_NONICKNAMEGIVEN"},
        {"432", "ERR_ERRONEUSNICKNAME"}, {"433", "ERR_NICKNAMEINUSE"}, {"436", "ERR_NICKCOLLISION"},
        {"441", "ERR_USERNOTINCHANNEL"}, {"442", "ERR_NOTONCHANNEL"}, {"451", "ERR_NOTREGISTERED"},
        {"461", "ERR_NEEDMOREPARAMS"}, {"462", "ERR_ALREADYREGISTRED"}, {"464", "ERR_PASSWDMISMATCH"},
        {"465", "ERR_YOUREBANNEDCREEP"}, {"471", "ERR_CHANNELISFULL"}, {"473", "ERR_INVITEONLYCHAN"},
        {"474", "ERR_BANNEDFROMCHAN"}, {"475", "ERR_BADCHANNELKEY"}, {"481", "ERR_NOPRIVILEGES"},
        {"482", "ERR_CHANOPRIVSNEEDED"},
        // IRCv3 SASL (not in Twisted's table).
        {"900", "RPL_LOGGEDIN"}, {"901", "RPL_LOGGEDOUT"}, {"902", "ERR_NICKLOCKED"}, {"903", "RPL_SASLSUCCESS"},
        {"904", "ERR_SASLFAIL"}, {"905", "ERR_SASLTOOLONG"}, {"906", "ERR_SASLABORTED"}, {"907", "ERR_SASLALREADY"},
        {"908", "RPL_SASLMECHS"},
    };
    for (const auto& entry : table)
        if (entry.first == numeric) return entry.second;
    return {};
}

REACTOR_INLINE ServerSupportedFeatures::ServerSupportedFeatures() {
    set("CHANNELLEN", {"200"}, false);
    set("CHANTYPES", {"#&"}, false);
    set("MODES", {"3"}, false);
    set("NICKLEN", {"9"}, false);
    set("PREFIX", {"(ovh)@+%"}, false);
    set("CHANMODES", {"b", "", "lk", ""}, false);
}

REACTOR_INLINE void ServerSupportedFeatures::parse(const std::vector<std::string>& params) {
    for (const std::string& param : params) {
        std::size_t eq = param.find('=');
        std::string key = param.substr(0, eq);
        if (key.empty()) continue;
        if (key[0] == '-') {
            erase(key.substr(1));
            continue;
        }
        std::vector<std::string> values;
        std::string_view raw = eq == std::string::npos ? std::string_view() : std::string_view(param).substr(eq + 1);
        bool good = true;
        for (;;) {
            std::size_t comma = raw.find(',');
            std::string value;
            if (!unescape(raw.substr(0, comma), value)) good = false;
            values.push_back(std::move(value));
            if (comma == std::string_view::npos) break;
            raw.remove_prefix(comma + 1);
        }
        if (!good) {
            reactor::log(LogLevel::warning, "irc: ISUPPORT token with a bad \\xHH escape ignored: " + reactor::detail::printable(param));
            continue;
        }
        if (!acceptable(key, values)) continue;  // Twisted keeps the old value
        // Where Twisted's parser returns None the feature reads as absent
        // (hasFeature is false): an empty PREFIX, a MODES, KICKLEN or
        // TOPICLEN that is empty or not a number.
        const bool number = key == "MODES" || key == "KICKLEN" || key == "TOPICLEN";
        if ((key == "PREFIX" && values[0].empty()) || (number && !detail::intOrNone(values[0]))) {
            erase(key);
            continue;
        }
        if (key == "EXCEPTS" && values[0].empty()) values[0] = "e";  // Twisted's default letters
        if (key == "INVEX" && values[0].empty()) values[0] = "I";
        set(key, std::move(values), true);
    }
}

REACTOR_INLINE std::optional<std::vector<std::string>> ServerSupportedFeatures::getFeature(std::string_view feature) const {
    const Entry* e = find(feature);
    if (!e) return std::nullopt;
    return e->values;
}

REACTOR_INLINE bool ServerSupportedFeatures::announced(std::string_view feature) const {
    const Entry* e = find(feature);
    return e && e->announced;
}

REACTOR_INLINE int ServerSupportedFeatures::getFeatureInt(std::string_view feature, int fallback) const {
    const Entry* e = find(feature);
    int v = 0;
    return (e && !e->values.empty() && detail::parseInt(e->values[0], v)) ? v : fallback;
}

REACTOR_INLINE std::string ServerSupportedFeatures::getFeatureString(std::string_view feature, std::string fallback) const {
    const Entry* e = find(feature);
    return (e && !e->values.empty()) ? e->values[0] : fallback;
}

REACTOR_INLINE std::vector<ServerSupportedFeatures::PrefixMode> ServerSupportedFeatures::prefix() const {
    std::vector<PrefixMode> out;
    std::string value = getFeatureString("PREFIX");
    std::size_t close = value.find(')');
    if (close == std::string::npos) return out;
    // As Twisted: the modes are what precedes ')' less its first character.
    std::string modes = close == 0 ? std::string() : value.substr(1, close - 1), symbols = value.substr(close + 1);
    for (std::size_t i = 0; i < modes.size() && i < symbols.size(); ++i)
        out.push_back({modes[i], symbols[i], static_cast<int>(i)});
    return out;
}

REACTOR_INLINE ServerSupportedFeatures::ChanModes ServerSupportedFeatures::chanModes() const {
    ChanModes out;
    auto v = getFeature("CHANMODES");
    if (!v) return out;
    std::string* fields[] = {&out.addressModes, &out.param, &out.setParam, &out.noParam};
    for (std::size_t i = 0; i < v->size() && i < 4; ++i) *fields[i] = (*v)[i];
    return out;
}

REACTOR_INLINE ServerSupportedFeatures::NumberedList ServerSupportedFeatures::numbered(std::string_view key) const {
    NumberedList out;
    const Entry* e = find(key);
    if (!e) return out;
    for (const std::string& v : e->values) {
        std::size_t colon = v.find(':');
        out.emplace_back(v.substr(0, colon),
                         colon == std::string::npos ? std::nullopt : detail::intOrNone(std::string_view(v).substr(colon + 1)));
    }
    return out;
}

REACTOR_INLINE ServerSupportedFeatures::NumberedList ServerSupportedFeatures::targMax() const {
    NumberedList out;
    for (auto& item : numbered("TARGMAX")) {
        auto same = std::find_if(out.begin(), out.end(), [&](const auto& o) { return o.first == item.first; });
        if (same != out.end()) same->second = item.second;
        else out.push_back(std::move(item));
    }
    return out;
}

REACTOR_INLINE std::vector<std::pair<std::string, std::string>> ServerSupportedFeatures::idChan() const {
    std::vector<std::pair<std::string, std::string>> out;
    const Entry* e = find("IDCHAN");
    if (!e) return out;
    for (const std::string& v : e->values) {
        std::size_t colon = v.find(':');
        out.emplace_back(v.substr(0, colon), colon == std::string::npos ? std::string() : v.substr(colon + 1));
    }
    return out;
}

REACTOR_INLINE std::optional<int> ServerSupportedFeatures::numberOrNone(std::string_view key) const {
    const Entry* e = find(key);
    return (e && !e->values.empty()) ? detail::intOrNone(e->values[0]) : std::nullopt;
}

REACTOR_INLINE std::optional<std::string> ServerSupportedFeatures::stringOrNone(std::string_view key) const {
    const Entry* e = find(key);
    if (!e) return std::nullopt;
    return e->values.empty() ? std::string() : e->values[0];
}

REACTOR_INLINE std::optional<int> ServerSupportedFeatures::modes() const {
    int v = 0;
    if (!hasFeature("MODES") || (v = getFeatureInt("MODES", -1)) < 0) return std::nullopt;
    return v;
}

REACTOR_INLINE const ServerSupportedFeatures::Entry* ServerSupportedFeatures::find(std::string_view key) const {
    for (const Entry& e : entries_)
        if (e.key == key) return &e;
    return nullptr;
}

REACTOR_INLINE void ServerSupportedFeatures::set(const std::string& key, std::vector<std::string> values, bool announced) {
    for (Entry& e : entries_)
        if (e.key == key) {
            e.values = std::move(values);
            e.announced = announced;
            return;
        }
    if (entries_.size() >= maxFeatures) {
        if (!overflowLogged_)
            reactor::log(LogLevel::warning, "irc: ISUPPORT: more than " + std::to_string(maxFeatures) +
                                                " features announced; the new ones are ignored");
        overflowLogged_ = true;
        return;
    }
    entries_.push_back({key, std::move(values), announced});
}

REACTOR_INLINE void ServerSupportedFeatures::erase(const std::string& key) {
    entries_.erase(std::remove_if(entries_.begin(), entries_.end(), [&](const Entry& e) { return e.key == key; }),
                   entries_.end());
}

REACTOR_INLINE bool ServerSupportedFeatures::unescape(std::string_view in, std::string& out) {
    out.clear();
    for (std::size_t i = 0; i < in.size(); ++i) {
        if (in[i] == '\\' && i + 1 < in.size() && in[i + 1] == 'x') {
            auto hex = [](char c) -> int {
                if (c >= '0' && c <= '9') return c - '0';
                if (c >= 'a' && c <= 'f') return c - 'a' + 10;
                if (c >= 'A' && c <= 'F') return c - 'A' + 10;
                return -1;
            };
            if (i + 3 >= in.size()) return false;
            int hi = hex(in[i + 2]), lo = hex(in[i + 3]);
            if (hi < 0 || lo < 0) return false;
            out += static_cast<char>(hi * 16 + lo);
            i += 3;
        } else {
            out += in[i];
        }
    }
    return true;
}

REACTOR_INLINE bool ServerSupportedFeatures::acceptable(const std::string& key, const std::vector<std::string>& values) {
    if (key == "NICKLEN" || key == "CHANNELLEN") return detail::intOrNone(values[0]).has_value();
    // Twisted takes any PREFIX with a ')' (pairing modes and symbols up to
    // the shorter list); without one it keeps the old value. Empty: None.
    if (key == "PREFIX") return values[0].empty() || values[0].find(')') != std::string::npos;
    if (key == "CHANMODES") return values.size() <= 4;
    return true;
}

REACTOR_INLINE IRCClient::IRCClient(IReactorTime* timeSource) : clock(timeSource) {
    delimiter = "\n";  // dataReceived turns CR into LF: CR, LF and CRLF all end a line
    // MAX_LENGTH stays LineReceiver's (and Twisted's) 16384: a line with
    // IRCv3 tags, or from a network with a larger LINELEN, is delivered whole.
}

REACTOR_INLINE IRCClient::IRCClient(Reactor* r) : IRCClient(static_cast<IReactorTime*>(r)) { reactor_ = r; }

REACTOR_INLINE IRCClient::~IRCClient() {
    cancelTimers();
    dropShutdownTrigger();
    // Destroyed while the shutdown waits for us (without connectionLost):
    // let it go on, from the loop rather than from a destructor.
    if (shutdownDone_ && reactor_) reactor_->callLater(0, std::move(shutdownDone_));
}

REACTOR_INLINE void IRCClient::quitForShutdown(std::function<void()> done) {
    if (!connected || !transport || transport->disconnecting) return done();
    shutdownDone_ = std::move(done);
    while (queueHead_ < queue_.size()) reallySendLine(queue_[queueHead_++]);  // promised lines first
    queue_.clear();
    queueHead_ = 0;
    cancelTimers();
    std::string quitLine = "QUIT :" + shutdownMessage;
    if (detail::hasUnsafeChar(shutdownMessage) || quitLine.size() > maxLineBytes) quitLine = "QUIT";
    reallySendLine(quitLine);
    // Half-close once QUIT is flushed: the server reads it, then our EOF, and
    // closes (as it does after any QUIT); connectionLost then calls done.
    transport->loseWriteConnection();
    if (quitTimeout >= 0 && clock)
        quitTimer_ = clock->callLater(quitTimeout, [this] {
            quitTimer_ = DelayedCall();
            reactor::log(LogLevel::warning, "irc: the server did not take our QUIT within quitTimeout; aborting");
            if (transport) transport->abortConnection();
        });
}

REACTOR_INLINE void IRCClient::dropShutdownTrigger() {
    if (shutdownTrigger_ == 0 || !reactor_) return;
    reactor_->removeSystemEventTrigger(shutdownTrigger_);
    shutdownTrigger_ = 0;
}

REACTOR_INLINE const std::vector<std::pair<std::string, std::string>>& IRCClient::tags() const {
    static const std::vector<std::pair<std::string, std::string>> none;
    return currentTags_ ? *currentTags_ : none;
}

REACTOR_INLINE void IRCClient::connectionMade() {
    supported = ServerSupportedFeatures();
    registered_ = false;
    negotiating_ = false;
    capsAvailable_.clear();
    capsEnabled_.clear();
    lsOffered_.clear();
    capsPending_ = 0;
    sasl_ = Sasl::idle;
    account_.clear();
    capLsDue_ = capNegotiation;
    if (reactor_) {
        dropShutdownTrigger();
        shutdownTrigger_ = reactor_->addAsyncSystemEventTrigger(
            "before", "shutdown", [this](std::function<void()> done) { quitForShutdown(std::move(done)); });
    }
    if (performLogin) register_(nickname);
}

REACTOR_INLINE void IRCClient::connectionLost(const Failure& reason) {
    (void)reason;
    cancelTimers();
    dropShutdownTrigger();
    // The shutdown waited for this close: it goes on from the loop, not
    // from inside the transport's close.
    if (shutdownDone_) reactor_->callLater(0, std::move(shutdownDone_));
    shutdownDone_ = nullptr;
    queue_.clear();
    queueHead_ = 0;
    registered_ = false;  // a reused client starts its next connection afresh
    negotiating_ = capLsDue_ = false;
    capsPending_ = 0;
    lsOffered_.clear();
    userHost_.clear();
    names_.clear();
    namesHeld_ = 0;
    namesOverflowLogged_ = false;
    pings_.clear();
    // The transport's input ends here: a partial line must not be glued
    // onto the first line of a later connection, nor an over-long line's
    // tail swallow it, nor a half-collected MOTD or a pause carry over.
    clearLineBuffer();
    discarding_ = false;
    afterOverflow_.clear();
    motd.reset();
    motdOverflowLogged_ = false;
    paused_ = false;
}

REACTOR_INLINE void IRCClient::dataReceived(std::string_view data) {
    inbound_.clear();
    for (char c : data) {
        if (discarding_) {  // the tail of an over-long line
            if (c == '\n' || c == '\r') discarding_ = false;
            continue;
        }
        inbound_ += c == '\r' ? '\n' : c;
    }
    LineReceiver::dataReceived(inbound_);
    while (!afterOverflow_.empty()) {  // lines that followed an over-long one
        std::string rest = std::move(afterOverflow_);
        afterOverflow_.clear();
        LineReceiver::dataReceived(rest);
    }
}

REACTOR_INLINE void IRCClient::lineLengthExceeded(std::string_view line) {
    reactor::log(LogLevel::warning, "irc: dropped a server line over MAX_LENGTH (" + std::to_string(MAX_LENGTH) +
                                        " bytes); the connection stays up");
    std::size_t nl = line.find('\n');
    if (nl == std::string_view::npos)
        discarding_ = true;
    else
        afterOverflow_.assign(line.substr(nl + 1));  // LineReceiver stops here; dataReceived resumes
}

REACTOR_INLINE void IRCClient::lineReceived(std::string_view line) {
    if (line.empty()) return;  // the LF of a CRLF, or a blank line
    if (line.find('\0') != std::string_view::npos) return badMessage(line, "NUL byte in line");
    Message m = parsemsg(line);
    if (!m) return badMessage(line, m.error);
    std::string command = m.command;
    for (char& c : command) c = detail::asciiUpper(c);
    std::string_view symbolic = numericToSymbolic(command);
    if (!symbolic.empty()) command = std::string(symbolic);
    currentTags_ = &m.tags;
    reactor::detail::runGuarded("IRCClient::handleCommand", [&] { handleCommand(command, m.prefix, m.params); });
    currentTags_ = nullptr;
}

REACTOR_INLINE void IRCClient::handleCommand(const std::string& command, const std::string& prefix,
                                             const std::vector<std::string>& params) {
    using Handler = void (IRCClient::*)(const std::string&, const std::vector<std::string>&);
    static const std::pair<const char*, Handler> handlers[] = {
        {"PING", &IRCClient::irc_PING}, {"PRIVMSG", &IRCClient::irc_PRIVMSG},
        {"NOTICE", &IRCClient::irc_NOTICE}, {"JOIN", &IRCClient::irc_JOIN},
        {"PART", &IRCClient::irc_PART}, {"QUIT", &IRCClient::irc_QUIT},
        {"KICK", &IRCClient::irc_KICK}, {"TOPIC", &IRCClient::irc_TOPIC},
        {"NICK", &IRCClient::irc_NICK}, {"MODE", &IRCClient::irc_MODE}, {"INVITE", &IRCClient::irc_INVITE},
        {"CAP", &IRCClient::irc_CAP}, {"AUTHENTICATE", &IRCClient::irc_AUTHENTICATE},
        {"AWAY", &IRCClient::irc_AWAY}, {"ACCOUNT", &IRCClient::irc_ACCOUNT}, {"TAGMSG", &IRCClient::irc_TAGMSG},
        {"RPL_LOGGEDIN", &IRCClient::irc_RPL_LOGGEDIN}, {"RPL_SASLSUCCESS", &IRCClient::irc_RPL_SASLSUCCESS},
        {"ERR_NICKLOCKED", &IRCClient::irc_ERR_SASLFAIL}, {"ERR_SASLFAIL", &IRCClient::irc_ERR_SASLFAIL},
        {"ERR_SASLTOOLONG", &IRCClient::irc_ERR_SASLFAIL}, {"ERR_SASLABORTED", &IRCClient::irc_ERR_SASLFAIL},
        {"ERR_SASLALREADY", &IRCClient::irc_ERR_SASLALREADY}, {"ERR_UNKNOWNCOMMAND", &IRCClient::irc_ERR_UNKNOWNCOMMAND},
        {"RPL_WELCOME", &IRCClient::irc_RPL_WELCOME}, {"RPL_YOURHOST", &IRCClient::irc_RPL_YOURHOST},
        {"RPL_CREATED", &IRCClient::irc_RPL_CREATED}, {"RPL_MYINFO", &IRCClient::irc_RPL_MYINFO},
        {"RPL_ISUPPORT", &IRCClient::irc_RPL_ISUPPORT}, {"RPL_BOUNCE", &IRCClient::irc_RPL_BOUNCE},
        {"RPL_LUSERCLIENT", &IRCClient::irc_RPL_LUSERCLIENT}, {"RPL_LUSEROP", &IRCClient::irc_RPL_LUSEROP},
        {"RPL_LUSERCHANNELS", &IRCClient::irc_RPL_LUSERCHANNELS}, {"RPL_LUSERME", &IRCClient::irc_RPL_LUSERME},
        {"RPL_TOPIC", &IRCClient::irc_RPL_TOPIC}, {"RPL_NOTOPIC", &IRCClient::irc_RPL_NOTOPIC},
        {"RPL_MOTDSTART", &IRCClient::irc_RPL_MOTDSTART}, {"RPL_MOTD", &IRCClient::irc_RPL_MOTD},
        {"RPL_ENDOFMOTD", &IRCClient::irc_RPL_ENDOFMOTD}, {"RPL_NAMREPLY", &IRCClient::irc_RPL_NAMREPLY},
        {"RPL_ENDOFNAMES", &IRCClient::irc_RPL_ENDOFNAMES},
        {"ERR_NICKNAMEINUSE", &IRCClient::irc_ERR_NICKNAMEINUSE},
        {"ERR_ERRONEUSNICKNAME", &IRCClient::irc_ERR_ERRONEUSNICKNAME},
        {"ERR_PASSWDMISMATCH", &IRCClient::irc_ERR_PASSWDMISMATCH},
    };
    for (const auto& h : handlers)
        if (command == h.first) return (this->*h.second)(prefix, params);
    irc_unknown(prefix, command, params);
}

REACTOR_INLINE void IRCClient::irc_PING(const std::string& prefix, const std::vector<std::string>& params) {
    (void)prefix;
    if (!need(params, 1, "PING")) return;
    const std::string& token = params.back();
    bool plain = !token.empty() && token[0] != ':' && token.find(' ') == std::string::npos;
    std::string pong = (plain ? "PONG " : "PONG :") + token;
    // Ahead of the lineRate queue: a PONG stuck behind queued lines
    // would miss the server's ping timeout and get us disconnected.
    if (!detail::hasUnsafeChar(pong) && pong.size() <= maxLineBytes) reallySendLine(pong);
}

REACTOR_INLINE void IRCClient::irc_PRIVMSG(const std::string& prefix, const std::vector<std::string>& params) {
    if (!need(params, 2, "PRIVMSG")) return;
    const std::string& message = params.back();
    if (message.empty()) return;
    if (message[0] == X_DELIM) {
        CtcpExtracted m = ctcpExtract(message);
        if (!m.extended.empty()) ctcpQuery(prefix, params[0], m.extended);
        if (m.normal.empty()) return;
        return privmsg(prefix, params[0], join(m.normal));
    }
    privmsg(prefix, params[0], message);
}

REACTOR_INLINE void IRCClient::irc_NOTICE(const std::string& prefix, const std::vector<std::string>& params) {
    if (!need(params, 2, "NOTICE")) return;
    const std::string& message = params.back();
    if (message.empty()) return;
    if (message[0] == X_DELIM) {
        CtcpExtracted m = ctcpExtract(message);
        if (!m.extended.empty()) ctcpReply(prefix, params[0], m.extended);
        if (m.normal.empty()) return;
        return noticed(prefix, params[0], join(m.normal));
    }
    noticed(prefix, params[0], message);
}

REACTOR_INLINE void IRCClient::irc_JOIN(const std::string& prefix, const std::vector<std::string>& params) {
    if (!need(params, 1, "JOIN")) return;
    std::string nick = detail::nickOf(prefix);
    const std::string& channel = params[0];  // extended-join adds account and real name after it
    if (nickEquals(nick, nickname)) {
        userHost_ = prefix.substr(nick.size());  // "!user@host": sizes msg() lines exactly
        joined(channel);
    } else {
        userJoined(nick, channel);
    }
    if (params.size() >= 3 && capEnabled("extended-join"))
        extendedJoin(nick, channel, params[1] == "*" ? std::nullopt : std::optional<std::string>(params[1]), params[2]);
}

REACTOR_INLINE void IRCClient::irc_PART(const std::string& prefix, const std::vector<std::string>& params) {
    if (!need(params, 1, "PART")) return;
    std::string nick = detail::nickOf(prefix);
    if (nickEquals(nick, nickname))
        left(params[0]);
    else
        userLeft(nick, params[0]);
}

REACTOR_INLINE void IRCClient::irc_QUIT(const std::string& prefix, const std::vector<std::string>& params) {
    userQuit(detail::nickOf(prefix), params.empty() ? std::string() : params[0]);
}

REACTOR_INLINE void IRCClient::irc_KICK(const std::string& prefix, const std::vector<std::string>& params) {
    if (!need(params, 2, "KICK")) return;
    std::string kicker = detail::nickOf(prefix);
    std::string message = params.size() > 2 ? params[2] : std::string();
    if (nickEquals(params[1], nickname))
        kickedFrom(params[0], kicker, message);
    else
        userKicked(params[1], params[0], kicker, message);
}

REACTOR_INLINE void IRCClient::irc_TOPIC(const std::string& prefix, const std::vector<std::string>& params) {
    if (!need(params, 2, "TOPIC")) return;
    topicUpdated(detail::nickOf(prefix), params[0], params[1]);
}

REACTOR_INLINE bool IRCClient::capEnabled(std::string_view cap) const {
    return std::find(capsEnabled_.begin(), capsEnabled_.end(), cap) != capsEnabled_.end();
}

REACTOR_INLINE std::optional<double> IRCClient::serverTime() const {
    for (const auto& t : tags())
        if (t.first == "time") return detail::parseServerTime(t.second);
    return std::nullopt;
}

REACTOR_INLINE void IRCClient::irc_CAP(const std::string& prefix, const std::vector<std::string>& params) {
    (void)prefix;
    if (!need(params, 3, "CAP")) return;
    std::string sub = params[1];
    for (char& c : sub) c = detail::asciiUpper(c);
    const bool more = params.size() >= 4 && params[2] == "*";  // "CAP * LS * :..." continues (302)
    std::vector<std::string> caps;
    std::string_view list = params.back();
    while (!list.empty()) {
        std::size_t sp = list.find(' ');
        if (sp != 0) caps.emplace_back(list.substr(0, sp));
        if (sp == std::string_view::npos) break;
        list.remove_prefix(sp + 1);
    }
    auto offer = [&](const std::vector<std::string>& tokens, std::vector<std::string>& names) {
        for (const std::string& token : tokens) {
            std::size_t eq = token.find('=');
            std::string name = token.substr(0, eq), value = eq == std::string::npos ? "" : token.substr(eq + 1);
            auto it = std::find_if(capsAvailable_.begin(), capsAvailable_.end(), [&](const auto& a) { return a.first == name; });
            if (it != capsAvailable_.end()) it->second = value;
            else if (capsAvailable_.size() < 256) capsAvailable_.emplace_back(name, value);  // a bounded list
            names.push_back(name);
        }
    };
    if (sub == "LS") {
        if (lsOffered_.size() + caps.size() > 1024) return;  // a hostile server's endless LS
        lsOffered_.insert(lsOffered_.end(), caps.begin(), caps.end());
        if (more) return;
        std::vector<std::string> tokens = std::move(lsOffered_), names;
        lsOffered_.clear();
        offer(tokens, names);
        if (negotiating_ && capsPending_ == 0) capRequest(names);
    } else if (sub == "NEW") {
        std::vector<std::string> names;
        offer(caps, names);
        capRequest(names);
    } else if (sub == "DEL") {
        std::vector<std::string> gone;
        for (const std::string& c : caps) {
            capsAvailable_.erase(std::remove_if(capsAvailable_.begin(), capsAvailable_.end(),
                                                [&](const auto& a) { return a.first == c; }),
                                 capsAvailable_.end());
            auto it = std::find(capsEnabled_.begin(), capsEnabled_.end(), c);
            if (it != capsEnabled_.end()) {
                capsEnabled_.erase(it);
                gone.push_back(c);
            }
        }
        if (!gone.empty()) capsDisabled(gone);
    } else if (sub == "ACK" || sub == "NAK") {
        if (sub == "NAK") {
            capsRefused(caps);
        } else {
            std::vector<std::string> on, off;
            for (const std::string& c : caps) {
                if (!c.empty() && c[0] == '-') {
                    auto it = std::find(capsEnabled_.begin(), capsEnabled_.end(), c.substr(1));
                    if (it != capsEnabled_.end()) capsEnabled_.erase(it);
                    off.push_back(c.substr(1));
                } else if (!capEnabled(c)) {
                    capsEnabled_.push_back(c);
                    on.push_back(c);
                }
            }
            if (!on.empty()) capsEnabled(on);
            if (!off.empty()) capsDisabled(off);
        }
        if (more) return;
        if (capsPending_ > 0) --capsPending_;
        if (capsPending_ > 0) return;
        if (capEnabled("sasl") && sasl_ == Sasl::idle && !saslUsername.empty() && !saslPassword.empty() && negotiating_) {
            sasl_ = Sasl::started;
            sendLine("AUTHENTICATE PLAIN");
            return;
        }
        if (sasl_ != Sasl::started) capDone();
    }
}

REACTOR_INLINE void IRCClient::capRequest(const std::vector<std::string>& offered) {
    std::vector<std::string> wanted;
    for (const std::string& name : offered) {
        if (capEnabled(name) || std::find(wanted.begin(), wanted.end(), name) != wanted.end()) continue;
        bool want = std::find(capRequests.begin(), capRequests.end(), name) != capRequests.end();
        if (name == "sasl" && !saslUsername.empty() && !saslPassword.empty() && sasl_ == Sasl::idle && negotiating_) {
            auto it = std::find_if(capsAvailable_.begin(), capsAvailable_.end(), [](const auto& a) { return a.first == "sasl"; });
            const std::string mechs = "," + (it == capsAvailable_.end() ? std::string() : it->second) + ",";
            want = mechs == ",," || mechs.find(",PLAIN,") != std::string::npos;  // no list (3.1): try PLAIN
        }
        // A name that could shift or end the REQ line is not requested.
        if (want && name.find_first_of(std::string_view(" :\r\n\0", 5)) == std::string::npos) wanted.push_back(name);
    }
    std::string line;
    auto flush = [&] {
        if (line.empty()) return;
        if (sendLine("CAP REQ :" + line)) ++capsPending_;
        line.clear();
    };
    for (const std::string& name : wanted) {
        if (!line.empty() && 9 + line.size() + 1 + name.size() > maxLineBytes) flush();
        line += (line.empty() ? "" : " ") + name;
    }
    flush();
    if (capsPending_ == 0) capDone();  // nothing to ask: registration goes on
}

REACTOR_INLINE void IRCClient::capDone() {
    if (!negotiating_) return;
    negotiating_ = false;
    sendLine("CAP END");
}

REACTOR_INLINE void IRCClient::endCapNegotiation() { capDone(); }

REACTOR_INLINE void IRCClient::irc_AUTHENTICATE(const std::string& prefix, const std::vector<std::string>& params) {
    (void)prefix;
    if (!need(params, 1, "AUTHENTICATE")) return;
    if (params[0] != "+" || sasl_ != Sasl::started) return;
    std::string payload = detail::base64(saslUsername + std::string(1, '\0') + saslUsername + std::string(1, '\0') + saslPassword);
    // 400-byte pieces; a payload that ends on a piece boundary ends with "+".
    for (std::size_t at = 0; at < payload.size(); at += 400) sendLine("AUTHENTICATE " + payload.substr(at, 400));
    if (payload.size() % 400 == 0) sendLine("AUTHENTICATE +");
}

REACTOR_INLINE void IRCClient::irc_AWAY(const std::string& prefix, const std::vector<std::string>& params) {
    userAway(detail::nickOf(prefix), params.empty() ? std::nullopt : std::optional<std::string>(params[0]));
}

REACTOR_INLINE void IRCClient::irc_ACCOUNT(const std::string& prefix, const std::vector<std::string>& params) {
    if (!need(params, 1, "ACCOUNT")) return;
    userAccount(detail::nickOf(prefix), params[0] == "*" ? std::nullopt : std::optional<std::string>(params[0]));
}

REACTOR_INLINE void IRCClient::irc_TAGMSG(const std::string& prefix, const std::vector<std::string>& params) {
    if (need(params, 1, "TAGMSG")) tagMessage(prefix, params[0]);
}

REACTOR_INLINE void IRCClient::irc_RPL_LOGGEDIN(const std::string& prefix, const std::vector<std::string>& params) {
    (void)prefix;
    if (!need(params, 3, "RPL_LOGGEDIN")) return;
    account_ = params[2];
    loggedIn(account_);
}

REACTOR_INLINE void IRCClient::irc_RPL_SASLSUCCESS(const std::string& prefix, const std::vector<std::string>& params) {
    (void)prefix, (void)params;
    if (sasl_ != Sasl::started) return;
    sasl_ = Sasl::done;
    capDone();
}

REACTOR_INLINE void IRCClient::irc_ERR_SASLFAIL(const std::string& prefix, const std::vector<std::string>& params) {
    (void)prefix;
    if (sasl_ != Sasl::started) return;  // one attempt, one callback
    sasl_ = Sasl::done;
    saslFailed(params.empty() ? std::string() : params.back());
}

REACTOR_INLINE void IRCClient::irc_ERR_SASLALREADY(const std::string& prefix, const std::vector<std::string>& params) {
    (void)prefix, (void)params;
    if (sasl_ != Sasl::started) return;
    sasl_ = Sasl::done;
    capDone();
}

REACTOR_INLINE void IRCClient::irc_ERR_UNKNOWNCOMMAND(const std::string& prefix, const std::vector<std::string>& params) {
    if (params.size() >= 2 && params[1] == "CAP") {  // no IRCv3 here: nothing waits for CAP replies
        negotiating_ = false;
        capsPending_ = 0;
        return;
    }
    irc_unknown(prefix, "ERR_UNKNOWNCOMMAND", params);
}

REACTOR_INLINE void IRCClient::saslFailed(const std::string& reason) {
    reactor::log(LogLevel::error, "irc: SASL authentication failed: " + reactor::detail::printable(reason));
    negotiating_ = false;
    reallySendLine("QUIT :SASL authentication failed");  // ahead of any lineRate queue
    if (transport) transport->loseConnection();
}

REACTOR_INLINE void IRCClient::irc_INVITE(const std::string& prefix, const std::vector<std::string>& params) {
    if (!need(params, 2, "INVITE")) return;
    if (nickEquals(params[0], nickname)) invited(detail::nickOf(prefix), params[1]);
}

REACTOR_INLINE void IRCClient::irc_NICK(const std::string& prefix, const std::vector<std::string>& params) {
    if (!need(params, 1, "NICK")) return;
    std::string nick = detail::nickOf(prefix);
    if (nickEquals(nick, nickname))
        nickChanged(params[0]);
    else
        userRenamed(nick, params[0]);
}

REACTOR_INLINE void IRCClient::irc_MODE(const std::string& prefix, const std::vector<std::string>& params) {
    if (!need(params, 2, "MODE")) return;
    const std::string& channel = params[0];
    std::string modes = params[1];
    if (modes.empty() || (modes[0] != '+' && modes[0] != '-')) modes.insert(modes.begin(), '+');
    std::vector<std::string> args(params.begin() + 2, params.end());
    auto paramModes = nickEquals(channel, nickname) ? getUserModeParams() : getChannelModeParams();
    ParsedModes parsed = parseModes(modes, std::move(args), paramModes);
    if (!parsed.ok()) {
        reactor::log(LogLevel::warning, "irc: bad MODE message (" + reactor::detail::printable(parsed.error) + ")");
        return;
    }
    auto report = [&](bool set, const std::vector<ModeChange>& changes) {
        if (changes.empty()) return;
        std::string letters;
        std::vector<std::optional<std::string>> changeArgs;
        for (const auto& c : changes) {
            letters += c.mode;
            changeArgs.push_back(c.param);
        }
        modeChanged(prefix, channel, set, letters, changeArgs);
    };
    report(true, parsed.added);
    report(false, parsed.removed);
}

REACTOR_INLINE void IRCClient::irc_RPL_WELCOME(const std::string& prefix, const std::vector<std::string>& params) {
    hostname = prefix;
    registered_ = true;
    // Registered before any CAP reply: the server ignored CAP LS (or
    // refused it as "not registered"); nothing is negotiated any more.
    if (negotiating_ && capsAvailable_.empty() && lsOffered_.empty() && capsPending_ == 0) negotiating_ = false;
    if (!params.empty() && !params[0].empty())
        nickname = params[0];
    else if (!attemptedNick_.empty())
        nickname = attemptedNick_;
    signedOn();
    startHeartbeat();
}

REACTOR_INLINE void IRCClient::irc_RPL_YOURHOST(const std::string& prefix, const std::vector<std::string>& params) {
    (void)prefix;
    if (need(params, 2, "RPL_YOURHOST")) yourHost(params[1]);
}

REACTOR_INLINE void IRCClient::irc_RPL_CREATED(const std::string& prefix, const std::vector<std::string>& params) {
    (void)prefix;
    if (need(params, 2, "RPL_CREATED")) created(params[1]);
}

REACTOR_INLINE void IRCClient::irc_RPL_MYINFO(const std::string& prefix, const std::vector<std::string>& params) {
    (void)prefix;
    if (!need(params, 2, "RPL_MYINFO")) return;
    std::vector<std::string> info;
    if (params.size() >= 3) {
        info.assign(params.begin() + 1, params.end());
    } else {
        std::string_view s = params[1];
        while (!s.empty() && info.size() < 3) {
            std::size_t sp = s.find(' ');
            if (sp != 0) info.emplace_back(s.substr(0, sp));
            if (sp == std::string_view::npos) s = {};
            else s.remove_prefix(sp + 1);
        }
        if (!s.empty()) info.emplace_back(s);
    }
    info.resize(std::max<std::size_t>(info.size(), 4));
    myInfo(info[0], info[1], info[2], info[3]);
}

REACTOR_INLINE void IRCClient::irc_RPL_ISUPPORT(const std::string& prefix, const std::vector<std::string>& params) {
    (void)prefix;
    std::vector<std::string> options;
    if (params.size() > 2) options.assign(params.begin() + 1, params.end() - 1);
    supported.parse(options);
    isupport(options);
}

REACTOR_INLINE void IRCClient::irc_RPL_BOUNCE(const std::string& prefix, const std::vector<std::string>& params) {
    (void)prefix;
    if (need(params, 2, "RPL_BOUNCE")) bounce(params[1]);
}

REACTOR_INLINE void IRCClient::irc_RPL_LUSERCLIENT(const std::string& prefix, const std::vector<std::string>& params) {
    (void)prefix;
    if (need(params, 2, "RPL_LUSERCLIENT")) luserClient(params[1]);
}

REACTOR_INLINE void IRCClient::irc_RPL_LUSEROP(const std::string& prefix, const std::vector<std::string>& params) {
    (void)prefix;
    int n = 0;
    if (params.size() >= 2 && detail::parseInt(params[1], n)) luserOp(n);
}

REACTOR_INLINE void IRCClient::irc_RPL_LUSERCHANNELS(const std::string& prefix, const std::vector<std::string>& params) {
    (void)prefix;
    int n = 0;
    if (params.size() >= 2 && detail::parseInt(params[1], n)) luserChannels(n);
}

REACTOR_INLINE void IRCClient::irc_RPL_LUSERME(const std::string& prefix, const std::vector<std::string>& params) {
    (void)prefix;
    if (need(params, 2, "RPL_LUSERME")) luserMe(params[1]);
}

REACTOR_INLINE void IRCClient::irc_RPL_TOPIC(const std::string& prefix, const std::vector<std::string>& params) {
    if (need(params, 3, "RPL_TOPIC")) topicUpdated(detail::nickOf(prefix), params[1], params[2]);
}

REACTOR_INLINE void IRCClient::irc_RPL_NOTOPIC(const std::string& prefix, const std::vector<std::string>& params) {
    if (need(params, 2, "RPL_NOTOPIC")) topicUpdated(detail::nickOf(prefix), params[1], std::string());
}

REACTOR_INLINE void IRCClient::irc_RPL_MOTDSTART(const std::string& prefix, const std::vector<std::string>& params) {
    (void)prefix;
    motd.emplace();
    if (maxMOTDLines > 0) motd->push_back(motdLine(params));
    motdOverflowLogged_ = false;
}

REACTOR_INLINE void IRCClient::irc_RPL_MOTD(const std::string& prefix, const std::vector<std::string>& params) {
    (void)prefix;
    if (!motd) motd.emplace();
    if (motd->size() >= maxMOTDLines) {
        if (!motdOverflowLogged_)
            reactor::log(LogLevel::warning, "irc: MOTD longer than maxMOTDLines (" + std::to_string(maxMOTDLines) +
                                                "); the rest is dropped");
        motdOverflowLogged_ = true;
        return;
    }
    motd->push_back(motdLine(params));
}

REACTOR_INLINE void IRCClient::irc_RPL_ENDOFMOTD(const std::string& prefix, const std::vector<std::string>& params) {
    (void)prefix;
    (void)params;
    std::vector<std::string> lines = motd ? std::move(*motd) : std::vector<std::string>();
    motd.reset();
    motdOverflowLogged_ = false;
    receivedMOTD(lines);
}

REACTOR_INLINE void IRCClient::irc_RPL_NAMREPLY(const std::string& prefix, const std::vector<std::string>& params) {
    (void)prefix;
    if (!need(params, 3, "RPL_NAMREPLY")) return;
    const std::string& channel = params[params.size() - 2];
    std::size_t at = names_.size();
    for (std::size_t i = names_.size(); i-- > 0;)  // newest first: servers reply a channel at a time
        if (names_[i].first == channel) {
            at = i;
            break;
        }
    if (at == names_.size()) {
        if (!namesRoom(at)) return;
        names_.emplace_back(channel, std::vector<std::string>());
        at = names_.size() - 1;
        ++namesHeld_;
    }
    std::string_view s = params.back();
    while (!s.empty()) {
        std::size_t sp = s.find(' ');
        if (sp != 0) {
            if (!namesRoom(at)) return;
            names_[at].second.emplace_back(s.substr(0, sp));
            ++namesHeld_;
        }
        if (sp == std::string_view::npos) break;
        s.remove_prefix(sp + 1);
    }
}

REACTOR_INLINE void IRCClient::irc_RPL_ENDOFNAMES(const std::string& prefix, const std::vector<std::string>& params) {
    (void)prefix;
    if (!need(params, 2, "RPL_ENDOFNAMES")) return;
    std::vector<std::string> nicks;
    for (auto it = names_.begin(); it != names_.end(); ++it)
        if (it->first == params[1]) {
            nicks = std::move(it->second);
            namesHeld_ -= nicks.size() + 1;
            names_.erase(it);
            break;
        }
    receivedNames(params[1], nicks);
}

REACTOR_INLINE void IRCClient::irc_ERR_NICKNAMEINUSE(const std::string& prefix, const std::vector<std::string>& params) {
    (void)prefix;
    (void)params;
    attemptedNick_ = alterCollidedNick(attemptedNick_.empty() ? nickname : attemptedNick_);
    setNick(attemptedNick_);
}

REACTOR_INLINE void IRCClient::irc_ERR_ERRONEUSNICKNAME(const std::string& prefix, const std::vector<std::string>& params) {
    (void)prefix;
    (void)params;
    if (!registered_) setNick(erroneousNickFallback);
}

REACTOR_INLINE void IRCClient::irc_ERR_PASSWDMISMATCH(const std::string& prefix, const std::vector<std::string>& params) {
    (void)prefix;
    (void)params;
    reactor::log(LogLevel::error, "irc: Password Incorrect.");
}

REACTOR_INLINE void IRCClient::irc_unknown(const std::string& prefix, const std::string& command,
                                           const std::vector<std::string>& params) {
    (void)prefix;
    (void)command;
    (void)params;
}

REACTOR_INLINE void IRCClient::modeChanged(const std::string& user, const std::string& channel, bool set, const std::string& modes,
                                           const std::vector<std::optional<std::string>>& args) {
    (void)user, (void)channel, (void)set, (void)modes, (void)args;
}

REACTOR_INLINE void IRCClient::badMessage(std::string_view line, const std::string& why) {
    reactor::log(LogLevel::warning, "irc: ignored a bad server line (" + why + "): " + reactor::detail::printable(line));
}

REACTOR_INLINE std::string IRCClient::alterCollidedNick(const std::string& nick) {
    // A 433 usually comes before 005: without an announced NICKLEN the
    // default (9) is a guess, so just append, as Twisted does.
    if (!supported.announced("NICKLEN")) return nick + "_";
    std::size_t limit = static_cast<std::size_t>(std::max(1, supported.nickLen()));
    if (nick.size() < limit) return nick + "_";
    std::string out = nick.substr(0, limit);
    char& last = out.back();
    last = (last >= '0' && last < '9') ? static_cast<char>(last + 1) : (last == '9' ? '_' : '0');
    return out;
}

REACTOR_INLINE std::pair<std::string, std::string> IRCClient::getChannelModeParams() {
    std::string prefixModes;
    for (const auto& p : supported.prefix()) prefixModes += p.mode;
    ServerSupportedFeatures::ChanModes cm = supported.chanModes();
    std::string removing = prefixModes + cm.addressModes + cm.param;
    return {removing + cm.setParam, removing};
}

REACTOR_INLINE void IRCClient::startHeartbeat() {
    stopHeartbeat();
    if (heartbeatInterval <= 0 || !clock) return;
    heartbeat_ = clock->callLater(heartbeatInterval, [this] {
        sendHeartbeat();
        startHeartbeat();
    });
}

REACTOR_INLINE void IRCClient::stopHeartbeat() {
    if (heartbeat_.active()) heartbeat_.cancel();
    heartbeat_ = DelayedCall();
}

REACTOR_INLINE void IRCClient::ctcpQuery(const std::string& user, const std::string& channel, const std::vector<CtcpMessage>& messages) {
    std::vector<std::string> seen;
    for (const CtcpMessage& m : messages) {
        if (std::find(seen.begin(), seen.end(), m.tag) != seen.end()) continue;
        seen.push_back(m.tag);
        if (m.tag == "ACTION") ctcpQuery_ACTION(user, channel, m.data);
        else if (m.tag == "DCC") ctcpQuery_DCC(user, channel, m.data);
        else if (m.tag == "PING") ctcpQuery_PING(user, channel, m.data);
        else if (m.tag == "VERSION") ctcpQuery_VERSION(user, channel, m.data);
        else if (m.tag == "SOURCE") ctcpQuery_SOURCE(user, channel, m.data);
        else if (m.tag == "USERINFO") ctcpQuery_USERINFO(user, channel, m.data);
        else if (m.tag == "FINGER") ctcpQuery_FINGER(user, channel, m.data);
        else if (m.tag == "CLIENTINFO") ctcpQuery_CLIENTINFO(user, channel, m.data);
        else if (m.tag == "ERRMSG") ctcpQuery_ERRMSG(user, channel, m.data);
        else if (m.tag == "TIME") ctcpQuery_TIME(user, channel, m.data);
        else ctcpUnknownQuery(user, channel, m.tag, m.data);
    }
}

REACTOR_INLINE void IRCClient::ctcpQuery_PING(const std::string& user, const std::string& channel, const std::optional<std::string>& data) {
    (void)channel;
    ctcpMakeReply(detail::nickOf(user), {{"PING", data}});
}

REACTOR_INLINE void IRCClient::ctcpQuery_DCC(const std::string& user, const std::string& channel, const std::optional<std::string>& data) {
    if (!data || data->empty()) return;
    std::string_view rest = *data;
    std::size_t start = rest.find_first_not_of(" \t");
    if (start == std::string_view::npos) return;
    std::string type(rest.substr(start, rest.find_first_of(" \t", start) - start));
    for (char& c : type) c = detail::asciiUpper(c);
    // Twisted drops len(type) + 1 characters, whatever they are.
    rest = rest.size() > type.size() + 1 ? rest.substr(type.size() + 1) : std::string_view();
    if (type != "SEND" && type != "CHAT" && type != "RESUME" && type != "ACCEPT") {
        ctcpMakeReply(detail::nickOf(user), {{"ERRMSG", "DCC " + *data + " :Unknown DCC type '" + type + "'"}});
        quirkyMessage(user + " offered unknown DCC type " + type);
        return;
    }
    auto bad = [&](const std::string& why) {
        reactor::log(LogLevel::warning, "irc: malformed DCC " + type + " request from " +
                                            reactor::detail::printable(user) + ": " + reactor::detail::printable(why));
    };
    std::vector<std::string> words;
    if (!detail::shellSplit(rest, words)) return bad("no closing quotation: " + std::string(rest));
    if (words.size() < 3) return bad(std::string(rest));
    if (type == "RESUME" || type == "ACCEPT") {
        std::optional<int> port = detail::intOrNone(words[1]);
        std::optional<std::int64_t> pos = detail::int64OrNone(words[2]);
        if (!port || !pos) return;  // as Twisted: silently ignored
        if (type == "RESUME") dccDoResume(user, words[0], *port, *pos);
        else dccDoAcceptResume(user, words[0], *port, *pos);
        return;
    }
    std::string address;
    if (!detail::dccParseAddress(words[1], address)) return bad("indecipherable address " + words[1]);
    std::optional<int> port = detail::intOrNone(words[2]);
    if (!port) return bad("indecipherable port " + words[2]);
    if (type == "CHAT") return dccDoChat(user, channel, address, *port, words);
    std::optional<std::int64_t> size = words.size() >= 4 ? detail::int64OrNone(words[3]) : std::nullopt;
    dccDoSend(user, address, *port, words[0], size.value_or(-1), words);
}

REACTOR_INLINE void IRCClient::ctcpQuery_VERSION(const std::string& user, const std::string& channel, const std::optional<std::string>& data) {
    (void)channel;
    if (data) quirkyMessage("Why did " + user + " send '" + *data + "' with a VERSION query?");
    if (versionName.empty()) return;
    ctcpMakeReply(detail::nickOf(user), {{"VERSION", versionName + ":" + versionNum + ":" + versionEnv}});
}

REACTOR_INLINE void IRCClient::ctcpQuery_SOURCE(const std::string& user, const std::string& channel, const std::optional<std::string>& data) {
    (void)channel;
    if (data) quirkyMessage("Why did " + user + " send '" + *data + "' with a SOURCE query?");
    if (sourceURL.empty()) return;
    ctcpMakeReply(detail::nickOf(user), {{"SOURCE", sourceURL}, {"SOURCE", std::nullopt}});
}

REACTOR_INLINE void IRCClient::ctcpQuery_USERINFO(const std::string& user, const std::string& channel, const std::optional<std::string>& data) {
    (void)channel;
    if (data) quirkyMessage("Why did " + user + " send '" + *data + "' with a USERINFO query?");
    if (!userinfo.empty()) ctcpMakeReply(detail::nickOf(user), {{"USERINFO", userinfo}});
}

REACTOR_INLINE void IRCClient::ctcpQuery_FINGER(const std::string& user, const std::string& channel, const std::optional<std::string>& data) {
    (void)channel;
    if (data) quirkyMessage("Why did " + user + " send '" + *data + "' with a FINGER query?");
    if (!fingerReply.empty()) ctcpMakeReply(detail::nickOf(user), {{"FINGER", fingerReply}});
}

REACTOR_INLINE void IRCClient::ctcpQuery_CLIENTINFO(const std::string& user, const std::string& channel, const std::optional<std::string>& data) {
    (void)channel;
    static constexpr std::pair<std::string_view, std::string_view> info[] = {
        {"ACTION", "ACTION text: a /me action"}, {"CLIENTINFO", "CLIENTINFO [tag]: what we answer"},
        {"DCC", "DCC type args: SEND, CHAT, RESUME and ACCEPT offers are read, never transferred"},
        {"ERRMSG", "ERRMSG text: echoes text"}, {"FINGER", "FINGER: who is behind the keyboard"},
        {"PING", "PING data: echoes data"}, {"SOURCE", "SOURCE: where the source is"},
        {"TIME", "TIME: local time"}, {"USERINFO", "USERINFO: user information"},
        {"VERSION", "VERSION: client version"},
    };
    std::string nick = detail::nickOf(user);
    if (!data || data->empty()) {
        std::string all;
        for (const auto& i : info) all += (all.empty() ? "" : " ") + std::string(i.first);
        ctcpMakeReply(nick, {{"CLIENTINFO", all}});
        return;
    }
    std::size_t from = data->find_first_not_of(" \t");  // Twisted: data.split()[0]
    std::string tag = from == std::string::npos ? std::string() : data->substr(from, data->find_first_of(" \t", from) - from);
    for (const auto& i : info)
        if (i.first == tag) {
            ctcpMakeReply(nick, {{"CLIENTINFO", std::string(i.second)}});
            return;
        }
    ctcpMakeReply(nick, {{"ERRMSG", "CLIENTINFO " + *data + " :Unknown query '" + tag + "'"}});
}

REACTOR_INLINE void IRCClient::ctcpQuery_ERRMSG(const std::string& user, const std::string& channel, const std::optional<std::string>& data) {
    (void)channel;
    ctcpMakeReply(detail::nickOf(user), {{"ERRMSG", data.value_or("") + " :No error has occurred."}});
}

REACTOR_INLINE void IRCClient::ctcpQuery_TIME(const std::string& user, const std::string& channel, const std::optional<std::string>& data) {
    (void)channel;
    if (data) quirkyMessage("Why did " + user + " send '" + *data + "' with a TIME query?");
    const std::string text = reactor::detail::os::localTimeText();
    if (text.empty()) return;
    ctcpMakeReply(detail::nickOf(user), {{"TIME", ":" + text}});
}

REACTOR_INLINE void IRCClient::ctcpUnknownQuery(const std::string& user, const std::string& channel, const std::string& tag,
                                                const std::optional<std::string>& data) {
    (void)channel, (void)data;
    reactor::log(LogLevel::info, "irc: unknown CTCP query " + reactor::detail::printable(tag) + " from " + reactor::detail::printable(user));
}

REACTOR_INLINE void IRCClient::ctcpReply(const std::string& user, const std::string& channel, const std::vector<CtcpMessage>& messages) {
    for (const CtcpMessage& m : messages) {
        if (m.tag == "PING")
            ctcpReply_PING(user, channel, m.data);
        else
            ctcpUnknownReply(user, channel, m.tag, m.data);
    }
}

REACTOR_INLINE void IRCClient::ctcpReply_PING(const std::string& user, const std::string& channel, const std::optional<std::string>& data) {
    (void)channel;
    std::string nick = detail::nickOf(user);
    std::string key = data.value_or("");
    for (auto it = pings_.begin(); it != pings_.end(); ++it) {
        if (nickEquals(detail::nickOf(it->user), nick) && it->key == key) {
            double secs = now() - it->sent;
            pings_.erase(it);
            return pong(user, secs);
        }
    }
    reactor::log(LogLevel::warning, "irc: Bogus PING response from " + reactor::detail::printable(user) + ": " + reactor::detail::printable(key));
}

REACTOR_INLINE void IRCClient::ctcpUnknownReply(const std::string& user, const std::string& channel, const std::string& tag,
                                                const std::optional<std::string>& data) {
    (void)channel, (void)data;
    reactor::log(LogLevel::info, "irc: unknown CTCP reply " + reactor::detail::printable(tag) + " from " + reactor::detail::printable(user));
}

REACTOR_INLINE bool IRCClient::join(const std::string& channel, const std::string& key) {
    if (!checkArgs("JOIN", {channel, key}) || !checkMiddle("JOIN", {channel, key})) return false;
    std::string c = withChannelPrefix(channel);
    return sendLine(key.empty() ? "JOIN " + c : "JOIN " + c + " " + key);
}

REACTOR_INLINE bool IRCClient::leave(const std::string& channel, const std::string& reason) {
    if (!checkArgs("PART", {channel, reason}) || !checkMiddle("PART", {channel})) return false;
    std::string c = withChannelPrefix(channel);
    return sendLine(reason.empty() ? "PART " + c : "PART " + c + " :" + reason);
}

REACTOR_INLINE bool IRCClient::kick(const std::string& channel, const std::string& user, const std::string& reason) {
    if (!checkArgs("KICK", {channel, user, reason}) || !checkMiddle("KICK", {channel, user}, 2)) return false;
    std::string line = "KICK " + withChannelPrefix(channel) + " " + user;
    return sendLine(reason.empty() ? line : line + " :" + reason);
}

REACTOR_INLINE bool IRCClient::invite(const std::string& user, const std::string& channel) {
    if (!checkArgs("INVITE", {user, channel}) || !checkMiddle("INVITE", {user, channel}, 2)) return false;
    return sendLine("INVITE " + user + " " + withChannelPrefix(channel));
}

REACTOR_INLINE bool IRCClient::topic(const std::string& channel, const std::optional<std::string>& newTopic) {
    if (!checkArgs("TOPIC", {channel, newTopic.value_or("")}) || !checkMiddle("TOPIC", {channel})) return false;
    std::string c = withChannelPrefix(channel);
    return sendLine(newTopic ? "TOPIC " + c + " :" + *newTopic : "TOPIC " + c);
}

REACTOR_INLINE bool IRCClient::mode(const std::string& chan, bool set, const std::string& modes, std::optional<int> limit,
                                    const std::optional<std::string>& user,
                                    const std::optional<std::string>& mask) {
    if (!checkArgs("MODE", {chan, modes, user.value_or(""), mask.value_or("")}) ||
        !checkMiddle("MODE", {chan, modes, user.value_or(""), mask.value_or("")}, 2))
        return false;
    std::string line = "MODE " + chan + (set ? " +" : " -") + modes;
    if (limit) line += " " + std::to_string(*limit);
    else if (user) line += " " + *user;
    else if (mask) line += " " + *mask;
    return sendLine(line);
}

REACTOR_INLINE bool IRCClient::say(const std::string& channel, const std::string& message, std::size_t length) {
    if (!checkArgs("PRIVMSG", {channel})) return false;
    return msg(withChannelPrefix(channel), message, length);
}

REACTOR_INLINE bool IRCClient::away(const std::string& message) {
    if (!checkArgs("AWAY", {message})) return false;
    return sendLine("AWAY :" + message);
}

REACTOR_INLINE bool IRCClient::whois(const std::string& nick, const std::string& server) {
    if (!checkArgs("WHOIS", {nick, server}) || !checkMiddle("WHOIS", {nick, server})) return false;
    return sendLine(server.empty() ? "WHOIS " + nick : "WHOIS " + server + " " + nick);
}

REACTOR_INLINE bool IRCClient::setNick(const std::string& nick) {
    if (!checkArgs("NICK", {nick}) || !checkMiddle("NICK", {nick})) return false;
    attemptedNick_ = nick;
    return sendLine("NICK " + nick);
}

REACTOR_INLINE bool IRCClient::quit(const std::string& message) {
    if (!checkArgs("QUIT", {message})) return false;
    return sendLine("QUIT :" + message);
}

REACTOR_INLINE bool IRCClient::names(const std::string& channel) {
    if (!checkArgs("NAMES", {channel}) || !checkMiddle("NAMES", {channel})) return false;
    return sendLine("NAMES " + withChannelPrefix(channel));
}

REACTOR_INLINE bool IRCClient::ping(const std::string& user, const std::string& text) {
    if (!checkArgs("PING", {user, text})) return false;
    std::string key = text.empty() ? randomKey() : text;
    if (!ctcpMakeQuery(user, {CtcpMessage{"PING", key}})) return false;  // quoted: no second query
    pings_.push_back({user, key, now()});
    if (pings_.size() > 12) pings_.erase(pings_.begin());
    return true;
}

REACTOR_INLINE bool IRCClient::register_(const std::string& nick, const std::string& hostName, const std::string& serverName) {
    // Every argument is checked before anything is sent: a half
    // registration (PASS and USER without the NICK the server waits for)
    // would leave the server waiting. USER's first three parameters are
    // middle ones; Twisted sends a user name with spaces as is, shifting
    // them (a server reads "USER a b c d :x" as user "a", mode "b").
    const std::string& user = username.empty() ? nick : username;
    if (!checkArgs("USER", {nick, hostName, serverName, password, username, realname}) ||
        !checkMiddle("NICK", {nick}) || !checkMiddle("USER", {user, hostName, serverName}, 3))
        return false;
    if (capLsDue_) {  // before NICK/USER, so that the server waits for CAP END (and SASL)
        capLsDue_ = false;
        negotiating_ = true;
        sendLine("CAP LS 302");
    }
    if (!password.empty()) {
        // PASS has one parameter: a password with a space or a leading
        // ':' goes as the trailing one, which the server takes whole.
        const bool trailing = password.find(' ') != std::string::npos || password.front() == ':';
        sendLine((trailing ? "PASS :" : "PASS ") + password);
    }
    if (!setNick(nick)) return false;
    if (username.empty()) username = nick;  // Twisted's register keeps it for later
    return sendLine("USER " + username + " " + hostName + " " + serverName + " :" +
                    (realname.empty() ? nick : realname));
}

REACTOR_INLINE bool IRCClient::sendWithTags(const std::vector<std::pair<std::string, std::string>>& tags,
                                            std::string_view line) {
    auto refuse = [](const std::string& why) {
        reactor::log(LogLevel::warning, "irc: refused to send a tagged line: " + why);
        return false;
    };
    if (!capEnabled("message-tags")) return refuse("the server has not enabled message-tags");
    std::string section;
    for (const auto& t : tags) {
        std::string_view key = t.first;
        if (!key.empty() && key[0] == '+') key.remove_prefix(1);
        bool good = !key.empty() && key.back() != '/';
        for (char c : key)
            good = good && ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
                            c == '.' || c == '/');
        if (!good) return refuse("bad tag key " + reactor::detail::printable(t.first));
        if (t.second.find('\0') != std::string::npos) return refuse("NUL in a tag value");
        section += (section.empty() ? "@" : ";") + t.first;
        if (!t.second.empty()) section += "=" + detail::escapeTagValue(t.second);
    }
    if (section.empty()) return sendLine(line);
    if (section.size() + 1 > 4096) return refuse("tags over 4094 bytes");
    if (line.empty() || line[0] == '@') return refuse("no command after the tags");
    std::string full = section + " " + std::string(line);
    return sendCapped(full, section.size() + 1);
}

REACTOR_INLINE bool IRCClient::ctcpMakeQuery(const std::string& user, const std::vector<CtcpMessage>& messages) {
    if (!checkCtcp("PRIVMSG", user, messages)) return false;
    return msg(user, ctcpStringify(messages));
}

REACTOR_INLINE bool IRCClient::ctcpMakeReply(const std::string& user, const std::vector<CtcpMessage>& messages) {
    if (!checkCtcp("NOTICE", user, messages)) return false;
    return notice(user, ctcpStringify(messages));
}

REACTOR_INLINE bool IRCClient::sendLine(std::string_view line) { return sendCapped(line, 0); }

REACTOR_INLINE bool IRCClient::sendCapped(std::string_view line, std::size_t tagged) {
    if (detail::hasUnsafeChar(line)) {
        reactor::log(LogLevel::warning, "irc: refused to send a line containing CR, LF or NUL");
        return false;
    }
    if (!connected) return false;  // after connectionLost: nothing to send on, no timer to arm
    std::string capped;
    // IRCv3 tags (sendWithTags: the first `tagged` bytes) have their own
    // limit; the 510 is the rest.
    if (line.size() - tagged > maxLineBytes) {
        // A server drops the connection on an over-long line ("Request
        // too long"): cut it, at a UTF-8 character boundary.
        std::size_t cut = tagged + maxLineBytes;
        std::size_t back = 0;  // at most 3: a longer run of continuation bytes is not UTF-8
        while (back < 3 && cut > tagged && (static_cast<unsigned char>(line[cut]) & 0xC0) == 0x80) --cut, ++back;
        if ((static_cast<unsigned char>(line[cut]) & 0xC0) == 0x80) cut = tagged + maxLineBytes;
        reactor::log(LogLevel::warning, "irc: cut an outgoing line of " + std::to_string(line.size()) +
                                            " bytes to " + std::to_string(cut));
        capped.assign(line.substr(0, cut));
        line = capped;
    }
    if (lineRate <= 0 || !clock) {
        reallySendLine(line);
        return true;
    }
    if (queuedLines() >= maxQueuedLines) {  // a flood (of CTCP queries, say) must not grow memory
        reactor::log(LogLevel::warning, "irc: send queue full (" + std::to_string(maxQueuedLines) +
                                            " lines); dropped a line");
        return false;
    }
    queue_.emplace_back(line);
    if (!queueTimer_.active()) sendQueued();
    return true;
}

REACTOR_INLINE bool IRCClient::isChannel(std::string_view target) const {
    std::string status = supported.getFeatureString("STATUSMSG");
    std::size_t i = 0;
    while (i < target.size() && status.find(target[i]) != std::string::npos) ++i;
    return i < target.size() && channelPrefixes().find(target[i]) != std::string::npos;
}

REACTOR_INLINE std::string IRCClient::channelPrefixes() const {
    return supported.announced("CHANTYPES") ? supported.chanTypes() : std::string(CHANNEL_PREFIXES);
}

REACTOR_INLINE bool IRCClient::nickEquals(std::string_view a, std::string_view b) const {
    if (a.size() != b.size()) return false;
    std::string mapping = supported.caseMapping();
    bool rfc = mapping != "ascii";
    bool strict = mapping == "strict-rfc1459";
    auto fold = [&](char c) -> char {
        c = detail::asciiLower(c);
        if (rfc) {
            if (c == '[') return '{';
            if (c == ']') return '}';
            if (c == '\\') return '|';
            if (c == '~' && !strict) return '^';
        }
        return c;
    };
    for (std::size_t i = 0; i < a.size(); ++i)
        if (fold(a[i]) != fold(b[i])) return false;
    return true;
}

REACTOR_INLINE std::size_t IRCClient::maxMessageLength(const std::string& command, const std::string& target) const {
    std::size_t prefixLen;
    if (!userHost_.empty()) {
        prefixLen = nickname.size() + userHost_.size();
    } else {
        std::size_t nickLen = std::max(nickname.size(), static_cast<std::size_t>(std::max(0, supported.nickLen())));
        std::size_t userLen = static_cast<std::size_t>(std::max(0, supported.getFeatureInt("USERLEN", 10))) + 1;
        std::size_t hostLen = static_cast<std::size_t>(std::max(0, supported.getFeatureInt("HOSTLEN", 63)));
        prefixLen = nickLen + 1 + userLen + 1 + hostLen;
    }
    std::size_t overhead = 1 + prefixLen + 1 + command.size() + 1 + target.size() + 2 + 2;  // ":" p " " cmd " " t " :" .. CRLF
    return overhead >= MAX_COMMAND_LENGTH ? 0 : MAX_COMMAND_LENGTH - overhead;
}

REACTOR_INLINE bool IRCClient::sendMessage(const std::string& command, const std::string& target, const std::string& message,
                                           std::size_t length) {
    if (!checkArgs(command.c_str(), {target}) || !checkMiddle(command.c_str(), {target})) return false;
    if (message.find('\0') != std::string::npos) {
        reactor::log(LogLevel::warning, "irc: refused to send " + command + ": the message contains NUL");
        return false;
    }
    std::string fmt = command + " " + target + " :";
    std::size_t width;
    if (length > 0) {
        std::size_t minimum = fmt.size() + 2;
        if (length <= minimum) {
            reactor::log(LogLevel::error, "irc: Maximum length must exceed " + std::to_string(minimum) +
                                              " for message to " + target);
            return false;
        }
        width = length - minimum;
    } else {
        width = maxMessageLength(command, target);
    }
    if (width < 4) {  // room for at least one UTF-8 character
        reactor::log(LogLevel::error, "irc: no room for text in a " + command + " to " + reactor::detail::printable(target));
        return false;
    }
    bool sent = true;
    for (const std::string& chunk : split(message, width)) sent = sendLine(fmt + chunk) && sent;
    return sent;
}

REACTOR_INLINE void IRCClient::reallySendLine(std::string_view line) {
    if (!transport) return;
    transport->writeSequence({line, std::string_view("\r\n")});
}

REACTOR_INLINE void IRCClient::sendQueued() {
    if (queueHead_ < queue_.size()) {
        std::string line = std::move(queue_[queueHead_++]);
        if (queueHead_ == queue_.size()) {
            queue_.clear();
            queueHead_ = 0;
        }
        reallySendLine(line);
        queueTimer_ = clock->callLater(lineRate, [this] { sendQueued(); });
    } else {
        queueTimer_ = DelayedCall();
    }
}

REACTOR_INLINE void IRCClient::sendHeartbeat() { sendLine("PING " + (hostname.empty() ? nickname : hostname)); }

REACTOR_INLINE void IRCClient::cancelTimers() {
    stopHeartbeat();
    if (queueTimer_.active()) queueTimer_.cancel();
    queueTimer_ = DelayedCall();
    if (quitTimer_.active()) quitTimer_.cancel();
    quitTimer_ = DelayedCall();
}

REACTOR_INLINE bool IRCClient::checkArgs(const char* command, std::initializer_list<std::string_view> args) {
    for (std::string_view a : args)
        if (detail::hasUnsafeChar(a)) {
            reactor::log(LogLevel::warning,
                         std::string("irc: refused to send ") + command + ": an argument contains CR, LF or NUL");
            return false;
        }
    return true;
}

REACTOR_INLINE bool IRCClient::checkMiddle(const char* command, std::initializer_list<std::string_view> params, std::size_t required) {
    std::size_t i = 0;
    for (std::string_view p : params) {
        bool bad = (i++ < required && p.empty()) || p.find(' ') != std::string_view::npos ||
                   (!p.empty() && p.front() == ':');
        if (bad) {
            reactor::log(LogLevel::warning, std::string("irc: refused to send ") + command +
                                                ": a target, nick or channel is empty, has a space, or starts with ':'");
            return false;
        }
    }
    return true;
}

REACTOR_INLINE bool IRCClient::checkCtcp(const char* command, const std::string& user, const std::vector<CtcpMessage>& messages) {
    if (!checkArgs(command, {user})) return false;
    for (const auto& m : messages)
        if (!checkArgs(command, {m.tag, m.data.value_or("")})) return false;
    return true;
}

REACTOR_INLINE bool IRCClient::need(const std::vector<std::string>& params, std::size_t n, const char* command) {
    if (params.size() >= n) return true;
    reactor::log(LogLevel::warning, std::string("irc: ignored ") + command + " with too few parameters");
    return false;
}

REACTOR_INLINE std::string IRCClient::withChannelPrefix(const std::string& channel) const {
    if (!channel.empty() && channelPrefixes().find(channel[0]) != std::string::npos) return channel;
    return "#" + channel;
}

REACTOR_INLINE std::string IRCClient::join(const std::vector<std::string>& pieces) {
    std::string out;
    for (const auto& p : pieces) out += (out.empty() ? "" : " ") + p;
    return out;
}

REACTOR_INLINE std::string IRCClient::motdLine(const std::vector<std::string>& params) {
    std::string line = params.empty() ? std::string() : params.back();
    if (line.compare(0, 2, "- ") == 0) line.erase(0, 2);
    return line;
}

// Room for one more name (or channel, when `keep` is names_.size()):
// drops the oldest channel other than names_[keep] while needed; `keep`
// follows its entry as the vector shifts.
REACTOR_INLINE bool IRCClient::namesRoom(std::size_t& keep) {
    bool newChannel = keep == names_.size();
    while (namesHeld_ >= maxPendingNames || (newChannel && names_.size() >= maxPendingNamesChannels)) {
        std::size_t victim = keep == 0 ? 1 : 0;
        if (victim >= names_.size()) {
            if (!namesOverflowLogged_)
                reactor::log(LogLevel::warning, "irc: NAMES replies hold more than maxPendingNames (" +
                                                    std::to_string(maxPendingNames) + ") names; the rest are dropped");
            namesOverflowLogged_ = true;
            return false;
        }
        if (!namesOverflowLogged_)
            reactor::log(LogLevel::warning, "irc: NAMES replies waiting for their end (366) pile up; "
                                            "the oldest channel's are dropped");
        namesOverflowLogged_ = true;
        namesHeld_ -= names_[victim].second.size() + 1;
        names_.erase(names_.begin() + static_cast<std::ptrdiff_t>(victim));
        if (victim < keep) --keep;
    }
    return true;
}

REACTOR_INLINE double IRCClient::now() const {
    if (clock) return clock->seconds();
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

REACTOR_INLINE std::string IRCClient::randomKey() {
    if (rng_ == 0)
        rng_ = static_cast<std::uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count()) ^
               reinterpret_cast<std::uintptr_t>(this) ^ 0x9E3779B97F4A7C15ull;
    std::string key;
    for (int i = 0; i < 12; ++i) {
        rng_ ^= rng_ << 13;  // xorshift64: unpredictability is not needed, only uniqueness
        rng_ ^= rng_ >> 7;
        rng_ ^= rng_ << 17;
        std::uint64_t r = rng_ % 52;
        key += static_cast<char>(r < 26 ? 'a' + static_cast<int>(r) : 'A' + static_cast<int>(r - 26));
    }
    return key;
}
}  // namespace irc
#endif  // REACTOR_HAS_IRC

// ---- 14. TESTING -----------------------------------------------------------

REACTOR_INLINE void StringTransport::writeSequence(const std::string_view* parts, std::size_t count) {
    for (std::size_t i = 0; i < count; ++i) io_.append(parts[i]);
}

REACTOR_INLINE void StringTransport::abortConnection() {
    disconnecting = true;
    aborted = true;
}

REACTOR_INLINE void StringTransport::pauseProducing() {
    if (checkNotDisconnecting("pause")) producerState = "paused";
}

REACTOR_INLINE void StringTransport::resumeProducing() {
    if (checkNotDisconnecting("resume")) producerState = "producing";
}

REACTOR_INLINE void StringTransport::registerProducer(IProducer* p, bool isStreaming) {
    if (producer) {
        detail::raise<error::RuntimeError>("Cannot register two producers");
        return;
    }
    producer = p;
    streaming = isStreaming;
}

REACTOR_INLINE void StringTransport::unregisterProducer() {
    if (!producer) {
        detail::raise<error::RuntimeError>("Cannot unregister a producer unless one is registered");
        return;
    }
    producer = nullptr;
}

REACTOR_INLINE bool StringTransport::checkNotDisconnecting(const char* what) {
    if (!disconnecting) return true;
    detail::raise<error::RuntimeError>(std::string("Cannot ") + what + " producing after loseConnection");
    return false;
}

REACTOR_INLINE void StringTransportWithDisconnection::loseConnection() {
    if (!connected) return;
    StringTransport::loseConnection();
    connected = false;
    if (protocol) {
        protocol->connected = false;
        protocol->connectionLost(Failure(error::ConnectionDone("Bye.")));
    }
}
namespace testing {

REACTOR_INLINE std::string dirtyReport(const Reactor& r) {
    std::string report;
    auto calls = r.pendingCalls();
    auto fds = r.selectables();
    if (calls.empty() && fds.empty()) return report;
    report = "Reactor was unclean.";
    if (!calls.empty()) {
        report += "\nDelayedCalls:";
        for (const auto& c : calls) report += "\n  call at t=" + std::to_string(c.getTime()) + " scheduled at " + c.where();
    }
    if (!fds.empty()) {
        report += "\nSelectables:";
        for (auto fd : fds) report += "\n  fd " + std::to_string(fd) + ": " + r.describeSelectable(fd);
    }
    return report;
}

REACTOR_INLINE bool runUntilClean(Reactor& r, double timeout) {
    return runUntil(r, [&r] { return r.pendingCalls().empty() && r.selectables().empty(); }, timeout);
}

REACTOR_INLINE std::string cleanUp(Reactor& r) {
    std::string report = dirtyReport(r);
    r.disconnectAll();  // may schedule nothing: closing is synchronous here
    // Cancelling a call destroys its function, and what that owned may
    // cancel another listed call (a session's idle timer) or schedule a new
    // one: cancel what is still active, until nothing is left (bounded: a
    // destructor that always schedules again is not chased forever).
    for (int round = 0; round < 100; ++round) {
        std::vector<DelayedCall> calls = r.pendingCalls();
        if (calls.empty()) break;
        for (DelayedCall& c : calls)
            if (c.active()) c.cancel();
    }
    r.removeAll();
    return report;
}
}  // namespace testing

// ---- 14. TESTING: the in-memory network -------------------------------------
namespace testing {

REACTOR_INLINE void MemoryTransport::write(std::string_view data) {
    if (data.empty()) return;
    writeSequence(&data, 1);
}

REACTOR_INLINE void MemoryTransport::writeSequence(const std::string_view* parts, std::size_t count) {
    if (!connected || closed_ || writeShut_ || aborting_) return;  // as TcpConnection: gone, half-closed or aborted
    std::size_t total = 0;
    for (std::size_t i = 0; i < count; ++i) total += parts[i].size();
    if (total == 0) return;
    for (std::size_t i = 0; i < count; ++i) out_.append(parts[i].data(), parts[i].size());
    written_ += total;
    marks_.emplace_back(written_, connection_.net_.clock.seconds() + connection_.latency);
    if (producer_ && !streaming_) wantPull_ = true;  // asked for more once this has drained
    if (producer_ && streaming_ && !producerPaused_ && pending() > detail::TcpFlow::highWaterMark) {
        producerPaused_ = true;
        producer_->pauseProducing();
    }
}

REACTOR_INLINE void MemoryTransport::loseConnection() {
    if (!connected || disconnecting || aborting_) return;
    disconnecting = true;  // closes once the buffer has been delivered (a pump step)
}

REACTOR_INLINE void MemoryTransport::abortConnection() {
    if (!connected || aborting_) return;
    aborting_ = true;  // connectionLost at the next step, never inside the caller (as TCP)
    out_.clear();
    outPos_ = 0;
    sent_ = readyEnd_ = written_;
    marks_.clear();
    markPos_ = 0;
}

REACTOR_INLINE void MemoryTransport::loseWriteConnection() {
    if (!connected || writeShut_ || aborting_) return;
    wantWriteShut_ = true;
}

REACTOR_INLINE void MemoryTransport::pauseProducing() { userPaused_ = true; }

REACTOR_INLINE void MemoryTransport::resumeProducing() { userPaused_ = false; }

REACTOR_INLINE void MemoryTransport::registerProducer(IProducer* producer, bool streaming) {
    if (producer_) {
        detail::raise<error::RuntimeError>(
            "Cannot register producer, because another producer was never unregistered.");
        return;
    }
    if (!connected) {
        producer->stopProducing();
        return;
    }
    producer_ = producer;
    streaming_ = streaming;
    producerPaused_ = false;
    outputPaused_ = false;  // the producer limits the output from now on
    if (!streaming) {
        producer->resumeProducing();  // a pull producer is asked at once
    } else if (pending() > detail::TcpFlow::highWaterMark) {
        producerPaused_ = true;
        producer->pauseProducing();
    }
}

REACTOR_INLINE void MemoryTransport::unregisterProducer() {
    producer_ = nullptr;
    wantPull_ = false;
}

REACTOR_INLINE bool MemoryTransport::reading() const {
    if (readerStopped || closed_ || aborting_ || readShut_) return false;
    return disconnecting || (!userPaused_ && !outputPaused_);  // closing reads on, and drops (as TCP)
}

REACTOR_INLINE void MemoryConnector::connect() {
    if (!conn_) {
        detail::raise<error::RuntimeError>("can't connect: the MemoryNetwork of this connector is gone");
        return;
    }
    if (state_ != State::disconnected) {
        detail::raise<error::RuntimeError>("can't connect in this state");
        return;
    }
    state_ = State::connecting;
    MemoryConnection& c = *conn_;
    if (!std::exchange(factoryStarted_, true)) c.clientFactory_.doStart();
    if (timeout_ > 0) {
        timeoutCall_ = c.net_.clock.callLater(timeout_, [this] {
            timeoutCall_ = DelayedCall();
            if (state_ == State::connecting) fail(Failure(error::TimeoutError()));
        });
    }
    c.attemptPending_ = true;
    detail::runGuarded("startedConnecting", [&] { c.clientFactory_.startedConnecting(*this); });
}

REACTOR_INLINE void MemoryConnector::disconnect() {
    if (state_ == State::connecting)
        stopConnecting();
    else if (state_ == State::connected && conn_ && conn_->client_)
        conn_->client_->loseConnection();
}

REACTOR_INLINE void MemoryConnector::stopConnecting() {
    if (state_ != State::connecting) {
        detail::raise<error::NotConnectingError>();
        return;
    }
    fail(Failure(error::UserError()));
}

REACTOR_INLINE Address MemoryConnector::getDestination() const {
    return conn_ ? conn_->serverAddress_ : destination_;
}

REACTOR_INLINE void MemoryConnector::cancelTimeout() {
    if (timeoutCall_.active()) timeoutCall_.cancel();
    timeoutCall_ = DelayedCall();
}

REACTOR_INLINE void MemoryConnector::fail(const Failure& reason) {
    auto keep = shared_from_this();
    cancelTimeout();
    state_ = State::disconnected;
    if (!conn_) return;
    conn_->attemptPending_ = false;
    ClientFactory& f = conn_->clientFactory_;
    detail::runGuarded("clientConnectionFailed", [&] { f.clientConnectionFailed(*this, reason); });
    finishCycle();
}

REACTOR_INLINE void MemoryConnector::lost(const Failure& reason) {
    auto keep = shared_from_this();
    state_ = State::disconnected;
    if (!conn_) return;
    ClientFactory& f = conn_->clientFactory_;
    detail::runGuarded("clientConnectionLost", [&] { f.clientConnectionLost(*this, reason); });
    finishCycle();
}

REACTOR_INLINE void MemoryConnector::finishCycle() {
    // The factory's callback may have connected again: the same cycle.
    if (conn_ && state_ == State::disconnected && std::exchange(factoryStarted_, false)) conn_->clientFactory_.doStop();
}

REACTOR_INLINE void MemoryConnector::abandon() {
    cancelTimeout();
    if (!conn_) return;
    destination_ = conn_->serverAddress_;
    if (std::exchange(factoryStarted_, false) && conn_->clientFactory_.numPorts > 0)
        --conn_->clientFactory_.numPorts;  // silently, as a Reactor's destructor does
    state_ = State::disconnected;
    conn_ = nullptr;
}

REACTOR_INLINE MemoryConnection::MemoryConnection(MemoryNetwork& net, Factory& server, ClientFactory& client,
                                                  Address serverAddress, Address clientAddress, double timeout)
    : net_(net), serverFactory_(server), clientFactory_(client), serverAddress_(std::move(serverAddress)),
      clientAddress_(std::move(clientAddress)), connector_(std::make_shared<MemoryConnector>(*this, timeout)) {}

REACTOR_INLINE MemoryConnection::~MemoryConnection() { abandon(); }

REACTOR_INLINE void MemoryConnection::abandon() {
    if (std::exchange(gone_, true)) return;
    if (connector_) connector_->abandon();
    // Protocols first (their destructors may still look at their transport).
    // During a step (a callback destroyed a factory) one of them may be on
    // the stack: it goes at the end of the step.
    auto drop = [this](MemoryTransport* end) {
        if (!end) return;
        end->closed_ = true;
        end->connected = false;
        end->disconnecting = true;
        end->producer_ = nullptr;
        if (!end->protocol_) return;
        end->protocol_->connected = false;
        if (net_.depth_ > 0)
            net_.dead_.push_back(std::move(end->protocol_));
        else
            end->protocol_.reset();
    };
    drop(client_.get());
    drop(server_.get());
    for (auto& end : retired_) drop(end.get());
}

REACTOR_INLINE void MemoryConnection::makeConnection(MemoryTransport& end, Failure& failure, bool& failed) {
    Protocol* p = end.protocol_.get();
    failed = false;
    if (!p || gone_) return;  // an earlier callback destroyed a factory: abandoned, call no one
    failed = !detail::runGuarded("connectionMade", [&] { p->makeConnection(&end); }, &failure);
}

REACTOR_INLINE void MemoryConnection::establish() {
    MemoryConnector& c = *connector_;
    std::unique_ptr<Protocol> cp, sp;
    detail::runGuarded("buildProtocol", [&] { cp = clientFactory_.buildProtocol(serverAddress_); });
    if (!cp) {
        c.fail(Failure(error::ConnectError(
            "An error occurred while connecting: the factory refused to build a protocol.")));
        return;
    }
    if (!cp->factory) cp->factory = &clientFactory_;
    detail::runGuarded("buildProtocol", [&] { sp = serverFactory_.buildProtocol(clientAddress_); });
    if (sp && !sp->factory) sp->factory = &serverFactory_;
    if (client_) {  // in pairs: client, server
        retired_.push_back(std::move(client_));
        retired_.push_back(std::move(server_));
    }
    client_ = std::make_unique<MemoryTransport>(*this, clientAddress_, serverAddress_);
    server_ = std::make_unique<MemoryTransport>(*this, serverAddress_, clientAddress_);
    client_->peerEnd_ = server_.get();
    server_->peerEnd_ = client_.get();
    client_->protocol_ = std::move(cp);
    server_->protocol_ = std::move(sp);
    ++connections;
    c.cancelTimeout();
    c.state_ = MemoryConnector::State::connected;
    // The server accepts first (as Twisted's iosim.connect); a server
    // factory that refused closes its side at once: the client is
    // connected, then reads EOF (TCP's behaviour).
    Failure serverFailure, clientFailure;
    bool serverFailed = false, clientFailed = false;
    if (server_->protocol_) {
        makeConnection(*server_, serverFailure, serverFailed);
    } else {
        server_->closed_ = true;
        server_->connected = false;
        server_->disconnecting = true;
        client_->eofIncoming_ = true;
    }
    makeConnection(*client_, clientFailure, clientFailed);
    if (gone_) return;
    // A connectionMade that threw loses its own connection (the peer sees a reset).
    if (serverFailed) closeEnd(*server_, serverFailure, true);
    if (clientFailed) closeEnd(*client_, clientFailure, true);
}

REACTOR_INLINE bool MemoryConnection::deliver(MemoryTransport& from, MemoryTransport& to) {
    const double now = net_.clock.seconds();
    while (from.markPos_ < from.marks_.size() && from.marks_[from.markPos_].second <= now)
        from.readyEnd_ = from.marks_[from.markPos_++].first;
    if (from.markPos_ == from.marks_.size()) {
        from.marks_.clear();
        from.markPos_ = 0;
    } else if (from.markPos_ >= 64 && from.markPos_ * 2 >= from.marks_.size()) {  // a steady writer: drop what arrived
        from.marks_.erase(from.marks_.begin(), from.marks_.begin() + static_cast<std::ptrdiff_t>(from.markPos_));
        from.markPos_ = 0;
    }
    bool did = false;
    std::size_t budget = to.readRate ? to.readRate : static_cast<std::size_t>(-1);
    while (from.sent_ < from.readyEnd_) {
        if (to.closed_) {  // the peer is gone: what was on its way is lost
            from.outPos_ = from.out_.size();
            from.sent_ = from.readyEnd_ = from.written_;
            from.marks_.clear();
            from.markPos_ = 0;
            did = true;
            break;
        }
        if (!to.reading() || budget == 0) break;
        std::size_t n = static_cast<std::size_t>(from.readyEnd_ - from.sent_);
        if (chunkSize) n = std::min(n, chunkSize);
        n = std::min(n, budget);
        // A copy: the callback may write to `from` and move its buffer.
        std::string chunk(from.out_.data() + from.outPos_, n);
        from.outPos_ += n;
        from.sent_ += n;
        budget -= n;
        did = true;
        if (to.disconnecting) continue;  // closing: read and dropped, as TCP
        Protocol* p = to.protocol_.get();
        const std::size_t before = to.pending();
        Failure failure;
        if (!detail::runGuarded("dataReceived", [&] { p->dataReceived(chunk); }, &failure)) {
            closeEnd(to, failure, true);  // a protocol that throws loses its own connection
            continue;
        }
        // TCP's read-side backpressure: this input added to unsent output
        // over the mark and no producer limits it: stop reading until it drains.
        to.answered_ = std::min(to.answered_, before) + (to.pending() - before);
        if (!to.producer_ && !to.outputPaused_ && !to.closed_ && to.answered_ > detail::TcpFlow::highWaterMark)
            to.outputPaused_ = true;
    }
    if (from.outPos_ == from.out_.size()) {
        from.out_.clear();
        from.outPos_ = 0;
    } else if (detail::TcpFlow::dropSentPrefix(from.outPos_, from.out_.size())) {
        from.out_.erase(0, from.outPos_);
        from.outPos_ = 0;
    }
    return did;
}

REACTOR_INLINE bool MemoryConnection::settle(MemoryTransport& end) {
    if (end.closed_) return false;
    if (end.aborting_) {
        closeEnd(end, Failure(error::ConnectionAborted()), true);
        return true;
    }
    bool did = false;
    if (end.producer_ && end.streaming_ && end.producerPaused_ && end.pending() <= detail::TcpFlow::lowWaterMark) {
        end.producerPaused_ = false;
        end.producer_->resumeProducing();
        did = true;
        if (end.closed_ || end.aborting_) return did;
    }
    if (end.outputPaused_ && end.pending() <= detail::TcpFlow::lowWaterMark) {
        end.outputPaused_ = false;
        did = true;
    }
    if (end.pending() > 0) return did;
    if (end.producer_ && !end.streaming_ && end.wantPull_) {  // a pull producer: one chunk per drained buffer
        end.wantPull_ = false;
        end.producer_->resumeProducing();
        did = true;
        if (end.closed_ || end.aborting_ || end.pending() > 0) return did;
    }
    if (end.wantWriteShut_ && !end.writeShut_) {
        end.writeShut_ = true;
        end.peerEnd_->eofIncoming_ = true;
        did = true;
        Protocol* p = end.protocol_.get();
        if (p->halfCloseable()) detail::runGuarded("writeConnectionLost", [&] { p->writeConnectionLost(); });
        if (end.closed_ || end.aborting_) return did;
    }
    // Closing waits for the buffer, not for a producer (which is told stopProducing).
    if (end.disconnecting) {
        closeEnd(end, Failure(error::ConnectionDone()), false);
        did = true;
    }
    return did;
}

REACTOR_INLINE bool MemoryConnection::readEof(MemoryTransport& end) {
    if (!end.eofIncoming_ || end.readShut_ || end.closed_) return false;
    if (end.peerEnd_->pending() > 0 || !end.reading()) return false;  // the data before the FIN first
    end.readShut_ = true;
    Protocol* p = end.protocol_.get();
    if (p->halfCloseable() && !end.disconnecting) {
        Failure failure;
        if (!detail::runGuarded("readConnectionLost", [&] { p->readConnectionLost(); }, &failure))
            closeEnd(end, failure, true);
        return true;
    }
    if (end.pending() == 0)
        closeEnd(end, Failure(error::ConnectionDone()), false);
    else
        end.disconnecting = true;  // a reply still queued: send it, then close (as TCP)
    return true;
}

REACTOR_INLINE void MemoryConnection::closeEnd(MemoryTransport& end, const Failure& reason, bool resetPeer) {
    if (end.closed_) return;
    end.closed_ = true;
    end.connected = false;
    end.disconnecting = true;  // a protocol method still on the stack stops delivering
    end.out_.clear();
    end.outPos_ = 0;
    end.sent_ = end.readyEnd_ = end.written_;
    end.marks_.clear();
    end.markPos_ = 0;
    if (IProducer* producer = std::exchange(end.producer_, nullptr))
        detail::runGuarded("stopProducing", [&] { producer->stopProducing(); });
    if (Protocol* p = end.protocol_.get()) {
        p->connected = false;
        detail::runGuarded("connectionLost", [&] { p->connectionLost(reason); });
    }
    MemoryTransport* peer = end.peerEnd_;
    if (peer && !peer->closed_) {
        if (resetPeer)  // an end that was aborting itself says so, as on TCP
            closeEnd(*peer, resetReason(*peer), false);
        else
            peer->eofIncoming_ = true;
    }
    if (&end == client_.get() && connector_->state_ == MemoryConnector::State::connected) connector_->lost(reason);
    // Destroyed at the end of the step: one of its methods may be on the stack.
    if (end.protocol_) net_.dead_.push_back(std::move(end.protocol_));
}

REACTOR_INLINE Failure MemoryConnection::resetReason(const MemoryTransport& end) {
    return end.aborting_ ? Failure(error::ConnectionAborted()) : detail::lostFailure(detail::os::errConnectionReset);
}

REACTOR_INLINE bool MemoryConnection::step() {
    if (gone_) return false;
    bool did = false;
    if (attemptPending_ && connector_->state_ == MemoryConnector::State::connecting) {
        if (refuseNext > 0) {
            --refuseNext;
            attemptPending_ = false;
            connector_->fail(detail::connectFailure(detail::os::errConnectionRefused));
            return true;
        }
        if (!unreachable) {
            attemptPending_ = false;
            establish();
            return true;  // bytes move from the next step: a test can set faults in between
        }
    }
    if (!client_) return did;
    if (resetPending_) {
        resetPending_ = false;
        if (!client_->closed_)
            closeEnd(*client_, resetReason(*client_), true);
        else if (!server_->closed_)
            closeEnd(*server_, resetReason(*server_), false);
        did = true;
    }
    // Ends of an earlier attempt may still be closing (a server end with a
    // reply queued when the client reconnected at once): they go on too.
    for (std::size_t i = 0; i + 1 < retired_.size(); i += 2)
        if (!retired_[i]->closed_ || !retired_[i + 1]->closed_)
            if (stepPair(*retired_[i], *retired_[i + 1])) did = true;
    if (stepPair(*client_, *server_)) did = true;
    return did;
}

REACTOR_INLINE bool MemoryConnection::stepPair(MemoryTransport& c, MemoryTransport& s) {
    bool did = false;
    if (deliver(c, s)) did = true;
    if (settle(c)) did = true;
    if (deliver(s, c)) did = true;
    if (settle(s)) did = true;
    if (readEof(s)) did = true;
    if (readEof(c)) did = true;
    return did;
}

// Out of line: the constructors name every member's destructor, which a
// separately compiled program's other files would compile again.
REACTOR_INLINE MemoryNetwork::MemoryNetwork(Clock& clockRef) : clock(clockRef) {}
REACTOR_INLINE MemoryNetwork::MemoryNetwork() : ownClock_(std::make_unique<Clock>()), clock(*ownClock_) {}

REACTOR_INLINE MemoryNetwork::~MemoryNetwork() {
    ++depth_;  // nothing pumps from a destructor
    for (auto& c : connections_) c->abandon();
    dead_.clear();
    for (Factory* f : started_)
        if (f->numPorts > 0) --f->numPorts;  // silently: no stopFactory, as a Reactor's destructor
    uses_.clear();  // leaves the factories' lists
}

REACTOR_INLINE bool MemoryNetwork::FactoryUse::openConnection() const {
    for (auto& c : net_.connections_)
        if (!c->gone_ && (&c->serverFactory_ == factory_ || &c->clientFactory_ == factory_) &&
            ((c->client_ && !c->client_->closed_) || (c->server_ && !c->server_->closed_)))
            return true;
    return false;
}

REACTOR_INLINE void MemoryNetwork::use(Factory& f) {
    for (auto& u : uses_)
        if (u->factory() == &f) return;
    uses_.push_back(std::make_unique<FactoryUse>(*this, f));
}

REACTOR_INLINE void MemoryNetwork::factoryGone(Factory* f) {
    for (auto& c : connections_)
        if (&c->serverFactory_ == f || &c->clientFactory_ == f) c->abandon();
    started_.erase(std::remove(started_.begin(), started_.end(), f), started_.end());
    if (depth_ == 0) dead_.clear();
}

REACTOR_INLINE MemoryConnection& MemoryNetwork::connect(Factory& server, ClientFactory& client,
                                                        Address serverAddress, double timeout) {
    use(server);
    use(client);
    if (std::find(started_.begin(), started_.end(), &server) == started_.end()) {
        started_.push_back(&server);
        server.doStart();
    }
    Address clientAddress{"TCP", "127.0.0.1", nextPort_++, false};
    connections_.push_back(std::make_unique<MemoryConnection>(*this, server, client, std::move(serverAddress),
                                                              std::move(clientAddress), timeout));
    MemoryConnection& c = *connections_.back();
    c.connector_->connect();
    return c;
}

REACTOR_INLINE bool MemoryNetwork::pump() {
    if (depth_ > 0) return false;  // from inside a callback: the running step goes on
    struct Depth {
        int& d;
        ~Depth() { --d; }
    } guard{++depth_};
    bool did = false;
    for (std::size_t i = 0; i < connections_.size(); ++i)  // a callback may connect(): by index
        if (connections_[i]->step()) did = true;
    if (depth_ == 1) releaseDead();
    return did;
}

REACTOR_INLINE void MemoryNetwork::releaseDead() {
    while (!dead_.empty()) {
        std::vector<std::unique_ptr<Protocol>> batch;
        batch.swap(dead_);
        batch.clear();  // a destructor may close more
    }
}

REACTOR_INLINE bool MemoryNetwork::flush(int maxSteps) {
    if (depth_ > 0) return false;
    bool any = false;
    for (int i = 0; i < maxSteps; ++i) {
        if (!pump()) return any;
        any = true;
    }
    detail::raise<error::RuntimeError>("MemoryNetwork::flush: still moving after " + std::to_string(maxSteps) +
                                       " steps (two protocols that always answer each other?)");
    return any;
}

REACTOR_INLINE void MemoryNetwork::advance(double seconds) {
    if (depth_ > 0) return;
    if (!(seconds >= 0)) {
        detail::raise<error::ValueError>("MemoryNetwork::advance: seconds must be >= 0");
        return;
    }
    const double end = clock.seconds() + seconds;
    flush();
    for (;;) {
        const double now = clock.seconds();
        double next = end;
        for (const DelayedCall& d : clock.getDelayedCalls()) next = std::min(next, std::max(now, d.getTime()));
        auto arrival = [&](const MemoryTransport* t) {
            if (t && t->markPos_ < t->marks_.size() && t->marks_[t->markPos_].second > now)
                next = std::min(next, t->marks_[t->markPos_].second);
        };
        for (auto& c : connections_) {
            arrival(c->client_.get());
            arrival(c->server_.get());
            for (auto& t : c->retired_) arrival(t.get());
        }
        clock.advance(std::max(0.0, next - now));
        flush();
        if (next >= end) break;
    }
}

}  // namespace testing

}  // namespace REACTOR_ABI
}  // namespace reactor

#if defined(_WIN32)
#pragma pop_macro("interface")
#pragma pop_macro("min")
#pragma pop_macro("max")
#endif
#endif  // REACTOR_IMPLEMENTATION_INCLUDED
#endif  // !REACTOR_SEPARATE_COMPILATION || REACTOR_IMPLEMENTATION
