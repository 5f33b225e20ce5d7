#!/usr/bin/env bash
# The criteria comparison of issue #14 on the starting points (tools/train_starting_points.py).
# Resumable: run it again and finished runs are read, not repeated (runs/criteria-MODEL/...).
#   stage screen: every criterion and every support variant, seed 0, at 50% and 30% of the MACs
#   stage seeds:  the support as it was, the best baseline of the screen (lamp) and the shipped default
#                 (new_default: best_consumer with τ 0, as recipes/resnet18.yaml), seeds 0-2
#                 (the committed resnet18 seeds used best_consumer, τ 0.2: the screen had τ 0 within ±0.2)
#   stage pipeline: like for like: LAMP given the support's distillation and revival (lamp_kd) against
#                 best_consumer, seeds 0-2 (a --variant that sets sparse.criterion is a baseline)
#   stage pipeline-tau0: the same against new_default (τ 0; mobilenet_v2, where τ 0.2 collapses), one report per
#                 target (results/criteria-MODEL-pipeline-TARGET)
#   stage ablation: each support option of the screen alone, against the support as it was and LAMP, seeds 0-2
#                 (seed 0 is the screen's runs), one report per target (TARGETS, default 0.5,0.3:
#                 results/criteria-MODEL-ablation-TARGET)
#   stage latency: the pipeline stage's methods matched on the latency table's predicted time instead of MACs
#                 (allocation latency, half the predicted time), seed 0: results/criteria-MODEL-latency
# Usage: benchmarks/criteria/run.sh MODEL STAGE [extra experiment options, e.g. --criteria]
# (STEPS=N sets the steps per epoch; 50 in the committed results.)
set -euo pipefail
cd "$(dirname "$0")/../.."
model=$1; stage=$2; shift 2
steps=${STEPS:-50}
common=(experiment "$model" --recipe benchmarks/criteria/fashion-mnist.yaml --weights "starting-points/$model.pt"
        --max-steps "$steps" --runs-dir "runs/criteria-$model" --targets 0.5,0.3)
best_consumer="best_consumer: sparse.support_statistic=energy_x_consumer sparse.beta=estimated sparse.distill.alpha=0.7 redense.distill.alpha=0.7 redense.revive=restore"
best_lamp="best_lamp: sparse.support_statistic=energy_lamp sparse.beta=estimated sparse.distill.alpha=0.7 redense.distill.alpha=0.7 redense.revive=restore"
new_default="new_default: sparse.relative_threshold=0 sparse.support_statistic=energy_x_consumer sparse.beta=estimated sparse.distill.alpha=0.7 redense.distill.alpha=0.7 redense.revive=restore"
lamp_kd="lamp_kd: sparse.criterion=lamp sparse.distill.alpha=0.7 redense.distill.alpha=0.7 redense.revive=restore"
variants=(
  --variant "consumer: sparse.support_statistic=energy_x_consumer"
  --variant "frequency: sparse.support_statistic=frequency"
  --variant "gradual: sparse.prune_at=[1,2] sparse.target_schedule=linear"
  --variant "distill: sparse.distill.alpha=0.7 redense.distill.alpha=0.7"
  --variant "restore: redense.revive=restore"
  --variant "beta: sparse.beta=estimated"
  --variant "tau0: sparse.relative_threshold=0"
  --variant "$best_lamp"
  --variant "$best_consumer"
)
case $stage in
  screen) exec python -m supportprune "${common[@]}" --seeds 0 --out "results/criteria-$model-screen" "${variants[@]}" "$@" ;;
  seeds)  exec python -m supportprune "${common[@]}" --seeds 0,1,2 --out "results/criteria-$model" --criteria support,lamp \
               --variant "$new_default" "$@" ;;
  pipeline) exec python -m supportprune "${common[@]}" --seeds 0,1,2 --out "results/criteria-$model-pipeline" --criteria lamp \
               --variant "$best_consumer" --variant "$lamp_kd" "$@" ;;
  pipeline-tau0)
    for target in 0.5 0.3; do
      python -m supportprune experiment "$model" --recipe benchmarks/criteria/fashion-mnist.yaml --weights "starting-points/$model.pt" \
        --max-steps "$steps" --runs-dir "runs/criteria-$model" --targets "$target" --seeds 0,1,2 --criteria lamp \
        --variant "$new_default" --variant "$lamp_kd" --out "results/criteria-$model-pipeline-$target" "$@"
    done ;;
  ablation)
    for target in ${TARGETS:-0.5 0.3}; do
      python -m supportprune experiment "$model" --recipe benchmarks/criteria/fashion-mnist.yaml --weights "starting-points/$model.pt" \
        --max-steps "$steps" --runs-dir "runs/criteria-$model" --targets "$target" --seeds 0,1,2 --criteria support,lamp \
        "${variants[@]:0:14}" --out "results/criteria-$model-ablation-$target" "$@"
    done ;;
  latency)
    exec python -m supportprune experiment "$model" --recipe benchmarks/criteria/fashion-mnist.yaml --weights "starting-points/$model.pt" \
        --max-steps "$steps" --runs-dir "runs/criteria-$model" --targets 0.5 --seeds 0 --criteria lamp --allocations latency \
        --variant "$new_default" --variant "$lamp_kd" --out "results/criteria-$model-latency" "$@" ;;
  *) echo "stage: screen, seeds, pipeline, pipeline-tau0, ablation or latency" >&2; exit 2 ;;
esac
