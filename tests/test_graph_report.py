"""The graph comparison and profile parsing behind ``tools/bench_pruned.py --compare-graphs/--profile``."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from supportprune.deploy.graph_report import (
    comparison_markdown,
    op_sequence_diff,
    parse_profile,
    profile_markdown,
    summarise,
)


def _conv_model(widths: list[int], cast: bool = False) -> onnx.ModelProto:
    """Conv(3→w0)+Relu, Conv(w0→w1)+Relu, ...; with ``cast`` a Cast round trip after the first Relu."""
    nodes, inits, current = [], [], "input"
    for index, (c_in, c_out) in enumerate(zip([3] + widths, widths)):
        weight = numpy_helper.from_array(np.full((c_out, c_in, 3, 3), 0.01, np.float32), f"w{index}")
        inits.append(weight)
        nodes.append(helper.make_node("Conv", [current, f"w{index}"], [f"c{index}"], name=f"conv{index}", pads=[1] * 4))
        nodes.append(helper.make_node("Relu", [f"c{index}"], [f"r{index}"], name=f"relu{index}"))
        current = f"r{index}"
        if cast and index == 0:
            nodes.append(helper.make_node("Cast", [current], ["half"], to=TensorProto.FLOAT16, name="to_half"))
            nodes.append(helper.make_node("Cast", ["half"], ["back"], to=TensorProto.FLOAT, name="to_float"))
            current = "back"
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 8, 8])],
                              [helper.make_tensor_value_info(current, TensorProto.FLOAT, ["batch", widths[-1], 8, 8])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)


def test_summary_counts_ops_and_flags_widths_off_the_multiple():
    summary = summarise(_conv_model([24, 20]))
    assert summary.ops == {"Conv": 2, "Relu": 2}
    assert [(w[1], w[2]) for w in summary.conv_widths] == [(3, 24), (24, 20)]
    # the image's own 3 channels never count; 24 is a multiple of 8 but not of 16; 20 of neither
    assert [name for name, *_ in summary.misaligned(8)] == ["conv1"]
    assert [name for name, *_ in summary.misaligned(16)] == ["conv0", "conv1"]
    assert summary.float_types == {"float": 2}


def test_op_sequence_diff_names_the_inserted_casts_and_nothing_for_equal_structure():
    assert op_sequence_diff(_conv_model([16, 16]), _conv_model([8, 8])) == []
    diff = op_sequence_diff(_conv_model([16, 16]), _conv_model([8, 8], cast=True))
    assert len(diff) == 1 and diff[0].startswith("insert") and "Cast" in diff[0]


def test_parse_profile_sums_node_events_and_prefers_gpu_kernel_time():
    events = [
        {"cat": "Node", "name": "conv0_kernel_time", "dur": 300, "args": {"op_name": "Conv", "output_type_shape": [{"float": [1, 8]}]}},
        {"cat": "Node", "name": "conv0_kernel_time", "dur": 100, "args": {"op_name": "Conv"}},
        {"cat": "Node", "name": "conv0_fence_before", "dur": 999, "args": {"op_name": "Conv"}},
        {"cat": "Session", "name": "model_run", "dur": 5000},
    ]
    profile = parse_profile(events, runs=2)
    assert profile.nodes["conv0"][0] == "Conv" and abs(profile.nodes["conv0"][1] - 400e-6) < 1e-12
    assert not profile.gpu_kernels
    kernels = events + [{"cat": "Kernel", "name": "sm90_xmma", "dur": 50, "args": {"op_name": "Conv", "parent_name": "conv0"}}]
    gpu = parse_profile(kernels, runs=2)
    assert gpu.gpu_kernels and abs(gpu.nodes["conv0"][1] - 50e-6) < 1e-12  # launch time replaced by the GPU kernel's


def test_profile_markdown_ranks_the_node_whose_time_fell_least_first():
    dense = parse_profile([{"cat": "Node", "name": f"{n}_kernel_time", "dur": d, "args": {"op_name": "Conv"}}
                           for n, d in (("a", 400), ("b", 400))], runs=1)
    pruned = parse_profile([{"cat": "Node", "name": f"{n}_kernel_time", "dur": d, "args": {"op_name": "Conv"}}
                            for n, d in (("a", 100), ("b", 800))], runs=1)
    text = profile_markdown("x", dense, pruned)
    table = text.split("Nodes whose time fell least")[1]
    assert table.index("| b |") < table.index("| a |")
    assert "| b | Conv | 0.400 | 0.800 | 0.50 |" in table
    assert "Total 0.800 dense, 0.900 pruned (0.89×)" in text


def test_comparison_reports_ort_optimised_graphs_of_both(tmp_path):
    dense, pruned = tmp_path / "dense.onnx", tmp_path / "pruned.onnx"
    onnx.save(_conv_model([16, 16]), dense)
    onnx.save(_conv_model([8, 8], cast=True), pruned)
    text = comparison_markdown("t", dense, pruned, ["CPUExecutionProvider"], tmp_path)
    assert "| Cast ⚠ | 0 | 2 |" in text  # exported: dense none, pruned two
    assert "operator sequence, exported: 1 differences" in text
    assert (tmp_path / "dense.CPUExecutionProvider.optimized.onnx").is_file()
    assert (tmp_path / "pruned.CPUExecutionProvider.optimized.onnx").is_file()
