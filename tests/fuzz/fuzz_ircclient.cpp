// libFuzzer target: an IRCClient on a StringTransport and a Clock, fed
// arbitrary server bytes in arbitrary chunks and driven through its
// commands with arbitrary arguments (targets, text, keys, a user name and
// password for register_, raw lines, client tags), with or without flood
// control and SASL credentials, the heartbeat on.
//
//   make fuzz FUZZ_SECONDS=60      (or build/fuzz/fuzz_ircclient -help=1)
//
// Invariants, on every line the client writes, whatever it was given:
//   - it ends in CRLF and contains no other CR, LF or NUL (no command can
//     be smuggled into another);
//   - it is at most 512 bytes, CRLF included (RFC 1459; a server drops the
//     connection on a longer one); a line sendWithTags wrote has its IRCv3
//     tag section (at most 4096 bytes with '@' and the space) before those;
//   - msg/notice with an explicit `length` write lines of at most
//     length - 2 bytes (Twisted's limit, 2 bytes kept for CRLF);
//   - register_ writes all of PASS?/NICK/USER or nothing, and USER has
//     exactly its four parameters.
// At the end nothing is left scheduled on the clock.
#include <fuzzer/FuzzedDataProvider.h>

#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#define REACTOR_WITH_IRC
#include "reactor.hpp"

