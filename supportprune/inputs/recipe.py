"""Recipes: YAML files validated into frozen dataclasses.

Every problem names the file and the key (``recipes/x.yaml: sparse.lr: expected a number, got 'fast'``).
Cross-field checks live in ``__post_init__``. A run writes its resolved recipe next to its outputs.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, Optional

import yaml

from supportprune.errors import SupportpruneError

RECIPE_VERSION = 1
SCHEDULES = ("cosine", "step", "constant")
ALLOCATIONS = ("global", "latency")
# baselines that prune channels to a MACs target (torch-pruning importances; criteria.REGISTRY builds them)
CHANNEL_CRITERIA = ("l1", "l2", "random", "taylor", "fpgm", "lamp", "hessian", "bn_scale")
SUPPORT_STATISTICS = ("max_energy", "frequency", "energy_x_consumer", "energy_lamp")  # criteria.support_statistics
CRITERIA = ("support", "magnitude") + CHANNEL_CRITERIA
ALTERNATIONS = ("none", "instance", "batch")
MASK_STORAGES = ("auto", "memory", "disk")
TARGET_SCHEDULES = ("final", "linear", "cubic")  # MACs target at each alternation point (sparse.target_schedule)
BETAS = ("zero", "estimated")  # η*'s threshold β in the Sparse step (sparse.beta)
REVIVALS = ("zero", "restore", "reinit")  # how re-dense brings pruned channels back (redense.revive)


class RecipeError(SupportpruneError):
    """A recipe file or override that does not validate."""


@dataclass(frozen=True)
class DataConfig:
    source: str = "embedded"  # embedded | fashion-mnist:DIR | cifar10:DIR | imagenet:DIR | folder:DIR
    input_size: int = 32
    channels: Optional[int] = None  # None: the dataset's own
    mean: tuple[float, ...] = (0.2860,)
    std: tuple[float, ...] = (0.3530,)
    # Evaluation preprocessing: resize (the shorter side) to resize_to, then centre-crop input_size, like timm's
    # crop_pct. None: resize_to = input_size / crop_fraction, and crop_fraction is the source's custom
    # (0.875 for imagenet:, 1: no crop, for every other source). A run's recipe.yaml holds the resolved values.
    resize_to: Optional[int] = None
    crop_fraction: Optional[float] = None
    augment: bool = False
    batch_size: int = 128
    workers: int = 0

    def __post_init__(self) -> None:
        _positive(self, "input_size", "batch_size")
        if self.resize_to is not None and self.resize_to < self.input_size:
            raise ValueError(f"resize_to: must be >= input_size ({self.input_size}), got {self.resize_to}")
        if self.crop_fraction is not None and not 0 < self.crop_fraction <= 1:
            raise ValueError(f"crop_fraction: must lie in (0, 1], got {self.crop_fraction}")
        if self.workers < 0:
            raise ValueError("workers: must be >= 0")
        if len(self.mean) != len(self.std):
            raise ValueError(f"mean and std: need the same length, got {len(self.mean)} and {len(self.std)}")
        if any(s <= 0 for s in self.std):
            raise ValueError("std: every value must be > 0")


@dataclass(frozen=True)
class PhaseConfig:
    """One DSD phase's optimisation (SGD with momentum)."""

    epochs: int = 1
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    step_epochs: int = 30  # schedule 'step': lr × 0.1 every step_epochs
    nesterov: bool = False

    def __post_init__(self) -> None:
        if self.epochs < 0:
            raise ValueError("epochs: must be >= 0")
        if self.lr <= 0:
            raise ValueError("lr: must be > 0")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule: must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        _positive(self, "step_epochs")


@dataclass(frozen=True)
class DistillConfig:
    """Knowledge distillation from the Dense step's model (Hinton et al. 2015): the loss is
    (1 − alpha)·CE(y, z_s) + alpha·T²·KL(softmax(z_t/T) ‖ softmax(z_s/T))."""

    alpha: float = 0.7
    temperature: float = 4.0

    def __post_init__(self) -> None:
        if not 0 <= self.alpha <= 1:
            raise ValueError(f"alpha: a weight in [0, 1], got {self.alpha}")
        if self.temperature <= 0:
            raise ValueError(f"temperature: must be > 0, got {self.temperature}")


