// make demo: the toy IRC server, the IRC bot and a scripted user, all on
// loopback. Starts build/examples/irc_server on a free port and
// build/examples/irc_bot, then plays "alice" (an IRCClient in this
// process): waits for the bot to be in #demo, joins, expects "Hello alice",
// says "bot: how are you?", expects "alice: how are you?". Prints the
// conversation with timestamps, stops both processes by PID, exits 0 on
// success. Bounded: 20 seconds at most.
//
//   make demo            (or: build/gcc-c++17/demo build/examples)
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <cstdlib>
#include <string>
#include <vector>

#define REACTOR_WITH_IRC
#include "reactor.hpp"

extern char** environ;

namespace {

double startTime = 0;
reactor::Reactor* loop = nullptr;
bool greeted = false, answered = false;  // the outcome, kept past the protocol's life

void show(const char* who, const std::string& what) {
    std::printf("[%6.3fs] %-8s %s\n", loop->seconds() - startTime, who, what.c_str());
    std::fflush(stdout);
}

/// Starts `argv` with stdout to `out` and stderr to `err` (-1: same as
/// `out`), each a pipe's write end or a file; returns the PID.
pid_t spawn(const std::vector<std::string>& args, int out, int err = -1) {
    std::vector<char*> argv;
    for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_adddup2(&actions, out, STDOUT_FILENO);
    posix_spawn_file_actions_adddup2(&actions, err >= 0 ? err : out, STDERR_FILENO);
    pid_t pid = -1;
    int rc = posix_spawn(&pid, argv[0], &actions, nullptr, argv.data(), environ);
    posix_spawn_file_actions_destroy(&actions);
    if (rc != 0) {
        std::fprintf(stderr, "demo: cannot start %s\n", argv[0]);
        return -1;
    }
    return pid;
}

void stop(pid_t pid, const char* name) {
    if (pid <= 0) return;
    ::kill(pid, SIGTERM);
    for (int i = 0; i < 100; ++i) {  // up to 2 s, then SIGKILL
        if (::waitpid(pid, nullptr, WNOHANG) == pid) return;
        ::poll(nullptr, 0, 20);
    }
    std::fprintf(stderr, "demo: %s did not stop on SIGTERM; killing it\n", name);
    ::kill(pid, SIGKILL);
    ::waitpid(pid, nullptr, 0);
}

/// The scripted user.
struct Alice : reactor::irc::IRCClient {
    using IRCClient::IRCClient;
    reactor::DelayedCall poll;
    void signedOn() override {
        show("alice", "signed on; waiting for the bot to be in #demo");
        names("#demo");
    }
    bool joining = false;
    void receivedNames(const std::string&, const std::vector<std::string>& nicks) override {
        if (joining) return;  // the NAMES that follows our own JOIN
        for (const auto& n : nicks)
            if (n == "bot" || n == "@bot") {
                show("alice", "the bot is in #demo; joining");
                joining = true;
                join("#demo");
                return;
            }
        poll = clock->callLater(0.1, [this] { names("#demo"); });  // not there yet: ask again
    }
    void joined(const std::string& channel) override { show("alice", "joined " + channel); }
    void privmsg(const std::string& user, const std::string& channel, const std::string& message) override {
        std::string nick = user.substr(0, user.find('!'));
        show(("<" + nick + ">").c_str(), channel + ": " + message);
        if (nick != "bot") return;
        if (!greeted && message == "Hello alice") {
            greeted = true;
            std::string question = "bot: how are you?";
            show("<alice>", "#demo: " + question);
            say("#demo", question);
        } else if (greeted && message == "alice: how are you?") {
            answered = true;
            quit("demo over");
        }
    }
    void connectionLost(const reactor::Failure& reason) override {
        IRCClient::connectionLost(reason);
        if (poll.active()) poll.cancel();
        loop->stop();
    }
};

}  // namespace

