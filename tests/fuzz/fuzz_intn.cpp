// libFuzzer target for the length-prefixed receivers: Int8, Int16 and
// Int32StringReceiver (and IntNStringReceiver's other prefix sizes, 3 and
// 5 to 8 bytes). A stream of mostly well-formed strings with some garbage,
// a random MAX_LENGTH, cut into random chunks; inside stringReceived the
// receiver may pause (resumed later) or be fed the next bytes re-entrantly.
//
// A reference model parses the whole stream the obvious way and records
// where each event completes: a string once its prefix and bytes are in,
// lengthLimitExceeded(n) once a prefix announcing n > MAX_LENGTH is in.
// After every top-level dataReceived/resumeProducing that leaves the
// receiver unpaused, exactly the events completed by the bytes fed so far
// have happened, in order; lengthLimitExceeded comes at most once, with the
// announced length, and nothing is delivered after it. Round trip: what
// sendString writes parses back; a string the prefix cannot encode is
// refused with StringTooLongError.
//
//   make fuzz FUZZ_SECONDS=60      (or build/fuzz/fuzz_intn -help=1)
#include <fuzzer/FuzzedDataProvider.h>

#include <cstdint>
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

/// What the model expects, in order.
struct Event {
    bool exceeded;      // lengthLimitExceeded, else stringReceived
    std::string value;  // the string
    std::uint64_t length;  // the announced length
    std::size_t end;    // stream offset at which the event is complete
};

std::uint64_t readPrefix(std::string_view bytes, std::size_t n) {
    std::uint64_t v = 0;
    for (std::size_t i = 0; i < n; ++i) v = v * 256 + static_cast<unsigned char>(bytes[i]);
    return v;
}

std::string writePrefix(std::uint64_t v, std::size_t n) {
    std::string out(n, '\0');
    for (std::size_t i = n; i-- > 0; v /= 256) out[i] = static_cast<char>(v % 256);
    return out;
}

/// The framing written the obvious way over the whole stream.
std::vector<Event> reference(std::string_view in, std::size_t prefix, std::size_t max) {
    std::vector<Event> events;
    std::size_t i = 0;
    while (in.size() - i >= prefix) {
        const std::uint64_t length = readPrefix(in.substr(i), prefix);
        if (length > max) {
            events.push_back({true, {}, length, i + prefix});
            break;  // the stream cannot be re-synced: nothing after this
        }
        if (in.size() - i - prefix < length) break;
        events.push_back({false, std::string(in.substr(i + prefix, length)), length, i + prefix + length});
        i += prefix + length;
    }
    return events;
}

struct Run {
    FuzzedDataProvider* fdp = nullptr;
    std::string_view stream;
    std::size_t fed = 0;             // bytes of `stream` given to dataReceived so far
    std::vector<Event> got;
    bool exceeded = false;
};

template <class Base>
struct Fuzzed : Base {
    Run* run = nullptr;
    reactor::StringTransport* t = nullptr;

    void stringReceived(std::string_view s) override {
        check(!run->exceeded, "a string after lengthLimitExceeded");
        check(s.size() <= this->MAX_LENGTH, "string over MAX_LENGTH delivered");
        run->got.push_back({false, std::string(s), s.size(), 0});
        switch (run->fdp->ConsumeIntegralInRange<int>(0, 5)) {  // 0 (no data left): nothing
            case 4: this->pauseProducing(); break;
            case 5: {  // the next bytes arrive re-entrantly: queued behind the rest
                std::size_t n = std::min(run->stream.size() - run->fed, run->fdp->ConsumeIntegralInRange<std::size_t>(0, 12));
                std::size_t from = run->fed;
                run->fed += n;
                this->dataReceived(run->stream.substr(from, n));
                break;
            }
            default: break;
        }
    }
    void lengthLimitExceeded(std::size_t length) override {
        check(!run->exceeded, "lengthLimitExceeded twice");
        check(length > this->MAX_LENGTH, "lengthLimitExceeded for a length within MAX_LENGTH");
        run->exceeded = true;
        run->got.push_back({true, {}, length, 0});
        Base::lengthLimitExceeded(length);  // the default closes the connection
        check(t->disconnecting, "lengthLimitExceeded did not close");
    }
};

/// The events the model says are complete once `fed` bytes are in.
std::size_t completed(const std::vector<Event>& model, std::size_t fed) {
    std::size_t n = 0;
    while (n < model.size() && model[n].end <= fed) ++n;
    return n;
}