@dataclass(frozen=True)
class SparseConfig(PhaseConfig):
    """The Sparse phase: B-alternation training, pruning channels whose support stayed zero."""

    granularity: Literal["element", "channel"] = "channel"
    # β of Eq. 41 for the training masks, as a multiple of the site's mean unit energy. 0: the masks are η*'s own
    # support; above 0 they mask weak channels in training that the test-time model keeps (MobileNetV2 from a
    # trained start: 37% top-1 at 0.2 against 84% at 0; benchmarks/criteria).
    relative_threshold: float = 0.0
    target_macs: Optional[float] = None  # fraction of the baseline MACs to keep; searches the threshold
    round_to: int = 1  # kept channel counts are multiples of this (GPU-friendly shapes)
    # ...and of this for channels that reach a concatenation (None: round_to). ONNX Runtime's CPU kernels keep
    # a Concat in their blocked layout only at multiples of their block, 16 with AVX-512 (SiteGroup.rounding).
    concat_round_to: Optional[int] = None
    prune_at: tuple[int, ...] = ()  # epochs (1-based) after which zero-support channels are pruned; () = last
    # The collapse guard of every channel criterion (pruning.SiteGroup.floor): at most this share of a coupled
    # group's channels is cut (Torch-Pruning's max_pruning_ratio; 1: no cap). A layer is never emptied, nor a
    # fully-connected layer left narrower than its output or the classes, whatever this is. 0.75 leaves a criterion
    # free to cut a layer to a quarter, past the ~0.55 a uniform cut keeps at 0.3 of the MACs, and stops the
    # criteria that cut a layer to its last rounding multiple (README "A default that carries over").
    max_pruning_ratio: float = 0.75
    # Learned sparsity before the cut (method.group_decay): up to the first alternation point, the channels the
    # criterion's plan would cut fade, their producing weights decayed at a growing rate, by this many e-folds in
    # all (0: off). The cut then removes channels with (almost) zero support. Global allocation, a MACs target,
    # and a criterion that scores without observing batches.
    group_decay: float = 0.0
    # What decides the pruning: the learned support (the paper), or a baseline at matched cost: DSD's
    # weight magnitude (unstructured), or a torch-pruning channel importance (CHANNEL_CRITERIA; need target_macs).
    criterion: str = "support"
    alternation: str = "batch"  # support criterion: B-alternation (Eq. 41) or I-alternation (Eq. 38)
    # support criterion: what scores a channel (SUPPORT_STATISTICS). energy_x_consumer and distill are the defaults
    # because they won on trained starting points (README "Criteria from a trained model").
    support_statistic: str = "energy_x_consumer"
    observe_batches: int = 10  # taylor, hessian: training batches whose gradients they accumulate per decision
    magnitude_sparsity: float = 0.3  # criterion magnitude: share of conv/linear weights zeroed per layer
    # Where the MACs cut falls: one threshold over the whole network (global), or per coupled group by
    # support lost per second saved, from layer latencies measured on the benchmark device (latency).
    allocation: str = "global"
    target_latency: Optional[float] = None  # allocation latency: fraction of the predicted dense time to keep (default: target_macs)
    latency_batch_size: Optional[int] = None  # batch the layers are timed at; None: the largest benchmark batch
    latency_precision: str = "fp32"  # fp32, or fp16 (time the layers as an fp16 export runs them)
    # A latency-table.json to use instead of timing the layers here: timed once on the deployment machine,
    # and the same table gives the same allocation on every run (timings vary from one measurement to the next).
    latency_table: Optional[str] = None
    # MACs target at alternation point k of K: final (target_macs at every point), or from 1 down to
    # target_macs, linearly or cubically (Zhu & Gupta 2017's gradual pruning; see dsd.scheduled_target).
    target_schedule: str = "final"
    # η*'s β: zero (η* = ReLU), or estimated (the trained bias before each site; dsd.estimate_beta). Criterion
    # support only: the baselines prune a network with plain η* (ReLU). zero by default: estimated gained 0.4-0.6
    # top-1 (resnet18, seed 0), but η* with β ≠ 0 exports as Greater+Where, which ONNX Runtime cannot fuse into
    # the convolution: the exported models ran 0.79× (fp32) and 0.50× (int8) as fast at batch 64.
    beta: str = "zero"
    distill: Optional[DistillConfig] = DistillConfig()  # teacher: the model at the end of the Dense step; null: none

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.target_schedule not in TARGET_SCHEDULES:
            raise ValueError(f"target_schedule: must be one of {', '.join(TARGET_SCHEDULES)}, got {self.target_schedule!r}")
        if self.target_schedule != "final" and self.target_macs is None:
            raise ValueError("target_schedule: a gradual schedule interpolates to target_macs; set target_macs")
        if self.target_schedule != "final" and self.criterion == "magnitude":
            raise ValueError("target_schedule: criterion magnitude prunes weights, not to a MACs target; use final")
        if self.beta not in BETAS:
            raise ValueError(f"beta: must be one of {', '.join(BETAS)}, got {self.beta!r}")
        if self.allocation not in ALLOCATIONS:
            raise ValueError(f"allocation: must be one of {', '.join(ALLOCATIONS)}, got {self.allocation!r}")
        if self.allocation == "latency" and (self.latency_target is None or self.criterion == "magnitude"):
            raise ValueError("allocation: latency cuts channels to a time target; set target_latency (or target_macs), "
                             "with a channel criterion")
        if self.latency_table is not None and self.allocation != "latency":
            raise ValueError("latency_table: only with allocation: latency")
        if self.target_latency is not None and self.allocation != "latency":
            raise ValueError("target_latency: only with allocation: latency (the global allocation targets MACs)")
        if self.target_latency is not None and not 0 < self.target_latency <= 1:
            raise ValueError(f"target_latency: a fraction in (0, 1], got {self.target_latency}")
        if self.latency_precision not in ("fp32", "fp16"):
            raise ValueError(f"latency_precision: must be fp32 or fp16, got {self.latency_precision!r}")
        if self.latency_batch_size is not None:
            _positive(self, "latency_batch_size")
        if self.criterion not in CRITERIA:
            raise ValueError(f"criterion: must be one of {', '.join(CRITERIA)}, got {self.criterion!r}")
        if self.alternation not in ("batch", "instance"):
            raise ValueError(f"alternation: must be batch or instance, got {self.alternation!r}")
        if self.support_statistic not in SUPPORT_STATISTICS:
            raise ValueError(f"support_statistic: must be one of {', '.join(SUPPORT_STATISTICS)}, got {self.support_statistic!r}")
        _positive(self, "observe_batches")
        if self.criterion in CHANNEL_CRITERIA and self.target_macs is None:
            raise ValueError(f"target_macs: criterion {self.criterion} prunes channels to a MACs target; set one (e.g. the support's)")
        if not 0 <= self.magnitude_sparsity < 1:
            raise ValueError(f"magnitude_sparsity: a fraction in [0, 1), got {self.magnitude_sparsity}")
        _check_support_options(self)
        if self.target_macs is not None and not 0 < self.target_macs <= 1:
            raise ValueError(f"target_macs: a fraction in (0, 1], got {self.target_macs}")
        _positive(self, "round_to")
        if self.group_decay < 0:
            raise ValueError(f"group_decay: e-folds of decay, 0 (off) or more, got {self.group_decay}")
        if self.group_decay and (self.target_macs is None or self.allocation != "global"
                                 or self.criterion in ("magnitude", "taylor", "hessian")):
            raise ValueError("group_decay: fades the channels a global cut to target_macs would remove; it needs "
                             "target_macs, allocation global and a criterion that scores without observing batches "
                             "(not magnitude, taylor or hessian)")
        if not 0 <= self.max_pruning_ratio <= 1:
            raise ValueError(f"max_pruning_ratio: a fraction in [0, 1] (1: no cap), got {self.max_pruning_ratio}")
        if self.concat_round_to is not None:
            _positive(self, "concat_round_to")
        bad = [e for e in self.prune_at if not 1 <= e <= self.epochs]
        if bad:
            raise ValueError(f"prune_at: epochs must lie in 1..{self.epochs} (sparse.epochs), got {bad}")
        if self.epochs == 0:
            raise ValueError("epochs: the sparse phase needs at least one epoch to observe supports")

    @property
    def latency_target(self) -> Optional[float]:
        """allocation latency: the share of the dense model's predicted time the cut aims at."""
        return self.target_latency if self.target_latency is not None else self.target_macs

    @property
    def alternation_epochs(self) -> tuple[int, ...]:
        return tuple(sorted(set(self.prune_at))) if self.prune_at else (self.epochs,)

    @property
    def estimates_beta(self) -> bool:
        """Whether the Sparse step moves the trained biases into η*'s β: a support option, like the training
        masks; a baseline criterion prunes a network with plain η* (ReLU)."""
        return self.beta == "estimated" and self.criterion == "support"


