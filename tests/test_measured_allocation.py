"""``sparse.allocation: measured``: the search over whole pruned models (with deterministic fake timers, so what
must be cut is known in advance; no wall clock), and the candidate graphs the deployment side times."""

from __future__ import annotations

import copy

import onnx
import pytest
import torch

from supportprune.deploy.export import export_onnx
from supportprune.deploy.measured_timing import WholeModelTimer, with_widths_of
from supportprune.inputs.recipe import SparseConfig
from supportprune.method import dsd
from supportprune.method.measured_allocation import measured_keep_masks
from supportprune.method.pruning import apply_keep_masks, count_macs_params, prune_to_keep_masks
from supportprune.method.convert import convert_relus, export_ready
from supportprune.method.support import support_sites
from test_allocation import TwoBranchNet
from tiny_models import TinyConcatNet, TinyResNet


def _converted(model, channels=1, size=8):
    example = torch.randn(2, channels, size, size)
    return convert_relus(model.eval(), example).eval(), example


class FakeTimer:
    """Whole-model time as a known function of the kept widths; counts its calls."""

    def __init__(self, cost_a: float, cost_b: float, fixed: float = 5.0) -> None:
        self.cost_a, self.cost_b, self.fixed, self.calls = cost_a, cost_b, fixed, 0

    def __call__(self, keep):
        self.calls += 1
        return self.fixed + self.cost_a * float(keep["relu_a"].sum()) + self.cost_b * float(keep["relu_b"].sum())


def test_search_takes_the_cut_that_measures_faster_and_meets_the_target():
    model, example = _converted(TwoBranchNet())
    scores = {name: torch.ones(16) for name, _ in support_sites(model)}
    timer = FakeTimer(10.0, 1.0)  # full: 5 + 160 + 16 = 181 s; target 0.5 of it: 90.5
    result = measured_keep_masks(model, example, scores, 0.5, timer, round_to=4, step_fraction=0.25, repeats=1)
    # Same support per step: a's 4 channels save 40 s, b's 4 s. Three cuts of a: 141, 101, 61 <= 90.5.
    assert int(result.keep["relu_a"].sum()) == 4 and int(result.keep["relu_b"].sum()) == 16
    assert result.reached and result.steps == 3
    assert result.full_seconds == 181.0 and result.seconds == pytest.approx(61.0) and result.speedup == pytest.approx(181 / 61)
    # b's cut is timed once and never again (its estimate never came out best); each of a's three cuts is timed
    # twice against the current model (the second confirms it), then the result against the full model once:
    # 1 + 2 × (1 + 3 × 2 + 1) timings.
    assert result.timings == timer.calls == 17


def test_support_decides_between_cuts_that_save_the_same_time():
    model, example = _converted(TwoBranchNet())
    scores = {"relu_a": torch.full((16,), 5.0), "relu_b": torch.full((16,), 0.1)}
    result = measured_keep_masks(model, example, scores, 0.9, FakeTimer(1.0, 1.0), round_to=4, step_fraction=0.25)
    assert int(result.keep["relu_b"].sum()) == 12 and int(result.keep["relu_a"].sum()) == 16
    # The weakest channels of a group go first.
    scores = {"relu_a": torch.ones(16), "relu_b": torch.arange(16.0)}
    result = measured_keep_masks(model, example, scores, 0.97, FakeTimer(1.0, 100.0), round_to=4, step_fraction=0.25)
    assert result.keep["relu_b"][:4].sum() == 0 and result.keep["relu_b"][4:].all()


def test_cuts_that_save_no_time_are_never_taken():
    model, example = _converted(TwoBranchNet())
    scores = {name: torch.ones(16) for name, _ in support_sites(model)}
    result = measured_keep_masks(model, example, scores, 0.5, FakeTimer(0.0, 0.0), round_to=4)
    assert not result.reached and result.steps == 0
    assert all(bool(mask.all()) for mask in result.keep.values())


