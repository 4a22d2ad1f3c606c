// The basic framing protocols (section 10): LineReceiver, LineOnlyReceiver,
// NetstringReceiver, Int32/16/8StringReceiver, and the chat server example.
// Most cases feed the same stream whole, byte by byte, split at every byte
// boundary and in seeded random chunkings, and require identical callbacks.
#include <cstdint>
#include <functional>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "support.hpp"

#define CHAT_SERVER_NO_MAIN
#include "examples/chat_server.cpp"

using namespace reactor;

namespace {

using Events = std::vector<std::string>;
using Cuts = std::vector<std::size_t>;  // chunk sizes

/// Every way of cutting `n` bytes the tests try: whole, byte by byte, two
/// pieces at each boundary, and 40 seeded random chunkings.
std::vector<Cuts> chunkings(std::size_t n) {
    std::vector<Cuts> all;
    all.push_back({n});
    all.push_back(Cuts(n, 1));
    for (std::size_t k = 1; k < n; ++k) all.push_back({k, n - k});
    std::mt19937 rng(20240611);
    for (int round = 0; round < 40; ++round) {
        Cuts cuts;
        std::size_t left = n;
        while (left > 0) {
            std::size_t piece = std::uniform_int_distribution<std::size_t>(1, std::min<std::size_t>(left, 7))(rng);
            cuts.push_back(piece);
            left -= piece;
        }
        all.push_back(cuts);
    }
    return all;
}

std::string describe(const Cuts& cuts) {
    std::string s;
    for (std::size_t c : cuts) s += std::to_string(c) + " ";
    return s;
}

/// A LineReceiver driven by the lines it receives, so that mode switches,
/// pauses and delimiter changes happen inside lineReceived:
///   "RAW n"      switch to raw mode for the next n bytes, then back
///   "PAUSE"      pauseProducing() (the driver resumes after each chunk)
///   "DELIM x"    delimiter = x ("\n" written as \n, "\r" as \r)
///   "QUIT"       transport->loseConnection()
struct ScriptedLines : LineReceiver {
    Events events;
    std::size_t rawLeft = 0;
    std::string rawGot;

    void lineReceived(std::string_view line) override {
        events.push_back("line:" + std::string(line));
        if (line.substr(0, 4) == "RAW ") {
            rawLeft = std::stoul(std::string(line.substr(4)));
            setRawMode();
        } else if (line == "PAUSE") {
            pauseProducing();
        } else if (line.substr(0, 6) == "DELIM ") {
            std::string d;
            for (std::size_t i = 6; i < line.size(); ++i) {
                if (line[i] == '\\' && i + 1 < line.size()) {
                    d += line[i + 1] == 'n' ? '\n' : line[i + 1] == 'r' ? '\r' : line[i + 1];
                    ++i;
                } else {
                    d += line[i];
                }
            }
            delimiter = d;
        } else if (line == "QUIT") {
            transport->loseConnection();
        }
    }
    void rawDataReceived(std::string_view data) override {
        std::size_t n = std::min(rawLeft, data.size());
        rawGot.append(data.substr(0, n));
        rawLeft -= n;
        if (rawLeft == 0) {
            events.push_back("raw:" + rawGot);
            rawGot.clear();
            setLineMode(data.substr(n));
        }
    }
    void lineLengthExceeded(std::string_view line) override {
        events.push_back("exceeded:" + std::string(line));
        LineReceiver::lineLengthExceeded(line);
    }
};

/// Feeds `stream` cut as `cuts`.
template <class P>
void feed(P& p, std::string_view stream, const Cuts& cuts) {
    std::size_t at = 0;
    for (std::size_t c : cuts) {
        p.dataReceived(stream.substr(at, c));
        at += c;
    }
}

/// The same, resuming a protocol that paused itself after each chunk.
template <class P>
void feedResuming(P& p, std::string_view stream, const Cuts& cuts) {
    std::size_t at = 0;
    for (std::size_t c : cuts) {
        p.dataReceived(stream.substr(at, c));
        at += c;
        while (p.paused()) p.resumeProducing();
    }
}

/// Runs `stream` through a fresh ScriptedLines for every chunking and checks
/// that all of them give the events of the one-chunk run. Returns those.
Events sameForEveryChunking(const std::string& stream, std::size_t maxLength = 16384,
                            const std::string& delimiter = "\r\n") {
    Events expected;
    bool first = true;
    for (const Cuts& cuts : chunkings(stream.size())) {
        StringTransport t;
        ScriptedLines p;
        p.MAX_LENGTH = maxLength;
        p.delimiter = delimiter;
        p.makeConnection(&t);
        feedResuming(p, stream, cuts);
        std::string rest = p.clearLineBuffer();
        p.events.push_back("rest:" + rest);
        if (first) {
            expected = p.events;
            first = false;
        } else {
            CHECK_MESSAGE(p.events == expected, "chunking: ", describe(cuts));
            if (p.events != expected) break;
        }
    }
    return expected;
}

}  // namespace

