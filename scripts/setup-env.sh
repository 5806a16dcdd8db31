#!/usr/bin/env bash
# Create or update .venv with Cloister and its engine. Idempotent: a second run with the
# same pyproject.toml and engine kind does nothing.
#
#   CLOISTER_ENGINE=cpu|gpu   which vLLM build (default: gpu if nvidia-smi sees a GPU)
#   CLOISTER_TORCH_INDEX=URL  extra pip index for torch==2.13.0+cpu on machines without
#                             a local wheel (e.g. https://download.pytorch.org/whl/cpu)
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/setup-system.sh

# The Node clients of the compatibility tests, exactly as tests/js/package-lock.json pins
# them (npm's registry); again only when the lock changed.
js_stamp=tests/js/node_modules/.cloister-installed
js_want="$(sha256sum tests/js/package-lock.json | cut -c1-16)"
if [ ! -f "$js_stamp" ] || [ "$(cat "$js_stamp")" != "$js_want" ]; then
  npm ci --prefix tests/js --no-audit --no-fund --loglevel=error
  echo "$js_want" > "$js_stamp"
fi

PYTHON=${PYTHON:-python3}
VENV=.venv
if [ -z "${CLOISTER_ENGINE:-}" ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    CLOISTER_ENGINE=gpu
  else
    CLOISTER_ENGINE=cpu
  fi
fi
extras="$CLOISTER_ENGINE,embeddings,test"
stamp="$VENV/.cloister-installed"
want="$(cat pyproject.toml scripts/setup-env.sh | sha256sum | cut -c1-16) $extras"

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
pip=("$VENV/bin/python" -m pip --disable-pip-version-check)
"${pip[@]}" install --quiet --upgrade pip
index=()
[ -n "${CLOISTER_TORCH_INDEX:-}" ] && index=(--extra-index-url "$CLOISTER_TORCH_INDEX")
echo "installing cloister[$extras] into $VENV (first time: a few minutes)" >&2
start=$(date +%s)
"${pip[@]}" install --quiet "${index[@]}" -e ".[$extras]"
if [ "$CLOISTER_ENGINE" = cpu ]; then
  # PyPI's builds of these do not match torch 2.13.0+cpu and break `import transformers`.
  "${pip[@]}" uninstall --quiet -y torchvision torchaudio torchcodec 2>/dev/null || true
fi
# atoma-sdk pins pydantic<2.11 and httpx<0.29 (older than vLLM's); its code runs unchanged
# on the newer ones, so it goes in without its pins (its other imports are test extras).
"${pip[@]}" install --quiet --no-deps atoma-sdk==0.1.3
# NVIDIA's own GPU verifier, for the cross-check of ours (tests/nvidia_gpu_verdict.py): it
# pins cryptography 43 and pyOpenSSL 24, older than ours, so it has an environment of
# its own.
rm -rf .venv-nvidia
"$PYTHON" -m venv .venv-nvidia
.venv-nvidia/bin/python -m pip --disable-pip-version-check install --quiet \
  nv-local-gpu-verifier==2.7.3
"$VENV/bin/python" -c "import vllm, transformers, starlette, pyhpke" 2>/dev/null || {
  echo "setup-env: the engine does not import; see the pip output above" >&2; exit 1; }
echo "$want" > "$stamp"
echo "installed in $(( $(date +%s) - start ))s" >&2
