// The randomized re-entrancy harness behind tests/stress.cpp (seeded random
// programs) and tests/fuzz/fuzz_reactor_api.cpp (programs read from the
// fuzzer's input). One program = one Reactor, real loopback TCP, socketpairs
// watched with addReader/addWriter, timers, threads; every callback the
// reactor makes (protocol, factory, producer, reader, writer, timer, thread
// call, LoopingCall tick, shutdown trigger) runs a few random operations on
// the reactor and on the other objects (the Op list below). Objects whose
// destructors touch the reactor (Guard) ride in lambda captures, protocols
// and factories, so they die at awkward moments.
//
// A program is 1-3 runs, each driven by run()/stop() (sometimes crash()) or
// by iterate(): a busy phase (operations until the budget is spent or the
// program goes quiet), then a drain (ports stop, clients loseConnection,
// readers must fire, threads and pool results arrive) until nothing is
// left, then stop(). It ends drained, or with the Reactor destroyed while
// everything is open, or with the factories destroyed first.
//
// Invariants, checked as the program runs and at its end:
//  - a protocol gets connectionMade once, then exactly one connectionLost,
//    nothing before, nothing after, and is destroyed after it (never while
//    one of its own callbacks is on the stack); one abandoned by ~Reactor
//    or ~Factory gets no callback at all;
//  - bytes arrive in order and exactly once (each direction of each
//    connection is a generated stream, checked byte by byte); when the
//    sender closed cleanly (no abort) and the receiver read to EOF, every
//    byte written arrives;
//  - a removed reader/writer is never called; a watched descriptor stays in
//    getReaders()/getWriters() and is dispatched when it becomes readable;
//    a cancelled timer never runs;
//  - callFromThread calls all run, in order per thread; pool jobs all run,
//    and the shutdown leaves no pool worker;
//  - producers get no callback after unregisterProducer/stopProducing;
//  - factories: startFactory and stopFactory balance;
//  - the program connects only to its own ports, listening, or the
//    process's refusing port (a stopped port may be another process's);
//  - no user callback while the Reactor or a factory is being destroyed;
//  - at the end nothing is left: no timer or descriptor in the reactor
//    (testing::dirtyReport), no file descriptor or thread in the process,
//    no growth of the heap; no warning or error in the log;
//  - everything ends within a deadline (a drain that does not finish is a
//    hang: the report lists what is still open and why it might be).
//
// A seed fixes every choice of one version of this file: adding an
// operation or changing a weight makes the same seed another program.
#pragma once

#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cinttypes>
#include <climits>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "reactor.hpp"

#if defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define STRESS_SANITIZER_ALLOCATOR 1
#endif
#endif
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define STRESS_SANITIZER_ALLOCATOR 1
#endif
#if defined(STRESS_SANITIZER_ALLOCATOR)
#include <sanitizer/allocator_interface.h>
#elif defined(__GLIBC__)
#include <malloc.h>
#endif

