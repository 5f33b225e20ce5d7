"""Recipes: YAML files validated into frozen dataclasses.

Every problem names the file and the key (``recipes/x.yaml: sparse.lr: expected a number, got 'fast'``; the
validation itself is ``typed_yaml``'s). Cross-field checks live in ``__post_init__``. A run writes its resolved
recipe next to its outputs. The shipped recipes, and which one a command takes, are ``shipped``'s.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from supportprune.errors import SupportpruneError
from supportprune.inputs.typed_yaml import RecipeError, build_dataclass, plain_data
from supportprune.method.alternation import ALTERNATIONS
from supportprune.method.criteria import CHANNEL_CRITERIA, CRITERIA, SUPPORT_STATISTICS
from supportprune.method.support import GRANULARITIES, Granularity

RECIPE_VERSION = 1
SCHEDULES = ("cosine", "step", "constant")
ALLOCATIONS = ("global", "latency", "measured")
MASK_STORAGES = ("auto", "memory", "disk")
TARGET_SCHEDULES = ("final", "linear", "cubic")  # MACs target at each alternation point (sparse.target_schedule)
BETAS = ("zero", "estimated")  # η*'s threshold β in the Sparse step (sparse.beta)
REVIVALS = ("zero", "restore", "reinit")  # how re-dense brings pruned channels back (redense.revive)
# The weight criterion that prunes a model with no ReLU or ReLU6 call site (SiLU, GELU, Hardswish: no support to
# learn) when the recipe asks for the support and the command line did not (sparse.criterion_without_relu).
CRITERION_WITHOUT_RELU = "l1"


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

    granularity: Granularity = "channel"
    # β of Eq. 41 for the training masks, as a multiple of the site's mean unit energy. 0: the masks are η*'s own
    # support; above 0 they mask weak channels in training that the test-time model keeps (benchmarks/results/2026-12-04-recipe-choices.md).
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
    criterion_without_relu: str = CRITERION_WITHOUT_RELU  # a model without ReLU or ReLU6 call sites is pruned by this
    alternation: str = "batch"  # support criterion: B-alternation (Eq. 41) or I-alternation (Eq. 38)
    # support criterion: what scores a channel (SUPPORT_STATISTICS). energy_x_consumer and distill are the defaults
    # because they won on trained starting points (README "Criteria from a trained model").
    support_statistic: str = "energy_x_consumer"
    observe_batches: int = 10  # taylor, hessian: training batches whose gradients they accumulate per decision
    magnitude_sparsity: float = 0.3  # criterion magnitude: share of conv/linear weights zeroed per layer
    # Where the MACs cut falls: one threshold over the whole network (global), or per coupled group by
    # support lost per second saved, from layer latencies measured on the benchmark device (latency), or from
    # whole pruned models exported and timed there (measured; method/measured_allocation.py).
    allocation: str = "global"
    # allocation latency / measured: fraction of the dense time to keep, predicted by the layer table (latency) or
    # measured on the whole model (measured); default target_macs
    target_latency: Optional[float] = None
    latency_batch_size: Optional[int] = None  # batch the layers (whole models) are timed at; None: the largest benchmark batch
    latency_precision: str = "fp32"  # fp32, or fp16 (time as an fp16 export runs)
    # A latency-table.json to use instead of timing the layers here: timed once on the deployment machine,
    # and the same table gives the same allocation on every run (timings vary from one measurement to the next).
    latency_table: Optional[str] = None
    # MACs target at alternation point k of K: final (target_macs at every point), or from 1 down to
    # target_macs, linearly or cubically (Zhu & Gupta 2017's gradual pruning; see dsd.scheduled_target).
    target_schedule: str = "final"
    # η*'s β: zero (η* = ReLU), or estimated (the trained bias before each site; dsd.estimate_beta). Criterion
    # support only: the baselines prune a network with plain η* (ReLU). zero by default: estimated gains a little
    # top-1, but η* with β ≠ 0 exports as Greater+Where, which ONNX Runtime cannot fuse into the convolution, and
    # the exported models ran slower (benchmarks/results/2026-12-04-recipe-choices.md).
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
        if self.allocation in ("latency", "measured") and (self.latency_target is None or self.criterion == "magnitude"):
            raise ValueError(f"allocation: {self.allocation} cuts channels to a time target; set target_latency (or target_macs), "
                             "with a channel criterion")
        if self.latency_table is not None and self.allocation != "latency":
            raise ValueError("latency_table: only with allocation: latency")
        if self.target_latency is not None and self.allocation not in ("latency", "measured"):
            raise ValueError("target_latency: only with allocation: latency or measured (the global allocation targets MACs)")
        if self.target_latency is not None and not 0 < self.target_latency <= 1:
            raise ValueError(f"target_latency: a fraction in (0, 1], got {self.target_latency}")
        if self.latency_precision not in ("fp32", "fp16"):
            raise ValueError(f"latency_precision: must be fp32 or fp16, got {self.latency_precision!r}")
        if self.latency_batch_size is not None:
            _positive(self, "latency_batch_size")
        if self.criterion not in CRITERIA:
            raise ValueError(f"criterion: must be one of {', '.join(CRITERIA)}, got {self.criterion!r}")
        if self.criterion_without_relu not in CHANNEL_CRITERIA:
            raise ValueError(f"criterion_without_relu: a weight criterion ({', '.join(CHANNEL_CRITERIA)}), "
                             f"got {self.criterion_without_relu!r}")
        if self.alternation not in ALTERNATIONS or self.alternation == "none":
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
        """allocation latency / measured: the share of the dense model's (predicted / measured) time the cut aims at."""
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
    # is zero (DSD; a saddle: they get no gradient, so re-Dense stays where Sparse left it); reinit: producing
    # weights re-drawn (Kaiming), consuming zero. restore won (benchmarks/results/2026-12-04-recipe-choices.md).
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
    granularity: Granularity = "element"
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
    # Head warm-up: when the classifier head (or the first convolution) of a trained model was replaced to fit the
    # data, these epochs train the new layers alone, everything else frozen, before anything is pruned. It runs only
    # then (a model whose head fits the data skips it).
    head: PhaseConfig = field(default_factory=lambda: PhaseConfig(epochs=0, lr=0.05))
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
        return plain_data(dataclasses.asdict(self))

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def _positive(obj: Any, *names: str) -> None:
    for name in names:
        if getattr(obj, name) < 1:
            raise ValueError(f"{name}: must be >= 1, got {getattr(obj, name)}")


