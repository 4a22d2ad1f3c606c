// libFuzzer target: an IRCClient on a StringTransport and a Clock, fed
// arbitrary server bytes (split into chunks by the input itself), with
// flood control and the heartbeat on.
//   clang++ -g -O1 -fsanitize=fuzzer,address,undefined -I. tests/fuzz/fuzz_ircclient.cpp -o build/fuzz_ircclient
//   ./build/fuzz_ircclient -max_total_time=60
// Invariant: whatever the server sends, every line the client writes ends
// in CRLF and contains no other CR, LF or NUL.
#include <cstdint>
#include <cstdlib>
#include <string>

#include "reactor.hpp"

namespace {

struct Client : reactor::irc::IRCClient {
    using IRCClient::IRCClient;
    // Reply to everything, to exercise the send path with hostile input.
    void privmsg(const std::string& user, const std::string& channel, const std::string& message) override {
        msg(isChannel(channel) ? channel : reactor::irc::detail::nickOf(user), message);
    }
    void userJoined(const std::string& user, const std::string& channel) override { say(channel, "Hello " + user); }
    void topicUpdated(const std::string&, const std::string& channel, const std::string& newTopic) override {
        topic(channel, newTopic);
    }
};

void checkWire(const std::string& wire) {
    std::size_t pos = 0;
    while (pos < wire.size()) {
        std::size_t end = wire.find("\r\n", pos);
        if (end == std::string::npos) std::abort();  // every line ends in CRLF
        std::string_view line(wire.data() + pos, end - pos);
        if (line.find_first_of(std::string_view("\r\n\0", 3)) != std::string_view::npos) std::abort();
        pos = end + 2;
    }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    reactor::setLogger([](reactor::LogLevel, std::string_view) {});  // quiet
    reactor::Clock clock;
    reactor::StringTransport t;
    {
        Client c(&clock);
        c.nickname = "fuzz";
        c.lineRate = 0.5;
        c.heartbeatInterval = 10;
        c.versionName = "fuzz";
        c.makeConnection(&t);
        std::string_view rest(reinterpret_cast<const char*>(data), size);
        while (!rest.empty()) {  // the first byte of each chunk is its length
            std::size_t n = std::min<std::size_t>(rest.size() - 1, static_cast<unsigned char>(rest[0]) + 1u);
            c.dataReceived(rest.substr(1, n));
            rest.remove_prefix(1 + n);
            clock.advance(0.3);
        }
        clock.advance(100);
        checkWire(t.value());
        c.connectionLost(reactor::Failure(reactor::error::ConnectionDone()));
    }
    if (!clock.getDelayedCalls().empty()) std::abort();  // nothing left scheduled
    return 0;
}