namespace stress {

using namespace reactor;

// ---- randomness -------------------------------------------------------------

inline std::uint64_t mix(std::uint64_t z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/// splitmix64: small, fast, and every state is valid.
struct Rng {
    std::uint64_t s;
    explicit Rng(std::uint64_t seed = 1) : s(seed) {}
    std::uint64_t next() { return mix(s += 0x9E3779B97F4A7C15ull); }
    std::size_t below(std::size_t n) { return n ? static_cast<std::size_t>(next() % n) : 0; }
    bool chance(unsigned permille) { return below(1000) < permille; }
    double pick(std::initializer_list<double> xs) { return xs.begin()[below(xs.size())]; }
    Rng split() { return Rng(next()); }
};

// ---- the byte streams ---------------------------------------------------------
// Each direction of each connection carries a stream identified by the
// (sender port, receiver port) pair, so both ends compute it from
// getHost()/getPeer() without talking. Byte k of a stream is a function of
// (stream, k): the receiver checks every byte on arrival, which catches loss,
// duplication and reordering without storing what was sent. Half the streams
// are text with many "\r\n" and "\n" (lines for the LineReceivers).

inline std::uint64_t streamId(std::uint64_t seed, std::uint16_t from, std::uint16_t to) {
    return mix(seed ^ (std::uint64_t(from) << 32) ^ (std::uint64_t(to) << 8) ^ 0x5eed);
}

inline const char* streamText() { return "abcdefgh\r\n\n "; }  // 13 characters

/// Bytes from..from+n of a stream, 8 per hash (it runs on every byte sent and received).
inline void streamBytes(std::uint64_t stream, std::size_t from, std::size_t n, char* out) {
    const char* text = streamText();
    std::size_t i = 0;
    while (i < n) {
        std::size_t pos = from + i;
        std::uint64_t word = mix(stream ^ (pos >> 3));
        for (std::size_t k = pos & 7; k < 8 && i < n; ++k, ++i) {
            auto b = static_cast<unsigned char>(word >> (k * 8));
            out[i] = (stream & 1) ? text[b % 13] : static_cast<char>(b);
        }
    }
}

inline char streamByte(std::uint64_t stream, std::size_t pos) {
    char c;
    streamBytes(stream, pos, 1, &c);
    return c;
}

inline void fillStream(std::string& out, std::uint64_t stream, std::size_t from, std::size_t n) {
    out.resize(n);
    streamBytes(stream, from, n, &out[0]);
}

/// Index of the first byte of `data` that differs from the stream at `from`, or npos.
inline std::size_t streamMismatch(std::uint64_t stream, std::size_t from, std::string_view data) {
    char expected[4096];
    for (std::size_t done = 0; done < data.size();) {
        std::size_t n = std::min(sizeof expected, data.size() - done);
        streamBytes(stream, from + done, n, expected);
        if (std::memcmp(expected, data.data() + done, n) != 0)
            for (std::size_t i = 0; i < n; ++i)
                if (expected[i] != data[done + i]) return done + i;
        done += n;
    }
    return std::string_view::npos;
}

// ---- operations ---------------------------------------------------------------

enum Op : std::uint8_t {
    END,  // this callback takes no more operations
    WRITE, WRITE_SEQ, LOSE, ABORT, LOSE_WRITE, PAUSE, RESUME, REG_PRODUCER, UNREG_PRODUCER, LINE_MODE,
    DISCONNECT_ALL, LISTEN, STOP_LISTENING, CONNECT, CONNECTOR_OP,
    ADD_READER, REMOVE_READER, ADD_WRITER, REMOVE_WRITER, POKE, REMOVE_ALL,
    CALL_LATER, CANCEL, RESET, SESSION, SESSION_CANCEL, GUARD, LOOP,
    THREAD, CALL_IN_THREAD, DEFER_TO_THREAD, STOP, DESTROY_FACTORY, BULK,
    NOPS
};

inline const char* opName(unsigned op) {
    static const char* const names[NOPS] = {
        "END", "WRITE", "WRITE_SEQ", "LOSE", "ABORT", "LOSE_WRITE", "PAUSE", "RESUME", "REG_PRODUCER",
        "UNREG_PRODUCER", "LINE_MODE", "DISCONNECT_ALL", "LISTEN", "STOP_LISTENING", "CONNECT", "CONNECTOR_OP",
        "ADD_READER", "REMOVE_READER", "ADD_WRITER", "REMOVE_WRITER", "POKE", "REMOVE_ALL", "CALL_LATER",
        "CANCEL", "RESET", "SESSION", "SESSION_CANCEL", "GUARD", "LOOP", "THREAD", "CALL_IN_THREAD",
        "DEFER_TO_THREAD", "STOP", "DESTROY_FACTORY", "BULK"};
    return op < NOPS ? names[op] : "?";
}

/// Patterns that trigger a known defect (the rows of the review's defect
/// table), so that a run can look past them: `stress --avoid known`.
enum Avoid : unsigned {
    avoidSelfOwnedCancel = 1u << 0,  // core_cancel_self_owned: cancel() through a handle its own callback owns
    avoidDisconnectAll = 1u << 1,    // core_disconnectall_uaf: disconnectAll() from a callback
    avoidFdGuards = 1u << 2,         // core_retired_dtor(2): a dying reader/writer's guard, or a guard that (un)registers descriptors
    avoidRetry = 1u << 3,            // core_factory_refcount: connect() again from clientConnection*
    avoidSharedGuards = 1u << 4,     // core_dead_clear: a guard in a factory its connector owns
    avoidProducerClose = 1u << 5,    // tcp_producer_overlong_leak: loseConnection with a streaming producer
    avoidEofFlush = 1u << 6,         // tcp_halfclose_big: output queued when the peer's EOF arrives
    avoidPoolStop = 1u << 7,         // def_pool_stop: a pool job that queues another while stop() runs
    avoidFactoryInCallback = 1u << 9,  // a factory destroyed inside its own or its protocol's callback (fixed)
    avoidBidiBulk = 1u << 10,        // NEW: both ends of a connection write megabytes at once
    avoidNegativeDelay = 1u << 11,   // NEW: DelayedCall::delay() moves a call before the clock's zero
};

struct AvoidName {
    const char* name;
    unsigned bit;
};
inline const AvoidName avoidNames[] = {
    {"cancel_self_owned", avoidSelfOwnedCancel}, {"disconnectall", avoidDisconnectAll},
    {"retired_dtor", avoidFdGuards},             {"factory_refcount", avoidRetry},
    {"dead_clear", avoidSharedGuards},           {"producer_close", avoidProducerClose},
    {"eof_flush", avoidEofFlush},                {"pool_stop", avoidPoolStop},
    {"factory_in_callback", avoidFactoryInCallback},
    {"bidi_bulk", avoidBidiBulk},                {"negative_delay", avoidNegativeDelay},
};

/// How a program is generated: operation weights and budgets.
struct Profile {
    unsigned avoid = 0;              // Avoid bits
    const char* name = "default";
    unsigned weight[NOPS] = {};
    unsigned endPermille = 350;      // a callback stops taking operations
    std::size_t maxOps = 400;        // per program
    std::size_t maxBytes = 12u << 20; // written, per program
    double busySeconds = 0.25;       // per run, before the drain
    double drainSeconds = 10;        // the drain must finish within this (a hang otherwise)
    double timerScale = 1.0;         // multiplies timer delays
    int maxConnects = 24, maxPorts = 4, maxFds = 4, maxThreads = 4, maxJobs = 24, maxLoops = 3;
    bool threads = true;
};

inline Profile defaultProfile() {
    Profile p;
    unsigned* w = p.weight;
    w[WRITE] = 90; w[WRITE_SEQ] = 25; w[LOSE] = 14; w[ABORT] = 8; w[LOSE_WRITE] = 8;
    w[PAUSE] = 14; w[RESUME] = 14; w[REG_PRODUCER] = 10; w[UNREG_PRODUCER] = 8; w[LINE_MODE] = 10;
    w[DISCONNECT_ALL] = 2; w[LISTEN] = 4; w[STOP_LISTENING] = 3; w[CONNECT] = 16; w[CONNECTOR_OP] = 4;
    w[ADD_READER] = 10; w[REMOVE_READER] = 8; w[ADD_WRITER] = 4; w[REMOVE_WRITER] = 4; w[POKE] = 14;
    w[REMOVE_ALL] = 1; w[CALL_LATER] = 22; w[CANCEL] = 10; w[RESET] = 8; w[SESSION] = 4; w[SESSION_CANCEL] = 4;
    w[GUARD] = 14; w[LOOP] = 4; w[THREAD] = 2; w[CALL_IN_THREAD] = 4; w[DEFER_TO_THREAD] = 2; w[STOP] = 1; w[DESTROY_FACTORY] = 1; w[BULK] = 1;
    return p;
}

/// Many threads, little data: for ThreadSanitizer.
inline Profile threadsProfile() {
    Profile p = defaultProfile();
    p.name = "threads";
    p.weight[THREAD] = 14;
    p.weight[CALL_IN_THREAD] = 24;
    p.weight[DEFER_TO_THREAD] = 12;
    p.weight[WRITE] = 40;
    p.maxBytes = 1u << 20;
    p.maxThreads = 8;
    p.maxJobs = 64;
    return p;
}

/// For libFuzzer (tests/fuzz/fuzz_reactor_api.cpp): small, quick programs
/// (each input is one), so that thousands run in a minute.
inline Profile fuzzProfile() {
    Profile p = defaultProfile();
    p.name = "fuzz";
    p.maxOps = 200;
    p.maxBytes = 512u << 10;
    p.busySeconds = 0.1;
    p.drainSeconds = 5;
    p.timerScale = 0.1;
    p.maxConnects = 8;
    p.maxPorts = 2;
    p.maxFds = 2;
    p.maxThreads = 2;
    p.maxJobs = 6;
    p.maxLoops = 2;
    return p;
}

/// The fuzzer's input as the source of every choice: byte pairs (opcode,
/// argument). Exhausted input means "no more operations".
struct FuzzInput {
    const std::uint8_t* data = nullptr;
    std::size_t size = 0, pos = 0;
    bool byte(std::uint8_t& out) {
        if (pos >= size) return false;
        out = data[pos++];
        return true;
    }
};

// ---- the objects a program plays with ---------------------------------------

class World;
struct HProducer;

enum class Phase { Busy, Draining, Stopping, Idle, Teardown };

/// Everything one protocol instance saw; kept by the World after the
/// protocol is gone.
struct ConnRec {
    int id = 0;
    bool server = false;
    bool line = false;       // a LineReceiver (else a plain Protocol)
    bool halfClose = false;  // halfCloseable()
    int made = 0, lost = 0, destroyed = 0;
    int inCallback = 0;      // our callbacks on the stack for this protocol
    std::string lostType;
    bool calledLose = false, calledAbort = false, calledLoseWrite = false;
    bool pausedReading = false;  // transport->pauseProducing() by us, not resumed
    bool readLost = false, writeLost = false;
    std::uint16_t localPort = 0, peerPort = 0;
    std::uint64_t outStream = 0, inStream = 0;
    std::size_t attempted = 0;          // bytes handed to write() that the transport must accept
    std::size_t guaranteed = SIZE_MAX;  // attempted at our first loseWriteConnection()
    std::size_t received = 0;
    bool corrupt = false;
    ITransport* transport = nullptr;  // from connectionMade until connectionLost
    Protocol* proto = nullptr;        // while the protocol object exists
    HProducer* producer = nullptr;    // registered by us, not yet unregistered or stopped
    void* factory = nullptr;          // the CFactory of a client, for its bookkeeping
    const void* owner = nullptr;      // the factory that built it (client or server)
    bool abandoned = false;           // closed without callbacks: its factory or the Reactor was destroyed
    Rng rng;
    bool live() const { return made && !lost && !abandoned && transport; }
};

/// A producer registered on a transport (streaming or pull).
struct HProducer final : IProducer {
    World* w;
    ConnRec* rec;
    bool streaming;
    bool registered = true, paused = false, stopped = false, finishing = false;
    int chunksLeft;
    HProducer(World* world, ConnRec* r, bool s, int chunks) : w(world), rec(r), streaming(s), chunksLeft(chunks) {}
    void pauseProducing() override;
    void resumeProducing() override;
    void stopProducing() override;
};

/// Touches the reactor from its destructor: the RAII pattern (a session that
/// unregisters its descriptor, cancels its timer, closes its port).
struct Guard {
    World* w;
    std::uint8_t kind;
    std::uint32_t target;
    Guard(World* world, std::uint8_t k, std::uint32_t t) : w(world), kind(k), target(t) {}
    ~Guard();
    Guard(const Guard&) = delete;
    Guard& operator=(const Guard&) = delete;
};
using GuardPtr = std::shared_ptr<Guard>;

/// A socketpair we own: `a` is watched, `b` is poked.
struct FdRec {
    int a = -1, b = -1;
    bool rOn = false, wOn = false;
    unsigned rGen = 0, wGen = 0;
    int writerCalls = 0, writerLimit = 1;
    bool expectRead = false;  // poked during the drain: the reader must run
    std::size_t readerRuns = 0;
    Rng rng;
};

struct TimerRec {
    DelayedCall h;
    bool cancelledByUs = false, ran = false;
    double delay = 0;
    Rng rng;
};

/// A timer that owns the object holding its own handle (a session with an
/// idle timeout, kept alive only by that timeout's callback).
struct Session {
    World* w;
    std::size_t idx;
    DelayedCall idle;
    GuardPtr guard;
    Session(World* world, std::size_t i) : w(world), idx(i) {}
    ~Session();
};
struct SessionRec {
    Session* raw = nullptr;
    bool alive = false;
};

struct ThreadRec {
    int n = 0;
    int next = 0;
};

struct LoopRec {
    std::unique_ptr<task::LoopingCall> lc;
    int ticks = 0, limit = 1;
    Rng rng;
};

struct PortRec {
    ListeningPort port;
    std::uint16_t number = 0;
    struct SFactory* factory = nullptr;
};

struct Ctx {
    ConnRec* self = nullptr;
    const char* where = "";
    LoopRec* loop = nullptr;
};

// ---- protocols and factories ---------------------------------------------

template <class Base>
struct HProto;
using PlainProto = HProto<Protocol>;

struct SFactory final : Factory {
    World* w;
    int id;
    int started = 0, stopped = 0;
    std::vector<GuardPtr> guards;
    SFactory(World* world, int i) : w(world), id(i) {}
    std::unique_ptr<Protocol> buildProtocol(const Address& addr) override;
    void startFactory() override;
    void stopFactory() override;
};

struct CFactory final : ClientFactory {
    World* w;
    int id;
    int started = 0, stopped = 0;
    int retries = 0;
    bool connecting = false, connected = false;
    ConnRec* current = nullptr;  // the connection it built last
    std::vector<GuardPtr> guards;
    Rng rng;
    std::shared_ptr<bool> alive = std::make_shared<bool>(true);  // an operation may destroy it mid-callback
    CFactory(World* world, int i, Rng r) : w(world), id(i), rng(r) {}
    /// Runs operations from one of its callbacks; false if they destroyed it.
    bool run(const char* where);
    ~CFactory() override;
    std::unique_ptr<Protocol> buildProtocol(const Address& addr) override;
    void startFactory() override;
    void stopFactory() override;
    void startedConnecting(IConnector& c) override;
    void clientConnectionFailed(IConnector& c, const Failure& reason) override;
    void clientConnectionLost(IConnector& c, const Failure& reason) override;
};

struct Stats {
    std::uint64_t programs = 0, ops = 0, callbacks = 0, connections = 0, bytes = 0;
    void add(const Stats& o) {
        programs += o.programs;
        ops += o.ops;
        callbacks += o.callbacks;
        connections += o.connections;
        bytes += o.bytes;
    }
};

/// How the program ends (chosen per program).
enum class Ending {
    Clean,           // drained, stopped, then destroyed
    ReactorFirst,    // the Reactor destroyed with everything open (its destructor calls no user code)
    FactoriesFirst,  // the factories destroyed first (they close their connections silently), then the Reactor
};

// ---- process-level resources --------------------------------------------------

inline int countDir(const char* path) {
    DIR* d = opendir(path);
    if (!d) return -1;
    int n = 0;
    while (struct dirent* e = readdir(d))
        if (e->d_name[0] != '.') ++n;
    closedir(d);
    return n;
}
inline int openFds() { return countDir("/proc/self/fd") - 1; }  // minus the DIR's own

/// A loopback port that refuses connections for the life of the process: a
/// socket bound to it that never listens. A stopped port's number is no
/// good for that, since another process (a parallel soak job) may listen on
/// it next and answer with its own bytes.
inline int refusingPort() {
    static const int port = [] {
        int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        sockaddr_in a{};
        a.sin_family = AF_INET;
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        socklen_t len = sizeof a;
        if (fd < 0 || ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 ||
            ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0)
            return 9;  // discard: refused on any machine without a discard server
        return static_cast<int>(ntohs(a.sin_port));  // the socket stays open, bound, not listening
    }();
    return port;
}
inline int liveThreads() { return countDir("/proc/self/task"); }
inline long long heapInUse() {
#if defined(STRESS_SANITIZER_ALLOCATOR)
    return static_cast<long long>(__sanitizer_get_current_allocated_bytes());
#elif defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 33))
    return static_cast<long long>(mallinfo2().uordblks);
#else
    return 0;
#endif
}

// ---- the world ------------------------------------------------------------------

class World {
public:
    World(std::uint64_t seed, const Profile& profile, FuzzInput* fuzz = nullptr)
        : seed_(seed), profile_(profile), fuzz_(fuzz), rng_(mix(seed)) {}
    ~World();
    World(const World&) = delete;
    World& operator=(const World&) = delete;

    /// Runs the whole program; false if an invariant broke (see failures).
    bool run();

    std::vector<std::string> failures;
    Stats stats;
    bool verbose = false;
    std::function<void(const std::string&)> onFailure;  // called at once, for crash-proof reports
    std::string describeConfig() const;
    /// The last operations (for a failure report when not verbose).
    std::string recentOps() const;

    // ---- called by the pieces above ----------------------------------------
    void fail(const char* fmt, ...) __attribute__((format(printf, 2, 3)));
    void note(const char* fmt, ...) __attribute__((format(printf, 2, 3)));
    void act(Ctx ctx, Rng& rng);

    void onBuilt(ConnRec& rec, Protocol* p);
    void onMade(ConnRec& rec);
    void onBytes(ConnRec& rec, std::string_view data, const char* what);
    void checkPeer(ConnRec& rec, const char* what);
    void onLost(ConnRec& rec, const Failure& reason);
    void onProtoDestroyed(ConnRec& rec);
    void onReadLost(ConnRec& rec);
    void onWriteLost(ConnRec& rec);
    void enter(ConnRec& rec, const char* what);
    void leave(ConnRec& rec);

    ConnRec* newConn(bool server);
    std::unique_ptr<Protocol> build(ConnRec* rec);
    bool creating() const { return phase_ == Phase::Busy; }
    /// The busy phase goes on: time and operations left, and something happened lately.
    bool busy() const {
        if (fuzz_ && fuzz_->pos + 1 >= fuzz_->size) return false;  // the input is used up
        double now = r_->seconds();
        return now < busyUntil_ && opsLeft_ > 0 && now - lastOp_ < 0.015 * profile_.timerScale;
    }
    Phase phase() const { return phase_; }
    bool guardsLive() const { return guardsLive_; }
    void guardFired(std::uint8_t kind, std::uint32_t target);
    void sendOn(ConnRec& rec, std::size_t n, bool sequence);
    void producerChunk(HProducer& p);
    void sessionDied(std::size_t idx) {
        if (idx < sessions_.size()) sessions_[idx].alive = false;
    }
    void factoryDied(CFactory* f);
    /// A connect to `port` reaches this program: one of its ports still
    /// listening, or the process's refusing port. A port that stopped
    /// listening may be another process's by now (a parallel soak job's
    /// listenTCP(0) gets the freed number), and that process would read our
    /// streams as corrupt: a connector is connected again only to these.
    bool ours(std::uint16_t port) const;

    Reactor& reactor() { return *r_; }
    std::uint64_t seed() const { return seed_; }

private:
    friend struct Guard;
    friend struct HProducer;
    friend struct CFactory;
    friend struct SFactory;

    // generation of choices
    bool nextOp(Rng& rng, unsigned& op, Rng& argRng);
    void exec(unsigned op, Ctx ctx, Rng& a);
    ConnRec* pickConn(Ctx ctx, Rng& a, bool preferSelf = true);
    FdRec* pickFd(Rng& a, std::size_t* idx = nullptr);
    TimerRec* pickTimer(Rng& a, bool activeOnly);
    GuardPtr makeGuard(Rng& a);

    // actions
    void doListen(Rng& a);
    void doConnect(Rng& a);
    void addReader(std::size_t i, GuardPtr g);
    void addWriter(std::size_t i, GuardPtr g);
    void removeReader(std::size_t i);
    void removeWriter(std::size_t i);
    void poke(std::size_t i, std::size_t n);
    void callLater(Rng& a, double delay, GuardPtr g);
    void startSession(Rng& a);
    void cancelSession(Rng& a);
    void startLoop(Rng& a);
    void spawnThread(Rng& a);
    void callInThread(Rng& a);
    void deferToThread(Rng& a);
    void stopReactor();
    void destroyFactory(Rng& a);
    /// Marks the open connections of `owner` (every one if null) closed without callbacks.
    void abandonOpen(const void* owner);
    void deleteReactor();
    /// A user callback: none may run while the Reactor or a factory is being destroyed.
    void checkCallback(const char* what);

    // program structure
    void setUp();
    void startRun();
    void beginDrain();
    bool drainStep();  // true once quiet
    std::string drainReport();
    void afterRun();
    void joinThreads();
    void releaseOwnFds();
    void finalChecks();
    void teardownOpen();
    void teardownClean();
    void checkReaders();
    void installLogger();

    std::uint64_t seed_;
    Profile profile_;
    FuzzInput* fuzz_;
    Rng rng_;
    Reactor* r_ = nullptr;  // owned; raw so that destructors running inside ~Reactor still reach it
    Phase phase_ = Phase::Idle;
    bool guardsLive_ = true;
    bool useRun_ = true;
    int runs_ = 1;
    Ending ending_ = Ending::Clean;
    bool stopRequested_ = false;
    bool crashed_ = false;
    bool inReactorDtor_ = false, inFactoryDtor_ = false;
    int guardDepth_ = 0;  // guard actions on the stack: callbacks they cause are the user's doing
    int userDepth_ = 0;   // protocol and factory callbacks on the stack
    int expectedWarnings_ = 0;
    std::size_t opsLeft_ = 0, bytesLeft_ = 0;
    int connectsLeft_ = 0, threadsLeft_ = 0, jobsLeft_ = 0, loopsLeft_ = 0, portsLeft_ = 0;
    double busyUntil_ = 0, drainDeadline_ = 0;
    double lastOp_ = 0;  // when the last operation ran: a quiet program drains early
    DelayedCall pacer_;
    std::uint64_t opCounter_ = 0;
    bool drainFailed_ = false;
    int lineLogged_ = 0;

    std::deque<ConnRec> conns_;
    std::vector<ConnRec*> live_;
    std::deque<PortRec> ports_;
    std::deque<std::unique_ptr<SFactory>> sfactories_;
    std::deque<std::unique_ptr<CFactory>> cfactories_;  // owned here (reference overload)
    std::vector<CFactory*> sharedFactories_;            // owned by their connectors
    std::vector<std::shared_ptr<IConnector>> connectors_;
    std::deque<FdRec> fds_;
    std::deque<TimerRec> timers_;
    std::deque<SessionRec> sessions_;
    std::deque<LoopRec> loops_;
    std::deque<std::unique_ptr<HProducer>> producers_;
    std::deque<ThreadRec> threadRecs_;
    std::vector<std::thread> threads_;
    std::atomic<long> jobsIssued_{0}, jobsRan_{0};
    long jobResults_ = 0, jobResultsExpected_ = 0;
    long deferredIssued_ = 0, deferredFired_ = 0;
    std::vector<TriggerId> triggers_;
    std::vector<std::string> log_;
    Logger previousLogger_;
    std::vector<const char*> doing_;  // what is on the stack: callbacks and operations
    std::thread::id loopThread_ = std::this_thread::get_id();
    std::string recent_[32];
    std::uint64_t recentCount_ = 0;
};

// ---- protocols ------------------------------------------------------------------

template <class Base>
struct HProto : Base {
    World* w;
    ConnRec* rec;
    std::vector<GuardPtr> guards;
    std::uint64_t touched = 0;  // written after every callback: a freed protocol shows up under ASan
    HProto(World* world, ConnRec* r) : w(world), rec(r) {
        if constexpr (std::is_base_of<LineReceiver, Base>::value) {
            this->delimiter = (r->rng.next() & 1) ? "\r\n" : "\n";
            this->MAX_LENGTH = r->rng.chance(300) ? 16 : 4096;
        }
    }
    ~HProto() override { w->onProtoDestroyed(*rec); }
    HProto(const HProto&) = delete;
    HProto& operator=(const HProto&) = delete;

    void run(const char* what) {
        Ctx c;
        c.self = rec;
        c.where = what;
        w->act(c, rec->rng);
    }
    void connectionMade() override {
        w->enter(*rec, "connectionMade");
        w->onMade(*rec);
        run("connectionMade");
        ++touched;
        w->leave(*rec);
    }
    void dataReceived(std::string_view data) override {
        w->enter(*rec, "dataReceived");
        if constexpr (std::is_base_of<LineReceiver, Base>::value) {
            LineReceiver::dataReceived(data);
        } else {
            if (rec->pausedReading) w->fail("conn %d: dataReceived while its transport is paused", rec->id);
            w->onBytes(*rec, data, "dataReceived");
            run("dataReceived");
        }
        ++touched;
        w->leave(*rec);
    }
    void connectionLost(const Failure& reason) override {
        w->enter(*rec, "connectionLost");
        if constexpr (std::is_base_of<LineReceiver, Base>::value) w->onBytes(*rec, this->clearLineBuffer(), "clearLineBuffer");
        w->onLost(*rec, reason);
        run("connectionLost");
        ++touched;
        w->leave(*rec);
    }
    bool halfCloseable() const override { return rec->halfClose; }
    void readConnectionLost() override {
        w->enter(*rec, "readConnectionLost");
        w->onReadLost(*rec);
        run("readConnectionLost");
        ++touched;
        w->leave(*rec);
    }
    void writeConnectionLost() override {
        w->enter(*rec, "writeConnectionLost");
        w->onWriteLost(*rec);
        run("writeConnectionLost");
        ++touched;
        w->leave(*rec);
    }

    // LineReceiver's callbacks (LineProto forwards them).
    void handleLine(std::string_view line) {
        w->onBytes(*rec, line, "lineReceived");
        w->onBytes(*rec, this->delimiter, "lineReceived(delimiter)");
        run("lineReceived");
        ++touched;
    }
    void handleRaw(std::string_view data) {
        w->onBytes(*rec, data, "rawDataReceived");
        run("rawDataReceived");
        ++touched;
    }
    void handleTooLong(std::string_view line) {  // record, do not close
        w->onBytes(*rec, line, "lineLengthExceeded");
        ++touched;
    }
};

struct LineProto final : HProto<LineReceiver> {
    using HProto<LineReceiver>::HProto;
    void lineReceived(std::string_view line) override { handleLine(line); }
    void rawDataReceived(std::string_view data) override { handleRaw(data); }
    void lineLengthExceeded(std::string_view line) override { handleTooLong(line); }
};

// ============================================================================
// Implementation
// ============================================================================

/// Pushes what is running on the World's stack of activities while alive.
struct Doing {
    std::vector<const char*>& v;
    Doing(std::vector<const char*>& stack, const char* what) : v(stack) { v.push_back(what); }
    ~Doing() { v.pop_back(); }
    Doing(const Doing&) = delete;
    Doing& operator=(const Doing&) = delete;
};

inline std::mutex& failMutex() {
    static std::mutex m;
    return m;
}

inline Guard::~Guard() {
    if (w->guardsLive()) w->guardFired(kind, target);
}

inline Session::~Session() { w->sessionDied(idx); }

inline CFactory::~CFactory() {
    *alive = false;
    w->factoryDied(this);
}

inline bool CFactory::run(const char* where) {
    std::shared_ptr<bool> stillAlive = alive;
    Rng r = rng.split();  // on the stack: the factory may be destroyed by what runs
    Ctx c;
    c.where = where;
    World* world = w;
    ++world->userDepth_;
    world->act(c, r);
    --world->userDepth_;
    return *stillAlive;
}


inline World::~World() {
    guardsLive_ = false;
    phase_ = Phase::Teardown;
    loops_.clear();
    joinThreads();
    if (r_) deleteReactor();
    connectors_.clear();  // a connector may own a factory that reports to us
    ports_.clear();
    cfactories_.clear();
    sfactories_.clear();
    releaseOwnFds();
    if (previousLogger_) setLogger(std::move(previousLogger_));
}

inline void World::fail(const char* fmt, ...) {
    char buf[2048];
    va_list ap;
    va_start(ap, fmt);
    std::vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    std::string what = buf;
    if (std::this_thread::get_id() == loopThread_ && !doing_.empty()) {
        what += " [in ";
        for (std::size_t i = 0; i < doing_.size(); ++i) what += (i ? " > " : "") + std::string(doing_[i]);
        what += "]";
    }
    std::lock_guard<std::mutex> lock(failMutex());
    if (failures.size() >= 20) return;  // one broken invariant tends to break many
    failures.push_back(std::move(what));
    if (onFailure) onFailure(failures.back());
}

inline void World::note(const char* fmt, ...) {
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    std::vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (verbose) {
        std::fprintf(stderr, "  [%.4f] %s\n", r_ ? r_->seconds() : 0.0, buf);
    } else {
        recent_[recentCount_ % 32] = buf;
    }
    ++recentCount_;
}

// ---- protocol bookkeeping -------------------------------------------------------

inline ConnRec* World::newConn(bool server) {
    conns_.emplace_back();
    ConnRec& rec = conns_.back();
    rec.id = static_cast<int>(conns_.size() - 1);
    rec.server = server;
    rec.rng = rng_.split();
    rec.line = rec.rng.chance(300);
    rec.halfClose = rec.rng.chance(250);
    return &rec;
}

inline std::unique_ptr<Protocol> World::build(ConnRec* rec) {
    std::unique_ptr<Protocol> p;
    if (rec->line)
        p = std::make_unique<LineProto>(this, rec);
    else
        p = std::make_unique<PlainProto>(this, rec);
    rec->proto = p.get();
    return p;
}

inline void World::checkCallback(const char* what) {
    if ((inReactorDtor_ || inFactoryDtor_) && guardDepth_ == 0)
        fail("%s called while %s is destroyed (destroying calls no user callback)", what,
             inReactorDtor_ ? "the Reactor" : "a factory");
}

inline void World::deleteReactor() {
    inReactorDtor_ = true;
    delete r_;  // r_ stays set meanwhile: destructors that run inside may use the Reactor
    r_ = nullptr;
    inReactorDtor_ = false;
}

inline void World::enter(ConnRec& rec, const char* what) {
    ++stats.callbacks;
    checkCallback(what);
    if (rec.destroyed) fail("conn %d: %s called on a destroyed protocol", rec.id, what);
    if (rec.lost && std::strcmp(what, "connectionLost") != 0)
        fail("conn %d: %s after connectionLost", rec.id, what);
    if (!rec.made && std::strcmp(what, "connectionMade") != 0) fail("conn %d: %s before connectionMade", rec.id, what);
    ++rec.inCallback;
    ++userDepth_;
}

inline void World::leave(ConnRec& rec) {
    --rec.inCallback;
    --userDepth_;
}

inline void World::onMade(ConnRec& rec) {
    ++stats.connections;
    if (rec.made) fail("conn %d: connectionMade twice", rec.id);
    if (rec.lost) fail("conn %d: connectionMade after connectionLost", rec.id);
    rec.made = 1;
    rec.transport = rec.proto->transport;
    if (!rec.transport) {
        fail("conn %d: connectionMade without a transport", rec.id);
        return;
    }
    Address host = rec.transport->getHost(), peer = rec.transport->getPeer();
    rec.localPort = host.port;
    rec.peerPort = peer.port;
    rec.outStream = streamId(seed_, rec.localPort, rec.peerPort);
    rec.inStream = streamId(seed_, rec.peerPort, rec.localPort);
    live_.push_back(&rec);
    if (rec.factory) {
        auto* f = static_cast<CFactory*>(rec.factory);
        f->connecting = false;
        f->connected = true;
    }
    note("conn %d made (%s %s%s, %u->%u, factory %d)", rec.id, rec.server ? "server" : "client",
         rec.line ? "LineReceiver" : "Protocol", rec.halfClose ? ", half-closeable" : "", rec.localPort, rec.peerPort,
         rec.factory ? static_cast<CFactory*>(rec.factory)->id : -1);
    if (phase_ == Phase::Draining && !rec.server) {  // connected during the drain: close it like the others
        rec.calledLose = true;
        rec.transport->loseConnection();
    }
}

inline void World::checkPeer(ConnRec& rec, const char* what) {
    // getPeer() asks the socket (getpeername): another port means the
    // transport's descriptor now belongs to another connection.
    if (!rec.transport || !rec.transport->connected) return;
    Address peer = rec.transport->getPeer();
    if (peer.port != rec.peerPort)
        fail("conn %d (%s): in %s its transport's peer is port %u, it was %u at connectionMade (its descriptor "
             "was closed and reused?)",
             rec.id, rec.server ? "server" : "client", what, peer.port, rec.peerPort);
}

inline void World::onBytes(ConnRec& rec, std::string_view data, const char* what) {
    if (data.empty()) return;
    checkPeer(rec, what);
    if (!rec.made || rec.lost) fail("conn %d: %zu bytes in %s outside the connection's life", rec.id, data.size(), what);
    if (!rec.corrupt) {
        std::size_t bad = streamMismatch(rec.inStream, rec.received, data);
        for (std::size_t i = bad; i < data.size(); ++i) {
            if (data[i] != streamByte(rec.inStream, rec.received + i)) {
                // Where the bytes would fit in the stream, if anywhere near: a gap, a repeat.
                long shift = 0;
                for (long d = -4096; d <= 4096 && !shift; ++d) {
                    if (d == 0 || static_cast<long>(rec.received + i) + d < 0) continue;
                    std::size_t at = static_cast<std::size_t>(static_cast<long>(rec.received + i) + d), n = 0;
                    while (n < 16 && i + n < data.size() && data[i + n] == streamByte(rec.inStream, at + n)) ++n;
                    if (n == 16 || (n > 0 && i + n == data.size())) shift = d;
                }
                fail("conn %d (%s, %u->%u): byte %zu of the incoming stream is wrong in %s (got 0x%02x, expected "
                     "0x%02x, chunk of %zu bytes; %s)",
                     rec.id, rec.server ? "server" : "client", rec.peerPort, rec.localPort, rec.received + i, what,
                     static_cast<unsigned char>(data[i]), static_cast<unsigned char>(streamByte(rec.inStream, rec.received + i)),
                     data.size(),
                     shift > 0   ? ("bytes skipped: the data matches the stream " + std::to_string(shift) + " bytes on").c_str()
                     : shift < 0 ? ("bytes repeated: the data matches the stream " + std::to_string(-shift) + " bytes back").c_str()
                                 : "not from this stream");
                rec.corrupt = true;
                break;
            }
        }
    }
    rec.received += data.size();
}

inline void World::onLost(ConnRec& rec, const Failure& reason) {
    if (!rec.made) fail("conn %d: connectionLost without connectionMade", rec.id);
    if (rec.lost) fail("conn %d: connectionLost twice", rec.id);
    rec.lost = 1;
    rec.lostType = reason.type();
    if (rec.producer) fail("conn %d: connectionLost while our producer is registered (no stopProducing)", rec.id);
    live_.erase(std::remove(live_.begin(), live_.end(), &rec), live_.end());
    note("conn %d lost: %s", rec.id, reason.str().c_str());
    if (rec.transport && rec.transport->connected) fail("conn %d: transport still connected in connectionLost", rec.id);
    if (rec.transport && rec.rng.chance(200)) {  // a late write and close: ignored
        rec.transport->write("late");
        rec.transport->loseConnection();
        rec.transport->abortConnection();
    }
}

inline void World::onProtoDestroyed(ConnRec& rec) {
    ++rec.destroyed;
    if (rec.destroyed > 1) fail("conn %d: protocol destroyed twice", rec.id);
    if (rec.inCallback > 0)
        fail("conn %d: protocol destroyed while one of its own callbacks is on the stack (%d deep)", rec.id,
             rec.inCallback);
    if (rec.made && !rec.lost && !rec.abandoned) fail("conn %d: protocol destroyed without connectionLost", rec.id);
    rec.proto = nullptr;
    rec.transport = nullptr;
}

inline void World::onReadLost(ConnRec& rec) {
    if (!rec.halfClose) fail("conn %d: readConnectionLost for a protocol that is not half-closeable", rec.id);
    if (rec.readLost) fail("conn %d: readConnectionLost twice", rec.id);
    rec.readLost = true;
    if (phase_ != Phase::Busy || rec.rng.chance(500)) {
        rec.calledLose = true;
        rec.transport->loseConnection();
    }
}

inline void World::onWriteLost(ConnRec& rec) {
    if (!rec.halfClose) fail("conn %d: writeConnectionLost for a protocol that is not half-closeable", rec.id);
    if (!rec.calledLoseWrite) fail("conn %d: writeConnectionLost without loseWriteConnection", rec.id);
    if (rec.writeLost) fail("conn %d: writeConnectionLost twice", rec.id);
    rec.writeLost = true;
}

inline void World::sendOn(ConnRec& rec, std::size_t n, bool sequence) {
    if (!rec.live()) return;
    n = std::min(n, bytesLeft_);
    if (n == 0) return;
    std::string buf;
    fillStream(buf, rec.outStream, rec.attempted, n);
    // Counted before the call: write() may re-enter (a producer paused from
    // inside it runs operations that write more on this connection).
    if (rec.transport->connected && !rec.calledAbort) rec.attempted += n;
    bytesLeft_ -= n;
    stats.bytes += n;
    checkPeer(rec, "write");
    ITransport* t = rec.transport;
    if (!sequence || n < 4) {
        t->write(buf);
        return;
    }
    std::string_view all(buf);
    std::size_t cut1 = 1 + rec.rng.below(n - 2), cut2 = cut1 + rec.rng.below(n - cut1);
    std::string_view parts[4] = {all.substr(0, cut1), all.substr(cut1, 0), all.substr(cut1, cut2 - cut1),
                                 all.substr(cut2)};
    t->writeSequence(parts, 4);
}

// ---- producers --------------------------------------------------------------------

inline void World::producerChunk(HProducer& p) {
    if (p.chunksLeft <= 0 || p.finishing) return;
    --p.chunksLeft;
    sendOn(*p.rec, 1024 + p.rec->rng.below(48 * 1024), false);
}

inline void HProducer::pauseProducing() {
    ++w->stats.callbacks;
    w->checkCallback("pauseProducing");
    if (!registered) w->fail("conn %d: producer paused after %s", rec->id, stopped ? "stopProducing" : "unregisterProducer");
    if (!streaming) w->fail("conn %d: a pull producer was paused", rec->id);
    if (paused) w->fail("conn %d: producer paused twice", rec->id);
    paused = true;
    w->note("conn %d: producer paused", rec->id);
    Ctx c;
    c.self = rec;
    c.where = "pauseProducing";
    ++w->userDepth_;
    w->act(c, rec->rng);
    --w->userDepth_;
}

inline void HProducer::resumeProducing() {
    ++w->stats.callbacks;
    w->checkCallback("resumeProducing");
    if (!registered) w->fail("conn %d: producer resumed after %s", rec->id, stopped ? "stopProducing" : "unregisterProducer");
    if (streaming) {
        if (!paused) w->fail("conn %d: a streaming producer resumed while not paused", rec->id);
        paused = false;
        while (registered && !paused && chunksLeft > 0 && !finishing && rec->live()) w->producerChunk(*this);
    } else if (registered) {
        if (chunksLeft > 0 && !finishing) {
            w->producerChunk(*this);
        } else if (rec->live()) {  // done: a pull producer unregisters itself
            registered = false;
            rec->producer = nullptr;
            rec->transport->unregisterProducer();
            return;
        }
    }
    Ctx c;
    c.self = rec;
    c.where = "resumeProducing";
    ++w->userDepth_;
    w->act(c, rec->rng);
    --w->userDepth_;
}

inline void HProducer::stopProducing() {
    ++w->stats.callbacks;
    w->checkCallback("stopProducing");
    if (stopped) w->fail("conn %d: stopProducing twice", rec->id);
    if (!registered && !stopped) w->fail("conn %d: stopProducing after unregisterProducer", rec->id);
    stopped = true;
    registered = false;
    if (rec->producer == this) rec->producer = nullptr;
    Ctx c;
    c.self = rec;
    c.where = "stopProducing";
    ++w->userDepth_;
    w->act(c, rec->rng);
    --w->userDepth_;
}

// ---- factories ----------------------------------------------------------------------

inline void SFactory::startFactory() {
    w->checkCallback("startFactory");
    ++started;
}
inline void SFactory::stopFactory() {
    w->checkCallback("stopFactory");
    ++stopped;
}
inline void CFactory::startFactory() {
    w->checkCallback("startFactory");
    ++started;
}
inline void CFactory::stopFactory() {
    w->checkCallback("stopFactory");
    ++stopped;
}

inline std::unique_ptr<Protocol> SFactory::buildProtocol(const Address&) {
    w->checkCallback("buildProtocol");
    if (w->phase() == Phase::Busy && w->rng_.chance(40)) return nullptr;  // refused
    ConnRec* rec = w->newConn(true);
    rec->owner = this;
    World* world = w;  // the operations may destroy this factory: touch nothing of it after them
    Ctx c;
    c.where = "buildProtocol";
    ++world->userDepth_;
    world->act(c, rec->rng);
    --world->userDepth_;
    return world->build(rec);
}

inline std::unique_ptr<Protocol> CFactory::buildProtocol(const Address&) {
    w->checkCallback("buildProtocol");
    if (w->phase() == Phase::Busy && rng.chance(40)) return nullptr;  // refused: clientConnectionFailed
    ConnRec* rec = w->newConn(false);
    rec->factory = this;
    rec->owner = this;
    current = rec;
    return w->build(rec);
}

inline void CFactory::startedConnecting(IConnector& c) {
    w->checkCallback("startedConnecting");
    if (!w->ours(c.getDestination().port))  // it may reach another process (see World::ours)
        w->fail("client factory %d: connecting to port %u, which this program does not listen on", id,
                c.getDestination().port);
    w->note("client factory %d: startedConnecting", id);
    connecting = true;
    run("startedConnecting");
}

inline void CFactory::clientConnectionFailed(IConnector& conn, const Failure& reason) {
    w->checkCallback("clientConnectionFailed");
    connecting = false;
    w->note("client factory %d: connection failed: %s", id, reason.str().c_str());
    if (!run("clientConnectionFailed")) return;
    if (w->creating() && !(w->profile_.avoid & avoidRetry) && !connecting && retries < 2 && rng.chance(400) &&
        w->ours(conn.getDestination().port)) {
        ++retries;
        w->note("client factory %d: connect() again from clientConnectionFailed", id);
        conn.connect();
    }
}

inline void CFactory::clientConnectionLost(IConnector& conn, const Failure&) {
    w->checkCallback("clientConnectionLost");
    w->note("client factory %d: clientConnectionLost", id);
    connected = false;
    if (!run("clientConnectionLost")) return;
    if (w->creating() && !(w->profile_.avoid & avoidRetry) && !connecting && retries < 2 && rng.chance(300) &&
        w->ours(conn.getDestination().port)) {
        ++retries;
        w->note("client factory %d: connect() again from clientConnectionLost", id);
        conn.connect();
    }
}

inline void World::factoryDied(CFactory* f) {
    for (auto& p : sharedFactories_)
        if (p == f) p = nullptr;
    for (auto& rec : conns_)
        if (rec.factory == f) rec.factory = nullptr;
    // Abandoned (its factory destroyed first, or the Reactor): no stopFactory, by design.
    if (f->started != f->stopped && !inFactoryDtor_ && !inReactorDtor_ && phase_ != Phase::Teardown)
        fail("client factory %d destroyed with startFactory x%d but stopFactory x%d", f->id, f->started, f->stopped);
}

// ---- guards ------------------------------------------------------------------------

inline GuardPtr World::makeGuard(Rng& a) {
    static const std::uint8_t kinds[] = {0, 0, 0, 1, 2, 2, 2, 3, 4, 4, 5, 6, 7, 8, 9, 10};
    std::uint8_t kind = kinds[a.below(sizeof kinds)];
    if ((profile_.avoid & avoidFdGuards) && (kind == 0 || kind == 1 || kind == 6)) kind = 2;
    std::size_t n = 1;
    switch (kind) {
        case 0: case 1: case 6: n = fds_.size(); break;
        case 2: n = timers_.size(); break;
        case 3: n = ports_.size(); break;
        case 4: case 5: n = conns_.size(); break;
        default: break;
    }
    return std::make_shared<Guard>(this, kind, static_cast<std::uint32_t>(a.below(n ? n : 1)));
}

inline void World::guardFired(std::uint8_t kind, std::uint32_t t) {
    if (!r_) return;
    static const char* const names[] = {"removeReader", "removeWriter",    "cancel",      "stopListening",
                                        "loseConnection", "abortConnection", "addReader",   "disconnectAll",
                                        "callLater",     "connectTCP",      "listenTCP"};
    note("guard destroyed: %s #%u%s", names[kind], t, inReactorDtor_ ? " (inside ~Reactor)" : "");
    Doing doing(doing_, "a guard's destructor");
    struct Depth {
        int& d;
        explicit Depth(int& depth) : d(depth) { ++d; }
        ~Depth() { --d; }
        Depth(const Depth&) = delete;
        Depth& operator=(const Depth&) = delete;
    } depth(guardDepth_);
    // New objects from a destructor only while busy: ~Reactor promises that
    // destructors may cancel, remove and close, not that they may start new
    // connections (connect() refuses once the reactor is going away).
    const bool mayCreate = creating();
    Rng a(mix(seed_ ^ t ^ (std::uint64_t(kind) << 32) ^ opCounter_));
    switch (kind) {
        case 0:
            if (t < fds_.size() && fds_[t].a >= 0) removeReader(t);
            break;
        case 1:
            if (t < fds_.size() && fds_[t].a >= 0) removeWriter(t);
            break;
        case 2:
            if (t < timers_.size() && timers_[t].h.active()) {
                timers_[t].cancelledByUs = true;
                timers_[t].h.cancel();
            }
            break;
        case 3:
            if (t < ports_.size()) ports_[t].port.stopListening();
            break;
        case 4:
            if (t < conns_.size() && conns_[t].live()) {
                conns_[t].calledLose = true;
                conns_[t].transport->loseConnection();
            }
            break;
        case 5:
            if (t < conns_.size() && conns_[t].live()) {
                conns_[t].calledAbort = true;
                conns_[t].transport->abortConnection();
            }
            break;
        case 6:
            if (mayCreate && t < fds_.size() && fds_[t].a >= 0) addReader(t, nullptr);
            break;
        case 7:
            if ((creating() || inReactorDtor_) && !(profile_.avoid & avoidDisconnectAll)) r_->disconnectAll();
            break;
        case 8:
            if (mayCreate) callLater(a, 0, nullptr);
            break;
        case 9:
            if (mayCreate && connectsLeft_ > 0) doConnect(a);
            break;
        case 10:
            if (mayCreate && portsLeft_ > 0) doListen(a);
            break;
        default: break;
    }
}

// ---- descriptors we own ---------------------------------------------------------------

inline void World::addReader(std::size_t i, GuardPtr g) {
    FdRec& f = fds_[i];
    unsigned gen = ++f.rGen;
    f.rOn = true;
    note("addReader(fd %d)%s", f.a, g ? " with a guard" : "");
    if (profile_.avoid & avoidFdGuards) g = nullptr;
    r_->addReader(f.a, [this, i, gen, g = std::move(g)] {
        FdRec& fd = fds_[i];
        if (!fd.rOn || fd.rGen != gen) fail("fd %d: a removed or replaced reader was called", fd.a);
        char buf[512];
        while (::read(fd.a, buf, sizeof buf) > 0) {
        }
        ++fd.readerRuns;
        if (fd.expectRead) fd.expectRead = false;
        Ctx c;
        c.where = "reader";
        act(c, fd.rng);
    });
}

inline void World::addWriter(std::size_t i, GuardPtr g) {
    FdRec& f = fds_[i];
    unsigned gen = ++f.wGen;
    f.wOn = true;
    f.writerCalls = 0;
    f.writerLimit = 1 + static_cast<int>(f.rng.below(3));
    note("addWriter(fd %d)%s", f.a, g ? " with a guard" : "");
    if (profile_.avoid & avoidFdGuards) g = nullptr;
    r_->addWriter(f.a, [this, i, gen, g = std::move(g)] {
        FdRec& fd = fds_[i];
        if (!fd.wOn || fd.wGen != gen) fail("fd %d: a removed or replaced writer was called", fd.a);
        ++fd.writerCalls;
        Ctx c;
        c.where = "writer";
        act(c, fd.rng);
        // Always writable: remove it soon, or the loop never sleeps.
        if (fd.wOn && fd.wGen == gen && fd.writerCalls >= fd.writerLimit) removeWriter(i);
    });
}

inline void World::removeReader(std::size_t i) {
    FdRec& f = fds_[i];
    f.rOn = false;
    ++f.rGen;
    f.expectRead = false;
    note("removeReader(fd %d)", f.a);
    r_->removeReader(f.a);  // may destroy the old reader, and its guard, right here
}

inline void World::removeWriter(std::size_t i) {
    FdRec& f = fds_[i];
    f.wOn = false;
    ++f.wGen;
    note("removeWriter(fd %d)", f.a);
    r_->removeWriter(f.a);
}

inline void World::poke(std::size_t i, std::size_t n) {
    char buf[64];
    std::memset(buf, 'p', sizeof buf);
    ssize_t ignored = ::write(fds_[i].b, buf, std::min(n, sizeof buf));
    (void)ignored;
}

inline FdRec* World::pickFd(Rng& a, std::size_t* idx) {
    if (fds_.empty()) return nullptr;
    std::size_t i = a.below(fds_.size());
    if (idx) *idx = i;
    return &fds_[i];
}

inline void World::checkReaders() {
    if (!r_ || fds_.empty()) return;
    std::vector<int> readers = r_->getReaders(), writers = r_->getWriters();
    for (const FdRec& f : fds_) {
        if (f.a < 0) continue;
        bool r = std::find(readers.begin(), readers.end(), f.a) != readers.end();
        bool w = std::find(writers.begin(), writers.end(), f.a) != writers.end();
        if (r != f.rOn)
            fail("fd %d: %s getReaders() (added with addReader: %s)", f.a, r ? "in" : "missing from",
                 f.rOn ? "yes, never removed" : "no, or removed");
        if (w != f.wOn)
            fail("fd %d: %s getWriters() (added with addWriter: %s)", f.a, w ? "in" : "missing from",
                 f.wOn ? "yes, never removed" : "no, or removed");
    }
}

inline void World::releaseOwnFds() {
    for (FdRec& f : fds_) {
        if (f.a >= 0) ::close(f.a);
        if (f.b >= 0) ::close(f.b);
        f.a = f.b = -1;
        f.rOn = f.wOn = false;
    }
}

// ---- timers ---------------------------------------------------------------------------

inline TimerRec* World::pickTimer(Rng& a, bool activeOnly) {
    if (timers_.empty()) return nullptr;
    for (int tries = 0; tries < 4; ++tries) {
        TimerRec& t = timers_[timers_.size() - 1 - a.below(std::min<std::size_t>(timers_.size(), 16))];
        if (!activeOnly || t.h.active()) return &t;
    }
    return nullptr;
}

inline void World::callLater(Rng& a, double delay, GuardPtr g) {
    timers_.emplace_back();
    std::size_t idx = timers_.size() - 1;
    TimerRec& t = timers_.back();
    t.rng = a.split();
    t.delay = delay * profile_.timerScale;
    note("callLater(%g) -> timer %zu%s", t.delay, idx, g ? " with a guard" : "");
    t.h = r_->callLater(t.delay, [this, idx, g = std::move(g)] {
        TimerRec& tr = timers_[idx];
        if (tr.cancelledByUs) fail("timer %zu ran after cancel()", idx);
        if (tr.ran) fail("timer %zu ran twice", idx);
        tr.ran = true;
        Ctx c;
        c.where = "timer";
        act(c, tr.rng);
    });
}

inline void World::startSession(Rng& a) {
    sessions_.emplace_back();
    std::size_t idx = sessions_.size() - 1;
    auto s = std::make_shared<Session>(this, idx);
    if (a.chance(500)) s->guard = makeGuard(a);
    Session* raw = s.get();
    sessions_[idx].raw = raw;
    sessions_[idx].alive = true;
    double delay = a.pick({0.0, 0.002, 0.05, 1.0}) * profile_.timerScale;
    if (profile_.avoid & avoidSelfOwnedCancel) delay = std::min(delay, 0.05);  // the drain waits for it
    note("session %zu: idle timeout in %g, owned by its own timer", idx, delay);
    // The timer's function is the session's only owner.
    raw->idle = r_->callLater(delay, [s, seed = a.next()] {
        Rng rr(seed);
        Ctx c;
        c.where = "session timeout";
        s->w->act(c, rr);
    });
}

inline void World::cancelSession(Rng& a) {
    if (profile_.avoid & avoidSelfOwnedCancel) return;
    std::vector<std::size_t> alive;
    for (std::size_t i = 0; i < sessions_.size(); ++i)
        if (sessions_[i].alive && sessions_[i].raw->idle.active()) alive.push_back(i);
    if (alive.empty()) return;
    std::size_t i = alive[a.below(alive.size())];
    note("session %zu: cancel its own idle timer", i);
    sessions_[i].raw->idle.cancel();  // destroys the session, which holds this very handle
}

inline void World::startLoop(Rng& a) {
    loops_.emplace_back();
    std::size_t idx = loops_.size() - 1;
    LoopRec& l = loops_.back();
    l.limit = 1 + static_cast<int>(a.below(5));
    l.rng = a.split();
    l.lc = std::make_unique<task::LoopingCall>(*r_, [this, idx] {
        LoopRec& lr = loops_[idx];
        ++lr.ticks;
        Ctx c;
        c.where = "LoopingCall";
        c.loop = &lr;
        act(c, lr.rng);
        if (lr.lc && lr.ticks >= lr.limit && lr.lc->running()) lr.lc->stop();
    });
    double interval = a.pick({0.0, 0.001, 0.004}) * profile_.timerScale;
    note("LoopingCall %zu every %g", idx, interval);
    l.lc->start(interval, a.chance(500));
}

// ---- threads --------------------------------------------------------------------------

inline void World::spawnThread(Rng& a) {
    int n = 1 + static_cast<int>(a.below(16));
    threadRecs_.push_back(ThreadRec{n, 0});
    std::size_t tid = threadRecs_.size() - 1;
    Reactor* r = r_;
    note("thread %zu: %d callFromThread calls", tid, n);
    threads_.emplace_back([this, r, tid, n] {
        for (int i = 0; i < n; ++i) {
            r->callFromThread([this, tid, i] {
                ThreadRec& t = threadRecs_[tid];
                if (i != t.next) fail("thread %zu: callFromThread call %d ran when %d was next", tid, i, t.next);
                t.next = i + 1;
                Rng rr(mix(seed_ ^ (tid << 20) ^ static_cast<std::uint64_t>(i)));
                Ctx c;
                c.where = "callFromThread";
                act(c, rr);
            });
            if ((i & 3) == 0) std::this_thread::yield();
        }
    });
}

namespace detail_ {
inline void spin(unsigned n) {
    volatile unsigned x = 0;
    for (unsigned i = 0; i < n; ++i) x = x + i;
}
}  // namespace detail_

inline void World::callInThread(Rng& a) {
    ThreadPool* pool = &r_->getThreadPool();
    Reactor* r = r_;
    int depth = (profile_.avoid & avoidPoolStop) ? 0 : static_cast<int>(a.below(3));
    unsigned spin = static_cast<unsigned>(a.below(20000));
    ++jobsIssued_;
    ++jobResultsExpected_;
    note("callInThread (depth %d)", depth);
    // A job that queues another from the worker (ThreadPool::callInThread is thread-safe).
    struct Job {
        static std::function<void()> make(World* w, ThreadPool* p, Reactor* re, int d, unsigned s) {
            return [w, p, re, d, s] {
                detail_::spin(s);
                if (d > 0) {
                    ++w->jobsIssued_;
                    p->callInThread(make(w, p, re, d - 1, s));
                }
                ++w->jobsRan_;
                re->callFromThread([w] {
                    ++w->jobResults_;
                    Rng rr(mix(w->seed_ ^ static_cast<std::uint64_t>(w->jobResults_) ^ 0x10b));
                    Ctx c;
                    c.where = "job result";
                    w->act(c, rr);
                });
            };
        }
    };
    pool->callInThread(Job::make(this, pool, r, depth, spin));
}

inline void World::deferToThread(Rng& a) {
    unsigned spin = static_cast<unsigned>(a.below(20000));
    ++deferredIssued_;
    note("deferToThread");
    reactor::deferToThread(*r_, [spin] {
        detail_::spin(spin);
        return 42;
    }).addCallback([this, seed = a.next()](int v) {
        if (v != 42) fail("deferToThread: wrong result %d", v);
        ++deferredFired_;
        Rng rr(seed);
        Ctx c;
        c.where = "deferToThread callback";
        act(c, rr);
    });
}

inline void World::joinThreads() {
    for (auto& t : threads_) t.join();
    threads_.clear();
}

// ---- TCP --------------------------------------------------------------------------------

inline bool World::ours(std::uint16_t port) const {
    if (port == refusingPort()) return true;
    for (const PortRec& p : ports_)
        if (p.number == port && p.port.listening()) return true;
    return false;
}

inline void World::doListen(Rng& a) {
    (void)a;
    --portsLeft_;
    sfactories_.push_back(std::make_unique<SFactory>(this, static_cast<int>(sfactories_.size())));
    SFactory* f = sfactories_.back().get();
    PortRec pr;
    pr.port = r_->listenTCP(0, *f, 50, "127.0.0.1");
    pr.number = pr.port.getHost().port;
    pr.factory = f;
    if (!pr.port.listening()) {
        fail("listenTCP(0) on 127.0.0.1 failed");
        return;
    }
    note("listen: port %u", pr.number);
    ports_.push_back(pr);
}

inline void World::doConnect(Rng& a) {
    if (ports_.empty()) return;
    --connectsLeft_;
    // Mostly a listening port; sometimes the process's refusing port. Never
    // one that stopped listening: another process may listen there by now,
    // and its bytes are not our streams (two --jobs children did just that;
    // connect() again on a connector follows the same rule: see ours()).
    std::vector<std::size_t> live;
    for (std::size_t i = 0; i < ports_.size(); ++i)
        if (ports_[i].port.listening()) live.push_back(i);
    std::size_t pi = (!live.empty() && !a.chance(150)) ? live[a.below(live.size())] : a.below(ports_.size());
    int port = ports_[pi].port.listening() ? ports_[pi].number : refusingPort();
    double timeout = a.pick({30.0, 30.0, 5.0, 0.0, 0.002});
    int id = static_cast<int>(cfactories_.size() + sharedFactories_.size());
    note("connectTCP to %d (timeout %g)", port, timeout);
    if (a.chance(300)) {  // the connector owns its factory (and the guards in it)
        auto f = std::make_shared<CFactory>(this, id, a.split());
        if (a.chance(400) && !(profile_.avoid & avoidSharedGuards)) f->guards.push_back(makeGuard(a));
        sharedFactories_.push_back(f.get());
        r_->connectTCP("127.0.0.1", port, std::move(f), timeout);
    } else {
        // connectors_[i] is cfactories_[i]'s: reserve the slot first, since
        // startedConnecting (inside connectTCP) may connect more.
        cfactories_.push_back(std::make_unique<CFactory>(this, id, a.split()));
        connectors_.emplace_back();
        std::size_t slot = connectors_.size() - 1;
        CFactory* f = cfactories_.back().get();
        std::shared_ptr<IConnector> c = r_->connectTCP("127.0.0.1", port, *f, timeout);
        connectors_[slot] = std::move(c);
    }
}

// ---- the operations ----------------------------------------------------------------

inline ConnRec* World::pickConn(Ctx ctx, Rng& a, bool preferSelf) {
    if (preferSelf && ctx.self && ctx.self->live() && a.chance(650)) return ctx.self;
    if (live_.empty()) return nullptr;
    return live_[a.below(live_.size())];
}

inline bool World::nextOp(Rng& rng, unsigned& op, Rng& a) {
    if (fuzz_) {
        std::uint8_t o, arg;
        if (!fuzz_->byte(o) || !fuzz_->byte(arg)) return false;
        op = o % (NOPS + 8u);
        if (op >= NOPS) op = END;
        a = Rng(mix(seed_ ^ (std::uint64_t(arg) << 40) ^ opCounter_));
        return true;
    }
    if (rng.chance(profile_.endPermille)) {
        op = END;
        return true;
    }
    unsigned total = 0;
    for (unsigned i = 0; i < NOPS; ++i) total += profile_.weight[i];
    unsigned x = static_cast<unsigned>(rng.below(total));
    op = 1;
    for (unsigned i = 0; i < NOPS; ++i) {
        if (x < profile_.weight[i]) {
            op = i;
            break;
        }
        x -= profile_.weight[i];
    }
    a = rng.split();
    return true;
}

inline void World::act(Ctx ctx, Rng& rng) {
    ++stats.callbacks;
    checkCallback(ctx.where);
    if (phase_ != Phase::Busy && phase_ != Phase::Stopping) return;
    checkReaders();
    Doing doing(doing_, ctx.where);
    for (int i = 0; i < 6 && opsLeft_ > 0; ++i) {
        unsigned op = END;
        Rng a(0);
        if (!nextOp(rng, op, a) || op == END) return;
        --opsLeft_;
        ++stats.ops;
        ++opCounter_;
        if (r_) lastOp_ = r_->seconds();
        note("op %s in %s%s", opName(op), ctx.where, ctx.self ? (" of conn " + std::to_string(ctx.self->id)).c_str() : "");
        Doing doingOp(doing_, opName(op));
        exec(op, ctx, a);
        if (phase_ != Phase::Busy && phase_ != Phase::Stopping) return;
    }
}

inline void World::exec(unsigned op, Ctx ctx, Rng& a) {
    const bool make = creating();
    switch (op) {
        case WRITE:
        case WRITE_SEQ: {
            ConnRec* c = pickConn(ctx, a);
            if (!c) break;
            std::size_t n;
            switch (a.below(10)) {
                case 9: n = 64 * 1024 + a.below(192 * 1024); break;
                case 7: case 8: n = 1 + a.below(16 * 1024); break;
                default: n = 1 + a.below(200); break;
            }
            sendOn(*c, n, op == WRITE_SEQ);
            break;
        }
        case LOSE: {
            ConnRec* c = pickConn(ctx, a);
            if (!c) break;
            c->calledLose = true;
            if (a.chance(200))
                c->transport->stopProducing();  // a transport's stopProducing is loseConnection
            else
                c->transport->loseConnection();
            break;
        }
        case ABORT: {
            ConnRec* c = pickConn(ctx, a);
            if (!c) break;
            c->calledAbort = true;
            c->transport->abortConnection();
            break;
        }
        case LOSE_WRITE: {
            ConnRec* c = pickConn(ctx, a);
            if (!c) break;
            if (!c->calledLoseWrite) {
                c->calledLoseWrite = true;
                c->guaranteed = c->attempted;
            }
            c->transport->loseWriteConnection();
            break;
        }
        case PAUSE: {
            ConnRec* c = pickConn(ctx, a);
            if (!c) break;
            if (c->line && a.chance(500)) {
                static_cast<LineProto*>(c->proto)->pauseProducing();
            } else {
                c->transport->pauseProducing();
                if (!c->line) c->pausedReading = true;
            }
            break;
        }
        case RESUME: {
            ConnRec* c = pickConn(ctx, a);
            if (!c) break;
            if (c->line && static_cast<LineProto*>(c->proto)->paused()) {
                static_cast<LineProto*>(c->proto)->resumeProducing();  // delivers held lines, right here
            } else {
                c->pausedReading = false;
                c->transport->resumeProducing();
            }
            break;
        }
        case REG_PRODUCER: {
            ConnRec* c = pickConn(ctx, a);
            if (!c || c->producer) break;
            bool streaming = a.chance(600);
            producers_.push_back(std::make_unique<HProducer>(this, c, streaming, 1 + static_cast<int>(a.below(8))));
            c->producer = producers_.back().get();
            note("conn %d: registerProducer(%s)", c->id, streaming ? "streaming" : "pull");
            c->transport->registerProducer(c->producer, streaming);
            break;
        }
        case UNREG_PRODUCER: {
            ConnRec* c = pickConn(ctx, a);
            if (!c || !c->producer) break;
            c->producer->registered = false;
            c->producer = nullptr;
            c->transport->unregisterProducer();
            break;
        }
        case LINE_MODE: {
            ConnRec* c = pickConn(ctx, a);
            if (!c || !c->line) break;
            auto* lr = static_cast<LineProto*>(c->proto);
            switch (a.below(3)) {
                case 0: lr->setRawMode(); break;
                case 1: lr->setLineMode(); break;
                default: onBytes(*c, lr->clearLineBuffer(), "clearLineBuffer"); break;
            }
            break;
        }
        case DISCONNECT_ALL:
            if (phase_ == Phase::Busy && !(profile_.avoid & avoidDisconnectAll)) r_->disconnectAll();
            break;
        case LISTEN:
            if (make && portsLeft_ > 0) doListen(a);
            break;
        case STOP_LISTENING:
            if (!ports_.empty()) ports_[a.below(ports_.size())].port.stopListening();
            break;
        case CONNECT:
            if (make && connectsLeft_ > 0) doConnect(a);
            break;
        case CONNECTOR_OP: {
            if (connectors_.empty()) break;
            std::size_t i = a.below(connectors_.size());
            CFactory* f = cfactories_[i].get();
            if (!f || !connectors_[i]) break;  // destroyed (the connector is abandoned), or not made yet
            IConnector& c = *connectors_[i];
            if (c.isConnecting()) {
                if (a.chance(500))
                    c.stopConnecting();
                else
                    c.disconnect();
            } else if (make && !f->connecting && !f->connected && connectsLeft_ > 0 && a.chance(500)) {
                if (!ours(c.getDestination().port)) break;  // its port stopped: no longer ours to connect to
                --connectsLeft_;
                note("connector %zu (client factory %d): connect() again", i, f->id);
                c.connect();
            } else {
                if (f->connected && f->current && f->current->live()) f->current->calledLose = true;
                c.disconnect();  // loseConnection() on its connection
            }
            break;
        }
        case ADD_READER: {
            std::size_t i;
            if (make && pickFd(a, &i)) addReader(i, a.chance(300) ? makeGuard(a) : nullptr);
            break;
        }
        case REMOVE_READER: {
            std::size_t i;
            if (pickFd(a, &i)) removeReader(i);
            break;
        }
        case ADD_WRITER: {
            std::size_t i;
            if (make && pickFd(a, &i)) addWriter(i, a.chance(300) ? makeGuard(a) : nullptr);
            break;
        }
        case REMOVE_WRITER: {
            std::size_t i;
            if (pickFd(a, &i)) removeWriter(i);
            break;
        }
        case POKE: {
            std::size_t i;
            if (pickFd(a, &i)) poke(i, 1 + a.below(64));
            break;
        }
        case REMOVE_ALL: {
            std::vector<int> expected;
            for (FdRec& f : fds_) {
                if (f.rOn || f.wOn) expected.push_back(f.a);
                if (f.rOn) ++f.rGen;
                if (f.wOn) ++f.wGen;
                f.rOn = f.wOn = f.expectRead = false;
            }
            std::vector<int> got = r_->removeAll();
            std::sort(expected.begin(), expected.end());
            std::sort(got.begin(), got.end());
            if (got != expected) fail("removeAll() returned %zu fds, expected %zu", got.size(), expected.size());
            break;
        }
        case CALL_LATER:
            if (make) callLater(a, a.pick({0.0, 0.0, 0.0005, 0.002, 0.01, 0.05}), a.chance(250) ? makeGuard(a) : nullptr);
            break;
        case CANCEL: {
            TimerRec* t = pickTimer(a, true);
            if (!t) break;
            t->cancelledByUs = true;
            t->h.cancel();  // may destroy a guard in the timer's function, right here
            break;
        }
        case RESET: {
            TimerRec* t = pickTimer(a, true);
            if (!t) break;
            if (a.chance(500))
                t->h.reset(a.pick({0.0, 0.001, 0.01}) * profile_.timerScale);
            else
                t->h.delay(a.pick({(profile_.avoid & avoidNegativeDelay) ? 0.0 : -0.001, 0.0, 0.002}) *
                           profile_.timerScale);
            break;
        }
        case SESSION:
            if (make) startSession(a);
            break;
        case SESSION_CANCEL:
            cancelSession(a);
            break;
        case GUARD: {
            if (!make) break;
            GuardPtr g = makeGuard(a);
            switch (a.below(4)) {
                case 0: callLater(a, a.pick({0.0, 0.003, 0.03}), std::move(g)); break;
                case 1: {
                    std::size_t i;
                    if (pickFd(a, &i)) addReader(i, std::move(g));  // replaces the reader: the old one dies
                    break;
                }
                case 2:
                    if (ctx.self && ctx.self->proto) {
                        if (ctx.self->line)
                            static_cast<LineProto*>(ctx.self->proto)->guards.push_back(std::move(g));
                        else
                            static_cast<PlainProto*>(ctx.self->proto)->guards.push_back(std::move(g));
                    }
                    break;
                default: {
                    std::size_t i = 0;
                    std::vector<CFactory*> shared;
                    for (CFactory* f : sharedFactories_)
                        if (f) shared.push_back(f);
                    if (!shared.empty() && a.chance(500) && !(profile_.avoid & avoidSharedGuards))
                        shared[a.below(shared.size())]->guards.push_back(std::move(g));
                    else if (!sfactories_.empty() && sfactories_[i = a.below(sfactories_.size())])
                        sfactories_[i]->guards.push_back(std::move(g));
                    break;
                }
            }
            break;
        }
        case LOOP: {
            if (make && loopsLeft_ > 0 && a.chance(500)) {
                --loopsLeft_;
                startLoop(a);
                break;
            }
            if (loops_.empty()) break;
            LoopRec& l = (ctx.loop && a.chance(500)) ? *ctx.loop : loops_[a.below(loops_.size())];
            if (!l.lc) break;
            if (a.chance(500)) {
                if (l.lc->running()) l.lc->stop();  // stopping a stopped loop is misuse
            } else {
                note("LoopingCall destroyed%s", &l == ctx.loop ? " from inside its own call" : "");
                l.lc.reset();
            }
            break;
        }
        case THREAD:
            if (make && profile_.threads && threadsLeft_ > 0) {
                --threadsLeft_;
                spawnThread(a);
            }
            break;
        case CALL_IN_THREAD:
            if (make && profile_.threads && jobsLeft_ > 0) {
                --jobsLeft_;
                callInThread(a);
            }
            break;
        case DEFER_TO_THREAD:
            if (make && profile_.threads && jobsLeft_ > 0) {
                --jobsLeft_;
                deferToThread(a);
            }
            break;
        case STOP:
            if (phase_ == Phase::Busy && useRun_) {
                if (a.chance(300) && r_->running()) {  // leave run() without the shutdown: run() again later
                    note("reactor.crash()");
                    crashed_ = true;
                    phase_ = Phase::Stopping;
                    r_->crash();
                } else {
                    stopReactor();
                }
            }
            break;
        case BULK: {
            // Both ends of one connection send megabytes at once (a sync, a
            // proxy, a bulk exchange), while both keep reading.
            if (profile_.avoid & avoidBidiBulk) break;
            ConnRec* c = pickConn(ctx, a);
            if (!c) break;
            ConnRec* peer = nullptr;
            for (ConnRec* p : live_)
                if (p != c && p->localPort == c->peerPort && p->peerPort == c->localPort) peer = p;
            // Not with a LineReceiver: megabytes of 16-byte lines are seconds of CPU under the sanitizers.
            if (!peer || c->line || peer->line) break;
            std::size_t n = (3u << 20) + a.below(2u << 20);
            note("conn %d <-> %d: %zu bytes each way", c->id, peer->id, n);
            sendOn(*c, n, false);
            sendOn(*peer, n, false);
            break;
        }
        case DESTROY_FACTORY:
            if (phase_ == Phase::Busy && !(userDepth_ > 0 && (profile_.avoid & avoidFactoryInCallback)))
                destroyFactory(a);
            break;
        default: break;
    }
}

inline void World::destroyFactory(Rng& a) {
    // A factory destroyed before its ports, connectors and connections:
    // they close silently (no connectionLost, no clientConnection*).
    bool server = a.chance(500);
    std::size_t n = server ? sfactories_.size() : cfactories_.size();
    if (n == 0) return;
    std::size_t i = a.below(n);
    const void* f = server ? static_cast<const void*>(sfactories_[i].get()) : cfactories_[i].get();
    if (!f) return;
    int open = 0;
    for (ConnRec& c : conns_)
        if (c.owner == f && c.live()) ++open;
    note("destroying %s factory %zu (%d open connection(s))", server ? "server" : "client", i, open);
    if (open) ++expectedWarnings_;  // "a Factory was destroyed with N open connection(s)"
    inFactoryDtor_ = true;
    std::unique_ptr<Factory> dying;
    if (server) {
        for (PortRec& p : ports_)
            if (p.factory == f) p.factory = nullptr;
        dying = std::move(sfactories_[i]);
    } else {
        dying = std::move(cfactories_[i]);
    }
    dying.reset();
    inFactoryDtor_ = false;
    if (open) --expectedWarnings_;
    // Its connections still open now were closed silently (a guard in the
    // factory may have closed some normally first: ~SFactory's members die
    // before ~Factory abandons the rest). Freed at the end of the turn.
    abandonOpen(f);
}

inline void World::abandonOpen(const void* owner) {
    for (ConnRec& c : conns_) {
        if ((owner && c.owner != owner) || !c.live()) continue;
        c.abandoned = true;
        c.transport = nullptr;
        live_.erase(std::remove(live_.begin(), live_.end(), &c), live_.end());
    }
    for (ConnRec& c : conns_)
        if (c.owner == owner) c.owner = nullptr;
}

inline void World::stopReactor() {
    if (stopRequested_ || !r_->running()) return;
    stopRequested_ = true;
    phase_ = Phase::Stopping;
    note("reactor.stop()");
    r_->stop();
}

// ---- the program ---------------------------------------------------------------------

inline std::string World::describeConfig() const {
    char buf[256];
    std::snprintf(buf, sizeof buf, "%s, %d run(s), %s, %zu socketpair(s), profile %s",
                  useRun_ ? "run()/stop()" : "iterate()", runs_,
                  ending_ == Ending::Clean          ? "drained"
                  : ending_ == Ending::ReactorFirst ? "Reactor destroyed with everything open"
                                                    : "factories destroyed with everything open, then the Reactor",
                  fds_.size(),
                  profile_.name);
    return buf;
}

inline std::string World::recentOps() const {
    std::string out = "  last operations before the end (run with -v for all):\n";
    std::uint64_t from = recentCount_ > 32 ? recentCount_ - 32 : 0;
    for (std::uint64_t i = from; i < recentCount_; ++i) out += "    " + recent_[i % 32] + "\n";
    return out;
}

inline void World::installLogger() {
    previousLogger_ = setLogger([this](LogLevel level, std::string_view line) {
        if (level == LogLevel::warning && expectedWarnings_ > 0 &&
            line.find("a Factory was destroyed with") != std::string_view::npos)
            return;
        if (level >= LogLevel::warning) fail("logged: %.*s", static_cast<int>(line.size()), line.data());
    });
}

inline void World::setUp() {
    r_ = new Reactor();
    installLogger();
    opsLeft_ = profile_.maxOps;
    bytesLeft_ = profile_.maxBytes;
    connectsLeft_ = profile_.maxConnects;
    portsLeft_ = profile_.maxPorts;
    threadsLeft_ = profile_.maxThreads;
    jobsLeft_ = profile_.maxJobs;
    loopsLeft_ = profile_.maxLoops;
    useRun_ = !rng_.chance(300);
    runs_ = rng_.chance(600) ? 1 : rng_.chance(700) ? 2 : 3;
    ending_ = Ending::Clean;
    if (!useRun_ && rng_.chance(400)) ending_ = rng_.chance(500) ? Ending::ReactorFirst : Ending::FactoriesFirst;
    std::size_t nfds = rng_.below(static_cast<std::size_t>(profile_.maxFds) + 1);
    for (std::size_t i = 0; i < nfds; ++i) {
        int sv[2];
        if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) != 0) {
            fail("socketpair: %s", std::strerror(errno));
            break;
        }
        fds_.emplace_back();
        fds_.back().a = sv[0];
        fds_.back().b = sv[1];
        fds_.back().rng = rng_.split();
    }
    // Shutdown triggers that persist across runs.
    if (rng_.chance(300))
        triggers_.push_back(r_->addAsyncSystemEventTrigger("before", "shutdown", [this](std::function<void()> done) {
            note("before-shutdown trigger: shutdown waits a moment");
            r_->callLater(0.001, std::move(done));
        }));
    if (rng_.chance(400))
        triggers_.push_back(r_->addSystemEventTrigger("during", "shutdown", [this, seed = rng_.next()]() mutable {
            Rng rr(seed++);
            Ctx c;
            c.where = "during-shutdown trigger";
            act(c, rr);
        }));
    triggers_.push_back(r_->addSystemEventTrigger("after", "shutdown", [this] {
        if (!live_.empty())
            fail("%zu connection(s) still open after the shutdown closed everything (first: conn %d)", live_.size(),
                 live_.front()->id);
    }));
}

