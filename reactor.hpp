// reactor.hpp — Twisted's event-driven networking engine as one C++17 header.
// MIT licensed, see LICENSE. https://example.invalid/reactor.hpp
//
// ============================================================================
// MANUAL
// ============================================================================
//
// What it is
//   A poll()-based event loop (`Reactor`) that dispatches socket readiness,
//   timers and cross-thread calls; TCP transports kept apart from the
//   protocols that use them; Twisted's `Protocol`/`Factory` family, framing
//   protocols, an IRC client, a `Deferred<T>` promise, and test helpers
//   (`StringTransport`, `Clock`) so protocols are tested without sockets or
//   real time. Names follow Twisted, so Twisted's documentation maps 1:1.
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
//   REACTOR_USE_SELECT     use select() instead of poll() (descriptors must be
//                          below FD_SETSIZE; larger ones are refused).
//   REACTOR_NO_EXCEPTIONS  force the no-exceptions code paths. Normally
//                          detected from the compiler (-fno-exceptions).
//   REACTOR_READ_BUFFER_SIZE  bytes read per recv() (default 65536).
//
// Threads
//   Everything runs on the thread that calls `run()`/`iterate()`. The one
//   method safe to call from any other thread is `Reactor::callFromThread`.
//   Blocking work belongs on the thread pool (`callInThread`, `deferToThread`).
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
//   6. THREADS         ThreadPool
//   7. REACTOR         the event loop
//   8. PROTOCOLS       Address, ITransport, Protocol, Factory, ClientFactory
//   9. TCP             listenTCP, connectTCP, the TCP transport
//  10. BASIC FRAMING   LineReceiver, LineOnlyReceiver, Netstring, IntN
//  11. TASK            LoopingCall, deferLater, deferToThread
//  12. IRC             irc::parsemsg, irc::IRCClient
//  13. TESTING         StringTransport, dirty-reactor checks, runUntil
//
// ============================================================================
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

// ============================================================================
// ==== 2. INCLUDES ====
// ============================================================================

#include <algorithm>    // std::push_heap, std::pop_heap, std::find_if
#include <atomic>       // wake-up flag, signal flag
#include <chrono>       // steady_clock: the monotonic time source
#include <cmath>        // std::ceil for poll timeouts
#include <condition_variable>  // thread pool
#include <cstdint>      // fixed-width integers
#include <cstdio>       // std::fputs for the default logger
#include <cstring>      // std::strcmp, std::strerror
#include <exception>    // std::exception, std::exception_ptr
#include <functional>   // std::function for user callbacks
#include <initializer_list>  // writeSequence({a, b})
#include <memory>       // std::shared_ptr, std::unique_ptr
#include <mutex>        // cross-thread call queue
#include <string>       // messages, buffers
#include <string_view>  // zero-copy data to protocols
#include <thread>       // thread pool workers
#include <type_traits>  // SFINAE helpers
#include <utility>      // std::move, std::exchange
#include <vector>       // everything array-like

#if REACTOR_HAS_RTTI && defined(__GNUG__)
#include <cxxabi.h>     // demangled type names for Failure
#include <typeinfo>
#endif

// POSIX: the only OS headers, used by section 3 alone.
#include <cerrno>
#include <csignal>
#include <fcntl.h>
#include <poll.h>
#include <unistd.h>
#include <sys/select.h>
#if defined(__linux__)
#include <sys/eventfd.h>
#endif

