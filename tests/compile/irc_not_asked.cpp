// The IRC client is compiled only in TUs that ask for it (REACTOR_WITH_IRC):
// make compile-checks expects this TU to FAIL, with a message that names the
// switch, not with a page of errors about unknown names.
#include "reactor.hpp"

struct Bot : reactor::irc::IRCClient {};

int main() {
    Bot bot;
    (void)bot;
}