inline void World::startRun() {
    phase_ = Phase::Busy;
    stopRequested_ = false;
    busyUntil_ = r_->seconds() + profile_.busySeconds;
    lastOp_ = r_->seconds();
    note("run starts: %s", describeConfig().c_str());
    Rng a = rng_.split();
    bool anyPort = false;
    for (auto& p : ports_) anyPort = anyPort || p.port.listening();
    if (!anyPort && portsLeft_ > 0) doListen(a);
    if (portsLeft_ > 0 && a.chance(300)) doListen(a);
    for (std::size_t n = 1 + a.below(3); n > 0 && connectsLeft_ > 0; --n) doConnect(a);
    for (std::size_t i = 0; i < fds_.size(); ++i) {
        if (a.chance(700)) addReader(i, a.chance(300) ? makeGuard(a) : nullptr);
        if (a.chance(500)) poke(i, 1);
    }
    callLater(a, 0, nullptr);
    if (useRun_) {
        // The pacer: ends the busy phase, then drives the drain.
        struct Pacer {
            static void tick(World* w) {
                if (w->phase_ == Phase::Busy) {
                    if (w->busy()) {
                        w->pacer_ = w->r_->callLater(0.005 * w->profile_.timerScale, [w] { tick(w); });
                        return;
                    }
                    w->beginDrain();
                }
                if (w->phase_ != Phase::Draining) return;  // stopped meanwhile
                if (w->drainStep()) {
                    w->stopReactor();
                    return;
                }
                if (w->r_->seconds() > w->drainDeadline_) {
                    w->drainFailed_ = true;
                    w->fail("the drain did not finish within %gs: %s", w->profile_.drainSeconds, w->drainReport().c_str());
                    w->stopReactor();
                    return;
                }
                w->pacer_ = w->r_->callLater(0.002 * w->profile_.timerScale, [w] { tick(w); });
            }
        };
        if (pacer_.active()) pacer_.cancel();  // left by a crash()ed run
        pacer_ = r_->callLater(0.005 * profile_.timerScale, [this] { Pacer::tick(this); });
    }
}