namespace reactor {
inline namespace v0 {

// ============================================================================
// ==== 3. PLATFORM ====
// The OS layer. Everything above the socket API lives here so that a port to
// another OS (Windows: WSAPoll + Winsock) touches this section only.
// ============================================================================
namespace detail {
namespace os {

using Fd = int;
constexpr Fd invalidFd = -1;

inline int lastError() { return errno; }
inline bool interrupted(int err) { return err == EINTR; }
inline bool wouldBlock(int err) { return err == EAGAIN || err == EWOULDBLOCK; }
inline std::string errorString(int err) { return std::strerror(err); }

inline void closeFd(Fd fd) {
    if (fd >= 0) ::close(fd);  // never retried on EINTR: the fd is gone either way on Linux
}

inline bool setNonBlocking(Fd fd) {
    int flags = ::fcntl(fd, F_GETFL, 0);
    return flags >= 0 && ::fcntl(fd, F_SETFL, flags | O_NONBLOCK) == 0;
}

inline bool setCloseOnExec(Fd fd) {
    int flags = ::fcntl(fd, F_GETFD, 0);
    return flags >= 0 && ::fcntl(fd, F_SETFD, flags | FD_CLOEXEC) == 0;
}

/// The event bits the reactor uses, named once; poll() values on POSIX.
constexpr short evRead = POLLIN;
constexpr short evWrite = POLLOUT;
constexpr short evError = POLLERR | POLLHUP;
constexpr short evInvalid = POLLNVAL;

/// The largest descriptor the select() backend can watch.
constexpr int selectLimit = FD_SETSIZE;

/// Waits for readiness on `fds` (entries with fd < 0 are ignored), at most
/// `timeoutMs` milliseconds (-1: forever). Returns the number of ready
/// entries, 0 on timeout, -1 with errno set on failure.
inline int pollWait(pollfd* fds, size_t count, int timeoutMs) {
    return ::poll(fds, static_cast<nfds_t>(count), timeoutMs);
}

/// The same contract on top of select(), filling in `revents`.
inline int selectWait(pollfd* fds, size_t count, int timeoutMs) {
    fd_set readSet, writeSet, errorSet;
    FD_ZERO(&readSet);
    FD_ZERO(&writeSet);
    FD_ZERO(&errorSet);
    int maxFd = -1;
    for (size_t i = 0; i < count; ++i) {
        fds[i].revents = 0;
        int fd = fds[i].fd;
        if (fd < 0 || fd >= selectLimit) continue;
        if (fds[i].events & evRead) FD_SET(fd, &readSet);
        if (fds[i].events & evWrite) FD_SET(fd, &writeSet);
        FD_SET(fd, &errorSet);
        maxFd = std::max(maxFd, fd);
    }
    timeval tv{};
    timeval* tvp = nullptr;
    if (timeoutMs >= 0) {
        tv.tv_sec = timeoutMs / 1000;
        tv.tv_usec = static_cast<decltype(tv.tv_usec)>((timeoutMs % 1000) * 1000);
        tvp = &tv;
    }
    int n = ::select(maxFd + 1, &readSet, &writeSet, &errorSet, tvp);
    if (n <= 0) return n;
    int ready = 0;
    for (size_t i = 0; i < count; ++i) {
        int fd = fds[i].fd;
        if (fd < 0 || fd >= selectLimit) continue;
        short rev = 0;
        if (FD_ISSET(fd, &readSet)) rev = static_cast<short>(rev | evRead);
        if (FD_ISSET(fd, &writeSet)) rev = static_cast<short>(rev | evWrite);
        if (FD_ISSET(fd, &errorSet)) rev = static_cast<short>(rev | POLLERR);
        fds[i].revents = rev;
        if (rev) ++ready;
    }
    return ready;
}

/// A self-pipe (eventfd on Linux) that another thread, or a signal handler,
/// writes to so that a reactor blocked in poll() wakes up.
class Waker {
public:
    Waker() {
#if defined(__linux__)
        readFd_ = writeFd_ = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
#else
        int p[2];
        if (::pipe(p) == 0) {
            readFd_ = p[0];
            writeFd_ = p[1];
            for (int fd : p) { setNonBlocking(fd); setCloseOnExec(fd); }
        }
#endif
    }
    ~Waker() {
        closeFd(readFd_);
        if (writeFd_ != readFd_) closeFd(writeFd_);
    }
    Waker(const Waker&) = delete;
    Waker& operator=(const Waker&) = delete;

    Fd readFd() const { return readFd_; }
    Fd writeFd() const { return writeFd_; }

    /// Async-signal-safe; a full pipe already means "wake up", so errors are ignored.
    static void wake(Fd writeFd) {
#if defined(__linux__)
        std::uint64_t one = 1;
        ssize_t n = ::write(writeFd, &one, sizeof one);
#else
        char byte = 1;
        ssize_t n = ::write(writeFd, &byte, 1);
#endif
        (void)n;
    }
    void wake() const { wake(writeFd_); }

    void drain() const {
        char buf[64];
        while (::read(readFd_, buf, sizeof buf) > 0) {
        }
    }

private:
    Fd readFd_ = invalidFd;
    Fd writeFd_ = invalidFd;
};

/// SIGINT/SIGTERM handling for `Reactor::run(true)`. A signal handler can
/// only touch lock-free atomics, so the one reactor that asked for signals
/// publishes its wake-up descriptor here while it runs.
inline std::atomic<int>& signalWakeFd() {
    static std::atomic<int> fd{invalidFd};
    return fd;
}
inline std::atomic<int>& signalReceived() {
    static std::atomic<int> sig{0};
    return sig;
}
extern "C" inline void reactorSignalHandler(int sig) {
    signalReceived().store(sig);
    int fd = signalWakeFd().load();
    if (fd >= 0) Waker::wake(fd);
}

/// Installs the handlers, remembering the previous ones so they can be put back.
class SignalHandlers {
public:
    explicit SignalHandlers(Fd wakeFd) {
        signalReceived().store(0);
        signalWakeFd().store(wakeFd);
        struct sigaction sa {};
        sa.sa_handler = &reactorSignalHandler;
        sigemptyset(&sa.sa_mask);
        ::sigaction(SIGINT, &sa, &oldInt_);
        ::sigaction(SIGTERM, &sa, &oldTerm_);
    }
    ~SignalHandlers() {
        ::sigaction(SIGINT, &oldInt_, nullptr);
        ::sigaction(SIGTERM, &oldTerm_, nullptr);
        signalWakeFd().store(invalidFd);
    }
    SignalHandlers(const SignalHandlers&) = delete;
    SignalHandlers& operator=(const SignalHandlers&) = delete;

private:
    struct sigaction oldInt_ {};
    struct sigaction oldTerm_ {};
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

inline const char* logLevelName(LogLevel level) {
    switch (level) {
        case LogLevel::debug: return "debug";
        case LogLevel::info: return "info";
        case LogLevel::warning: return "warning";
        case LogLevel::error: return "error";
        case LogLevel::critical: return "critical";
    }
    return "?";
}

/// The one log hook (Twisted's log observer). Called on the reactor thread.
using Logger = std::function<void(LogLevel, std::string_view)>;

namespace detail {
inline Logger& loggerSlot() {
    static Logger logger;  // empty: the default stderr writer
    return logger;
}
inline void defaultLog(LogLevel level, std::string_view message) {
    std::string line = "[reactor ";
    line += logLevelName(level);
    line += "] ";
    line += message;
    line += '\n';
    std::fputs(line.c_str(), stderr);
}
}  // namespace detail

/// Replaces the log hook and returns the previous one; an empty function
/// restores the default (stderr). Set it before starting other threads.
inline Logger setLogger(Logger logger) {
    return std::exchange(detail::loggerSlot(), std::move(logger));
}

/// Sends one line to the log hook.
inline void log(LogLevel level, std::string_view message) {
    Logger& logger = detail::loggerSlot();
    if (logger)
        logger(level, message);
    else
        detail::defaultLog(level, message);
}

namespace detail {

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
constexpr std::size_t maxErrorDepth = 8;

struct TypeChain {
    const char* names[maxErrorDepth] = {};
    std::size_t size = 0;
    void push(const char* name) {
        if (size < maxErrorDepth) names[size++] = name;
    }
    bool contains(const char* name) const {
        for (std::size_t i = 0; i < size; ++i)
            if (std::strcmp(names[i], name) == 0) return true;
        return false;
    }
};

}  // namespace detail

/// The root of every error this library reports. Errors carry their type
/// names as data, so Failure::check works without RTTI or exceptions.
class Error : public std::exception {
public:
    static constexpr const char* typeName = "Error";
    explicit Error(std::string message = "") : message_(std::move(message)) {}
    const char* what() const noexcept override { return message_.c_str(); }
    const std::string& message() const { return message_; }
    /// Appends this error's type name and its ancestors', most derived first.
    virtual void typeNames(detail::TypeChain& chain) const { chain.push(typeName); }

private:
    std::string message_;
};

/// CRTP glue: declares `Self` as an error type derived from `Parent`.
template <class Self, class Parent>
class ErrorType : public Parent {
public:
    using Parent::Parent;
    void typeNames(detail::TypeChain& chain) const override {
        chain.push(Self::typeName);
        Parent::typeNames(chain);
    }
};

/// The error classes, Twisted's `twisted.internet.error` with the same names
/// and messages.
namespace error {

#define REACTOR_ERROR_CLASS(Name, Parent, DefaultMessage)                              \
    class Name : public ErrorType<Name, Parent> {                                      \
    public:                                                                            \
        static constexpr const char* typeName = #Name;                                 \
        explicit Name(std::string message = DefaultMessage)                            \
            : ErrorType<Name, Parent>(std::move(message)) {}                           \
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
REACTOR_ERROR_CLASS(UserError, ConnectError, "User aborted connection.");
REACTOR_ERROR_CLASS(TimeoutError, UserError, "User timeout caused connection failure.");
REACTOR_ERROR_CLASS(NotConnectingError, RuntimeError, "The Connector was not connecting when it was asked to stop connecting.");
REACTOR_ERROR_CLASS(BindError, Error, "An error occurred binding to an interface.");
REACTOR_ERROR_CLASS(CannotListenError, BindError, "Couldn't listen.");
REACTOR_ERROR_CLASS(NotListeningError, RuntimeError, "The Port was not listening when it was asked to stop listening.");

#undef REACTOR_ERROR_CLASS

}  // namespace error

namespace detail {

#if REACTOR_HAS_RTTI && defined(__GNUG__)
inline std::string demangle(const char* name) {
    int status = 0;
    char* out = abi::__cxa_demangle(name, nullptr, nullptr, &status);
    std::string result = (status == 0 && out) ? out : name;
    std::free(out);
    return result;
}
#endif

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
    Failure(const E& e) : message_(e.what()) {  // NOLINT: implicit on purpose, like Twisted's Failure(exc)
        describe(e);
#if REACTOR_HAS_EXCEPTIONS
        exception_ = std::make_exception_ptr(e);
#endif
    }

    /// An error known only by name: `Failure("ParseError", "bad header")`.
    Failure(const char* typeName, std::string message) : message_(std::move(message)) { chain_.push(typeName); }

#if REACTOR_HAS_EXCEPTIONS
    /// From a caught exception: `catch (...) { return Failure::current(); }`.
    static Failure current() { return fromException(std::current_exception()); }

    static Failure fromException(std::exception_ptr ep) {
        Failure f;
        f.chain_ = {};
        f.exception_ = ep;
        try {
            std::rethrow_exception(ep);
        } catch (const Error& e) {  // the library's own: names without RTTI
            f.message_ = e.what();
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

    /// The original exception, or null for a Failure built from a name.
    std::exception_ptr exception() const { return exception_; }
#endif

    /// The most derived type name, e.g. "ConnectionDone".
    std::string type() const {
        if (!dynamicName_.empty()) return dynamicName_;
        return chain_.size ? chain_.names[0] : "Failure";
    }
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

    /// Throws the original exception (or an `Error` with the message).
    [[noreturn]] void raiseException() const {
#if REACTOR_HAS_EXCEPTIONS
        if (exception_) std::rethrow_exception(exception_);
        throw Error(str());
#else
        log(LogLevel::critical, "Failure::raiseException without exceptions: " + str());
        std::abort();
#endif
    }

private:
    template <class E>
    void describe(const E& e) {
        if constexpr (std::is_base_of<Error, E>::value) {
            e.typeNames(chain_);
        } else {
#if REACTOR_HAS_RTTI && defined(__GNUG__)
            dynamicName_ = detail::demangle(typeid(e).name());
#else
            chain_.push("std::exception");
#endif
        }
    }
    void describe(const std::exception& e) {
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
    static const Error* dynamicError(const std::exception& e) {
#if REACTOR_HAS_RTTI
        return dynamic_cast<const Error*>(&e);
#else
        (void)e;
        return nullptr;
#endif
    }

    std::string message_;
    std::string dynamicName_;  // a demangled type name for non-library exceptions
    detail::TypeChain chain_;  // static names: the type and its ancestors
#if REACTOR_HAS_EXCEPTIONS
    std::exception_ptr exception_;
#endif
};

namespace detail {

/// Runs `f`, catching what it throws at the reactor's edge: the error is
/// logged with `context` and returned as a Failure. Returns true if `f`
/// completed normally.
template <class F>
inline bool runGuarded(const char* context, F&& f, Failure* failure = nullptr) {
#if REACTOR_HAS_EXCEPTIONS
    try {
        f();
        return true;
    } catch (...) {
        Failure caught = Failure::current();
        log(LogLevel::error, std::string("Unhandled error in ") + context + ": " + caught.str());
        if (failure) *failure = std::move(caught);
        return false;
    }
#else
    (void)context;
    (void)failure;
    f();
    return true;
#endif
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
    explicit DelayedCall(std::shared_ptr<detail::TimerEntry> entry) : entry_(std::move(entry)) {}

    /// Unschedules the call. Cancelling a called or cancelled call is an
    /// error (`error::AlreadyCalled` / `error::AlreadyCancelled`).
    inline void cancel();
    /// Reschedules to `secondsFromNow` from now (earlier or later).
    inline void reset(double secondsFromNow);
    /// Moves the scheduled time `secondsLater` later (relative to the old time).
    inline void delay(double secondsLater);
    /// Neither called nor cancelled.
    bool active() const { return entry_ && !entry_->called && !entry_->cancelled; }
    /// The absolute time (on its clock's `seconds()` scale) it runs at.
    double getTime() const { return entry_ ? entry_->time : 0.0; }
    bool called() const { return entry_ && entry_->called; }
    bool cancelled() const { return entry_ && entry_->cancelled; }
    /// "file.cpp:42": where the call was scheduled (for leak reports).
    std::string where() const { return entry_ ? entry_->where.str() : std::string(); }
    explicit operator bool() const { return static_cast<bool>(entry_); }
    friend bool operator==(const DelayedCall& a, const DelayedCall& b) { return a.entry_ == b.entry_; }
    friend bool operator!=(const DelayedCall& a, const DelayedCall& b) { return a.entry_ != b.entry_; }

private:
    inline bool checkActive(const char* what) const;
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
    /// The calls that are scheduled and neither called nor cancelled.
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
    ~TimerQueue() {
        for (auto& node : heap_) node.entry->queue = nullptr;
    }
    TimerQueue(const TimerQueue&) = delete;
    TimerQueue& operator=(const TimerQueue&) = delete;

    std::shared_ptr<TimerEntry> schedule(double delay, std::function<void()> fn, Where where) {
        if (!(delay >= 0)) {  // also catches NaN
            raise<error::ValueError>("callLater: delay must be >= 0 seconds, got " + std::to_string(delay));
            delay = 0;
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

    /// Called through DelayedCall: the entry's time changed.
    void reschedule(const std::shared_ptr<TimerEntry>& entry, double newTime) {
        entry->time = newTime;
        ++stale_;  // the old node is now garbage
        push(entry);
    }
    void cancelled() {
        --live_;
        ++stale_;
        maybeCompact();
    }

    std::size_t liveCount() const { return live_; }
    double now() const { return clock_.seconds(); }

    /// The time of the earliest live call, or a negative number if none.
    double nextTime() {
        dropStaleTop();
        return heap_.empty() ? -1.0 : heap_.front().time;
    }

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

    std::vector<DelayedCall> delayedCalls() const {
        std::vector<DelayedCall> out;
        for (const Node& node : heap_)
            if (!isStale(node)) out.emplace_back(node.entry);
        std::sort(out.begin(), out.end(), [](const DelayedCall& a, const DelayedCall& b) {
            return a.getTime() < b.getTime();
        });
        return out;
    }

private:
    struct Node {
        double time;
        std::uint64_t seq;
        std::shared_ptr<TimerEntry> entry;
    };
    static bool later(const Node& a, const Node& b) {
        return a.time > b.time || (a.time == b.time && a.seq > b.seq);
    }
    static bool isStale(const Node& node) {
        const TimerEntry& e = *node.entry;
        return e.called || e.cancelled || e.seq != node.seq;
    }
    void push(const std::shared_ptr<TimerEntry>& entry) {
        entry->seq = nextSeq_++;
        pushNode(Node{entry->time, entry->seq, entry});
    }
    void pushNode(Node node) {
        heap_.push_back(std::move(node));
        std::push_heap(heap_.begin(), heap_.end(), later);
    }
    Node popTop() {
        std::pop_heap(heap_.begin(), heap_.end(), later);
        Node node = std::move(heap_.back());
        heap_.pop_back();
        return node;
    }
    void dropStaleTop() {
        while (!heap_.empty() && isStale(heap_.front())) {
            popTop();
            --stale_;
        }
    }
    void maybeCompact() {
        if (stale_ < 64 || stale_ * 2 < heap_.size()) return;
        heap_.erase(std::remove_if(heap_.begin(), heap_.end(), [](const Node& n) { return isStale(n); }),
                    heap_.end());
        std::make_heap(heap_.begin(), heap_.end(), later);
        stale_ = 0;
    }

    const IReactorTime& clock_;
    std::vector<Node> heap_;
    std::vector<Node> deferred_;  // reused: no allocation per pass
    std::uint64_t nextSeq_ = 0;
    std::size_t live_ = 0;
    std::size_t stale_ = 0;
};

}  // namespace detail

inline bool DelayedCall::checkActive(const char* what) const {
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

inline void DelayedCall::cancel() {
    if (!checkActive("cancel")) return;
    entry_->cancelled = true;
    entry_->fn = nullptr;  // release captures now, not when the node surfaces
    if (entry_->queue) entry_->queue->cancelled();
}

inline void DelayedCall::reset(double secondsFromNow) {
    if (!checkActive("reset")) return;
    if (!entry_->queue) return;
    // The queue knows the clock; ask it for "now" through a zero-delay probe.
    detail::TimerQueue& q = *entry_->queue;
    q.reschedule(entry_, q.now() + secondsFromNow);
}

inline void DelayedCall::delay(double secondsLater) {
    if (!checkActive("delay")) return;
    if (entry_->queue) entry_->queue->reschedule(entry_, entry_->time + secondsLater);
}

/// A deterministic clock for tests (Twisted's `task.Clock`): time stands
/// still until `advance()` moves it. Calls run inside `advance`, in time
/// order, FIFO on ties, including calls scheduled while advancing.
/// Exceptions thrown by a call propagate out of `advance`.
class Clock : public IReactorTime {
public:
    Clock() = default;
    double seconds() const override { return now_; }
    DelayedCall callLater(double delay, std::function<void()> f, detail::Where where = {}) override {
        return DelayedCall(timers_.schedule(delay, std::move(f), where));
    }
    std::vector<DelayedCall> getDelayedCalls() const override { return timers_.delayedCalls(); }

    /// Moves time forward by `amount` seconds and runs what became due.
    void advance(double amount) {
        if (!(amount >= 0)) {
            detail::raise<error::ValueError>("Clock::advance: amount must be >= 0");
            return;
        }
        now_ += amount;
        timers_.runDue(now_, true, [](std::function<void()>& fn, detail::TimerEntry&) {
            if (fn) fn();
        });
    }
    /// Calls `advance` for each amount in turn.
    void pump(const std::vector<double>& amounts) {
        for (double a : amounts) advance(a);
    }

private:
    double now_ = 0.0;
    detail::TimerQueue timers_{*this};
};

// ============================================================================
// ==== 6. THREADS ====
// A small thread pool for blocking work (database calls, name lookups).
// Every callback still runs on the reactor thread: results come back with
// Reactor::callFromThread.
// ============================================================================

/// Runs jobs on up to `maxThreads` worker threads, started lazily. `stop()`
/// lets queued jobs finish, joins the workers, and leaves the pool reusable.
class ThreadPool {
public:
    explicit ThreadPool(std::size_t maxThreads = 10) : max_(maxThreads ? maxThreads : 1) {}
    ~ThreadPool() { stop(); }
    ThreadPool(const ThreadPool&) = delete;
    ThreadPool& operator=(const ThreadPool&) = delete;

    /// Queues `job`; thread-safe. A job that throws is logged and dropped.
    void callInThread(std::function<void()> job) {
        std::lock_guard<std::mutex> lock(mutex_);
        queue_.push_back(std::move(job));
        if (idle_ == 0 && workers_.size() < max_)
            workers_.emplace_back([this] { work(); });
        else
            wake_.notify_one();
    }
    /// Twisted's adjustPoolsize(maxthreads=n); existing workers are kept.
    void setMaxThreads(std::size_t n) {
        std::lock_guard<std::mutex> lock(mutex_);
        max_ = n ? n : 1;
    }
    std::size_t maxThreads() const {
        std::lock_guard<std::mutex> lock(mutex_);
        return max_;
    }
    /// Jobs waiting for a worker (not counting the ones running).
    std::size_t queueDepth() const {
        std::lock_guard<std::mutex> lock(mutex_);
        return queue_.size() - std::min(queue_.size(), head_);
    }
    std::size_t threadCount() const {
        std::lock_guard<std::mutex> lock(mutex_);
        return workers_.size();
    }
    /// Finishes the queued jobs and joins every worker. Call from the owner's thread.
    void stop() {
        std::vector<std::thread> workers;
        {
            std::lock_guard<std::mutex> lock(mutex_);
            stopping_ = true;
            workers.swap(workers_);
        }
        wake_.notify_all();
        for (auto& t : workers) t.join();
        std::lock_guard<std::mutex> lock(mutex_);
        stopping_ = false;
        idle_ = 0;
    }

private:
    void work() {
        std::unique_lock<std::mutex> lock(mutex_);
        for (;;) {
            ++idle_;
            wake_.wait(lock, [this] { return stopping_ || head_ < queue_.size(); });
            --idle_;
            if (head_ >= queue_.size()) return;  // stopping and nothing left
            std::function<void()> job = std::move(queue_[head_++]);
            if (head_ == queue_.size()) {
                queue_.clear();
                head_ = 0;
            }
            lock.unlock();
            detail::runGuarded("thread pool job", job);
            job = nullptr;  // destroy captures outside the lock
            lock.lock();
        }
    }

    mutable std::mutex mutex_;
    std::condition_variable wake_;
    std::vector<std::function<void()>> queue_;
    std::size_t head_ = 0;
    std::vector<std::thread> workers_;
    std::size_t max_;
    std::size_t idle_ = 0;
    bool stopping_ = false;
};

// ============================================================================
// ==== 7. REACTOR ====
// The event loop. One turn:
//
//     +--> wait in poll() (until an fd is ready, the next timer is due,
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

namespace detail {
/// A readiness callback. Shared so that a callback that removes or replaces
/// itself keeps running on a live object until it returns.
using Handler = std::shared_ptr<std::function<void()>>;

inline Handler makeHandler(std::function<void()> f) {
    return std::make_shared<std::function<void()>>(std::move(f));
}

/// Where a trigger is in the three-phase event.
enum class Phase { before, during, after };
}  // namespace detail

/// The event loop (Twisted's reactor). Create as many as you like; nothing
/// is shared between two reactors. Not thread-safe except callFromThread.
class Reactor : public IReactorTime {
public:
    Reactor() : epoch_(std::chrono::steady_clock::now()) {
        wakerSlot_ = watch(waker_.readFd(), os::evRead, detail::makeHandler([this] {
                               waker_.drain();
                               wakePending_.store(false);
                           }));
        slots_[wakerSlot_].internal = true;
    }
    ~Reactor() {
        if (pool_) pool_->stop();
    }
    Reactor(const Reactor&) = delete;
    Reactor& operator=(const Reactor&) = delete;

    // ---- running ------------------------------------------------------

    /// Runs the loop until stop() (or crash()) and the shutdown event has
    /// completed. May be called again after it returns (unlike Twisted).
    /// With `installSignalHandlers`, SIGINT and SIGTERM call stop().
    inline void run(bool installSignalHandlers = false);
    /// Asks the loop to shut down: fires the "shutdown" event at the end of
    /// the current turn, then run() returns. Safe from any callback.
    inline void stop();
    /// Leaves run() at the end of this turn without the shutdown event.
    void crash() {
        loopDone_ = true;
        running_ = false;
    }
    /// True from "during startup" until "during shutdown".
    bool running() const { return running_; }
    /// One turn of the loop, waiting at most `timeout` seconds for events
    /// (0: don't wait). For embedding in a foreign loop. Not re-entrant.
    void iterate(double timeout = 0) { turn(timeout < 0 ? 0 : timeout); }

    /// Runs `f` when the reactor starts (now, if it is already running).
    TriggerId callWhenRunning(std::function<void()> f) {
        if (running_) {
            detail::runGuarded("callWhenRunning", f);
            return 0;
        }
        return addTrigger(detail::Phase::after, "startup", syncTrigger(std::move(f)), true);
    }
    /// Twisted's system event triggers: `phase` is "before", "during" or
    /// "after"; `eventType` is "startup", "shutdown" or your own name.
    /// Triggers persist across runs and run in the order they were added.
    TriggerId addSystemEventTrigger(std::string_view phase, std::string_view eventType,
                                    std::function<void()> f) {
        detail::Phase p;
        if (!parsePhase(phase, p)) return 0;
        return addTrigger(p, eventType, syncTrigger(std::move(f)), false);
    }
    /// The asynchronous form: a "before" trigger receives a `done` function
    /// and the event waits until every such trigger has called it.
    TriggerId addAsyncSystemEventTrigger(std::string_view phase, std::string_view eventType,
                                         std::function<void(std::function<void()> done)> f) {
        detail::Phase p;
        if (!parsePhase(phase, p)) return 0;
        return addTrigger(p, eventType, std::move(f), false);
    }
    /// Removes a trigger; false if the id is unknown.
    bool removeSystemEventTrigger(TriggerId id) {
        auto it = std::find_if(triggers_.begin(), triggers_.end(), [id](const Trigger& t) { return t.id == id; });
        if (it == triggers_.end()) {
            detail::raise<error::ValueError>("removeSystemEventTrigger: unknown trigger id " + std::to_string(id));
            return false;
        }
        triggers_.erase(it);
        return true;
    }
    /// Runs an event's before/during/after triggers.
    void fireSystemEvent(std::string_view eventType) {
        fireEvent(std::string(eventType), [] {});
    }

    // ---- time ---------------------------------------------------------

    /// Seconds on the monotonic clock (steady_clock), not the wall clock.
    double seconds() const override {
        return std::chrono::duration<double>(std::chrono::steady_clock::now() - epoch_).count();
    }
    DelayedCall callLater(double delay, std::function<void()> f, detail::Where where = {}) override {
        return DelayedCall(timers_.schedule(delay, std::move(f), where));
    }
    std::vector<DelayedCall> getDelayedCalls() const override { return timers_.delayedCalls(); }

    // ---- foreign file descriptors -------------------------------------

    /// Calls `f` whenever `fd` is readable (or has hung up / failed).
    /// Replaces an earlier reader of the same fd. Returns false if the fd
    /// cannot be watched (negative, or >= FD_SETSIZE with select()).
    bool addReader(int fd, std::function<void()> f) { return watch(fd, os::evRead, detail::makeHandler(std::move(f))) != npos; }
    /// Calls `f` whenever `fd` is writable.
    bool addWriter(int fd, std::function<void()> f) { return watch(fd, os::evWrite, detail::makeHandler(std::move(f))) != npos; }
    /// Stops watching; removing what is not watched is not an error. Safe
    /// inside any callback: a removed fd is not dispatched later in the turn.
    void removeReader(int fd) { unwatch(fd, os::evRead); }
    void removeWriter(int fd) { unwatch(fd, os::evWrite); }
    /// Removes every reader and writer (except internal ones) and returns their fds.
    std::vector<int> removeAll() {
        std::vector<int> fds = selectables();
        for (int fd : fds) unwatch(fd, os::evRead | os::evWrite);
        return fds;
    }
    std::vector<int> getReaders() const { return fdsWith(os::evRead); }
    std::vector<int> getWriters() const { return fdsWith(os::evWrite); }
    /// Every watched fd (the dirty-reactor check: empty after a clean test).
    std::vector<int> selectables() const { return fdsWith(os::evRead | os::evWrite); }
    /// Pending timers (the dirty-reactor check: empty after a clean test).
    std::vector<DelayedCall> pendingCalls() const { return getDelayedCalls(); }

    // ---- threads ------------------------------------------------------

    /// The only thread-safe method: runs `f` on the reactor thread at the
    /// next turn, waking the loop. Calls from one thread keep their order.
    /// Queued calls wait if the reactor is not running.
    void callFromThread(std::function<void()> f) {
        {
            std::lock_guard<std::mutex> lock(threadMutex_);
            threadCalls_.push_back(std::move(f));
            threadCallsPending_.store(true);
        }
        if (!wakePending_.exchange(true)) waker_.wake();
    }
    /// Runs `f` on the reactor's thread pool (blocking work goes here).
    void callInThread(std::function<void()> f) { getThreadPool().callInThread(std::move(f)); }
    /// The reactor's pool (10 threads at most by default; Twisted's 0/10),
    /// stopped during shutdown and when the reactor is destroyed.
    ThreadPool& getThreadPool() {
        if (!pool_) pool_ = std::make_unique<ThreadPool>(poolSize_);
        return *pool_;
    }
    void suggestThreadPoolSize(std::size_t n) {
        poolSize_ = n;
        if (pool_) pool_->setMaxThreads(n);
    }

private:
    static constexpr std::size_t npos = static_cast<std::size_t>(-1);
    // Shorthand for the platform layer inside the class.
    struct os {
        static constexpr short evRead = detail::os::evRead;
        static constexpr short evWrite = detail::os::evWrite;
        static constexpr short evError = detail::os::evError;
        static constexpr short evInvalid = detail::os::evInvalid;
        using SignalHandlers = detail::os::SignalHandlers;
    };

    struct Slot {
        detail::Handler reader;
        detail::Handler writer;
        bool internal = false;
    };
    struct Trigger {
        TriggerId id;
        detail::Phase phase;
        std::string event;
        std::function<void(std::function<void()>)> fn;
        bool once;
    };

    static std::function<void(std::function<void()>)> syncTrigger(std::function<void()> f) {
        return [f = std::move(f)](std::function<void()> done) {
            detail::runGuarded("system event trigger", f);
            done();
        };
    }
    static bool parsePhase(std::string_view phase, detail::Phase& out) {
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
    TriggerId addTrigger(detail::Phase phase, std::string_view event,
                         std::function<void(std::function<void()>)> fn, bool once) {
        TriggerId id = ++lastTriggerId_;
        triggers_.push_back(Trigger{id, phase, std::string(event), std::move(fn), once});
        return id;
    }

    /// Runs the triggers of one phase; calls `done` when every one has
    /// finished (only "before" triggers may finish later).
    void runPhase(const std::string& event, detail::Phase phase, std::function<void()> done) {
        std::vector<Trigger> batch;
        for (auto it = triggers_.begin(); it != triggers_.end();) {
            if (it->event == event && it->phase == phase) {
                batch.push_back(*it);
                if (it->once) {
                    it = triggers_.erase(it);
                    continue;
                }
            }
            ++it;
        }
        auto outstanding = std::make_shared<std::size_t>(batch.size() + 1);
        auto finishOne = [outstanding, done]() {
            if (--*outstanding == 0) done();
        };
        for (Trigger& t : batch) {
            auto fired = std::make_shared<bool>(false);
            auto doneOnce = [fired, finishOne]() {
                if (*fired) return;
                *fired = true;
                finishOne();
            };
            if (!detail::runGuarded("system event trigger", [&] { t.fn(doneOnce); })) doneOnce();
        }
        finishOne();
    }

    void fireEvent(const std::string& event, std::function<void()> whenDone) {
        runPhase(event, detail::Phase::before, [this, event, whenDone]() {
            builtinDuring(event);
            runPhase(event, detail::Phase::during, [this, event, whenDone]() {
                runPhase(event, detail::Phase::after, whenDone);
            });
        });
    }
    /// Twisted's built-in "during" triggers, which run before the user's.
    void builtinDuring(const std::string& event) {
        if (event == "startup") {
            running_ = true;
        } else if (event == "shutdown") {
            running_ = false;
            for (auto& hook : shutdownHooks_) hook.second();
            if (pool_) pool_->stop();
        }
    }

    // ---- the descriptor table: a pollfd array kept incrementally ------

    std::size_t watch(int fd, short event, detail::Handler handler) {
        if (fd < 0) {
            detail::raise<error::ValueError>("cannot watch a negative file descriptor");
            return npos;
        }
#if defined(REACTOR_USE_SELECT)
        if (fd >= detail::os::selectLimit) {
            log(LogLevel::error, "select() backend cannot watch fd " + std::to_string(fd) + " (FD_SETSIZE is " +
                                     std::to_string(detail::os::selectLimit) + ")");
            return npos;
        }
#endif
        std::size_t slot = slotOf(fd);
        if (slot == npos) {
            slot = pollfds_.size();
            pollfd p{};
            p.fd = fd;
            pollfds_.push_back(p);
            slots_.emplace_back();
            if (static_cast<std::size_t>(fd) >= slotOf_.size()) slotOf_.resize(static_cast<std::size_t>(fd) + 1, npos);
            slotOf_[static_cast<std::size_t>(fd)] = slot;
        }
        pollfds_[slot].events = static_cast<short>(pollfds_[slot].events | event);
        pollfds_[slot].revents = 0;  // a new interest is not dispatched this turn
        (event == os::evRead ? slots_[slot].reader : slots_[slot].writer) = std::move(handler);
        return slot;
    }

    void unwatch(int fd, short events) {
        std::size_t slot = slotOf(fd);
        if (slot == npos || slots_[slot].internal) return;
        if (events & os::evRead) slots_[slot].reader.reset();
        if (events & os::evWrite) slots_[slot].writer.reset();
        pollfds_[slot].events = static_cast<short>(pollfds_[slot].events & ~events);
        if (pollfds_[slot].events != 0) return;
        slotOf_[static_cast<std::size_t>(fd)] = npos;
        if (dispatching_) {  // keep indices stable until the pass is over
            pollfds_[slot].fd = -1;
            pollfds_[slot].revents = 0;
            deadSlots_.push_back(slot);
        } else {
            removeSlot(slot);
        }
    }

    void removeSlot(std::size_t slot) {
        std::size_t last = pollfds_.size() - 1;
        if (slot != last) {
            pollfds_[slot] = pollfds_[last];
            slots_[slot] = std::move(slots_[last]);
            if (pollfds_[slot].fd >= 0) slotOf_[static_cast<std::size_t>(pollfds_[slot].fd)] = slot;
            if (wakerSlot_ == last) wakerSlot_ = slot;
        }
        pollfds_.pop_back();
        slots_.pop_back();
    }

    std::size_t slotOf(int fd) const {
        auto i = static_cast<std::size_t>(fd);
        return fd >= 0 && i < slotOf_.size() ? slotOf_[i] : npos;
    }

    std::vector<int> fdsWith(short events) const {
        std::vector<int> out;
        for (std::size_t i = 0; i < pollfds_.size(); ++i)
            if (pollfds_[i].fd >= 0 && !slots_[i].internal && (pollfds_[i].events & events)) out.push_back(pollfds_[i].fd);
        return out;
    }

    void dispatch() {
        dispatching_ = true;
        const std::size_t count = pollfds_.size();
        for (std::size_t i = 0; i < count; ++i) {
            const short rev = pollfds_[i].revents;
            if (rev == 0) continue;
            pollfds_[i].revents = 0;
            const int fd = pollfds_[i].fd;
            if (fd < 0) continue;
            if (rev & os::evInvalid) {
                log(LogLevel::error, "fd " + std::to_string(fd) + " was closed while still watched; no longer watching it");
                unwatch(fd, os::evRead | os::evWrite);
                continue;
            }
            if ((rev & (os::evRead | os::evError)) && slots_[i].reader) {
                detail::Handler h = slots_[i].reader;  // keeps it alive if it removes itself
                detail::runGuarded("reader callback", *h);
            }
            // The reader may have removed the writer, or the whole fd.
            if ((rev & (os::evWrite | os::evError)) && pollfds_[i].fd == fd && slots_[i].writer) {
                detail::Handler h = slots_[i].writer;
                detail::runGuarded("writer callback", *h);
            }
        }
        dispatching_ = false;
        if (!deadSlots_.empty()) {
            std::sort(deadSlots_.begin(), deadSlots_.end(), std::greater<std::size_t>());
            for (std::size_t slot : deadSlots_) removeSlot(slot);
            deadSlots_.clear();
        }
    }

    // ---- one turn -----------------------------------------------------

    void turn(double maxWait /* < 0: no limit */) {
        double wait = maxWait;
        double next = timers_.nextTime();
        if (next >= 0) {
            double untilNext = std::max(0.0, next - seconds());
            wait = wait < 0 ? untilNext : std::min(wait, untilNext);
        }
        if (threadCallsPending_.load() || (stopRequested_ && !shutdownStarted_) || loopDone_) wait = 0;
        int ms = -1;
        if (wait >= 0) ms = static_cast<int>(std::min(std::ceil(wait * 1000.0), 2147483000.0));

#if defined(REACTOR_USE_SELECT)
        int ready = detail::os::selectWait(pollfds_.data(), pollfds_.size(), ms);
#else
        int ready = detail::os::pollWait(pollfds_.data(), pollfds_.size(), ms);
#endif
        if (ready < 0) {
            int err = detail::os::lastError();
            if (!detail::os::interrupted(err))  // EINTR: simply the next turn
                log(LogLevel::error, "poll failed: " + detail::os::errorString(err));
            for (auto& p : pollfds_) p.revents = 0;
        } else if (ready > 0) {
            dispatch();
        }

        timers_.runDue(seconds(), false, [](std::function<void()>& fn, detail::TimerEntry& e) {
            if (!fn) return;
            detail::runGuarded(("timed call scheduled at " + e.where.str()).c_str(), fn);
        });

        if (threadCallsPending_.load()) {
            {
                std::lock_guard<std::mutex> lock(threadMutex_);
                runningCalls_.swap(threadCalls_);
                threadCallsPending_.store(false);
            }
            for (auto& f : runningCalls_) detail::runGuarded("callFromThread call", f);
            runningCalls_.clear();
        }

        if (signalHandlers_ && detail::os::signalReceived().load() != 0) {
            int sig = detail::os::signalReceived().exchange(0);
            log(LogLevel::info, std::string("Received ") + (sig == SIGINT ? "SIGINT" : "SIGTERM") + ", shutting down.");
            if (running_ && !stopRequested_) stop();
        }
    }

    // ---- state ----------------------------------------------------------

    std::chrono::steady_clock::time_point epoch_;
    detail::TimerQueue timers_{*this};
    detail::os::Waker waker_;
    std::size_t wakerSlot_ = npos;

    std::vector<pollfd> pollfds_;      // handed to poll() as is
    std::vector<Slot> slots_;          // parallel to pollfds_
    std::vector<std::size_t> slotOf_;  // fd -> index, npos if unwatched
    std::vector<std::size_t> deadSlots_;
    bool dispatching_ = false;

    std::mutex threadMutex_;
    std::vector<std::function<void()>> threadCalls_;
    std::vector<std::function<void()>> runningCalls_;  // swapped in: no allocation per turn
    std::atomic<bool> threadCallsPending_{false};
    std::atomic<bool> wakePending_{false};

    std::unique_ptr<ThreadPool> pool_;
    std::size_t poolSize_ = 10;

    std::vector<Trigger> triggers_;
    TriggerId lastTriggerId_ = 0;

    bool running_ = false;
    bool inRun_ = false;
    bool stopRequested_ = false;
    bool shutdownStarted_ = false;
    bool loopDone_ = false;
    std::unique_ptr<os::SignalHandlers> signalHandlers_;

protected:
    /// Hooks run by the built-in "during shutdown" trigger (the TCP layer
    /// registers one that closes every connection and port).
    std::vector<std::pair<std::uint64_t, std::function<void()>>> shutdownHooks_;
};

inline void Reactor::run(bool installSignalHandlers) {
    if (inRun_) {
        detail::raise<error::ReactorAlreadyRunning>();
        return;
    }
    inRun_ = true;
    stopRequested_ = shutdownStarted_ = loopDone_ = false;
    if (installSignalHandlers) signalHandlers_ = std::make_unique<os::SignalHandlers>(waker_.writeFd());
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
}

inline void Reactor::stop() {
    if (!running_ || stopRequested_) {
        detail::raise<error::ReactorNotRunning>();
        return;
    }
    stopRequested_ = true;
    waker_.wake();  // harmless if called on the loop thread; needed for foreign wake-ups
}

// ============================================================================
// ==== 8. PROTOCOLS ====
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
// ============================================================================

/// A transport endpoint address (Twisted's IPv4Address / IPv6Address).
struct Address {
    std::string type = "TCP";
    std::string host;
    std::uint16_t port = 0;
    bool ipv6 = false;
    /// "127.0.0.1:8000", or "[::1]:8000" for IPv6.
    std::string str() const {
        return (ipv6 ? "[" + host + "]" : host) + ":" + std::to_string(port);
    }
    friend bool operator==(const Address& a, const Address& b) {
        return a.type == b.type && a.host == b.host && a.port == b.port && a.ipv6 == b.ipv6;
    }
};

/// Something that produces data on demand (Twisted's IPushProducer and
/// IPullProducer in one). A consumer (a transport) pauses a streaming
/// producer when its buffer is full and resumes it when it drains; a
/// non-streaming (pull) producer gets resumeProducing() for each chunk.
class IProducer {
public:
    virtual ~IProducer() = default;
    virtual void pauseProducing() {}
    virtual void resumeProducing() = 0;
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
    virtual void writeSequence(const std::string_view* parts, std::size_t count) {
        for (std::size_t i = 0; i < count; ++i) write(parts[i]);
    }
    void writeSequence(std::initializer_list<std::string_view> parts) { writeSequence(parts.begin(), parts.size()); }
    void writeSequence(const std::vector<std::string_view>& parts) { writeSequence(parts.data(), parts.size()); }
    void writeSequence(const std::vector<std::string>& parts) {
        for (const auto& part : parts) write(part);
    }
    /// Closes after everything buffered has been sent.
    virtual void loseConnection() = 0;
    /// Closes now, dropping buffered data (the peer sees a reset).
    virtual void abortConnection() = 0;
    /// Half-close: shuts down the sending side once the buffer drains.
    virtual void loseWriteConnection() = 0;
    virtual Address getPeer() const = 0;
    virtual Address getHost() const = 0;
    /// Flow control for outgoing data: a streaming producer is paused while
    /// the buffer is above the high-water mark and resumed below the low
    /// one; a pull producer is asked for more each time the buffer drains.
    virtual void registerProducer(IProducer* producer, bool streaming) = 0;
    virtual void unregisterProducer() = 0;
    /// TCP options; false where the transport has no such thing.
    virtual bool setTcpNoDelay(bool enabled) { (void)enabled; return false; }
    virtual bool setTcpKeepAlive(bool enabled) { (void)enabled; return false; }

    bool connected = false;      ///< true until the connection is gone
    bool disconnecting = false;  ///< loseConnection() was called
};

class Factory;

/// The base of every protocol. Override the event methods; the transport
/// calls them, always on the reactor thread.
class Protocol {
public:
    virtual ~Protocol() = default;

    /// Attaches the transport and calls connectionMade(). Called by the
    /// transport (or by a test with a StringTransport).
    void makeConnection(ITransport* t) {
        connected = true;
        transport = t;
        connectionMade();
    }
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
    virtual void readConnectionLost() {}
    /// Our loseWriteConnection() completed (only for halfCloseable protocols).
    virtual void writeConnectionLost() {}

    ITransport* transport = nullptr;  ///< valid from makeConnection until connectionLost returns
    Factory* factory = nullptr;       ///< the factory that built this protocol, if any
    bool connected = false;
};

/// Makes protocols for connections (Twisted's Factory). Set `protocol` (or
/// use forProtocol), or override buildProtocol. Outlives its ports and
/// connections: listenTCP/connectTCP keep a reference, not a copy.
class Factory {
public:
    Factory() = default;
    virtual ~Factory() = default;

    /// Makes a protocol (Twisted's `protocol` class attribute, as a function).
    std::function<std::unique_ptr<Protocol>()> protocol;

    /// A factory whose protocol is `P(args...)`.
    template <class P, class... Args>
    static Factory forProtocol(Args... args) {
        Factory f;
        f.protocol = [args...]() -> std::unique_ptr<Protocol> { return std::make_unique<P>(args...); };
        return f;
    }

    /// Called for each new connection; return null to refuse it (the
    /// connection is closed). The default calls `protocol` and sets
    /// the new protocol's `factory`.
    virtual std::unique_ptr<Protocol> buildProtocol(const Address& addr) {
        (void)addr;
        if (!protocol) return nullptr;
        std::unique_ptr<Protocol> p = protocol();
        if (p) p->factory = this;
        return p;
    }
    /// Called once before the first port (or connector) starts using it.
    virtual void startFactory() {}
    /// Called once after the last one stops.
    virtual void stopFactory() {}

    /// Reference-counted start/stop, called by ports and connectors.
    void doStart() {
        if (numPorts++ == 0) startFactory();
    }
    void doStop() {
        if (numPorts == 0) return;
        if (--numPorts == 0) stopFactory();
    }
    int numPorts = 0;
};

/// A client connection attempt (Twisted's IConnector), handed to the
/// ClientFactory's callbacks; `connect()` tries again.
class IConnector {
public:
    virtual ~IConnector() = default;
    /// Starts a new attempt (only when disconnected).
    virtual void connect() = 0;
    /// Stops an attempt in progress, or closes the connection.
    virtual void disconnect() = 0;
    /// Stops an attempt in progress (`error::NotConnectingError` otherwise).
    virtual void stopConnecting() = 0;
    virtual Address getDestination() const = 0;
};

/// A factory for outgoing connections (Twisted's ClientFactory).
class ClientFactory : public Factory {
public:
    /// An attempt started (called before connectTCP returns).
    virtual void startedConnecting(IConnector& connector) { (void)connector; }
    /// The attempt failed: refused, timed out, unknown host...
    virtual void clientConnectionFailed(IConnector& connector, const Failure& reason) {
        (void)connector;
        (void)reason;
    }
    /// An established connection ended.
    virtual void clientConnectionLost(IConnector& connector, const Failure& reason) {
        (void)connector;
        (void)reason;
    }
};

// ============================================================================
// ==== 10. BASIC FRAMING ====
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
    explicit StringTooLongError(std::string message = "String too long.")
        : ErrorType<StringTooLongError, ValueError>(std::move(message)) {}
};
}  // namespace error

namespace detail {

/// `a + b` without wrapping around (a huge MAX_LENGTH means "no limit").
inline std::size_t addSaturated(std::size_t a, std::size_t b) {
    return a > static_cast<std::size_t>(-1) - b ? static_cast<std::size_t>(-1) : a + b;
}

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
    void append(std::string_view bytes) {
        if (busy || !incoming.empty())
            incoming.append(bytes.data(), bytes.size());
        else
            data.append(bytes.data(), bytes.size());
    }
    /// Moves re-entrant arrivals behind the buffered bytes. Only call when no
    /// view into `data` is held by a callback.
    void merge() {
        if (incoming.empty()) return;
        compact();
        data.append(incoming);
        incoming.clear();
    }
    void compact() {
        if (pos == 0) return;
        data.erase(0, pos);
        pos = 0;
    }
    /// Removes and returns everything buffered (both parts). Unless
    /// `noViews`, `data` is not reallocated, so a view that a running
    /// callback holds stays valid.
    std::string take(bool noViews = false) {
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
    void clear() {
        if (busy) {
            pos = data.size();  // a callback may still hold a view into data
        } else {
            data.clear();
            pos = 0;
        }
        incoming.clear();
    }
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

}  // namespace detail

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
class LineReceiver : public Protocol, public IProducer {
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
    virtual void lineLengthExceeded(std::string_view line) {
        (void)line;
        if (transport) transport->loseConnection();
    }

    /// Sends `line` followed by the delimiter (no escaping: a delimiter
    /// inside `line` makes two lines at the peer, as in Twisted).
    void sendLine(std::string_view line) {
        if (transport) transport->writeSequence({line, std::string_view(delimiter)});
    }
    /// From now on (the very next buffered byte) data goes to rawDataReceived.
    void setRawMode() { lineMode_ = false; }
    /// From now on data is split into lines. `extra` (bytes that
    /// rawDataReceived did not consume) is processed first: call it from
    /// rawDataReceived, or from outside any callback.
    void setLineMode(std::string_view extra = {}) {
        lineMode_ = true;
        if (!extra.empty()) dataReceived(extra);
    }
    /// Twisted's `line_mode`.
    bool lineMode() const { return lineMode_; }
    /// Returns and discards everything received but not yet delivered. Safe
    /// inside lineReceived: the current line's view stays valid.
    std::string clearLineBuffer() {
        searchFrom_ = 0;
        return buf_.take();
    }
    /// Bytes buffered and not yet delivered (for tests and monitoring).
    std::size_t bufferedSize() const { return buf_.size(); }

    /// Stop delivering lines (buffered ones wait) and stop reading.
    void pauseProducing() override {
        paused_ = true;
        if (transport) transport->pauseProducing();
    }
    /// Start reading again and deliver what was held, in order.
    void resumeProducing() override {
        paused_ = false;
        if (transport) transport->resumeProducing();
        dataReceived({});
    }
    void stopProducing() override {
        paused_ = true;
        if (transport) transport->stopProducing();
    }
    bool paused() const { return paused_; }

    /// Called by the transport with each chunk read. Re-entrant calls (from
    /// inside a callback) only queue the bytes.
    void dataReceived(std::string_view data) override {
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

private:
    void process() {
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
                    lineLengthExceeded(line);
                } else {  // resume the search where a partial delimiter may start
                    searchFrom_ = pending.size() - std::min(pending.size(), delimiter.size() - 1);
                }
                break;
            }
            if (at > MAX_LENGTH) {
                std::string exceeded = buf_.take(true);  // line + delimiter + the rest
                searchFrom_ = 0;
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

    bool closing() const { return transport && transport->disconnecting; }

    detail::FrameBuffer buf_;
    std::size_t searchFrom_ = 0;  // offset in buf_.pending() where the search resumes
    std::string searchDelimiter_ = "\r\n";
    bool lineMode_ = true;
    bool paused_ = false;
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
    std::string delimiter = "\r\n";
    std::size_t MAX_LENGTH = 16384;

    /// Called by dataReceived for each complete line, without its delimiter.
    virtual void lineReceived(std::string_view line) = 0;
    /// Called by dataReceived for a line over MAX_LENGTH. Default: close.
    virtual void lineLengthExceeded(std::string_view line) {
        (void)line;
        if (transport) transport->loseConnection();
    }
    /// Sends `line` followed by the delimiter.
    void sendLine(std::string_view line) {
        if (transport) transport->writeSequence({line, std::string_view(delimiter)});
    }
    /// Bytes buffered and not yet delivered (for tests and monitoring).
    std::size_t bufferedSize() const { return buffer_.size() + queued_.size(); }

    /// Called by the transport with each chunk read. Re-entrant calls only
    /// queue the bytes; they are processed when the outer call finishes.
    void dataReceived(std::string_view data) override {
        if (busy_) {
            queued_.append(data.data(), data.size());
            return;
        }
        detail::BusyScope busy(busy_);
        feed(data);
        while (!queued_.empty()) {
            std::string more;
            more.swap(queued_);
            feed(more);
        }
    }

private:
    void feed(std::string_view data) {
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
    void sendString(std::string_view string) {
        if (!transport) return;
        std::string header = std::to_string(string.size());
        header += ':';
        transport->writeSequence({std::string_view(header), string, std::string_view(",")});
    }
    /// Bytes buffered and not yet delivered (for tests and monitoring).
    std::size_t bufferedSize() const { return payload_.size() + queued_.size(); }

    /// Called by the transport with each chunk read. Re-entrant calls only
    /// queue the bytes.
    void dataReceived(std::string_view data) override {
        if (busy_) {
            queued_.append(data.data(), data.size());
            return;
        }
        detail::BusyScope busy(busy_);
        feed(data);
        while (!queued_.empty()) {
            std::string more;
            more.swap(queued_);
            feed(more);
        }
    }

private:
    enum class State { length, payload, comma };

    void feed(std::string_view data) {
        std::size_t i = 0;
        while (i < data.size() && !brokenPeer) {
            switch (state_) {
                case State::length: {
                    const char c = data[i++];
                    if (c >= '0' && c <= '9') {
                        if (digits_ == 1 && length_ == 0) return fail("leading zero in the length");
                        length_ = length_ * 10 + static_cast<std::size_t>(c - '0');
                        ++digits_;
                        if (length_ > MAX_LENGTH)
                            return fail("length is over MAX_LENGTH (" + std::to_string(MAX_LENGTH) + ")");
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
    void reset() {
        state_ = State::length;
        length_ = 0;
        digits_ = 0;
    }
    void fail(const std::string& why) {
        brokenPeer = true;
        payload_.clear();
        payload_.shrink_to_fit();
        queued_.clear();
        log(LogLevel::warning, "NetstringReceiver: bad netstring from peer: " + why + "; closing the connection");
        if (transport) transport->loseConnection();
    }

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
class IntNStringReceiver : public Protocol, public IProducer {
public:
    /// The size of the length prefix in bytes (1, 2 or 4 in Twisted).
    explicit IntNStringReceiver(std::size_t prefixBytes)
        : prefixLength(prefixBytes >= 1 && prefixBytes <= 8 ? prefixBytes : 4) {
        if (prefixLength != prefixBytes)
            detail::raise<error::ValueError>("IntNStringReceiver: prefixLength must be 1 to 8 bytes");
    }

    const std::size_t prefixLength;
    /// The longest string accepted.
    std::size_t MAX_LENGTH = 99999;

    /// Called by dataReceived for each complete string (may be empty).
    virtual void stringReceived(std::string_view string) = 0;
    /// Called by dataReceived when a prefix announces more than MAX_LENGTH
    /// bytes. Default: close the connection. The stream cannot be re-synced,
    /// so the buffer is discarded and later data ignored (Twisted keeps it
    /// and calls again on every read; we stay bounded instead).
    virtual void lengthLimitExceeded(std::size_t length) {
        (void)length;
        if (transport) transport->loseConnection();
    }

    /// Sends the prefix and `string`. A string the prefix cannot encode
    /// (2^(8*prefixLength) bytes or more) raises error::StringTooLongError
    /// (logged and not sent without exceptions); returns whether it was sent.
    bool sendString(std::string_view string) {
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
    /// Bytes buffered and not yet delivered (for tests and monitoring).
    std::size_t bufferedSize() const { return buf_.size(); }

    void pauseProducing() override {
        paused_ = true;
        if (transport) transport->pauseProducing();
    }
    void resumeProducing() override {
        paused_ = false;
        if (transport) transport->resumeProducing();
        dataReceived({});
    }
    void stopProducing() override {
        paused_ = true;
        if (transport) transport->stopProducing();
    }
    bool paused() const { return paused_; }

    /// Called by the transport with each chunk read. Re-entrant calls only
    /// queue the bytes.
    void dataReceived(std::string_view data) override {
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

private:
    detail::FrameBuffer buf_;
    bool paused_ = false;
    bool exceeded_ = false;
};

/// A 4-byte big-endian length prefix (Twisted's Int32StringReceiver).
class Int32StringReceiver : public IntNStringReceiver {
public:
    Int32StringReceiver() : IntNStringReceiver(4) {}
};
/// A 2-byte big-endian length prefix (Twisted's Int16StringReceiver).
class Int16StringReceiver : public IntNStringReceiver {
public:
    Int16StringReceiver() : IntNStringReceiver(2) {}
};
/// A 1-byte length prefix (Twisted's Int8StringReceiver).
class Int8StringReceiver : public IntNStringReceiver {
public:
    Int8StringReceiver() : IntNStringReceiver(1) {}
};

// ============================================================================
// ==== 13. TESTING ====
// Helpers for tests that drive a real Reactor: run until a condition holds
// (never sleep), and fail when a test leaves timers or descriptors behind
// (Trial's "dirty reactor" check).
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
    explicit StringTransport(Address host = {"TCP", "10.0.0.1", 12345, false},
                             Address peer = {"TCP", "192.168.1.1", 54321, false})
        : hostAddress(std::move(host)), peerAddress(std::move(peer)) {
        connected = true;
    }

    /// Everything written since the last clear().
    const std::string& value() const { return io_; }
    void clear() { io_.clear(); }

    void write(std::string_view data) override { io_.append(data); }  // accepted even after loseConnection, as Twisted
    void writeSequence(const std::string_view* parts, std::size_t count) override {
        for (std::size_t i = 0; i < count; ++i) io_.append(parts[i]);
    }
    /// Only records the request: connectionLost is not called (see
    /// StringTransportWithDisconnection for that).
    void loseConnection() override { disconnecting = true; }
    void abortConnection() override {
        disconnecting = true;
        aborted = true;
    }
    void loseWriteConnection() override { writeConnectionLost = true; }
    Address getPeer() const override { return peerAddress; }
    Address getHost() const override { return hostAddress; }

    /// The reading side, as the protocol controls it: "producing", "paused", "stopped".
    void pauseProducing() override {
        if (checkNotDisconnecting("pause")) producerState = "paused";
    }
    void resumeProducing() override {
        if (checkNotDisconnecting("resume")) producerState = "producing";
    }
    void stopProducing() override { producerState = "stopped"; }

    void registerProducer(IProducer* p, bool isStreaming) override {
        if (producer) {
            detail::raise<error::RuntimeError>("Cannot register two producers");
            return;
        }
        producer = p;
        streaming = isStreaming;
    }
    void unregisterProducer() override {
        if (!producer) {
            detail::raise<error::RuntimeError>("Cannot unregister a producer unless one is registered");
            return;
        }
        producer = nullptr;
    }
    bool setTcpNoDelay(bool enabled) override { return noDelay = enabled, true; }
    bool setTcpKeepAlive(bool enabled) override { return keepAlive = enabled, true; }

    std::string producerState = "producing";
    IProducer* producer = nullptr;  ///< the registered producer, if any
    bool streaming = false;
    bool aborted = false;
    bool writeConnectionLost = false;  ///< loseWriteConnection() was called
    bool noDelay = false;
    bool keepAlive = false;
    Address hostAddress;
    Address peerAddress;

private:
    bool checkNotDisconnecting(const char* what) {
        if (!disconnecting) return true;
        detail::raise<error::RuntimeError>(std::string("Cannot ") + what + " producing after loseConnection");
        return false;
    }
    std::string io_;
};

/// A StringTransport whose loseConnection() does complete: it calls the
/// protocol's connectionLost(ConnectionDone) (Twisted's
/// StringTransportWithDisconnection). Set `protocol` first.
class StringTransportWithDisconnection : public StringTransport {
public:
    using StringTransport::StringTransport;
    Protocol* protocol = nullptr;
    void loseConnection() override {
        if (!connected) return;
        StringTransport::loseConnection();
        connected = false;
        if (protocol) {
            protocol->connected = false;
            protocol->connectionLost(Failure(error::ConnectionDone("Bye.")));
        }
    }
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

/// Empty if `r` has no pending timers and no watched descriptors; otherwise
/// names each leftover (timers with the line that scheduled them).
inline std::string dirtyReport(const Reactor& r) {
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
        for (int fd : fds) report += "\n  fd " + std::to_string(fd);
    }
    return report;
}

/// Trial's janitor: returns dirtyReport(r), then cancels the leftover
/// timers and stops watching the leftover descriptors so the next test
/// starts clean.
inline std::string cleanUp(Reactor& r) {
    std::string report = dirtyReport(r);
    for (auto& c : r.pendingCalls()) c.cancel();
    r.removeAll();
    return report;
}

}  // namespace testing


}  // namespace v0
}  // namespace reactor

#endif  // REACTOR_HPP_INCLUDED
