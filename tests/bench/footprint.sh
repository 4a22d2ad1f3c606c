#!/usr/bin/env bash
# footprint — what `make footprint` prints: the stripped size of the example
# servers built with -Os (libstdc++ dynamic, fully static, and dynamic with
# -fno-exceptions -fno-rtti), and the compile time of a TU that includes
# reactor.hpp and runs an echo server (examples/echo_server.cpp), header-only
# and with REACTOR_SEPARATE_COMPILATION (plus the one implementation TU that
# mode adds), median of 5 runs at -O0 and -O2, next to a reference TU with
# only the POSIX socket and common std headers. Compile time is CPU time
# (user + sys) of the compiler: on a shared machine it varies much less than
# wall-clock time.
#
#   tests/bench/footprint.sh [CXX]        (from the repository root)
set -euo pipefail
CXX=${1:-g++}
STD=${STD:-c++17}
RUNS=${RUNS:-5}
out=build/footprint
mkdir -p "$out"

# ---- binary sizes -------------------------------------------------------
# "smallest": what an embedded build can add, each flag trading something
# away: no exceptions or RTTI, no unwind tables (no backtraces through the
# library), unused functions dropped at link time, and no PIE (no ASLR).
SMALLEST="-fno-exceptions -fno-rtti -fno-asynchronous-unwind-tables -ffunction-sections -fdata-sections -Wl,--gc-sections -no-pie"
printf '%-14s %14s %14s %14s %14s\n' "stripped, -Os" "dynamic" "static" "dyn. no-exc" "dyn. smallest"
for name in echo_server chat_server irc_bot; do
  src=examples/$name.cpp
  if [ ! -f "$src" ]; then
    printf '%-14s %14s\n' "$name" "(no example)"
    continue
  fi
  "$CXX" -std="$STD" -Os -I. "$src" -o "$out/$name" -pthread
  strip "$out/$name"
  # A static glibc warns that getaddrinfo still loads NSS modules at run
  # time; the binary is built all the same.
  if "$CXX" -std="$STD" -Os -I. -static "$src" -o "$out/$name-static" -pthread 2>"$out/$name-static.log"; then
    strip "$out/$name-static"
    static=$(stat -c %s "$out/$name-static")
  else
    static="(failed)"
  fi
  "$CXX" -std="$STD" -Os -fno-exceptions -fno-rtti -I. "$src" -o "$out/$name-noexc" -pthread
  strip "$out/$name-noexc"
  # shellcheck disable=SC2086
  "$CXX" -std="$STD" -Os $SMALLEST -I. "$src" -o "$out/$name-smallest" -pthread
  strip "$out/$name-smallest"
  printf '%-14s %14s %14s %14s %14s\n' "$name" "$(stat -c %s "$out/$name") B" "$static B" \
    "$(stat -c %s "$out/$name-noexc") B" "$(stat -c %s "$out/$name-smallest") B"
done

# ---- compile time -------------------------------------------------------
# CPU seconds (user + sys) of one `CXX -c`, median of $RUNS.
median_compile() {
  local src=$1 opt=$2 extra=${3:-} i TIMEFORMAT='%U %S'
  for ((i = 0; i < RUNS; i++)); do
    # The compiler's own messages go to a log, not into the timing.
    { time "$CXX" -std="$STD" "$opt" $extra -I. -c "$src" -o "$out/tu.o" 2>"$out/compile.log" ; } 2>&1 |
      awk '{ print $1 + $2 }'
  done | sort -n | sed -n "$(( (RUNS + 1) / 2 ))p" | awk '{ printf "%.2f s", $1 }'
}
echo
row() {  # label, source, extra flags
  printf '%-56s %8s %8s\n' "$1" "$(median_compile "$2" -O0 "${3:-}")" "$(median_compile "$2" -O2 "${3:-}")"
}
printf '%-56s %8s %8s\n' "compile CPU time, median of $RUNS ($CXX -std=$STD)" "-O0" "-O2"
echo '#include "reactor.hpp"' > "$out/include_only.cpp"
printf '#define REACTOR_IMPLEMENTATION\n#include "reactor.hpp"\n' > "$out/implementation.cpp"
sep=-DREACTOR_SEPARATE_COMPILATION
row "echo server TU (examples/echo_server.cpp), header-only" examples/echo_server.cpp
row "#include \"reactor.hpp\" alone, header-only" "$out/include_only.cpp"
row "echo server TU, REACTOR_SEPARATE_COMPILATION" examples/echo_server.cpp $sep
row "#include \"reactor.hpp\" alone, REACTOR_SEPARATE_COMPILATION" "$out/include_only.cpp" $sep
row "the implementation TU (once per program)" "$out/implementation.cpp" $sep
row "reference TU (POSIX sockets + std headers)" tests/bench/footprint_ref.cpp
echo
echo "smallest: $SMALLEST"
echo "aims: echo server TU <= 0.6 s at -O0 (REACTOR_SEPARATE_COMPILATION where header-only misses it);"
echo "      stripped -Os echo server <= 40 KB dynamically linked"
