#!/bin/bash
cd "$(dirname "$0")/../.."
while [ ! -f starting-points/vgg11_bn.pt ]; do sleep 20; done
OMP_NUM_THREADS=1 exec python -m supportprune experiment vgg11_bn --recipe benchmarks/criteria/fashion-mnist.yaml --weights starting-points/vgg11_bn.pt --max-steps 20 --runs-dir runs/criteria-vgg11_bn --targets 0.5 --seeds 0 --criteria lamp --variant "new_default: sparse.relative_threshold=0 sparse.support_statistic=energy_x_consumer sparse.beta=estimated sparse.distill.alpha=0.7 redense.distill.alpha=0.7 redense.revive=restore" --out results/criteria-vgg11_bn