TEST_SUITE("basic") {

// ---- LineReceiver: the same callbacks however the stream is cut ---------

TEST_CASE("LineReceiver: lines, empty lines and a partial tail, any chunking") {
    Events e = sameForEveryChunking("hello\r\nworld\r\n\r\n\r\nlast\r\npartial\r");
    CHECK(e == Events{"line:hello", "line:world", "line:", "line:", "line:last", "rest:partial\r"});
}

TEST_CASE("LineReceiver: '\\n' delimiter leaves '\\r' in the line, any chunking") {
    Events e = sameForEveryChunking("a\r\nb\n\r\n\n", 16384, "\n");
    CHECK(e == Events{"line:a\r", "line:b", "line:\r", "line:", "rest:"});
}

TEST_CASE("LineReceiver: custom multi-byte and self-overlapping delimiters, any chunking") {
    Events e = sameForEveryChunking("a<EN<END>b<END<END><END>", 16384, "<END>");
    CHECK(e == Events{"line:a<EN", "line:b<END", "line:", "rest:"});
    e = sameForEveryChunking("xabababyabab", 16384, "abab");
    CHECK(e == Events{"line:x", "line:aby", "rest:"});
    e = sameForEveryChunking("11211112", 16384, "112");
    CHECK(e == Events{"line:", "line:11", "rest:"});
}

TEST_CASE("LineReceiver: raw mode switched from lineReceived and back, any chunking") {
    Events e = sameForEveryChunking("hdr\r\nRAW 10\r\n0123\r\n6789next\r\nRAW 3\r\nabc\r\nend\r\n");
    CHECK(e == Events{"line:hdr", "line:RAW 10", "raw:0123\r\n6789", "line:next", "line:RAW 3", "raw:abc",
                      "line:", "line:end", "rest:"});
}

TEST_CASE("LineReceiver: pause inside lineReceived, any chunking") {
    Events e = sameForEveryChunking("a\r\nPAUSE\r\nb\r\nc\r\nPAUSE\r\nPAUSE\r\nd\r\ne");
    CHECK(e == Events{"line:a", "line:PAUSE", "line:b", "line:c", "line:PAUSE", "line:PAUSE", "line:d", "rest:e"});
}

TEST_CASE("LineReceiver: delimiter changed inside lineReceived, any chunking") {
    Events e = sameForEveryChunking("a\r\nDELIM \\n\r\nb\nc\r\nDELIM ::\n::x::y:");
    CHECK(e == Events{"line:a", "line:DELIM \\n", "line:b", "line:c\r", "line:DELIM ::", "line:", "line:x",
                      "rest:y:"});
}

TEST_CASE("LineReceiver: loseConnection inside lineReceived stops delivery, any chunking") {
    Events e = sameForEveryChunking("a\r\nQUIT\r\nb\r\nc");
    CHECK(e == Events{"line:a", "line:QUIT", "rest:b\r\nc"});
}

TEST_CASE("LineReceiver: a MAX_LENGTH line is accepted, CR and LF split anywhere (#6556)") {
    Events e = sameForEveryChunking("xxxx\r\nyy\r\n\r\nzzzz\r", 4);
    CHECK(e == Events{"line:xxxx", "line:yy", "line:", "rest:zzzz\r"});
}

// ---- LineReceiver: MAX_LENGTH ---------------------------------------------

TEST_CASE("LineReceiver: MAX_LENGTH+1 with its delimiter: line + delimiter + rest, then close") {
    StringTransport t;
    ScriptedLines p;
    p.MAX_LENGTH = 4;
    p.makeConnection(&t);
    p.dataReceived("ok\r\nxxxxx\r\nrest\r\nmore");
    CHECK(p.events == Events{"line:ok", "exceeded:xxxxx\r\nrest\r\nmore"});
    CHECK(t.disconnecting);
    CHECK(p.bufferedSize() == 0);
    p.dataReceived("late\r\n");  // after loseConnection: never a line
    CHECK(p.events.size() == 2);
}

TEST_CASE("LineReceiver: no delimiter: fires at MAX_LENGTH + len(delimiter) bytes, not before") {
    for (std::size_t n : {4u, 5u}) {  // MAX and MAX+1: may still be a valid line
        StringTransport t;
        ScriptedLines p;
        p.MAX_LENGTH = 4;
        p.makeConnection(&t);
        p.dataReceived(std::string(n, 'x'));
        CHECK(p.events.empty());
        CHECK_FALSE(t.disconnecting);
    }
    {
        StringTransport t;
        ScriptedLines p;
        p.MAX_LENGTH = 4;
        p.makeConnection(&t);
        p.dataReceived("xxxx\r");  // a MAX line whose LF is still to come
        CHECK(p.events.empty());
        p.dataReceived("\n");
        CHECK(p.events == Events{"line:xxxx"});
    }
    {
        StringTransport t;
        ScriptedLines p;
        p.MAX_LENGTH = 4;
        p.makeConnection(&t);
        for (char c : std::string("xxxxxx")) p.dataReceived(std::string_view(&c, 1));
        CHECK(p.events == Events{"exceeded:xxxxxx"});  // at the 6th byte
        CHECK(t.disconnecting);
    }
    {
        StringTransport t;
        ScriptedLines p;
        p.MAX_LENGTH = 4;
        p.makeConnection(&t);
        p.dataReceived("xxxxx\r");  // MAX+1 and a partial delimiter: that's MAX + 2 bytes
        CHECK(p.events == Events{"exceeded:xxxxx\r"});
    }
}

TEST_CASE("LineReceiver: a 10 MB stream with no delimiter keeps the buffer bounded") {
    struct Counting : LineReceiver {
        std::size_t exceeded = 0, exceededBytes = 0, lines = 0;
        void lineReceived(std::string_view) override { ++lines; }
        void lineLengthExceeded(std::string_view line) override {  // keep going: do not close
            ++exceeded;
            exceededBytes += line.size();
        }
    };
    const std::size_t chunk = 65536, total = 10u << 20;
    std::string data(chunk, 'y');
    StringTransport t;
    Counting p;
    p.makeConnection(&t);
    std::size_t maxBuffered = 0;
    for (std::size_t sent = 0; sent < total; sent += chunk) {
        p.dataReceived(data);
        maxBuffered = std::max(maxBuffered, p.bufferedSize());
        if (sent == 0) CHECK(p.exceeded == 1);  // fires on the first read already
    }
    CHECK(maxBuffered <= p.MAX_LENGTH + 2 + chunk);
    CHECK(p.exceededBytes + p.bufferedSize() == total);  // nothing lost or duplicated
    CHECK(p.lines == 0);

    Counting q;  // byte by byte: fires every MAX_LENGTH + 2 bytes
    q.makeConnection(&t);
    std::size_t maxByteBuffered = 0;
    for (std::size_t i = 0; i < 1u << 20; ++i) {
        q.dataReceived(std::string_view(data.data(), 1));
        maxByteBuffered = std::max(maxByteBuffered, q.bufferedSize());
    }
    CHECK(maxByteBuffered == q.MAX_LENGTH + 1);
    CHECK(q.exceeded == (1u << 20) / (q.MAX_LENGTH + 2));
}

TEST_CASE("LineReceiver: many lines byte by byte and in one huge chunk (linear)") {
    struct Counting : LineReceiver {
        std::size_t lines = 0, bytes = 0;
        void lineReceived(std::string_view line) override {
            ++lines;
            bytes += line.size();
        }
    };
    std::string stream;
    for (int i = 0; i < 200000; ++i) stream += "line " + std::to_string(i) + "\r\n";
    StringTransport t;
    Counting whole, bytewise;
    whole.makeConnection(&t);
    bytewise.makeConnection(&t);
    whole.dataReceived(stream);
    for (char c : stream) bytewise.dataReceived(std::string_view(&c, 1));
    CHECK(whole.lines == 200000);
    CHECK(bytewise.lines == 200000);
    CHECK(whole.bytes == bytewise.bytes);
}

// ---- LineReceiver: callbacks that change things ---------------------------

TEST_CASE("LineReceiver: setRawMode inside lineReceived hands over the rest in the same call") {
    struct P : LineReceiver {
        Events events;
        void lineReceived(std::string_view line) override {
            events.push_back("line:" + std::string(line));
            setRawMode();
        }
        void rawDataReceived(std::string_view data) override { events.push_back("raw:" + std::string(data)); }
    } p;
    StringTransport t;
    p.makeConnection(&t);
    p.dataReceived("hdr\r\nbody1\r\nbody2");
    CHECK(p.events == Events{"line:hdr", "raw:body1\r\nbody2"});
    p.dataReceived("more");  // raw: delivered as is
    CHECK(p.events.back() == "raw:more");
    p.setLineMode("a\r\nb");  // from outside a callback: processed at once
    CHECK(p.events == Events{"line:hdr", "raw:body1\r\nbody2", "raw:more", "line:a", "raw:b"});
}

TEST_CASE("LineReceiver: clearLineBuffer inside lineReceived returns the rest") {
    struct P : LineReceiver {
        Events events;
        void lineReceived(std::string_view line) override {
            events.push_back("line:" + std::string(line));
            events.push_back("cleared:" + clearLineBuffer());
            events.push_back("still:" + std::string(line));  // the view is still valid
        }
    } p;
    StringTransport t;
    p.makeConnection(&t);
    p.dataReceived("foo\r\nbar\r\nbaz");
    CHECK(p.events == Events{"line:foo", "cleared:bar\r\nbaz", "still:foo"});
    CHECK(p.bufferedSize() == 0);
    p.dataReceived("next\r\n");
    CHECK(p.events[3] == "line:next");
}

TEST_CASE("LineReceiver: pauseProducing holds lines, resumeProducing delivers them in order") {
    struct P : LineReceiver {
        Events events;
        void lineReceived(std::string_view line) override {
            events.push_back(std::string(line));
            if (line == "stop") pauseProducing();
        }
    } p;
    StringTransport t;
    p.makeConnection(&t);
    p.dataReceived("a\r\nstop\r\nb\r\nc");
    CHECK(p.events == Events{"a", "stop"});
    CHECK(t.producerState == "paused");
    p.dataReceived("\r\nd\r\n");  // arrives while paused: held behind the rest
    CHECK(p.events.size() == 2);
    CHECK(p.bufferedSize() == std::string("b\r\nc\r\nd\r\n").size());
    p.resumeProducing();
    CHECK(t.producerState == "producing");
    CHECK(p.events == Events{"a", "stop", "b", "c", "d"});
    CHECK(p.bufferedSize() == 0);
}

TEST_CASE("LineReceiver: resume inside the callback that paused continues at once") {
    struct P : LineReceiver {
        Events events;
        void lineReceived(std::string_view line) override {
            events.push_back(std::string(line));
            pauseProducing();
            resumeProducing();
        }
    } p;
    StringTransport t;
    p.makeConnection(&t);
    p.dataReceived("a\r\nb\r\nc\r\n");
    CHECK(p.events == Events{"a", "b", "c"});
}

TEST_CASE("LineReceiver: data fed re-entrantly from lineReceived keeps its order") {
    struct P : LineReceiver {
        Events events;
        bool injected = false;
        void lineReceived(std::string_view line) override {
            events.push_back(std::string(line));
            if (!injected) {
                injected = true;
                dataReceived("x\r\ny");  // queued behind what is already buffered
            }
        }
    } p;
    StringTransport t;
    p.makeConnection(&t);
    p.dataReceived("a\r\nb\r\nc");  // "x\r\ny" lands after "c"
    CHECK(p.events == Events{"a", "b", "cx"});
    p.dataReceived("\r\n");
    CHECK(p.events == Events{"a", "b", "cx", "y"});
}

TEST_CASE("LineReceiver: sendLine appends the delimiter") {
    struct P : LineReceiver {
        void lineReceived(std::string_view) override {}
    } p;
    StringTransport t;
    p.makeConnection(&t);
    p.sendLine("hello");
    p.delimiter = "\n";
    p.sendLine("");
    CHECK(t.value() == "hello\r\n\n");
}

#if REACTOR_HAS_EXCEPTIONS
TEST_CASE("LineReceiver: a throwing lineReceived leaves the receiver usable, bytes in order") {
    struct P : LineReceiver {
        Events events;
        void lineReceived(std::string_view line) override {
            events.push_back(std::string(line));
            if (line == "boom") {
                dataReceived("q");
                throw error::ValueError("boom");
            }
        }
    } p;
    StringTransport t;
    p.makeConnection(&t);
    CHECK_THROWS_AS(p.dataReceived("boom\r\nz"), error::ValueError);
    p.dataReceived("\r\n");
    CHECK(p.events == Events{"boom", "zq"});
}
#endif

// ---- LineOnlyReceiver -------------------------------------------------------

namespace {
struct LinesOnly : LineOnlyReceiver {
    Events events;
    bool closeOnExceed = true;
    void lineReceived(std::string_view line) override {
        events.push_back("line:" + std::string(line));
        if (line == "QUIT") transport->loseConnection();
    }
    void lineLengthExceeded(std::string_view line) override {
        events.push_back("exceeded:" + std::string(line));
        if (closeOnExceed) LineOnlyReceiver::lineLengthExceeded(line);
    }
};
}  // namespace

TEST_CASE("LineOnlyReceiver: the same lines for every chunking") {
    const std::string stream = "one\r\n\r\ntwo\r\nthree\r\r\n\nfour\r\nQUIT\r\nlost\r\ntail";
    Events expected;
    bool first = true;
    for (const Cuts& cuts : chunkings(stream.size())) {
        StringTransport t;
        LinesOnly p;
        p.makeConnection(&t);
        feed(p, stream, cuts);
        if (first) {
            expected = p.events;
            first = false;
        }
        CHECK_MESSAGE(p.events == expected, describe(cuts));
    }
    CHECK(expected == Events{"line:one", "line:", "line:two", "line:three\r", "line:\nfour", "line:QUIT"});
}

TEST_CASE("LineOnlyReceiver: an over-long line is passed alone and the rest of the read dropped") {
    StringTransport t;
    LinesOnly p;
    p.MAX_LENGTH = 4;
    p.makeConnection(&t);
    p.dataReceived("ok\r\nxxxxx\r\nnext\r\ntail");
    CHECK(p.events == Events{"line:ok", "exceeded:xxxxx"});
    CHECK(t.disconnecting);
    CHECK(p.bufferedSize() == 4);  // "tail" is kept, as Twisted
}

TEST_CASE("LineOnlyReceiver: an unterminated tail fires when strictly over MAX_LENGTH") {
    {
        StringTransport t;
        LinesOnly p;
        p.MAX_LENGTH = 4;
        p.makeConnection(&t);
        p.dataReceived("xxxx");
        CHECK(p.events.empty());
        p.dataReceived("\r");  // the partial delimiter counts
        CHECK(p.events == Events{"exceeded:xxxx\r"});
        CHECK(t.disconnecting);
    }
    {
        StringTransport t;
        LinesOnly p;
        p.MAX_LENGTH = 4;
        p.makeConnection(&t);
        p.dataReceived("xxxx\r\n");  // exactly MAX_LENGTH with its delimiter
        CHECK(p.events == Events{"line:xxxx"});
    }
}

TEST_CASE("LineOnlyReceiver: a 10 MB stream with no delimiter keeps the buffer bounded") {
    StringTransport t;
    LinesOnly p;
    p.closeOnExceed = false;
    p.makeConnection(&t);
    std::string chunk(65536, 'y');
    std::size_t maxBuffered = 0;
    for (int i = 0; i < 160; ++i) {
        p.dataReceived(chunk);
        maxBuffered = std::max(maxBuffered, p.bufferedSize());
    }
    CHECK(p.events.size() == 160);
    CHECK(maxBuffered <= p.MAX_LENGTH);
}

// ---- NetstringReceiver --------------------------------------------------

namespace {
struct Strings : NetstringReceiver {
    Events events;
    void stringReceived(std::string_view s) override { events.push_back(std::string(s)); }
};
}  // namespace

TEST_CASE("NetstringReceiver: strings for every chunking, empty ones included") {
    std::string stream = "3:abc,0:,12:hello\r\nworld,1:,,";
    for (const Cuts& cuts : chunkings(stream.size())) {
        StringTransport t;
        Strings p;
        p.makeConnection(&t);
        feed(p, stream, cuts);
        CHECK_MESSAGE((p.events == Events{"abc", "", "hello\r\nworld", ","}), describe(cuts));
        CHECK_FALSE(p.brokenPeer);
        CHECK_FALSE(t.disconnecting);
    }
}

TEST_CASE("NetstringReceiver: sendString") {
    StringTransport t;
    Strings p;
    p.makeConnection(&t);
    p.sendString("hello");
    p.sendString("");
    CHECK(t.value() == "5:hello,0:,");
}

TEST_CASE("NetstringReceiver: malformed input breaks the peer at the first bad byte") {
    struct Case {
        const char* input;
        std::size_t badAt;  // 1-based byte that makes it broken
        const char* reason;
        std::size_t delivered;
    };
    const Case cases[] = {
        {"01:a,", 2, "leading zero", 0},
        {"100000:", 6, "over MAX_LENGTH", 0},
        {"1234567", 6, "over MAX_LENGTH", 0},
        {":a,", 1, "missing length", 0},
        {"3:abcd,", 6, "missing ','", 0},
        {"2:ok,3x", 7, "invalid character", 1},
        {"-1:a,", 1, "invalid character", 0},
    };
    for (const Case& c : cases) {
        CAPTURE(c.input);
        std::string in = c.input;
        for (int bytewise = 0; bytewise < 2; ++bytewise) {
            test::LogCapture logs;
            StringTransport t;
            Strings p;
            p.makeConnection(&t);
            if (bytewise) {
                for (std::size_t i = 0; i < in.size(); ++i) {
                    p.dataReceived(std::string_view(in).substr(i, 1));
                    CHECK(p.brokenPeer == (i + 1 >= c.badAt));
                }
            } else {
                p.dataReceived(in);
            }
            CHECK(p.brokenPeer);
            CHECK(t.disconnecting);
            CHECK(p.events.size() == c.delivered);
            CHECK(logs.contains(c.reason));
            p.dataReceived("1:a,");  // ignored after the error
            CHECK(p.events.size() == c.delivered);
        }
    }
}

TEST_CASE("NetstringReceiver: exactly MAX_LENGTH is accepted") {
    StringTransport t;
    Strings p;
    p.MAX_LENGTH = 5;
    p.makeConnection(&t);
    p.dataReceived("5:12345,");
    CHECK(p.events == Events{"12345"});
    CHECK_FALSE(p.brokenPeer);
    test::LogCapture logs;
    p.dataReceived("6:");
    CHECK(p.brokenPeer);
}

TEST_CASE("NetstringReceiver: a length past SIZE_MAX is over MAX_LENGTH, not wrapped around") {
    // MAX_LENGTH = SIZE_MAX means "no limit"; the announced length must
    // still be compared as a number, not modulo 2^64 (or 2^32).
    const std::string max = std::to_string(std::numeric_limits<std::size_t>::max());
    std::string wrapsToOne = max;
    wrapsToOne.back() = static_cast<char>(wrapsToOne.back() + 2);  // ...615 + 2 (or ...295 + 2) = SIZE_MAX + 2
    for (const std::string& length : {wrapsToOne, max + "0", std::string(40, '9')}) {
        CAPTURE(length);
        test::LogCapture logs;
        StringTransport t;
        Strings p;
        p.MAX_LENGTH = std::numeric_limits<std::size_t>::max();
        p.makeConnection(&t);
        p.dataReceived(length + ":X,");
        CHECK(p.events.empty());
        CHECK(p.brokenPeer);
        CHECK(t.disconnecting);
        CHECK(logs.contains("over MAX_LENGTH"));
    }
    // SIZE_MAX itself is a length like any other: it waits for its bytes.
    StringTransport t;
    Strings p;
    p.MAX_LENGTH = std::numeric_limits<std::size_t>::max();
    p.makeConnection(&t);
    p.dataReceived(max + ":abc");
    CHECK_FALSE(p.brokenPeer);
    CHECK(p.bufferedSize() == 3);
}

// ---- IntNStringReceiver ---------------------------------------------------

namespace {
template <class Base>
struct Prefixed : Base {
    Events events;
    bool pauseOnEach = false;
    std::size_t exceeded = 0;
    void stringReceived(std::string_view s) override {
        events.push_back(std::string(s));
        if (pauseOnEach) this->pauseProducing();
    }
    void lengthLimitExceeded(std::size_t length) override {
        exceeded = length;
        Base::lengthLimitExceeded(length);
    }
};

template <class Base>
void checkIntN(std::size_t prefix) {
    StringTransport out;
    Prefixed<Base> sender;
    sender.makeConnection(&out);
    const std::vector<std::string> strings = {"hello", "", std::string(200, 'z'), "a\r\nb"};
    for (auto& s : strings) CHECK(sender.sendString(s));
    const std::string stream = out.value();
    std::size_t expectedSize = 0;
    for (auto& s : strings) expectedSize += prefix + s.size();
    CHECK(stream.size() == expectedSize);
    for (int pause = 0; pause < 2; ++pause) {
        for (const Cuts& cuts : chunkings(stream.size())) {
            StringTransport t;
            Prefixed<Base> p;
            p.pauseOnEach = pause == 1;
            p.makeConnection(&t);
            feedResuming(p, stream, cuts);
            CHECK_MESSAGE(p.events == Events(strings.begin(), strings.end()), describe(cuts));
        }
    }
}
}  // namespace

TEST_CASE("Int32/16/8StringReceiver: round trip for every chunking, with pauses") {
    checkIntN<Int32StringReceiver>(4);
    checkIntN<Int16StringReceiver>(2);
    checkIntN<Int8StringReceiver>(1);
}

TEST_CASE("IntNStringReceiver: the prefix is big-endian") {
    StringTransport t;
    Prefixed<Int32StringReceiver> p32;
    p32.makeConnection(&t);
    p32.sendString(std::string(258, 'a'));
    CHECK(t.value().substr(0, 4) == std::string("\0\0\x01\x02", 4));
    t.clear();
    Prefixed<Int16StringReceiver> p16;
    p16.makeConnection(&t);
    p16.sendString("abc");
    CHECK(t.value() == std::string("\0\x03" "abc", 5));
}

TEST_CASE("IntNStringReceiver: pauseProducing holds strings until resumeProducing") {
    StringTransport t;
    Prefixed<Int16StringReceiver> p;
    p.pauseOnEach = true;
    p.makeConnection(&t);
    p.dataReceived(std::string("\0\x01" "a\0\x01" "b\0\x00", 8));
    CHECK(p.events == Events{"a"});
    CHECK(t.producerState == "paused");
    p.resumeProducing();
    CHECK(p.events == Events{"a", "b"});
    p.resumeProducing();
    CHECK(p.events == Events{"a", "b", ""});
}

TEST_CASE("IntNStringReceiver: a prefix over MAX_LENGTH calls lengthLimitExceeded and closes") {
    StringTransport t;
    Prefixed<Int32StringReceiver> p;
    p.makeConnection(&t);
    p.dataReceived(std::string("\0\0\0\x02ok\0\x01\x86\xa0", 10));  // "ok", then 100000
    CHECK(p.events == Events{"ok"});
    CHECK(p.exceeded == 100000);
    CHECK(t.disconnecting);
    CHECK(p.bufferedSize() == 0);
    p.dataReceived(std::string("\0\0\0\x01x", 5));  // the stream lost its framing: ignored
    CHECK(p.events.size() == 1);

    StringTransport t2;
    Prefixed<Int32StringReceiver> q;
    q.makeConnection(&t2);
    q.dataReceived(std::string("\0\x01\x86\x9f", 4));  // 99999 = MAX_LENGTH: fine, waits for the bytes
    CHECK(q.exceeded == 0);
    CHECK_FALSE(t2.disconnecting);
}

TEST_CASE("IntNStringReceiver: sendString refuses what the prefix cannot encode") {
    StringTransport t;
    Prefixed<Int8StringReceiver> p8;
    p8.makeConnection(&t);
    CHECK(p8.sendString(std::string(255, 'a')));
    t.clear();
#if REACTOR_HAS_EXCEPTIONS
    CHECK_THROWS_WITH_AS(p8.sendString(std::string(256, 'a')), "Try to send 256 bytes whereas maximum is 256",
                         error::StringTooLongError);
    Prefixed<Int16StringReceiver> p16;
    p16.makeConnection(&t);
    CHECK_THROWS_AS(p16.sendString(std::string(65536, 'a')), error::ValueError);
    CHECK(p16.sendString(std::string(65535, 'a')));
    CHECK(t.value().size() == 65537);
#else
    test::LogCapture logs;
    CHECK_FALSE(p8.sendString(std::string(256, 'a')));
    CHECK(logs.contains("StringTooLongError: Try to send 256 bytes whereas maximum is 256"));
    CHECK(t.value().empty());
#endif
}

}  // TEST_SUITE basic

