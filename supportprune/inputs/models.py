"""Building the network to compress: a torchvision model by name or a user's factory, adapted to the data.

The head adapts to the dataset's class count and the first convolution to its channels, so the same
model serves ImageNet and the embedded Fashion-MNIST.
"""

from __future__ import annotations

import importlib
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from supportprune.errors import SupportpruneError, UserCodeError, first_line, register_user_code, user_frame

SITE_BUFFERS = frozenset(
    ("beta", "keep", "relative_threshold", "stat_batches", "stat_support_batches", "stat_energy",
     "stat_max_relative_energy", "stat_kept_units")
)


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild the same architecture (before support conversion)."""

    name: str  # torchvision name or package.module:factory
    num_classes: int
    in_channels: int
    input_size: int
    model_args: dict[str, Any] = field(default_factory=dict)  # keyword arguments of the factory
    # Activations other than ReLU become channel gates too (convert_relus(gate_activations=...)): a weight
    # criterion's run, so that its state dicts rebuild.
    gate_activations: bool = False

    def example_input(self, batch: int = 2) -> torch.Tensor:
        return torch.zeros(batch, self.in_channels, self.input_size, self.input_size)


def _torchvision_kwargs(name: str) -> dict[str, Any]:
    # GoogLeNet and Inception: no auxiliary heads (they are training-only and break export);
    # transform_input assumes ImageNet-normalised RGB, which our inputs need not be.
    if name in ("googlenet", "inception_v3"):
        return {"aux_logits": False, "init_weights": True, "transform_input": False}
    return {}


def classification_models() -> list[str]:
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def build_model(spec: ModelSpec, weights: str | None = None, changes: list[tuple[str, str]] | None = None) -> nn.Module:
    """Instantiate ``spec.name`` with ``weights`` loaded, then adapt head and input channels. ``changes`` (when
    given) receives (module path, sentence) for each layer replaced or adapted to fit the data, when the model may
    carry trained weights (``weights`` given, or a factory that may load its own): never silent for a user."""
    if spec.name.startswith(TIMM_PREFIX):
        model = _from_timm(spec.name[len(TIMM_PREFIX):], spec.model_args)
        native_classes = model.num_classes
    elif ":" in spec.name:
        model = _from_factory(spec.name, spec.model_args)
        native_classes = None
    else:
        import torchvision

        if spec.name not in classification_models():
            close = [m for m in classification_models() if spec.name.lower() in m][:5]
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise SupportpruneError(
                f"unknown model {spec.name!r}{hint}; use a torchvision classification model name "
                "(`python -c 'import torchvision; print(torchvision.models.list_models())'`) or package.module:factory"
            )
        kwargs = {**_torchvision_kwargs(spec.name), **spec.model_args}
        try:
            model = torchvision.models.get_model(spec.name, weights=None, **kwargs)
        except (TypeError, ValueError) as error:
            raise SupportpruneError(f"{spec.name}({_call_args(kwargs)}) failed: {first_line(error)}; check --model-arg / "
                                    "model_args against the torchvision model's arguments") from None
        native_classes = _head(model).out_features
    if weights is not None:
        load_weights(model, weights, spec.name)
    may_be_trained = weights is not None or (":" in spec.name and not spec.name.startswith(TIMM_PREFIX))
    head = _head(model)
    if native_classes is None or native_classes != spec.num_classes:
        adapt_head(model, spec.num_classes)
    if changes is not None and may_be_trained and head.out_features != spec.num_classes:
        path = _path_of(model, _head(model))
        changes.append((path, f"the {head.out_features}-class head {path} replaced by a new, untrained "
                              f"{spec.num_classes}-class one to fit the data's classes"))
    first = _first_conv(model)
    adapt_input_channels(model, spec.in_channels)
    if changes is not None and may_be_trained and first.in_channels != spec.in_channels:
        path = _path_of(model, _first_conv(model))
        changes.append((path, f"the first convolution {path} adapted from {first.in_channels} to {spec.in_channels} "
                              "input channels (its filters averaged over their input channels)"))
    return model


def _path_of(model: nn.Module, target: nn.Module) -> str:
    return next(name for name, module in model.named_modules() if module is target)


def _first_conv(model: nn.Module) -> nn.Conv2d | None:
    return next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)


TIMM_PREFIX = "timm:"  # timm:NAME, a timm model (the optional extra: pip install 'supportprune[timm]')


def _from_timm(name: str, kwargs: dict[str, Any]) -> nn.Module:
    """``timm.create_model(name, pretrained=False, **kwargs)``: random weights unless --weights gives a file."""
    try:
        import timm
    except ImportError:
        raise SupportpruneError(f"model timm:{name} needs timm, which is not installed: pip install 'supportprune[timm]' "
                                "(or pip install timm)") from None
    if not timm.is_model(name):
        close = timm.list_models(f"*{name}*")[:5]
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise SupportpruneError(f"unknown timm model {name!r}{hint}; `python -c 'import timm; print(timm.list_models())'` "
                                "lists them")
    try:
        return timm.create_model(name, pretrained=False, **kwargs)
    except (TypeError, ValueError, RuntimeError) as error:
        raise SupportpruneError(f"timm.create_model({name!r}, {_call_args(kwargs)}) failed: {first_line(error)}; check "
                                "--model-arg / model_args against the timm model's arguments") from None


def _call_args(kwargs: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in kwargs.items())


def _from_factory(path: str, kwargs: dict[str, Any] | None = None) -> nn.Module:
    module_name, _, attribute = path.partition(":")
    kwargs = kwargs or {}
    # Like `python -m`, find modules in the working directory too (console scripts do not), but only for
    # this import: later imports must not pick up the user's files. sys.modules keeps the module for rebuilds.
    added = os.getcwd() not in sys.path
    if added:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
        factory = getattr(module, attribute)
    except (ImportError, AttributeError) as error:
        raise SupportpruneError(f"cannot import model factory {path!r}: {error}; check the module is on PYTHONPATH") from None
    except Exception as error:  # the user's module itself raised while importing
        raise UserCodeError(f"importing {module_name} raised {type(error).__name__}: {first_line(error)}") from error
    finally:
        if added:
            sys.path.remove(os.getcwd())
    top_level = sys.modules.get(module_name.partition(".")[0])
    if getattr(top_level, "__file__", None):  # a package: its whole folder; a plain module: its file
        register_user_code(Path(top_level.__file__).parent if hasattr(top_level, "__path__") else top_level.__file__)
    if not callable(factory):
        raise SupportpruneError(f"{path!r} is a {type(factory).__name__}, not a callable that returns an nn.Module")
    call = f"{path}({_call_args(kwargs)})"
    try:
        model = factory(**kwargs)
    except TypeError as error:
        if user_frame(error.__traceback__) is None or "argument" in str(error):
            # The call itself did not fit the factory's signature.
            raise UserCodeError(f"model factory {call} failed: {first_line(error)}; pass the factory's arguments with "
                                "--model-arg NAME=VALUE (repeatable) or model_args: in the recipe") from error
        raise UserCodeError(f"model factory {call} raised TypeError: {first_line(error)}") from error
    except Exception as error:
        raise UserCodeError(f"model factory {call} raised {type(error).__name__}: {first_line(error)}") from error
    if not isinstance(model, nn.Module):
        raise SupportpruneError(f"model factory {path!r} returned {type(model).__name__}, not an nn.Module")
    return model


def check_forward(model: nn.Module, spec: ModelSpec) -> None:
    """Run the model once on an example batch of the data's shape, so a model that cannot read these inputs
    fails here with one line saying what it was given, not deep inside training."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            output = model(spec.example_input())
    except Exception as error:
        shape = tuple(spec.example_input().shape)
        raise UserCodeError(
            f"{spec.name} failed on an input batch of shape {shape} ({type(error).__name__}: {first_line(error)}); "
            "if the model expects another image size or channel count, set --input-size / --channels "
            "(data.input_size, data.channels)"
        ) from error
    finally:
        model.train(was_training)
    if not isinstance(output, torch.Tensor) or output.dim() != 2:
        what = type(output).__name__ if not isinstance(output, torch.Tensor) else f"a tensor of shape {tuple(output.shape)}"
        raise SupportpruneError(f"{spec.name} returned {what}; supportprune compresses classifiers whose forward returns "
                                "logits of shape (batch, classes)")


