"""Learned sparsity before the cut (sparse.group_decay, issue #20): the growing rate by hand, the fade of the
producing weights by hand, and a compress run whose support reaches its MACs target with the channels it cut at
(almost) zero support, where the same run without the decay cuts channels that still carry energy."""

import json
import math

import pytest
import torch
from supportprune.inputs.typed_yaml import RecipeError
from supportprune.inputs.recipe import recipe_from_dict
from supportprune.method.group_decay import decay_rate, fade, producing_slices
from supportprune.method.convert import convert_relus
from supportprune.method.support import support_sites
from tests.test_collapse_guard import EXAMPLE, WideFC


def test_rates_grow_linearly_and_sum_to_the_decay():
    rates = [decay_rate(t, 4, 5.0) for t in range(1, 5)]
    assert rates == pytest.approx([0.5, 1.0, 1.5, 2.0])  # 5 · 2t / (4 · 5)
    assert decay_rate(0, 4, 5.0) == decay_rate(5, 4, 5.0) == 0.0  # outside the steps before the cut


def test_fade_scales_exactly_the_producers_of_the_cut_channels():
    torch.manual_seed(0)
    model = convert_relus(WideFC(), EXAMPLE)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    keep = {name: torch.ones(site.channels) for name, site in support_sites(model)}
    site = next(name for name, s in support_sites(model) if s.channels == 8)  # conv1's (the first 8-channel site)
    keep[site][[1, 5]] = 0
    slices = producing_slices(model, EXAMPLE, keep)
    assert sorted(slices) == [("bn1", [1, 5]), ("conv1", [1, 5])]
    fade(model, slices, math.log(4.0))
    after = model.state_dict()
    for key in ("conv1.weight", "conv1.bias", "bn1.weight", "bn1.bias"):
        torch.testing.assert_close(after[key][[1, 5]], before[key][[1, 5]] / 4)
        torch.testing.assert_close(after[key][[0, 2, 3, 4, 6, 7]], before[key][[0, 2, 3, 4, 6, 7]])
    assert torch.equal(after["conv2.weight"], before["conv2.weight"])  # the consumers are left alone


RECIPE = {
    "version": 1, "description": "test: group decay", "seed": 0,
    "data": {"source": "embedded", "input_size": 16, "batch_size": 16},
    "dense": {"epochs": 0},
    "sparse": {"epochs": 2, "lr": 0.01, "prune_at": [1], "target_macs": 0.5, "round_to": 1, "distill": None,
               "group_decay": 0.0},
    "redense": {"epochs": 0},
}


def _cut(tmp_path, decay):
    """A compress run as experiment makes it (no export): its result.json."""
    from supportprune.pipelines.compress import compress

    recipe = recipe_from_dict({**RECIPE, "sparse": {**RECIPE["sparse"], "group_decay": decay}})
    out = tmp_path / f"out{decay}"
    compress("tests.tiny_models:tiny_plain", recipe, out, device="cpu", max_steps_per_epoch=8, deliver=False)
    return json.loads((out / "result.json").read_text())


def test_the_learned_support_reaches_its_target_at_zero_support(tmp_path):
    faded, plain = _cut(tmp_path, 8.0), _cut(tmp_path, 0.0)
    for run in (faded, plain):
        assert run["alternations"][0]["macs"] <= 0.5 * run["baseline_macs"]
    # the highest score (support energy × consumer norm) among the channels cut: with the decay, the channels
    # were faded before the cut (exp(-8) of their weights): they had next to no support left
    assert faded["alternations"][0]["relative_threshold"] < 0.01 * plain["alternations"][0]["relative_threshold"]


def test_group_decay_is_validated():
    with pytest.raises(RecipeError, match="sparse.group_decay: e-folds"):
        recipe_from_dict({"sparse": {"group_decay": -1}})
    with pytest.raises(RecipeError, match="sparse.group_decay: fades the channels"):
        recipe_from_dict({"sparse": {"group_decay": 5, "criterion": "taylor", "target_macs": 0.5}})
