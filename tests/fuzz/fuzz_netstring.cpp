// libFuzzer target for NetstringReceiver (and the IntN receivers): the same
// random stream fed whole and in random chunks must give the same strings
// and the same verdict as a plain reference parser; a stream that breaks
// the peer delivers nothing after the bad byte; what sendString writes
// parses back to the same strings. MAX_LENGTH is sometimes huge (up to
// SIZE_MAX, "no limit") and the stream sometimes has long digit runs: the
// reference counts in 128 bits, so a length past SIZE_MAX cannot wrap.
//
//   make fuzz FUZZ_SECONDS=60      (or build/fuzz/fuzz_netstring -help=1)
#include <fuzzer/FuzzedDataProvider.h>

#include <cstdlib>
#include <limits>
#include <string>
#include <vector>

#include "reactor.hpp"

namespace {

void check(bool ok, const char* what) {
    if (!ok) {
        std::fprintf(stderr, "invariant broken: %s\n", what);
        std::abort();
    }
}

struct Strings : reactor::NetstringReceiver {
    std::vector<std::string> got;
    void stringReceived(std::string_view s) override {
        check(s.size() <= MAX_LENGTH, "string over MAX_LENGTH");
        got.emplace_back(s);
    }
};

struct Prefixed : reactor::Int16StringReceiver {
    std::vector<std::string> got;
    void stringReceived(std::string_view s) override { got.emplace_back(s); }
};

/// The netstring grammar, written the obvious way over the whole input.
void reference(std::string_view in, std::size_t max, std::vector<std::string>& out, bool& broken) {
    std::size_t i = 0;
    broken = false;
    while (i < in.size()) {
        unsigned __int128 len = 0;  // at most max * 10 + 9 before the check: no wrap
        std::size_t digits = 0;
        while (i < in.size() && in[i] >= '0' && in[i] <= '9') {
            if (digits == 1 && len == 0) return void(broken = true);
            len = len * 10 + static_cast<unsigned>(in[i] - '0');
            ++digits;
            ++i;
            if (len > max) return void(broken = true);
        }
        if (i == in.size()) return;  // incomplete length
        if (in[i] != ':' || digits == 0) return void(broken = true);
        ++i;
        if (in.size() - i < len) return;  // incomplete string
        std::string_view s = in.substr(i, static_cast<std::size_t>(len));
        i += static_cast<std::size_t>(len);
        if (i == in.size()) return;  // no comma yet
        if (in[i] != ',') return void(broken = true);
        ++i;
        out.emplace_back(s);
    }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    static bool quiet = (reactor::setLogger([](reactor::LogLevel, std::string_view) {}), true);
    (void)quiet;
    FuzzedDataProvider fdp(data, size);
    std::size_t max;
    switch (fdp.ConsumeIntegralInRange<int>(0, 7)) {
        case 0: max = std::numeric_limits<std::size_t>::max(); break;  // "no limit"
        case 1: max = std::numeric_limits<std::size_t>::max() - fdp.ConsumeIntegralInRange<std::size_t>(0, 20); break;
        case 2: max = fdp.ConsumeIntegral<std::size_t>(); break;
        default: max = fdp.ConsumeIntegralInRange<std::size_t>(0, 300); break;
    }
    const std::vector<std::uint8_t> cutBytes = fdp.ConsumeBytes<std::uint8_t>(32);
    std::string stream;
    if (fdp.ConsumeBool()) {
        stream = fdp.ConsumeRemainingBytesAsString();
    } else {  // pieces: netstrings, digit runs (long lengths), garbage
        while (fdp.remaining_bytes() > 0) {
            switch (fdp.ConsumeIntegralInRange<int>(0, 3)) {
                case 0: {
                    std::string s = fdp.ConsumeRandomLengthString(40);
                    stream += std::to_string(s.size()) + ":" + s + ",";
                    break;
                }
                case 1: {
                    std::string digits = fdp.ConsumeRandomLengthString(30);
                    for (char& c : digits) c = static_cast<char>('0' + static_cast<unsigned char>(c) % 10);
                    stream += digits;
                    break;
                }
                default: stream += fdp.ConsumeRandomLengthString(8); break;
            }
        }
    }

    std::vector<std::string> expected;
    bool broken = false;
    reference(stream, max, expected, broken);

    for (int pass = 0; pass < 2; ++pass) {  // whole, then chunked
        reactor::StringTransport t;
        Strings p;
        p.MAX_LENGTH = max;
        p.makeConnection(&t);
        std::size_t at = 0, k = 0;
        while (at < stream.size()) {
            std::size_t n = pass == 0 || cutBytes.empty() ? stream.size() : 1 + cutBytes[k++ % cutBytes.size()] % 16;
            n = std::min(n, stream.size() - at);
            p.dataReceived(std::string_view(stream).substr(at, n));
            at += n;
        }
        check(p.got == expected, "strings differ from the reference");
        check(p.brokenPeer == broken, "verdict differs from the reference");
        check(p.brokenPeer == t.disconnecting, "broken peer without loseConnection");
    }

    // Round trips: sendString output parses back, for netstrings and Int16.
    std::vector<std::string> sent;
    for (std::size_t at = 0; at < stream.size() && sent.size() < 16; at += 7)
        sent.push_back(stream.substr(at, static_cast<std::size_t>(stream[at] & 0x3f)));
    reactor::StringTransport wire, wire16;
    Strings sender, receiver;
    Prefixed sender16, receiver16;
    sender.makeConnection(&wire);
    sender16.makeConnection(&wire16);
    for (auto& s : sent) {
        sender.sendString(s);
        sender16.sendString(s);
    }
    reactor::StringTransport sink;
    receiver.makeConnection(&sink);
    receiver16.makeConnection(&sink);
    for (std::size_t i = 0; i < wire.value().size(); i += 3) receiver.dataReceived(std::string_view(wire.value()).substr(i, 3));
    for (std::size_t i = 0; i < wire16.value().size(); i += 5)
        receiver16.dataReceived(std::string_view(wire16.value()).substr(i, 5));
    check(receiver.got == sent && !receiver.brokenPeer, "netstring round trip");
    check(receiver16.got == sent, "Int16 round trip");
    return 0;
}
