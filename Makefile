# reactor.hpp — every command the README promises.
#
#   make            build the examples into build/examples/
#   make test       build and run every test (installs doctest-dev if root)
#   make check      what CI runs beyond `make test`: clang and C++20,
#                   sanitizers, the select() and epoll backends, the POSIX
#                   fallbacks (REACTOR_POSIX_ONLY), -fno-exceptions builds,
#                   REACTOR_SEPARATE_COMPILATION
#   make demo       the IRC demo on loopback (see README)
#   make bench      benchmarks (see README)
#   make cross-test the suite cross-built for aarch64 and armhf, run under qemu-user
#   make windows-test the suite and examples built with mingw-w64, run under wine
#   make footprint  binary sizes and the compile time of the header
#   make soak       the random re-entrancy stress for longer (SECONDS=60)
#
# Variables: CXX, STD (c++17), VARIANT (the build/ subdirectory), EXTRA
# (more compiler flags), TEST_ARGS (doctest options, e.g. -tc="timers*"),
# RUNNER (what runs the test binary: qemu for cross builds), STRESS_ARGS
# (the stress pass of `make test`, e.g. STRESS_ARGS="--seed 7 --count 50").

CXX      ?= g++
STD      ?= c++17
VARIANT  ?= gcc-$(STD)
EXTRA    ?=
OPT      ?= -O0 -g
WARN     := -Wall -Wextra -Wpedantic -Wshadow -Wconversion -Werror
# TLS (section 10a): the tests build with REACTOR_WITH_OPENSSL when
# OpenSSL's headers are installed (Debian: libssl-dev), and say loudly that
# the TLS tests are skipped otherwise. TLS=0 builds without it (cross-test:
# no ARM libssl). Every TU of a program must agree on the switch.
TLS ?= $(if $(wildcard /usr/include/openssl/ssl.h),1,0)
ifeq ($(TLS),1)
TLS_FLAGS := -DREACTOR_WITH_OPENSSL
TLS_LIBS  := -lssl -lcrypto
endif
CXXFLAGS := -std=$(STD) $(OPT) $(WARN) -I. $(TLS_FLAGS) $(EXTRA)
LDFLAGS  := -pthread
OUT      := build/$(VARIANT)
TEST_ARGS ?=
RUNNER   ?=
# Every test run is bounded, even if the code under test hangs.
TEST_TIMEOUT ?= 600

DOCTEST_HEADER := /usr/include/doctest/doctest.h