@dataclass(frozen=True)
class RedenseConfig(PhaseConfig):
    """DSD's re-dense step: pruned channels come back and the whole network trains again."""

    # restore (default): the weights the channel had when it was pruned; zero: every weight of a revived channel
    # is zero (DSD; a saddle: they get no gradient, measured: re-Dense = Sparse ± 0.2 points); reinit: producing
    # weights re-drawn (Kaiming), consuming zero. restore won by 1–3 points (benchmarks/criteria).
    revive: str = "restore"
    distill: Optional[DistillConfig] = DistillConfig()  # teacher: the model at the end of the Dense step; null: none

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.revive not in REVIVALS:
            raise ValueError(f"revive: must be one of {', '.join(REVIVALS)}, got {self.revive!r}")


@dataclass(frozen=True)
class TrainConfig(PhaseConfig):
    """`supportprune train`: one training run whose ReLUs are trained by alternation (paper section 4.1)."""

    alternation: str = "none"  # none (plain SGD, ReLU) | instance (I-alternation) | batch (B-alternation)
    warmup_epochs: int = 1  # plain SGD first: supports estimated from untrained weights mean little
    gap_epochs: int = 1  # instance: epochs trained with one set of supports before they are re-estimated
    granularity: Literal["element", "channel"] = "element"
    relative_threshold: float = 0.1  # β of Eq. 38/41 as a multiple of the mean unit energy at a site
    mask_storage: str = "auto"  # instance masks: memory, disk (memory-mapped file), auto (memory if within budget)
    mask_memory_mb: int = 2048  # memory budget for the instance masks

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.alternation not in ALTERNATIONS:
            raise ValueError(f"alternation: must be one of {', '.join(ALTERNATIONS)}, got {self.alternation!r}")
        if self.warmup_epochs < 0:
            raise ValueError("warmup_epochs: must be >= 0")
        _positive(self, "gap_epochs", "mask_memory_mb")
        _check_support_options(self)
        if self.mask_storage not in MASK_STORAGES:
            raise ValueError(f"mask_storage: must be one of {', '.join(MASK_STORAGES)}, got {self.mask_storage!r}")


