#!/usr/bin/env bash
# GPU figures for the README and benchmarks/results/: the embedded default run on the GPU, then the
# side-by-side ONNX Runtime benchmark of dense vs support-pruned resnet18, vgg16 and googlenet at 224×224.
# Usage: tools/gpu_benchmarks.sh OUTDIR   (needs a CUDA GPU and onnxruntime-gpu)
set -uo pipefail
out=${1:?usage: tools/gpu_benchmarks.sh OUTDIR}
mkdir -p "$out"
python3 -c "import torch, onnxruntime as o; print(torch.__version__, torch.cuda.get_device_name(0), o.__version__, o.get_available_providers())" | tee "$out/env.txt"
start=$(date +%s)
python3 -m supportprune compress resnet18 --out "$out/run-resnet18" --device cuda 2>&1 | tee "$out/compress-resnet18.log"
echo "compress wall time: $(( $(date +%s) - start )) s" | tee -a "$out/compress-resnet18.log"
for model in resnet18 googlenet vgg16; do
  python3 tools/bench_pruned.py --model "$model" --input-size 224 --targets 0.5 --round-to 1,8 \
    --batch-sizes 1,256 --runs 50 --warmup 10 --device cuda --out "$out/bench-$model.md" 2>&1 | tail -n 20
done
