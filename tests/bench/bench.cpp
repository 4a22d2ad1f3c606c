// bench — the load generator behind `make bench`.
//
//   bench [--rounds N] [--only TEXT] [--verbose] SECONDS ECHO_POLL ECHO_SELECT ECHO_EPOLL
//
// --rounds: how many turns each server takes per scenario (default 7);
// --only: just the scenarios whose name contains TEXT; --verbose: every
// run's throughput and every round's ratios on stderr.
//
// ECHO_* are examples/echo_server.cpp built with each of reactor.hpp's
// readiness backends (the default poll(), -DREACTOR_USE_SELECT,
// -DREACTOR_USE_EPOLL). Next to them run two reference servers built into
// this program: a plain poll() echo loop and a plain epoll echo loop
// (`bench --raw-server poll|epoll PORT`, started by the bench itself).
//
// The load generator is written against the raw socket API (epoll), not
// reactor.hpp, so it does not measure itself. It runs pinned to CPU 1, every
// server pinned to CPU 0. Servers are started on free loopback ports, their
// output goes to /dev/null (echo_server prints a line per connection), and
// they are stopped by PID; one runs at a time.
//
// Paired measurement: for each scenario the five servers take turns, each
// for SECONDS / N (after a short warm-up), N rounds, the order reversed
// every round. A ratio (reactor.hpp on a backend / a raw loop) is computed
// within each round, and the table shows the median of those N ratios: the
// machine's drift (other work, frequency, caches) affects both sides of a
// pair alike and cancels out. Throughputs shown are each server's median.
//
// The idle-connection scenario also measures each server's user-space
// memory per connection: VmRSS with the connections open, minus VmRSS
// before, divided by the connections.
#ifndef _GNU_SOURCE
#define _GNU_SOURCE  // sched_setaffinity, accept4
#endif
#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <string>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;
double now() { return std::chrono::duration<double>(Clock::now().time_since_epoch()).count(); }

// The server currently running, for die() and the signal handler to stop:
// the bench never leaves a server behind, however it ends.
volatile sig_atomic_t liveServer = 0;

void killLiveServer() {
    pid_t pid = static_cast<pid_t>(liveServer);
    if (pid > 0) {
        ::kill(pid, SIGKILL);
        ::waitpid(pid, nullptr, 0);
        liveServer = 0;
    }
}

[[noreturn]] void fail(const std::string& what) {
    std::fprintf(stderr, "bench: %s\n", what.c_str());
    killLiveServer();
    std::exit(1);
}

[[noreturn]] void die(const char* what) { fail(std::string(what) + ": " + std::strerror(errno)); }

void onSignal(int sig) {  // Ctrl-C, or `timeout`: stop the server too
    pid_t pid = static_cast<pid_t>(liveServer);
    if (pid > 0) {
        ::kill(pid, SIGKILL);
        ::waitpid(pid, nullptr, 0);
    }
    ::_exit(128 + sig);
}

void nonblocking(int fd) { ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK); }

void pinToCpu(int cpu) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    ::sched_setaffinity(0, sizeof set, &set);
}

sockaddr_in loopback(int port) {
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons(static_cast<uint16_t>(port));
    return a;
}

// ---- the reference servers: a plain poll() loop and a plain epoll loop ----
//
// Both do what echo_server does, the simplest way: one recv() per readable
// connection into one 64 KiB buffer (reactor.hpp's default read size), sent
// straight back; what the socket does not take is queued, and the
// connection is watched for writability until the queue drains.

int listenLoopback(int port) {
    int lfd = ::socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    ::setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    sockaddr_in a = loopback(port);
    if (::bind(lfd, reinterpret_cast<sockaddr*>(&a), sizeof a) < 0) die("bind");
    if (::listen(lfd, SOMAXCONN) < 0) die("listen");
    nonblocking(lfd);
    socklen_t len = sizeof a;
    ::getsockname(lfd, reinterpret_cast<sockaddr*>(&a), &len);
    std::printf("raw echo listening on 127.0.0.1:%d\n", ntohs(a.sin_port));
    std::fflush(stdout);
    return lfd;
}

