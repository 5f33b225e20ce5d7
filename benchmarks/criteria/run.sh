#!/usr/bin/env bash
# The criteria comparison of issue #14 on the starting points (tools/train_starting_points.py).
# Resumable: run it again and finished runs are read, not repeated (runs/criteria-MODEL/...).
#   stage screen: every criterion and every support variant, seed 0, at 50% and 30% of the MACs
#   stage seeds:  the support default and variants that screened best, and the best baselines, seeds 0-2
# Usage: benchmarks/criteria/run.sh MODEL STAGE [extra experiment options]
set -euo pipefail
cd "$(dirname "$0")/../.."
model=$1; stage=$2; shift 2
steps=${STEPS:-50}
common=(experiment "$model" --recipe benchmarks/criteria/fashion-mnist.yaml --weights "starting-points/$model.pt"
        --max-steps "$steps" --runs-dir "runs/criteria-$model" --targets 0.5,0.3)
variants=(
  --variant "consumer: sparse.support_statistic=energy_x_consumer"
  --variant "frequency: sparse.support_statistic=frequency"
  --variant "gradual: sparse.prune_at=[1,2] sparse.target_schedule=linear"
  --variant "distill: sparse.distill.alpha=0.7 redense.distill.alpha=0.7"
  --variant "restore: redense.revive=restore"
  --variant "beta: sparse.beta=estimated"
  --variant "tau0: sparse.relative_threshold=0"
  --variant "lamp: sparse.support_statistic=energy_lamp"
)
source benchmarks/criteria/best-variants.sh
case $stage in
  screen) exec python -m supportprune "${common[@]}" --seeds 0 --out "results/criteria-$model-screen" "${variants[@]}" "$@" ;;
  seeds)  exec python -m supportprune "${common[@]}" --seeds 0,1,2 --out "results/criteria-$model" "${best[@]}" "$@" ;;
  *) echo "stage: screen or seeds" >&2; exit 2 ;;
esac
