// libFuzzer target: endpoint descriptions (serverFromString,
// clientFromString) on arbitrary bytes.
//   clang++ -g -O1 -fsanitize=fuzzer,address,undefined -I. tests/fuzz/fuzz_endpoints.cpp -o build/fuzz_endpoints
//   ./build/fuzz_endpoints -max_total_time=60
// Checks invariants, not just "no crash": every input either parses into an
// endpoint that describes itself, or is refused with a ValueError that
// quotes the input; a parsed endpoint is never null. Nothing listens or
// connects (the reactor is never run).
#include <cstdint>
#include <cstdlib>
#include <string>

#include "reactor.hpp"

namespace {
reactor::Reactor& shared() {
    static reactor::Reactor r;  // one for the whole run: making one costs descriptors
    return r;
}

template <class Parse>
void check(Parse parse, std::string_view input, const char* kind) {
    try {
        auto endpoint = parse(shared(), input);
        if (!endpoint || endpoint->describe().empty()) std::abort();
    } catch (const reactor::error::ValueError& e) {
        std::string message = e.what();
        if (message.find(std::string("invalid ") + kind + " endpoint") != 0) std::abort();
    }
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    std::string_view input(reinterpret_cast<const char*>(data), size);
    check([](reactor::Reactor& r, std::string_view s) { return reactor::serverFromString(r, s); }, input, "server");
    check([](reactor::Reactor& r, std::string_view s) { return reactor::clientFromString(r, s); }, input, "client");
    return 0;
}
