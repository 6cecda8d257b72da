#!/usr/bin/env bash
# The prepared GPU check of issue 14: at most 10 minutes on one GPU (two when >= 2 GPUs are present).
#   bash benchmarks/gpu.sh [OUT_DIR]      (default: $OUT if set, else /tmp/rlg-gpu)
# Prints one table (benchmarks/gpu.py: realistic shapes, fp32 vs bf16, torch.compile on/off,
# micro-batch sizes, images/s, peak memory, MFU, bit-stability) and, with >= 2 GPUs, the per-rank
# device check (each torchrun rank's harness run must allocate on cuda:LOCAL_RANK only).
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-/tmp/rlg-gpu}}"
mkdir -p "$out"
py="${PYTHON:-python}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpus.txt"
# 420 s of measurements (what would start later is skipped and listed), hard stop at 480 s
if ! timeout 480 "$py" benchmarks/gpu.py --budget-s 420 --json "$out/gpu.json" 2>"$out/gpu.err" | tee "$out/gpu.md"; then
  echo "# gpu.py failed or timed out; the end of its stderr:"; tail -30 "$out/gpu.err"
fi

n_gpus="$("$py" -c 'import torch; print(torch.cuda.device_count())')"
if [ "$n_gpus" -ge 2 ]; then
  "$py" -c 'from rlg.pairs import tiny_spec; tiny_spec("sd", "peft_lora")'  # build the tiny pair once, not per rank
  if ! timeout 100 "$py" -m torch.distributed.run --standalone --nproc_per_node=2 benchmarks/gpu.py --rank-check \
      --run-root "$out/rankcheck" --json "$out/rankcheck" 2>"$out/rankcheck.err" | tee -a "$out/gpu.md"; then
    echo "# per-rank device check FAILED; the end of its stderr:" | tee -a "$out/gpu.md"; tail -30 "$out/rankcheck.err"
  fi
else
  echo "# per-rank device check: skipped ($n_gpus GPU)" | tee -a "$out/gpu.md"
fi
