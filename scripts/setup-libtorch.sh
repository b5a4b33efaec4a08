#!/usr/bin/env bash
# Creates (or reuses) the Python virtualenv that provides libtorch for tch and the
# reference implementations (transformers, peft) and the openai client used by tests, and
# boto3 (the peer scripts/bench-fetch.sh measures tailor-fetch against).
#
# The venv lives outside the repository so CI and repeated runs reuse it:
#   ${TAILOR_CACHE:-$HOME/.cache/tailor}/venv
#
# Usage:  eval "$(scripts/setup-libtorch.sh)"      # exports the environment
#         scripts/setup-libtorch.sh --print-env     # only prints it, installs nothing new
set -euo pipefail

TORCH_VERSION="2.13.0"
cache="${TAILOR_CACHE:-$HOME/.cache/tailor}"
venv="$cache/venv"
stamp="$venv/.tailor-setup-v2-boto3"
python="${PYTHON:-python3}"

log() { echo "setup-libtorch: $*" >&2; }

if [[ "${1:-}" != "--print-env" && ! -f "$stamp" ]]; then
  mkdir -p "$cache"
  if [[ ! -x "$venv/bin/python" ]]; then
    log "creating virtualenv in $venv"
    "$python" -m venv "$venv"
  fi
  log "installing torch==$TORCH_VERSION, transformers, peft, safetensors, tokenizers, openai, boto3 (a few minutes on a cold cache)"
  "$venv/bin/python" -m pip install --quiet --upgrade pip >&2
  "$venv/bin/python" -m pip install --quiet \
    "torch==$TORCH_VERSION" transformers peft safetensors tokenizers openai \
    numpy pyyaml requests boto3 >&2
  touch "$stamp"
fi

torch_lib="$("$venv/bin/python" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')"
cat <<ENV
export LIBTORCH_USE_PYTORCH=1
export TAILOR_VENV="$venv"
export PATH="$venv/bin:\$PATH"
export LD_LIBRARY_PATH="$torch_lib\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
ENV