inline void World::beginDrain() {
    phase_ = Phase::Draining;
    drainDeadline_ = r_->seconds() + profile_.drainSeconds;
    note("drain starts");
    checkReaders();
    for (auto& p : ports_) p.port.stopListening();
    for (auto& t : timers_)
        if (t.h.active()) {
            t.cancelledByUs = true;
            t.h.cancel();
        }
    if (!(profile_.avoid & avoidSelfOwnedCancel))
        for (auto& s : sessions_)
            if (s.alive && s.raw->idle.active()) s.raw->idle.cancel();
    for (auto& l : loops_)
        if (l.lc && l.lc->running()) l.lc->stop();
    joinThreads();
    Rng drainRng = rng_.split();
    std::vector<ConnRec*> live = live_;
    for (ConnRec* c : live) {
        if (!c->live()) continue;
        if (c->line && static_cast<LineProto*>(c->proto)->paused()) static_cast<LineProto*>(c->proto)->resumeProducing();
        if (!c->live()) continue;
        c->pausedReading = false;
        c->transport->resumeProducing();
        if (c->producer) c->producer->finishing = true;
        if (c->producer && c->producer->streaming && (profile_.avoid & avoidProducerClose)) {
            c->producer->registered = false;
            c->producer = nullptr;
            c->transport->unregisterProducer();
        }
        // Clients close; servers read to EOF (half-closeable ones close once they get it).
        if (c->server) {
            if (c->halfClose && c->readLost) {
                c->calledLose = true;
                c->transport->loseConnection();
            }
            continue;
        }
        // Or a client only half-closes and reads on, sometimes while its server
        // has megabytes queued: what the server wrote must all arrive.
        if (!c->calledLose && !c->readLost && drainRng.chance(400)) {
            // (Not to a LineReceiver: megabytes of short lines cost seconds of CPU under the sanitizers.)
            if (drainRng.chance(400) && !c->line && !(profile_.avoid & avoidEofFlush)) {
                for (ConnRec* p : live_)
                    if (p->server && p->localPort == c->peerPort && p->peerPort == c->localPort && p->live()) {
                        bytesLeft_ += 5u << 20;  // the drain's own allowance
                        sendOn(*p, (2u << 20) + drainRng.below(3u << 20), false);
                    }
            }
            if (!c->live()) continue;
            if (!c->calledLoseWrite) {
                c->calledLoseWrite = true;
                c->guaranteed = c->attempted;
            }
            c->transport->loseWriteConnection();
            continue;
        }
        c->calledLose = true;
        c->transport->loseConnection();
    }
    for (std::size_t i = 0; i < fds_.size(); ++i) {
        if (fds_[i].wOn) removeWriter(i);
        if (fds_[i].rOn) {
            fds_[i].expectRead = true;  // the reader must run: the descriptor is still watched
            poke(i, 1);
        }
    }
}

