// libFuzzer target: irc::parsemsg and the quoting helpers on arbitrary bytes.
//   clang++ -g -O1 -fsanitize=fuzzer,address,undefined -I. tests/fuzz/fuzz_parsemsg.cpp -o build/fuzz_parsemsg
//   ./build/fuzz_parsemsg -max_total_time=60
// Checks invariants, not just "no crash": a parsed message has a command
// without spaces, middle params without spaces, and round-trips through
// the quoting helpers.
#include <cstdint>
#include <cstdlib>
#include <string>

#define REACTOR_WITH_IRC
#include "reactor.hpp"

using namespace reactor::irc;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    std::string_view input(reinterpret_cast<const char*>(data), size);
    Message m = parsemsg(input);
    if (m.ok()) {
        if (m.command.empty() || m.command.find(' ') != std::string::npos || m.command[0] == ':') std::abort();
        for (std::size_t i = 0; i + 1 < m.params.size(); ++i)
            if (m.params[i].empty() || m.params[i].find(' ') != std::string::npos) std::abort();
    } else if (m.error.empty()) {
        std::abort();
    }
    if (lowDequote(lowQuote(input)) != input) std::abort();
    if (ctcpDequote(ctcpQuote(input)) != input) std::abort();
    CtcpExtracted e = ctcpExtract(input);
    (void)ctcpStringify(e.extended);
    std::size_t width = size ? 1 + data[0] % 64 : 8;
    for (const std::string& chunk : split(input, width))
        if (chunk.size() > width && width >= 4) std::abort();
    ParsedModes modes = parseModes(input.substr(0, 16), {"a", "b"}, {"ovk", "ov"});
    (void)modes;
    ServerSupportedFeatures features;
    features.parse({std::string(input)});
    (void)features.prefix();
    (void)features.chanModes();
    return 0;
}
