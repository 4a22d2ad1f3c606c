// deferred_chain — the two tracks of a Deferred: callbacks and errbacks.
//
//   make && ./build/examples/deferred_chain
//
// One idea: a Deferred carries either a value or a Failure down a chain of
// (callback, errback) pairs. Each step runs the half that matches what it
// receives, and what that half returns decides the track for the next step:
// a value (or a recovered error) goes on the callback track, a Failure (or a
// throw) goes on the errback track. No reactor is needed to see it.
#include <cstdio>
#include <string>

#include "reactor.hpp"

using reactor::Deferred;
using reactor::Failure;
using reactor::Result;

// Builds the same chain twice and fires it with a good and a bad input.
static void walk(int input) {
    std::printf("\n--- callback(%d) ---\n", input);
    Deferred<int> d;

    // Step 1: validate. Returning a Failure switches to the errback track.
    d.addCallback([](int x) -> Result<int> {
        if (x < 0) {
            std::printf("1 callback: %d is negative -> Failure\n", x);
            return Failure(reactor::error::ValueError("negative input"));
        }
        std::printf("1 callback: %d is fine -> value\n", x);
        return x;
    });

    // Step 2: a plain callback. Skipped while a Failure travels down.
    d.addCallback([](int x) {
        std::printf("2 callback: doubling %d\n", x);
        return x * 2;
    });

    // Step 3: an errback that recovers: returning a value switches back to
    // the callback track. Skipped when there is no error.
    d.addErrback([](const Failure& f) {
        std::printf("3 errback: caught \"%s\" -> recover with 0\n", f.str().c_str());
        return 0;
    });

    // Step 4: a type-changing callback: Deferred<int> -> Deferred<std::string>.
    Deferred<std::string> text = d.addCallback([](int x) {
        std::printf("4 callback: formatting %d\n", x);
        return "result=" + std::to_string(x);
    });

    // Step 5: addCallbacks(cb, eb) is ONE pair: eb would not see a failure
    // from cb. (addCallback(cb).addErrback(eb) would.)
    text.addCallbacks([](const std::string& s) { std::printf("5 callback: %s\n", s.c_str()); },
                      [](const Failure& f) { std::printf("5 errback: %s\n", f.str().c_str()); });

    d.callback(input);  // everything above runs now, in order
}

int main() {
    walk(21);  // the callback track all the way
    walk(-1);  // errback track from step 1, back on the callback track at step 3
    return 0;
}
