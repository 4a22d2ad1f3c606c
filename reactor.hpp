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
//   6. DEFERRED        Deferred<T>, Result<T>, DeferredList, gatherResults
//   7. THREADS         ThreadPool
//   8. REACTOR         the event loop
//   9. TASK            LoopingCall, deferLater, deferToThread
//  10. TESTING         dirty-reactor checks, runUntil
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
#include <memory>       // std::shared_ptr, std::unique_ptr
#include <mutex>        // cross-thread call queue
#include <string>       // messages, buffers
#include <string_view>  // zero-copy data to protocols
#include <thread>       // thread pool workers
#include <type_traits>  // SFINAE helpers
#include <utility>      // std::move, std::exchange
#include <variant>      // Result<T>: a value or a Failure
#include <vector>       // everything array-like

// C++20 coroutines: Deferred<T> is awaitable and a coroutine return type.
#if defined(__cpp_impl_coroutine) && defined(__has_include)
#if __has_include(<coroutine>)
#include <coroutine>    // std::coroutine_handle, std::suspend_never
#define REACTOR_HAS_COROUTINES 1
#endif
#endif

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
            error_ = std::make_shared<E>(e);  // for value<E>() without exceptions
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
    std::shared_ptr<const Error> error_;  // the library error object, when built from one
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
//     the result (value or failure) *moves* into the new Deferred. The
//     original chain is then left holding a handled "ResultConsumed"
//     failure; callbacks added to the original handle after that point see
//     it on the errback track (Twisted's "result becomes None").
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

template <class R>
struct IsDeferred : std::false_type {};
template <class T>
struct IsDeferred<Deferred<T>> : std::true_type {};
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
    explicit AlreadyCalledError(std::string message = "Deferred was already called")
        : ErrorType<AlreadyCalledError, Error>(std::move(message)) {}
};

/// What a cancelled Deferred errbacks with (unless its canceller fired it).
class CancelledError : public ErrorType<CancelledError, Error> {
public:
    static constexpr const char* typeName = "defer.CancelledError";
    explicit CancelledError(std::string message = "Deferred was cancelled")
        : ErrorType<CancelledError, Error>(std::move(message)) {}
};

/// What `addTimeout` turns the CancelledError of a timed-out Deferred into.
class TimeoutError : public ErrorType<TimeoutError, Error> {
public:
    static constexpr const char* typeName = "defer.TimeoutError";
    explicit TimeoutError(std::string message = "Deferred timed out")
        : ErrorType<TimeoutError, Error>(std::move(message)) {}
};

/// A DeferredList with fireOnOneErrback (and gatherResults) fails with this:
/// `subFailure` is the member's failure, `index` its position in the list.
/// Read it with `f.value<defer::FirstError>()` (works without exceptions).
class FirstError : public ErrorType<FirstError, Error> {
public:
    static constexpr const char* typeName = "defer.FirstError";
    FirstError(Failure failure, std::size_t failedIndex)
        : ErrorType<FirstError, Error>("FirstError[#" + std::to_string(failedIndex) + ", " + failure.str() + "]"),
          subFailure(std::move(failure)),
          index(failedIndex) {}
    Failure subFailure;
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
    Result() : v_(std::in_place_index<1>) {}
    Result(Stored value) : v_(std::in_place_index<1>, std::move(value)) {}  // NOLINT: implicit on purpose
    Result(Failure failure) : v_(std::in_place_index<0>, std::move(failure)) {}  // NOLINT

    bool ok() const { return v_.index() == 1; }
    bool failed() const { return v_.index() == 0; }
    explicit operator bool() const { return ok(); }
    /// The value; on a failure this raises it (Failure::raiseException).
    Stored& value() {
        if (!ok()) failure().raiseException();
        return *std::get_if<1>(&v_);
    }
    const Stored& value() const {
        if (!ok()) failure().raiseException();
        return *std::get_if<1>(&v_);
    }
    /// The failure; only meaningful when failed().
    Failure& failure() { return *std::get_if<0>(&v_); }
    const Failure& failure() const { return *std::get_if<0>(&v_); }

private:
    std::variant<Failure, Stored> v_;
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
    std::weak_ptr<DeferredBase> waitingOn;  // the inner Deferred a callback returned
    std::function<void()> canceller;