/// One turn of one connection: read once if `readable`, echo, flush what is
/// queued. False when the connection is finished (EOF or error); the caller
/// closes it. `queue` holds what the socket has not taken yet.
bool echoTurn(int fd, bool readable, std::string& queue) {
    static char buf[65536];
    if (readable) {
        ssize_t r = ::recv(fd, buf, sizeof buf, 0);
        if (r == 0 || (r < 0 && errno != EAGAIN)) return false;
        if (r > 0) {
            if (queue.empty()) {  // the common case: straight back, nothing copied
                ssize_t w = ::send(fd, buf, static_cast<size_t>(r), MSG_NOSIGNAL);
                if (w < 0) w = 0;
                queue.append(buf + w, static_cast<size_t>(r - w));
                return true;
            }
            queue.append(buf, static_cast<size_t>(r));
        }
    }
    if (!queue.empty()) {
        ssize_t w = ::send(fd, queue.data(), queue.size(), MSG_NOSIGNAL);
        if (w > 0) queue.erase(0, static_cast<size_t>(w));
    }
    return true;
}

int rawPollServer(int port) {
    int lfd = listenLoopback(port);
    std::vector<pollfd> fds{{lfd, POLLIN, 0}};
    std::vector<std::string> out{""};  // out[i]: the queue of fds[i]
    for (;;) {
        if (::poll(fds.data(), fds.size(), -1) < 0) continue;
        size_t n = fds.size();
        for (size_t i = 0; i < n; ++i) {
            if (!fds[i].revents) continue;
            if (fds[i].fd == lfd) {
                for (int c; (c = ::accept4(lfd, nullptr, nullptr, SOCK_NONBLOCK)) >= 0;) {
                    fds.push_back({c, POLLIN, 0});
                    out.emplace_back();
                }
                continue;
            }
            if (!echoTurn(fds[i].fd, fds[i].revents & (POLLIN | POLLHUP | POLLERR), out[i])) {
                ::close(fds[i].fd);
                fds[i].fd = -1;
                continue;
            }
            fds[i].events = static_cast<short>(POLLIN | (out[i].empty() ? 0 : POLLOUT));
        }
        // Drop closed entries: the last one fills the hole.
        for (size_t i = fds.size(); i-- > 1;)
            if (fds[i].fd < 0) {
                fds[i] = fds.back();
                fds.pop_back();
                out[i] = std::move(out.back());
                out.pop_back();
            }
    }
}

int rawEpollServer(int port) {
    int lfd = listenLoopback(port);
    int ep = ::epoll_create1(0);
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.fd = lfd;
    ::epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);
    std::vector<std::string> out;  // out[fd]: its queue
    std::vector<char> writing;     // writing[fd]: EPOLLOUT is watched
    epoll_event events[256];
    for (;;) {
        int n = ::epoll_wait(ep, events, 256, -1);
        for (int k = 0; k < n; ++k) {
            int fd = events[k].data.fd;
            if (fd == lfd) {
                for (int c; (c = ::accept4(lfd, nullptr, nullptr, SOCK_NONBLOCK)) >= 0;) {
                    if (static_cast<size_t>(c) >= out.size()) {
                        out.resize(static_cast<size_t>(c) + 1);
                        writing.resize(static_cast<size_t>(c) + 1);
                    }
                    out[static_cast<size_t>(c)].clear();
                    writing[static_cast<size_t>(c)] = 0;
                    ev.events = EPOLLIN;
                    ev.data.fd = c;
                    ::epoll_ctl(ep, EPOLL_CTL_ADD, c, &ev);
                }
                continue;
            }
            std::string& queue = out[static_cast<size_t>(fd)];
            if (!echoTurn(fd, events[k].events & (EPOLLIN | EPOLLHUP | EPOLLERR), queue)) {
                ::close(fd);  // which also takes it out of the epoll set
                std::string().swap(queue);
                continue;
            }
            char want = !queue.empty();
            if (want != writing[static_cast<size_t>(fd)]) {  // one epoll_ctl per change of interest
                writing[static_cast<size_t>(fd)] = want;
                ev.events = EPOLLIN | (want ? EPOLLOUT : 0u);
                ev.data.fd = fd;
                ::epoll_ctl(ep, EPOLL_CTL_MOD, fd, &ev);
            }
        }
    }
}

// ---- starting and stopping a server ----------------------------------------

/// A loopback port free right now (the server binds it a moment later; if
/// something else takes it first, the server exits and startServer retries).
int freePort() {
    int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a = loopback(0);
    if (::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) < 0) die("bind");
    socklen_t len = sizeof a;
    ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
    ::close(fd);
    return ntohs(a.sin_port);
}

