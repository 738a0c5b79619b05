#!/bin/sh
# Builds ivh-reclaimd and runs the live demo against the gateway simulator.
set -eu
cd "$(dirname "$0")/.."
./scripts/deps.sh
cmake -S . -B build >/dev/null
cmake --build build --target ivh-reclaimd -j "$(nproc)" >/dev/null
exec /usr/bin/python3 scripts/demo.py --binary build/ivh-reclaimd "$@"
