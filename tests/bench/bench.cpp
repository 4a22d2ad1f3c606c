// bench — the load generator behind `make bench`.
//
//   bench ECHO_SERVER_BINARY [SECONDS_PER_SCENARIO]
//
// Written against the raw socket API (epoll), not reactor.hpp, so it does not
// measure itself. It starts the server under test (examples/echo_server,
// pinned to CPU 0 by the Makefile), runs each scenario, then does the same
// against a plain poll() echo loop built into this program (`bench
// --raw-server`), and prints one table with the ratio. Servers are started
// on free loopback ports and stopped by PID.
#ifndef _GNU_SOURCE
#define _GNU_SOURCE  // sched_setaffinity, accept4
#endif
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;
double now() { return std::chrono::duration<double>(Clock::now().time_since_epoch()).count(); }

void die(const char* what) {
    std::perror(what);
    std::exit(1);
}

void nonblocking(int fd) { ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK); }

// ---- the reference server: a plain poll() echo loop ----------------------

int rawServer(int port) {
    int lfd = ::socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    ::setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons(static_cast<uint16_t>(port));
    if (::bind(lfd, reinterpret_cast<sockaddr*>(&a), sizeof a) < 0) die("bind");
    ::listen(lfd, 1024);
    nonblocking(lfd);
    socklen_t len = sizeof a;
    ::getsockname(lfd, reinterpret_cast<sockaddr*>(&a), &len);
    std::printf("raw poll echo listening on 127.0.0.1:%d\n", ntohs(a.sin_port));
    std::fflush(stdout);
    std::vector<pollfd> fds{{lfd, POLLIN, 0}};
    std::vector<std::string> out{""};
    static char buf[65536];
    for (;;) {
        if (::poll(fds.data(), fds.size(), -1) < 0) continue;
        size_t n = fds.size();
        for (size_t i = 0; i < n; ++i) {
            if (!fds[i].revents) continue;
            if (fds[i].fd == lfd) {
                for (;;) {
                    int c = ::accept4(lfd, nullptr, nullptr, SOCK_NONBLOCK);
                    if (c < 0) break;
                    fds.push_back({c, POLLIN, 0});
                    out.emplace_back();
                }
                continue;
            }
            int fd = fds[i].fd;
            bool dead = false;
            if (fds[i].revents & (POLLIN | POLLHUP | POLLERR)) {
                ssize_t r = ::recv(fd, buf, sizeof buf, 0);
                if (r == 0 || (r < 0 && errno != EAGAIN)) dead = true;
                if (r > 0) {
                    if (out[i].empty()) {
                        ssize_t w = ::send(fd, buf, static_cast<size_t>(r), MSG_NOSIGNAL);
                        if (w < 0) w = 0;
                        out[i].append(buf + w, static_cast<size_t>(r - w));
                    } else {
                        out[i].append(buf, static_cast<size_t>(r));
                    }
                }
            }
            if (!dead && !out[i].empty()) {
                ssize_t w = ::send(fd, out[i].data(), out[i].size(), MSG_NOSIGNAL);
                if (w > 0) out[i].erase(0, static_cast<size_t>(w));
            }
            fds[i].events = static_cast<short>(POLLIN | (out[i].empty() ? 0 : POLLOUT));
            if (dead) {
                ::close(fd);
                fds[i].fd = -1;
            }
        }
        // Drop closed entries.
        for (size_t i = fds.size(); i-- > 1;)
            if (fds[i].fd < 0) {
                fds[i] = fds.back();
                fds.pop_back();
                out[i] = std::move(out.back());
                out.pop_back();
            }
    }
}

// ---- the server under test ----------------------------------------------

struct Server {
    pid_t pid = -1;
    int port = 0;
};

