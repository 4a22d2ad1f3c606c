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
