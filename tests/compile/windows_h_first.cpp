// Windows: a program that includes <windows.h> first (not lean: it pulls in
// the old <winsock.h> and the COM `interface` macro), then the header. It
// must compile, keep the program's macros as they were (`interface`, and
// `min`/`max` where they survive the C++ headers), and run a loopback round
// trip under wine.
// mingw's <winsock2.h> warns that it should have come first (built with
// -Wno-cpp here); MSVC needs <windows.h> lean, or after this header.
#include <windows.h>

#include <cstdio>
// What the program has before the header (mingw defines NOMINMAX for C++,
// so no min and max macros; MSVC's <windows.h> defines them).
#if defined(NOMINMAX)
#define HAD_NOMINMAX
#endif
#if defined(min) && defined(max)
#define HAD_MINMAX
#endif

#include "reactor.hpp"

#if !defined(interface)
#error "reactor.hpp lost the program's interface macro"
#endif
#if defined(HAD_MINMAX) && !(defined(min) && defined(max))
#error "reactor.hpp lost the program's min and max macros"
#endif
#if defined(NOMINMAX) != defined(HAD_NOMINMAX) || defined(WIN32_LEAN_AND_MEAN)
#error "reactor.hpp changed NOMINMAX or left WIN32_LEAN_AND_MEAN defined"
#endif

#undef interface  // this program uses ListenOptions::interface below

struct Echo : reactor::Protocol {
    void dataReceived(std::string_view d) override { transport->write(d); }
};

struct Hello : reactor::Protocol {
    std::string got;
    void connectionMade() override { transport->write("hello"); }
    void dataReceived(std::string_view d) override {
        got.append(d.data(), d.size());
        if (got == "hello") transport->loseConnection();
    }
};

int main() {
    reactor::Reactor r;
    reactor::Factory server = reactor::Factory::forProtocol<Echo>();
    reactor::ListenOptions where;
    where.interface = "127.0.0.1";
    reactor::ListeningPort port = r.listenTCP(0, server, where);
    std::shared_ptr<Hello> hello;
    reactor::connectProtocol<Hello>(r, "127.0.0.1", port.getHost().port).addCallback([&](std::shared_ptr<Hello> p) {
        hello = p;
    });
    bool ok = reactor::testing::runUntil(r, [&] { return hello && hello->got == "hello" && !hello->transport; }, 10);
    port.stopListening();
    ok = ok && reactor::testing::runUntilClean(r);
    std::printf("windows_h_first: %s\n", ok ? "ok" : "FAILED");
    return ok ? 0 : 1;
}