/// Whether an echo server answers on `port`: connects, half-closes and waits
/// for the server to close its end. When this returns true the probe's
/// descriptor is already gone from the server (it closed it before its FIN
/// reached us), so counting the server's descriptors afterwards is exact.
bool probe(int port) {
    int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a = loopback(port);
    bool ok = ::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
    if (ok) {
        // Not listening yet, and the kernel gave this socket the very port it
        // connects to: a TCP simultaneous open with itself. Not the server.
        sockaddr_in self{};
        socklen_t len = sizeof self;
        ::getsockname(fd, reinterpret_cast<sockaddr*>(&self), &len);
        ok = self.sin_port != a.sin_port;
    }
    if (ok) {
        ::shutdown(fd, SHUT_WR);
        pollfd p{fd, POLLIN, 0};
        char c;
        ok = ::poll(&p, 1, 5000) == 1 && ::recv(fd, &c, 1, 0) == 0;
    }
    ::close(fd);
    return ok;
}

struct Server {
    pid_t pid = -1;
    int port = 0;
};

/// Starts `argv` with "PORT" replaced by a free port, pinned to `cpu` (-1:
/// anywhere), stdin and stdout on /dev/null, and waits until it answers.
Server startServer(std::vector<std::string> argv, int cpu) {
    for (int attempt = 0; attempt < 5; ++attempt) {
        Server s;
        s.port = freePort();
        std::vector<std::string> args = argv;
        for (auto& a : args)
            if (a == "PORT") a = std::to_string(s.port);
        s.pid = ::fork();
        if (s.pid < 0) die("fork");
        if (s.pid == 0) {
            if (cpu >= 0) pinToCpu(cpu);
            int null = ::open("/dev/null", O_RDWR);
            ::dup2(null, 0);
            ::dup2(null, 1);  // stderr stays: a server's complaint should be seen
            std::vector<char*> cargs;
            for (auto& a : args) cargs.push_back(const_cast<char*>(a.c_str()));
            cargs.push_back(nullptr);
            ::execv(cargs[0], cargs.data());
            std::_Exit(127);
        }
        liveServer = s.pid;
        for (double until = now() + 10; now() < until;) {
            if (::waitpid(s.pid, nullptr, WNOHANG) == s.pid) break;  // exited: the port was taken?
            if (probe(s.port)) return s;
            ::usleep(2000);  // the bench waiting for another process to start listening
        }
        killLiveServer();
    }
    fail("could not start " + argv[0]);
}

void stopServer(Server& s) {
    if (::kill(s.pid, 0) != 0 || ::waitpid(s.pid, nullptr, WNOHANG) == s.pid) {
        liveServer = 0;
        fail("the server (" + std::to_string(s.pid) + ") died during the run");
    }
    killLiveServer();
}

long rssKiB(pid_t pid) {
    char path[64];
    std::snprintf(path, sizeof path, "/proc/%d/status", pid);
    FILE* f = std::fopen(path, "r");
    if (!f) return 0;
    char line[256];
    long kb = 0;
    while (std::fgets(line, sizeof line, f))
        if (std::strncmp(line, "VmRSS:", 6) == 0) kb = std::atol(line + 6);
    std::fclose(f);
    return kb;
}

/// How many descriptors the process has open.
long openFds(pid_t pid) {
    char path[64];
    std::snprintf(path, sizeof path, "/proc/%d/fd", pid);
    DIR* d = ::opendir(path);
    if (!d) return -1;
    long n = 0;
    while (dirent* e = ::readdir(d))
        if (e->d_name[0] != '.') ++n;
    ::closedir(d);
    return n;
}

// ---- the client side -------------------------------------------------------

int connectTo(int port) {
    int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) die("socket");
    timeval limit{10, 0};  // bounds connect() too, on Linux
    ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &limit, sizeof limit);
    sockaddr_in a = loopback(port);
    if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) < 0) die("connect");
    int one = 1;
    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    nonblocking(fd);
    return fd;
}

/// Opens `n` connections and waits until the server has accepted all of
/// them (its descriptor count went up by `n`), so that accepting is never
/// part of a measurement.
std::vector<int> connectAll(const Server& s, int n) {
    const long before = openFds(s.pid);
    std::vector<int> fds;
    fds.reserve(static_cast<size_t>(n));
    for (int i = 0; i < n; ++i) fds.push_back(connectTo(s.port));
    long have = 0;
    for (double until = now() + 20; now() < until;) {
        if (::waitpid(s.pid, nullptr, WNOHANG) == s.pid) {
            liveServer = 0;
            fail("the server exited while accepting connections");
        }
        have = openFds(s.pid) - before;
        if (have >= n) return fds;
        ::usleep(2000);  // the bench waiting for another process to accept
    }
    fail("the server accepted " + std::to_string(have) + " of " + std::to_string(n) + " connections");
}