int main(int argc, char** argv) {
    std::string dir = argc > 1 ? argv[1] : "build/examples";
    reactor::Reactor r;
    loop = &r;
    startTime = r.seconds();

    // 1. The server, on a port it picks; it prints "listening on PORT".
    int pipeFds[2];
    if (::pipe(pipeFds) != 0) return 1;
    pid_t server = spawn({dir + "/irc_server", "0"}, pipeFds[1]);
    ::close(pipeFds[1]);
    if (server < 0) return 1;
    std::string first;
    pollfd pfd{pipeFds[0], POLLIN, 0};
    while (first.find('\n') == std::string::npos && ::poll(&pfd, 1, 5000) == 1) {
        char buf[256];
        ssize_t n = ::read(pipeFds[0], buf, sizeof buf);
        if (n <= 0) break;
        first.append(buf, static_cast<std::size_t>(n));
    }
    unsigned port = 0;
    if (std::sscanf(first.c_str(), "listening on %u", &port) != 1 || port == 0) {
        std::fprintf(stderr, "demo: the server did not start: %s\n", first.c_str());
        stop(server, "irc_server");
        return 1;
    }
    // The rest of the server's output goes to a log (the pipe would fill).
    std::string logDir = "build/demo";
    ::mkdir(logDir.c_str(), 0755);
    int serverLog = ::open((logDir + "/irc_server.log").c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    r.addReader(pipeFds[0], [&] {
        char buf[4096];
        ssize_t n = ::read(pipeFds[0], buf, sizeof buf);
        if (n <= 0) return r.removeReader(pipeFds[0]);
        if (serverLog >= 0 && ::write(serverLog, buf, static_cast<std::size_t>(n)) < 0) return;
    });
    show("demo", "irc_server listening on 127.0.0.1:" + std::to_string(port));

    // 2. The bot. With REACTOR_TRACE=1 (make demo TRACE=1) its trace comes
    // back through a pipe and is shown interleaved with alice's own.
    const char* traceEnv = std::getenv("REACTOR_TRACE");
    const bool tracing = traceEnv && *traceEnv && std::strcmp(traceEnv, "0") != 0;
    int botLog = ::open((logDir + "/irc_bot.log").c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    int traceFds[2] = {-1, -1};
    std::string botTrace;
    if (tracing && ::pipe(traceFds) == 0) {
        r.setTracer([](std::string_view line) { show("alice  |", std::string(line)); });
        r.addReader(traceFds[0], [&] {
            char buf[4096];
            ssize_t n = ::read(traceFds[0], buf, sizeof buf);
            if (n <= 0) return r.removeReader(traceFds[0]);
            botTrace.append(buf, static_cast<std::size_t>(n));
            for (std::size_t nl; (nl = botTrace.find('\n')) != std::string::npos; botTrace.erase(0, nl + 1))
                show("bot    |", botTrace.substr(0, nl));
        });
    }
    pid_t bot = spawn({dir + "/irc_bot", "127.0.0.1", std::to_string(port), "bot", "#demo"}, botLog, traceFds[1]);
    if (traceFds[1] >= 0) ::close(traceFds[1]);
    show("demo", "irc_bot started (pid " + std::to_string(bot) + ")");

    // 3. Alice, in this process.
    reactor::ClientFactory factory;
    factory.protocol = [&]() -> std::unique_ptr<reactor::Protocol> {
        auto a = std::make_unique<Alice>(&r);
        a->nickname = "alice";
        a->heartbeatInterval = 0;
        return a;
    };
    r.connectTCP("127.0.0.1", static_cast<std::uint16_t>(port), factory);
    reactor::DelayedCall deadline = r.callLater(20, [&] {
        show("demo", "TIMEOUT after 20 s");
        r.stop();
    });
    r.run();
    if (deadline.active()) deadline.cancel();

    stop(bot, "irc_bot");
    stop(server, "irc_server");
    r.removeAll();
    ::close(pipeFds[0]);
    if (traceFds[0] >= 0) ::close(traceFds[0]);
    if (serverLog >= 0) ::close(serverLog);
    if (botLog >= 0) ::close(botLog);
    if (!(greeted && answered)) {
        std::printf("demo: FAILED (the bot did not greet and answer; logs in %s)\n", logDir.c_str());
        return 1;
    }
    std::printf("demo: OK — the bot greeted alice and answered her (logs in %s)\n", logDir.c_str());
    return 0;
}
