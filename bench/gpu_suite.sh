#!/usr/bin/env bash
# The device run: install the carried wheels (diffusers is not on the GPU image), then every bench.
#   run(command="bash bench/gpu_suite.sh --only quoted-a", carry=[".whl", ".cache/ComfyUI"], timeout_s=450)
#   (then quoted-b in a later lease; the plan and its expected time are printed first: --plan prints only that)
# Results: $OUT/suite.json (rewritten after each section), $OUT/log.txt, $OUT/profile_*/ tables.
# CPU smoke run of the same script: OUT=/tmp/suite bash bench/gpu_suite.sh --tiny
set -uo pipefail
OUT="${OUT:-/tmp/ecad-suite}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1 && ! "$PY" -c "import diffusers" 2>/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,clocks.sm,driver_version --format=csv 2>/dev/null | tee "$OUT/log.txt"
"$PY" -m bench.gpu_suite --out "$OUT" "$@" 2>&1 | tee -a "$OUT/log.txt"