void closeAll(std::vector<int>& fds) {
    for (int fd : fds) ::close(fd);
    fds.clear();
}

/// The first `active` of `fds` each keep `depth` messages of `size` bytes in
/// flight; every message echoed back is answered by a new one. Returns
/// messages echoed per second over `seconds`, after `warm` seconds.
double pingPong(const std::vector<int>& fds, int active, int depth, size_t size, double warm, double seconds) {
    int ep = ::epoll_create1(0);
    const std::string msgs(static_cast<size_t>(depth) * size, 'm');  // up to `depth` messages in one send
    std::vector<size_t> partial(static_cast<size_t>(active), 0);     // bytes of a message received so far
    auto sendAll = [&](int fd, size_t bytes) {
        if (::send(fd, msgs.data(), bytes, MSG_NOSIGNAL) != static_cast<ssize_t>(bytes)) die("send");
    };
    for (int i = 0; i < active; ++i) {
        epoll_event ev{};
        ev.events = EPOLLIN;
        ev.data.u32 = static_cast<uint32_t>(i);
        ::epoll_ctl(ep, EPOLL_CTL_ADD, fds[static_cast<size_t>(i)], &ev);
        sendAll(fds[static_cast<size_t>(i)], msgs.size());
    }
    static char buf[1 << 16];
    epoll_event events[256];
    uint64_t done = 0;
    const double start = now() + warm, end = start + seconds;
    bool counting = false;
    double t = now();
    while (t < end) {
        int n = ::epoll_wait(ep, events, 256, 100);
        if (!counting && (t = now()) >= start) {  // warm-up over: count from here
            counting = true;
            done = 0;
        }
        for (int k = 0; k < n; ++k) {
            const uint32_t i = events[k].data.u32;
            const int fd = fds[i];
            ssize_t r = ::recv(fd, buf, sizeof buf, 0);
            if (r == 0) fail("the server closed a connection");
            if (r < 0) {
                if (errno == EAGAIN) continue;
                die("recv");
            }
            partial[i] += static_cast<size_t>(r);
            const size_t complete = partial[i] / size;  // never more than `depth`
            partial[i] %= size;
            if (complete == 0) continue;
            done += complete;
            sendAll(fd, complete * size);
        }
        t = now();
    }
    ::close(ep);
    return counting ? static_cast<double>(done) / (t - start) : 0;
}

/// One connection writing 64 KiB at a time, at most four writes' worth
/// unanswered. Every byte that comes back is compared with what was sent
/// (a pattern of period 251, so a lost, repeated or reordered block shows),
/// and at the end the echo must catch up with exactly what was sent.
/// Returns bytes echoed back per second over `seconds`, after `warm`.
double streaming(int fd, double warm, double seconds) {
    constexpr size_t chunk = 64 * 1024, inFlight = 4, period = 251;
    std::string pattern(chunk + period, '\0');
    for (size_t i = 0; i < pattern.size(); ++i) pattern[i] = static_cast<char>(i % period);
    static char buf[1 << 16];
    uint64_t sent = 0, received = 0;
    auto receive = [&] {
        ssize_t r = ::recv(fd, buf, sizeof buf, MSG_DONTWAIT);
        if (r == 0) fail("streaming: the server closed the connection");
        if (r < 0) {
            if (errno == EAGAIN) return;
            die("recv");
        }
        if (std::memcmp(buf, pattern.data() + received % period, static_cast<size_t>(r)) != 0)
            fail("streaming: the echo differs from what was sent, after byte " + std::to_string(received));
        received += static_cast<uint64_t>(r);
    };

    int ep = ::epoll_create1(0);
    epoll_event ev{};
    ev.events = EPOLLIN | EPOLLOUT;
    ev.data.fd = fd;
    ::epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
    bool watchingOut = true;
    const double start = now() + warm, end = start + seconds;
    uint64_t receivedAtStart = 0;
    bool counting = false;
    double t = now();
    while (t < end) {
        // Room for one more write: watch for writability, else only read.
        const bool room = sent - received + chunk <= inFlight * chunk;
        if (room != watchingOut) {
            watchingOut = room;
            ev.events = EPOLLIN | (room ? EPOLLOUT : 0u);
            ::epoll_ctl(ep, EPOLL_CTL_MOD, fd, &ev);
        }
        epoll_event got[1];
        int n = ::epoll_wait(ep, got, 1, 100);
        if (!counting && (t = now()) >= start) {
            counting = true;
            receivedAtStart = received;
        }
        if (n == 1 && (got[0].events & EPOLLOUT) && room) {
            ssize_t w = ::send(fd, pattern.data() + sent % period, chunk, MSG_NOSIGNAL | MSG_DONTWAIT);
            if (w < 0 && errno != EAGAIN) die("send");
            if (w > 0) sent += static_cast<uint64_t>(w);
        }
        if (n == 1 && (got[0].events & (EPOLLIN | EPOLLHUP | EPOLLERR))) receive();
        t = now();
    }
    const double rate = counting ? static_cast<double>(received - receivedAtStart) / (t - start) : 0;
    // The rest of the echo: all of it, and nothing more.
    for (double until = now() + 10; received < sent && now() < until;) {
        epoll_event got[1];
        if (::epoll_wait(ep, got, 1, 100) == 1) receive();
    }
    ::close(ep);
    if (received != sent)
        fail("streaming: sent " + std::to_string(sent) + " bytes, " + std::to_string(received) + " came back");
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, 20) == 1 && ::recv(fd, buf, 1, MSG_DONTWAIT) > 0) fail("streaming: more came back than was sent");
    return rate;
}