// ---- the chat server example, on StringTransports --------------------------

namespace {
/// A chat user on an in-memory transport whose loseConnection completes.
struct FakeUser {
    StringTransportWithDisconnection t;
    std::unique_ptr<Protocol> p;
    explicit FakeUser(ChatFactory& room) : p(room.buildProtocol(Address{})) {
        t.protocol = p.get();
        p->makeConnection(&t);
    }
    void say(std::string_view text) { p->dataReceived(text); }
    std::string heard() {
        std::string v = t.value();
        t.clear();
        return v;
    }
};
}  // namespace

TEST_SUITE("basic") {

TEST_CASE("chat: names, messages to everybody else, joins and leaves") {
    ChatFactory room;
    FakeUser alice(room), bob(room), carol(room);
    CHECK(alice.heard() == "What's your name?\n");
    bob.heard();
    carol.heard();
    alice.say("alice\r\n");  // "\r\n" and "\n" both end a line
    CHECK(alice.heard() == "Welcome, alice!\n");
    bob.say("al");
    bob.say("ice\n");
    CHECK(bob.heard() == "Name taken, please choose another.\n");
    bob.say("\nbob\n");
    CHECK(bob.heard() == "Names can't be empty. What's your name?\nWelcome, bob!\n");
    CHECK(alice.heard() == "* bob has joined\n");
    carol.say("carol\nhi all\nsecond");
    CHECK(alice.heard() == "* carol has joined\n<carol> hi all\n");
    CHECK(bob.heard() == "* carol has joined\n<carol> hi all\n");
    CHECK(carol.heard() == "Welcome, carol!\n");  // never her own lines
    carol.say(" line\n");
    CHECK(alice.heard() == "<carol> second line\n");
    CHECK(room.users.size() == 3);
    bob.t.loseConnection();
    CHECK(room.users.size() == 2);
    CHECK(alice.heard() == "* bob has left\n");
    CHECK(carol.heard() == "* bob has left\n");
}

TEST_CASE("chat: a line over the limit gets an error and the user is disconnected") {
    ChatFactory room;
    FakeUser alice(room), mallory(room);
    alice.say("alice\n");
    mallory.say("mallory\n");
    alice.heard();
    mallory.heard();
    mallory.say(std::string(300, 'x'));
    mallory.say(std::string(300, 'x'));  // 600 bytes, no newline: over 512 already
    CHECK(mallory.heard() == "Error: line too long (the limit is 512 bytes). Bye.\n");
    CHECK_FALSE(mallory.t.connected);
    CHECK(alice.heard() == "* mallory has left\n");
    CHECK(room.users.count("mallory") == 0);
}

}  // TEST_SUITE basic

