#!/usr/bin/env bash
# Every GPU measurement of issue #24 in one call, into ONE results file. Each step has a time limit (together
# 470 s, under the issue's 8 minutes); a step that runs out leaves its log's tail in the file instead of its table.
#   1. resnet18 224×224 fp16, dense vs support-pruned to half: global allocation (MACs) vs measured allocation (whole
#      models timed on the CUDA provider, fp16, batch 256), channels in 16s, batch 1 and 256, tuned CUDA options,
#      CUDA graphs at batch 1 (--cuda-graph), TensorRT when installed (--tensorrt auto)
#   2. why: fp32/fp16 global in 16s and 64s, the dense/pruned graphs as ORT optimises them for CUDA (--compare-graphs:
#      NHWC Transposes, fusions) and every layer alone at dense and pruned widths (--profile; ORT's own per-node
#      times on CUDA are launch times, the layers-alone table is GPU time)
#   3. int8 QDQ: timed under TensorRT, or marked "not accelerated on CUDA" on the CUDA provider alone
#   4. training step, eager (the goal's setting): plain ReLU vs B-alternation, fp32/bf16 (tools/bench_train_step.py)
# Usage (repository root; shared/docs/gpu.md: onnxruntime-gpu and torch-pruning installed from the carried wheels):
#   PYTHONPATH=/tmp/site:$PWD bash tools/gpu_benchmarks.sh "$OUT"
# Writes $OUT/gpu-benchmarks.md (date, device, command, every table) and one log per step under $OUT.
set -uo pipefail
out=${1:?usage: tools/gpu_benchmarks.sh OUTDIR}
mkdir -p "$out"
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD"
report="$out/gpu-benchmarks.md"
command_line="PYTHONPATH=${PYTHONPATH} bash tools/gpu_benchmarks.sh $out"

if ! python3 - > "$out/env.txt" 2>&1 <<'PY'
import sys
import torch
import onnxruntime as ort
if not torch.cuda.is_available():
    sys.exit("no CUDA GPU visible to torch: run this on the GPU machine")
if "CUDAExecutionProvider" not in ort.get_available_providers():
    sys.exit(f"onnxruntime {ort.__version__} has no CUDAExecutionProvider: install onnxruntime-gpu "
             "(shared/tools/ort-gpu-wheel.sh) and put it first on PYTHONPATH")
import torch_pruning  # noqa: F401  (carried wheel)
print(f"device: {torch.cuda.get_device_name(0)}; torch {torch.__version__}; onnxruntime {ort.__version__}; "
      f"providers {ort.get_available_providers()}")
PY
then
  echo "gpu_benchmarks.sh: $(tail -n 1 "$out/env.txt")" >&2
  exit 2
fi
{
  echo "# GPU benchmarks of issue #24"
  echo
  echo "Date $(date -u +%Y-%m-%dT%H:%M:%SZ); $(cat "$out/env.txt")."
  echo "Command: \`$command_line\` (commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown))."
  echo "Random weights throughout: timings depend on widths, not values. Speed-ups are side by side in one process."
  echo
} > "$report"

step() {  # step TITLE SECONDS LOG MD -- command...: run with a time limit, append its markdown (or why not)
  local title=$1 limit=$2 log=$3 md=$4; shift 5
  local start=$(date +%s)
  timeout "$limit" "$@" > "$log" 2>&1
  local rc=$?
  { echo "## $title"; echo
    if [ -s "$md" ]; then cat "$md"; else echo "(no table: exit $rc after $(( $(date +%s) - start )) s; last lines of $(basename "$log"):)"; echo '```'; tail -n 15 "$log"; echo '```'; fi
    echo; echo "(exit $rc, $(( $(date +%s) - start )) s)"; echo; } >> "$report"
  echo "$title: exit $rc, $(( $(date +%s) - start )) s"
}

step "resnet18 fp16: dense vs pruned to half, global (MACs) vs measured (time) allocation, CUDA graphs at batch 1" 240 \
  "$out/bench-measured.log" "$out/bench-measured.md" -- \
  python3 tools/bench_pruned.py --model resnet18 --input-size 224 --targets 0.5 --round-to 16 \
    --allocations global,measured --precisions fp16 --batch-sizes 1,256 --runs 30 --warmup 5 --device cuda \
    --cuda-graph --tensorrt auto --out "$out/bench-measured.md"

step "resnet18 fp32/fp16 global, 16s and 64s: why (graphs as ORT optimises them for CUDA, each layer alone)" 110 \
  "$out/bench-why.log" "$out/bench-why.md" -- \
  python3 tools/bench_pruned.py --model resnet18 --input-size 224 --targets 0.5 --round-to 16,64 \
    --allocations global --precisions fp32,fp16 --batch-sizes 256 --runs 20 --warmup 5 --device cuda \
    --compare-graphs --profile --profile-runs 10 --out "$out/bench-why.md"

step "int8 QDQ on the GPU (TensorRT when installed, else marked not accelerated on CUDA)" 50 \
  "$out/bench-int8.log" "$out/bench-int8.md" -- \
  python3 tools/bench_pruned.py --model resnet18 --input-size 224 --targets 0.5 --round-to 16 \
    --allocations global --precisions fp32,int8 --batch-sizes 256 --runs 20 --warmup 5 --device cuda \
    --tensorrt auto --out "$out/bench-int8.md"

step "training step, eager: B-alternation vs plain ReLU (goal 0.97)" 70 \
  "$out/train-step.log" "$out/train-step.md" -- \
  python3 tools/bench_train_step.py --device cuda --compile no --out "$out/train-step.md"

rm -rf "$out"/*-graphs  # the optimised models (tens of MiB each) are too large to bring back; the report holds the diff
echo "results: $report"