template <class Base>
void fuzzOne(FuzzedDataProvider& fdp, std::size_t prefix) {
    // MAX_LENGTH: small, or at the edges of the prefix's range.
    const std::uint64_t prefixMax = prefix >= 8 ? std::numeric_limits<std::uint64_t>::max()
                                                : (std::uint64_t(1) << (8 * prefix)) - 1;
    std::size_t max;
    switch (fdp.ConsumeIntegralInRange<int>(0, 3)) {
        case 0: max = std::numeric_limits<std::size_t>::max(); break;
        case 1: max = static_cast<std::size_t>(std::min<std::uint64_t>(prefixMax, std::numeric_limits<std::size_t>::max())); break;
        default: max = fdp.ConsumeIntegralInRange<std::size_t>(0, 300); break;
    }

    // The stream: strings with a correct prefix (the length sometimes just
    // over MAX_LENGTH), and now and then raw garbage.
    std::string stream;
    const int pieces = fdp.ConsumeIntegralInRange<int>(0, 12);
    for (int i = 0; i < pieces; ++i) {
        switch (fdp.ConsumeIntegralInRange<int>(0, 7)) {
            case 0: stream += fdp.ConsumeRandomLengthString(10); break;
            case 1: {  // a length of MAX_LENGTH - 1, MAX_LENGTH or MAX_LENGTH + 1, if the prefix can say it
                const std::uint64_t m = max;
                std::uint64_t length = m;
                switch (fdp.ConsumeIntegralInRange<int>(0, 2)) {
                    case 0: length = m == 0 ? 0 : m - 1; break;
                    case 1: length = m == std::numeric_limits<std::uint64_t>::max() ? m : m + 1; break;
                    default: break;
                }
                stream += writePrefix(std::min(length, prefixMax), prefix);
                break;
            }
            default: {
                std::string s = fdp.ConsumeRandomLengthString(300);
                if (s.size() > prefixMax) s.resize(static_cast<std::size_t>(prefixMax));
                stream += writePrefix(s.size(), prefix) + s;
                break;
            }
        }
    }
    const std::vector<Event> model = reference(stream, prefix, max);

    reactor::StringTransport t;
    Run run;
    run.fdp = &fdp;
    run.stream = stream;
    Fuzzed<Base> p;
    check(p.prefixLength == prefix, "prefixLength");
    p.MAX_LENGTH = max;
    p.run = &run;
    p.t = &t;
    p.makeConnection(&t);

    auto settled = [&] {
        if (p.paused()) return;
        const std::size_t n = completed(model, run.fed);
        check(run.got.size() == n, "delivered events differ from the model's (too early, too late, or extra)");
        for (std::size_t i = 0; i < n; ++i) {
            check(run.got[i].exceeded == model[i].exceeded, "string and lengthLimitExceeded swapped");
            check(run.got[i].exceeded ? run.got[i].length == model[i].length : run.got[i].value == model[i].value,
                  "event differs from the model");
        }
        if (run.exceeded)
            check(p.bufferedSize() == 0, "buffer kept after lengthLimitExceeded");
        else
            check(p.bufferedSize() == run.fed - (n ? model[n - 1].end : 0), "bufferedSize is not the undelivered bytes");
    };
    while (run.fed < stream.size()) {
        std::size_t n = std::min(stream.size() - run.fed, fdp.ConsumeIntegralInRange<std::size_t>(1, 64));
        std::size_t from = run.fed;
        run.fed += n;
        p.dataReceived(std::string_view(stream).substr(from, n));
        settled();
        if (p.paused() && fdp.ConsumeBool()) {
            p.resumeProducing();
            settled();
        }
    }
    while (p.paused()) {
        p.resumeProducing();
        settled();
    }
    check(run.got.size() == model.size(), "events missing at the end");

    // Round trip through sendString, in 3-byte chunks.
    reactor::StringTransport wire;
    Fuzzed<Base> sender;
    sender.makeConnection(&wire);
    std::vector<std::string> sent;
    const int count = fdp.ConsumeIntegralInRange<int>(0, 4);
    for (int i = 0; i < count; ++i) {
        std::string s = fdp.ConsumeRandomLengthString(300);
        if (prefix <= 2 && fdp.ConsumeBool())  // one byte more than the prefix can encode, or a few
            s.assign(static_cast<std::size_t>(prefixMax) + 1 + s.size() % 3, 'x');
        bool refused = false;
        try {
            sender.sendString(s);
        } catch (const reactor::error::StringTooLongError&) {
            refused = true;
        }
        check(refused == (s.size() > prefixMax), "StringTooLongError not exactly for strings the prefix cannot encode");
        if (!refused) sent.push_back(s);
    }
    FuzzedDataProvider none(nullptr, 0);
    Run back;
    back.fdp = &none;
    reactor::StringTransport sink;
    Fuzzed<Base> receiver;
    receiver.run = &back;
    receiver.t = &sink;
    receiver.MAX_LENGTH = 1000;
    receiver.makeConnection(&sink);
    const std::string bytes = wire.value();
    for (std::size_t i = 0; i < bytes.size(); i += 3) receiver.dataReceived(std::string_view(bytes).substr(i, 3));
    check(back.got.size() == sent.size(), "round trip: count");
    for (std::size_t i = 0; i < sent.size(); ++i) check(back.got[i].value == sent[i], "round trip: string");
}

template <std::size_t N>
struct IntN : reactor::IntNStringReceiver {
    IntN() : IntNStringReceiver(N) {}
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    static bool quiet = (reactor::setLogger([](reactor::LogLevel, std::string_view) {}), true);
    (void)quiet;
    FuzzedDataProvider fdp(data, size);
    switch (fdp.ConsumeIntegralInRange<int>(0, 7)) {
        case 0: fuzzOne<reactor::Int8StringReceiver>(fdp, 1); break;
        case 1: case 2: fuzzOne<reactor::Int16StringReceiver>(fdp, 2); break;
        case 3: case 4: fuzzOne<reactor::Int32StringReceiver>(fdp, 4); break;
        case 5: fuzzOne<IntN<3>>(fdp, 3); break;
        case 6: fuzzOne<IntN<5>>(fdp, 5); break;
        default: fuzzOne<IntN<8>>(fdp, 8); break;
    }
    return 0;
}
