#!/usr/bin/env bash
# The criteria comparison on the vgg11_bn starting point, seed 0, one target per call (resumable).
# VGG-11's 4096-wide classifier makes each run about 20 minutes on one core (mostly the 10,000-image
# evaluations), so this compares the default pipeline with the two strongest baselines of resnet18 and
# mobilenet_v2 (LAMP and group L1) only.
# Usage: [CRITERIA=lamp] [SEEDS=0,1,2] benchmarks/criteria/vgg11_bn.sh TARGET   (0.5 or 0.3; the committed 0.3 ran lamp only)
# (OUT=DIR writes the report elsewhere: two calls for different seeds can then run side by side)
set -euo pipefail
cd "$(dirname "$0")/../.."
target=$1
exec python -m supportprune experiment vgg11_bn --recipe benchmarks/criteria/fashion-mnist.yaml \
  --weights starting-points/vgg11_bn.pt --max-steps 20 --runs-dir runs/criteria-vgg11_bn --targets "$target" \
  --seeds "${SEEDS:-0}" --criteria "${CRITERIA:-lamp,l1}" \
  --variant "new_default: sparse.relative_threshold=0 sparse.support_statistic=energy_x_consumer sparse.beta=estimated sparse.distill.alpha=0.7 redense.distill.alpha=0.7 redense.revive=restore" \
  --out "${OUT:-results/criteria-vgg11_bn-$target}"