inline bool World::drainStep() {
    checkReaders();
    bool quiet = live_.empty();
    for (std::size_t i = 0; i < fds_.size(); ++i) {
        if (fds_[i].rOn && !fds_[i].expectRead) removeReader(i);
        if (fds_[i].rOn || fds_[i].wOn) quiet = false;
    }
    for (auto* f : sharedFactories_)
        if (f && f->connecting) quiet = false;
    for (auto& f : cfactories_)
        if (f && f->connecting) quiet = false;
    for (auto& t : threadRecs_)
        if (t.next != t.n) quiet = false;
    if (jobsRan_.load() != jobsIssued_.load() || jobResults_ != jobsRan_.load()) quiet = false;
    if (deferredFired_ != deferredIssued_) quiet = false;
    if (!quiet) return false;
    return r_->pendingCalls().empty() && r_->selectables().empty();
}

inline std::string World::drainReport() {
    std::string out;
    char buf[400];
    for (ConnRec* c : live_) {
        std::snprintf(buf, sizeof buf,
                      "\n    conn %d open: %s %s%s, loseConnection %s, abort %s, loseWriteConnection %s, "
                      "paused %s, producer %s, read EOF %s, %zu bytes written, %zu received",
                      c->id, c->server ? "server" : "client", c->line ? "LineReceiver" : "Protocol",
                      c->halfClose ? " (half-closeable)" : "", c->calledLose ? "yes" : "no",
                      c->calledAbort ? "yes" : "no", c->calledLoseWrite ? "yes" : "no",
                      c->pausedReading ? "yes" : "no",
                      c->producer ? (c->producer->streaming ? "streaming" : "pull") : "none",
                      c->readLost ? "yes" : "no", c->attempted, c->received);
        out += buf;
    }
    for (const FdRec& f : fds_)
        if (f.rOn && f.expectRead) {
            std::snprintf(buf, sizeof buf, "\n    fd %d: readable and watched, but its reader never ran", f.a);
            out += buf;
        }
    for (std::size_t i = 0; i < threadRecs_.size(); ++i)
        if (threadRecs_[i].next != threadRecs_[i].n) {
            std::snprintf(buf, sizeof buf, "\n    thread %zu: %d of %d callFromThread calls ran", i, threadRecs_[i].next,
                          threadRecs_[i].n);
            out += buf;
        }
    std::snprintf(buf, sizeof buf, "\n    pool jobs issued %ld, ran %ld, results %ld; deferToThread %ld/%ld",
                  jobsIssued_.load(), jobsRan_.load(), jobResults_, deferredFired_, deferredIssued_);
    out += buf;
    std::string dirty = testing::dirtyReport(*r_);
    if (!dirty.empty()) out += "\n    " + dirty;
    return out;
}