def _check_support_options(obj: Any) -> None:
    """The support unit and threshold, shared by the sparse and train sections."""
    if obj.granularity not in GRANULARITIES:
        raise ValueError(f"granularity: must be one of {', '.join(map(repr, GRANULARITIES))}, got {obj.granularity!r}")
    if obj.relative_threshold < 0:
        raise ValueError("relative_threshold: must be >= 0")


# ---------------------------------------------------------------------------------------------------
# Loading and validation


def recipe_from_dict(raw: Any, origin: str = "<recipe>") -> Recipe:
    """Validate a parsed mapping into a ``Recipe``; errors name ``origin`` and the key."""
    return build_dataclass(Recipe, raw, origin, "")


def same_recipe(path: str | Path, recipe: Recipe) -> bool:
    """Whether the recipe saved at ``path`` (a run's recipe.yaml) is ``recipe``. Compared after loading, so a run
    written before an option existed still matches when the option is at its default."""
    return not recipe_differences(path, recipe)


def recipe_differences(path: str | Path, recipe: Recipe) -> list[tuple[str, Any, Any]]:
    """The keys (dotted, ``sparse.lr``) whose value differs between the recipe saved at ``path`` (a run's
    recipe.yaml) and ``recipe``, with the saved and the new value; compared as ``same_recipe`` compares. A saved
    recipe that no longer loads differs as a whole (key ``recipe.yaml``)."""
    try:
        saved = _flat(with_resolved_preprocessing(load_recipe(path)).to_dict())
    except RecipeError as error:
        return [("recipe.yaml", str(error), None)]
    new = _flat(with_resolved_preprocessing(recipe).to_dict())
    return [(key, saved.get(key), new.get(key)) for key in dict.fromkeys([*saved, *new]) if saved.get(key) != new.get(key)]


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value and key != "model_args":
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def with_resolved_preprocessing(recipe: Recipe) -> Recipe:
    """``recipe`` with ``data.resize_to`` and ``data.crop_fraction`` made explicit for its data source, and the
    channel count and one mean and std per channel, as a run records them (a run saved before these keys existed
    resolves to what it did). A mean or std of another length than 1 or the channel count is an error."""
    from supportprune.inputs.data import native_channels, resolve_resize

    data = recipe.data
    try:
        resize_to = resolve_resize(data.source, data.input_size, data.resize_to, data.crop_fraction)
    except SupportpruneError as error:
        raise RecipeError(str(error)) from None
    channels = data.channels if data.channels is not None else native_channels(data.source)
    for name, values in (("mean", data.mean), ("std", data.std)):
        if len(values) not in (1, channels):
            raise RecipeError(f"data.{name} has {len(values)} values ({', '.join(f'{v:g}' for v in values)}) but the "
                              f"data has {channels} channel(s); give one value per channel (--{name}) or one for all")
    return dataclasses.replace(recipe, data=dataclasses.replace(
        data, resize_to=resize_to, crop_fraction=round(data.input_size / resize_to, 6), channels=channels,
        mean=tuple(data.mean) * (channels // len(data.mean)), std=tuple(data.std) * (channels // len(data.std))))


def preprocessing_notes(given: Recipe, resolved: Recipe) -> list[str]:
    """What resolving the preprocessing decided for the user, said in the log and the report: a one-value mean or
    std used for every channel."""
    notes = []
    if resolved.data.channels > 1 and (len(given.data.mean) == 1 or len(given.data.std) == 1):
        notes.append(f"data.mean {', '.join(f'{v:g}' for v in given.data.mean)} / data.std "
                     f"{', '.join(f'{v:g}' for v in given.data.std)}: one value used for all {resolved.data.channels} "
                     f"channels (mean {list(resolved.data.mean)}, std {list(resolved.data.std)}); give one per channel "
                     "if the channels differ")
    return notes


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