// ---- the chat server on real loopback sockets -------------------------------

namespace {

/// What one chat client saw; outlives the protocol (the transport owns it).
struct ClientLog {
    std::vector<std::string> lines;
    ITransport* transport = nullptr;
    bool lost = false;
    std::size_t count(std::string_view prefix) const {
        std::size_t n = 0;
        for (auto& l : lines) n += l.compare(0, prefix.size(), prefix) == 0;
        return n;
    }
};

struct ChatClient : LineReceiver {
    std::shared_ptr<ClientLog> log;
    std::string name;
    ChatClient(std::shared_ptr<ClientLog> l, std::string n) : log(std::move(l)), name(std::move(n)) { delimiter = "\n"; }
    void connectionMade() override { log->transport = transport; }
    void lineReceived(std::string_view line) override {
        log->lines.emplace_back(line);
        if (line == "What's your name?") sendLine(name);
    }
    void connectionLost(const Failure&) override {
        log->lost = true;
        log->transport = nullptr;
    }
};

/// Makes ChatClients named user0, user1... in connection order.
struct ChatClients : ClientFactory {
    std::vector<std::shared_ptr<ClientLog>> logs;
    std::unique_ptr<Protocol> buildProtocol(const Address&) override {
        logs.push_back(std::make_shared<ClientLog>());
        return std::make_unique<ChatClient>(logs.back(), "user" + std::to_string(logs.size() - 1));
    }
};

/// Sends 10 MB with no newline as soon as it is connected.
struct Flooder : Protocol {
    std::shared_ptr<ClientLog> log;
    explicit Flooder(std::shared_ptr<ClientLog> l) : log(std::move(l)) {}
    void connectionMade() override {
        log->transport = transport;
        transport->write(std::string(10u << 20, 'x'));
    }
    void dataReceived(std::string_view data) override { log->lines.emplace_back(data); }
    void connectionLost(const Failure&) override {
        log->lost = true;
        log->transport = nullptr;
    }
};
struct FlooderFactory : ClientFactory {
    std::shared_ptr<ClientLog> log = std::make_shared<ClientLog>();
    std::unique_ptr<Protocol> buildProtocol(const Address&) override { return std::make_unique<Flooder>(log); }
};

/// The example's room, with each Chat reporting how big an over-long line got.
struct WatchedRoom : ChatFactory {
    std::vector<std::size_t> exceeded;  // sizes handed to lineLengthExceeded
    struct WatchedChat : Chat {
        WatchedRoom& room;
        explicit WatchedChat(WatchedRoom& r) : Chat(r), room(r) {}
        void lineLengthExceeded(std::string_view line) override {
            room.exceeded.push_back(line.size());
            Chat::lineLengthExceeded(line);
        }
    };
    std::unique_ptr<Protocol> buildProtocol(const Address&) override { return std::make_unique<WatchedChat>(*this); }
};

}  // namespace

