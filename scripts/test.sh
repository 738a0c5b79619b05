#!/bin/sh
# The whole test suite: installs dependencies, checks formatting, builds with
# -Werror, runs every test (unit, integration, chaos, valgrind soak), then
# again under AddressSanitizer+UBSan, then each fuzzer for a bounded time.
set -eu
cd "$(dirname "$0")/.."

./scripts/deps.sh

echo "== clang-format"
clang-format --dry-run --Werror daemon/*.c daemon/*.h tests/unit/*.c fuzz/*.c bench/*.c

jobs=$(nproc)
echo "== build (-Werror)"
cmake -S . -B build -DIVH_WERROR=ON -DIVH_SANITIZE=OFF -DIVH_BUILD_TESTS=ON >/dev/null
cmake --build build -j "$jobs"
echo "== tests"
ctest --test-dir build --output-on-failure -j "$jobs"

echo "== build (ASan+UBSan, -Werror)"
cmake -S . -B build-sanitize -DIVH_WERROR=ON -DIVH_SANITIZE=ON -DIVH_BUILD_TESTS=ON -DCMAKE_BUILD_TYPE=Debug >/dev/null
cmake --build build-sanitize -j "$jobs"
echo "== tests under ASan+UBSan"
ASAN_OPTIONS=detect_leaks=1:abort_on_error=0:exitcode=86 \
UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
        ctest --test-dir build-sanitize --output-on-failure -j "$jobs"
echo "== fuzzing (libFuzzer, ASan+UBSan), ${IVH_FUZZ_SECONDS:-60}s per target"
./scripts/fuzz.sh "${IVH_FUZZ_SECONDS:-60}"
echo "== all tests passed (plain and sanitized builds, fuzzers)"