def downsampling_note(model: nn.Module, spec: ModelSpec) -> str | None:
    """A sentence when ``spec.input_size`` is too small for the model's downsampling: some strided convolution or
    pooling receives a feature map of 1×1, so it and every later stage have nothing left to reduce (resnet18 at
    --input-size 3 or 16); None when every downsampling step gets at least 2×2."""
    starved, strided = _starved_strided_layers(model, spec.example_input())
    if not starved:
        return None
    enough = spec.input_size
    while _starved_strided_layers(model, spec.example_input()[:1].new_zeros(1, spec.in_channels, enough, enough))[0] \
            and enough < 1024:
        enough *= 2
    return (f"--input-size {spec.input_size} is too small for {spec.name}'s downsampling: {len(starved)} of its "
            f"{strided} strided layers ({', '.join(starved[:3])}{', ...' if len(starved) > 3 else ''}) get a 1×1 "
            f"feature map and reduce nothing; images of {enough}×{enough} or more suit it (--input-size)")


def _starved_strided_layers(model: nn.Module, images: torch.Tensor) -> tuple[list[str], int]:
    """(The strided convolutions and poolings whose input is smaller than 2×2 on ``images``, how many strided
    layers ran.)"""
    strided: list[tuple[str, int]] = []
    names = {module: name for name, module in model.named_modules()}

    def record(module, args, output) -> None:
        stride = module.stride if isinstance(module.stride, tuple) else (module.stride,) * 2
        if max(stride) > 1 and args and isinstance(args[0], torch.Tensor) and args[0].dim() == 4:
            strided.append((names[module], min(args[0].shape[-2:])))

    handles = [module.register_forward_hook(record) for module in model.modules()
               if isinstance(module, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d))]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(images)
    except Exception:  # a model that reads only its own input size: nothing to say about others
        return [], 0
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return [name for name, side in strided if side < 2], len(strided)


