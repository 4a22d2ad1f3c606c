// stdin_echo — watching a foreign file descriptor (stdin) with addReader.
//
//   make && ./build/examples/stdin_echo        (type lines; Ctrl-D to quit)
//   printf 'hello\nworld\n' | ./build/examples/stdin_echo
//
// One idea: the reactor can watch any descriptor, not just its own sockets.
// The callback runs only when stdin has data, so the loop stays free for
// other work in between (here, a heartbeat timer).
#include <unistd.h>

#include <cstdio>
#include <string>

#include "reactor.hpp"

int main() {
    reactor::Reactor r;
    const int in = STDIN_FILENO;

    r.addReader(in, [&] {
        char buf[4096];
        ssize_t n = ::read(in, buf, sizeof buf);  // ready: this will not block
        if (n <= 0) {                             // end of input (or an error)
            std::printf("stdin closed, stopping\n");
            r.removeReader(in);  // always stop watching before you stop
            r.stop();
            return;
        }
        std::string text(buf, static_cast<size_t>(n));
        std::printf("echo: %s", text.c_str());
        if (text.back() != '\n') std::printf("\n");
        std::fflush(stdout);
    });

    // Meanwhile the loop is free: a heartbeat every 2 seconds.
    std::function<void()> heartbeat = [&] {
        std::printf("(still listening)\n");
        std::fflush(stdout);
        r.callLater(2.0, heartbeat);
    };
    r.callLater(2.0, heartbeat);

    r.run(true);  // true: Ctrl-C (SIGINT) stops the reactor cleanly
    return 0;
}
