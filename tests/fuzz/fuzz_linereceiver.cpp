// libFuzzer target for LineReceiver: a random delimiter and MAX_LENGTH, a
// random stream cut into random chunks, and random actions inside the
// callbacks (raw mode, pause, a new delimiter, clearLineBuffer, re-entrant
// data). Invariants: every byte fed comes out exactly once and in order
// (lines + their delimiters, raw data, lineLengthExceeded arguments,
// clearLineBuffer results, and what is still buffered), lines are within
// MAX_LENGTH and hold no delimiter, and the buffer stays bounded.
//
// A reference model of the documented boundary (Twisted's, checked with
// Twisted 22.4: with MAX_LENGTH 5 and "\r\n", "12345\r\n" is a line,
// "123456\r\n" is exceeded, "123456" waits and "1234567" is exceeded)
// judges every callback from the bytes pending when it is made:
//   - a line ends at the FIRST delimiter in the pending bytes and is at
//     most MAX_LENGTH long;
//   - lineLengthExceeded gets all pending bytes, and only when they show a
//     line over MAX_LENGTH: a delimiter after more than MAX_LENGTH bytes,
//     or none in MAX_LENGTH + delimiter.size() bytes;
//   - when dataReceived returns unpaused, nothing it could deliver is left
//     (no complete line in line mode, no byte at all in raw mode).
//
//   make fuzz FUZZ_SECONDS=60      (or build/fuzz/fuzz_linereceiver -help=1)
#include <fuzzer/FuzzedDataProvider.h>

#include <cstdlib>
#include <string>

#include "reactor.hpp"

namespace {

void check(bool ok, const char* what) {
    if (!ok) {
        std::fprintf(stderr, "invariant broken: %s\n", what);
        std::abort();
    }
}

struct Fuzzed : reactor::LineReceiver {
    FuzzedDataProvider* fdp = nullptr;
    std::string input;   // every byte given to dataReceived, in call order
    std::string output;  // every byte handed back, in order

    void emit(std::string_view piece) {
        check(input.compare(output.size(), piece.size(), piece) == 0, "bytes out of order");
        output.append(piece);
    }
    void act() {
        switch (fdp->ConsumeIntegralInRange<int>(0, 9)) {
            case 0: setRawMode(); break;
            case 1: pauseProducing(); break;
            case 2: delimiter = pickDelimiter(*fdp); break;
            case 3: emit(clearLineBuffer()); break;
            case 4: {
                std::string more = fdp->ConsumeRandomLengthString(8);
                input += more;  // queued behind everything buffered
                dataReceived(more);
                break;
            }
            default: break;
        }
    }
    /// Bytes received and not handed back yet: what the receiver holds.
    std::string_view pending() const { return std::string_view(input).substr(output.size()); }

    void lineReceived(std::string_view line) override {
        check(line.size() <= MAX_LENGTH, "line over MAX_LENGTH delivered");
        check(line.find(delimiter) == std::string_view::npos, "delimiter inside a line");
        check(pending().find(delimiter) == line.size(), "line not cut at the first delimiter");
        emit(line);
        emit(delimiter);  // the delimiter in force when the line was cut
        act();
    }
    void rawDataReceived(std::string_view data) override {
        check(!lineMode(), "raw data in line mode");
        check(bufferedSize() == 0, "raw mode left bytes buffered");
        if (fdp->ConsumeBool()) {
            // Consume a prefix and hand the rest back: those bytes are the
            // next ones in input order, and must come out again next.
            std::size_t keep = fdp->ConsumeIntegralInRange<std::size_t>(0, data.size());
            emit(data.substr(0, keep));
            setLineMode(data.substr(keep));
        } else {
            emit(data);
            act();
        }
    }
    void lineLengthExceeded(std::string_view line) override {  // record, do not close
        check(line == pending(), "lineLengthExceeded without everything buffered");
        const std::size_t at = line.find(delimiter);
        if (at != std::string_view::npos)
            check(at > MAX_LENGTH, "a line of at most MAX_LENGTH refused");
        else
            check(line.size() >= MAX_LENGTH + delimiter.size(), "refused before the line was known to be too long");
        emit(line);
    }
    /// After a top-level dataReceived or resumeProducing: bytes the receiver
    /// could deliver must not stay behind.
    void checkSettled() const {
        check(bufferedSize() == pending().size(), "bufferedSize is not what was not delivered");
        if (paused()) return;
        if (!lineMode()) {
            check(pending().empty(), "raw mode kept bytes");
            return;
        }
        check(pending().find(delimiter) == std::string_view::npos, "a complete line left undelivered");
        check(pending().size() < MAX_LENGTH + delimiter.size(), "line buffer not bounded");
    }

    static std::string pickDelimiter(FuzzedDataProvider& fdp) {
        static const std::string_view common[] = {"\r\n", "\n", "\r", "<END>", "abab", {"\0", 1}, "xx"};
        if (fdp.ConsumeBool()) return std::string(common[fdp.ConsumeIntegralInRange<int>(0, 6)]);
        std::string d = fdp.ConsumeRandomLengthString(4);
        return d.empty() ? std::string("\n") : d;
    }
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    static bool quiet = (reactor::setLogger([](reactor::LogLevel, std::string_view) {}), true);
    (void)quiet;
    FuzzedDataProvider fdp(data, size);
    reactor::StringTransport t;
    Fuzzed p;
    p.fdp = &fdp;
    p.delimiter = Fuzzed::pickDelimiter(fdp);
    p.MAX_LENGTH = fdp.ConsumeIntegralInRange<std::size_t>(0, 64);
    p.makeConnection(&t);
    while (fdp.remaining_bytes() > 0) {
        std::string chunk = fdp.ConsumeRandomLengthString(128);
        p.input += chunk;
        p.dataReceived(chunk);
        p.checkSettled();
        if (p.paused() && fdp.ConsumeBool()) {
            p.resumeProducing();
            p.checkSettled();
        }
    }
    while (p.paused()) {
        p.resumeProducing();
        p.checkSettled();
    }
    p.emit(p.clearLineBuffer());
    check(p.output == p.input, "bytes lost or duplicated");
    return 0;
}
