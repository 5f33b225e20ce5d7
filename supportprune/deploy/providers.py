"""Which ONNX Runtime execution providers a session gets: the CPU's, or CUDA's (with tuned options) when a GPU
and onnxruntime-gpu are there. One place decides whether CUDA is available; ``benchmark`` and ``gpu_providers``
build on it."""

from __future__ import annotations

from typing import Any

import torch

from supportprune.errors import SupportpruneError

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
DEVICES = ("auto", "cuda", "cpu")


# Tuned CUDA provider options: cuDNN picks the fastest convolution algorithm for each shape once
# (exhaustive search), may use as much workspace as it likes, and runs in NHWC, the layout tensor
# cores want (this matters most for fp16).
TUNED_CUDA_OPTIONS = {"cudnn_conv_algo_search": "EXHAUSTIVE", "cudnn_conv_use_max_workspace": "1", "prefer_nhwc": "1"}


def gpu_available() -> bool:
    return torch.cuda.is_available()


def select_providers(device: str = "auto") -> list[str]:
    """ORT providers for ``device``. CUDA is only asked for when a GPU is present: asking for it
    without one makes ORT log provider-load errors before falling back to the CPU."""
    if device not in DEVICES:
        raise SupportpruneError(f"unknown device {device!r}; use one of {', '.join(DEVICES)}")
    if device == "cpu":
        return [CPU]
    import onnxruntime as ort

    if gpu_available() and CUDA in ort.get_available_providers():
        return [CUDA, CPU]
    if device == "cuda":
        raise SupportpruneError(
            "device 'cuda' needs a CUDA GPU and onnxruntime-gpu with CUDAExecutionProvider; use --device cpu or auto"
        )
    return [CPU]


def session_providers(device: str = "auto", cuda_options: dict[str, str] | None = None) -> list[Any]:
    """``select_providers(device)`` with the CUDA provider's options attached (default: the tuned ones)."""
    options = TUNED_CUDA_OPTIONS if cuda_options is None else cuda_options
    return [(CUDA, options) if p == CUDA else p for p in select_providers(device)]