def _head(model: nn.Module) -> nn.Linear:
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise SupportpruneError(f"{type(model).__name__} has no nn.Linear classifier head to adapt to the dataset")
    return linears[-1]


def _set_module(root: nn.Module, target: nn.Module, replacement: nn.Module) -> None:
    for name, module in root.named_modules():
        if module is target:
            parent_name, _, leaf = name.rpartition(".")
            setattr(root.get_submodule(parent_name) if parent_name else root, leaf, replacement)
            return


def adapt_head(model: nn.Module, num_classes: int) -> None:
    if callable(getattr(model, "reset_classifier", None)) and isinstance(getattr(model, "num_classes", None), int):
        if model.num_classes != num_classes:  # a timm model: its own way, whatever its head is made of
            model.reset_classifier(num_classes)
        return
    head = _head(model)
    if head.out_features != num_classes:
        _set_module(model, head, nn.Linear(head.in_features, num_classes, bias=head.bias is not None))


def adapt_input_channels(model: nn.Module, in_channels: int) -> None:
    """Make the first convolution read ``in_channels``; pretrained filters are averaged over their
    input channels and repeated, so a grayscale image gives the response its RGB copy would."""
    first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if first is None:
        raise SupportpruneError(f"{type(model).__name__} has no nn.Conv2d to read the input")
    if first.in_channels == in_channels:
        return
    if first.groups != 1:
        raise SupportpruneError("cannot adapt a grouped first convolution to the data's channels")
    replacement = nn.Conv2d(
        in_channels, first.out_channels, first.kernel_size, first.stride, first.padding,
        first.dilation, bias=first.bias is not None, padding_mode=first.padding_mode,
    )
    with torch.no_grad():
        mean_filter = first.weight.mean(dim=1, keepdim=True)
        replacement.weight.copy_(mean_filter.repeat(1, in_channels, 1, 1) * first.in_channels / in_channels)
        if first.bias is not None:
            replacement.bias.copy_(first.bias)
    _set_module(model, first, replacement)


