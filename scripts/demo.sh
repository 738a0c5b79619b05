#!/bin/sh
# Builds ivh-reclaimd and runs the live demo against the gateway simulator.
set -eu
cd "$(dirname "$0")/.."
./scripts/deps.sh
cmake -S . -B build -DIVH_BUILD_TESTS=OFF >/dev/null
cmake --build build -j "$(nproc)" >/dev/null
exec /usr/bin/python3 scripts/demo.py --binary build/ivh-reclaimd "$@"
