"""ONNX Runtime benchmark on the CPU: results, reports, provider choice and bad files. Never asserts timings."""

import json
import os
import platform

import onnx
import pytest
import torch
from onnx import TensorProto, helper

import supportprune.deploy.benchmark as bench
import supportprune.deploy.providers as providers
from supportprune.deploy.benchmark import BenchResult, benchmark_onnx, results_markdown, write_benchmark
from supportprune.deploy.providers import select_providers
from supportprune.errors import SupportpruneError


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    """conv → relu → global pool → flatten, input (batch, 1, 8, 8), built directly so the bench tests
    do not depend on the exporter."""
    weight = helper.make_tensor("w", TensorProto.FLOAT, [4, 1, 3, 3], [0.1] * 36)
    nodes = [
        helper.make_node("Conv", ["input", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["p"]),
        helper.make_node("Flatten", ["p"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 4])],
        initializer=[weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path = tmp_path_factory.mktemp("bench") / "tiny.onnx"
    onnx.save(model, str(path))
    return path


def test_cpu_benchmark_gives_one_result_per_batch_size(tiny_onnx):
    results = benchmark_onnx(tiny_onnx, batch_sizes=(1, 3), runs=5, warmup=1, device="cpu", threads=1)
    assert [r.batch_size for r in results] == [1, 3]
    for r in results:
        assert r.model == "tiny" and r.path == str(tiny_onnx)
        assert r.provider == "CPUExecutionProvider" and r.runs == 5
        # Throughput is the batch over the median time, and the 90th percentile is at least the median.
        assert r.throughput == pytest.approx(r.batch_size / (r.median_ms / 1e3)) and r.p90_ms >= r.median_ms


def test_auto_device_benchmarks_on_cpu_without_gpu(tiny_onnx, monkeypatch):
    monkeypatch.setattr(providers, "gpu_available", lambda: False)
    (result,) = benchmark_onnx(tiny_onnx, name="named", batch_sizes=(2,), runs=2, warmup=0)
    assert result.model == "named" and result.provider == "CPUExecutionProvider"


def test_write_benchmark_json_and_markdown(tiny_onnx, tmp_path):
    results = benchmark_onnx(tiny_onnx, batch_sizes=(1, 2), runs=3, warmup=1, device="cpu")
    json_path, md_path = tmp_path / "r" / "bench.json", tmp_path / "r" / "bench.md"

    write_benchmark(results, json_path, md_path)

    payload = json.loads(json_path.read_text())
    assert {"date", "onnxruntime", "providers", "host", "cuda_device", "results"} <= payload.keys()
    assert payload["host"]["cpu_count"] == os.cpu_count() and payload["host"]["platform"] == platform.platform()
    assert [BenchResult(**r) for r in payload["results"]] == results
    markdown = md_path.read_text()
    assert markdown.count("| tiny | CPU | fp32 |") == 2
    assert sorted(p.name for p in json_path.parent.iterdir()) == ["bench.json", "bench.md"]  # no temp files


def test_results_markdown_table():
    result = BenchResult("resnet18", "r.onnx", "CUDAExecutionProvider", 64, 50, 2.5, 3.0, 25600.0, 1_814_000_000, "fp16")
    lines = results_markdown([result]).splitlines()
    assert lines[0] == "| model | provider | precision | MMACs | batch | median ms | p90 ms | images/s |"
    assert lines[2] == "| resnet18 | CUDA | fp16 | 1,814.0 | 64 | 2.500 | 3.000 | 25,600.0 |"


def test_select_providers(monkeypatch):
    assert select_providers("cpu") == ["CPUExecutionProvider"]
    if not torch.cuda.is_available():
        assert select_providers("auto") == ["CPUExecutionProvider"]
    monkeypatch.setattr(providers, "gpu_available", lambda: False)
    assert select_providers("auto") == ["CPUExecutionProvider"]
    with pytest.raises(SupportpruneError, match="cuda"):
        select_providers("cuda")
    with pytest.raises(SupportpruneError, match="unknown device 'tpu'"):
        select_providers("tpu")


def test_corrupt_or_missing_model_names_the_file(tmp_path):
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x00 this is not a protobuf \xff" * 10)
    with pytest.raises(SupportpruneError, match="corrupt.onnx cannot be loaded"):
        benchmark_onnx(corrupt, device="cpu", runs=1)
    with pytest.raises(SupportpruneError, match="missing.onnx does not exist"):
        benchmark_onnx(tmp_path / "missing.onnx", device="cpu", runs=1)


def test_onnx_macs_counts_convolutions_and_matrix_products_by_hand(tmp_path):
    from supportprune.deploy.export import export_onnx
    from tiny_models import BiasFreeChain

    model = BiasFreeChain().eval()
    path = tmp_path / "chain.onnx"
    x = torch.randn(2, 1, 8, 8)
    export_onnx(model, path, example_input=x, check_input=x)
    # conv1 1→6 and conv2 6→5 (3×3) on 8×8, then a 320→3 linear layer.
    assert bench.onnx_macs(path) == 64 * 6 * 9 + 64 * 5 * 6 * 9 + 320 * 3


def _result(model, batch, throughput, macs, precision="fp32"):
    return BenchResult(model, f"{model}.onnx", "CPUExecutionProvider", batch, 10, 1.0, 1.0, throughput, macs, precision)


def test_realised_speedup_is_speedup_over_macs_reduction():
    results = [_result("baseline", 64, 1000.0, 400), _result("sparse", 64, 1500.0, 100),
               _result("baseline", 64, 3000.0, 400, "fp16"), _result("sparse", 64, 6000.0, 100, "fp16")]
    rows = {(r["model"], r["precision"]): r for r in bench.realised_speedups(results, "baseline")}
    assert rows[("sparse", "fp32")] == pytest.approx(
        {"model": "sparse", "precision": "fp32", "batch_size": 64, "speedup": 1.5, "macs_reduction": 4.0, "realised": 0.375})
    assert rows[("sparse", "fp16")]["speedup"] == pytest.approx(2.0)  # against the fp16 baseline
    assert rows[("baseline", "fp32")]["realised"] == pytest.approx(1.0)
    assert "| sparse | fp32 | 64 | 1.50 | 4.00 | 0.38 |" in bench.realised_markdown(list(rows.values()), "baseline")


def test_tuned_cuda_options_are_passed_only_with_a_gpu(tiny_onnx, monkeypatch):
    seen = {}
    real_open = bench.open_session

    def spy(path, providers, threads):
        seen["providers"] = providers
        return real_open(path, ["CPUExecutionProvider"], threads)

    monkeypatch.setattr(bench, "open_session", spy)
    benchmark_onnx(tiny_onnx, batch_sizes=[1], runs=1, warmup=0, device="cpu")
    assert seen["providers"] == ["CPUExecutionProvider"]
    monkeypatch.setattr(providers, "select_providers", lambda device: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    benchmark_onnx(tiny_onnx, batch_sizes=[1], runs=1, warmup=0, device="auto")
    assert seen["providers"][0] == ("CUDAExecutionProvider", bench.TUNED_CUDA_OPTIONS)
    benchmark_onnx(tiny_onnx, batch_sizes=[1], runs=1, warmup=0, device="auto", cuda_options={})
    assert seen["providers"][0] == ("CUDAExecutionProvider", {})


def test_side_by_side_times_every_model_at_every_batch_in_interleaved_rounds(tiny_onnx, monkeypatch):
    calls = []
    real_time = bench.time_calls

    def recording_time(run, runs, warmup):
        calls.append((run, runs, warmup))
        return real_time(run, runs, warmup)

    monkeypatch.setattr(bench, "time_calls", recording_time)
    results = bench.benchmark_side_by_side([("a", tiny_onnx), ("b", tiny_onnx)], batch_sizes=(1, 2), runs=7,
                                           warmup=2, rounds=3, device="cpu")
    assert [(r.model, r.batch_size, r.runs) for r in results] == [("a", 1, 7), ("a", 2, 7), ("b", 1, 7), ("b", 2, 7)]
    # Per batch size: each model warmed up once, then rounds of 3, 2 and 2 timed runs alternating a, b.
    timed = [(runs, warmup) for _, runs, warmup in calls]
    assert timed == ([(0, 2), (0, 2)] + [(3, 0), (3, 0), (2, 0), (2, 0), (2, 0), (2, 0)]) * 2
    runners = [run for run, runs, _ in calls if runs]
    assert runners[0] is not runners[1] and runners[0] is runners[2]
    with pytest.raises(SupportpruneError, match="rounds >= 1"):
        bench.benchmark_side_by_side([("a", tiny_onnx)], rounds=0, device="cpu")