TEST_SUITE("basic-sockets") {

TEST_CASE("chat server: 50 clients on 127.0.0.1, every line reaches the 49 others") {
    ChatFactory room;  // factories first: they must outlive the reactor's connections
    ChatClients clients;
    test::CleanReactor t;
    Reactor& r = t.r;
    ListeningPort port = r.listenTCP(0, room, 50, "127.0.0.1");
    REQUIRE(port.listening());
    const std::size_t n = 50;
    std::vector<std::shared_ptr<IConnector>> connectors;
    for (std::size_t i = 0; i < n; ++i) connectors.push_back(r.connectTCP("127.0.0.1", port.getHost().port, clients));
    REQUIRE(testing::runUntil(r, [&] { return room.users.size() == n; }, 20));
    for (auto& log : clients.logs) REQUIRE(log->transport);
    // Everybody speaks once; each message goes to the 49 others.
    for (std::size_t i = 0; i < n; ++i) {
        std::string line = "hello from user" + std::to_string(i) + "\n";
        clients.logs[i]->transport->write(line);
    }
    auto allHeard = [&] {
        for (auto& log : clients.logs)
            if (log->count("<user") < n - 1) return false;
        return true;
    };
    REQUIRE(testing::runUntil(r, allHeard, 20));
    for (std::size_t i = 0; i < n; ++i) {
        const ClientLog& log = *clients.logs[i];
        CHECK(log.count("<user") == n - 1);
        CHECK(log.count("Welcome, user" + std::to_string(i) + "!") == 1);
        for (std::size_t j = 0; j < n; ++j) {
            std::string expected = "<user" + std::to_string(j) + "> hello from user" + std::to_string(j);
            std::size_t seen = 0;
            for (auto& l : log.lines) seen += l == expected;
            CHECK(seen == (i == j ? 0u : 1u));
        }
    }
    // Everybody leaves; the last one hears the 48 others leave before it.
    for (std::size_t i = 0; i + 1 < n; ++i) clients.logs[i]->transport->loseConnection();
    REQUIRE(testing::runUntil(r, [&] { return room.users.size() == 1; }, 20));
    auto leftHeard = [&] {
        std::size_t left = 0;
        for (auto& l : clients.logs.back()->lines) left += l.find(" has left") != std::string::npos;
        return left;
    };
    REQUIRE(testing::runUntil(r, [&] { return leftHeard() == n - 1; }, 20));
    clients.logs.back()->transport->loseConnection();
    REQUIRE(testing::runUntil(r, [&] {
        for (auto& log : clients.logs)
            if (!log->lost) return false;
        return room.users.empty();
    }, 20));
    port.stopListening();
}

TEST_CASE("chat server: 10 MB without a newline is cut off early; others keep chatting") {
    WatchedRoom room;  // factories first: they must outlive the reactor's connections
    ChatClients clients;
    FlooderFactory flood;
    test::CleanReactor t;
    Reactor& r = t.r;
    ListeningPort port = r.listenTCP(0, room, 50, "127.0.0.1");
    r.connectTCP("127.0.0.1", port.getHost().port, clients);
    r.connectTCP("127.0.0.1", port.getHost().port, clients);
    REQUIRE(testing::runUntil(r, [&] { return room.users.size() == 2; }));

    r.connectTCP("127.0.0.1", port.getHost().port, flood);
    REQUIRE(testing::runUntil(r, [&] { return flood.log->lost && room.exceeded.size() == 1; }, 20));
    // Cut off after at most one read past the limit, not after 10 MB.
    CHECK(room.exceeded[0] > 512);
    CHECK(room.exceeded[0] <= 512 + 1 + REACTOR_READ_BUFFER_SIZE);

    clients.logs[0]->transport->write("still here?\n");
    REQUIRE(testing::runUntil(r, [&] { return clients.logs[1]->count("<user0> still here?") == 1; }));
    for (auto& log : clients.logs) log->transport->loseConnection();
    REQUIRE(testing::runUntil(r, [&] { return clients.logs[0]->lost && clients.logs[1]->lost && room.users.empty(); }));
    port.stopListening();
}

}  // TEST_SUITE basic-sockets