Server startServer(const std::vector<std::string>& argv, int cpu) {
    // The server's output goes to a file: it may log every connection, and
    // a pipe nobody reads would block (or SIGPIPE) it.
    char path[] = "/tmp/reactor-bench-XXXXXX";
    int out = ::mkstemp(path);
    if (out < 0) die("mkstemp");
    pid_t pid = ::fork();
    if (pid == 0) {
        if (cpu >= 0) {
            cpu_set_t set;
            CPU_ZERO(&set);
            CPU_SET(cpu, &set);
            sched_setaffinity(0, sizeof set, &set);
        }
        ::dup2(out, 1);
        std::vector<char*> args;
        for (auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
        args.push_back(nullptr);
        ::execv(args[0], args.data());
        std::_Exit(127);
    }
    std::string line;
    for (double until = now() + 10; now() < until && line.find('\n') == std::string::npos;) {
        char buf[256];
        ssize_t n = ::pread(out, buf, sizeof buf, 0);
        if (n > 0) line.assign(buf, static_cast<size_t>(n));
        else ::usleep(10000);  // the bench waiting for a child process to start
    }
    ::close(out);
    ::unlink(path);
    line = line.substr(0, line.find('\n'));
    Server s;
    s.pid = pid;
    size_t colon = line.rfind(':');
    s.port = colon == std::string::npos ? 0 : std::atoi(line.c_str() + colon + 1);
    if (!s.port) {
        std::fprintf(stderr, "server did not say where it listens: '%s'\n", line.c_str());
        std::exit(1);
    }
    return s;
}

void stopServer(Server& s) {
    ::kill(s.pid, SIGKILL);
    ::waitpid(s.pid, nullptr, 0);
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

// ---- the client side -----------------------------------------------------

struct Conn {
    int fd = -1;
    size_t toRead = 0;        // bytes of echo still expected
    std::vector<double> sent;  // send times of outstanding messages (FIFO)
    size_t sentHead = 0;
    size_t partial = 0;  // bytes of the current message received
};

int connectTo(int port) {
    int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons(static_cast<uint16_t>(port));
    if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) < 0) die("connect");
    int one = 1;
    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    nonblocking(fd);
    return fd;
}

struct Result {
    double rate = 0;  // messages/s (or MB/s when streaming)
    double p50 = 0, p99 = 0;
    long rssPerConn = -1;  // bytes
};

/// `conns` connections, of which the first `active` each keep `depth`
/// messages of `size` bytes in flight, for `seconds`.
Result pingPong(int port, int conns, int active, int depth, size_t size, double seconds, pid_t serverPid) {
    long baseline = rssKiB(serverPid);
    std::vector<Conn> cs(static_cast<size_t>(conns));
    for (auto& c : cs) c.fd = connectTo(port);
    Result res;
    if (conns > active) {
        // Let the server accept everything, then measure its memory.
        double until = now() + 2;
        long prev = -1, cur = rssKiB(serverPid);
        while (now() < until && cur != prev) {
            ::usleep(200000);  // the bench, not a test: waiting for a foreign process to settle
            prev = cur;
            cur = rssKiB(serverPid);
        }
        res.rssPerConn = (cur - baseline) * 1024 / conns;
    }
    int ep = ::epoll_create1(0);
    std::string msg(size, 'm');
    static char buf[1 << 16];
    std::vector<double> latencies;
    latencies.reserve(1 << 20);
    for (int i = 0; i < active; ++i) {
        epoll_event ev{};
        ev.events = EPOLLIN;
        ev.data.u32 = static_cast<uint32_t>(i);
        ::epoll_ctl(ep, EPOLL_CTL_ADD, cs[static_cast<size_t>(i)].fd, &ev);
        for (int d = 0; d < depth; ++d) {
            ::send(cs[static_cast<size_t>(i)].fd, msg.data(), size, MSG_NOSIGNAL);
            cs[static_cast<size_t>(i)].sent.push_back(now());
        }
    }
    size_t done = 0;
    const double start = now(), end = start + seconds;
    epoll_event events[256];
    while (now() < end) {
        int n = ::epoll_wait(ep, events, 256, 100);
        for (int k = 0; k < n; ++k) {
            Conn& c = cs[events[k].data.u32];
            ssize_t r = ::recv(c.fd, buf, sizeof buf, 0);
            if (r <= 0) continue;
            c.partial += static_cast<size_t>(r);
            while (c.partial >= size) {
                c.partial -= size;
                double t = now();
                latencies.push_back(t - c.sent[c.sentHead++]);
                ++done;
                ::send(c.fd, msg.data(), size, MSG_NOSIGNAL);
                c.sent.push_back(t);
                if (c.sentHead > 4096) {
                    c.sent.erase(c.sent.begin(), c.sent.begin() + static_cast<long>(c.sentHead));
                    c.sentHead = 0;
                }
            }
        }
    }
    double elapsed = now() - start;
    for (auto& c : cs) ::close(c.fd);
    ::close(ep);
    res.rate = static_cast<double>(done) / elapsed;
    if (!latencies.empty()) {
        std::sort(latencies.begin(), latencies.end());
        res.p50 = latencies[latencies.size() / 2] * 1e6;
        res.p99 = latencies[latencies.size() * 99 / 100] * 1e6;
    }
    return res;
}