    /// Runs the chain's pairs until it is exhausted or paused. Returns a
    /// Deferred the loop must run first (then this one again), or null.
    virtual DeferredPtr advance() = 0;
    virtual void errbackCancelled() = 0;

    /// Twisted's cancel(): the canceller (or "suppress the next fire"), then
    /// CancelledError if still unfired; a fired Deferred waiting on an inner
    /// one cancels that one instead.
    void cancel() {
        DeferredPtr keep = shared_from_this();
        if (!called) {
            if (canceller) {
                std::function<void()> c = std::move(canceller);
                canceller = nullptr;
                c();
            } else {
                suppressAlreadyCalled = true;
            }
            if (!called) errbackCancelled();
        } else if (DeferredPtr inner = waitingOn.lock()) {
            inner->cancel();
        }
    }

    void unpause() {
        if (paused == 0) return;
        if (--paused == 0 && called) run(shared_from_this());
    }

    /// The loop (Twisted's `_runCallbacks`): an explicit stack instead of
    /// recursion, so a chain finishing an outer Deferred that finishes an
    /// outer one... runs in constant C++ stack depth.
    static void run(DeferredPtr start) {
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
};

inline Failure consumedFailure() {
    return Failure("ResultConsumed", "this Deferred's result was passed on to another Deferred");
}

/// One Deferred's chain and result.
template <class T>
class DeferredState final : public DeferredBase {
public:
    using Step = std::function<DeferredPtr(DeferredState&)>;

    Result<T> result{Failure()};
    bool consumed = false;  // the result moved on: nothing to report
    std::vector<Step> steps;
    std::size_t next = 0;

    ~DeferredState() override {
        if (called && !consumed && result.failed())
            log(LogLevel::critical, "Unhandled error in Deferred: " + result.failure().str());
    }

    DeferredPtr advance() override {
        while (next < steps.size()) {
            if (paused) return nullptr;
            Step step = std::move(steps[next++]);
            if (DeferredPtr other = step(*this)) return other;
        }
        steps.clear();
        next = 0;
        return nullptr;
    }
    void errbackCancelled() override { fire(Result<T>(Failure(defer::CancelledError()))); }

    std::shared_ptr<DeferredState> self() { return std::static_pointer_cast<DeferredState>(shared_from_this()); }

    void setResult(Result<T>&& r) {
        result = std::move(r);
        consumed = false;
    }
    /// Moves the result out, leaving the handled "ResultConsumed" marker.
    Result<T> take() {
        Result<T> r = std::move(result);
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
        called = true;
        canceller = nullptr;
        setResult(std::move(r));
        run(shared_from_this());
    }
    /// Fires without running: the caller (a step) returns it to the loop.
    DeferredPtr prime(Result<T>&& r) {
        if (called) return nullptr;
        called = true;
        canceller = nullptr;
        setResult(std::move(r));
        return shared_from_this();
    }
    void addStep(Step step) {
        steps.push_back(std::move(step));
        if (called && !running && paused == 0) run(shared_from_this());
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
    if (inner->called && !inner->running && inner->paused == 0 && inner->next == inner->steps.size())
        return settle(s, inner->take());
    ++s.paused;
    s.waitingOn = inner;
    std::shared_ptr<DeferredState<U>> parent = s.self();
    inner->steps.push_back([parent](DeferredState<U>& me) -> DeferredPtr {
        parent->setResult(me.take());
        parent->waitingOn.reset();
        return --parent->paused == 0 ? DeferredPtr(parent) : nullptr;
    });
    return inner->called && !inner->running ? DeferredPtr(inner) : nullptr;
}

template <class U, class R>
DeferredPtr settleReturn(DeferredState<U>& s, R&& r) {
    if constexpr (IsDeferred<std::decay_t<R>>::value)
        return settleDeferred(s, stateOf(r));
    else
        return settle(s, Result<U>(std::forward<R>(r)));
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
template <class R, class T>
struct Unwrap {
    using type = R;
};
template <class T>
struct Unwrap<Failure, T> {
    using type = T;
};
template <class V, class T>
struct Unwrap<Result<V>, T> {
    using type = V;
};
template <class V, class T>
struct Unwrap<Deferred<V>, T> {
    using type = V;
};

/// Whether a half returning `R` can feed a Deferred<U>.
template <class R, class U>
constexpr bool feeds() {
    if constexpr (std::is_void<R>::value)
        return std::is_void<U>::value;
    else if constexpr (IsDeferred<R>::value)
        return std::is_same<R, Deferred<U>>::value;
    else
        return std::is_convertible<R, Result<U>>::value;
}

inline std::string formatSeconds(double s) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%g", s);
    return buf;
}

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
    void errback(Failure failure = Failure()) { s_->fire(Result<T>(std::move(failure))); }

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
    /// Failure (fails on), a Result<T> or a Deferred<T>; for Deferred<void>
    /// it may return nothing (recovers).
    template <class EB>
    Deferred addErrback(EB eb) {
        static_assert(std::is_invocable<EB&, Failure&&>::value, "an errback takes a Failure");
        using R2 = std::decay_t<std::invoke_result_t<EB&, Failure&&>>;
        static_assert(detail::feeds<R2, T>(),
                      "addErrback on Deferred<T>: the errback must return T, Result<T>, Failure or "
                      "Deferred<T> (nothing for Deferred<void>)");
        return chain<T>(detail::Pass{}, std::move(eb));
    }
    /// Adds (f, f): `f(Result<T>)` sees either track and returns like a callback.
    template <class F>
    auto addBoth(F f) {
        static_assert(std::is_invocable<F&, Result<T>&&>::value, "addBoth: the function takes a Result<T>");
        using R = std::decay_t<std::invoke_result_t<F&, Result<T>&&>>;
        using U = typename detail::Unwrap<R, T>::type;
        return chainBoth<U>(std::move(f));
    }

