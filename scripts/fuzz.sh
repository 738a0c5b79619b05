#!/bin/sh
# Builds the libFuzzer targets with clang (ASan+UBSan) and runs each for a
# bounded time on a copy of its seed corpus (fuzz/corpus/NAME). Usage:
#   scripts/fuzz.sh [SECONDS_PER_TARGET]      (default 60)
# New inputs found are kept in build-fuzz/corpus-NAME; copy the interesting
# ones into fuzz/corpus/NAME to keep them.
set -eu
cd "$(dirname "$0")/.."
seconds=${1:-60}

CC=clang cmake -S . -B build-fuzz -DIVH_FUZZ=ON -DIVH_BUILD_TESTS=OFF -DIVH_WERROR=ON \
        -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build-fuzz -j "$(nproc)" --target fuzz-list fuzz-config

for name in list config; do
        work=build-fuzz/corpus-$name
        mkdir -p "$work"
        cp -n fuzz/corpus/$name/* "$work"/ 2>/dev/null || true
        echo "== fuzz-$name for ${seconds}s ($(ls "$work" | wc -l) inputs to start from)"
        # -rss_limit_mb bounds memory per input; a crash, leak or timeout fails the run.
        ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
                build-fuzz/fuzz-$name -max_total_time="$seconds" -timeout=10 -rss_limit_mb=1024 \
                -max_len=65536 -print_final_stats=1 "$work" 2>build-fuzz/fuzz-$name.log ||
                { tail -50 build-fuzz/fuzz-$name.log; echo "fuzz-$name FAILED"; exit 1; }
        grep -E "stat::number_of_executed_units|stat::peak_rss_mb" build-fuzz/fuzz-$name.log | tr '\n' ' '
        echo "corpus: $(ls "$work" | wc -l) inputs; 0 crashes"
done
