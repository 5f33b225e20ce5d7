# The support variants that combine what screened best (sourced by run.sh's seeds stage).
best=(
  --variant "best_lamp: sparse.support_statistic=energy_lamp sparse.beta=estimated sparse.distill.alpha=0.7 redense.distill.alpha=0.7 redense.revive=restore"
  --variant "best_consumer: sparse.support_statistic=energy_x_consumer sparse.beta=estimated sparse.distill.alpha=0.7 redense.distill.alpha=0.7 redense.revive=restore"
)