@dataclass(frozen=True)
class ExportConfig:
    opset: int = 18
    tolerance: float = 1e-3
    check_batch: int = 16
    fp16: bool = False  # also export (and benchmark) half-precision models, <kind>.fp16.onnx
    agreement_images: int = 1000  # validation images on which fp16 and int8 top-1 are compared with fp32
    int8: bool = False  # also export (and benchmark) static QDQ int8 models, <kind>.int8.onnx (supportprune/deploy/quantize.py)
    calibration_images: int = 256  # training images that calibrate the int8 activation ranges

    def __post_init__(self) -> None:
        _positive(self, "check_batch", "agreement_images", "calibration_images")


@dataclass(frozen=True)
class BenchConfig:
    batch_sizes: tuple[int, ...] = (1, 64)
    gpu_batch_sizes: tuple[int, ...] = (1, 256)
    runs: int = 30
    warmup: int = 5

    def __post_init__(self) -> None:
        _positive(self, "runs")
        if not self.batch_sizes or any(b < 1 for b in self.batch_sizes + self.gpu_batch_sizes):
            raise ValueError("batch_sizes: need positive batch sizes")


@dataclass(frozen=True)
class Recipe:
    version: int = RECIPE_VERSION
    description: str = ""
    weights: Optional[str] = None  # torchvision weights name or a file; None: random initialisation
    model_args: dict[str, Any] = field(default_factory=dict)  # keyword arguments of the model factory
    seed: int = 0
    checkpoint_every_steps: int = 0  # also checkpoint inside epochs every K steps (0: at epoch ends only)
    precision: str = "fp32"  # training arithmetic: fp32, or bf16 autocast
    channels_last: bool = False  # NHWC activations: faster convolutions on GPUs
    compile: bool = False  # torch.compile the training step
    sync_batch_norm: bool = False  # under torchrun: batch norm over the global batch, as one process computes it
    data: DataConfig = field(default_factory=DataConfig)
    dense: PhaseConfig = field(default_factory=lambda: PhaseConfig(epochs=0, lr=0.1))
    sparse: SparseConfig = field(default_factory=SparseConfig)
    redense: RedenseConfig = field(default_factory=lambda: RedenseConfig(epochs=1, lr=0.001))
    train: TrainConfig = field(default_factory=TrainConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    bench: BenchConfig = field(default_factory=BenchConfig)

    def __post_init__(self) -> None:
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"precision: must be fp32 or bf16, got {self.precision!r}")
        if self.checkpoint_every_steps < 0:
            raise ValueError("checkpoint_every_steps: must be >= 0")
        if self.version != RECIPE_VERSION:
            raise ValueError(f"version: this supportprune reads recipe version {RECIPE_VERSION}, got {self.version}")

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def _positive(obj: Any, *names: str) -> None:
    for name in names:
        if getattr(obj, name) < 1:
            raise ValueError(f"{name}: must be >= 1, got {getattr(obj, name)}")