    // ---- flow control -------------------------------------------------------

    /// Stops the chain from running until unpause() (a counter).
    void pause() { ++s_->paused; }
    void unpause() { s_->unpause(); }
    /// Twisted's cancel(): unfired → canceller (or "ignore the next fire"),
    /// then CancelledError if still unfired; waiting on a Deferred returned
    /// by a callback → cancels that one; otherwise nothing.
    void cancel() { s_->cancel(); }
    /// Cancels this Deferred if it has not fired after `seconds` on `clock`
    /// and turns that CancelledError into defer::TimeoutError. Covers the
    /// callbacks added before this call. The timer does not keep the
    /// Deferred alive; it is cancelled when the Deferred fires.
    Deferred addTimeout(double seconds, IReactorTime& clock) {
        auto timedOut = std::make_shared<bool>(false);
        std::weak_ptr<detail::DeferredState<T>> weak = s_;
        DelayedCall call = clock.callLater(seconds, [weak, timedOut] {
            if (auto s = weak.lock()) {
                *timedOut = true;
                s->cancel();
            }
        });
        return addBoth([call, timedOut, seconds](Result<T> r) mutable -> Result<T> {
            if (call.active()) call.cancel();
            if (*timedOut && r.failed() && r.failure().template check<defer::CancelledError>())
                return Failure(defer::TimeoutError("Deferred timed out after " + detail::formatSeconds(seconds) + " seconds"));
            return r;
        });
    }

    /// callback() or errback() has happened (the chain may still be paused).
    bool called() const { return s_->called; }
    /// Paused by pause() or waiting for a Deferred a callback returned.
    bool paused() const { return s_->paused > 0; }

