#!/usr/bin/env bash
# tailor-sim benchmark: 1,000 custom objects created under 5 watchers; prints request latency,
# watch delivery and the simulator's memory. Not a test: numbers are reported, never asserted.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo run --release -q -p tailor-sim --bin tailor-sim -- bench --objects "${OBJECTS:-1000}" --watchers "${WATCHERS:-5}"
