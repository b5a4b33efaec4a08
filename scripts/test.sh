#!/usr/bin/env bash
# Runs every test of the workspace: unit tests, integration tests that start the real binaries,
# and the cross-checks against transformers/peft/openai (from the libtorch virtualenv).
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(scripts/setup-libtorch.sh)"
cargo test --workspace --all-targets "$@"
