// IRC: parsemsg and the quoting helpers, ServerSupportedFeatures,
// parseModes, split, and IRCClient driven through a StringTransport and a
// Clock: every server line to its callback, every command to its bytes,
// splitting, flood control, CTCP, nick collision, injection, bad input.
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#define REACTOR_WITH_IRC
#include "support.hpp"

using namespace reactor;
using namespace reactor::irc;

namespace {

/// The seed's bot.
struct Bot : IRCClient {
    void userJoined(const std::string& user, const std::string& channel) override { say(channel, "Hello " + user); }
};

std::string q(const std::optional<std::string>& s) { return s ? *s : std::string("None"); }

/// Records every callback as "name(arg, arg)".
struct Recorder : IRCClient {
    using IRCClient::IRCClient;
    std::vector<std::string> calls;
    void rec(std::string name, std::initializer_list<std::string> args) {
        std::string s = std::move(name) + "(";
        bool first = true;
        for (const auto& a : args) {
            s += (first ? "" : ", ") + a;
            first = false;
        }
        calls.push_back(s + ")");
    }
    std::string last() const { return calls.empty() ? std::string() : calls.back(); }

    void signedOn() override { rec("signedOn", {}); }
    void created(const std::string& when) override { rec("created", {when}); }
    void yourHost(const std::string& info) override { rec("yourHost", {info}); }
    void myInfo(const std::string& a, const std::string& b, const std::string& c, const std::string& d) override {
        rec("myInfo", {a, b, c, d});
    }
    void luserClient(const std::string& info) override { rec("luserClient", {info}); }
    void bounce(const std::string& info) override { rec("bounce", {info}); }
    void isupport(const std::vector<std::string>& options) override {
        std::string all;
        for (const auto& o : options) all += (all.empty() ? "" : " ") + o;
        rec("isupport", {all});
    }
    void luserChannels(int n) override { rec("luserChannels", {std::to_string(n)}); }
    void luserOp(int n) override { rec("luserOp", {std::to_string(n)}); }
    void luserMe(const std::string& info) override { rec("luserMe", {info}); }
    void receivedMOTD(const std::vector<std::string>& lines) override {
        std::string all;
        for (const auto& l : lines) all += "[" + l + "]";
        rec("receivedMOTD", {all});
    }
    std::size_t lastNamesCount = 0;
    void receivedNames(const std::string& channel, const std::vector<std::string>& nicks) override {
        lastNamesCount = nicks.size();
        std::string all;
        for (const auto& n : nicks) all += (all.empty() ? "" : " ") + n;
        rec("receivedNames", {channel, all});
    }
    void joined(const std::string& channel) override { rec("joined", {channel}); }
    void left(const std::string& channel) override { rec("left", {channel}); }
    void kickedFrom(const std::string& c, const std::string& k, const std::string& m) override {
        rec("kickedFrom", {c, k, m});
    }
    void nickChanged(const std::string& nick) override {
        IRCClient::nickChanged(nick);
        rec("nickChanged", {nick});
    }
    void pong(const std::string& user, double secs) override { rec("pong", {user, std::to_string(secs)}); }
    void privmsg(const std::string& u, const std::string& c, const std::string& m) override { rec("privmsg", {u, c, m}); }
    void noticed(const std::string& u, const std::string& c, const std::string& m) override { rec("noticed", {u, c, m}); }
    void action(const std::string& u, const std::string& c, const std::optional<std::string>& d) override {
        rec("action", {u, c, q(d)});
    }
    void userJoined(const std::string& u, const std::string& c) override { rec("userJoined", {u, c}); }
    void userLeft(const std::string& u, const std::string& c) override { rec("userLeft", {u, c}); }
    void userQuit(const std::string& u, const std::string& m) override { rec("userQuit", {u, m}); }
    void userKicked(const std::string& e, const std::string& c, const std::string& k, const std::string& m) override {
        rec("userKicked", {e, c, k, m});
    }
    void topicUpdated(const std::string& u, const std::string& c, const std::string& t) override {
        rec("topicUpdated", {u, c, t});
    }
    void userRenamed(const std::string& o, const std::string& n) override { rec("userRenamed", {o, n}); }
    void modeChanged(const std::string& u, const std::string& c, bool set, const std::string& modes,
                     const std::vector<std::optional<std::string>>& args) override {
        std::string all;
        for (const auto& a : args) all += (all.empty() ? "" : " ") + q(a);
        rec("modeChanged", {u, c, set ? "True" : "False", modes, all});
    }
    void irc_unknown(const std::string& prefix, const std::string& command,
                     const std::vector<std::string>& params) override {
        std::string all;
        for (const auto& p : params) all += (all.empty() ? "" : " ") + p;
        rec("irc_unknown", {prefix, command, all});
    }
};

/// A Recorder connected to a StringTransport, output cleared.
struct Connected {
    Clock clock;
    StringTransport t;
    Recorder p{&clock};
    explicit Connected(const std::string& nick = "me") {
        p.nickname = nick;
        p.heartbeatInterval = 0;
        p.makeConnection(&t);
        t.clear();
    }
    ~Connected() { p.connectionLost(Failure(error::ConnectionDone())); }
    void line(std::string_view s) { p.lineReceived(s); }
    std::string out() {
        std::string v = t.value();
        t.clear();
        return v;
    }
};

/// Splits wire output into lines (without CRLF).
std::vector<std::string> lines(const std::string& wire) {
    std::vector<std::string> out;
    std::size_t pos = 0;
    while (pos < wire.size()) {
        std::size_t end = wire.find("\r\n", pos);
        if (end == std::string::npos) end = wire.size();
        out.push_back(wire.substr(pos, end - pos));
        pos = end + 2;
    }
    return out;
}

}  // namespace

