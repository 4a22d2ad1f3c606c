#!/usr/bin/env bash
# footprint — what `make footprint` prints: the stripped size of echo
# servers built with -Os (libstdc++ dynamic, fully static, dynamic with
# -fno-exceptions -fno-rtti, and the smallest flags), and the compile time
# of their TUs (CPU time, median of $RUNS, at -O0 and -O2), side by side:
#   echo (reactor)   tests/bench/echo_minimal.cpp: listen, echo, stop on a signal
#   echo (Asio)      tests/bench/echo_asio.cpp: the same program on standalone
#                    Asio (libasio-dev; skipped, loudly, where it is missing)
#   echo_server      examples/echo_server.cpp: endpoint strings and threads too
#   deferred_types   tests/bench/deferred_types.cpp: five Deferred<T> types
#                    (compile time only: what one more Deferred<T> costs)
# plus the chat server and IRC bot examples, the header-only and
# REACTOR_SEPARATE_COMPILATION modes, and a reference TU with only the POSIX
# socket and common std headers. Compile time is CPU time (user + sys) of
# the compiler: on a shared machine it varies much less than wall-clock time.
#
#   tests/bench/footprint.sh [CXX]        (from the repository root)
set -euo pipefail
CXX=${1:-g++}
STD=${STD:-c++17}
RUNS=${RUNS:-3}
out=build/footprint
mkdir -p "$out"
asio=0
if [ -f /usr/include/asio.hpp ]; then asio=1; fi

# ---- binary sizes -------------------------------------------------------
# "smallest": what an embedded build can add, each flag trading something
# away: no exceptions or RTTI, no unwind tables (no backtraces through the
# library), unused functions dropped at link time, and no PIE (no ASLR).
SMALLEST="-fno-exceptions -fno-rtti -fno-asynchronous-unwind-tables -ffunction-sections -fdata-sections -Wl,--gc-sections -no-pie"
printf '%-16s %14s %14s %14s %14s\n' "stripped, -Os" "dynamic" "static" "dyn. no-exc" "dyn. smallest"
size_row() {  # label, output name, source
  local label=$1 name=$2 src=$3 static noexc smallest
  "$CXX" -std="$STD" -Os -I. "$src" -o "$out/$name" -pthread
  strip "$out/$name"
  # A static glibc warns that getaddrinfo still loads NSS modules at run
  # time; the binary is built all the same.
  if "$CXX" -std="$STD" -Os -I. -static "$src" -o "$out/$name-static" -pthread 2>"$out/$name-static.log"; then
    strip "$out/$name-static"; static="$(stat -c %s "$out/$name-static") B"
  else static="(failed)"; fi
  # Asio needs exceptions (ASIO_NO_EXCEPTIONS wants a handler of the program's own).
  if "$CXX" -std="$STD" -Os -fno-exceptions -fno-rtti -I. "$src" -o "$out/$name-noexc" -pthread 2>/dev/null; then
    strip "$out/$name-noexc"; noexc="$(stat -c %s "$out/$name-noexc") B"
  else noexc="(n/a)"; fi
  # shellcheck disable=SC2086
  if "$CXX" -std="$STD" -Os $SMALLEST -I. "$src" -o "$out/$name-smallest" -pthread 2>/dev/null; then
    strip "$out/$name-smallest"; smallest="$(stat -c %s "$out/$name-smallest") B"
  else smallest="(n/a)"; fi
  printf '%-16s %14s %14s %14s %14s\n' "$label" "$(stat -c %s "$out/$name") B" "$static" "$noexc" "$smallest"
}
size_row "echo (reactor)" echo_minimal tests/bench/echo_minimal.cpp
if [ "$asio" = 1 ]; then size_row "echo (Asio)" echo_asio tests/bench/echo_asio.cpp
else printf '%-16s %14s\n' "echo (Asio)" "SKIPPED: apt-get install libasio-dev"; fi
for name in echo_server chat_server irc_bot; do size_row "$name" "$name" "examples/$name.cpp"; done
# A file grows in whole 4 KiB pages (each ELF segment starts on a page), so
# a change of a few hundred bytes may not move the sizes above at all, or
# may move them by 4 KiB: the sections' own bytes show it.
sections() { size -A "$1" | awk '$1 ~ /^\./ && $1 !~ /^\.(comment|gnu_debuglink|shstrtab)$/ { t += $2 } END { print t }'; }
printf '%-16s %14s %14s\n' "sections' bytes" "dynamic" "dyn. smallest"
for name in echo_minimal echo_asio; do
  [ -f "$out/$name" ] || continue
  printf '%-16s %14s %14s\n' "$name" "$(sections "$out/$name") B" \
    "$( [ -f "$out/$name-smallest" ] && echo "$(sections "$out/$name-smallest") B" || echo n/a)"
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
row "echo (reactor) TU, header-only" tests/bench/echo_minimal.cpp
if [ "$asio" = 1 ]; then row "echo (Asio) TU" tests/bench/echo_asio.cpp; fi
row "echo (reactor) TU, REACTOR_SEPARATE_COMPILATION" tests/bench/echo_minimal.cpp $sep
row "examples/echo_server.cpp, header-only" examples/echo_server.cpp
row "examples/echo_server.cpp, REACTOR_SEPARATE_COMPILATION" examples/echo_server.cpp $sep
row "five Deferred<T> types (tests/bench/deferred_types.cpp), header-only" tests/bench/deferred_types.cpp
row "five Deferred<T> types, REACTOR_SEPARATE_COMPILATION" tests/bench/deferred_types.cpp $sep
row "#include \"reactor.hpp\" alone, header-only" "$out/include_only.cpp"
row "#include \"reactor.hpp\" alone, REACTOR_SEPARATE_COMPILATION" "$out/include_only.cpp" $sep
row "the implementation TU (once per program)" "$out/implementation.cpp" $sep
row "reference TU (POSIX sockets + std headers)" tests/bench/footprint_ref.cpp
echo
echo "smallest: $SMALLEST"
echo "aims (#18): echo (reactor) <= 72 KB dynamic and <= 40 KB with the smallest flags;"
echo "      its TU header-only no slower than Asio's, and with REACTOR_SEPARATE_COMPILATION"
echo "      within 1.6x of the reference TU"
