// Shared test helpers: a reactor per test that must be left clean, and a
// log capture. Every socket test drives its own Reactor with a deadline.
#pragma once
#include <doctest/doctest.h>

#include <string>
#include <vector>

#include "reactor.hpp"

namespace test {

/// A Reactor that fails the test if it is left dirty (Trial's janitor).
struct CleanReactor {
    reactor::Reactor r;
    ~CleanReactor() {
        std::string report = reactor::testing::cleanUp(r);
        CHECK_MESSAGE(report.empty(), report);
    }
};

/// Captures log lines while alive (restores the previous logger after).
struct LogCapture {
    std::vector<std::string> lines;
    reactor::Logger previous;
    LogCapture() {
        previous = reactor::setLogger([this](reactor::LogLevel, std::string_view m) { lines.emplace_back(m); });
    }
    ~LogCapture() { reactor::setLogger(std::move(previous)); }
    bool contains(std::string_view needle) const {
        for (auto& l : lines)
            if (l.find(needle) != std::string::npos) return true;
        return false;
    }
};

}  // namespace test

// API misuse (cancelling a called timer, stopping a stopped reactor...)
// throws `E` when exceptions are on; built with -fno-exceptions the library
// logs "E: message" and the call does nothing. These check whichever applies,
// so a misuse test runs in both builds. `text` is part of the message.
#if REACTOR_HAS_EXCEPTIONS
#define CHECK_MISUSE(expr, E) CHECK_THROWS_AS(expr, E)
#define CHECK_MISUSE_WITH(expr, E, text) CHECK_THROWS_WITH_AS(expr, doctest::Contains(text), E)
#else
#define CHECK_MISUSE(expr, E) TEST_CHECK_LOGGED_(expr, E, "")
#define CHECK_MISUSE_WITH(expr, E, text) TEST_CHECK_LOGGED_(expr, E, text)
#define TEST_CHECK_LOGGED_(expr, E, text)                                                       \
    do {                                                                                        \
        ::test::LogCapture misuseLog_;                                                          \
        static_cast<void>(expr);                                                                \
        std::string misuseType_ = std::string(E::typeName) + ": ";                              \
        CHECK_MESSAGE((misuseLog_.contains(misuseType_) && misuseLog_.contains(text)),          \
                      "not logged as misuse: " << misuseType_ << (text));                      \
    } while (false)
#endif
