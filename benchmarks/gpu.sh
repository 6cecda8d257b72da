#!/usr/bin/env bash
# The prepared GPU check (issues 14 and 35): under 10 minutes on one GPU (two when >= 2 GPUs are present).
#   bash benchmarks/gpu.sh [OUT_DIR]      (default: $OUT if set, else /tmp/rlg-gpu)
# 1. Real shapes first (benchmarks/real_shapes.py): SD1.5 + DPO, SDXL + SPO-LoRA, SD3.5-M + Flow-GRPO at their
#    real sizes with random weights and the upstream adapter layouts, at the preset's own resolution, 2 steps,
#    two scales, bf16 on cuda: parameters, peak memory, seconds per network evaluation (what a first real run
#    of those presets would hit: a shape, a LoRA that matches nothing, an out-of-memory).
# 2. The real checkpoints, where the HF cache holds them (offline): each such preset with debug=fast.
# 3. benchmarks/gpu.py: realistic shapes, fp32 vs bf16, torch.compile, micro-batches, MFU, bit-stability;
#    with >= 2 GPUs, the per-rank device check.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-/tmp/rlg-gpu}}"
mkdir -p "$out"
py="${PYTHON:-python}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 OMP_NUM_THREADS="${OMP_NUM_THREADS:-8}"
t0=$SECONDS

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpus.txt"

# 1. real shapes: ~1 min each (most of it building random weights on the CPU); hard stop 100 s each
for preset in hp_sd15_dpo hp_sdxl_spo hp_sd35m_flowgrpo; do
  size=$("$py" -c "from benchmarks.real_shapes import compose; print(compose('$preset').sampler.height)")
  if ! timeout 100 "$py" benchmarks/real_shapes.py --preset "$preset" --device cuda --size "$size" \
      --json "$out/real_shapes.jsonl" >"$out/real_shapes_$preset.log" 2>&1; then
    echo "# real shapes $preset FAILED or timed out; the end of its log:"; tail -20 "$out/real_shapes_$preset.log"
  else
    tail -1 "$out/real_shapes_$preset.log" | tee -a "$out/gpu.md"
  fi
done

# 2. real checkpoints present in the HF cache (offline): each preset end to end in its smoke form
for preset in $("$py" benchmarks/real_shapes.py --cached 2>/dev/null); do
  if [ $((SECONDS - t0)) -gt 240 ]; then echo "# real checkpoints: $preset skipped (time)"; continue; fi
  if timeout 90 "$py" run.py experiment="$preset" debug=fast paths.root="$out/real_checkpoints" \
      >"$out/real_$preset.log" 2>&1; then
    echo "# real checkpoints: $preset ok" | tee -a "$out/gpu.md"
  else
    echo "# real checkpoints: $preset FAILED; the end of its log:" | tee -a "$out/gpu.md"
    tail -20 "$out/real_$preset.log"
  fi
done

# 3. gpu.py with what is left of 7 minutes (what would start later is skipped and listed)
left=$((420 - (SECONDS - t0)))
if [ "$left" -gt 60 ]; then
  if ! timeout "$((left + 30))" "$py" benchmarks/gpu.py --budget-s "$left" --json "$out/gpu.json" 2>"$out/gpu.err" \
      | tee -a "$out/gpu.md"; then
    echo "# gpu.py failed or timed out; the end of its stderr:"; tail -30 "$out/gpu.err"
  fi
else
  echo "# gpu.py skipped: ${left}s left of the 7-minute budget" | tee -a "$out/gpu.md"
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