TEST_SRCS := tests/main.cpp $(sort $(wildcard tests/test_*.cpp))
TEST_OBJS := $(patsubst tests/%.cpp,$(OUT)/tests/%.o,$(TEST_SRCS))
EXAMPLE_SRCS := $(sort $(wildcard examples/*.cpp))
EXDIR    ?= build/examples
EXAMPLES := $(patsubst examples/%.cpp,$(EXDIR)/%,$(EXAMPLE_SRCS))
# Every tests/fuzz/*.cpp is a libFuzzer target, built into build/fuzz/<name>.
FUZZ_SRCS := $(sort $(wildcard tests/fuzz/*.cpp))
FUZZERS  := $(patsubst tests/fuzz/%.cpp,build/fuzz/%,$(FUZZ_SRCS))
# Seven targets at 6 s, two at a time: make check spends about 25 s
# fuzzing (CI stays under 20 minutes); `make fuzz FUZZ_SECONDS=300` for a
# real run.
FUZZ_SECONDS ?= 6
FUZZ_FLAGS := -std=c++17 -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all -I.

.PHONY: all examples test check doctest clean compile-checks fuzz cross-test footprint soak

all: examples

examples: $(EXAMPLES)

$(EXDIR)/%: examples/%.cpp reactor.hpp
	@mkdir -p $(dir $@)
	$(CXX) -std=$(STD) -O2 $(WARN) $(EXAMPLE_TLS) -I. $< -o $@ $(LDFLAGS) $(EXAMPLE_TLS_LIBS)

# http_get fetches https:// where OpenSSL is installed (TLS=1).
$(EXDIR)/http_get: EXAMPLE_TLS = $(TLS_FLAGS)
$(EXDIR)/http_get: EXAMPLE_TLS_LIBS = $(TLS_LIBS)
# irc_bot --tls connects with TLS where OpenSSL is installed.
$(EXDIR)/irc_bot: EXAMPLE_TLS = $(TLS_FLAGS)
$(EXDIR)/irc_bot: EXAMPLE_TLS_LIBS = $(TLS_LIBS)

# ---- tests --------------------------------------------------------------

doctest:
	@if [ ! -f $(DOCTEST_HEADER) ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "doctest is missing: installing Debian's doctest-dev"; \
	    apt-get install -y doctest-dev >/dev/null 2>&1 || \
	      (apt-get update >/dev/null && apt-get install -y doctest-dev >/dev/null) || exit 1; \
	  else \
	    echo "doctest is missing. Install it with:  sudo apt-get install doctest-dev"; exit 1; \
	  fi; \
	fi

$(OUT)/tests/%.o: tests/%.cpp reactor.hpp tests/support.hpp | doctest
	@mkdir -p $(dir $@)
	$(CXX) $(CXXFLAGS) -c $< -o $@

# test_basic.cpp includes the chat server example to test its protocol
# (test_memory.cpp the IRC server's).
$(OUT)/tests/test_basic.o: examples/chat_server.cpp
$(OUT)/tests/test_http.o: examples/http_get.cpp
$(OUT)/tests/test_memory.o: examples/irc_server.cpp

$(OUT)/run_tests: $(TEST_OBJS)
	$(CXX) $(CXXFLAGS) $^ -o $@ $(LDFLAGS) $(TLS_LIBS)

# After the suite, a short pass of the stress harness (tests/stress.cpp):
# seeded random programs of reactor operations run from inside callbacks,
# on loopback, checked for lost/duplicated bytes, missing or double
# connectionLost, leftover fds/timers/threads, sanitizer errors. A separate
# small binary, so that the suite stays fast and its filters (TEST_ARGS)
# keep working; every variant runs it. make check runs longer passes.
STRESS_ARGS ?= --seed 1 --count 12
# Patterns of reported but not yet fixed defects for the harness to stay
# clear of, comma-separated (names: `avoidNames` in tests/stress_harness.hpp;
# an unknown name makes `stress --avoid` list them). Empty: none is open.
STRESS_AVOID ?=
STRESS_RUN = $(OUT)/stress $(if $(STRESS_AVOID),--avoid $(STRESS_AVOID))

$(OUT)/stress: tests/stress.cpp tests/stress_harness.hpp reactor.hpp
	@mkdir -p $(dir $@)
	$(CXX) $(CXXFLAGS) $< -o $@ $(LDFLAGS) $(TLS_LIBS)

test: $(OUT)/run_tests $(OUT)/stress
	@if [ "$(TLS)" != 1 ]; then \
	  echo "*****************************************************************"; \
	  echo "*** TLS tests SKIPPED: install libssl-dev (and openssl)         ***"; \
	  echo "*****************************************************************"; \
	fi
	timeout $(TEST_TIMEOUT) $(RUNNER) $(OUT)/run_tests $(TEST_ARGS)
	timeout $(TEST_TIMEOUT) $(RUNNER) $(STRESS_RUN) $(STRESS_ARGS)

# ---- fuzzing (clang's libFuzzer) -------------------------------------------
# `make fuzz` runs each target for FUZZ_SECONDS; its corpus grows under
# build/fuzz/corpus/<name>, a crash is saved as build/fuzz/<name>-crash-*.

build/fuzz/%: tests/fuzz/%.cpp reactor.hpp
	@mkdir -p $(dir $@)
	clang++ $(FUZZ_FLAGS) $< -o $@ $(LDFLAGS)

# fuzz_reactor_api runs the stress harness's programs from the fuzzer's bytes.
build/fuzz/fuzz_reactor_api: tests/stress_harness.hpp

# One target per fuzzer, so that `make -j2 fuzz` (make check) runs two at
# a time: each libFuzzer process uses one core.
FUZZ_RUNS := $(patsubst tests/fuzz/%.cpp,fuzz-run-%,$(FUZZ_SRCS))
.PHONY: $(FUZZ_RUNS)
fuzz: $(FUZZ_RUNS)

$(FUZZ_RUNS): fuzz-run-%: build/fuzz/%
	@n=$*; mkdir -p build/fuzz/corpus/$$n; \
	echo "fuzz: $$n for $(FUZZ_SECONDS)s"; \
	STRESS_AVOID="$(STRESS_AVOID)" build/fuzz/$$n -max_total_time=$(FUZZ_SECONDS) -artifact_prefix=build/fuzz/$$n- \
	  build/fuzz/corpus/$$n >build/fuzz/$$n.log 2>&1 \
	  || { tail -n 60 build/fuzz/$$n.log; echo "fuzz: $$n FAILED (log: build/fuzz/$$n.log)"; exit 1; }; \
	echo "fuzz: $$n $$(grep -E '^(Done|#[0-9]+ *DONE)' build/fuzz/$$n.log | tail -n 1)"

# ---- make check ---------------------------------------------------------

# The whole suite without exceptions and RTTI: doctest's exception asserts
# become no-ops, tests of exceptions themselves are #if'd out, and misuse
# checks (CHECK_MISUSE in tests/support.hpp) look for the logged error instead.
SEPARATE := -DREACTOR_SEPARATE_COMPILATION
NOEXC_FLAGS := -fno-exceptions -fno-rtti -DDOCTEST_CONFIG_NO_EXCEPTIONS_BUT_WITH_ALL_ASSERTS

SAN_ENV := ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
ASAN_FLAGS := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all
# The stress passes of make check (about 25 s and 17 s on two cores):
# many random programs under ASan+UBSan, thread-heavy ones under TSan.
STRESS_CHECK_ASAN := --seed 1 --count 300 --jobs 2
STRESS_CHECK_TSAN := --seed 1 --count 200 --jobs 2 --profile threads
# The epoll backend gets its own ASan+UBSan build and stress pass (other seeds).
STRESS_CHECK_EPOLL := --seed 1001 --count 200 --jobs 2

# clang in C++20 is the compiler of the ASan, epoll-ASan and no-exceptions
# builds below: a plain clang C++20 build would repeat their front end and
# their tests (it was dropped to make room for windows-test).
check: compile-checks
	@# g++ in C++20 and the select() backend share one build (independent).
	$(MAKE) --no-print-directory test STD=c++20 VARIANT=gcc-c++20-select EXTRA=-DREACTOR_USE_SELECT
	$(SAN_ENV) $(MAKE) --no-print-directory test CXX=clang++ STD=c++20 VARIANT=epoll-asan \
	  EXTRA="-DREACTOR_USE_EPOLL $(ASAN_FLAGS)" STRESS_ARGS="$(STRESS_CHECK_EPOLL)"
	@# Separate compilation and the POSIX fallbacks share one build (they are
	@# independent switches; one build less keeps CI under 20 minutes).
	$(MAKE) --no-print-directory test VARIANT=separate-posix EXTRA="$(SEPARATE) -DREACTOR_POSIX_ONLY"
	$(MAKE) --no-print-directory test VARIANT=noexc EXTRA="$(NOEXC_FLAGS)"
	$(MAKE) --no-print-directory test CXX=clang++ STD=c++20 VARIANT=noexc-clang EXTRA="$(NOEXC_FLAGS)"
	$(SAN_ENV) $(MAKE) --no-print-directory test CXX=clang++ STD=c++20 VARIANT=asan \
	  EXTRA="$(ASAN_FLAGS)" STRESS_ARGS="$(STRESS_CHECK_ASAN)"
	TSAN_OPTIONS=halt_on_error=1 $(MAKE) --no-print-directory test CXX=clang++ VARIANT=tsan \
	  EXTRA="-fsanitize=thread" TEST_ARGS='-ts=threads' STRESS_ARGS="$(STRESS_CHECK_TSAN)"
	$(MAKE) --no-print-directory examples CXX=clang++ EXDIR=build/examples-clang
	$(MAKE) --no-print-directory examples
	python3 tests/examples_test.py build/examples
	@mkdir -p build/fuzz
	@if printf 'extern "C" int LLVMFuzzerTestOneInput(const unsigned char*, __SIZE_TYPE__) { return 0; }\n' \
	    | clang++ -x c++ -fsanitize=fuzzer,address,undefined - -o build/fuzz/probe >/dev/null 2>&1; then \
	  $(MAKE) --no-print-directory fuzz; \
	else \
	  echo "*****************************************************************"; \
	  echo "*** make fuzz SKIPPED: clang's libFuzzer runtime is missing     ***"; \
	  echo "*** (Debian: apt-get install clang libclang-rt-14-dev)          ***"; \
	  echo "*****************************************************************"; \
	fi
	python3 tests/gen_reference.py --check --quiet
	$(MAKE) --no-print-directory cross-test
	$(MAKE) --no-print-directory windows-test
	@echo "make check: all passed"

# The header on its own: included twice in one program (ODR), alone in a
# TU (defining no symbol of its own), built without exceptions and RTTI,
# and compiled separately.
compile-checks:
	@mkdir -p build/compile
	$(CXX) -std=$(STD) $(WARN) -I. -c tests/compile/alone.cpp -o build/compile/alone.o
	$(CXX) -std=$(STD) $(WARN) -I. -c tests/compile/odr_second.cpp -o build/compile/odr_second.o
	$(CXX) -std=$(STD) $(WARN) -I. build/compile/alone.o build/compile/odr_second.o -o build/compile/odr $(LDFLAGS)
	./build/compile/odr
	$(CXX) -std=$(STD) $(WARN) -fno-exceptions -fno-rtti -I. tests/compile/no_exceptions.cpp -o build/compile/no_exceptions $(LDFLAGS)
	./build/compile/no_exceptions
	clang++ -std=c++17 $(WARN) -fno-exceptions -fno-rtti -I. tests/compile/no_exceptions.cpp -o build/compile/no_exceptions_clang $(LDFLAGS)
	./build/compile/no_exceptions_clang
	$(CXX) -std=$(STD) $(WARN) -I. -c tests/compile/include_only.cpp -o build/compile/include_only.o
	@# The TUs `make footprint` times still compile (it is not run in CI).
	$(CXX) -std=$(STD) $(WARN) -I. -fsyntax-only tests/bench/echo_minimal.cpp
	$(CXX) -std=$(STD) $(WARN) -I. -fsyntax-only tests/bench/deferred_types.cpp
	@# Without REACTOR_WITH_OPENSSL the header includes nothing of OpenSSL.
	! $(CXX) -std=$(STD) -I. -E tests/compile/alone.cpp | grep -qi openssl
	! nm -C build/compile/include_only.o | grep 'reactor::'
	@# Without REACTOR_WITH_IRC, using the IRC client fails to compile and says why.
	! $(CXX) -std=$(STD) -I. -fsyntax-only tests/compile/irc_not_asked.cpp 2>build/compile/irc_not_asked.log
	grep -q 'needs #define REACTOR_WITH_IRC' build/compile/irc_not_asked.log
	@# ...and defining it after the first #include is refused, not ignored.
	! $(CXX) -std=$(STD) -I. -fsyntax-only tests/compile/irc_defined_late.cpp 2>build/compile/irc_defined_late.log
	grep -q 'define REACTOR_WITH_IRC before the first #include' build/compile/irc_defined_late.log
	@# The same for a late REACTOR_IMPLEMENTATION, with and without the IRC module.
	for irc in "" -DREACTOR_WITH_IRC; do \
	  ! $(CXX) -std=$(STD) -I. -DREACTOR_SEPARATE_COMPILATION $$irc -fsyntax-only tests/compile/implementation_late.cpp \
	    2>build/compile/implementation_late.log || exit 1; \
	  grep -q 'define REACTOR_IMPLEMENTATION before the first #include' build/compile/implementation_late.log || exit 1; \
	  test "$$(grep -c 'error' build/compile/implementation_late.log)" -le 2 || exit 1; \
	done
	@# Separate compilation: the same program from three TUs, of which only
	@# implementation.cpp compiles the library's bodies (alone.o must leave
	@# Reactor::run undefined, for the linker to find in implementation.o).
	$(CXX) -std=$(STD) $(WARN) $(SEPARATE) -I. -c tests/compile/alone.cpp -o build/compile/alone-sep.o
	$(CXX) -std=$(STD) $(WARN) $(SEPARATE) -I. -c tests/compile/odr_second.cpp -o build/compile/odr_second-sep.o
	$(CXX) -std=$(STD) $(WARN) $(SEPARATE) -I. -c tests/compile/implementation.cpp -o build/compile/implementation-sep.o
	nm -C build/compile/alone-sep.o | grep -q ' U reactor::v0::Reactor::run(bool)$$'
	$(CXX) build/compile/alone-sep.o build/compile/odr_second-sep.o build/compile/implementation-sep.o \
	  -o build/compile/odr-sep $(LDFLAGS)
	./build/compile/odr-sep
	@# ...and a TU built with -fno-exceptions does not link against bodies
	@# built with exceptions (Failure's layout differs): the inline
	@# namespace differs too, so the mistake is a link error, not a crash.
	$(CXX) -std=$(STD) $(WARN) $(SEPARATE) -fno-exceptions -fno-rtti -I. -c tests/compile/alone.cpp \
	  -o build/compile/alone-sep-noexc.o
	! $(CXX) build/compile/alone-sep-noexc.o build/compile/odr_second-sep.o build/compile/implementation-sep.o \
	  -o build/compile/mixed $(LDFLAGS) 2>/dev/null
	@# The same for REACTOR_WITH_OPENSSL, which adds virtuals to ITransport.
	@if [ "$(TLS)" = 1 ]; then \
	  $(CXX) -std=$(STD) $(WARN) $(SEPARATE) $(TLS_FLAGS) -I. -c tests/compile/alone.cpp -o build/compile/alone-sep-tls.o && \
	  ! $(CXX) build/compile/alone-sep-tls.o build/compile/odr_second-sep.o build/compile/implementation-sep.o \
	    -o build/compile/mixed-tls $(LDFLAGS) $(TLS_LIBS) 2>/dev/null; \
	fi

clean:
	rm -rf build

# ---- make cross-test ----------------------------------------------------
# The whole suite cross-built for aarch64 and for 32-bit ARM (armhf: 32-bit
# size_t, long, pointers and time_t; unsigned char) and run under qemu-user.
# Skipped, loudly, for a toolchain that is not installed (.ci/run installs
# them: apt-get install g++-aarch64-linux-gnu g++-arm-linux-gnueabihf qemu-user).
# -O1 builds about as fast as -O0 and runs faster under emulation.
# -Wno-psabi: GCC's note that the ARM ABI for passing some structs changed in
# GCC 7.1 (it is about libstdc++'s iterators, not our code).
# CROSS_TEST_ARGS: doctest filters for tests that cannot work under
# qemu-user. None today: signals, threads, RLIMIT and 1,000 sockets all pass.
CROSS_TEST_ARGS ?=
CROSS_TARGETS := aarch64-linux-gnu:aarch64 arm-linux-gnueabihf:arm

cross-test:
	@for t in $(CROSS_TARGETS); do \
	  triple=$${t%%:*}; qemu=qemu-$${t##*:}; \
	  if ! command -v $$triple-g++ >/dev/null || ! command -v $$qemu >/dev/null; then \
	    echo "cross-test: SKIPPED for $$triple (apt-get install g++-$$triple qemu-user)"; continue; \
	  fi; \
	  echo "cross-test: $$triple under $$qemu"; \
	  $(MAKE) --no-print-directory test CXX=$$triple-g++ VARIANT=cross-$$triple OPT=-O1 EXTRA=-Wno-psabi TLS=0 \
	    RUNNER="$$qemu -L /usr/$$triple" TEST_ARGS="$(CROSS_TEST_ARGS)" || exit 1; \
	done

# ---- make windows-test --------------------------------------------------
# The whole suite and every example cross-built for Windows with mingw-w64
# (the posix thread model: std::thread, std::mutex), linked statically so
# that the .exe files need only system DLLs, and run under wine on
# loopback. Skipped, loudly, without the toolchain (.ci/run installs it:
# apt-get install g++-mingw-w64-x86-64-posix wine64). The wine prefix is
# made in build/windows/wine on the first run (about 5 s) and its
# wineserver stopped at the end. -O0: the fastest to build, and the run is
# wine's start-up and loopback round trips, not our code.
# WINDOWS_TEST_EXCLUDE: test cases that cannot mean anything on Windows,
# by name (doctest's -tce: comma-separated, * wildcards). Tests that need
# fork(), POSIX signals, pipes, UNIX sockets or RLIMIT are not compiled for
# Windows at all (#if !defined(_WIN32) in the test files, each with its reason).
WIN_CXX   ?= x86_64-w64-mingw32-g++-posix
WIN_OUT   := build/windows
WIN_FLAGS := -std=c++17 -O0 $(WARN) -I. -isystem $(WIN_OUT)/include
WIN_LIBS  := -static -static-libgcc -static-libstdc++ -pthread -lws2_32
WIN_ENV   := WINEPREFIX=$(CURDIR)/$(WIN_OUT)/wine WINEDEBUG=-all
WIN_TEST_OBJS := $(patsubst tests/%.cpp,$(WIN_OUT)/tests/%.o,$(TEST_SRCS))
WIN_EXAMPLES := $(patsubst examples/%.cpp,$(WIN_OUT)/examples/%.exe,$(EXAMPLE_SRCS))
# Three behaviours wine 8 does not emulate (patterns: the names contain commas):
#   an SO_LINGER 0 close sends a FIN, not a reset (two tests of abortConnection
#   and of the reset's message); a connected UDP socket's ICMP error is never
#   reported by WSAPoll (it stays in SO_ERROR until the next send).
WINDOWS_TEST_EXCLUDE ?= abortConnection: ConnectionAborted here*,a reset reads as Twisted*ConnectionLost message*,connect() then a refused peer: connectionRefused*

.PHONY: windows-test windows-build
windows-test:
	@if ! command -v $(WIN_CXX) >/dev/null || ! command -v wine >/dev/null; then \
	  echo "*****************************************************************"; \
	  echo "*** windows-test SKIPPED: apt-get install g++-mingw-w64-x86-64-posix wine64"; \
	  echo "*****************************************************************"; \
	  exit 0; \
	fi; \
	$(MAKE) --no-print-directory windows-build && \
	$(WIN_ENV) timeout 60 wine $(WIN_OUT)/windows_h_first.exe && \
	$(WIN_ENV) timeout $(TEST_TIMEOUT) wine $(WIN_OUT)/run_tests.exe \
	  $(if $(WINDOWS_TEST_EXCLUDE),-tce="$(WINDOWS_TEST_EXCLUDE)") $(TEST_ARGS) && \
	$(WIN_ENV) python3 tests/examples_test.py --wine $(WIN_OUT)/examples; \
	rc=$$?; $(WIN_ENV) wineserver -k 2>/dev/null; exit $$rc

windows-build: $(WIN_OUT)/run_tests.exe $(WIN_EXAMPLES) $(WIN_OUT)/windows_h_first.exe

# A program that includes <windows.h> first (mingw's <winsock2.h> then warns
# that it should have come first: -Wno-cpp).
$(WIN_OUT)/windows_h_first.o: tests/compile/windows_h_first.cpp reactor.hpp
	@mkdir -p $(dir $@)
	$(WIN_CXX) $(WIN_FLAGS) -Wno-cpp -c $< -o $@

$(WIN_OUT)/windows_h_first.exe: $(WIN_OUT)/windows_h_first.o
	@echo "link $@"
	@$(call WIN_LINK,$<)

$(WIN_OUT)/include/doctest/doctest.h: | doctest
	@mkdir -p $(WIN_OUT)/include
	@# Only doctest's directory: mingw must not see Linux's /usr/include.
	ln -sfn $(dir $(DOCTEST_HEADER)) $(WIN_OUT)/include/doctest

$(WIN_OUT)/tests/%.o: tests/%.cpp reactor.hpp tests/support.hpp $(WIN_OUT)/include/doctest/doctest.h
	@mkdir -p $(dir $@)
	$(WIN_CXX) $(WIN_FLAGS) -c $< -o $@

$(WIN_OUT)/tests/test_basic.o: examples/chat_server.cpp
$(WIN_OUT)/tests/test_http.o: examples/http_get.cpp
$(WIN_OUT)/tests/test_memory.o: examples/irc_server.cpp

# GNU ld needs about a minute for the suite (every inline function is a PE
# COMDAT section); LLVM's lld, where installed, links it in a second. It is
# run directly with the start files and libraries g++ would pass.
WIN_LLD := $(shell command -v ld.lld 2>/dev/null)
WIN_FILE = $(shell $(WIN_CXX) -print-file-name=$(1))
WIN_RT := -lmingw32 -lgcc -lgcc_eh -lmoldname -lmingwex -lmsvcrt -lkernel32
ifneq ($(WIN_LLD),)
WIN_LINK = $(WIN_LLD) -m i386pep -Bstatic -o $@ $(call WIN_FILE,crt2.o) $(call WIN_FILE,crtbegin.o) \
  -L$(dir $(call WIN_FILE,libstdc++.a)) -L$(dir $(call WIN_FILE,crt2.o)) $(1) -lws2_32 -lstdc++ \
  $(WIN_RT) -lpthread -ladvapi32 -lshell32 -luser32 $(WIN_RT) $(call WIN_FILE,crtend.o)
else
WIN_LINK = $(WIN_CXX) $(1) -o $@ $(WIN_LIBS)
endif

$(WIN_OUT)/run_tests.exe: $(WIN_TEST_OBJS)
	@echo "link $@"
	@$(call WIN_LINK,$^)

$(WIN_OUT)/examples/%.o: examples/%.cpp reactor.hpp
	@mkdir -p $(dir $@)
	$(WIN_CXX) $(WIN_FLAGS) -c $< -o $@

.SECONDARY: $(WIN_EXAMPLES:.exe=.o)
$(WIN_OUT)/examples/%.exe: $(WIN_OUT)/examples/%.o
	@echo "link $@"
	@$(call WIN_LINK,$<)

# ---- make footprint ----------------------------------------------------
# Stripped -Os sizes of echo servers and the example servers (dynamic,
# static, without exceptions, and with the smallest flags), and the compile
# time of their TUs header-only and with REACTOR_SEPARATE_COMPILATION (plus
# that mode's implementation TU), against a reference TU with only POSIX
# and std headers (tests/bench/footprint.sh).
# Side by side with the same echo server on standalone Asio (libasio-dev,
# installed here when missing and run as root).
footprint:
	@if [ ! -f /usr/include/asio.hpp ] && [ "$$(id -u)" = 0 ]; then \
	  echo "footprint: installing libasio-dev (the Asio echo server to compare with)"; \
	  apt-get install -y libasio-dev >/dev/null 2>&1 || \
	    (apt-get update >/dev/null && apt-get install -y libasio-dev >/dev/null) || true; \
	fi
	bash tests/bench/footprint.sh $(CXX)

# ---- make soak ------------------------------------------------------------
# The stress harness for SECONDS (60) under ASan+UBSan, JOBS (2) programs at
# once, each in its own process so that one crash does not end the soak.
# Prints progress every 10 s, then how many programs and operations ran and
# the seed of every failure; `make soak SEED=S COUNT=1` replays one (with
# every operation printed). SEED defaults to the time; PROFILE=threads for
# the thread-heavy mix; AVOID=... overrides STRESS_AVOID.
SECONDS ?= 60
SEED ?= $(shell date +%s)
COUNT ?=
JOBS ?= 2
PROFILE ?= default
AVOID ?= $(STRESS_AVOID)

soak:
	@$(MAKE) --no-print-directory build/asan/stress CXX=clang++ STD=c++20 VARIANT=asan EXTRA="$(ASAN_FLAGS)"
	$(SAN_ENV) build/asan/stress --seed $(SEED) --profile $(PROFILE) $(if $(AVOID),--avoid $(AVOID)) \
	  $(if $(filter 1,$(COUNT)),--count 1 -v,--seconds $(SECONDS) --jobs $(JOBS) --keep-going $(if $(COUNT),--count $(COUNT)))

# ---- make bench ---------------------------------------------------------
# The echo_server example built with each readiness backend (poll(), select(),
# epoll; -O2 like `make examples`) against a plain poll() loop and a plain
# epoll loop, under a load generator on raw epoll (tests/bench/bench.cpp),
# server and generator pinned to separate CPUs. Six scenarios; in each the
# five servers take turns, seven rounds of BENCH_SECONDS / 7 each, and a
# ratio is the median of the seven per-round pairs. Prints one markdown
# table; about 2.5 minutes at the default, `make bench BENCH_SECONDS=0.3`
# (about 25 s) checks that it works.
BENCH_SECONDS ?= 4
BENCH_SERVERS := build/bench/echo_server-poll build/bench/echo_server-select build/bench/echo_server-epoll
BENCH_FLAGS_poll :=
BENCH_FLAGS_select := -DREACTOR_USE_SELECT
BENCH_FLAGS_epoll := -DREACTOR_USE_EPOLL

build/bench/echo_server-%: examples/echo_server.cpp reactor.hpp
	@mkdir -p $(dir $@)
	$(CXX) -std=$(STD) -O2 $(WARN) $(BENCH_FLAGS_$*) -I. $< -o $@ $(LDFLAGS)

build/bench/bench: tests/bench/bench.cpp
	@mkdir -p $(dir $@)
	$(CXX) -std=$(STD) -O2 $(WARN) $< -o $@

# The TLS row (tests/bench/tls_stream.cpp): one connection streaming over
# TCP and over TLS, where OpenSSL is installed.
build/bench/tls_stream: tests/bench/tls_stream.cpp reactor.hpp
	@mkdir -p $(dir $@)
	$(CXX) -std=$(STD) -O2 $(WARN) $(TLS_FLAGS) -I. $< -o $@ $(LDFLAGS) $(TLS_LIBS)

.PHONY: bench
bench: $(BENCH_SERVERS) build/bench/bench $(if $(filter 1,$(TLS)),build/bench/tls_stream)
	./build/bench/bench $(BENCH_SECONDS) $(BENCH_SERVERS)
	@if [ "$(TLS)" = 1 ]; then ./build/bench/tls_stream $(BENCH_SECONDS); \
	else echo "TLS row SKIPPED: install libssl-dev"; fi

# ---- make demo ------------------------------------------------------------
# The toy IRC server, the bot and a scripted user on loopback (tests/demo.cpp).

# `make demo TRACE=1` interleaves the trace of the bot's and alice's loops.
TRACE ?=
.PHONY: demo
demo: $(EXDIR)/irc_server $(EXDIR)/irc_bot $(OUT)/demo
	REACTOR_TRACE=$(TRACE) timeout 60 $(OUT)/demo $(EXDIR)

$(OUT)/demo: tests/demo.cpp reactor.hpp
	@mkdir -p $(dir $@)
	$(CXX) $(CXXFLAGS) $< -o $@ $(LDFLAGS) $(TLS_LIBS)

# ---- IRC interop: Debian's ngircd -----------------------------------------
# The irc-interop suite (tests/test_irc.cpp) starts ngircd itself on a free
# loopback port. As root a missing ngircd is installed first; otherwise the
# suite prints SKIPPED.

.PHONY: ngircd
ngircd:
	@if [ ! -x /usr/sbin/ngircd ] && ! command -v ngircd >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "ngircd is missing: installing Debian's ngircd for the IRC interop tests"; \
	    apt-get install -y ngircd >/dev/null 2>&1 || \
	      (apt-get update >/dev/null && apt-get install -y ngircd >/dev/null) || \
	      echo "*** could not install ngircd: the IRC interop tests will be SKIPPED ***"; \
	  else \
	    echo "*** ngircd is missing: the IRC interop tests will be SKIPPED (sudo apt-get install ngircd) ***"; \
	  fi; \
	fi

test: | ngircd
