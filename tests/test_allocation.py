"""Latency-aware allocation (greedy knapsack over channel groups) and the measured layer latency tables.

Allocation tests use hand-made latency functions, so what must be pruned is known in advance; the
table tests time tiny layers with ONNX Runtime on the CPU and check structure, never the times.
"""

import copy
import math

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from supportprune.method import dsd
from supportprune.method.allocation import LayerShape, latency_aware_keep_masks, layer_shapes, predicted_latency
from supportprune.errors import SupportpruneError
from supportprune.deploy.latency_table import LatencyTable, LayerGrid, grid_widths, layer_model_bytes, measure_latency_table
from supportprune.method.pruning import apply_keep_masks, count_macs_params, prune_to_keep_masks
from supportprune.inputs.recipe import SparseConfig
from supportprune.method.convert import convert_relus
from supportprune.method.support import support_sites
from tiny_models import BiasFreeChain, TinyConcatNet, TinyResNet


class TwoBranchNet(nn.Module):
    """Two independent 16-channel branches (two groups), concatenated into the classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(1, 16, 3, padding=1, bias=False)
        self.relu_a = nn.ReLU()
        self.b = nn.Conv2d(1, 16, 3, padding=1, bias=False)
        self.relu_b = nn.ReLU()
        self.fc = nn.Linear(32, 4)

    def forward(self, x):
        a = self.relu_a(self.a(x)).mean(dim=(2, 3))
        b = self.relu_b(self.b(x)).mean(dim=(2, 3))
        return self.fc(torch.cat([a, b], dim=1))


def _converted(model, size=8):
    example = torch.randn(2, 1, size, size)
    return convert_relus(model.eval(), example).eval(), example


def _pruned(model, example, keep):
    trial = copy.deepcopy(model)
    apply_keep_masks(trial, keep)
    return prune_to_keep_masks(trial, example)


def test_layer_shapes_and_macs_by_hand():
    model, example = _converted(BiasFreeChain())
    shapes = layer_shapes(model, example)
    assert set(shapes) == {"conv1", "conv2", "fc"}
    conv2 = shapes["conv2"]
    assert (conv2.kind, conv2.in_channels, conv2.out_channels, conv2.kernel) == ("conv", 6, 5, (3, 3))
    assert conv2.input_size == (8, 8) and conv2.output_size == (8, 8) and conv2.padding == (1, 1)
    assert conv2.macs(6, 5) == 5 * 6 * 9 * 64 and conv2.macs(4, 2) == 2 * 4 * 9 * 64
    assert shapes["fc"].macs(320, 3) == 960
    # The conv and linear MACs are all torch-pruning counts for a network without batch norms.
    assert sum(s.macs(s.in_channels, s.out_channels) for s in shapes.values()) == count_macs_params(model, example)[0]


def test_the_cut_goes_where_it_saves_the_most_time_per_support_lost():
    model, example = _converted(TwoBranchNet())
    scores = {name: torch.ones(16) for name, _ in support_sites(model)}

    def latency(name, in_channels, out_channels):  # branch a's channels cost 10× branch b's
        return {"a": 10.0 * out_channels, "b": 1.0 * out_channels}.get(name, 0.0)

    # Dense: 160 + 16. Just under it needs one step of 4 channels: a's saves 40 s, b's 4 s, for the same support.
    keep, macs, predicted = latency_aware_keep_masks(model, example, scores, 175.0, latency, round_to=4)
    assert int(keep["relu_a"].sum()) == 12 and int(keep["relu_b"].sum()) == 16
    assert predicted == pytest.approx(10.0 * 12 + 16)
    assert macs == count_macs_params(_pruned(model, example, keep), example)[0] < count_macs_params(model, example)[0]
    # With branch b 10× dearer instead, b loses the step.
    keep, _, _ = latency_aware_keep_masks(model, example, scores, 175.0,
                                          lambda n, i, o: {"a": 1.0 * o, "b": 10.0 * o}.get(n, 0.0), round_to=4)
    assert int(keep["relu_a"].sum()) == 16 and int(keep["relu_b"].sum()) == 12


def test_support_lost_outweighs_time_saved_and_the_weakest_channels_go_first():
    model, example = _converted(TwoBranchNet())
    scores = {"relu_a": torch.full((16,), 5.0), "relu_b": torch.arange(16, dtype=torch.float32) / 100}
    scores["relu_a"][[3, 7]] = 0.0  # two dead channels in a: removing them costs nothing
    latency = lambda name, i, o: {"a": 2.0 * o, "b": 1.0 * o}.get(name, 0.0)  # noqa: E731
    # Dense 32 + 16 = 48 s. First step: a's two dead channels (support 0, 4 s saved) beat b's weakest two
    # (0.01 for 2 s). Second step: a's next two cost 10 for 4 s (2.5 per s), b's 0.01 for 2 s (0.005): b.
    keep, _, predicted = latency_aware_keep_masks(model, example, scores, 47.5, latency, round_to=2)
    assert keep["relu_a"][[3, 7]].tolist() == [0.0, 0.0] and int(keep["relu_a"].sum()) == 14
    assert int(keep["relu_b"].sum()) == 16 and predicted == 44.0
    keep, _, predicted = latency_aware_keep_masks(model, example, scores, 43.5, latency, round_to=2)
    assert int(keep["relu_a"].sum()) == 14 and keep["relu_b"][:2].tolist() == [0.0, 0.0]
    assert int(keep["relu_b"].sum()) == 14 and predicted == 42.0


def test_cuts_that_save_no_time_are_not_taken():
    model, example = _converted(TwoBranchNet())
    scores = {name: torch.ones(16) for name, _ in support_sites(model)}
    latency = lambda name, i, o: 5.0 if name == "a" else (1.0 * o if name == "b" else 0.0)  # noqa: E731
    keep, _, predicted = latency_aware_keep_masks(model, example, scores, 0.0, latency, round_to=4)
    assert int(keep["relu_a"].sum()) == 16  # a's time does not depend on its width: never cut
    assert int(keep["relu_b"].sum()) == 4 and predicted == 5.0 + 4.0  # b down to its floor, one multiple


@pytest.mark.parametrize("network", [TinyResNet, TinyConcatNet])
def test_meets_the_time_target_in_multiples_and_predicts_the_pruned_model(network):
    torch.manual_seed(0)
    model, example = _converted(network(), size=12)
    shapes = layer_shapes(model, example)
    latency = lambda name, i, o: shapes[name].macs(i, o) * 1e-9 + 1e-6 * (i + o)  # noqa: E731
    scores = {name: torch.rand(site.channels) for name, site in support_sites(model)}
    dense = predicted_latency(model, example, latency)
    keep, macs, predicted = latency_aware_keep_masks(model, example, scores, 0.6 * dense, latency, round_to=2)
    pruned = _pruned(model, example, keep)
    assert predicted <= 0.6 * dense
    assert predicted == pytest.approx(predicted_latency(pruned, example, latency))
    assert count_macs_params(pruned, example)[0] == macs
    for _, site in support_sites(pruned):
        assert site.channels % 2 == 0 and site.channels >= 2
    # The pruned model computes what the masked model computes.
    masked = copy.deepcopy(model)
    apply_keep_masks(masked, keep)
    x = torch.randn(3, 1, 12, 12)
    torch.testing.assert_close(pruned(x), masked(x), rtol=1e-4, atol=1e-5)


def test_alternation_point_with_latency_allocation():
    torch.manual_seed(0)
    model, example = _converted(TinyResNet(), size=12)
    shapes = layer_shapes(model, example)
    latency = lambda name, i, o: shapes[name].macs(i, o) * 1e-9  # noqa: E731
    config = SparseConfig(epochs=1, target_macs=0.5, granularity="channel", allocation="latency")
    dsd.begin_sparse(model, config)
    model.train()
    with torch.no_grad():
        model(torch.randn(8, 1, 12, 12))
    dense_macs = count_macs_params(model, example)[0]
    with pytest.raises(ValueError, match="latency table"):
        dsd.alternation_point(copy.deepcopy(model), example, config, dense_macs)
    result = dsd.alternation_point(model, example, config, dense_macs, layer_latency=latency)
    # target_latency defaults to target_macs: half the predicted time (here, the conv/linear MACs).
    assert result.allocation == "latency" and result.predicted_speedup >= 2.0
    assert result.macs < dense_macs


def test_recipe_checks_the_allocation_options():
    with pytest.raises(ValueError, match="allocation: must be one of global, latency"):
        SparseConfig(epochs=1, target_macs=0.5, allocation="fastest")
    with pytest.raises(ValueError, match="allocation: latency cuts channels to a time target"):
        SparseConfig(epochs=1, allocation="latency")
    with pytest.raises(ValueError, match="target_latency: only with allocation: latency"):
        SparseConfig(epochs=1, target_latency=0.5)
    with pytest.raises(ValueError, match="target_latency: a fraction"):
        SparseConfig(epochs=1, allocation="latency", target_latency=1.5)
    assert SparseConfig(epochs=1, allocation="latency", target_latency=0.4, target_macs=0.5).latency_target == 0.4
    assert SparseConfig(epochs=1, allocation="latency", target_macs=0.5).latency_target == 0.5
    with pytest.raises(ValueError, match="latency_precision"):
        SparseConfig(epochs=1, target_macs=0.5, allocation="latency", latency_precision="int8")


def test_grid_widths_are_multiples_from_one_multiple_to_the_full_width():
    assert grid_widths(64, 8) == (8, 16, 32, 48, 64)
    assert grid_widths(64, 1) == (1, 16, 32, 48, 64)
    assert grid_widths(3, 8) == (3,)  # never above the full width
    assert grid_widths(10, 8) == (8, 10)


def test_grid_interpolates_bilinearly():
    grid = LayerGrid((8, 16), (4, 8), ((1.0, 3.0), (5.0, 11.0)))
    assert grid.predict(8, 4) == 1.0 and grid.predict(16, 8) == 11.0
    assert grid.predict(12, 6) == pytest.approx((1 + 3 + 5 + 11) / 4)
    assert grid.predict(8, 6) == pytest.approx(2.0) and grid.predict(12, 4) == pytest.approx(3.0)


def test_layer_model_is_the_layer_at_the_given_widths():
    shape = LayerShape("conv", "conv", 16, 32, (3, 3), (2, 2), (1, 1), (1, 1), 1, (9, 9), (5, 5))
    session = ort.InferenceSession(layer_model_bytes(shape, 8, 24), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((2, 8, 9, 9)).astype(np.float32)
    (out,) = session.run(None, {"input": x})
    assert out.shape == (2, 24, 5, 5) and (out >= 0).all()  # conv + ReLU, stride 2
    import onnx
    weights = {t.name: onnx.numpy_helper.to_array(t).copy() for t in onnx.load_from_string(layer_model_bytes(shape, 8, 24)).graph.initializer}
    expected = torch.relu(torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(weights["weight"]),
                                                     torch.from_numpy(weights["bias"]), stride=2, padding=1))
    np.testing.assert_allclose(out, expected.numpy(), rtol=1e-4, atol=1e-5)
    linear = LayerShape("fc", "linear", 64, 10)
    session = ort.InferenceSession(layer_model_bytes(linear, 32, 10, "fp16"), providers=["CPUExecutionProvider"])
    assert session.run(None, {"input": np.ones((3, 32), np.float16)})[0].shape == (3, 10)


def test_each_entry_is_the_layers_time_less_the_fixed_cost_of_a_run_never_below_zero(monkeypatch):
    import supportprune.deploy.latency_table as latency_table

    # Stand-ins: a run of the no-work model takes 4 ms; a layer from in to out channels in * out * 0.1 ms.
    monkeypatch.setattr(latency_table, "_no_work_model_bytes", lambda shape, in_width, precision: b"no work")
    monkeypatch.setattr(latency_table, "layer_model_bytes", lambda shape, i, o, precision="fp32": f"{i} {o}".encode())

    def timed(model, x, providers, runs, warmup):
        if model == b"no work":
            return 4e-3
        in_width, out_width = map(int, model.decode().split())
        return in_width * out_width * 1e-4

    monkeypatch.setattr(latency_table, "_time_model", timed)
    shapes = {"conv": LayerShape("conv", "conv", 8, 8, kernel=(3, 3), stride=(1, 1), padding=(1, 1), dilation=(1, 1), input_size=(4, 4))}
    grid = measure_latency_table(shapes, batch_size=1, round_to=4, device="cpu", runs=1, warmup=0).layers["conv"]
    assert grid.in_widths == grid.out_widths == (4, 8)
    # 4x4: 1.6 ms - 4 ms < 0, so 0; 4x8 and 8x4: 3.2 ms - 4 ms, 0; 8x8: 6.4 ms - 4 ms = 2.4 ms.
    assert [list(row) for row in grid.seconds] == [[0.0, 0.0], [0.0, pytest.approx(2.4e-3)]]


def test_measured_table_covers_every_layer_and_round_trips(tmp_path):
    model, example = _converted(TinyResNet(width=8), size=8)
    shapes = layer_shapes(model, example)
    calls = []
    table = measure_latency_table(shapes, batch_size=2, round_to=4, device="cpu", runs=1, warmup=0,
                                  progress=lambda done, total: calls.append((done, total)))
    assert set(table.layers) == set(shapes) and table.provider == "CPUExecutionProvider"
    # block1.conv1, block1.conv2, block2.conv1, block2.conv2 have one shape: timed once, one grid.
    assert table.layers["block1.conv1"] is table.layers["block2.conv2"]
    assert table.layers["block1.conv1"].in_widths == (4, 8) and table.layers["stem"].in_widths == (1,)
    assert calls[-1][0] == calls[-1][1] == len(calls)
    assert all(len(grid.seconds) == len(grid.in_widths) and all(len(row) == len(grid.out_widths) for row in grid.seconds)
               for grid in table.layers.values())
    assert table("stem", 1, 8) == table.layers["stem"].seconds[0][-1]
    table.save(tmp_path / "t.json")
    assert LatencyTable.load(tmp_path / "t.json") == table
    assert table.matches(shapes, 2, "fp32", 4) and not table.matches(shapes, 4, "fp32", 4)
    (tmp_path / "bad.json").write_text('{"version": 1, "layers": 3}')
    with pytest.raises(SupportpruneError, match="bad.json is not a valid latency table"):
        LatencyTable.load(tmp_path / "bad.json")


def test_table_takes_the_fixed_cost_of_a_run_off_every_layer(monkeypatch):
    import supportprune.deploy.latency_table as latency

    shapes = {"conv": LayerShape("conv", "conv", 8, 8, (3, 3), (1, 1), (1, 1), (1, 1), 1, (4, 4), (4, 4))}
    timed = []

    def fake_time(model, x, providers, runs, warmup):  # the no-work model costs 1, a layer 1 + its output width
        import onnx
        graph = onnx.load_from_string(model).graph
        timed.append((graph.node[0].op_type, x.shape))
        if graph.node[0].op_type == "Shape":
            return 1.0
        return 1.0 + graph.output[0].type.tensor_type.shape.dim[1].dim_value

    monkeypatch.setattr(latency, "_time_model", fake_time)
    table = latency.measure_latency_table(shapes, batch_size=3, round_to=4, device="cpu")
    assert table.layers["conv"].seconds == ((4.0, 8.0), (4.0, 8.0))
    assert timed[0] == ("Shape", (3, 4, 4, 4)) and timed[1] == ("Conv", (3, 4, 4, 4))
    no_work = ort.InferenceSession(latency._no_work_model_bytes(shapes["conv"], 8, "fp32"), providers=["CPUExecutionProvider"])
    assert no_work.run(None, {"input": np.zeros((2, 8, 4, 4), np.float32)})[0].tolist() == [2, 8, 4, 4]