// ---- policies::TimeoutMixin ------------------------------------------------
// Twisted 22.4 (twisted.protocols.policies.TimeoutMixin), on a task.Clock:
//     p.callLater = clock.callLater; p.makeConnection(tr); p.setTimeout(10)
//     clock.advance(9.9)  -> still connected
//     p.dataReceived(b"x") (calls resetTimeout); clock.advance(9.9) -> connected
//     clock.advance(0.1)  -> p.timeoutConnection() -> tr.loseConnection()
//     p.setTimeout(None) returns the previous period (10) and cancels the call.

TEST_SUITE("policies") {

namespace {
/// Resets its idle timer on every byte; records timeouts.
struct Idle : policies::TimeoutMixin<Protocol> {
    int timeouts = 0;
    bool custom = false;
    explicit Idle(IReactorTime& clock) { timeoutClock = &clock; }
    void dataReceived(std::string_view) override { resetTimeout(); }
    void timeoutConnection() override {
        ++timeouts;
        if (!custom) TimeoutMixin::timeoutConnection();
    }
};
}  // namespace

TEST_CASE("TimeoutMixin: closes after the idle period, data restarts it") {
    Clock clock;
    StringTransport t;
    Idle p(clock);
    p.makeConnection(&t);
    CHECK(!p.setTimeout(10));  // no previous period
    clock.advance(9.9);
    CHECK(!t.disconnecting);
    p.dataReceived("x");
    clock.advance(9.9);
    CHECK(!t.disconnecting);
    clock.advance(0.1);
    CHECK(t.disconnecting);
    CHECK(p.timeouts == 1);
    CHECK(clock.getDelayedCalls().empty());  // fired once, not re-armed
    p.dataReceived("late");                  // resetTimeout with no timer: nothing
    CHECK(clock.getDelayedCalls().empty());
}

TEST_CASE("TimeoutMixin: setTimeout returns the previous period, changes or cancels a running timer") {
    Clock clock;
    StringTransport t;
    Idle p(clock);
    p.makeConnection(&t);
    p.setTimeout(10);
    clock.advance(5);
    CHECK(p.setTimeout(2) == std::optional<double>(10));  // restarted with the new period, from now
    clock.advance(1.9);
    CHECK(p.timeouts == 0);
    clock.advance(0.1);
    CHECK(p.timeouts == 1);
    p.setTimeout(3);  // no timer running: starts one
    CHECK(clock.getDelayedCalls().size() == 1);
    CHECK(p.setTimeout(std::nullopt) == std::optional<double>(3));
    CHECK(clock.getDelayedCalls().empty());
    clock.advance(100);
    CHECK(p.timeouts == 1);
}

TEST_CASE("TimeoutMixin: an overridden timeoutConnection decides; nothing fires after connectionLost or destruction") {
    Clock clock;
    {
        StringTransport t;
        Idle p(clock);
        p.custom = true;  // warn instead of closing, say
        p.makeConnection(&t);
        p.setTimeout(1);
        clock.advance(1);
        CHECK(p.timeouts == 1);
        CHECK(!t.disconnecting);
    }
    {
        StringTransport t;
        Idle p(clock);
        p.makeConnection(&t);
        p.setTimeout(1);
        p.connectionLost(Failure(error::ConnectionDone()));  // the timer goes with the connection
        CHECK(clock.getDelayedCalls().empty());
    }
    {
        StringTransport t;
        auto p = std::make_unique<Idle>(clock);
        p->makeConnection(&t);
        p->setTimeout(1);
        p.reset();  // destroyed with its timer pending
        CHECK(clock.getDelayedCalls().empty());
        clock.advance(2);  // would have called a dead object
    }
}

TEST_CASE("TimeoutMixin: setTimeout without a clock is a clear error") {
    StringTransport t;
    struct NoClock : policies::TimeoutMixin<Protocol> {} p;
    p.makeConnection(&t);
    CHECK_MISUSE_WITH(p.setTimeout(5), error::ValueError, "timeoutClock");
    CHECK(p.timeOut == std::optional<double>(5));
}

// On real sockets, over a LineReceiver: a client that goes quiet is closed
// by the server after the period; one that keeps talking is not.
TEST_CASE("TimeoutMixin over LineReceiver on loopback: the quiet client is dropped, the talkative one stays") {
    test::CleanReactor t;
    Reactor& r = t.r;
    struct Session : policies::TimeoutMixin<LineReceiver> {
        explicit Session(IReactorTime& clock) { timeoutClock = &clock; }
        void connectionMade() override { setTimeout(0.3); }
        void lineReceived(std::string_view line) override {
            resetTimeout();
            sendLine(line);
        }
        void timeoutConnection() override {
            sendLine("idle too long");  // still sent: loseConnection drains first
            TimeoutMixin::timeoutConnection();
        }
    };
    Factory server;
    server.protocol = [&r] { return std::make_unique<Session>(r); };
    ListeningPort port = r.listenTCP(0, server, {"127.0.0.1"});
    struct Log {  // outlives the protocol, which is destroyed after connectionLost
        std::string got;
        bool made = false, lost = false;
        ITransport* transport = nullptr;
    };
    struct Peer : Protocol {
        Log& log;
        explicit Peer(Log& l) : log(l) {}
        void connectionMade() override {
            log.made = true;
            log.transport = transport;
        }
        void dataReceived(std::string_view d) override { log.got.append(d); }
        void connectionLost(const Failure&) override {
            log.lost = true;
            log.transport = nullptr;
        }
    };
    Log quiet, talkative;
    ClientFactory qf, tf;
    qf.protocol = [&] { return std::make_unique<Peer>(quiet); };
    tf.protocol = [&] { return std::make_unique<Peer>(talkative); };
    r.connectTCP("127.0.0.1", port.getHost().port, qf);
    r.connectTCP("127.0.0.1", port.getHost().port, tf);
    REQUIRE(testing::runUntil(r, [&] { return quiet.made && talkative.made; }));
    // The talkative client says something every 0.1 s, for over twice the period.
    int said = 0;
    task::LoopingCall chatter(r, [&] {
        if (talkative.transport) talkative.transport->write("ping\r\n");
        ++said;
    });
    chatter.start(0.1);
    REQUIRE(testing::runUntil(r, [&] { return quiet.lost; }, 5));
    CHECK(quiet.got == "idle too long\r\n");
    REQUIRE(testing::runUntil(r, [&] { return said >= 7; }, 5));
    CHECK(!talkative.lost);
    CHECK(talkative.got.find("idle too long") == std::string::npos);
    CHECK(talkative.got.find("ping\r\n") == 0);
    chatter.stop();
    talkative.transport->loseConnection();
    REQUIRE(testing::runUntil(r, [&] { return talkative.lost; }));
    port.stopListening();
    CHECK(testing::runUntilClean(r));  // the server's side closes too, and its timer goes with it
}

}  // TEST_SUITE policies
