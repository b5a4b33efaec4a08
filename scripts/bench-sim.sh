#!/usr/bin/env bash
# Benchmarks against tailor-sim. Not tests: numbers are reported, never asserted.
#
#   scripts/bench-sim.sh                 # the simulator: 1,000 custom objects created under 5
#                                        # watchers; request latency, watch delivery, its memory
#   scripts/bench-sim.sh operator [N]    # the operator: N (500) suspended FineTuneJobs applied at
#                                        # once; time until all have a status, FineTuneJob
#                                        # reconcile p50/p99, the operator's peak RSS
#
# PROFILE=debug runs the debug builds (dependencies are optimised even there; see Cargo.toml).
set -euo pipefail
cd "$(dirname "$0")/.."
profile=(--release)
[[ "${PROFILE:-release}" == debug ]] && profile=()
if [[ "${1:-}" == operator ]]; then
  # The suite's environment: the trainer runs the bench Dataset's prepare Job (libtorch).
  eval "$(scripts/setup-libtorch.sh)"
  exec cargo run "${profile[@]}" -q -p tailor-e2e --bin tailor-e2e-bench -- "${2:-500}"
fi
cargo run "${profile[@]}" -q -p tailor-sim --bin tailor-sim -- bench --objects "${OBJECTS:-1000}" --watchers "${WATCHERS:-5}"