inline void World::afterRun() {
    const bool shutdown = useRun_;
    phase_ = Phase::Idle;
    if (shutdown) {
        // The shutdown stopped the pool, after its queued jobs ran.
        if (jobsRan_.load() != jobsIssued_.load())
            fail("thread pool: %ld job(s) queued, %ld ran by the end of the shutdown", jobsIssued_.load(), jobsRan_.load());
        if (r_->getThreadPool().threadCount() != 0)
            fail("thread pool: %zu worker(s) left after the shutdown stopped the pool",
                 r_->getThreadPool().threadCount());
        if (!live_.empty()) fail("%zu connection(s) open after run() returned", live_.size());
    }
    // What we own: stop it, like a test's tearDown.
    if (pacer_.active()) pacer_.cancel();
    for (auto& t : timers_)
        if (t.h.active()) {
            t.cancelledByUs = true;
            t.h.cancel();
        }
    if (!(profile_.avoid & avoidSelfOwnedCancel))
        for (auto& s : sessions_)
            if (s.alive && s.raw->idle.active()) s.raw->idle.cancel();
    for (auto& l : loops_)
        if (l.lc && l.lc->running()) l.lc->stop();
    joinThreads();
    for (std::size_t i = 0; i < fds_.size(); ++i) {
        if (fds_[i].rOn) removeReader(i);
        if (fds_[i].wOn) removeWriter(i);
    }
    // Calls from threads, pool results: delivered by the next turns.
    double deadline = r_->seconds() + 10;
    auto delivered = [this] {
        for (auto& t : threadRecs_)
            if (t.next != t.n) return false;
        return jobsRan_.load() == jobsIssued_.load() && jobResults_ == jobsRan_.load() &&
               deferredFired_ == deferredIssued_;
    };
    while (!delivered() && r_->seconds() < deadline) r_->iterate(0.005);
    if (!delivered()) fail("calls from threads were not delivered: %s", drainReport().c_str());
    std::string dirty = testing::cleanUp(*r_);
    if (!dirty.empty() && !drainFailed_) fail("the reactor is dirty after the run: %s", dirty.c_str());
    checkReaders();
}