def _check_support_options(obj: Any) -> None:
    """The support unit and threshold, shared by the sparse and train sections."""
    if obj.granularity not in ("element", "channel"):
        raise ValueError(f"granularity: must be 'element' or 'channel', got {obj.granularity!r}")
    if obj.relative_threshold < 0:
        raise ValueError("relative_threshold: must be >= 0")


def _is_plain_data(value: Any) -> bool:
    if isinstance(value, (list, tuple)):
        return all(_is_plain_data(v) for v in value)
    return value is None or isinstance(value, (str, int, float, bool))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


# ---------------------------------------------------------------------------------------------------
# Loading and validation


def recipe_from_dict(raw: Any, origin: str = "<recipe>") -> Recipe:
    """Validate a parsed mapping into a ``Recipe``; errors name ``origin`` and the key."""
    return _build(Recipe, raw, origin, "")


def same_recipe(path: str | Path, recipe: Recipe) -> bool:
    """Whether the recipe saved at ``path`` (a run's recipe.yaml) is ``recipe``. Compared after loading, so a run
    written before an option existed still matches when the option is at its default."""
    try:
        return with_resolved_preprocessing(load_recipe(path)).to_yaml() == with_resolved_preprocessing(recipe).to_yaml()
    except RecipeError:
        return False


def with_resolved_preprocessing(recipe: Recipe) -> Recipe:
    """``recipe`` with ``data.resize_to`` and ``data.crop_fraction`` made explicit for its data source, as a run
    records them (a run saved before these keys existed resolves to what it did)."""
    from supportprune.inputs.data import resolve_resize

    data = recipe.data
    try:
        resize_to = resolve_resize(data.source, data.input_size, data.resize_to, data.crop_fraction)
    except SupportpruneError as error:
        raise RecipeError(str(error)) from None
    return dataclasses.replace(recipe, data=dataclasses.replace(
        data, resize_to=resize_to, crop_fraction=round(data.input_size / resize_to, 6)))


def load_recipe(path: str | Path) -> Recipe:
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"{path}: recipe file not found; `supportprune recipes` lists the shipped ones")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        where = getattr(error, "problem_mark", None)
        line = f" (line {where.line + 1})" if where is not None else ""
        raise RecipeError(f"{path}: not valid YAML{line}: {getattr(error, 'problem', None) or error}") from None
    return recipe_from_dict(raw if raw is not None else {}, str(path))


def with_overrides(recipe: Recipe, overrides: dict[str, Any], origin: str = "command line") -> Recipe:
    """A copy of ``recipe`` with dotted keys replaced (``{'sparse.lr': 0.01}``), validated again."""
    raw = recipe.to_dict()
    for dotted, value in overrides.items():
        if value is None:
            continue
        node = raw
        *parents, leaf = dotted.split(".")
        for key in parents:
            if node.get(key) is None:  # an optional section left out (e.g. sparse.distill): its defaults
                node[key] = {}
            node = node[key]
        node[leaf] = value
    return recipe_from_dict(raw, origin)