def load_weights(model: nn.Module, weights: str, model_name: str) -> None:
    """Load a torchvision weights name (``IMAGENET1K_V1``, ``DEFAULT``) or a local file: a state dict,
    or a supportprune checkpoint (its ``model`` entry)."""
    path = Path(weights)
    if path.exists():
        state = read_state_dict(path)
    else:
        state = _torchvision_state(weights, model_name)
    # Our own checkpoints hold a converted model: its support buffers are not weights of the plain one.
    own_keys = set(model.state_dict())
    state = {k: v for k, v in state.items() if k in own_keys or k.rpartition(".")[2] not in SITE_BUFFERS}
    # A file may hold an already adapted model (another class count, grayscale stem): shape ours like it.
    names = {module: name for name, module in model.named_modules()}
    head_key = f"{names[_head(model)]}.weight"
    if head_key in state:
        adapt_head(model, state[head_key].shape[0])
    first = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    first_key = f"{names[first]}.weight"
    if first_key in state and state[first_key].shape[1] != first.in_channels:
        adapt_input_channels(model, state[first_key].shape[1])
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        first_line = str(error).strip().splitlines()[0]
        detail = next((line.strip() for line in str(error).splitlines()[1:] if line.strip()), "")
        raise SupportpruneError(f"weights {weights!r} do not fit {model_name}: {first_line} {detail}"[:400]) from None


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    from supportprune.store.checkpoint import CheckpointError, is_checkpoint, load_plain, read_checkpoint

    try:
        # supportprune's own model files (models/*.pt) carry a checksum header before the torch payload.
        own = is_checkpoint(path)
    except OSError as error:
        raise SupportpruneError(f"cannot read weights file {path}: {error.strerror or error}") from None
    try:
        advice = "give a state dict saved by torch.save(model.state_dict(), path)"
        loaded = read_checkpoint(path, advice) if own else load_plain(path, path, advice)
    except CheckpointError as error:
        raise SupportpruneError(f"cannot read weights file {path}: {error.detail}") from None
    if isinstance(loaded, dict) and "model" in loaded and isinstance(loaded["model"], dict):
        loaded = loaded["model"]
    if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise SupportpruneError(f"{path} holds no state dict (a mapping of parameter names to tensors)")
    return loaded


def _torchvision_state(weights: str, model_name: str) -> dict[str, torch.Tensor]:
    if ":" in model_name:
        raise SupportpruneError(f"weights {weights!r}: no such file (a user's or timm model takes a weights file: "
                                "a state dict saved by torch.save(model.state_dict(), path))")
    import torchvision

    try:
        enum = torchvision.models.get_model_weights(model_name)
        chosen = enum[weights] if weights != "DEFAULT" else enum.DEFAULT
    except (KeyError, ValueError):
        names = ", ".join(w.name for w in torchvision.models.get_model_weights(model_name))
        raise SupportpruneError(f"weights {weights!r}: neither a file nor a torchvision weights name for {model_name} ({names})") from None
    try:
        return chosen.get_state_dict(progress=True)
    except Exception as error:  # URLError, HTTPError, socket errors, hash mismatch
        raise SupportpruneError(
            f"could not download torchvision weights {model_name}/{chosen.name} ({type(error).__name__}: "
            f"{str(error).splitlines()[0][:120]}); offline? download {chosen.url} elsewhere and pass --weights FILE"
        ) from None
