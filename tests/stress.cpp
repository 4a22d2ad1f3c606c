// Seeded random re-entrancy programs against a real Reactor on loopback
// (tests/stress_harness.hpp says what a program does and what it checks).
//
//   build/<variant>/stress [--seed S] [--count N] [--seconds T]
//                          [--profile default|threads] [--keep-going] [--jobs J]
//                          [--avoid known|NAME,...] [-v] [--trace]
//
// Program i runs with seed S+i; a failure prints its seed and the command
// that replays it alone (--seed X --count 1 -v prints every operation). The
// seed fixes every choice; the interleaving with the kernel and the threads
// is not recorded, so a replay follows the same program but may cut it at
// other points: rerun a few times, or run nearby seeds, if it passes once.
// With --seconds, programs run until the time is up (make soak). With
// --keep-going each program runs in a child process, so a crash is reported
// and the run goes on (the exit status says whether any failed). --jobs J
// runs J programs at once, each in its own child process.
#define REACTOR_IMPLEMENTATION
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <string>
#include <utility>
#include <vector>

#include "stress_harness.hpp"

#if defined(STRESS_SANITIZER_ALLOCATOR)
#include <sanitizer/common_interface_defs.h>
#endif

namespace {

struct Options {
    std::uint64_t seed = 1;
    std::uint64_t count = 20;
    double seconds = 0;  // > 0: run until this much wall time has passed
    std::string profile = "default";
    bool countGiven = false;
    bool keepGoing = false;
    unsigned jobs = 1;  // > 1: programs in that many child processes at once
    bool verbose = false;
    bool trace = false;
    std::string avoid;
};

char g_crash[600];  // written by the crash handlers: what was running
char g_hang[600];   // ...and by the watchdog

void writeCrash() {
    ssize_t ignored = ::write(2, g_crash, std::strlen(g_crash));
    (void)ignored;
}

extern "C" void onSignal(int sig) {
    if (sig == SIGALRM) {
        ssize_t ignored = ::write(2, g_hang, std::strlen(g_hang));
        (void)ignored;
    } else {
        writeCrash();
    }
    ::signal(sig, SIG_DFL);
    ::raise(sig);
}

void installCrashHandlers() {
#if defined(STRESS_SANITIZER_ALLOCATOR)
    __sanitizer_set_death_callback(writeCrash);  // the sanitizers own SIGSEGV
#else
    ::signal(SIGSEGV, onSignal);
    ::signal(SIGBUS, onSignal);
    ::signal(SIGFPE, onSignal);
#endif
    ::signal(SIGABRT, onSignal);  // std::terminate, assertions
    ::signal(SIGALRM, onSignal);  // the per-program watchdog
}

double cpuSeconds() {
    struct rusage ru;
    ::getrusage(RUSAGE_SELF, &ru);
    return static_cast<double>(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
           static_cast<double>(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

double wallSeconds() {
    struct timespec ts;
    ::clock_gettime(CLOCK_MONOTONIC, &ts);
    return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) / 1e9;
}

std::string replayLine(const char* argv0, const Options& o, std::uint64_t seed) {
    std::string line = std::string(argv0) + " --seed " + std::to_string(seed) + " --count 1 -v";
    if (o.profile != "default") line += " --profile " + o.profile;
    if (!o.avoid.empty()) line += " --avoid " + o.avoid;
    return line + "\n    (or: make soak SEED=" + std::to_string(seed) + " COUNT=1" +
           (o.profile != "default" ? " PROFILE=" + o.profile : std::string()) +
           (!o.avoid.empty() ? " AVOID=" + o.avoid : std::string()) + ")";
}

/// What one program reports back (through a pipe from a child in --keep-going).
struct Outcome {
    stress::Stats stats;
    double cpu = 0;
    bool ok = true;
};

Outcome runOne(const char* argv0, const Options& o, const stress::Profile& profile, std::uint64_t seed) {
    Outcome out;
    std::snprintf(g_crash, sizeof g_crash, "\nstress: CRASHED in the program with seed %llu\n  replay: %s\n",
                  static_cast<unsigned long long>(seed), replayLine(argv0, o, seed).c_str());
    std::snprintf(g_hang, sizeof g_hang,
                  "\nstress: HUNG: the program with seed %llu did not end within 60 s (its own deadlines are "
                  "shorter: the loop itself is stuck)\n  replay: %s\n",
                  static_cast<unsigned long long>(seed), replayLine(argv0, o, seed).c_str());
    ::alarm(60);
    const long long heap0 = stress::heapInUse();
    const double cpu0 = cpuSeconds();
    std::vector<std::string> failures;
    std::string config;
    {
        stress::World w(seed, profile);
        w.verbose = o.verbose;
        w.onFailure = [seed](const std::string& what) {
            std::fprintf(stderr, "stress: seed %llu: %s\n", static_cast<unsigned long long>(seed), what.c_str());
        };
        if (o.verbose) std::fprintf(stderr, "stress: program with seed %llu\n", static_cast<unsigned long long>(seed));
        out.ok = w.run();
        out.stats = w.stats;
        failures = w.failures;
        config = w.describeConfig();
        if (!out.ok) {
            std::fprintf(stderr, "stress: FAILED: seed %llu (%s)\n", static_cast<unsigned long long>(seed), config.c_str());
            if (!o.verbose) std::fprintf(stderr, "%s", w.recentOps().c_str());
        }
    }
    const long long heap1 = stress::heapInUse();
    // Statics made on first use (the log hook, the thread pool's) are small.
    if (heap0 > 0 && heap1 - heap0 > (1 << 20)) {
        std::fprintf(stderr, "stress: seed %llu: the heap grew by %lld bytes over the program (a leak)\n",
                     static_cast<unsigned long long>(seed), heap1 - heap0);
        out.ok = false;
    }
    out.cpu = cpuSeconds() - cpu0;
    ::alarm(0);
    if (!out.ok) std::fprintf(stderr, "  replay: %s\n", replayLine(argv0, o, seed).c_str());
    if (o.verbose)
        std::fprintf(stderr, "stress: seed %llu: %s, %llu operations, %.3f s CPU\n",
                     static_cast<unsigned long long>(seed), out.ok ? "ok" : "FAILED",
                     static_cast<unsigned long long>(out.stats.ops), out.cpu);
    return out;
}

/// A program running in a child process (--keep-going, --jobs): a crash
/// there is one failed seed, and the parent goes on.
struct Child {
    pid_t pid;
    int fd;
    std::uint64_t seed;
};

Child startChild(const char* argv0, const Options& o, const stress::Profile& profile, std::uint64_t seed) {
    int fds[2];
    if (::pipe(fds) != 0) {
        std::perror("stress: pipe");
        std::exit(2);
    }
    std::fflush(nullptr);
    pid_t pid = ::fork();
    if (pid < 0) {
        std::perror("stress: fork");
        std::exit(2);
    }
    if (pid == 0) {
        ::close(fds[0]);
        Outcome out = runOne(argv0, o, profile, seed);
        ssize_t ignored = ::write(fds[1], &out, sizeof out);  // < PIPE_BUF: never blocks
        (void)ignored;
        std::fflush(nullptr);
        ::_exit(out.ok ? 0 : 1);
    }
    ::close(fds[1]);
    return Child{pid, fds[0], seed};
}

/// Waits for any child; returns its seed and outcome.
std::pair<std::uint64_t, Outcome> reapChild(std::vector<Child>& running) {
    int status = 0;
    pid_t pid;
    do pid = ::waitpid(-1, &status, 0);
    while (pid < 0 && errno == EINTR);
    auto it = std::find_if(running.begin(), running.end(), [pid](const Child& c) { return c.pid == pid; });
    if (it == running.end()) {
        std::fprintf(stderr, "stress: waitpid: unknown child\n");
        std::exit(2);
    }
    Outcome out;
    bool got = ::read(it->fd, &out, sizeof out) == static_cast<ssize_t>(sizeof out);
    ::close(it->fd);
    std::uint64_t seed = it->seed;
    running.erase(it);
    if (!got || !WIFEXITED(status) || WEXITSTATUS(status) != 0) out.ok = false;
    if (!got) out.stats.programs = 1;
    return {seed, out};
}

[[noreturn]] void usage() {
    std::fprintf(stderr,
                 "usage: stress [--seed S] [--count N] [--seconds T] [--profile default|threads] [--keep-going] [--jobs J] "
                 "[-v] [--trace] [--avoid known|NAME,...]\n");
    std::exit(2);
}

}  // namespace

int main(int argc, char** argv) {
    Options o;
    for (int i = 1; i < argc; ++i) {
        std::string a = argv[i];
        auto value = [&]() -> const char* {
            if (i + 1 >= argc) usage();
            return argv[++i];
        };
        if (a == "--seed") o.seed = std::strtoull(value(), nullptr, 0);
        else if (a == "--count") o.count = std::strtoull(value(), nullptr, 0), o.countGiven = true;
        else if (a == "--seconds") o.seconds = std::strtod(value(), nullptr);
        else if (a == "--profile") o.profile = value();
        else if (a == "--keep-going") o.keepGoing = true;
        else if (a == "--jobs") o.jobs = static_cast<unsigned>(std::strtoul(value(), nullptr, 0));
        else if (a == "-v") o.verbose = true;
        else if (a == "--trace") o.trace = true;
        else if (a == "--avoid") o.avoid = value();
        else usage();
    }
    stress::Profile profile;
    if (o.profile == "default") profile = stress::defaultProfile();
    else if (o.profile == "threads") profile = stress::threadsProfile();
    else usage();
    for (std::size_t from = 0; from < o.avoid.size();) {
        std::size_t comma = o.avoid.find(',', from);
        std::string name = o.avoid.substr(from, comma == std::string::npos ? std::string::npos : comma - from);
        bool found = false;
        for (const auto& n : stress::avoidNames)
            if (name == n.name || name == "known") profile.avoid |= n.bit, found = true;
        if (!found) {
            std::fprintf(stderr, "stress: --avoid: unknown pattern '%s' (known:", name.c_str());
            for (const auto& n : stress::avoidNames) std::fprintf(stderr, " %s", n.name);
            std::fprintf(stderr, ", or 'known' for all)\n");
            return 2;
        }
        if (comma == std::string::npos) break;
        from = comma + 1;
    }
    if (o.trace) ::setenv("REACTOR_TRACE", "1", 1);
    installCrashHandlers();

    const double wall0 = wallSeconds();
    double lastProgress = wall0;
    stress::Stats total;
    double cpuTotal = 0, cpuMax = 0;
    std::uint64_t cpuMaxSeed = o.seed, ran = 0;
    std::vector<std::uint64_t> failed;
    const bool forked = o.keepGoing || o.jobs > 1;
    std::vector<Child> running;
    std::uint64_t next = 0;
    auto more = [&] {
        if (!failed.empty() && !o.keepGoing) return false;
        if (o.seconds > 0) return (next == 0 || wallSeconds() - wall0 < o.seconds) && (!o.countGiven || next < o.count);
        return next < o.count;
    };
    auto account = [&](std::uint64_t seed, const Outcome& out) {
        ++ran;
        total.add(out.stats);
        cpuTotal += out.cpu;
        if (out.cpu > cpuMax) {
            cpuMax = out.cpu;
            cpuMaxSeed = seed;
        }
        if (!out.ok) failed.push_back(seed);
        if (o.seconds > 0 && wallSeconds() - lastProgress >= 10) {
            lastProgress = wallSeconds();
            std::fprintf(stderr, "stress: %.0f s: %llu programs, %llu operations, %zu failed (seed now %llu)\n",
                         lastProgress - wall0, static_cast<unsigned long long>(ran),
                         static_cast<unsigned long long>(total.ops), failed.size(), static_cast<unsigned long long>(seed));
        }
    };
    while (more() || !running.empty()) {
        if (!forked) {
            const std::uint64_t seed = o.seed + next++;
            account(seed, runOne(argv[0], o, profile, seed));
            continue;
        }
        while (more() && running.size() < std::max(1u, o.jobs)) running.push_back(startChild(argv[0], o, profile, o.seed + next++));
        auto done = reapChild(running);
        account(done.first, done.second);
    }
    std::sort(failed.begin(), failed.end());
    std::printf(
        "stress (%s): %llu random programs (seeds %llu..%llu), %llu operations, %llu callbacks, %llu connections, "
        "%.1f MB written; CPU %.2f s (%.0f ms per program, max %.0f ms for seed %llu), wall %.1f s\n",
        profile.name, static_cast<unsigned long long>(ran), static_cast<unsigned long long>(o.seed),
        static_cast<unsigned long long>(o.seed + (ran ? ran - 1 : 0)), static_cast<unsigned long long>(total.ops),
        static_cast<unsigned long long>(total.callbacks), static_cast<unsigned long long>(total.connections),
        static_cast<double>(total.bytes) / 1e6, cpuTotal, ran ? 1000 * cpuTotal / static_cast<double>(ran) : 0.0,
        1000 * cpuMax, static_cast<unsigned long long>(cpuMaxSeed), wallSeconds() - wall0);
    if (!failed.empty()) {
        std::printf("stress: FAILED seeds:");
        for (std::uint64_t s : failed) std::printf(" %llu", static_cast<unsigned long long>(s));
        std::printf("\n");
        return 1;
    }
    return 0;
}
