"""GPU deployment choices, tested without a GPU: ONNX Runtime's provider list and the GPU are faked."""

from __future__ import annotations

import dataclasses

import onnxruntime
import pytest

from supportprune.deploy import benchmark, gpu_providers, providers as ort_providers
from supportprune.pipelines import deliver
from supportprune.deploy.benchmark import slower_warning
from supportprune.deploy.providers import CPU, CUDA, TUNED_CUDA_OPTIONS
from supportprune.deploy.gpu_providers import (
    TENSORRT,
    cuda_graph_providers,
    cuda_graph_runner,
    int8_accelerated,
    providers_for,
    tensorrt_usable,
)
from supportprune.errors import SupportpruneError


@pytest.fixture
def machine(monkeypatch):
    """Set what the machine has: a GPU or not, the providers ORT lists, whether TensorRT's library loads."""

    def configure(gpu: bool, providers: list[str], tensorrt_library: bool = False) -> None:
        monkeypatch.setattr(ort_providers, "gpu_available", lambda: gpu)
        monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: list(providers))
        monkeypatch.setattr(gpu_providers.importlib.util, "find_spec",
                            lambda name: object() if tensorrt_library and name == "tensorrt" else None)
        monkeypatch.setattr(gpu_providers.ctypes.util, "find_library", lambda name: None)

    return configure


def test_tensorrt_is_used_for_fp16_and_int8_when_it_is_installed(machine):
    machine(gpu=True, providers=[TENSORRT, CUDA, CPU], tensorrt_library=True)
    fp16 = providers_for("fp16", tensorrt="auto", cache_dir="/tmp/cache")
    assert [p[0] if isinstance(p, tuple) else p for p in fp16] == [TENSORRT, CUDA, CPU]
    assert fp16[0][1] == {"trt_engine_cache_enable": "True", "trt_fp16_enable": "True", "trt_int8_enable": "False",
                          "trt_engine_cache_path": "/tmp/cache"}
    assert fp16[1] == (CUDA, TUNED_CUDA_OPTIONS)
    assert providers_for("int8", tensorrt="on")[0][1]["trt_int8_enable"] == "True"
    assert int8_accelerated(providers_for("int8", tensorrt="auto"))
    assert providers_for("fp16", tensorrt="off")[0][0] == CUDA


def test_tensorrt_listed_but_not_installed_is_off_and_on_is_one_clear_error(machine):
    # onnxruntime-gpu lists the TensorRT provider whether or not TensorRT is installed.
    machine(gpu=True, providers=[TENSORRT, CUDA, CPU], tensorrt_library=False)
    assert not tensorrt_usable()
    assert providers_for("fp16", tensorrt="auto") == [(CUDA, TUNED_CUDA_OPTIONS), CPU]
    with pytest.raises(SupportpruneError, match="tensorrt: on, but .* not installed"):
        providers_for("fp16", tensorrt="on")
    with pytest.raises(SupportpruneError, match="tensorrt must be one of"):
        providers_for("fp16", tensorrt="yes")


def test_int8_on_the_cuda_provider_alone_is_not_timed(machine):
    machine(gpu=True, providers=[CUDA, CPU])
    assert not int8_accelerated(providers_for("int8", tensorrt="auto"))
    assert not deliver.int8_timed_here()
    assert deliver.int8_timed_here("cpu")  # the CPU provider has int8 kernels


def test_without_a_gpu_everything_runs_on_the_cpu(machine):
    machine(gpu=False, providers=[TENSORRT, CUDA, CPU], tensorrt_library=True)
    assert providers_for("int8", tensorrt="auto") == [CPU]
    assert int8_accelerated([CPU]) and deliver.int8_timed_here()
    with pytest.raises(SupportpruneError, match="needs a CUDA GPU"):
        providers_for("fp16", tensorrt="on")


def test_cuda_graphs_are_asked_of_the_cuda_provider_only():
    with_graph = cuda_graph_providers([(CUDA, dict(TUNED_CUDA_OPTIONS)), CPU])
    assert with_graph == [(CUDA, {**TUNED_CUDA_OPTIONS, "enable_cuda_graph": "1"}), CPU]
    assert cuda_graph_providers([CPU]) is None
    assert cuda_graph_providers([(TENSORRT, {}), (CUDA, {}), CPU]) is None
    run, why = cuda_graph_runner("unused.onnx", [CPU], 1, open_session=None)
    assert run is None and "need the CUDA provider" in why


def test_cuda_graph_runner_reports_a_refused_capture_instead_of_raising():
    def refusing(path, providers, threads):
        raise RuntimeError("CUDA graph capture is not supported for this model\nmore")

    run, why = cuda_graph_runner("m.onnx", [(CUDA, {}), CPU], 1, open_session=refusing)
    assert run is None and why == "ONNX Runtime could not capture a CUDA graph (CUDA graph capture is not supported for this model)"


def test_slower_sparse_model_is_named_before_it_is_deployed():
    rows = [{"model": "sparse", "precision": "fp32", "batch_size": 1, "speedup": 1.2},
            {"model": "sparse", "precision": "fp16", "batch_size": 256, "speedup": 0.64},
            {"model": "dense", "precision": "fp16", "batch_size": 256, "speedup": 0.5}]
    warning = slower_warning(rows)
    assert "fp16 batch 256: 0.64×" in warning and "fp32 batch 1" not in warning
    assert slower_warning(rows[:1]) is None


def test_a_run_whose_sparse_model_is_slower_says_so_and_skips_int8_on_cuda(tmp_path, monkeypatch, machine):
    from supportprune.deploy.benchmark import BenchResult
    from supportprune.inputs.recipe import Recipe
    from supportprune.store.layout import RunLayout

    machine(gpu=True, providers=[CUDA, CPU])
    timed = {}

    def fake_side_by_side(models, **options):
        timed["models"] = [path.name for _, path in models]
        return [BenchResult(kind, str(path), CUDA, 256, 5, ms, ms, 256e3 / ms, macs, "fp32")
                for (kind, path), ms, macs in zip(models, (1.0, 1.25, 1.0), (100, 50, 100))]

    monkeypatch.setattr(benchmark, "benchmark_side_by_side", fake_side_by_side)
    monkeypatch.setattr(benchmark, "write_benchmark", lambda *args, **kwargs: None)
    messages = []

    class Collect:
        def message(self, text):
            messages.append(text)

    recipe = dataclasses.replace(Recipe(), export=dataclasses.replace(Recipe().export, int8=True))
    deliver.benchmark_models(recipe, RunLayout(tmp_path), Collect())
    assert not any("int8" in name for name in timed["models"])
    assert any("int8 models: not accelerated on CUDA" in m for m in messages)
    assert any(m.startswith("warning: the sparse model ran slower than the baseline") and "fp32 batch 256: 0.80×" in m
               for m in messages)