// ---- scenarios, servers, rounds ----------------------------------------------

struct Scenario {
    std::string name;
    int conns, active, depth;  // depth 0: streaming
    bool measuresMemory;       // the idle-connection scenario
};

struct ServerKind {
    std::string name;
    std::vector<std::string> argv;  // "PORT" stands for the port
    bool selectLimited;             // reactor.hpp on select(): descriptors < FD_SETSIZE
};

/// What one server did in one round of one scenario.
struct Run {
    double rate = 0;      // msg/s, or bytes/s when streaming
    long rssPerConn = -1;  // bytes, for the idle-connection scenario
};

Run runOnce(const ServerKind& kind, const Scenario& sc, int serverCpu, double warm, double seconds) {
    Server s = startServer(kind.argv, serverCpu);
    const long rssBefore = rssKiB(s.pid);
    std::vector<int> fds = connectAll(s, sc.conns);
    Run run;
    if (sc.measuresMemory) {
        ::usleep(50000);  // the last accepted connections' objects are being made
        run.rssPerConn = (rssKiB(s.pid) - rssBefore) * 1024 / sc.conns;
    }
    run.rate = sc.depth == 0 ? streaming(fds[0], warm, seconds)
                             : pingPong(fds, sc.active, sc.depth, 64, warm, seconds);
    stopServer(s);  // first: its sockets close, and none of ours waits in TIME_WAIT
    closeAll(fds);
    return run;
}

double median(std::vector<double> v) {
    if (v.empty()) return 0;
    std::sort(v.begin(), v.end());
    size_t m = v.size() / 2;
    return v.size() % 2 ? v[m] : (v[m - 1] + v[m]) / 2;
}

/// 1234567.8 -> "1,234,568"
std::string withCommas(double x) {
    std::string digits = std::to_string(static_cast<long long>(x + 0.5));
    std::string out;
    for (size_t i = 0; i < digits.size(); ++i) {
        if (i > 0 && (digits.size() - i) % 3 == 0) out += ',';
        out += digits[i];
    }
    return out;
}

std::string format(const char* fmt, double x) {
    char b[64];
    std::snprintf(b, sizeof b, fmt, x);
    return b;
}

}  // namespace