def _build(cls: type, raw: Any, origin: str, prefix: str) -> Any:
    if not isinstance(raw, dict):
        raise RecipeError(f"{origin}: {prefix.rstrip('.') or 'top level'}: expected a mapping, got {type(raw).__name__}")
    known = {f.name: f for f in fields(cls)}
    for key in raw:
        if key not in known:
            raise RecipeError(
                f"{origin}: {prefix}{key}: unknown key; known keys here: {', '.join(sorted(known))}"
            )
    hints = typing.get_type_hints(cls)
    values = {}
    for name, value in raw.items():
        values[name] = _coerce(hints[name], value, origin, f"{prefix}{name}")
    try:
        return cls(**values)
    except ValueError as error:
        message = str(error)
        key = message.split(":", 1)[0]
        raise RecipeError(f"{origin}: {prefix}{message}" if key in known else f"{origin}: {prefix.rstrip('.')}: {message}") from None


def _coerce(hint: Any, value: Any, origin: str, key: str) -> Any:
    origin_type = typing.get_origin(hint)
    args = typing.get_args(hint)

    def fail(expected: str) -> RecipeError:
        return RecipeError(f"{origin}: {key}: expected {expected}, got {value!r}")

    if dataclasses.is_dataclass(hint):
        return _build(hint, value, origin, f"{key}.")
    if origin_type is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) and k.isidentifier() for k in value):
            raise fail("a mapping of argument names to values")
        bad = [k for k, v in value.items() if not _is_plain_data(v)]
        if bad:
            raise RecipeError(f"{origin}: {key}.{bad[0]}: expected a YAML scalar or list, got {value[bad[0]]!r}")
        return dict(value)
    if origin_type in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, origin, key)
    if origin_type is Literal:
        if value not in args:
            raise fail("one of " + ", ".join(repr(a) for a in args))
        return value
    if origin_type is tuple:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise fail("a list")
        return tuple(_coerce(args[0], item, origin, f"{key}[{i}]") for i, item in enumerate(value))
    if hint is bool:
        if not isinstance(value, bool):
            raise fail("true or false")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise fail("an integer")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise fail("a number")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise fail("a string")
        return value
    raise TypeError(f"unsupported recipe field type {hint} for {key}")


# ---------------------------------------------------------------------------------------------------
# Shipped recipes


def recipes_dir() -> Path:
    """Shipped recipes: ``supportprune/recipes`` in an installed wheel, ``recipes/`` in a source checkout."""
    package = Path(__file__).resolve().parent.parent  # supportprune/, this module being in supportprune/inputs/
    packaged = package / "recipes"
    return packaged if packaged.is_dir() else package.parent / "recipes"


def shipped_recipes() -> dict[str, Path]:
    directory = recipes_dir()
    return {path.stem: path for path in sorted(directory.glob("*.yaml"))} if directory.is_dir() else {}


def _scheme(source: str) -> str:
    return source.split(":", 1)[0]


def resolve_recipe(recipe: str | None, model: str, data_source: str | None, trained: bool = False) -> Path:
    """The recipe file to use: an explicit path or shipped name; otherwise the model's own recipe
    (``recipes/<model>.yaml``) for data of its kind (``imagenet:``), else ``pretrained`` when the model starts
    trained (``trained``: weights were given) and ``embedded`` when it trains from scratch on the embedded data."""
    shipped = shipped_recipes()
    if recipe is not None:
        if recipe in shipped:
            return shipped[recipe]
        return Path(recipe)
    embedded_data = data_source in (None, "embedded")
    if not embedded_data and model in shipped and _scheme(load_recipe(shipped[model]).data.source) == _scheme(data_source):
        return shipped[model]
    if trained:
        return shipped["pretrained"]
    if embedded_data:
        return shipped["embedded"]
    raise RecipeError(
        f"no shipped recipe for {model!r} on {data_source}; pass --weights FILE for a trained model (recipe "
        f"'pretrained'), --recipe pretrained if the factory loads its own weights, or --recipe FILE "
        f"(start from `supportprune recipes show pretrained`)"
    )