inline void World::teardownOpen() {
    note("%s", ending_ == Ending::ReactorFirst ? "destroying the Reactor with everything open"
                                               : "destroying the factories with everything open, then the Reactor");
    phase_ = Phase::Teardown;
    loops_.clear();  // a LoopingCall must not outlive its clock
    joinThreads();
    if (ending_ == Ending::FactoriesFirst) {
        expectedWarnings_ += 1000;
        std::deque<std::unique_ptr<SFactory>> sf;
        std::deque<std::unique_ptr<CFactory>> cf;
        sf.swap(sfactories_);
        cf.swap(cfactories_);
        inFactoryDtor_ = true;
        while (!sf.empty() || !cf.empty()) {  // a guard may make more (it adds to the members)
            sf.clear();
            cf.clear();
            for (auto& f : sfactories_) sf.push_back(std::move(f));
            for (auto& f : cfactories_) cf.push_back(std::move(f));
            sfactories_.clear();
            cfactories_.clear();
        }
        inFactoryDtor_ = false;
        for (PortRec& p : ports_) p.factory = nullptr;
        connectors_.clear();
    }
    // Before, not after: ~Reactor frees the connections, and a guard that
    // dies inside it must not reach one through our records.
    abandonOpen(nullptr);
    deleteReactor();  // guards in what it destroys still act: it must cope
    guardsLive_ = false;
    expectedWarnings_ = 0;
    for (ConnRec& c : conns_)
        if (c.made && !c.lost) c.abandoned = true;
    if (jobsRan_.load() != jobsIssued_.load())
        fail("thread pool: %ld job(s) queued, %ld ran before the Reactor was destroyed", jobsIssued_.load(),
             jobsRan_.load());
}

