"""Which ONNX Runtime providers a model is benchmarked on, the way it would be deployed on a GPU.

- int8 (QDQ) models: the CUDA provider has no int8 convolutions; it runs the Q/DQ pairs around float kernels, so
  an int8 model there is slower than fp32 (0.46× on an H200) and says nothing about int8 deployment. It is timed on
  the CPU provider and on TensorRT, which builds int8 engines from the Q/DQ scales; on CUDA alone it is marked
  ``NOT_ACCELERATED`` instead of timed.
- TensorRT (``TensorrtExecutionProvider``): used when ONNX Runtime offers it *and* TensorRT's library can be
  loaded (onnxruntime-gpu lists the provider whether or not TensorRT is installed); fp16 engines for fp16 models,
  int8 for QDQ models, engines cached on disk. ``tensorrt``: auto (when usable), on (an error when not), off.
- CUDA graphs (``enable_cuda_graph``): batch-1 latency is mostly launch overhead; a captured graph replays every
  kernel in one launch. Needs IO binding at fixed addresses and every node on the GPU, so it is offered, not
  assumed: ``cuda_graph_runner`` returns None where the provider cannot capture the model.
"""

from __future__ import annotations

import ctypes.util
import importlib.util
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np

from supportprune.deploy import providers
from supportprune.deploy.providers import CPU, CUDA, TUNED_CUDA_OPTIONS
from supportprune.errors import SupportpruneError

TENSORRT = "TensorrtExecutionProvider"
TENSORRT_MODES = ("auto", "on", "off")
NOT_ACCELERATED = "not accelerated on CUDA"


def tensorrt_usable() -> bool:
    """ONNX Runtime offers the TensorRT provider and TensorRT itself is installed (its Python package or libnvinfer)."""
    import onnxruntime as ort

    if TENSORRT not in ort.get_available_providers():
        return False
    return importlib.util.find_spec("tensorrt") is not None or ctypes.util.find_library("nvinfer") is not None


def providers_for(precision: str, device: str = "auto", *, cuda_options: dict[str, str] | None = None,
                  tensorrt: str = "off", cache_dir: str | os.PathLike | None = None) -> list[Any]:
    """Providers (with options) for a model of ``precision`` ("fp32", "fp16", "int8") on ``device``.

    Without a GPU (or ``device`` cpu): the CPU provider. With one: TensorRT first when ``tensorrt`` allows it and it
    is usable, then CUDA (tuned options unless ``cuda_options``), then the CPU for what neither runs."""
    if tensorrt not in TENSORRT_MODES:
        raise SupportpruneError(f"tensorrt must be one of {', '.join(TENSORRT_MODES)}, got {tensorrt!r}")
    base = providers.select_providers(device)  # looked up at call time: one place decides whether CUDA is there
    if CUDA not in base:
        if tensorrt == "on":
            raise SupportpruneError("tensorrt: on needs a CUDA GPU; use tensorrt: auto or off")
        return [CPU]
    cuda = (CUDA, dict(TUNED_CUDA_OPTIONS if cuda_options is None else cuda_options))
    usable = tensorrt != "off" and tensorrt_usable()
    if tensorrt == "on" and not usable:
        raise SupportpruneError("tensorrt: on, but ONNX Runtime's TensorRT provider or TensorRT itself is not installed "
                                "(pip install tensorrt, with onnxruntime-gpu); use tensorrt: auto or off")
    if not usable:
        return [cuda, CPU]
    options = {"trt_engine_cache_enable": "True", "trt_fp16_enable": str(precision == "fp16"),
               "trt_int8_enable": str(precision == "int8")}
    if cache_dir is not None:
        options["trt_engine_cache_path"] = str(Path(cache_dir))
    return [(TENSORRT, options), cuda, CPU]


def provider_name(provider: Any) -> str:
    return provider[0] if isinstance(provider, tuple) else provider


def int8_accelerated(providers: list[Any]) -> bool:
    """Whether int8 QDQ models run int8 kernels on the first provider: the CPU's and TensorRT's do, CUDA's does not."""
    return provider_name(providers[0]) in (CPU, TENSORRT)


def cuda_graph_providers(providers: list[Any]) -> list[Any] | None:
    """``providers`` with CUDA graph capture on, or None when CUDA is not their first provider (CPU, TensorRT)."""
    if provider_name(providers[0]) != CUDA:
        return None
    options = dict(providers[0][1]) if isinstance(providers[0], tuple) else {}
    return [(CUDA, {**options, "enable_cuda_graph": "1"})] + list(providers[1:])


def cuda_graph_runner(path: str | os.PathLike, providers: list[Any], batch_size: int,
                      open_session: Callable[..., Any]) -> tuple[Callable[[], Any] | None, str]:
    """A runner that replays a captured CUDA graph of the model at ``batch_size`` (input and output bound once, on
    the device), or None and the reason it cannot: CUDA not the provider, or ORT refused to capture the model
    (a node on the CPU, or a shape that changes)."""
    graph_providers = cuda_graph_providers(providers)
    if graph_providers is None:
        return None, f"CUDA graphs need the CUDA provider, not {provider_name(providers[0])}"
    import onnxruntime as ort

    try:
        session = open_session(Path(path), graph_providers, None)
        meta, out = session.get_inputs()[0], session.get_outputs()[0]
        dtype = np.float16 if meta.type == "tensor(float16)" else np.float32
        x = np.random.default_rng(0).standard_normal((batch_size, *meta.shape[1:])).astype(dtype)
        out_dtype = np.float16 if out.type == "tensor(float16)" else np.float32
        binding = session.io_binding()
        binding.bind_ortvalue_input(meta.name, ort.OrtValue.ortvalue_from_numpy(x, "cuda", 0))
        output = ort.OrtValue.ortvalue_from_shape_and_type([batch_size, *out.shape[1:]], out_dtype, "cuda", 0)
        binding.bind_ortvalue_output(out.name, output)
        session.run_with_iobinding(binding)  # the first run captures the graph
    except Exception as error:  # ORT's pybind errors share no useful base class
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        return None, f"ONNX Runtime could not capture a CUDA graph ({first})"
    return (lambda: session.run_with_iobinding(binding)), ""
