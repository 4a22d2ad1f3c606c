// libFuzzer target for the Reactor's API under re-entrancy: the random
// programs of tests/stress_harness.hpp (TCP on 127.0.0.1, socketpairs,
// timers, threads, operations run from inside every callback), with every
// choice read from the input instead of a seeded generator, so that the
// fuzzer explores the interleavings of the same operations. The first four
// bytes choose the program's shape (run() or iterate(), how many runs, how
// it ends); then each byte pair is an operation and its argument, taken by
// whichever callback runs next (an opcode past the last operation ends that
// callback's turn). One input is one program, bounded in operations, bytes
// and time; the same invariants as the stress harness are checked (bytes
// in order and whole, connectionLost once, nothing left behind: no fd,
// timer or thread survives an input), and a broken one aborts.
//
//   make fuzz FUZZ_SECONDS=60      (or build/fuzz/fuzz_reactor_api -help=1)
//
// STRESS_AVOID in the environment (the Makefile sets it) names patterns of
// reported but unfixed defects to stay clear of, as for `stress --avoid`.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "tests/stress_harness.hpp"

namespace {

stress::Profile makeProfile() {
    stress::Profile p = stress::fuzzProfile();
    if (const char* avoid = std::getenv("STRESS_AVOID")) {
        std::string list = avoid;
        for (const auto& n : stress::avoidNames)
            if (list == "known" || ("," + list + ",").find("," + std::string(n.name) + ",") != std::string::npos)
                p.avoid |= n.bit;
    }
    return p;
}

}  // namespace

// An input is a program: it needs a few hundred bytes to do anything. Unless
// told otherwise, start at that length instead of libFuzzer's slow growth
// from 4 bytes (libFuzzer reads the flags after this).
extern "C" int LLVMFuzzerInitialize(int* argc, char*** argv) {
    static std::vector<char*> args;
    bool maxLen = false, lenControl = false;
    for (int i = 0; i < *argc; ++i) {
        maxLen = maxLen || std::strncmp((*argv)[i], "-max_len=", 9) == 0;
        lenControl = lenControl || std::strncmp((*argv)[i], "-len_control=", 13) == 0;
        args.push_back((*argv)[i]);
    }
    static char maxLenFlag[] = "-max_len=1024", lenControlFlag[] = "-len_control=0";
    if (!maxLen) args.push_back(maxLenFlag);
    if (!lenControl) args.push_back(lenControlFlag);
    args.push_back(nullptr);
    *argc = static_cast<int>(args.size() - 1);
    *argv = args.data();
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    static const stress::Profile profile = makeProfile();
    if (size < 4) return 0;
    std::uint64_t shape = 0;
    std::memcpy(&shape, data, 4);
    stress::FuzzInput input;
    input.data = data + 4;
    input.size = size - 4;
    stress::World w(stress::mix(shape), profile, &input);
    static const bool verbose = std::getenv("STRESS_VERBOSE") != nullptr;
    w.verbose = verbose;  // STRESS_VERBOSE=1 build/fuzz/fuzz_reactor_api crash-...: every operation
    if (!w.run()) {
        std::fprintf(stderr, "fuzz_reactor_api: %s\n", w.describeConfig().c_str());
        for (const std::string& f : w.failures) std::fprintf(stderr, "  invariant broken: %s\n", f.c_str());
        std::fprintf(stderr, "%s", w.recentOps().c_str());
        std::abort();
    }
    return 0;
}