TEST_SUITE("irc") {

TEST_CASE("the seed's bot greets who joins") {
    Bot p;
    p.nickname = "bot";
    StringTransport t;
    p.makeConnection(&t);
    CHECK(t.value() == "CAP LS 302\r\nNICK bot\r\nUSER bot foo bar :bot\r\n");  // IRCv3 first (see capNegotiation)
    t.clear();
    p.lineReceived(":bob!b@host JOIN #foo");
    CHECK(t.value() == "PRIVMSG #foo :Hello bob\r\n");
}

TEST_CASE("parsemsg: prefix, command, middle and trailing params") {
    Message m = parsemsg(":nick!u@h PRIVMSG #chan :hello  there :x");
    REQUIRE(m.ok());
    CHECK(m.prefix == "nick!u@h");
    CHECK(m.command == "PRIVMSG");
    CHECK(m.params == std::vector<std::string>{"#chan", "hello  there :x"});

    m = parsemsg("PING  srv1   srv2");
    CHECK(m.prefix.empty());
    CHECK(m.command == "PING");
    CHECK(m.params == std::vector<std::string>{"srv1", "srv2"});

    m = parsemsg(":srv 001 me :");
    CHECK(m.params == std::vector<std::string>{"me", ""});
}

TEST_CASE("parsemsg: IRCv3 tags, unescaped") {
    Message m = parsemsg("@time=2024-01-01T00:00:00Z;msgid=a\\sb\\:c\\\\d\\r\\n\\x;flag :n!u@h PRIVMSG #c :hi");
    REQUIRE(m.ok());
    REQUIRE(m.tags.size() == 3);
    CHECK(*m.tag("time") == "2024-01-01T00:00:00Z");
    CHECK(*m.tag("msgid") == "a b;c\\d\r\nx");
    CHECK(*m.tag("flag") == "");
    CHECK(m.tag("nope") == nullptr);
    CHECK(m.prefix == "n!u@h");
    CHECK(m.command == "PRIVMSG");
    CHECK(parsemsg("@a=b\\ CMD").tags[0].second == "b");  // trailing lone backslash dropped
}

TEST_CASE("parsemsg: malformed input is an error value") {
    CHECK(parsemsg("").error == "Empty line.");
    CHECK(parsemsg(":onlyprefix").error == "Prefix without command.");
    CHECK(parsemsg(": CMD").error == "Empty prefix.");
    CHECK(parsemsg("@tags").error == "Tags without command.");
    CHECK(parsemsg("@ CMD").error == "Empty tag section.");
    CHECK(parsemsg(":p  ").error == "Missing command.");
    CHECK(parsemsg(" :trailing only").error == "Missing command.");
    CHECK(parsemsg(":p :x").error == "Missing command.");
    CHECK_FALSE(parsemsg("   "));
}

TEST_CASE("lowQuote and lowDequote") {
    CHECK(lowQuote(std::string("a\x10" "b\0c\nd\re", 9)) == "a\x10\x10" "b\x10" "0c\x10nd\x10re");
    CHECK(lowDequote(lowQuote(std::string("x\0\n\r\x10y", 6))) == std::string("x\0\n\r\x10y", 6));
    CHECK(lowDequote("\x10z") == "z");
}

TEST_CASE("ctcpQuote, ctcpDequote, ctcpExtract, ctcpStringify") {
    CHECK(ctcpQuote("a\\b\x01" "c") == "a\\\\b\\ac");
    CHECK(ctcpDequote("a\\\\b\\ac\\z") == "a\\b\x01" "cz");
    CtcpExtracted e = ctcpExtract("hi \x01PING 123\x01 there \x01VERSION\x01");
    REQUIRE(e.extended.size() == 2);
    CHECK(e.extended[0] == CtcpMessage{"PING", std::string("123")});
    CHECK(e.extended[1] == CtcpMessage{"VERSION", std::nullopt});
    CHECK(e.normal == std::vector<std::string>{"hi ", " there "});
    e = ctcpExtract("\x01" "ACTION waves");  // unterminated: still extended
    REQUIRE(e.extended.size() == 1);
    CHECK(e.extended[0] == CtcpMessage{"ACTION", std::string("waves")});
    CHECK(ctcpStringify({{"PING", std::string("1")}, {"VERSION", std::nullopt}, {"X", std::string()}}) ==
          "\x01PING 1\x01\x01VERSION\x01\x01X\x01");
    CHECK(ctcpStringify({{"ACTION", std::string("a\x01z")}}) == "\x01" "ACTION a\\az\x01");
}

TEST_CASE("split: spaces preferred, empty lines dropped, UTF-8 kept whole") {
    CHECK(split("") == std::vector<std::string>{});
    CHECK(split("hello world foo", 11) == std::vector<std::string>{"hello world", "foo"});
    CHECK(split("a\n\nb\r\nc  ", 80) == std::vector<std::string>{"a", "b", "c"});
    CHECK(split("abcdefghij", 4) == std::vector<std::string>{"abcd", "efgh", "ij"});
    // "é" is 2 bytes, "€" 3: never cut inside one.
    std::string text;
    for (int i = 0; i < 10; ++i) text += "\xc3\xa9\xe2\x82\xac";  // 50 bytes, no spaces
    for (std::size_t width = 4; width < 12; ++width) {
        std::string joined;
        for (const auto& chunk : split(text, width)) {
            CHECK(chunk.size() <= width);
            CHECK((static_cast<unsigned char>(chunk[0]) & 0xC0) != 0x80);  // starts on a character
            joined += chunk;
        }
        CHECK(joined == text);
    }
}

TEST_CASE("parseModes: Twisted's results and errors") {
    ParsedModes p = parseModes("+ob-l", {"alice", "*!*@bad"}, {"ovhblk", "ovhb"});
    REQUIRE(p.ok());
    CHECK(p.added == std::vector<ModeChange>{{'o', std::string("alice")}, {'b', std::string("*!*@bad")}});
    CHECK(p.removed == std::vector<ModeChange>{{'l', std::nullopt}});
    CHECK(parseModes("", {}).error == "Empty mode string");
    CHECK(parseModes("o", {}).error.rfind("Malformed modes string", 0) == 0);
    CHECK(parseModes("+", {}).error.rfind("Empty mode sequence", 0) == 0);
    CHECK(parseModes("++k", {}, {"k", ""}).error.rfind("Empty mode sequence", 0) == 0);
    CHECK(parseModes("+k", {}, {"k", ""}).error == "Not enough parameters: k");
    CHECK(parseModes("+n", {"x"}).error.rfind("Too many parameters", 0) == 0);
}

TEST_CASE("ServerSupportedFeatures: defaults and parse") {
    test::LogCapture log;
    ServerSupportedFeatures s;
    CHECK(s.nickLen() == 9);
    CHECK(s.channelLen() == 200);
    CHECK(s.chanTypes() == "#&");
    CHECK(s.modes() == 3);
    REQUIRE(s.prefix().size() == 3);
    CHECK(s.prefix()[0].mode == 'o');
    CHECK(s.prefix()[0].symbol == '@');
    CHECK(s.chanModes().setParam == "lk");
    CHECK_FALSE(s.announced("CHANTYPES"));

    s.parse({"NICKLEN=30", "CHANTYPES=#", "PREFIX=(qaov)~&@+", "CHANMODES=beI,k,l,imnst", "NETWORK=Test\\x20Net",
             "EXCEPTS", "FOO=a,b", "-MODES", "CHANNELLEN=bogus", "BAD=\\xZZ"});
    CHECK(s.nickLen() == 30);
    CHECK(s.chanTypes() == "#");
    CHECK(s.announced("CHANTYPES"));
    REQUIRE(s.prefix().size() == 4);
    CHECK(s.prefix()[0].symbol == '~');
    CHECK(s.prefix()[3].priority == 3);
    CHECK(s.chanModes().addressModes == "beI");
    CHECK(s.chanModes().noParam == "imnst");
    CHECK(s.network() == "Test Net");
    CHECK(s.hasFeature("EXCEPTS"));
    CHECK(s.getFeature("FOO") == std::vector<std::string>{"a", "b"});
    CHECK_FALSE(s.hasFeature("MODES"));
    CHECK(s.modes() == std::nullopt);
    CHECK(s.channelLen() == 200);  // malformed: the old value stays
    CHECK_FALSE(s.hasFeature("BAD"));
    s.parse({"PREFIX=(ov", "CHANMODES=a,b,c,d,e"});  // malformed: both keep their old value
    CHECK(s.prefix().size() == 4);
    CHECK(s.chanModes().addressModes == "beI");
}

TEST_CASE("registration: PASS, NICK, USER on connect; signedOn after 001") {
    Clock clock;
    StringTransport t;
    Recorder p(&clock);
    p.nickname = "alice";
    p.password = "secret";
    p.username = "al";
    p.realname = "Alice Liddell";
    p.heartbeatInterval = 0;
    p.capNegotiation = false;  // Twisted's bytes exactly
    p.makeConnection(&t);
    CHECK(t.value() == "PASS secret\r\nNICK alice\r\nUSER al foo bar :Alice Liddell\r\n");
    CHECK_FALSE(p.registered());
    p.lineReceived(":irc.example 001 alice :Welcome to IRC alice!al@host");
    CHECK(p.registered());
    CHECK(p.hostname == "irc.example");
    CHECK(p.last() == "signedOn()");

    Recorder quiet;
    quiet.performLogin = false;
    StringTransport t2;
    quiet.makeConnection(&t2);
    CHECK(t2.value().empty());
}

TEST_CASE("server information callbacks") {
    Connected c;
    c.line(":srv 002 me :Your host is srv");
    CHECK(c.p.last() == "yourHost(Your host is srv)");
    c.line(":srv 003 me :This server was created today");
    CHECK(c.p.last() == "created(This server was created today)");
    c.line(":srv 004 me srv ngircd-26 abc defg");
    CHECK(c.p.last() == "myInfo(srv, ngircd-26, abc, defg)");
    c.line(":srv 004 me :srv v1 iw");
    CHECK(c.p.last() == "myInfo(srv, v1, iw, )");
    c.line(":srv 005 me NICKLEN=20 CHANTYPES=#& :are supported by this server");
    CHECK(c.p.last() == "isupport(NICKLEN=20 CHANTYPES=#&)");
    CHECK(c.p.supported.nickLen() == 20);
    c.line(":srv 010 me :other.server 6667");
    CHECK(c.p.last() == "bounce(other.server 6667)");
    c.line(":srv 251 me :There are 3 users");
    CHECK(c.p.last() == "luserClient(There are 3 users)");
    c.line(":srv 252 me 2 :operators online");
    CHECK(c.p.last() == "luserOp(2)");
    c.line(":srv 254 me 7 :channels formed");
    CHECK(c.p.last() == "luserChannels(7)");
    std::size_t before = c.p.calls.size();
    c.line(":srv 254 me lots :channels formed");  // not a number: ignored
    CHECK(c.p.calls.size() == before);
    c.line(":srv 255 me :I have 3 clients");
    CHECK(c.p.last() == "luserMe(I have 3 clients)");
    c.line(":srv 375 me :- srv Message of the day -");
    c.line(":srv 372 me :- line one");
    c.line(":srv 372 me :line two");
    CHECK(c.p.motd->size() == 3);
    c.line(":srv 376 me :End of MOTD");
    CHECK(c.p.last() == "receivedMOTD([srv Message of the day -][line one][line two])");
    CHECK_FALSE(c.p.motd.has_value());
    c.line(":srv 353 me = #c :@alice +bob");
    c.line(":srv 353 me = #c :carol");
    c.line(":srv 366 me #c :End of NAMES list");
    CHECK(c.p.last() == "receivedNames(#c, @alice +bob carol)");
    c.line(":srv 999 me odd :thing");
    CHECK(c.p.last() == "irc_unknown(srv, 999, me odd thing)");
    c.line(":srv 311 me bob b host * :Bob");
    CHECK(c.p.last() == "irc_unknown(srv, RPL_WHOISUSER, me bob b host * Bob)");
    CHECK(c.out().empty());
}

TEST_CASE("channel and user events") {
    Connected c;
    c.line(":me!u@h JOIN #c");
    CHECK(c.p.last() == "joined(#c)");
    c.line(":bob!b@h JOIN :#c");
    CHECK(c.p.last() == "userJoined(bob, #c)");
    c.line(":bob!b@h PART #c :bye");
    CHECK(c.p.last() == "userLeft(bob, #c)");
    c.line(":ME!u@h PART #c");  // nicks compare under CASEMAPPING
    CHECK(c.p.last() == "left(#c)");
    c.line(":bob!b@h QUIT :gone");
    CHECK(c.p.last() == "userQuit(bob, gone)");
    c.line(":op!o@h KICK #c bob :spam");
    CHECK(c.p.last() == "userKicked(bob, #c, op, spam)");
    c.line(":op!o@h KICK #c Me :out");
    CHECK(c.p.last() == "kickedFrom(#c, op, out)");
    c.line(":bob!b@h TOPIC #c :new topic");
    CHECK(c.p.last() == "topicUpdated(bob, #c, new topic)");
    c.line(":srv 332 me #c :the topic");
    CHECK(c.p.last() == "topicUpdated(srv, #c, the topic)");
    c.line(":srv 331 me #c :No topic is set");
    CHECK(c.p.last() == "topicUpdated(srv, #c, )");
    c.line(":bob!b@h NICK robert");
    CHECK(c.p.last() == "userRenamed(bob, robert)");
    c.line(":me!u@h NICK :me2");
    CHECK(c.p.last() == "nickChanged(me2)");
    CHECK(c.p.nickname == "me2");
    CHECK(c.out().empty());
}

TEST_CASE("messages, notices, actions") {
    Connected c;
    c.line(":bob!b@h PRIVMSG #c :hello there");
    CHECK(c.p.last() == "privmsg(bob!b@h, #c, hello there)");
    c.line(":bob!b@h PRIVMSG me :psst");
    CHECK(c.p.last() == "privmsg(bob!b@h, me, psst)");
    c.line(":bob!b@h NOTICE me :note");
    CHECK(c.p.last() == "noticed(bob!b@h, me, note)");
    c.line(":bob!b@h PRIVMSG #c :\x01" "ACTION waves\x01");
    CHECK(c.p.last() == "action(bob!b@h, #c, waves)");
    c.line(":bob!b@h PRIVMSG #c :hi \x01PING 1\x01");  // does not start with \x01: plain text
    CHECK(c.p.last() == "privmsg(bob!b@h, #c, hi \x01PING 1\x01)");
    std::size_t before = c.p.calls.size();
    c.line(":bob!b@h PRIVMSG #c :");  // empty: ignored
    CHECK(c.p.calls.size() == before);
    CHECK(c.p.isChannel("#c"));
    CHECK_FALSE(c.p.isChannel("me"));
    c.line(":srv 005 me CHANTYPES=# STATUSMSG=@+ :are supported");
    CHECK(c.p.isChannel("@#c"));
    CHECK_FALSE(c.p.isChannel("&c"));
    CHECK(c.out().empty());
}

TEST_CASE("MODE: parsed with ISUPPORT's parameter modes") {
    test::LogCapture log;
    Connected c;
    c.line(":op!o@h MODE #c +o-v+l alice bob 10");
    REQUIRE(c.p.calls.size() == 2);
    CHECK(c.p.calls[0] == "modeChanged(op!o@h, #c, True, ol, alice 10)");
    CHECK(c.p.calls[1] == "modeChanged(op!o@h, #c, False, v, bob)");
    c.line(":me MODE me :+iw");
    CHECK(c.p.last() == "modeChanged(me, me, True, iw, None None)");
    c.line(":op!o@h MODE #c n");  // no sign: '+' is assumed
    CHECK(c.p.last() == "modeChanged(op!o@h, #c, True, n, None)");
    std::size_t before = c.p.calls.size();
    c.line(":op!o@h MODE #c +o");  // missing parameter: logged, no callback
    CHECK(c.p.calls.size() == before);
    c.line(":srv 005 me PREFIX=(qo)~@ CHANMODES=b,k,l,n :ok");
    c.line(":op!o@h MODE #c +qk owner key");
    CHECK(c.p.last() == "modeChanged(op!o@h, #c, True, qk, owner key)");
}

TEST_CASE("PING is answered with PONG at once") {
    Connected c;
    c.line("PING :irc.example.net");
    CHECK(c.out() == "PONG irc.example.net\r\n");
    c.line("PING a b");
    CHECK(c.out() == "PONG b\r\n");
    c.line("PING :two words");
    CHECK(c.out() == "PONG :two words\r\n");
}

TEST_CASE("commands write Twisted's exact bytes") {
    Connected c;
    auto sent = [&](bool ok) {
        CHECK(ok);
        return c.out();
    };
    CHECK(sent(c.p.join("chan")) == "JOIN #chan\r\n");
    CHECK(sent(c.p.join("#c", "key")) == "JOIN #c key\r\n");
    CHECK(sent(c.p.join("&local")) == "JOIN &local\r\n");
    CHECK(sent(c.p.leave("chan")) == "PART #chan\r\n");
    CHECK(sent(c.p.leave("#c", "bye now")) == "PART #c :bye now\r\n");
    CHECK(sent(c.p.part("#c")) == "PART #c\r\n");
    CHECK(sent(c.p.kick("chan", "bob")) == "KICK #chan bob\r\n");
    CHECK(sent(c.p.kick("#c", "bob", "spam")) == "KICK #c bob :spam\r\n");
    CHECK(sent(c.p.invite("bob", "chan")) == "INVITE bob #chan\r\n");
    CHECK(sent(c.p.topic("chan")) == "TOPIC #chan\r\n");
    CHECK(sent(c.p.topic("#c", std::string("t"))) == "TOPIC #c :t\r\n");
    CHECK(sent(c.p.topic("#c", std::string())) == "TOPIC #c :\r\n");
    CHECK(sent(c.p.mode("#c", true, "o", std::nullopt, std::string("bob"))) == "MODE #c +o bob\r\n");
    CHECK(sent(c.p.mode("#c", false, "l")) == "MODE #c -l\r\n");
    CHECK(sent(c.p.mode("#c", true, "l", 10)) == "MODE #c +l 10\r\n");
    CHECK(sent(c.p.mode("#c", true, "b", std::nullopt, std::nullopt, std::string("*!*@bad"))) == "MODE #c +b *!*@bad\r\n");
    CHECK(sent(c.p.say("chan", "hello")) == "PRIVMSG #chan :hello\r\n");
    CHECK(sent(c.p.msg("bob", "hi")) == "PRIVMSG bob :hi\r\n");
    CHECK(sent(c.p.notice("bob", "note")) == "NOTICE bob :note\r\n");
    CHECK(sent(c.p.describe("#c", "waves")) == "PRIVMSG #c :\x01" "ACTION waves\x01\r\n");
    CHECK(sent(c.p.away("brb")) == "AWAY :brb\r\n");
    CHECK(sent(c.p.back()) == "AWAY :\r\n");
    CHECK(sent(c.p.whois("bob")) == "WHOIS bob\r\n");
    CHECK(sent(c.p.whois("bob", "srv")) == "WHOIS srv bob\r\n");
    CHECK(sent(c.p.setNick("n")) == "NICK n\r\n");
    CHECK(c.p.attemptedNick() == "n");
    CHECK(sent(c.p.quit("bye")) == "QUIT :bye\r\n");
    CHECK(sent(c.p.quit()) == "QUIT :\r\n");
    CHECK(sent(c.p.names("#c")) == "NAMES #c\r\n");
    CHECK(sent(c.p.ping("bob", "k1")) == "PRIVMSG bob :\x01PING k1\x01\r\n");
    CHECK(sent(c.p.ctcpMakeQuery("bob", {{"VERSION", std::nullopt}})) == "PRIVMSG bob :\x01VERSION\x01\r\n");
    CHECK(sent(c.p.ctcpMakeReply("bob", {{"PING", std::string("1")}})) == "NOTICE bob :\x01PING 1\x01\r\n");
    std::string key = sent(c.p.ping("bob"));
    CHECK(key.size() == std::string("PRIVMSG bob :\x01PING 123456789012\x01\r\n").size());
    CHECK(sent(c.p.msg("bob", "")) == "");  // nothing to say: nothing sent
    c.p.password.clear();
    c.p.username.clear();
    CHECK(sent(c.p.register_("nn", "h", "s")) == "NICK nn\r\nUSER nn h s :nn\r\n");
}

TEST_CASE("msg: multi-line text becomes one PRIVMSG per line") {
    Connected c;
    CHECK(c.p.msg("#c", "one\ntwo\r\nthree\rfour\n\n"));
    CHECK(c.out() == "PRIVMSG #c :one\r\nPRIVMSG #c :two\r\nPRIVMSG #c :three\r\nPRIVMSG #c :four\r\n");
    CHECK(c.p.msg("#c", "hi\r\nQUIT :pwned"));  // Twisted's example: two harmless PRIVMSGs
    CHECK(c.out() == "PRIVMSG #c :hi\r\nPRIVMSG #c :QUIT :pwned\r\n");
}

TEST_CASE("msg: every relayed line fits 512 bytes, UTF-8 never cut") {
    Connected c("somebot");
    const std::string worstPrefix = ":" + std::string(9, 'n') + "!" + std::string(11, 'u') + "@" + std::string(63, 'h') + " ";
    std::string text;
    for (int i = 0; i < 300; ++i) text += "\xe2\x82\xac";  // 900 bytes of "€", no spaces
    text += " tail words here";
    REQUIRE(c.p.msg("#chan", text));
    auto sentLines = lines(c.out());
    REQUIRE(sentLines.size() >= 2);
    std::string rebuilt;
    for (const auto& l : sentLines) {
        CHECK(l.rfind("PRIVMSG #chan :", 0) == 0);
        CHECK(worstPrefix.size() + l.size() + 2 <= 512);
        std::string body = l.substr(15);
        CHECK((static_cast<unsigned char>(body[0]) & 0xC0) != 0x80);
        CHECK((static_cast<unsigned char>(body.back()) & 0xC0) != 0xC0);  // no dangling lead byte
        rebuilt += body;
    }
    std::string expected = text;
    expected.erase(std::remove(expected.begin(), expected.end(), ' '), expected.end());
    rebuilt.erase(std::remove(rebuilt.begin(), rebuilt.end(), ' '), rebuilt.end());
    CHECK(rebuilt == expected);
    // Exactly at the limit: the longest text that fits is one line, one byte more is two.
    std::size_t max = c.p.maxMessageLength("PRIVMSG", "#chan");
    CHECK(worstPrefix.size() + std::string("PRIVMSG #chan :").size() + max + 2 == 512);
    c.p.msg("#chan", std::string(max, 'x'));
    CHECK(lines(c.out()).size() == 1);
    c.p.msg("#chan", std::string(max + 1, 'x'));
    CHECK(lines(c.out()).size() == 2);
    // After our own JOIN echo the real prefix is known and lines get longer.
    c.line(":somebot!~sb@1.2.3.4 JOIN #chan");
    std::size_t exact = c.p.maxMessageLength("PRIVMSG", "#chan");
    CHECK(exact == 512 - std::string(":somebot!~sb@1.2.3.4 PRIVMSG #chan :\r\n").size());
    // A bigger NICKLEN from ISUPPORT shrinks the worst-case budget.
    Connected d("x");
    std::size_t before = d.p.maxMessageLength("PRIVMSG", "#c");
    d.line(":srv 005 x NICKLEN=30 :ok");
    CHECK(d.p.maxMessageLength("PRIVMSG", "#c") == before - 21);
}

TEST_CASE("msg with Twisted's explicit length") {
    Connected c;
    // fmt "PRIVMSG bob :" (13) + 2: 20 leaves 5 bytes of text per line.
    CHECK(c.p.msg("bob", "abc defgh ij", 20));
    CHECK(c.out() == "PRIVMSG bob :abc\r\nPRIVMSG bob :defgh\r\nPRIVMSG bob :ij\r\n");
    test::LogCapture log;
    CHECK_FALSE(c.p.msg("bob", "x", 15));
    CHECK(log.contains("Maximum length must exceed 15"));
    CHECK(c.out().empty());
}

TEST_CASE("injection: CR, LF and NUL in arguments are refused, nothing sent") {
    Connected c;
    test::LogCapture log;
    CHECK_FALSE(c.p.join("#c\r\nQUIT"));
    CHECK_FALSE(c.p.join("#c", "k\nQUIT"));
    CHECK_FALSE(c.p.leave("#c", "bye\r\nQUIT"));
    CHECK_FALSE(c.p.kick("#c", "bob\n", "x"));
    CHECK_FALSE(c.p.invite("bob", "#c\r"));
    CHECK_FALSE(c.p.topic("#c", std::string("a\r\nQUIT :x")));
    CHECK_FALSE(c.p.mode("#c", true, "o", std::nullopt, std::string("bob\nQUIT")));
    CHECK_FALSE(c.p.say("#c\n", "hi"));
    CHECK_FALSE(c.p.msg("bob\r\nQUIT", "hi"));
    CHECK_FALSE(c.p.msg("bob", std::string("a\0b", 3)));
    CHECK_FALSE(c.p.notice("bob\n", "hi"));
    CHECK_FALSE(c.p.describe("#c", "waves\r\nQUIT"));
    CHECK_FALSE(c.p.away("x\ny"));
    CHECK_FALSE(c.p.whois("bob\r\n"));
    CHECK_FALSE(c.p.setNick("n\r\nQUIT"));
    CHECK_FALSE(c.p.quit("bye\r\nJOIN #x"));
    CHECK_FALSE(c.p.ping("bob", "k\n"));
    CHECK_FALSE(c.p.names("#c\n"));
    CHECK_FALSE(c.p.ctcpMakeReply("bob", {{"PING", std::string("a\rb")}}));
    CHECK_FALSE(c.p.sendLine("PRIVMSG #c :x\r\nQUIT"));
    CHECK_FALSE(c.p.sendLine(std::string("NICK a\0b", 8)));
    c.p.realname = "evil\r\nQUIT";
    CHECK_FALSE(c.p.register_("n"));
    CHECK(c.out().empty());
    CHECK(log.contains("CR, LF or NUL"));
    CHECK(c.p.attemptedNick() == "me");  // the refused setNick changed nothing
}

TEST_CASE("nick collision: 433 retries with an altered nick; 432 falls back") {
    Clock clock;
    StringTransport t;
    Recorder p(&clock);
    p.nickname = "bot";
    p.heartbeatInterval = 0;
    p.makeConnection(&t);
    t.clear();
    p.lineReceived(":srv 433 * bot :Nickname is already in use");
    CHECK(t.value() == "NICK bot_\r\n");
    t.clear();
    p.lineReceived(":srv 433 * bot_ :Nickname is already in use");
    CHECK(t.value() == "NICK bot__\r\n");
    CHECK(p.nickname == "bot");  // unchanged until 001
    p.lineReceived(":srv 001 bot__ :Welcome");
    CHECK(p.nickname == "bot__");

    // Before 005 the default NICKLEN (9) is only a guess: append, as Twisted.
    CHECK(p.alterCollidedNick("reactorbot") == "reactorbot_");
    // Once the server announced NICKLEN, the last character cycles at the
    // limit instead of growing forever.
    p.lineReceived(":srv 005 bot__ NICKLEN=9 :are supported by this server");
    CHECK(p.alterCollidedNick("abcdefghi") == "abcdefgh0");
    CHECK(p.alterCollidedNick("abcdefgh0") == "abcdefgh1");
    CHECK(p.alterCollidedNick("abcdefgh9") == "abcdefgh_");

    Recorder q;
    StringTransport t2;
    q.makeConnection(&t2);
    t2.clear();
    q.lineReceived(":srv 432 * b@d :Erroneous Nickname");
    CHECK(t2.value() == "NICK defaultnick\r\n");
    t2.clear();
    q.lineReceived(":srv 001 defaultnick :Welcome");
    q.lineReceived(":srv 432 defaultnick x :Erroneous Nickname");  // registered: no fallback
    CHECK(t2.value().empty());
}

TEST_CASE("CTCP queries are answered, once per tag") {
    Connected c;
    c.p.versionName = "reactorbot";
    c.p.versionNum = "1.0";
    c.p.versionEnv = "C++";
    c.line(":bob!b@h PRIVMSG me :\x01VERSION\x01");
    CHECK(c.out() == "NOTICE bob :\x01VERSION reactorbot:1.0:C++\x01\r\n");
    c.line(":bob!b@h PRIVMSG me :\x01PING 12345\x01");
    CHECK(c.out() == "NOTICE bob :\x01PING 12345\x01\r\n");
    c.line(":bob!b@h PRIVMSG me :\x01PING 1\x01\x01PING 2\x01\x01PING 3\x01");  // a flood: one reply
    CHECK(c.out() == "NOTICE bob :\x01PING 1\x01\r\n");
    c.line(":bob!b@h PRIVMSG me :\x01" "CLIENTINFO\x01");
    CHECK(c.out() == "NOTICE bob :\x01" "CLIENTINFO ACTION CLIENTINFO DCC ERRMSG FINGER PING SOURCE TIME USERINFO VERSION\x01\r\n");
    c.line(":bob!b@h PRIVMSG me :\x01" "CLIENTINFO PING\x01");
    CHECK(c.out() == "NOTICE bob :\x01" "CLIENTINFO PING data: echoes data\x01\r\n");
    c.line(":bob!b@h PRIVMSG me :\x01" "CLIENTINFO BOGUS\x01");
    CHECK(c.out() == "NOTICE bob :\x01" "ERRMSG CLIENTINFO BOGUS :Unknown query 'BOGUS'\x01\r\n");
    c.line(":bob!b@h PRIVMSG me :\x01" "ERRMSG oops\x01");
    CHECK(c.out() == "NOTICE bob :\x01" "ERRMSG oops :No error has occurred.\x01\r\n");
    c.line(":bob!b@h PRIVMSG me :\x01SOURCE\x01");
    CHECK(c.out() == "NOTICE bob :\x01SOURCE https://example.invalid/reactor.hpp\x01\x01SOURCE\x01\r\n");
    c.line(":bob!b@h PRIVMSG me :\x01TIME\x01");
    std::string time = c.out();
    CHECK(time.rfind("NOTICE bob :\x01TIME :", 0) == 0);
    CHECK(time.size() == std::string("NOTICE bob :\x01TIME :Sun Sep 16 01:03:52 1973\x01\r\n").size());
    c.line(":bob!b@h PRIVMSG me :\x01USERINFO\x01");  // no userinfo: no reply
    c.line(":bob!b@h PRIVMSG me :\x01" "FINGER\x01");
    CHECK(c.out().empty());
    c.p.userinfo = "just a bot";
    c.line(":bob!b@h PRIVMSG me :\x01USERINFO\x01");
    CHECK(c.out() == "NOTICE bob :\x01USERINFO just a bot\x01\r\n");
    test::LogCapture log;
    c.line(":bob!b@h PRIVMSG me :\x01WHATEVER\x01");  // unknown: never answered
    CHECK(c.out().empty());
    CHECK(log.contains("unknown CTCP query"));
    c.line(":bob!b@h PRIVMSG #c :\x01" "ACTION dances\x01 and \x01" "ACTION sings\x01");
    CHECK(c.p.calls[c.p.calls.size() - 2] == "action(bob!b@h, #c, dances)");  // once per tag
    CHECK(c.p.last() == "privmsg(bob!b@h, #c,  and )");
    c.p.versionName.clear();
    c.line(":bob!b@h PRIVMSG me :\x01VERSION\x01");
    CHECK(c.out().empty());
}

TEST_CASE("CTCP PING round trip calls pong with the elapsed time") {
    Connected c;
    c.p.ping("bob", "key1");
    c.out();
    c.clock.advance(2.5);
    c.line(":bob!b@h NOTICE me :\x01PING key1\x01");
    CHECK(c.p.last() == "pong(bob!b@h, 2.500000)");
    test::LogCapture log;
    c.line(":bob!b@h NOTICE me :\x01PING key1\x01");  // answered already
    CHECK(log.contains("Bogus PING response"));
    c.line(":bob!b@h NOTICE me :\x01VERSION x\x01");
    CHECK(log.contains("unknown CTCP reply"));
}

TEST_CASE("a hostile server cannot grow MOTD, NAMES or ISUPPORT without bound") {
    test::LogCapture log;
    Connected c;
    SUBCASE("MOTD: maxMOTDLines kept, the rest dropped with one log line") {
        c.p.maxMOTDLines = 3;
        c.line(":srv 375 me :- srv Message of the day -");
        for (int i = 0; i < 50; ++i) c.line(":srv 372 me :- line " + std::to_string(i));
        CHECK(c.p.motd->size() == 3);
        c.line(":srv 376 me :End of MOTD");
        CHECK(c.p.last() == "receivedMOTD([srv Message of the day -][line 0][line 1])");
        CHECK(log.lines.size() == 1);
        CHECK(log.contains("MOTD longer than maxMOTDLines (3)"));
        // The next MOTD starts afresh, and warns again if it overflows.
        c.line(":srv 375 me :- again -");
        c.line(":srv 372 me :- one");
        c.line(":srv 376 me :End of MOTD");
        CHECK(c.p.last() == "receivedMOTD([again -][one])");
        CHECK(log.lines.size() == 1);
    }
    SUBCASE("NAMES: maxPendingNames over all channels; the oldest channel makes room") {
        c.p.maxPendingNames = 6;
        c.line(":srv 353 me = #a :n1 n2 n3");  // #a + 3 names = 4 held
        c.line(":srv 353 me = #b :m1 m2 m3");  // #b + m1 = 6; m2 needs room: #a (oldest) goes
        c.line(":srv 353 me = #c :x1");        // #b + 3 + #c + x1 = 6
        CHECK(log.lines.size() == 1);
        CHECK(log.contains("the oldest channel's are dropped"));
        c.line(":srv 366 me #b :End of NAMES list");
        CHECK(c.p.last() == "receivedNames(#b, m1 m2 m3)");
        c.line(":srv 366 me #a :End of NAMES list");
        CHECK(c.p.last() == "receivedNames(#a, )");
        c.line(":srv 366 me #c :End of NAMES list");
        CHECK(c.p.last() == "receivedNames(#c, x1)");
        // One channel bigger than the cap keeps what fits.
        c.line(":srv 353 me = #huge :h1 h2 h3 h4 h5 h6 h7");
        c.line(":srv 366 me #huge :End of NAMES list");
        CHECK(c.p.last() == "receivedNames(#huge, h1 h2 h3 h4 h5)");
        CHECK(log.lines.size() == 1);  // once per connection
    }
    SUBCASE("NAMES: a plain NAMES (one 366 *) does not starve later replies") {
        std::string forty;
        for (int i = 0; i < 40; ++i) forty += " n" + std::to_string(i);
        for (int ch = 0; ch < 3000; ++ch) c.line(":srv 353 me = #ch" + std::to_string(ch) + " :" + forty.substr(1));
        c.line(":srv 366 me * :End of NAMES list");
        c.line(":srv 353 me = #mine :a b c");
        c.line(":srv 366 me #mine :End of NAMES list");
        CHECK(c.p.last() == "receivedNames(#mine, a b c)");
        c.line(":srv 366 me #ch2999 :End of NAMES list");  // among the newest 1,000: kept
        CHECK(c.p.lastNamesCount == 40);
        c.line(":srv 366 me #ch0 :End of NAMES list");  // the oldest made room
        CHECK(c.p.lastNamesCount == 0);
        // A flood of 150,000 names for one channel stops at the cap.
        std::string many;
        for (int i = 0; i < 50; ++i) many += " n" + std::to_string(i);
        for (int i = 0; i < 3000; ++i) c.line(":srv 353 me = #big :" + many.substr(1));
        c.line(":srv 366 me #big :End of NAMES list");
        CHECK(c.p.lastNamesCount == 99999);  // #big itself is the 100,000th
    }
    SUBCASE("ISUPPORT: at most maxFeatures distinct features") {
        for (int i = 0; i < 30; ++i) {
            std::string tokens;
            for (int j = 0; j < 13; ++j) tokens += " K" + std::to_string(i * 13 + j) + "=1";
            c.line(":srv 005 me" + tokens + " :are supported by this server");
        }
        CHECK(c.p.supported.announced("K0"));
        CHECK_FALSE(c.p.supported.announced("K389"));
        CHECK(log.lines.size() == 1);
        CHECK(log.contains("more than 256 features announced"));
        // Features already known still update.
        c.line(":srv 005 me NICKLEN=30 :are supported by this server");
        CHECK(c.p.supported.nickLen() == 30);
    }
}

TEST_CASE("log lines quote what a peer sent with control bytes escaped") {
    test::LogCapture log;
    Connected c;
    c.line(":evil!e@h PRIVMSG me :\x01VERSION \x1b[2Jgotcha\x01");  // a terminal escape
    c.line(":srv 005 me BAD=\\x1\x1b[31m :are supported by this server");
    CHECK(log.contains("\\x1b[2Jgotcha"));
    CHECK(log.contains("\\x1b[31m"));
    for (const auto& l : log.lines) CHECK(l.find('\x1b') == std::string::npos);
    // C1 controls (CSI is U+009B; raw 0x9B too) and broken UTF-8 are escaped,
    // whole UTF-8 characters are kept; the MODE error quotes its input too.
    c.line(":evil!e@h PRIVMSG me :\x01VERSION a\xC2\x9B" "2J b\x9B c\xC3 caf\xC3\xA9\x01");
    CHECK(log.contains("a\\xc2\\x9b2J b\\x9b c\\xc3 caf\xC3\xA9"));
    c.line(":evil!e@h MODE #chan +\x1b[2J extra");
    CHECK(log.contains("bad MODE message"));
    for (const auto& l : log.lines) {
        CHECK(l.find('\x1b') == std::string::npos);
        CHECK(l.find("\xC2\x9B") == std::string::npos);
    }
}

TEST_CASE("flood control: one line per lineRate seconds on the Clock") {
    Connected c;
    c.p.lineRate = 1.0;
    c.p.msg("#c", "A");
    c.p.msg("#c", "B");
    c.p.msg("#c", "C");
    CHECK(c.out() == "PRIVMSG #c :A\r\n");
    CHECK(c.p.queuedLines() == 2);
    c.clock.advance(0.5);
    CHECK(c.out().empty());
    c.clock.advance(0.5);
    CHECK(c.out() == "PRIVMSG #c :B\r\n");
    c.clock.advance(1.0);
    CHECK(c.out() == "PRIVMSG #c :C\r\n");
    c.clock.advance(1.0);  // the queue drains: the pump stops
    CHECK(c.clock.getDelayedCalls().empty());
    c.p.msg("#c", "D");
    CHECK(c.out() == "PRIVMSG #c :D\r\n");
    c.p.msg("#c", "E");
    c.p.connectionLost(Failure(error::ConnectionDone()));  // pending lines and timers go away
    CHECK(c.clock.getDelayedCalls().empty());
    c.clock.advance(5);
    CHECK(c.out().empty());
}

TEST_CASE("heartbeat: PING the server every heartbeatInterval after 001") {
    Clock clock;
    StringTransport t;
    {
        Recorder p(&clock);
        p.heartbeatInterval = 60;
        p.makeConnection(&t);
        clock.advance(120);
        t.clear();
        CHECK(clock.getDelayedCalls().empty());  // not before 001
        p.lineReceived(":irc.example 001 irc :Welcome");
        clock.advance(59);
        CHECK(t.value().empty());
        clock.advance(1);
        CHECK(t.value() == "PING irc.example\r\n");
        clock.advance(60);
        CHECK(t.value() == "PING irc.example\r\nPING irc.example\r\n");
        p.stopHeartbeat();
        CHECK(clock.getDelayedCalls().empty());
        p.startHeartbeat();
        CHECK(clock.getDelayedCalls().size() == 1);
    }  // destroyed without connectionLost: the timer goes with it
    CHECK(clock.getDelayedCalls().empty());
    Recorder noClock;  // no clock: no heartbeat, no crash
    StringTransport t2;
    noClock.makeConnection(&t2);
    noClock.lineReceived(":srv 001 irc :Welcome");
    CHECK(noClock.registered());
}

TEST_CASE("dataReceived: CRLF, LF and CR all end a line, in any chunking") {
    Connected c;
    std::string wire = ":a!a@h PRIVMSG #c :one\r\n:a!a@h PRIVMSG #c :two\n:a!a@h PRIVMSG #c :three\r:a!a@h PRIVMSG #c :four\r\n";
    for (char ch : wire) c.p.dataReceived(std::string_view(&ch, 1));
    REQUIRE(c.p.calls.size() == 4);
    CHECK(c.p.calls[0] == "privmsg(a!a@h, #c, one)");
    CHECK(c.p.calls[2] == "privmsg(a!a@h, #c, three)");
    CHECK(c.p.calls[3] == "privmsg(a!a@h, #c, four)");
    c.p.calls.clear();
    c.p.dataReceived("@k=v :a!a@h PRIVMSG #c :tagged\r\n");
    CHECK(c.p.last() == "privmsg(a!a@h, #c, tagged)");
}

TEST_CASE("tags are visible to callbacks") {
    struct Tagged : IRCClient {
        std::string seen;
        void privmsg(const std::string&, const std::string&, const std::string&) override {
            for (const auto& t : tags()) seen += t.first + "=" + t.second + ";";
        }
    } p;
    StringTransport t;
    p.makeConnection(&t);
    p.lineReceived("@time=12:00;+draft/x=a\\sb :a!a@h PRIVMSG #c :hi");
    CHECK(p.seen == "time=12:00;+draft/x=a b;");
    CHECK(p.tags().empty());
}

TEST_CASE("malformed, oversized and hostile server lines are logged and ignored") {
    Connected c;
    test::LogCapture log;
    c.line(":onlyprefix");
    CHECK(log.contains("Prefix without command"));
    c.line(std::string(":a!a@h PRIVMSG #c :x\0y", 23));
    CHECK(log.contains("NUL byte"));
    // Too few params: a log line, no callback, no crash.
    for (const char* l : {"PRIVMSG", "PRIVMSG #c", "NOTICE", "JOIN", "PART", "KICK #c", "TOPIC", "NICK", "MODE #c",
                          "PING", ":s 002", ":s 003", ":s 004 me", ":s 010", ":s 251", ":s 252", ":s 254", ":s 255",
                          ":s 332 me #c", ":s 331 me", ":s 353 me", ":s 366 me", ":s 372", ":s 375", ":s 376",
                          ":s 005", ":s 433", ":s 432", ":s 464", "QUIT", ":s 001"})
        c.line(l);
    CHECK(c.p.registered());  // the bare 001 still registered us
    c.out();
    CHECK(c.p.calls.size() >= 1);
    // A line over MAX_LENGTH through dataReceived: dropped, the next line survives.
    c.p.calls.clear();
    c.p.dataReceived(std::string(20000, 'z'));
    c.p.dataReceived(std::string(100, 'z') + "\r\n:a!a@h PRIVMSG #c :after\r\n");
    CHECK(c.p.last() == "privmsg(a!a@h, #c, after)");
    c.p.calls.clear();
    c.p.dataReceived(std::string(20000, 'y') + "\r\n:a!a@h PRIVMSG #c :next\r\n");
    CHECK(c.p.last() == "privmsg(a!a@h, #c, next)");
    CHECK_FALSE(c.t.disconnecting);
    CHECK(log.contains("over"));
}

#if REACTOR_HAS_EXCEPTIONS
TEST_CASE("an exception from a callback is logged; the client carries on") {
    struct Thrower : IRCClient {
        int n = 0;
        void privmsg(const std::string&, const std::string&, const std::string&) override {
            if (++n == 1) throw std::runtime_error("boom");
        }
    } p;
    StringTransport t;
    p.makeConnection(&t);
    test::LogCapture log;
    p.dataReceived(":a!a@h PRIVMSG #c :1\r\n:a!a@h PRIVMSG #c :2\r\n");
    CHECK(p.n == 2);
    CHECK(log.contains("boom"));
}
#endif

}  // TEST_SUITE