namespace {

void check(bool ok, const char* what) {
    if (!ok) {
        std::fprintf(stderr, "invariant broken: %s\n", what);
        std::abort();
    }
}

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

/// The lines written since `from`, each checked; `from` moves past them.
std::vector<std::string_view> newLines(const std::string& wire, std::size_t& from) {
    std::vector<std::string_view> out;
    while (from < wire.size()) {
        const std::size_t end = wire.find("\r\n", from);
        check(end != std::string::npos, "a line without CRLF");
        std::string_view line(wire.data() + from, end - from);
        check(line.find_first_of(std::string_view("\r\n\0", 3)) == std::string_view::npos, "CR, LF or NUL inside a line");
        std::string_view body = line;
        const std::size_t sp = line.find(' ');
        if (!line.empty() && line[0] == '@' && sp != std::string_view::npos) {  // IRCv3 tags have their own limit
            check(sp + 1 <= 4096, "a tag section over 4096 bytes");
            body = line.substr(sp + 1);
        }
        check(body.size() + 2 <= 512, "a line over 512 bytes with its CRLF");
        out.push_back(line);
        from = end + 2;
    }
    return out;
}

/// Short or long, plain or hostile: spaces, ':', CR/LF/NUL, UTF-8.
std::string arg(FuzzedDataProvider& fdp) {
    switch (fdp.ConsumeIntegralInRange<int>(0, 7)) {
        case 0: return std::string(fdp.ConsumeIntegralInRange<std::size_t>(0, 1200), 'x');
        case 1: {
            std::string s;
            const std::size_t n = fdp.ConsumeIntegralInRange<std::size_t>(0, 400);
            for (std::size_t i = 0; i < n; ++i) s += (i % 7 == 6) ? " " : "\xc3\xa9";  // é, and spaces
            return s;
        }
        case 2: return "#chan";
        case 3: return "bob";
        default: return fdp.ConsumeRandomLengthString(80);
    }
}

void command(Client& c, FuzzedDataProvider& fdp, const std::string& wire, std::size_t& from) {
    const int which = fdp.ConsumeIntegralInRange<int>(0, 20);
    switch (which) {
        case 0:
        case 1: {
            const std::string target = arg(fdp), text = arg(fdp);
            const std::size_t length = fdp.ConsumeBool() ? 0 : fdp.ConsumeIntegralInRange<std::size_t>(0, 700);
            const bool sent = which == 0 ? c.msg(target, text, length) : c.notice(target, text, length);
            if (sent && length > 0 && c.lineRate == 0)
                for (std::string_view line : newLines(wire, from))
                    check(line.size() + 2 <= length, "msg/notice wrote a line over its explicit length");
            break;
        }
        case 2: c.say(arg(fdp), arg(fdp)); break;
        case 3: c.describe(arg(fdp), arg(fdp)); break;
        case 4: c.join(arg(fdp), fdp.ConsumeBool() ? arg(fdp) : ""); break;
        case 5: c.leave(arg(fdp), arg(fdp)); break;
        case 6: c.kick(arg(fdp), arg(fdp), arg(fdp)); break;
        case 7: c.invite(arg(fdp), arg(fdp)); break;
        case 8:
            if (fdp.ConsumeBool()) c.topic(arg(fdp));
            else c.topic(arg(fdp), arg(fdp));
            break;
        case 9: {
            const std::string chan = arg(fdp), modes = arg(fdp);
            const bool set = fdp.ConsumeBool();
            switch (fdp.ConsumeIntegralInRange<int>(0, 3)) {
                case 0: c.mode(chan, set, modes); break;
                case 1: c.mode(chan, set, modes, fdp.ConsumeIntegral<int>()); break;
                case 2: c.mode(chan, set, modes, std::nullopt, arg(fdp)); break;
                default: c.mode(chan, set, modes, std::nullopt, std::nullopt, arg(fdp)); break;
            }
            break;
        }
        case 10: c.away(arg(fdp)); break;
        case 11: c.whois(arg(fdp), fdp.ConsumeBool() ? arg(fdp) : ""); break;
        case 12: c.setNick(arg(fdp)); break;
        case 13: c.quit(arg(fdp)); break;
        case 14: c.names(arg(fdp)); break;
        case 15: c.ping(arg(fdp), fdp.ConsumeBool() ? arg(fdp) : ""); break;
        case 16: {
            c.username = fdp.ConsumeBool() ? arg(fdp) : "";
            c.password = fdp.ConsumeBool() ? arg(fdp) : "";
            c.realname = fdp.ConsumeBool() ? arg(fdp) : "";
            const std::string nick = arg(fdp), host = fdp.ConsumeBool() ? arg(fdp) : "foo";
            const bool sent = c.register_(nick, host, "bar");
            if (c.lineRate != 0) break;
            const std::vector<std::string_view> lines = newLines(wire, from);
            if (!sent) {
                check(lines.empty(), "register_ refused but wrote lines");
                break;
            }
            check(lines.size() == (c.password.empty() ? 2u : 3u), "register_ wrote too few or too many lines");
            std::string_view user = lines.back();
            check(user.substr(0, 5) == "USER ", "register_'s last line is not USER");
            if (user.size() + 3 >= c.maxLineBytes) break;  // cut to fit (at a UTF-8 boundary): no structure left
            // USER <user> <host> <server> :<realname>: three middle parameters, then the trailing one.
            std::string_view rest = user.substr(5);
            int middles = 0;
            while (!rest.empty() && rest[0] != ':') {
                const std::size_t sp = rest.find(' ');
                check(sp != std::string_view::npos && sp > 0, "USER has an empty or no trailing parameter");
                ++middles;
                rest.remove_prefix(sp + 1);
            }
            check(middles == 3 && !rest.empty(), "USER's parameters shifted");
            break;
        }
        case 17: c.ctcpMakeQuery(arg(fdp), {{arg(fdp), fdp.ConsumeBool() ? std::optional<std::string>(arg(fdp)) : std::nullopt}}); break;
        case 18: c.ctcpMakeReply(arg(fdp), {{arg(fdp), fdp.ConsumeBool() ? std::optional<std::string>(arg(fdp)) : std::nullopt}}); break;
        case 19: {
            std::vector<std::pair<std::string, std::string>> tags;
            for (int n = fdp.ConsumeIntegralInRange<int>(0, 3); n > 0; --n) tags.emplace_back(arg(fdp), arg(fdp));
            c.sendWithTags(tags, arg(fdp));
            break;
        }
        default: c.sendLine(arg(fdp)); break;
    }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    static bool quiet = (reactor::setLogger([](reactor::LogLevel, std::string_view) {}), true);
    (void)quiet;
    FuzzedDataProvider fdp(data, size);
    reactor::Clock clock;
    reactor::StringTransport t;
    {
        Client c(&clock);
        c.nickname = "fuzz";
        c.lineRate = fdp.ConsumeBool() ? 0.5 : 0;
        c.heartbeatInterval = 10;
        c.versionName = "fuzz";
        if (fdp.ConsumeBool()) c.saslUsername = c.saslPassword = "fuzz";
        c.makeConnection(&t);
        if (fdp.ConsumeBool())  // IRCv3 on (random bytes rarely spell it): tags, SASL
            c.dataReceived(":s CAP * LS :message-tags server-time sasl\r\n:s CAP * ACK :message-tags server-time sasl\r\n");
        std::size_t from = 0;
        while (fdp.remaining_bytes() > 0) {
            if (fdp.ConsumeIntegralInRange<int>(0, 3) != 0) {  // server bytes, mostly
                c.dataReceived(fdp.ConsumeRandomLengthString(300));
            } else {
                newLines(t.value(), from);
                command(c, fdp, t.value(), from);
            }
            clock.advance(0.3);
            newLines(t.value(), from);
        }
        clock.advance(100);
        newLines(t.value(), from);
        check(from == t.value().size(), "a partial line at the end");
        c.connectionLost(reactor::Failure(reactor::error::ConnectionDone()));
    }
    check(clock.getDelayedCalls().empty(), "something left scheduled");
    return 0;
}
