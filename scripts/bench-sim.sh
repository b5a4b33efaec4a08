#!/usr/bin/env bash
# Benchmarks against tailor-sim. Not tests: numbers are reported, never asserted.
#
#   scripts/bench-sim.sh                 # the simulator: 1,000 custom objects created under 5
#                                        # watchers; request latency, watch delivery, its memory
#   scripts/bench-sim.sh operator [N]    # the operator: N (500) suspended FineTuneJobs applied at
#                                        # once; time until all have a status, FineTuneJob
#                                        # reconcile p50/p99, the operator's peak RSS
#   scripts/bench-sim.sh deployments [N] # the operator: N (200) ModelDeployments whose pods stay
#                                        # Pending; the same figures for ModelDeployments
#
# PROFILE=debug runs the debug builds (dependencies are optimised even there; see Cargo.toml).
set -euo pipefail
cd "$(dirname "$0")/.."
profile=(--release)
[[ "${PROFILE:-release}" == debug ]] && profile=()
case "${1:-}" in
  operator | deployments)
    kind=finetunejobs
    [[ "$1" == deployments ]] && kind=modeldeployments
    # The suite's environment: the trainer runs the bench Dataset's prepare Job (libtorch).
    eval "$(scripts/setup-libtorch.sh)"
    # The workspace build the bench itself makes sure of (binaries.rs): `cargo run -p tailor-e2e`
    # would resolve features for that package alone and compile the dependencies a second time.
    if ((${#profile[@]})); then
      cargo build --release -q --workspace --bins
      dir=release
    else
      cargo build -q --workspace --all-targets
      dir=debug
    fi
    exec "${CARGO_TARGET_DIR:-target}/$dir/tailor-e2e-bench" "$kind" ${2:+"$2"}
    ;;
esac
cargo run "${profile[@]}" -q -p tailor-sim --bin tailor-sim -- bench --objects "${OBJECTS:-1000}" --watchers "${WATCHERS:-5}"
