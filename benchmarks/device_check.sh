#!/usr/bin/env bash
# The prepared GPU check (benchmarks/device_check.py): install what the lent machine lacks, then run the steps.
#   on the GPU machine (device tool, timeout_s 540; the two calls and what they carry: benchmarks/README.md):
#       bash benchmarks/device_check.sh
#   here and in CI:  bash benchmarks/device_check.sh --cpu-smoke
# .whl holds the wheels `make device-wheels` downloads (the image has torch, transformers, peft, accelerate,
# triton, but not TRL, datasets, pydantic, liger-kernel...). The package itself comes from jobs/ on PYTHONPATH.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
# the carried wheels are for the GPU machine's CPython 3.12; the CPU mode runs on the environment it is given
if [[ " $* " != *" --cpu-smoke "* ]] && compgen -G ".whl/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "device_check: installing .whl/*.whl failed" >&2; exit 1; }
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
# the demo model's GGUF, carried in parts over two calls (make device-wheels cuts it): joined for its GPU test
if [[ " $* " != *" --cpu-smoke "* ]] && [ -f .smollm2/a ] && [ -f .smollm2/b ]; then
  cat .smollm2/? > /tmp/smollm2.gguf && export LOGANALYZER_SMOLLM2_GGUF=/tmp/smollm2.gguf
fi
export PYTHONPATH=$PWD/jobs${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec "$PY" benchmarks/device_check.py "$@"