inline void World::teardownClean() {
    phase_ = Phase::Idle;
    loops_.clear();
    joinThreads();
    for (auto& f : sfactories_)
        if (f && (f->started != f->stopped || f->numPorts != 0))
            fail("server factory %d: startFactory x%d, stopFactory x%d, numPorts %d at the end", f->id, f->started,
                 f->stopped, f->numPorts);
    for (auto& f : cfactories_)
        if (f && (f->started != f->stopped || f->numPorts != 0))
            fail("client factory %d: startFactory x%d, stopFactory x%d, numPorts %d at the end", f->id, f->started,
                 f->stopped, f->numPorts);
    if (rng_.chance(500)) {  // factories first (nothing uses them any more), then the Reactor
        ports_.clear();
        connectors_.clear();
        sfactories_.clear();
        cfactories_.clear();
        deleteReactor();
    } else {
        deleteReactor();
    }
    guardsLive_ = false;
    phase_ = Phase::Teardown;
}

inline void World::finalChecks() {
    for (ConnRec& c : conns_) {
        if (c.made && c.lost != 1 && !(c.abandoned && c.lost == 0))
            fail("conn %d: connectionMade, then connectionLost x%d", c.id, c.lost);
        if (c.abandoned && c.lost) fail("conn %d: connectionLost although it was abandoned", c.id);
        if (c.destroyed != 1) fail("conn %d: protocol destroyed x%d by the end", c.id, c.destroyed);
    }
    // Pair the two ends of each connection by their ports.
    std::vector<bool> paired(conns_.size(), false);
    for (ConnRec& c : conns_) {
        if (c.server || !c.made) continue;
        for (ConnRec& s : conns_) {
            if (!s.server || !s.made || paired[static_cast<std::size_t>(s.id)]) continue;
            if (s.localPort != c.peerPort || s.peerPort != c.localPort) continue;
            paired[static_cast<std::size_t>(s.id)] = true;
            if (c.abandoned || s.abandoned) break;
            for (int dir = 0; dir < 2; ++dir) {
                ConnRec& from = dir ? s : c;
                ConnRec& to = dir ? c : s;
                if (to.received > from.attempted)
                    fail("conn %d -> %d: %zu bytes arrived, only %zu were written", from.id, to.id, to.received,
                         from.attempted);
                // The sender closed cleanly (no abort) and the receiver read to
                // EOF without closing or aborting itself: everything arrives.
                const bool full = !from.calledAbort && from.lostType == "ConnectionDone" && to.lost &&
                                  to.lostType == "ConnectionDone" && !to.calledAbort && !to.calledLose;
                std::size_t must = std::min(from.attempted, from.guaranteed);
                if (!from.calledLose && (profile_.avoid & avoidEofFlush)) continue;
                if (full && to.received < must)
                    fail("conn %d -> %d: %zu of %zu bytes arrived although both ends closed cleanly (sender %s%s%s)",
                         from.id, to.id, to.received, must, from.calledLose ? "called loseConnection" : "got EOF",
                         from.calledLoseWrite ? ", half-closed" : "", from.producer ? ", producer" : "");
            }
            break;
        }
    }
}

inline bool World::run() {
    // A sanitizer's runtime starts a background thread with the first thread
    // the process makes: make one first, so the baseline includes it.
    std::thread([] {}).join();
    refusingPort();  // opened once per process, before the baseline
    const int fds0 = openFds(), threads0 = liveThreads();
    ++stats.programs;
    setUp();
    bool open = false;  // the last run left everything open
    for (int run = 0; run < runs_ && !drainFailed_; ++run) {
        const bool last = run == runs_ - 1;
        crashed_ = false;
        if (useRun_) {
            r_->callWhenRunning([this] { startRun(); });
            r_->run();
            if (crashed_) {  // no shutdown: everything stays open for the next run
                phase_ = Phase::Idle;
                if (last) open = true;
                continue;
            }
        } else {
            startRun();
            while (phase_ == Phase::Busy && busy()) r_->iterate(0.002 * profile_.timerScale);
            if (last && ending_ != Ending::Clean) {
                open = true;
                break;
            }
            beginDrain();
            while (!drainStep()) {
                if (r_->seconds() > drainDeadline_) {
                    drainFailed_ = true;
                    fail("the drain did not finish within %gs: %s", profile_.drainSeconds, drainReport().c_str());
                    break;
                }
                r_->iterate(0.002 * profile_.timerScale);
            }
        }
        afterRun();
        if (!last) connectsLeft_ = std::max(connectsLeft_, profile_.maxConnects / 2);  // a fresh budget
    }
    if (open && !drainFailed_) {
        if (ending_ == Ending::Clean) ending_ = rng_.chance(500) ? Ending::ReactorFirst : Ending::FactoriesFirst;
        teardownOpen();
    } else {
        teardownClean();
    }
    finalChecks();
    setLogger(std::move(previousLogger_));
    previousLogger_ = nullptr;
    releaseOwnFds();
    int fds1 = openFds(), threads1 = liveThreads();
    if (fds1 != fds0) fail("%d file descriptor(s) open before the program, %d after", fds0, fds1);
    // A joined thread may linger a moment in /proc (under qemu-user, say).
    for (int i = 0; i < 200 && threads1 > threads0; ++i) {
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
        threads1 = liveThreads();
    }
    if (threads1 > threads0) fail("%d thread(s) before the program, %d after", threads0, threads1);
    return failures.empty();
}

}  // namespace stress