int main(int argc, char** argv) {
    if (argc == 4 && std::strcmp(argv[1], "--raw-server") == 0) {
        const int port = std::atoi(argv[3]);
        if (std::strcmp(argv[2], "poll") == 0) return rawPollServer(port);
        if (std::strcmp(argv[2], "epoll") == 0) return rawEpollServer(port);
    }
    int rounds = 7;
    bool verbose = false;
    std::string only;
    std::vector<std::string> args;
    for (int i = 1; i < argc; ++i) {
        if (std::strcmp(argv[i], "--rounds") == 0 && i + 1 < argc) rounds = std::max(1, std::atoi(argv[++i]));
        else if (std::strcmp(argv[i], "--only") == 0 && i + 1 < argc) only = argv[++i];
        else if (std::strcmp(argv[i], "--verbose") == 0) verbose = true;
        else args.push_back(argv[i]);
    }
    if (args.size() != 4) {
        std::fprintf(stderr,
                     "usage: %s [--rounds N] [--only TEXT] [--verbose] SECONDS ECHO_POLL ECHO_SELECT ECHO_EPOLL\n",
                     argv[0]);
        return 2;
    }
    const double seconds = std::atof(args[0].c_str());
    const double slice = seconds / rounds;
    const double warm = std::min(0.1, slice / 4);

    ::signal(SIGPIPE, SIG_IGN);
    ::signal(SIGINT, onSignal);
    ::signal(SIGTERM, onSignal);
    ::signal(SIGHUP, onSignal);
    rlimit rl{};  // the servers inherit it
    ::getrlimit(RLIMIT_NOFILE, &rl);
    rl.rlim_cur = rl.rlim_max;
    ::setrlimit(RLIMIT_NOFILE, &rl);
    const bool haveTwoCpus = ::sysconf(_SC_NPROCESSORS_ONLN) >= 2;
    if (haveTwoCpus) pinToCpu(1);  // the generator on CPU 1, the servers on CPU 0
    const int serverCpu = haveTwoCpus ? 0 : -1;
    const int idleConns = rl.rlim_cur >= 12000 ? 10000 : static_cast<int>(rl.rlim_cur) - 1000;

    const std::vector<Scenario> scenarios = {
        {"1 connection ping-pong", 1, 1, 1, false},
        {"64 connections ping-pong", 64, 64, 1, false},
        {"64 connections pipelined ×16", 64, 64, 16, false},
        {"1,000 connections ping-pong", 1000, 1000, 1, false},
        {"1 connection streaming 64 KiB writes, 4 in flight", 1, 1, 0, false},
        {withCommas(idleConns) + " connections, 100 active", idleConns, 100, 1, true},
    };
    // The order servers run in within a round (reversed every other round):
    // each reactor.hpp build next to the raw loop it is compared with.
    enum { rawPoll, reactorPoll, reactorSelect, reactorEpoll, rawEpoll, kinds };
    char exe[4096] = {};  // this program, however it was started, runs the raw servers
    if (::readlink("/proc/self/exe", exe, sizeof exe - 1) <= 0) die("readlink /proc/self/exe");
    const std::string self = exe;
    const std::vector<ServerKind> servers = {
        {"raw poll()", {self, "--raw-server", "poll", "PORT"}, false},
        {"reactor.hpp on poll()", {args[1], "PORT"}, false},
        {"reactor.hpp on select()", {args[2], "PORT"}, true},
        {"reactor.hpp on epoll", {args[3], "PORT"}, false},
        {"raw epoll", {self, "--raw-server", "epoll", "PORT"}, false},
    };
    // The table's columns: throughputs, then ratios (numerator, denominator).
    const int columns[] = {rawPoll, reactorPoll, reactorSelect, rawEpoll, reactorEpoll};
    const int ratios[][2] = {
        {reactorPoll, rawPoll}, {reactorSelect, rawPoll}, {reactorEpoll, rawEpoll}, {reactorEpoll, rawPoll}};
    const char* ratioNames[] = {
        "poll() / raw poll()", "select() / raw poll()", "epoll / raw epoll", "epoll / raw poll()"};
    const std::string tooMany = "n/a (FD_SETSIZE)";
    // reactor.hpp on select() refuses descriptors >= FD_SETSIZE; its own
    // (stdio, listener, waker...) come first.
    auto fits = [](const ServerKind& k, const Scenario& sc) { return !k.selectLimited || sc.conns + 16 <= FD_SETSIZE; };

    char date[64];
    std::time_t t = std::time(nullptr);
    std::strftime(date, sizeof date, "%Y-%m-%d %H:%M %Z", std::localtime(&t));
    utsname u{};
    ::uname(&u);
    std::printf("reactor.hpp bench, %s (%s %s, %ld CPUs; server on CPU %d, load generator on CPU %d)\n", date,
                u.sysname, u.release, ::sysconf(_SC_NPROCESSORS_ONLN), serverCpu, haveTwoCpus ? 1 : -1);
    std::printf("%d rounds of %.2f s (after %.2f s of warm-up) per server and scenario; messages of 64 bytes\n\n",
                rounds, slice, warm);
    std::printf("| scenario |");
    for (int c : columns) std::printf(" %s |", servers[static_cast<size_t>(c)].name.c_str());
    for (const char* r : ratioNames) std::printf(" %s |", r);
    std::printf("\n|---|");
    for (size_t i = 0; i < std::size(columns) + std::size(ratioNames); ++i) std::printf("---:|");
    std::printf("\n");
    std::fflush(stdout);

    std::vector<std::vector<double>> memory(kinds);  // bytes per idle connection, per round
    const double started = now();
    for (const Scenario& sc : scenarios) {
        if (sc.name.find(only) == std::string::npos) continue;
        std::vector<std::vector<double>> rate(kinds);  // [server][round]
        for (int round = 0; round < rounds; ++round) {
            for (int k = 0; k < kinds; ++k) {
                const int which = round % 2 == 0 ? k : kinds - 1 - k;
                const ServerKind& kind = servers[static_cast<size_t>(which)];
                if (!fits(kind, sc)) continue;
                Run r = runOnce(kind, sc, serverCpu, warm, slice);
                rate[static_cast<size_t>(which)].push_back(r.rate);
                if (r.rssPerConn >= 0) memory[static_cast<size_t>(which)].push_back(static_cast<double>(r.rssPerConn));
                if (verbose)
                    std::fprintf(stderr, "  %s, round %d, %s: %.0f\n", sc.name.c_str(), round + 1, kind.name.c_str(),
                                 r.rate);
            }
        }
        const bool stream = sc.depth == 0;
        std::printf("| %s |", sc.name.c_str());
        for (int c : columns) {
            const auto& v = rate[static_cast<size_t>(c)];
            if (v.empty()) std::printf(" %s |", tooMany.c_str());
            else if (stream) std::printf(" %s MB/s |", withCommas(median(v) / 1e6).c_str());
            else std::printf(" %s msg/s |", withCommas(median(v)).c_str());
        }
        for (size_t r = 0; r < std::size(ratios); ++r) {  // the median of the per-round ratios
            const auto& ratio = ratios[r];
            const auto& a = rate[static_cast<size_t>(ratio[0])];
            const auto& b = rate[static_cast<size_t>(ratio[1])];
            if (a.empty() || b.empty()) {
                std::printf(" %s |", tooMany.c_str());
                continue;
            }
            std::vector<double> perRound;
            for (size_t i = 0; i < a.size() && i < b.size(); ++i) perRound.push_back(b[i] > 0 ? a[i] / b[i] : 0);
            std::printf(" %s |", format("%.2f", median(perRound)).c_str());
            if (verbose) {
                std::string all;
                for (double x : perRound) all += format(" %.2f", x);
                std::fprintf(stderr, "  %s, %s per round:%s\n", sc.name.c_str(), ratioNames[r], all.c_str());
            }
        }
        std::printf("\n");
        std::fflush(stdout);
    }
    if (std::any_of(memory.begin(), memory.end(), [](const auto& v) { return !v.empty(); })) {
        std::printf("| user-space memory per idle connection |");
        for (int c : columns) {
            const auto& v = memory[static_cast<size_t>(c)];
            if (v.empty()) std::printf(" %s |", tooMany.c_str());
            else std::printf(" %s B |", withCommas(median(v)).c_str());
        }
        for (size_t i = 0; i < std::size(ratioNames); ++i) std::printf(" |");
        std::printf("\n");
    }
    std::printf("\n");
    std::printf(
        "Ratios are paired: in each scenario the five servers take turns, %d rounds, the order reversed every\n"
        "round (raw poll(), reactor.hpp on poll(), on select(), on epoll, raw epoll); a ratio is reactor.hpp's\n"
        "throughput over the raw loop's in the same round, and the table shows the median of the %d ratios\n"
        "(higher is better). Throughputs are each server's median; MB = 10^6 bytes, echoed back and verified.\n"
        "Memory: (server VmRSS with the %s idle connections open - before them) / connections; the\n"
        "kernel's socket buffers are not in a process's RSS. select() cannot watch descriptors >= FD_SETSIZE (%d).\n",
        rounds, rounds, withCommas(idleConns).c_str(), FD_SETSIZE);
    std::fflush(stdout);
    std::fprintf(stderr, "bench: %.0f s\n", now() - started);
    return 0;
}