/// One connection writing 64 KiB chunks as fast as the echo comes back.
Result streaming(int port, double seconds) {
    int fd = connectTo(port);
    std::string chunk(64 * 1024, 's');
    static char buf[1 << 16];
    size_t inFlight = 0, received = 0;
    const double start = now(), end = start + seconds;
    pollfd p{fd, POLLIN | POLLOUT, 0};
    while (now() < end) {
        p.events = static_cast<short>(POLLIN | (inFlight < 4 * chunk.size() ? POLLOUT : 0));
        if (::poll(&p, 1, 100) <= 0) continue;
        if (p.revents & POLLOUT) {
            ssize_t w = ::send(fd, chunk.data(), chunk.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
            if (w > 0) inFlight += static_cast<size_t>(w);
        }
        if (p.revents & POLLIN) {
            ssize_t r = ::recv(fd, buf, sizeof buf, MSG_DONTWAIT);
            if (r > 0) {
                received += static_cast<size_t>(r);
                inFlight -= std::min(inFlight, static_cast<size_t>(r));
            }
        }
    }
    ::close(fd);
    Result res;
    res.rate = static_cast<double>(received) / (now() - start) / 1e6;
    return res;
}

struct Scenario {
    const char* name;
    const char* unit;
    int conns, active, depth;
};

}  // namespace

int main(int argc, char** argv) {
    if (argc >= 2 && std::strcmp(argv[1], "--raw-server") == 0) return rawServer(argc > 2 ? std::atoi(argv[2]) : 0);
    if (argc < 2) {
        std::fprintf(stderr, "usage: %s ECHO_SERVER [SECONDS]\n", argv[0]);
        return 2;
    }
    ::signal(SIGPIPE, SIG_IGN);
    rlimit rl{};
    ::getrlimit(RLIMIT_NOFILE, &rl);
    rl.rlim_cur = rl.rlim_max;
    ::setrlimit(RLIMIT_NOFILE, &rl);
    const double seconds = argc > 2 ? std::atof(argv[2]) : 2.0;
    const bool haveTwoCpus = ::sysconf(_SC_NPROCESSORS_ONLN) >= 2;
    if (haveTwoCpus) {  // the generator on CPU 1, the servers on CPU 0
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET(1, &set);
        sched_setaffinity(0, sizeof set, &set);
    }
    const int serverCpu = haveTwoCpus ? 0 : -1;
    const int idleConns = rl.rlim_cur >= 12000 ? 10000 : static_cast<int>(rl.rlim_cur) - 1000;

    Scenario scenarios[] = {
        {"1 conn ping-pong (64 B)", "msg/s", 1, 1, 1},
        {"64 conns ping-pong", "msg/s", 64, 64, 1},
        {"64 conns pipelined x16", "msg/s", 64, 64, 16},
        {"1,000 conns ping-pong", "msg/s", 1000, 1000, 1},
        {"1 conn streaming 64 KiB", "MB/s", 1, 1, 0},
        {"10,000 conns, 100 active", "msg/s", idleConns, 100, 1},
    };
    std::string self = argv[0];
    std::printf("reactor.hpp bench: %.1f s per scenario, server on CPU %d, generator on CPU %d\n\n", seconds,
                serverCpu, haveTwoCpus ? 1 : -1);
    std::printf("%-28s %14s %14s %7s %10s %10s %12s\n", "scenario", "reactor.hpp", "raw poll()", "ratio",
                "p50 us", "p99 us", "RSS/conn");
    for (const Scenario& s : scenarios) {
        Result mine, raw;
        for (int which = 0; which < 2; ++which) {
            Server srv = which == 0 ? startServer({argv[1], "0"}, serverCpu)
                                    : startServer({self, "--raw-server", "0"}, serverCpu);
            Result r = s.depth == 0 ? streaming(srv.port, seconds)
                                    : pingPong(srv.port, s.conns, s.active, s.depth, 64, seconds, srv.pid);
            stopServer(srv);
            (which == 0 ? mine : raw) = r;
        }
        char rss[32] = "";
        if (mine.rssPerConn >= 0) std::snprintf(rss, sizeof rss, "%ld B", mine.rssPerConn);
        std::printf("%-28s %10.0f %-3s %10.0f %-3s %6.2f %10.1f %10.1f %12s\n", s.name, mine.rate,
                    s.unit[0] == 'M' ? "MB" : "", raw.rate, s.unit[0] == 'M' ? "MB" : "", mine.rate / raw.rate,
                    mine.p50, mine.p99, rss);
        std::fflush(stdout);
    }
    std::printf("\nratio = reactor.hpp / raw poll() loop (higher is better; aim >= 0.90).\n");
    std::printf("RSS/conn = (server VmRSS with the idle connections - before them) / connections: user-space\n"
                "memory only; the kernel's socket buffers are not in a process's RSS.\n");
    return 0;
}