// ---- interop against a real server (Debian's ngircd) ------------------------
// The test starts ngircd itself on a free loopback port with a config in a
// temporary directory, and stops it by PID. Without ngircd it says SKIPPED.

#if !defined(_WIN32)  // spawns Debian's ngircd (posix_spawn, kill, waitpid)
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>

extern char** environ;

namespace {

const char* findNgircd() {
    for (const char* path : {"/usr/sbin/ngircd", "/usr/bin/ngircd", "/usr/local/sbin/ngircd"})
        if (::access(path, X_OK) == 0) return path;
    return nullptr;
}

/// A loopback port nobody listens on right now.
std::uint16_t freePort() {
    int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    std::uint16_t port = 0;
    if (::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0 &&
        ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0)
        port = ntohs(a.sin_port);
    ::close(fd);
    return port;
}

bool accepting(std::uint16_t port) {
    int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons(port);
    bool ok = ::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
    ::close(fd);
    return ok;
}

/// ngircd in the foreground (-n), its config and log in a temp directory.
struct Ngircd {
    pid_t pid = -1;
    std::uint16_t port = 0;
    std::string dir;
    bool start(const char* binary, Reactor& r) {
        char tmpl[] = "/tmp/reactor-ngircd-XXXXXX";
        if (!::mkdtemp(tmpl)) return false;
        dir = tmpl;
        port = freePort();
        std::string conf = "[Global]\nName = irc.interop.test\nInfo = reactor.hpp interop test\n"
                           "AdminInfo1 = test\nAdminInfo2 = test\nAdminEMail = test@example.invalid\n"
                           "Listen = 127.0.0.1\nPorts = " + std::to_string(port) + "\nMotdPhrase = hello from ngircd\n"
                           "[Limits]\nMaxConnectionsIP = 0\nMaxPenaltyTime = 0\nPingTimeout = 120\n"
                           "[Options]\nDNS = no\nIdent = no\nPAM = no\n";
        std::FILE* f = std::fopen((dir + "/ngircd.conf").c_str(), "w");
        if (!f) return false;
        std::fputs(conf.c_str(), f);
        std::fclose(f);
        int log = ::open((dir + "/ngircd.log").c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
        std::string confPath = dir + "/ngircd.conf";
        std::vector<char*> argv = {const_cast<char*>(binary), const_cast<char*>("-n"), const_cast<char*>("-f"),
                                   const_cast<char*>(confPath.c_str()), nullptr};
        posix_spawn_file_actions_t actions;
        posix_spawn_file_actions_init(&actions);
        posix_spawn_file_actions_adddup2(&actions, log, STDOUT_FILENO);
        posix_spawn_file_actions_adddup2(&actions, log, STDERR_FILENO);
        int rc = posix_spawn(&pid, binary, &actions, nullptr, argv.data(), environ);
        posix_spawn_file_actions_destroy(&actions);
        ::close(log);
        if (rc != 0) return false;
        return testing::runUntil(r, [&] { return accepting(port); }, 10.0);
    }
    ~Ngircd() {
        if (pid > 0) {
            ::kill(pid, SIGTERM);
            int i = 0;
            while (::waitpid(pid, nullptr, WNOHANG) != pid) {
                if (++i == 200) {  // ~4 s: then SIGKILL
                    ::kill(pid, SIGKILL);
                    ::waitpid(pid, nullptr, 0);
                    break;
                }
                ::poll(nullptr, 0, 20);
            }
        }
        if (!dir.empty()) {
            ::unlink((dir + "/ngircd.conf").c_str());
            ::unlink((dir + "/ngircd.log").c_str());
            ::rmdir(dir.c_str());
        }
    }
};

}  // namespace
#endif  // !_WIN32

namespace {

/// Everything the interop clients saw, by nick.
struct Seen {
    std::vector<std::string> events;
    bool has(const std::string& e) const { return std::find(events.begin(), events.end(), e) != events.end(); }
};

struct Person : IRCClient {
    Seen& seen;
    Person** self;
    Person(IReactorTime* time, Seen& s, Person** slot) : IRCClient(time), seen(s), self(slot) { *self = this; }
    /// On a Reactor: QUIT when it stops (IRCClient's Reactor* constructor).
    Person(Reactor* r, Seen& s, Person** slot) : IRCClient(r), seen(s), self(slot) { *self = this; }
    ~Person() override {
        if (*self == this) *self = nullptr;
    }
    void signedOn() override { seen.events.push_back("signedOn"); }
    void joined(const std::string& c) override { seen.events.push_back("joined " + c); }
    void userJoined(const std::string& u, const std::string& c) override { seen.events.push_back("userJoined " + u + " " + c); }
    void privmsg(const std::string& u, const std::string& c, const std::string& m) override {
        seen.events.push_back("privmsg " + irc::detail::nickOf(u) + " " + c + " " + m);
    }
    void topicUpdated(const std::string& u, const std::string& c, const std::string& t) override {
        seen.events.push_back("topic " + u + " " + c + " " + t);
    }
    void nickChanged(const std::string& n) override {
        IRCClient::nickChanged(n);
        seen.events.push_back("nickChanged " + n);
    }
    void userRenamed(const std::string& o, const std::string& n) override { seen.events.push_back("renamed " + o + " " + n); }
    void kickedFrom(const std::string& c, const std::string& k, const std::string& m) override {
        seen.events.push_back("kickedFrom " + c + " " + k + " " + m);
    }
    void userKicked(const std::string& e, const std::string& c, const std::string& k, const std::string& m) override {
        seen.events.push_back("userKicked " + e + " " + c + " " + k + " " + m);
    }
    void userQuit(const std::string& u, const std::string& m) override { seen.events.push_back("userQuit " + u + " " + m); }
    void receivedMOTD(const std::vector<std::string>& lines) override {
        for (const auto& l : lines) seen.events.push_back("motd " + l);
    }
    void connectionLost(const Failure& reason) override {
        IRCClient::connectionLost(reason);
        seen.events.push_back("connectionLost");
    }
};

/// The example bot, on a ReconnectingClientFactory.
struct InteropBot : Person {
    ReconnectingClientFactory* reconnecting = nullptr;
    using Person::Person;
    void signedOn() override {
        Person::signedOn();
        reconnecting->resetDelay();
        join("#interop");
    }
    void userJoined(const std::string& user, const std::string& channel) override {
        Person::userJoined(user, channel);
        say(channel, "Hello " + user);
    }
    void privmsg(const std::string& user, const std::string& target, const std::string& message) override {
        std::string addressed = nickname + ": ";
        if (message.compare(0, addressed.size(), addressed) != 0) return;
        std::string nick = irc::detail::nickOf(user);
        msg(isChannel(target) ? target : nick, nick + ": " + message.substr(addressed.size()));
    }
};

}  // namespace

#if !defined(_WIN32)
TEST_SUITE("irc-interop") {

TEST_CASE("ngircd: two clients, the bot, and a reconnect") {
    const char* binary = findNgircd();
    if (!binary) {
        std::fprintf(stderr,
                      "\n*** SKIPPED irc-interop: ngircd is not installed (sudo apt-get install ngircd) ***\n\n");
        return;
    }
    test::CleanReactor cr;
    Reactor& r = cr.r;
    Ngircd server;
    bool started = server.start(binary, r);
    std::string where = "ngircd did not start; see its log in " + server.dir;
    REQUIRE_MESSAGE(started, where);

    Seen aliceSaw, bobSaw, botSaw;
    Person* alice = nullptr;
    Person* bob = nullptr;
    Person* botSlot = nullptr;
    ClientFactory aliceFactory, bobFactory;
    aliceFactory.protocol = [&]() -> std::unique_ptr<Protocol> {
        auto p = std::make_unique<Person>(&r, aliceSaw, &alice);
        p->nickname = "alice";
        return p;
    };
    bobFactory.protocol = [&]() -> std::unique_ptr<Protocol> {
        auto p = std::make_unique<Person>(&r, bobSaw, &bob);
        p->nickname = "bob";
        return p;
    };
    r.connectTCP("127.0.0.1", server.port, aliceFactory);
    r.connectTCP("127.0.0.1", server.port, bobFactory);
    REQUIRE(testing::runUntil(r, [&] { return aliceSaw.has("signedOn") && bobSaw.has("signedOn"); }, 10));
    CHECK(aliceSaw.has("motd hello from ngircd"));
    CHECK(alice->supported.announced("CHANTYPES"));  // ISUPPORT parsed from a real 005
    CHECK(alice->supported.announced("NICKLEN"));
    CHECK(alice->hostname == "irc.interop.test");

    alice->join("#interop");
    REQUIRE(testing::runUntil(r, [&] { return aliceSaw.has("joined #interop"); }, 10));
    bob->join("interop");  // the '#' is added
    REQUIRE(testing::runUntil(r, [&] { return aliceSaw.has("userJoined bob #interop") && bobSaw.has("joined #interop"); }, 10));

    alice->say("#interop", "hello bob");
    bob->msg("alice", "hi alice, privately");
    REQUIRE(testing::runUntil(r, [&] {
        return bobSaw.has("privmsg alice #interop hello bob") && aliceSaw.has("privmsg bob alice hi alice, privately");
    }, 10));

    alice->topic("#interop", std::string("interop topic"));
    REQUIRE(testing::runUntil(r, [&] { return bobSaw.has("topic alice #interop interop topic"); }, 10));

    bob->setNick("bobby");
    REQUIRE(testing::runUntil(r, [&] { return bobSaw.has("nickChanged bobby") && aliceSaw.has("renamed bob bobby"); }, 10));
    CHECK(bob->nickname == "bobby");

    alice->kick("#interop", "bobby", "bye now");
    REQUIRE(testing::runUntil(r, [&] {
        return bobSaw.has("kickedFrom #interop alice bye now") && aliceSaw.has("userKicked bobby #interop alice bye now");
    }, 10));

    {  // Injection attempts never reach the server.
        test::LogCapture quiet;
        CHECK_FALSE(alice->say("#interop", std::string("x\0y", 3)));
        CHECK_FALSE(alice->join("#ok\r\nJOIN #evil"));
    }

    // The bot joins, greets whoever joins after it, and answers.
    ReconnectingClientFactory botFactory(r);
    botFactory.initialDelay = botFactory.delay = 0.1;
    botFactory.maxDelay = 0.5;
    botFactory.jitter = 0;
    int botConnections = 0;
    botFactory.protocol = [&]() -> std::unique_ptr<Protocol> {
        auto p = std::make_unique<InteropBot>(&r, botSaw, &botSlot);
        p->nickname = "greeter";
        p->reconnecting = &botFactory;
        ++botConnections;
        return p;
    };
    r.connectTCP("127.0.0.1", server.port, botFactory);
    REQUIRE(testing::runUntil(r, [&] { return botSaw.has("joined #interop"); }, 10));
    bob->join("#interop");
    REQUIRE(testing::runUntil(r, [&] { return bobSaw.has("privmsg greeter #interop Hello bobby"); }, 10));
    bob->say("#interop", "greeter: are you there?");
    REQUIRE(testing::runUntil(r, [&] { return aliceSaw.has("privmsg greeter #interop bobby: are you there?"); }, 10));

    // Kill the bot's connection: it reconnects with backoff and signs on again.
    REQUIRE(botSlot != nullptr);
    botSlot->transport->abortConnection();
    REQUIRE(testing::runUntil(r, [&] {
        return botConnections == 2 && std::count(botSaw.events.begin(), botSaw.events.end(), "joined #interop") == 2;
    }, 15));
    CHECK(botFactory.retries == 0);  // resetDelay() on signedOn

    bob->quit("gone");
    REQUIRE(testing::runUntil(r, [&] {
        for (const auto& e : aliceSaw.events)
            if (e.rfind("userQuit bobby", 0) == 0 && e.find("gone") != std::string::npos) return true;
        return false;
    }, 10));
    REQUIRE(testing::runUntil(r, [&] { return bobSaw.has("connectionLost"); }, 10));

    botFactory.stopTrying();
    if (botSlot) botSlot->quit("done");
    alice->quit("done");
    REQUIRE(testing::runUntil(r, [&] { return alice == nullptr && botSlot == nullptr; }, 10));
}

TEST_CASE("ngircd: the bot follows an INVITE, and QUITs when its reactor stops, without reconnecting") {
    const char* binary = findNgircd();
    if (!binary) {
        std::fprintf(stderr,
                      "\n*** SKIPPED irc-interop: ngircd is not installed (sudo apt-get install ngircd) ***\n\n");
        return;
    }
    test::CleanReactor cr, botCr;  // alice's loop, and the bot's own (stopped with run())
    Reactor& r = cr.r;
    Reactor& botR = botCr.r;
    Ngircd server;
    bool started = server.start(binary, r);
    std::string where = "ngircd did not start; see its log in " + server.dir;
    REQUIRE_MESSAGE(started, where);
    // Turns both loops (each reactor serves its own clients).
    auto both = [&](auto pred, double timeout) {
        const double deadline = r.seconds() + timeout;
        while (!pred() && r.seconds() < deadline) {
            r.iterate(0.005);
            botR.iterate(0.005);
        }
        return pred();
    };

    Seen aliceSaw, botSaw;
    Person* alice = nullptr;
    Person* botSlot = nullptr;
    ClientFactory aliceFactory;
    aliceFactory.protocol = [&]() -> std::unique_ptr<Protocol> {
        auto p = std::make_unique<Person>(&r, aliceSaw, &alice);
        p->nickname = "alice";
        return p;
    };
    struct Follower : Person {
        Follower(Reactor* reactorOf, Seen& s, Person** slot) : Person(reactorOf, s, slot) {}
        void invited(const std::string& inviter, const std::string& channel) override {
            seen.events.push_back("invited " + inviter + " " + channel);
            join(channel);
        }
    };
    ReconnectingClientFactory botFactory(botR);
    botFactory.initialDelay = botFactory.delay = 0.1;
    botFactory.jitter = 0;
    int botConnections = 0;
    botFactory.protocol = [&]() -> std::unique_ptr<Protocol> {
        ++botConnections;
        auto p = std::make_unique<Follower>(&botR, botSaw, &botSlot);
        p->nickname = "follower";
        p->shutdownMessage = "stopping now";
        return p;
    };
    r.connectTCP("127.0.0.1", server.port, aliceFactory);
    botR.connectTCP("127.0.0.1", server.port, botFactory);
    REQUIRE(both([&] { return aliceSaw.has("signedOn") && botSaw.has("signedOn"); }, 10));
    // ngircd answers CAP LS 302 (multi-prefix): negotiated, then CAP END let
    // registration finish.
    REQUIRE(alice->availableCaps().size() >= 1);
    CHECK(alice->capEnabled("multi-prefix"));
    alice->join("#inv");
    REQUIRE(both([&] { return aliceSaw.has("joined #inv"); }, 10));
    alice->invite("follower", "#inv");
    REQUIRE(both([&] { return botSaw.has("invited alice #inv") && aliceSaw.has("userJoined follower #inv"); }, 10));

    // Stop the bot's reactor: QUIT goes out, ngircd relays it to alice, and
    // the ReconnectingClientFactory does not try again.
    botR.callLater(0, [&] { botR.stop(); });
    DelayedCall guard = botR.callLater(10, [&] { botR.crash(); });
    botR.run();
    CHECK(guard.active());
    if (guard.active()) guard.cancel();
    botR.iterate(0);  // frees the closed connection's protocol
    CHECK(botSlot == nullptr);
    CHECK(botConnections == 1);
    CHECK_FALSE(botFactory.callID.active());
    REQUIRE(testing::runUntil(r, [&] {
        for (const auto& e : aliceSaw.events)
            if (e.rfind("userQuit follower", 0) == 0 && e.find("stopping now") != std::string::npos) return true;
        return false;
    }, 10));

    alice->quit("done");
    REQUIRE(testing::runUntil(r, [&] { return alice == nullptr; }, 10));
}

}  // TEST_SUITE
#endif  // !_WIN32

TEST_SUITE("irc") {

TEST_CASE("no outgoing line exceeds 512 bytes: long topics, kick reasons, quit messages are cut") {
    test::LogCapture logs;
    Recorder p;
    StringTransport t;
    p.nickname = "bot";
    p.makeConnection(&t);
    t.clear();
    std::string longText(1000, 'x');
    p.topic("#c", longText);
    p.kick("#c", "bob", longText);
    p.quit(longText);
    std::size_t start = 0, lines = 0;
    while (start < t.value().size()) {
        std::size_t end = t.value().find("\r\n", start);
        REQUIRE(end != std::string::npos);
        CHECK(end - start + 2 <= 512);
        start = end + 2;
        ++lines;
    }
    CHECK(lines == 3);
    CHECK(logs.contains("cut an outgoing line of 1010 bytes to 510"));
}

TEST_CASE("PONG goes ahead of the lineRate queue; the queue is bounded") {
    Clock clock;
    Recorder p(&clock);
    StringTransport t;
    p.nickname = "bot";
    p.lineRate = 2.0;
    p.heartbeatInterval = 0;
    p.makeConnection(&t);
    for (int i = 0; i < 20; ++i) p.say("#c", "line " + std::to_string(i));
    t.clear();
    p.lineReceived("PING :tok");
    CHECK(t.value() == "PONG tok\r\n");  // at once, not after 20 queued lines
    p.maxQueuedLines = 5;
    test::LogCapture logs;
    CHECK_FALSE(p.say("#c", "one too many"));
    CHECK(logs.contains("send queue full"));
    p.connectionLost(Failure(error::ConnectionDone()));
    CHECK(clock.getDelayedCalls().empty());
}

TEST_CASE("after connectionLost the client is unregistered and sends nothing") {
    Clock clock;
    Recorder p(&clock);
    StringTransport t;
    p.nickname = "bot";
    p.lineRate = 1.0;
    p.heartbeatInterval = 0;
    p.makeConnection(&t);
    p.lineReceived(":srv 001 bot :Welcome");
    CHECK(p.registered());
    p.connected = false;  // what the transport does before calling connectionLost
    p.connectionLost(Failure(error::ConnectionDone()));
    CHECK_FALSE(p.registered());
    t.clear();
    CHECK_FALSE(p.say("#c", "late"));
    CHECK(t.value().empty());
    CHECK(clock.getDelayedCalls().empty());
}

TEST_CASE("a reused client starts its next connection afresh: no partial line, MOTD or pause carries over") {
    // Twisted keeps LineReceiver's buffer across connectionLost (factories
    // build a new protocol per connection there); a reused IRCClient must
    // not glue the old connection's half line onto the new one's 001.
    Recorder p;
    p.nickname = "me";
    p.heartbeatInterval = 0;
    StringTransport t1;
    p.makeConnection(&t1);
    p.dataReceived(":srv 001 me :Welcome\r\n:srv 375 me :- motd -\r\n:bob!b@h PRIVMSG me :half a li");
    CHECK(p.registered());
    CHECK(p.motd.has_value());
    p.pauseProducing();
    p.connected = false;
    p.connectionLost(Failure(error::ConnectionLost()));
    CHECK(p.bufferedSize() == 0);
    CHECK_FALSE(p.motd.has_value());
    CHECK_FALSE(p.paused());

    p.calls.clear();
    StringTransport t2;
    p.makeConnection(&t2);
    CHECK(t2.value() == "CAP LS 302\r\nNICK me\r\nUSER me foo bar :me\r\n");
    p.dataReceived(":srv2 001 me :Welcome back\r\n:srv2 372 me :- only line\r\n:srv2 376 me :End\r\n");
    CHECK(p.registered());
    CHECK(p.hostname == "srv2");
    CHECK(p.calls == std::vector<std::string>{"signedOn()", "receivedMOTD([only line])"});

    // An over-long line cut by the first connection: its tail is not
    // waited for on the next one.
    Recorder q;
    q.nickname = "me";
    q.heartbeatInterval = 0;
    StringTransport t3;
    q.makeConnection(&t3);
    {
        test::LogCapture logs;
        q.dataReceived(":srv PRIVMSG me :" + std::string(q.MAX_LENGTH + 10, 'x'));
        CHECK(logs.contains("dropped a server line"));
    }
    q.connected = false;
    q.connectionLost(Failure(error::ConnectionLost()));
    StringTransport t4;
    q.makeConnection(&t4);
    q.dataReceived(":srv 001 me :Welcome\r\n");
    CHECK(q.registered());
    q.connectionLost(Failure(error::ConnectionDone()));
}

TEST_CASE("register_ is all or nothing: a refused nick or a user name with a space sends nothing") {
    // Twisted 22.4 sends whatever it is given:
    //   c.nickname = 'bad nick'  -> NICK bad nick / USER bad nick foo bar :None
    //   c.username = 'evil 0 *'  -> USER evil 0 * foo bar :x  (user "evil", mode "0")
    // Here every middle parameter is checked before the first line goes out.
    test::LogCapture logs;
    StringTransport t;
    Recorder p;
    p.heartbeatInterval = 0;
    p.password = "pw";
    p.nickname = "bad nick";  // connectionMade's register_(nickname)
    p.makeConnection(&t);
    CHECK(t.value().empty());
    CHECK(p.attemptedNick().empty());
    CHECK(logs.contains("refused to send NICK"));
    CHECK(p.username.empty());  // not defaulted to the refused nick

    for (const char* user : {"evil 0 *", ":evil"}) {
        CAPTURE(user);
        p.username = user;
        CHECK_FALSE(p.register_("ok"));
        CHECK(t.value().empty());
    }
    p.username = "u";
    CHECK_FALSE(p.register_("ok", "host name"));
    CHECK_FALSE(p.register_("ok", "h", ""));
    CHECK(t.value().empty());
    CHECK(logs.contains("refused to send USER"));

    // A password is one parameter: with a space it goes as the trailing one.
    p.password = "two words";
    CHECK(p.register_("ok", "h", "s"));
    CHECK(t.value() == "CAP LS 302\r\nPASS :two words\r\nNICK ok\r\nUSER u h s :ok\r\n");  // CAP LS waited for it
    p.connectionLost(Failure(error::ConnectionDone()));
}

TEST_CASE("ping() quotes its key: no second CTCP query can be smuggled in") {
    Recorder p;
    StringTransport t;
    p.nickname = "bot";
    p.makeConnection(&t);
    t.clear();
    p.ping("bob", "k\x01VERSION");
    CHECK(t.value().find("\x01VERSION\x01") == std::string::npos);
}

}  // TEST_SUITE irc

TEST_SUITE("irc") {

TEST_CASE("targets, nicks and channels cannot shift parameters: no spaces, no leading ':', not empty") {
    test::LogCapture logs;
    Recorder p;
    StringTransport t;
    p.nickname = "bot";
    p.makeConnection(&t);
    t.clear();
    CHECK_FALSE(p.msg("bob :owned", "hi"));
    CHECK_FALSE(p.kick("#c", "bob :fake"));
    CHECK_FALSE(p.whois(":x y"));
    CHECK_FALSE(p.setNick(""));
    CHECK_FALSE(p.join("#a b"));
    CHECK_FALSE(p.msg("", "hi"));
    CHECK(t.value().empty());
    CHECK(logs.contains("refused to send"));
    CHECK(p.msg("bob", "text may have spaces and a :colon"));
    CHECK(t.value() == "PRIVMSG bob :text may have spaces and a :colon\r\n");
}

}  // TEST_SUITE irc

// ---- issue 14: liberal input, INVITE, clean shutdown ------------------------

namespace {

/// A scripted IRC server for loopback tests: each connection records the
/// lines it receives (in `Script::received`) and hands them to `onLine`,
/// which answers with send(). No real server logic: each test says what
/// the server replies, following the IRC and IRCv3 specifications' examples.
struct Script {
    std::vector<std::string> received;
    bool closed = false;
    std::function<void(struct ScriptConn&, const std::string&)> onLine;
    bool has(const std::string& l) const { return std::find(received.begin(), received.end(), l) != received.end(); }
};

struct ScriptConn : LineReceiver {
    Script& script;
    explicit ScriptConn(Script& s) : script(s) {}
    void send(const std::string& line) { sendLine(line); }
    void lineReceived(std::string_view line) override {
        script.received.emplace_back(line);
        if (script.onLine) script.onLine(*this, std::string(line));
    }
    void connectionLost(const Failure&) override { script.closed = true; }
};

}  // namespace

TEST_SUITE("irc") {

TEST_CASE("incoming lines over 512 bytes are delivered whole, up to MAX_LENGTH; longer ones are dropped, the connection kept") {
    // Twisted 22.4 delivers long lines too, but closes the connection past
    // MAX_LENGTH (LineReceiver's default lineLengthExceeded):
    //   p = C(); t = StringTransport(); p.makeConnection(t)   # C: IRCClient printing privmsg
    //   p.dataReceived(b":a!a@h PRIVMSG #c :" + b"x"*600 + b"\r\n")            -> privmsg a!a@h #c 600
    //   p.dataReceived(b":a!a@h PRIVMSG #c :" + b"z"*(16384-19) + b"\r\n")     -> privmsg a!a@h #c 16365
    //   p.dataReceived(b":a!a@h PRIVMSG #c :" + b"z"*(16384-18) + b"\r\n"); t.disconnecting -> True
    // Here the over-long line is dropped with a log line and the client stays.
    Connected c;
    test::LogCapture log;
    c.p.dataReceived(":a!a@h PRIVMSG #c :" + std::string(600, 'x') + "\r\n");
    CHECK(c.p.last() == "privmsg(a!a@h, #c, " + std::string(600, 'x') + ")");
    // 8,000 bytes of IRCv3 tags plus a 500-byte message: whole, tags included.
    struct Tagged : IRCClient {
        std::string value;
        std::size_t length = 0;
        void privmsg(const std::string&, const std::string&, const std::string& m) override {
            length = m.size();
            if (const std::string* v = currentMessageTag("k")) value = *v;
        }
        const std::string* currentMessageTag(std::string_view key) const {
            for (const auto& t : tags())
                if (t.first == key) return &t.second;
            return nullptr;
        }
    } tagged;
    StringTransport t;
    tagged.makeConnection(&t);
    tagged.dataReceived("@k=" + std::string(8000, 'v') + " :a!a@h PRIVMSG #c :" + std::string(500, 'y') + "\r\n");
    CHECK(tagged.length == 500);
    CHECK(tagged.value == std::string(8000, 'v'));
    // Exactly MAX_LENGTH (16384, Twisted's) is delivered; one byte more is not.
    CHECK(c.p.MAX_LENGTH == 16384);
    const std::string head = ":a!a@h PRIVMSG #c :";
    c.p.dataReceived(head + std::string(16384 - head.size(), 'z') + "\r\n");
    CHECK(c.p.last() == "privmsg(a!a@h, #c, " + std::string(16384 - head.size(), 'z') + ")");
    c.p.calls.clear();
    CHECK_FALSE(log.contains("MAX_LENGTH"));
    c.p.dataReceived(head + std::string(16385 - head.size(), 'z') + "\r\n:a!a@h PRIVMSG #c :next\r\n");
    REQUIRE(c.p.calls.size() == 1);
    CHECK(c.p.last() == "privmsg(a!a@h, #c, next)");
    CHECK(log.contains("over MAX_LENGTH (16384 bytes)"));
    CHECK_FALSE(c.t.disconnecting);
    // The limit is the client's to raise.
    c.p.MAX_LENGTH = 40000;
    c.p.dataReceived(head + std::string(30000, 'w') + "\r\n");
    CHECK(c.p.last() == "privmsg(a!a@h, #c, " + std::string(30000, 'w') + ")");
}

TEST_CASE("split: textwrap's greedy fill, long words fill the line they start on, tabs to 8 columns") {
    // /usr/bin/python3; from twisted.words.protocols import irc
    //   irc.split("nick: " + "x"*30, 20)  -> ['nick: xxxxxxxxxxxxxx', 'xxxxxxxxxxxxxxxx']
    //   irc.split("a\tb\tc", 80)          -> ['a       b       c']
    //   irc.split("ab\tc\t\td", 80)       -> ['ab      c               d']
    //   irc.split("  lead  trail  ", 80)  -> ['  lead  trail']
    //   irc.split("\t", 80), irc.split("   ", 80) -> [] []
    //   irc.split("aaaa " + "b"*32, 10)   -> ['aaaa bbbbb', 'bbbbbbbbbb', 'bbbbbbbbbb', 'bbbbbbb']
    //   irc.split("aaaa bbbbbbbbb", 10)   -> ['aaaa', 'bbbbbbbbb']
    //   irc.split("é\tx", 80)             -> ['é       x']   (columns are characters)
    //   irc.split("a\x0bb\x0cc", 80)      -> ['a b c']
    //   irc.split("aaaaaaaa\tb", 10)      -> ['aaaaaaaa', 'b']
    using V = std::vector<std::string>;
    CHECK(split("nick: " + std::string(30, 'x'), 20) == V{"nick: " + std::string(14, 'x'), std::string(16, 'x')});
    CHECK(split("a\tb\tc", 80) == V{"a       b       c"});
    CHECK(split("ab\tc\t\td", 80) == V{"ab      c               d"});
    CHECK(split("  lead  trail  ", 80) == V{"  lead  trail"});
    CHECK(split("\t", 80) == V{});
    CHECK(split("   ", 80) == V{});
    CHECK(split("aaaa " + std::string(32, 'b'), 10) == V{"aaaa bbbbb", "bbbbbbbbbb", "bbbbbbbbbb", "bbbbbbb"});
    CHECK(split("aaaa bbbbbbbbb", 10) == V{"aaaa", "bbbbbbbbb"});
    CHECK(split("\xc3\xa9\tx", 80) == V{"\xc3\xa9       x"});
    CHECK(split("a\vb\fc", 80) == V{"a b c"});
    CHECK(split("aaaaaaaa\tb", 10) == V{"aaaaaaaa", "b"});
}

TEST_CASE("a reply that needs splitting fills its first line: never just 'nick:'") {
    Bot p;  // the seed's bot, answering like examples/irc_bot.cpp
    p.nickname = "bot";
    StringTransport t;
    p.makeConnection(&t);
    t.clear();
    std::string word(1500, 'q');  // no space to break at
    REQUIRE(p.msg("#c", "alice: " + word));
    std::vector<std::string> sent = lines(t.value());
    REQUIRE(sent.size() >= 3);
    CHECK(sent[0].rfind("PRIVMSG #c :alice: qqq", 0) == 0);
    std::string rejoined;
    for (const auto& l : sent) {
        CHECK(l.size() + 2 <= 512);
        rejoined += l.substr(std::string("PRIVMSG #c :").size());
    }
    CHECK(rejoined == "alice: " + word);
    // The first line is as full as the others (the relayed line fits 512).
    CHECK(sent[0].size() == sent[1].size());
}

TEST_CASE("INVITE: invited(inviter, channel) when we are invited; others' invites are ignored") {
    // Not in Twisted 22.4 (irc_INVITE is absent: the line goes to irc_unknown).
    struct Invitee : Recorder {
        using Recorder::Recorder;
        void invited(const std::string& inviter, const std::string& channel) override {
            rec("invited", {inviter, channel});
        }
    };
    Clock clock;
    StringTransport t;
    Invitee p(&clock);
    p.nickname = "Me";
    p.heartbeatInterval = 0;
    p.makeConnection(&t);
    p.lineReceived(":alice!a@h INVITE me :#secret");  // nicks compare under CASEMAPPING
    CHECK(p.last() == "invited(alice, #secret)");
    p.calls.clear();
    test::LogCapture log;
    p.lineReceived(":alice!a@h INVITE bob #secret");  // invite-notify about someone else
    p.lineReceived(":alice!a@h INVITE me");           // too few parameters: logged
    CHECK(p.calls.empty());
    CHECK(log.contains("ignored INVITE with too few parameters"));
    // The default does nothing; the seed's bot does not follow invitations,
    // the example bot joins (examples/irc_bot.cpp).
    struct Follower : IRCClient {
        void invited(const std::string&, const std::string& channel) override { join(channel); }
    } f;
    f.nickname = "bot";
    StringTransport t2;
    f.makeConnection(&t2);
    t2.clear();
    f.lineReceived(":alice!a@h INVITE bot #secret");
    CHECK(t2.value() == "JOIN #secret\r\n");
    p.connectionLost(Failure(error::ConnectionDone()));
}

TEST_CASE("shutdown: a client on a Reactor sends its queue, then QUIT, and the shutdown waits for the close") {
    // Not in Twisted 22.4: IRCClient takes no part in reactor shutdown.
    test::CleanReactor cr;
    Reactor& r = cr.r;
    StringTransport t;
    IRCClient p(&r);
    p.nickname = "me";
    p.shutdownMessage = "see you";
    p.makeConnection(&t);
    p.lineReceived(":srv 001 me :Welcome");
    p.lineRate = 10;  // the second line waits in the queue
    t.clear();
    p.msg("#c", "one");
    p.msg("#c", "two");
    CHECK(p.queuedLines() == 1);
    bool after = false;
    TriggerId id = r.addSystemEventTrigger("after", "shutdown", [&] { after = true; });
    r.fireSystemEvent("shutdown");
    CHECK(t.value() == "PRIVMSG #c :one\r\nPRIVMSG #c :two\r\nQUIT :see you\r\n");
    CHECK(t.writeConnectionLost);  // half-closed once that is flushed; the server closes
    CHECK_FALSE(testing::runUntil(r, [&] { return after; }, 0.2));  // the shutdown waits for the close
    p.connected = false;
    p.connectionLost(Failure(error::ConnectionDone()));
    CHECK(testing::runUntil(r, [&] { return after; }, 5));
    r.removeSystemEventTrigger(id);
    // After connectionLost the client is out of the shutdown: nothing more is sent.
    t.clear();
    after = false;
    id = r.addSystemEventTrigger("after", "shutdown", [&] { after = true; });
    r.fireSystemEvent("shutdown");
    CHECK(after);
    CHECK(t.value().empty());
    r.removeSystemEventTrigger(id);
}

TEST_CASE("shutdown: a server that never takes the QUIT costs quitTimeout, then the connection is aborted") {
    test::CleanReactor cr;
    Reactor& r = cr.r;
    struct Aborting : StringTransport {
        IRCClient* p = nullptr;
        void abortConnection() override {
            StringTransport::abortConnection();
            p->connected = false;
            p->connectionLost(Failure(error::ConnectionLost()));
        }
    } t;
    IRCClient p(&r);
    t.p = &p;
    p.quitTimeout = 0.05;
    p.makeConnection(&t);
    test::LogCapture log;
    bool after = false;
    TriggerId id = r.addSystemEventTrigger("after", "shutdown", [&] { after = true; });
    r.fireSystemEvent("shutdown");
    CHECK(t.value().find("QUIT :Shutting down\r\n") != std::string::npos);
    CHECK(testing::runUntil(r, [&] { return after; }, 5));
    CHECK(log.contains("did not take our QUIT"));
    r.removeSystemEventTrigger(id);
}

TEST_CASE("shutdown: a client on a mere clock, or destroyed while connected, leaves no trigger behind") {
    test::CleanReactor cr;
    Reactor& r = cr.r;
    {
        StringTransport t;
        IRCClient p(static_cast<IReactorTime*>(&r));  // a clock only: no QUIT at shutdown
        p.makeConnection(&t);
        t.clear();
        r.fireSystemEvent("shutdown");
        CHECK(t.value().empty());
    }
    bool after = false;
    {
        StringTransport t;
        IRCClient p(&r);
        p.makeConnection(&t);
    }  // destroyed without connectionLost: its trigger goes with it
    TriggerId id = r.addSystemEventTrigger("after", "shutdown", [&] { after = true; });
    r.fireSystemEvent("shutdown");
    CHECK(after);
    r.removeSystemEventTrigger(id);
}

// Windows: run(true) installs a console control handler instead; the test
// calls it as Windows would on Ctrl-C (on a thread of its own).
TEST_CASE("SIGTERM with run(true): the client QUITs over loopback and the ReconnectingClientFactory does not reconnect") {
    test::CleanReactor cr;
    Reactor& r = cr.r;
    Script script;
    script.onLine = [](ScriptConn& c, const std::string& line) {
        if (line.rfind("USER ", 0) == 0) c.send(":srv 001 bot :Welcome");
    };
    Factory serverFactory;
    serverFactory.protocol = [&] { return std::make_unique<ScriptConn>(script); };
    ListeningPort port = r.listenTCP(0, serverFactory, {"127.0.0.1"});

    struct Stopper : IRCClient {
        using IRCClient::IRCClient;
        void signedOn() override {
            msg("#c", "last words");
#if defined(_WIN32)
            std::thread([] { reactor::detail::os::reactorConsoleHandler(CTRL_C_EVENT); }).join();
#else
            ::raise(SIGTERM);  // handled: run(true) turns it into stop()
#endif
        }
    };
    ReconnectingClientFactory clients(r);
    clients.initialDelay = clients.delay = 0.01;
    int made = 0;
    clients.protocol = [&]() -> std::unique_ptr<Protocol> {
        ++made;
        auto p = std::make_unique<Stopper>(&r);
        p->nickname = "bot";
        p->shutdownMessage = "bye";
        return p;
    };
    r.connectTCP("127.0.0.1", port.getHost().port, clients);
    DelayedCall guard = r.callLater(10, [&] { r.crash(); });  // a hang fails, not blocks
    const double started = r.seconds();
    test::LogCapture log;
    r.run(true);
#if defined(_WIN32)
    CHECK(log.contains("Received Ctrl-C"));
#else
    CHECK(log.contains("Received SIGTERM"));
#endif
    const double took = r.seconds() - started;
    CHECK(guard.active());
    if (guard.active()) guard.cancel();
    CHECK(took < 2);  // not quitTimeout: the server read QUIT, then EOF, and closed
    CHECK(made == 1);
    CHECK_FALSE(clients.callID.active());  // no retry scheduled
    CHECK(clients.retries == 0);
    REQUIRE(script.received.size() >= 4);
    CHECK(script.has("NICK bot"));  // this server ignores CAP LS 302: registration went on
    CHECK(script.has("PRIVMSG #c :last words"));
    CHECK(script.received.back() == "QUIT :bye");
    CHECK(script.closed);
    CHECK_FALSE(r.stopping());
    CHECK(testing::runUntilClean(r));  // the shutdown closed the port too
}

}  // TEST_SUITE irc

TEST_SUITE("irc") {

TEST_CASE("ISUPPORT: every token Twisted parses, with Twisted's typed results") {
    // /usr/bin/python3; from twisted.words.protocols.irc import ServerSupportedFeatures as S
    //   s = S(); s.parse(["CHANLIMIT=#&:10,+:", "MAXLIST=b:25,eI:50,q", "TARGMAX=PRIVMSG:4,NOTICE:3,JOIN:,KICK:x",
    //       "IDCHAN=!:5", "KICKLEN=180", "TOPICLEN=", "EXCEPTS", "INVEX=J", "SAFELIST", "STATUSMSG=@+", "MODES="])
    //   CHANLIMIT [('#&', 10), ('+', None)] True          (getFeature, hasFeature)
    //   MAXLIST [('b', 25), ('eI', 50), ('q', None)] True
    //   TARGMAX {'PRIVMSG': 4, 'NOTICE': 3, 'JOIN': None, 'KICK': None} True
    //   IDCHAN [('!', '5')] True
    //   KICKLEN 180 True
    //   TOPICLEN None False
    //   EXCEPTS 'e' True
    //   INVEX 'J' True
    //   SAFELIST True True
    //   STATUSMSG '@+' True
    //   MODES None False
    //   S().getFeature("KICKLEN"), S().getFeature("EXCEPTS"), S().hasFeature("SAFELIST") -> None None False
    using NL = ServerSupportedFeatures::NumberedList;
    ServerSupportedFeatures s;
    CHECK(s.chanLimit().empty());
    CHECK(s.kickLen() == std::nullopt);
    CHECK(s.excepts() == std::nullopt);
    CHECK_FALSE(s.safeList());
    CHECK(s.statusMsg() == std::nullopt);
    s.parse({"CHANLIMIT=#&:10,+:", "MAXLIST=b:25,eI:50,q", "TARGMAX=PRIVMSG:4,NOTICE:3,JOIN:,KICK:x", "IDCHAN=!:5",
             "KICKLEN=180", "TOPICLEN=", "EXCEPTS", "INVEX=J", "SAFELIST", "STATUSMSG=@+", "MODES="});
    CHECK(s.chanLimit() == NL{{"#&", 10}, {"+", std::nullopt}});
    CHECK(s.maxList() == NL{{"b", 25}, {"eI", 50}, {"q", std::nullopt}});
    CHECK(s.targMax() == NL{{"PRIVMSG", 4}, {"NOTICE", 3}, {"JOIN", std::nullopt}, {"KICK", std::nullopt}});
    CHECK(s.idChan() == std::vector<std::pair<std::string, std::string>>{{"!", "5"}});
    CHECK(s.kickLen() == 180);
    CHECK(s.topicLen() == std::nullopt);
    CHECK_FALSE(s.hasFeature("TOPICLEN"));
    CHECK(s.excepts() == std::string("e"));
    CHECK(s.invex() == std::string("J"));
    CHECK(s.safeList());
    CHECK(s.statusMsg() == std::string("@+"));
    CHECK(s.modes() == std::nullopt);
    CHECK_FALSE(s.hasFeature("MODES"));

    // s = S(); s.parse(["PREFIX="]) -> getFeature None, hasFeature False
    // s = S(); s.parse(["PREFIX=(ov)@"]) -> {'o': ('@', 0)}   (paired up to the shorter list)
    // s = S(); s.parse(["EXCEPTS=", "INVEX="]) -> 'e' 'I'
    // s = S(); s.parse(["KICKLEN=abc", "CHANNELLEN=", "NICKLEN=x"]) -> None 200 9
    // s = S(); s.parse(["CHANLIMIT"]) -> [('', None)]
    // s = S(); s.parse(["MAXLIST=b:-1"]) -> [('b', -1)]
    // s = S(); s.parse(["IDCHAN=!:5,#:"]) -> [('!', '5'), ('#', '')]
    // s = S(); s.parse(["TARGMAX=A:1,A:2"]) -> {'A': 2}
    ServerSupportedFeatures e;
    e.parse({"PREFIX="});
    CHECK_FALSE(e.hasFeature("PREFIX"));
    CHECK(e.prefix().empty());
    ServerSupportedFeatures f;
    f.parse({"PREFIX=(ov)@"});
    REQUIRE(f.prefix().size() == 1);
    CHECK(f.prefix()[0].mode == 'o');
    CHECK(f.prefix()[0].symbol == '@');
    ServerSupportedFeatures g;
    g.parse({"EXCEPTS=", "INVEX="});
    CHECK(g.excepts() == std::string("e"));
    CHECK(g.invex() == std::string("I"));
    CHECK(g.getFeature("INVEX") == std::vector<std::string>{"I"});
    ServerSupportedFeatures h;
    h.parse({"KICKLEN=abc", "CHANNELLEN=", "NICKLEN=x", "CHANLIMIT", "MAXLIST=b:-1", "IDCHAN=!:5,#:",
             "TARGMAX=A:1,A:2"});
    CHECK(h.kickLen() == std::nullopt);
    CHECK(h.channelLen() == 200);
    CHECK(h.nickLen() == 9);
    CHECK(h.chanLimit() == NL{{"", std::nullopt}});
    CHECK(h.maxList() == NL{{"b", -1}});
    CHECK(h.idChan() == std::vector<std::pair<std::string, std::string>>{{"!", "5"}, {"#", ""}});
    CHECK(h.targMax() == NL{{"A", 2}});
}

}  // TEST_SUITE irc

TEST_SUITE("irc") {

TEST_CASE("CTCP: a bare ACTION is absent data, an empty one is empty; CLIENTINFO <tag> as Twisted") {
    // /usr/bin/python3: an IRCClient whose action() prints its arguments
    //   p.lineReceived(":a!a@h PRIVMSG #c :\x01ACTION\x01")        -> action 'a!a@h' '#c' None
    //   p.lineReceived(":a!a@h PRIVMSG #c :\x01ACTION \x01")       -> action 'a!a@h' '#c' ''
    //   p.lineReceived(":a!a@h PRIVMSG #c :\x01ACTION waves\x01")  -> action 'a!a@h' '#c' 'waves'
    //   p.lineReceived(':a!a@h PRIVMSG me :\x01CLIENTINFO\x01')
    //     -> NOTICE a :\x01CLIENTINFO ACTION CLIENTINFO DCC ERRMSG FINGER PING SOURCE TIME USERINFO VERSION\x01
    //   p.lineReceived(':a!a@h PRIVMSG me :\x01CLIENTINFO NOPE x\x01')
    //     -> NOTICE a :\x01ERRMSG CLIENTINFO NOPE x :Unknown query 'NOPE'\x01
    //   p.lineReceived(':a!a@h PRIVMSG me :\x01CLIENTINFO PING\x01') -> NOTICE a :\x01CLIENTINFO\x01
    //     (Twisted answers with the method's docstring, None for PING; we answer a line of our own)
    Connected c;
    c.line(":a!a@h PRIVMSG #c :\x01" "ACTION\x01");
    CHECK(c.p.last() == "action(a!a@h, #c, None)");
    c.line(":a!a@h PRIVMSG #c :\x01" "ACTION \x01");
    CHECK(c.p.last() == "action(a!a@h, #c, )");
    c.line(":a!a@h PRIVMSG #c :\x01" "ACTION waves\x01");
    CHECK(c.p.last() == "action(a!a@h, #c, waves)");
    c.line(":a!a@h PRIVMSG me :\x01" "CLIENTINFO NOPE x\x01");
    CHECK(c.out() == "NOTICE a :\x01" "ERRMSG CLIENTINFO NOPE x :Unknown query 'NOPE'\x01\r\n");
    c.line(":a!a@h PRIVMSG me :\x01" "CLIENTINFO  DCC\x01");  // Twisted: data.split()[0]
    CHECK(c.out() == "NOTICE a :\x01" "CLIENTINFO DCC type args: SEND, CHAT, RESUME and ACCEPT offers are read, never "
                     "transferred\x01\r\n");
    c.line(":a!a@h PRIVMSG me :\x01" "CLIENTINFO ping\x01");  // tags are case-sensitive, as Twisted's getattr
    CHECK(c.out() == "NOTICE a :\x01" "ERRMSG CLIENTINFO ping :Unknown query 'ping'\x01\r\n");
}

TEST_CASE("CTCP DCC: offers are parsed to the dccDo* callbacks as Twisted's, malformed ones logged") {
    // /usr/bin/python3: an IRCClient whose dccDo* methods print their arguments
    //   '\x01DCC SEND "my file.txt" 3232235777 5000 1024\x01'
    //     -> dccDoSend a!a@h '192.168.1.1' 5000 'my file.txt' 1024 ['my file.txt', '3232235777', '5000', '1024']
    //   '\x01DCC SEND f.txt 127.0.0.1 5000\x01' -> dccDoSend a!a@h '127.0.0.1' 5000 'f.txt' -1 [...]
    //   '\x01DCC CHAT chat 3232235777 5001\x01'  -> dccDoChat a!a@h me '192.168.1.1' 5001 ['chat', '3232235777', '5001']
    //   '\x01DCC RESUME f.txt 5000 100\x01'      -> dccDoResume a!a@h f.txt 5000 100
    //   '\x01DCC ACCEPT f.txt 5000 100\x01'      -> dccDoAcceptResume a!a@h f.txt 5000 100
    //   (none of these sends anything)
    //   '\x01DCC FOO bar\x01' -> NOTICE a :\x01ERRMSG DCC FOO bar :Unknown DCC type 'FOO'\x01
    //   '\x01DCC SEND f.txt 1.2.3.4 5000 big\x01' -> dccDoSend ... 'f.txt' -1 ['f.txt', '1.2.3.4', '5000', 'big']
    //   '\x01DCC SEND f.txt\x01', '... 1.2.3.4 notaport', '... xyz 5000' -> IRCBadMessage, logged; no callback
    //   '\x01DCC\x01' -> nothing
    struct Dcc : Recorder {
        using Recorder::Recorder;
        static std::string words(const std::vector<std::string>& d) {
            std::string all;
            for (const auto& w : d) all += "[" + w + "]";
            return all;
        }
        void dccDoSend(const std::string& user, const std::string& address, int port, const std::string& fileName,
                       std::int64_t size, const std::vector<std::string>& data) override {
            rec("dccDoSend", {user, address, std::to_string(port), fileName, std::to_string(size), words(data)});
        }
        void dccDoChat(const std::string& user, const std::string& channel, const std::string& address, int port,
                       const std::vector<std::string>& data) override {
            rec("dccDoChat", {user, channel, address, std::to_string(port), words(data)});
        }
        void dccDoResume(const std::string& user, const std::string& file, int port, std::int64_t pos) override {
            rec("dccDoResume", {user, file, std::to_string(port), std::to_string(pos)});
        }
        void dccDoAcceptResume(const std::string& user, const std::string& file, int port, std::int64_t pos) override {
            rec("dccDoAcceptResume", {user, file, std::to_string(port), std::to_string(pos)});
        }
    };
    Clock clock;
    StringTransport t;
    Dcc p(&clock);
    p.nickname = "me";
    p.heartbeatInterval = 0;
    p.makeConnection(&t);
    t.clear();
    p.lineReceived(":a!a@h PRIVMSG me :\x01" "DCC SEND \"my file.txt\" 3232235777 5000 1024\x01");
    CHECK(p.last() == "dccDoSend(a!a@h, 192.168.1.1, 5000, my file.txt, 1024, [my file.txt][3232235777][5000][1024])");
    p.lineReceived(":a!a@h PRIVMSG me :\x01" "DCC SEND f.txt 127.0.0.1 5000\x01");
    CHECK(p.last() == "dccDoSend(a!a@h, 127.0.0.1, 5000, f.txt, -1, [f.txt][127.0.0.1][5000])");
    p.lineReceived(":a!a@h PRIVMSG me :\x01" "DCC CHAT chat 3232235777 5001\x01");
    CHECK(p.last() == "dccDoChat(a!a@h, me, 192.168.1.1, 5001, [chat][3232235777][5001])");
    p.lineReceived(":a!a@h PRIVMSG me :\x01" "DCC RESUME f.txt 5000 100\x01");
    CHECK(p.last() == "dccDoResume(a!a@h, f.txt, 5000, 100)");
    p.lineReceived(":a!a@h PRIVMSG me :\x01" "DCC ACCEPT f.txt 5000 100\x01");
    CHECK(p.last() == "dccDoAcceptResume(a!a@h, f.txt, 5000, 100)");
    p.lineReceived(":a!a@h PRIVMSG me :\x01" "DCC send 'it''s here' 1.2.3.4 5000 big\x01");  // type case-insensitive
    CHECK(p.last() == "dccDoSend(a!a@h, 1.2.3.4, 5000, its here, -1, [its here][1.2.3.4][5000][big])");
    CHECK(t.value().empty());
    p.calls.clear();
    test::LogCapture log;
    p.lineReceived(":a!a@h PRIVMSG me :\x01" "DCC FOO bar\x01");
    CHECK(t.value() == "NOTICE a :\x01" "ERRMSG DCC FOO bar :Unknown DCC type 'FOO'\x01\r\n");
    CHECK(log.contains("offered unknown DCC type FOO"));
    for (const char* bad : {"DCC SEND f.txt", "DCC SEND f.txt 1.2.3.4 notaport", "DCC SEND f.txt xyz 5000",
                            "DCC SEND \"unclosed 1.2.3.4 5000", "DCC CHAT chat ::1 5000", "DCC", "DCC RESUME f x 1"})
        p.lineReceived(std::string(":a!a@h PRIVMSG me :\x01") + bad + "\x01");
    CHECK(p.calls.empty());
    CHECK(log.contains("malformed DCC SEND request from a!a@h: f.txt"));
    CHECK(log.contains("indecipherable port notaport"));
    CHECK(log.contains("indecipherable address xyz"));
    CHECK(log.contains("no closing quotation"));
    CHECK(log.contains("indecipherable address ::1"));
    p.connectionLost(Failure(error::ConnectionDone()));
}

}  // TEST_SUITE irc

// ---- IRCv3: capability negotiation, SASL, message tags (not in Twisted) ----

namespace {

/// Records the IRCv3 callbacks too.
struct V3 : Recorder {
    using Recorder::Recorder;
    static std::string all(const std::vector<std::string>& v) {
        std::string s;
        for (const auto& x : v) s += (s.empty() ? "" : " ") + x;
        return s;
    }
    void capsEnabled(const std::vector<std::string>& caps) override { rec("capsEnabled", {all(caps)}); }
    void capsRefused(const std::vector<std::string>& caps) override { rec("capsRefused", {all(caps)}); }
    void capsDisabled(const std::vector<std::string>& caps) override { rec("capsDisabled", {all(caps)}); }
    void loggedIn(const std::string& a) override { rec("loggedIn", {a}); }
    int saslFailures = 0;
    void saslFailed(const std::string& reason) override {
        ++saslFailures;
        rec("saslFailed", {reason});
        IRCClient::saslFailed(reason);
    }
    void userAway(const std::string& u, const std::optional<std::string>& m) override { rec("userAway", {u, q(m)}); }
    void userAccount(const std::string& u, const std::optional<std::string>& a) override { rec("userAccount", {u, q(a)}); }
    void extendedJoin(const std::string& u, const std::string& c, const std::optional<std::string>& a,
                      const std::string& r) override {
        rec("extendedJoin", {u, c, q(a), r});
    }
    void tagMessage(const std::string& u, const std::string& t) override {
        std::string tagText;
        for (const auto& tg : tags()) tagText += tg.first + "=" + tg.second + ";";
        rec("tagMessage", {u, t, tagText});
    }
    std::optional<double> lastTime;
    void privmsg(const std::string& u, const std::string& c, const std::string& m) override {
        lastTime = serverTime();
        Recorder::privmsg(u, c, m);
    }
};

}  // namespace

TEST_SUITE("irc") {

TEST_CASE("IRCv3: CAP LS 302 over continuation lines, REQ, ACK, SASL PLAIN, CAP END (the specifications' examples)") {
    // The exchanges of ircv3.net's capability-negotiation and sasl-3.1
    // specifications (their examples: the LS lines, and jilles/sesame).
    Clock clock;
    StringTransport t;
    V3 p(&clock);
    p.nickname = "jilles";
    p.heartbeatInterval = 0;
    p.saslUsername = "jilles";
    p.saslPassword = "sesame";
    p.makeConnection(&t);
    CHECK(t.value() == "CAP LS 302\r\nNICK jilles\r\nUSER jilles foo bar :jilles\r\n");
    t.clear();
    p.lineReceived(":irc.example.com CAP * LS * :multi-prefix extended-join account-notify batch invite-notify tls");
    p.lineReceived(":irc.example.com CAP * LS * :cap-notify server-time example.org/dummy-cap=dummyvalue "
                   "example.org/second-dummy-cap");
    CHECK(t.value().empty());  // waits for the last LS line
    p.lineReceived(":irc.example.com CAP * LS :userhost-in-names sasl=EXTERNAL,DH-AES,DH-BLOWFISH,"
                   "ECDSA-NIST256P-CHALLENGE,PLAIN");
    CHECK(t.value() == "CAP REQ :multi-prefix extended-join account-notify cap-notify server-time sasl\r\n");
    REQUIRE(p.availableCaps().size() == 12);
    CHECK(p.availableCaps()[8] == std::pair<std::string, std::string>{"example.org/dummy-cap", "dummyvalue"});
    t.clear();
    p.lineReceived(":irc.example.com CAP * ACK :multi-prefix extended-join account-notify cap-notify server-time sasl");
    CHECK(p.last() == "capsEnabled(multi-prefix extended-join account-notify cap-notify server-time sasl)");
    CHECK(t.value() == "AUTHENTICATE PLAIN\r\n");
    t.clear();
    p.lineReceived("AUTHENTICATE +");
    CHECK(t.value() == "AUTHENTICATE amlsbGVzAGppbGxlcwBzZXNhbWU=\r\n");
    t.clear();
    p.lineReceived(":irc.example.com 900 jilles jilles!jilles@localhost.stack.nl jilles :You are now logged in as jilles");
    CHECK(p.last() == "loggedIn(jilles)");
    CHECK(p.account() == "jilles");
    CHECK(t.value().empty());
    p.lineReceived(":irc.example.com 903 jilles :SASL authentication successful");
    CHECK(t.value() == "CAP END\r\n");
    t.clear();
    p.lineReceived(":irc.example.com 001 jilles :Welcome");
    CHECK(p.registered());
    CHECK(p.capEnabled("server-time"));
    CHECK_FALSE(p.capEnabled("tls"));

    // server-time (its specification's example): the time is the callback's.
    p.lineReceived("@time=2011-10-19T16:40:51.620Z :Angel!angel@example.org PRIVMSG Wiz :Hello");
    REQUIRE(p.lastTime.has_value());
    CHECK(*p.lastTime == doctest::Approx(1319042451.620));
    p.lineReceived(":Angel!angel@example.org PRIVMSG Wiz :untimed");
    CHECK_FALSE(p.lastTime.has_value());
    p.lineReceived("@time=yesterday :Angel!angel@example.org PRIVMSG Wiz :bad");
    CHECK_FALSE(p.lastTime.has_value());

    // extended-join, account-notify; multi-prefix names arrive as sent.
    p.lineReceived(":bob!b@h JOIN #c bobacct :Bob Builder");
    CHECK(p.calls[p.calls.size() - 2] == "userJoined(bob, #c)");
    CHECK(p.last() == "extendedJoin(bob, #c, bobacct, Bob Builder)");
    p.lineReceived(":eve!e@h JOIN #c * :Eve");
    CHECK(p.last() == "extendedJoin(eve, #c, None, Eve)");
    p.lineReceived(":bob!b@h ACCOUNT *");
    CHECK(p.last() == "userAccount(bob, None)");
    p.lineReceived(":bob!b@h ACCOUNT bob2");
    CHECK(p.last() == "userAccount(bob, bob2)");
    p.lineReceived(":irc.example.com 353 jilles = #c :@+bob jilles");
    p.lineReceived(":irc.example.com 366 jilles #c :End");
    CHECK(p.last() == "receivedNames(#c, @+bob jilles)");

    // cap-notify: NEW is requested if wanted, DEL turns a capability off.
    p.lineReceived(":irc.example.com CAP jilles NEW :message-tags away-notify batch");
    CHECK(t.value() == "CAP REQ :message-tags away-notify\r\n");
    t.clear();
    p.lineReceived(":irc.example.com CAP jilles ACK :message-tags away-notify");
    CHECK(t.value().empty());  // registered: no CAP END now
    p.lineReceived(":bob!b@h AWAY :gone fishing");
    CHECK(p.last() == "userAway(bob, gone fishing)");
    p.lineReceived(":bob!b@h AWAY");
    CHECK(p.last() == "userAway(bob, None)");
    p.lineReceived(":irc.example.com CAP jilles DEL :away-notify");
    CHECK(p.last() == "capsDisabled(away-notify)");
    CHECK_FALSE(p.capEnabled("away-notify"));
    p.connectionLost(Failure(error::ConnectionDone()));
}

TEST_CASE("IRCv3 message-tags: received tags unescaped (the specification's examples), client tags sent escaped") {
    Clock clock;
    StringTransport t;
    V3 p(&clock);
    p.nickname = "me";
    p.heartbeatInterval = 0;
    p.makeConnection(&t);
    p.lineReceived(":srv CAP * LS :message-tags");
    p.lineReceived(":srv CAP * ACK :message-tags");
    t.clear();
    p.lineReceived("@aaa=bbb;ccc;example.com/ddd=eee :nick!ident@host.com TAGMSG me");
    CHECK(p.last() == "tagMessage(nick!ident@host.com, me, aaa=bbb;ccc=;example.com/ddd=eee;)");
    p.lineReceived("@+example=raw+:=,escaped\\:\\s\\\\ :irc.example.com TAGMSG #channel");
    CHECK(p.last() == "tagMessage(irc.example.com, #channel, +example=raw+:=,escaped; \\;)");

    CHECK(p.sendWithTags({{"+example.com/note", "a; b\\c\r\n"}, {"+typing", ""}}, "TAGMSG #c"));
    CHECK(t.value() == "@+example.com/note=a\\:\\sb\\\\c\\r\\n;+typing TAGMSG #c\r\n");
    t.clear();
    test::LogCapture log;
    CHECK_FALSE(p.sendWithTags({{"bad key", "x"}}, "TAGMSG #c"));
    CHECK_FALSE(p.sendWithTags({{"+k", std::string(5000, 'v')}}, "TAGMSG #c"));
    CHECK_FALSE(p.sendWithTags({{"+k", "v"}}, "TAGMSG #c\r\nQUIT"));
    CHECK(t.value().empty());
    // The 510-byte cap applies to the line after the tags.
    CHECK(p.sendWithTags({{"+k", std::string(1000, 'v')}}, "PRIVMSG #c :" + std::string(600, 'x')));
    std::string sent = t.value();
    CHECK(sent.size() == std::string("@+k=").size() + 1000 + 1 + 510 + 2);
    t.clear();
    // Without message-tags the server would choke on them: refused.
    StringTransport t2;
    V3 plain(&clock);
    plain.heartbeatInterval = 0;
    plain.makeConnection(&t2);
    t2.clear();
    CHECK_FALSE(plain.sendWithTags({{"+typing", "active"}}, "TAGMSG #c"));
    CHECK(t2.value().empty());
    CHECK(log.contains("has not enabled message-tags"));
    plain.connectionLost(Failure(error::ConnectionDone()));
    p.connectionLost(Failure(error::ConnectionDone()));
}

TEST_CASE("IRCv3 degrades cleanly: a server without CAP (421, or silence), NAK, or nothing we want") {
    Clock clock;
    {  // 421: nothing waits for CAP; no CAP END is sent.
        StringTransport t;
        V3 p(&clock);
        p.nickname = "me";
        p.heartbeatInterval = 0;
        p.makeConnection(&t);
        t.clear();
        p.lineReceived(":old.server 421 me CAP :Unknown command");
        p.lineReceived(":old.server 001 me :Welcome");
        CHECK(p.last() == "signedOn()");
        CHECK(t.value().empty());
        CHECK(p.enabledCaps().empty());
        p.connectionLost(Failure(error::ConnectionDone()));
    }
    {  // NAK: refused, then CAP END.
        StringTransport t;
        V3 p(&clock);
        p.heartbeatInterval = 0;
        p.makeConnection(&t);
        p.lineReceived(":srv CAP * LS :multi-prefix");
        t.clear();
        p.lineReceived(":srv CAP * NAK :multi-prefix");
        CHECK(p.last() == "capsRefused(multi-prefix)");
        CHECK(t.value() == "CAP END\r\n");
        p.connectionLost(Failure(error::ConnectionDone()));
    }
    {  // Nothing we want (and sasl without credentials): CAP END at once.
        StringTransport t;
        V3 p(&clock);
        p.heartbeatInterval = 0;
        p.makeConnection(&t);
        t.clear();
        p.lineReceived(":srv CAP * LS :tls sasl=PLAIN");
        CHECK(t.value() == "CAP END\r\n");
        p.connectionLost(Failure(error::ConnectionDone()));
    }
    {  // capNegotiation = false: not a word of CAP.
        StringTransport t;
        V3 p(&clock);
        p.heartbeatInterval = 0;
        p.capNegotiation = false;
        p.makeConnection(&t);
        CHECK(t.value() == "NICK irc\r\nUSER irc foo bar :irc\r\n");
        p.connectionLost(Failure(error::ConnectionDone()));
    }
}

TEST_CASE("IRCv3 SASL failure: one saslFailed, QUIT and close; never a second attempt") {
    Clock clock;
    StringTransport t;
    V3 p(&clock);
    p.nickname = "me";
    p.heartbeatInterval = 0;
    p.saslUsername = "me";
    p.saslPassword = "wrong";
    p.makeConnection(&t);
    p.lineReceived(":srv CAP * LS :sasl");  // no mechanism list: PLAIN is tried
    p.lineReceived(":srv CAP * ACK :sasl");
    p.lineReceived("AUTHENTICATE +");
    t.clear();
    test::LogCapture log;
    p.lineReceived(":srv 904 me :SASL authentication failed");
    CHECK(p.saslFailures == 1);
    CHECK(p.last() == "saslFailed(SASL authentication failed)");
    CHECK(t.value() == "QUIT :SASL authentication failed\r\n");
    CHECK(t.disconnecting);
    CHECK(log.contains("SASL authentication failed"));
    t.clear();
    p.lineReceived(":srv 904 me :SASL authentication failed");  // again: ignored
    p.lineReceived("AUTHENTICATE +");                            // a confused server: no payload again
    p.lineReceived(":srv 903 me :done?");
    CHECK(p.saslFailures == 1);
    CHECK(t.value().empty());
    p.connectionLost(Failure(error::ConnectionDone()));
}

TEST_CASE("IRCv3 over loopback: a scripted server does CAP and SASL; success signs on, failure stops cleanly") {
    test::CleanReactor cr;
    Reactor& r = cr.r;
    // The server: the specifications' exchange, with the credentials checked.
    Script script;
    const std::string good = "AUTHENTICATE " + irc::detail::base64(std::string("alice\0alice\0pw", 14));
    script.onLine = [&](ScriptConn& c, const std::string& line) {
        if (line == "CAP LS 302") c.send(":irc.test CAP * LS :message-tags server-time sasl=PLAIN");
        else if (line.rfind("CAP REQ :", 0) == 0) c.send(":irc.test CAP * ACK :" + line.substr(9));
        else if (line == "AUTHENTICATE PLAIN") c.send("AUTHENTICATE +");
        else if (line == good) {
            c.send(":irc.test 900 alice alice!a@h alice :You are now logged in as alice");
            c.send(":irc.test 903 alice :SASL authentication successful");
        } else if (line.rfind("AUTHENTICATE ", 0) == 0) {
            c.send(":irc.test 904 alice :SASL authentication failed");
        } else if (line == "CAP END") {
            c.send(":irc.test 001 alice :Welcome");
            c.send("@time=2026-12-06T05:00:00.000Z;+x=y :bob!b@h PRIVMSG alice :tagged hello");
        } else if (line.rfind("QUIT", 0) == 0) {
            c.transport->loseConnection();
        }
    };
    Factory serverFactory;
    serverFactory.protocol = [&] { return std::make_unique<ScriptConn>(script); };
    ListeningPort port = r.listenTCP(0, serverFactory, {"127.0.0.1"});

    for (const char* password : {"pw", "nope"}) {
        CAPTURE(password);
        script.received.clear();
        script.closed = false;
        Seen saw;
        struct Client : V3 {
            Seen* seen = nullptr;
            using V3::V3;
            void signedOn() override { seen->events.push_back("signedOn"); }
            void privmsg(const std::string& u, const std::string& c, const std::string& m) override {
                V3::privmsg(u, c, m);
                std::string x;
                for (const auto& tg : tags()) x += tg.first + "=" + tg.second + ";";
                seen->events.push_back("privmsg " + m + " " + x);
            }
            void connectionLost(const Failure& reason) override {
                V3::connectionLost(reason);
                seen->events.push_back("connectionLost");
            }
        };
        ClientFactory clients;
        int made = 0;
        clients.protocol = [&]() -> std::unique_ptr<Protocol> {
            ++made;
            auto p = std::make_unique<Client>(&r);
            p->seen = &saw;
            p->nickname = "alice";
            p->saslUsername = "alice";
            p->saslPassword = password;
            return p;
        };
        test::LogCapture log;
        r.connectTCP("127.0.0.1", port.getHost().port, clients);
        if (std::string(password) == "pw") {
            REQUIRE(testing::runUntil(r, [&] { return saw.events.size() >= 2; }, 10));
            CHECK(saw.events[0] == "signedOn");
            CHECK(saw.events[1] == "privmsg tagged hello time=2026-12-06T05:00:00.000Z;+x=y;");
            CHECK(script.has("CAP REQ :message-tags server-time sasl"));
            CHECK(script.has("CAP END"));
            REQUIRE(script.received.size() >= 7);
            CHECK(script.received[0] == "CAP LS 302");  // before NICK/USER: the server waits for CAP END
            r.disconnectAll();
            port = r.listenTCP(0, serverFactory, {"127.0.0.1"});
        } else {
            REQUIRE(testing::runUntil(r, [&] { return saw.has("connectionLost"); }, 10));
            CHECK_FALSE(saw.has("signedOn"));
            CHECK(log.contains("SASL authentication failed"));
            CHECK(std::count(script.received.begin(), script.received.end(), "AUTHENTICATE PLAIN") == 1);
            CHECK(script.received.back() == "QUIT :SASL authentication failed");
            CHECK_FALSE(script.has("CAP END"));
            CHECK(made == 1);
        }
    }
    port.stopListening();
    CHECK(testing::runUntilClean(r));
}

}  // TEST_SUITE irc

TEST_SUITE("irc") {

TEST_CASE("an over-long line of invalid UTF-8 is cut at 510 bytes, not walked back to a character start") {
    // Found by fuzz_ircclient: a run of continuation bytes (0x80..0xBF, not
    // UTF-8) made the cut walk back past the parameters before it.
    StringTransport t;
    IRCClient p;
    p.capNegotiation = false;
    p.makeConnection(&t);
    t.clear();
    test::LogCapture log;
    REQUIRE(p.sendLine("USER u " + std::string(600, '\xb8') + " bar :x"));
    std::vector<std::string> sent = lines(t.value());
    REQUIRE(sent.size() == 1);
    CHECK(sent[0].size() == IRCClient::maxLineBytes);
    t.clear();
    // Valid UTF-8 is still never cut inside a character ("é" is 2 bytes).
    std::string e;
    for (int i = 0; i < 300; ++i) e += "\xc3\xa9";
    REQUIRE(p.sendLine("PRIVMSG #c :" + e));
    sent = lines(t.value());
    REQUIRE(sent.size() == 1);
    CHECK(sent[0].size() <= IRCClient::maxLineBytes);
    CHECK(sent[0].size() + 1 >= IRCClient::maxLineBytes);
    CHECK(static_cast<unsigned char>(sent[0].back()) == 0xa9);
    p.connectionLost(Failure(error::ConnectionDone()));
}

}  // TEST_SUITE irc

TEST_SUITE("irc") {

TEST_CASE("Reactor::stopping: true from stop() until run() returns, seen by shutdown triggers") {
    test::CleanReactor cr;
    Reactor& r = cr.r;
    std::vector<std::string> seen;
    auto note = [&](const char* where) { seen.push_back(std::string(where) + (r.stopping() ? " stopping" : " not")); };
    TriggerId before = r.addSystemEventTrigger("before", "shutdown", [&] { note("before"); });
    TriggerId after = r.addSystemEventTrigger("after", "shutdown", [&] { note("after"); });
    note("idle");
    r.callLater(0, [&] {
        note("running");
        r.stop();
        note("stop()");
    });
    r.run();
    note("returned");
    CHECK(seen == std::vector<std::string>{"idle not", "running not", "stop() stopping", "before stopping",
                                           "after stopping", "returned not"});
    r.removeSystemEventTrigger(before);
    r.removeSystemEventTrigger(after);
}

}  // TEST_SUITE irc