def test_alternation_point_measured_prunes_to_the_measured_target():
    model, example = _converted(TwoBranchNet())
    config = SparseConfig(epochs=1, allocation="measured", target_latency=0.5, round_to=4)
    dsd.begin_sparse(model, config)
    model.train()
    with torch.no_grad():
        model(torch.randn(8, 1, 8, 8))
    macs = count_macs_params(model, example)[0]
    with pytest.raises(ValueError, match="timing function"):
        dsd.alternation_point(copy.deepcopy(model), example, config, macs)
    result = dsd.alternation_point(model, example, config, macs, model_time=FakeTimer(10.0, 1.0))
    assert result.allocation == "measured" and result.measured_target_met
    assert result.measured_speedup == pytest.approx(181 / 61)
    keep = {name: site.keep for name, site in support_sites(model)}
    assert int(keep["relu_a"].sum()) == 4 and int(keep["relu_b"].sum()) == 16


def test_recipe_accepts_measured_with_a_time_target_only():
    assert SparseConfig(epochs=1, allocation="measured", target_macs=0.5).latency_target == 0.5
    assert SparseConfig(epochs=1, allocation="measured", target_latency=0.4).latency_target == 0.4
    with pytest.raises(ValueError, match="allocation: measured cuts channels to a time target"):
        SparseConfig(epochs=1, allocation="measured")
    with pytest.raises(ValueError, match="latency_table: only with allocation: latency"):
        SparseConfig(epochs=1, allocation="measured", target_latency=0.5, latency_table="t.json")


@pytest.mark.parametrize("net", [TinyResNet, TinyConcatNet])
def test_candidate_graph_has_the_widths_of_the_real_export_of_the_pruned_model(tmp_path, net):
    model, example = _converted(net(), size=8)
    timer = WholeModelTimer(model, example, batch_size=2, device="cpu", runs=1, warmup=0)
    scores = {name: torch.rand(site.channels, generator=torch.Generator().manual_seed(0)) for name, site in support_sites(model)}
    keep = measured_keep_masks(model, example, scores, 0.6, lambda k: float(sum(m.sum() for m in k.values()))).keep
    assert any(not bool(mask.all()) for mask in keep.values())
    trial = copy.deepcopy(timer.model)
    apply_keep_masks(trial, keep)
    pruned = prune_to_keep_masks(trial, example)
    export_onnx(export_ready(pruned), tmp_path / "real.onnx", example_input=example[:1], check_input=example)
    real, candidate = onnx.load(tmp_path / "real.onnx"), onnx.load_model_from_string(timer.candidate_bytes(keep))

    def initializers(m):
        return {i.name: tuple(i.dims) for i in m.graph.initializer if not i.name.startswith("val_")}

    def ops(m):  # the exporter's x.view(-1, C) becomes a Flatten in the candidate: the same at any width
        return [("Flatten" if n.op_type == "Reshape" else n.op_type, [a.i for a in n.attribute if a.name == "group"])
                for n in m.graph.node]

    assert initializers(candidate) == initializers(real)
    assert ops(candidate) == ops(real)
    assert timer.time_bytes(candidate.SerializeToString()) > 0  # ONNX Runtime runs it


def test_cutting_a_weight_beyond_its_dense_shape_is_one_clear_error():
    model, example = _converted(TinyResNet())
    dense = WholeModelTimer(model, example, batch_size=1, device="cpu", runs=1, warmup=0).dense_bytes
    wider = TinyResNet(width=16)
    with pytest.raises(Exception, match="cannot cut"):
        with_widths_of(dense, convert_relus(wider.eval(), example))


def test_sites_with_a_nonzero_beta_fall_back_to_exporting_each_candidate():
    model, example = _converted(TinyResNet(width=16))
    with torch.no_grad():
        for _, site in support_sites(model):
            site.beta.fill_(0.1)  # exported as Greater + Where with per-channel constants the cut cannot follow
    timer = WholeModelTimer(model, example, batch_size=2, device="cpu", runs=1, warmup=0)
    scores = {name: torch.arange(float(site.channels)) for name, site in support_sites(model)}
    keep = measured_keep_masks(model, example, scores, 0.6, lambda k: float(sum(m.sum() for m in k.values())),
                               round_to=8).keep
    assert timer(keep) > 0 and timer.export_each