    friend bool operator==(const Deferred& a, const Deferred& b) { return a.s_ == b.s_; }
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
            std::weak_ptr<detail::DeferredState<T>> source = s_;
            target->canceller = [source] {  // cancelling the branch cancels its source
                if (auto s = source.lock()) s->cancel();
            };
            s_->addStep([target, fn = std::move(fn)](detail::DeferredState<T>& s) mutable -> detail::DeferredPtr {
                Result<T> r = s.take();
                if (target->called) return nullptr;  // fired directly (e.g. cancelled): drop
                target->called = true;
                target->canceller = nullptr;
                if (detail::DeferredPtr first = fn(*target, std::move(r))) return first;
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
inline Deferred<void> succeed() {
    Deferred<void> d;
    d.callback();
    return d;
}
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
            return R(f());
        } catch (...) {
            return fail<U>(Failure::current());
        }
#else
        return R(f());
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
    static constexpr std::size_t npos = static_cast<std::size_t>(-1);
    std::size_t index = npos;
};

/// Twisted's DeferredList: a Deferred that fires when every member has
/// (or on the first success / failure with the flags). Members' failures
/// stay in the members unless `consumeErrors` (then they are handled).
/// An empty list fires at once, except with fireOnOneCallback (never).
/// cancel() cancels every member while the list is unfired.
template <class T>
class DeferredList : public Deferred<DeferredListResult<T>> {
public:
    explicit DeferredList(std::vector<Deferred<T>> members, bool fireOnOneCallback = false,
                          bool fireOnOneErrback = false, bool consumeErrors = false) {
        using ListState = detail::DeferredState<DeferredListResult<T>>;
        std::shared_ptr<ListState> self = detail::stateOf<DeferredListResult<T>>(*this);
        std::vector<std::weak_ptr<detail::DeferredState<T>>> weak;
        for (auto& m : members) weak.push_back(detail::stateOf(m));
        self->canceller = [weak] {
            for (auto& w : weak)
                if (auto m = w.lock()) m->cancel();
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

/// `co_await d` (AsResult = false: the value, failures thrown) or
/// `co_await asResult(d)` (a Result<T>, for -fno-exceptions code).
template <class T, bool AsResult>
struct DeferredAwaiter {
    std::shared_ptr<DeferredState<T>> s;
    Result<T> result{Failure()};
    bool inSuspend = false;
    bool ready = false;

    bool await_ready() const noexcept { return false; }
    bool await_suspend(std::coroutine_handle<> h) {
        inSuspend = true;
        s->addStep([this, h](DeferredState<T>& st) -> DeferredPtr {
            result = st.take();
            if (inSuspend)
                ready = true;  // fired already: resume without suspending
            else
                h.resume();
            return nullptr;
        });
        inSuspend = false;
        return !ready;
    }
    auto await_resume() {
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
struct DeferredPromiseBase {
    Deferred<T> deferred;
    Deferred<T> get_return_object() { return deferred; }
    std::suspend_never initial_suspend() noexcept { return {}; }  // runs at once, like ensureDeferred
    std::suspend_never final_suspend() noexcept { return {}; }
    void unhandled_exception() {
#if REACTOR_HAS_EXCEPTIONS
        deferred.errback(Failure::current());
#else
        std::abort();
#endif
    }
};

template <class T>
struct DeferredPromise : DeferredPromiseBase<T> {
    /// `co_return value;`, `co_return failure;` or `co_return result;`.
    template <class V>
    void return_value(V&& v) {
        if constexpr (std::is_convertible<V, Result<T>>::value)
            stateOf(this->deferred)->fire(Result<T>(std::forward<V>(v)));
        else
            stateOf(this->deferred)->fire(Result<T>(T(std::forward<V>(v))));
    }
};
template <>
struct DeferredPromise<void> : DeferredPromiseBase<void> {
    void return_void() { this->deferred.callback(); }
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
// ==== 8. REACTOR ====
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
// ==== 9. TASK ====
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
    using U = typename detail::Unwrap<R, void>::type;
    Deferred<U> d;
    r.getThreadPool().callInThread([&r, d, f = std::move(f)]() mutable {
        auto outcome = std::make_shared<Result<U>>(detail::captureResult<U>(f));
        // Move the handle out so this worker never drops the last reference.
        r.callFromThread([d = std::move(d), outcome]() mutable { detail::stateOf(d)->fire(std::move(*outcome)); });
    });
    return d;
}

namespace task {

/// Calls `f` every `interval` seconds on `clock` (Twisted's LoopingCall).
///   - `f` may return nothing, a value, a Failure/Result, or a Deferred: the
///     next call is scheduled only after that Deferred fires.
///   - Missed intervals are skipped: the next call is at the next multiple
///     of `interval` after the start time that is strictly in the future.
///   - If `f` throws or fails, the loop stops and the start() Deferred
///     errbacks (unobserved, that Deferred logs "Unhandled error").
/// Not copyable or movable: the start() Deferred fires with `this`.
/// Destroying it cancels the pending call (the start() Deferred never fires).
class LoopingCall {
public:
    template <class F>
    LoopingCall(IReactorTime& clock, F f) : clock_(clock), alive_(std::make_shared<LoopingCall*>(this)) {
        f_ = [f = std::move(f)]() mutable { return detail::asVoid(maybeDeferred(f)); };
    }
    ~LoopingCall() {
        *alive_ = nullptr;
        if (call_.active()) call_.cancel();
    }
    LoopingCall(const LoopingCall&) = delete;
    LoopingCall& operator=(const LoopingCall&) = delete;

    /// Starts calling: now (if `now`) and then every `seconds`. Returns a
    /// Deferred fired with this LoopingCall by stop(), or failed by `f`.
    /// Starting a running loop or a negative interval is an error.
    Deferred<LoopingCall*> start(double seconds, bool now = true) {
        if (running_) {
            detail::raise<error::RuntimeError>("Tried to start an already running LoopingCall.");
            return deferred_;
        }
        if (!(seconds >= 0)) {
            detail::raise<error::ValueError>("interval must be >= 0");
            return fail<LoopingCall*>(Failure(error::ValueError("interval must be >= 0")));
        }
        running_ = true;
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

    /// Stops the loop and fires the start() Deferred (after `f` returns or
    /// its Deferred fires, if called from inside). Unlike Twisted, stopping
    /// a loop that is not running is harmless: it returns false.
    bool stop() {
        if (!running_) return false;
        running_ = false;
        if (call_) {  // between calls: finish now
            if (call_.active()) call_.cancel();
            call_ = DelayedCall();
            finish();
        }
        return true;
    }

    /// Restarts the interval from now (the next call is `interval` from now).
    void reset() {
        if (!running_) {
            detail::raise<error::RuntimeError>("Tried to reset a LoopingCall that was not running.");
            return;
        }
        if (call_.active()) call_.cancel();
        call_ = DelayedCall();
        starttime_ = clock_.seconds();
        schedule();
    }

    bool running() const { return running_; }
    /// When the loop was started (or last reset), on the clock's scale.
    double starttime() const { return starttime_; }
    /// Seconds between calls; takes effect at the next scheduling.
    double interval = 0;

private:
    void call() {
        call_ = DelayedCall();
        std::weak_ptr<LoopingCall*> alive = alive_;
        f_().addCallbacks(
            [alive] {
                auto self = alive.lock();
                if (!self || !*self) return;
                LoopingCall& lc = **self;
                if (lc.running_)
                    lc.schedule();
                else
                    lc.finish();
            },
            [alive](Failure failure) -> Result<void> {
                auto self = alive.lock();
                if (!self || !*self) return failure;  // nobody left to tell: report it
                LoopingCall& lc = **self;
                lc.running_ = false;
                Deferred<LoopingCall*> d = std::exchange(lc.deferred_, Deferred<LoopingCall*>());
                d.errback(std::move(failure));
                return {};
            });
    }
    void schedule() {
        std::weak_ptr<LoopingCall*> alive = alive_;
        auto tick = [alive] {
            auto self = alive.lock();
            if (self && *self) (*self)->call();
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
    void finish() {
        Deferred<LoopingCall*> d = std::exchange(deferred_, Deferred<LoopingCall*>());
        d.callback(this);
    }

    IReactorTime& clock_;
    std::function<Deferred<void>()> f_;
    std::shared_ptr<LoopingCall*> alive_;  // callbacks hold it weakly: safe after destruction
    Deferred<LoopingCall*> deferred_;
    DelayedCall call_;
    double starttime_ = 0;
    bool running_ = false;
};

/// A Deferred fired with `f()` after `delay` seconds on `clock` (Twisted's
/// deferLater). cancel() cancels the timer and errbacks CancelledError.
inline Deferred<void> deferLater(IReactorTime& clock, double delay) {
    auto call = std::make_shared<DelayedCall>();
    Deferred<void> d([call](Deferred<void>&) {
        if (call->active()) call->cancel();
    });
    *call = clock.callLater(delay, [d]() mutable { d.callback(); });
    return d;
}
template <class F>
auto deferLater(IReactorTime& clock, double delay, F f) {
    return deferLater(clock, delay).addCallback(std::move(f));
}

}  // namespace task

// ============================================================================
// ==== 10. TESTING ====
// Helpers for tests that drive a real Reactor: run until a condition holds
// (never sleep), and fail when a test leaves timers or descriptors behind
// (Trial's "dirty reactor" check).
// ============================================================================
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
