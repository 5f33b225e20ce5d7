"""Gradual pruning: the MACs target of each alternation point follows sparse.target_schedule."""

import pytest
import torch

from supportprune.method import dsd
from supportprune.method.pruning import count_macs_params
from supportprune.inputs.typed_yaml import RecipeError
from supportprune.inputs.recipe import SparseConfig, recipe_from_dict
from supportprune.method.convert import convert_relus
from tests.tiny_models import TinyConcatNet


def _config(schedule: str, **extra) -> SparseConfig:
    return SparseConfig(epochs=3, prune_at=(1, 2, 3), target_macs=0.4, target_schedule=schedule, **extra)


def test_schedules_by_hand():
    # point k of 3, r = k/3, t = 0.4: linear 1 − 0.6·r; cubic 0.4 + 0.6·(1 − r)³; final t throughout
    assert [dsd.scheduled_target(_config("linear"), e) for e in (1, 2, 3)] == pytest.approx([0.8, 0.6, 0.4])
    assert [dsd.scheduled_target(_config("cubic"), e) for e in (1, 2, 3)] == pytest.approx(
        [0.4 + 0.6 * 8 / 27, 0.4 + 0.6 / 27, 0.4])
    assert [dsd.scheduled_target(_config("final"), e) for e in (1, 2, 3)] == [0.4, 0.4, 0.4]
    latency = dsd.scheduled_config(_config("linear", allocation="latency", target_latency=0.7), 1)
    assert (latency.target_macs, latency.target_latency) == pytest.approx((0.8, 0.9))


@pytest.mark.parametrize("schedule", ["linear", "cubic"])
def test_kept_macs_follow_the_schedule_and_reach_the_target(schedule):
    torch.manual_seed(0)
    example = torch.zeros(2, 1, 12, 12)
    model = convert_relus(TinyConcatNet(), example)
    baseline, _ = count_macs_params(model, example)
    config = _config(schedule, criterion="l1", round_to=1)
    macs = []
    for epoch in config.alternation_epochs:
        scheduled = dsd.scheduled_config(config, epoch)
        result = dsd.alternation_point(model, example, scheduled, baseline)
        assert result.macs <= scheduled.target_macs * baseline  # each point meets its own target
        macs.append(result.macs)
    assert macs[0] > 0.4 * baseline  # the first point cuts less than one-shot pruning to the target would
    assert macs == sorted(macs, reverse=True)
    assert macs[-1] <= 0.4 * baseline


def test_schedule_keys_are_validated():
    with pytest.raises(RecipeError, match="sparse.target_schedule: must be one of final, linear, cubic"):
        recipe_from_dict({"sparse": {"target_schedule": "steep"}})
    with pytest.raises(RecipeError, match="sparse.target_schedule: a gradual schedule interpolates to target_macs"):
        recipe_from_dict({"sparse": {"target_schedule": "cubic"}})
