#!/usr/bin/env bash
# Every GPU figure of issue #4 in one call, each side by side in one process:
#   goal 1  training step, plain ReLU vs B-alternation, fp32/bf16 × eager/compiled (resnet18, batch 256)
#   goals 2, 3  dense vs support-pruned resnet18 at 224×224 on ONNX Runtime's CUDA provider, fp32 and fp16,
#           global vs latency-aware allocation, round_to 8 and 64, batch 1 and 256
#   then the embedded default run on the GPU, and googlenet / vgg16 with both allocations.
# Usage: tools/gpu_benchmarks.sh OUTDIR   (needs a CUDA GPU and onnxruntime-gpu; about 20 minutes on an H100)
set -uo pipefail
out=${1:?usage: tools/gpu_benchmarks.sh OUTDIR}
mkdir -p "$out"
python3 -c "import torch, onnxruntime as o; print(torch.__version__, torch.cuda.get_device_name(0), o.__version__, o.get_available_providers())" | tee "$out/env.txt"
python3 tools/bench_train_step.py --device cuda --compile both --out "$out/train-step.md" > "$out/train-step.log" 2>&1
tail -n 12 "$out/train-step.md"
python3 tools/bench_pruned.py --model resnet18 --input-size 224 --targets 0.5 --round-to 8,64 \
  --allocations global,latency --precisions fp32,fp16 --batch-sizes 1,256 --runs 50 --warmup 10 --device cuda \
  --out "$out/bench-resnet18.md" > "$out/bench-resnet18.log" 2>&1
tail -n 16 "$out/bench-resnet18.md"
start=$(date +%s)
python3 -m supportprune compress resnet18 --out "$out/run-resnet18" --device cuda > "$out/compress-resnet18.log" 2>&1
echo "compress wall time: $(( $(date +%s) - start )) s" | tee -a "$out/compress-resnet18.log"
for model in googlenet vgg16; do
  python3 tools/bench_pruned.py --model "$model" --input-size 224 --targets 0.5 --round-to 8 \
    --allocations global,latency --precisions fp16 --batch-sizes 256 --runs 30 --warmup 10 --device cuda \
    --out "$out/bench-$model.md" > "$out/bench-$model.log" 2>&1
  tail -n 6 "$out/bench-$model.md"
done
