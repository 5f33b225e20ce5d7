"""`supportprune experiment`: the paper's claims measured on one dataset, several seeds, one command.

Per seed, every run starts from the same place so that runs differ in one thing only:

1. ``train`` with alternation none, instance and batch (same loop, seed and data order): Figure 3
   (training loss and error against iterations), Table 7 (validation error), and Table 2's MaskT ablation.
2. The plain-SGD model of step 1 is the Dense model of DSD. From it, the Sparse and re-Dense steps run
   with each pruning criterion: the support found by B-alternation, by I-alternation, and DSD's weight
   magnitude matched on parameters (Table 8).
3. From the same Dense model, the Sparse step alone at several MACs targets: support (B-alternation)
   against channel L1, L2 and random pruning at the MACs the support kept (accuracy against MACs).

Every run is an ordinary run directory under ``OUT/runs`` (resumable: the command picks up where it
stopped; a finished run is read, not repeated, when its model, recipe, step cap and starting weights are
this plan's; a run made with other ones is moved aside and made again). The report is written from those directories.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Optional

from supportprune.errors import SupportpruneError
from supportprune.inputs.recipe import Recipe, with_overrides
from supportprune.method.alternation import ALTERNATIONS
from supportprune.pipelines.results import CompressMetrics, read_compress_metrics, read_result
from supportprune.reports.experiment_report import CHANNEL_BASELINES, write_experiment_report
from supportprune.store.atomic import atomic_write_text

RUN_KEY_FILE = "experiment-key.json"  # in each run directory: what the run was made with (see ``run_key``)


@dataclass
class ExperimentPlan:
    model: str
    recipe: Recipe
    out_dir: Path
    seeds: tuple[int, ...] = (0, 1, 2)
    targets: tuple[float, ...] = (0.7, 0.5, 0.3)
    device: str = "auto"
    max_steps: Optional[int] = None  # smoke tests: cap steps per epoch
    runs_dir: Optional[Path] = None  # the runs' directories (checkpoints: large); default OUT/runs
    command: str = ""
    run_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def table8_target(self) -> float:
        """The MACs target of the Table 8 runs: 0.5 when swept, else the first target."""
        return 0.5 if 0.5 in self.targets else self.targets[0]

    def run_dir(self, name: str) -> Path:
        return (self.runs_dir or self.out_dir / "runs") / name


def run_experiment(plan: ExperimentPlan, message: Callable[[str], None] = print, reporter=None) -> Path:
    """Run (or resume) every run of the plan and write ``report.md``, ``results.json`` and plots."""
    if not plan.seeds:
        raise SupportpruneError("--seeds: give at least one seed")
    if not plan.targets or any(not 0 < t <= 1 for t in plan.targets):
        raise SupportpruneError(f"--targets {list(plan.targets)}: MACs fractions in (0, 1] are needed")
    started = time.perf_counter()
    results: dict[str, Any] = {"train": {}, "dsd": {}, "macs": {}}
    for seed in plan.seeds:
        for alternation in ALTERNATIONS:
            results["train"][f"{alternation}/{seed}"] = _train_run(plan, plan.recipe, alternation, seed, message, reporter)
        # Every DSD run starts from the plain-SGD model, its Dense step done.
        dense_weights = plan.run_dir(f"train-none-seed{seed}") / "models" / "trained.pt"
        derived = {"seed": seed, "weights": str(dense_weights), "dense.epochs": 0}
        # Table 8: the full DSD, support first (its parameter count sets the magnitude baseline's sparsity).
        table8_target = plan.table8_target
        by_support = {**derived, "sparse.criterion": "support", "sparse.target_macs": table8_target}
        support_batch = _compress_run(plan, plan.recipe, f"dsd-support-batch-seed{seed}", message, reporter,
                                      {**by_support, "sparse.alternation": "batch"})
        support_instance = _compress_run(plan, plan.recipe, f"dsd-support-instance-seed{seed}", message, reporter,
                                         {**by_support, "sparse.alternation": "instance"})
        sparsity = _matching_sparsity(plan, support_batch)
        magnitude = _compress_run(plan, plan.recipe, f"dsd-magnitude-seed{seed}", message, reporter,
                                  {**derived, "sparse.criterion": "magnitude", "sparse.magnitude_sparsity": sparsity})
        results["dsd"][str(seed)] = {"support-batch": support_batch, "support-instance": support_instance,
                                     "magnitude": magnitude, "magnitude_sparsity": sparsity}
        # Accuracy against MACs: the Sparse step alone, support then the channel baselines at its MACs.
        sparse_only = {**derived, "redense.epochs": 0}
        for target in plan.targets:
            if target == table8_target:  # its Sparse step is this one: read, not repeated
                support = support_batch
            else:
                support = _compress_run(plan, plan.recipe, f"macs{target:g}-support-seed{seed}", message, reporter,
                                        {**sparse_only, "sparse.target_macs": target})
            kept = support.kept_macs
            entry = {"support": support}
            for criterion in CHANNEL_BASELINES:
                entry[criterion] = _compress_run(
                    plan, plan.recipe, f"macs{target:g}-{criterion}-seed{seed}", message, reporter,
                    {**sparse_only, "sparse.criterion": criterion, "sparse.target_macs": kept},
                )
            results["macs"][f"{target:g}/{seed}"] = entry
    seconds = time.perf_counter() - started
    return write_experiment_report(plan, results, seconds)


def _train_run(plan, recipe, alternation, seed, message, reporter) -> dict[str, Any]:
    from supportprune.pipelines.train import train
    from supportprune.store.layout import RunLayout

    name = f"train-{alternation}-seed{seed}"
    layout = RunLayout(plan.run_dir(name))
    resolved = with_overrides(recipe, {"seed": seed, "train.alternation": alternation}, f"experiment run {name}")
    if not reuse_or_set_aside(layout.root, run_key(plan.model, resolved, plan.max_steps), message):
        message(f"experiment: {name}")
        train(plan.model, resolved, layout.root, device=plan.device, reporter=reporter, max_steps_per_epoch=plan.max_steps)
    result = read_result(layout)
    plan.run_seconds[name] = result.get("seconds", 0.0)
    return result


def _compress_run(plan, recipe, name, message, reporter, overrides) -> CompressMetrics:
    resolved = with_overrides(recipe, overrides, f"experiment run {name}")  # the run's recipe, validated once
    metrics = compressed_metrics(plan, resolved, name, plan.run_dir(name), message, reporter)
    return replace(metrics, criterion=resolved.sparse.criterion)  # runs made before result.json recorded it


def compressed_metrics(plan, recipe: Recipe, name: str, root: Path, message, reporter) -> CompressMetrics:
    """The metrics of the compress run ``name`` in ``root`` (without delivery): read back when a finished run of
    the same model, recipe and budget is there, trained otherwise; its seconds go into ``plan.run_seconds``."""
    from supportprune.pipelines.compress import compress
    from supportprune.store.layout import RunLayout

    layout = RunLayout(root)
    if reuse_or_set_aside(layout.root, run_key(plan.model, recipe, plan.max_steps), message):
        metrics = read_compress_metrics(layout)
    else:
        message(f"experiment: {name}")
        metrics = compress(plan.model, recipe, layout.root, device=plan.device, reporter=reporter,
                           max_steps_per_epoch=plan.max_steps, deliver=False).metrics
    plan.run_seconds[name] = metrics.seconds
    return metrics


def run_key(model: str, recipe: Recipe, max_steps: Optional[int]) -> dict[str, Any]:
    """Everything that changes a run's result: the model, the resolved recipe (data source, weights, seed and
    every phase's settings), the step cap, and the content of a weights file (the DSD runs start from the
    plain-SGD run's trained.pt, which changes when that run is made again)."""
    key: dict[str, Any] = {"model": model, "max_steps_per_epoch": max_steps, "recipe": recipe.to_dict()}
    if recipe.weights is not None and Path(recipe.weights).expanduser().is_file():
        key["weights_sha256"] = hashlib.sha256(Path(recipe.weights).expanduser().read_bytes()).hexdigest()
    return json.loads(json.dumps(key))  # as it reads back from the file (tuples become lists)


def same_key(stored: Any, key: Any) -> bool:
    """``stored == key``, except that a setting ``key`` has as None (unset) and ``stored`` lacks is no
    difference: a recipe key added later that is off unless set (``sparse.concat_round_to``) leaves the runs
    made before it valid."""
    if isinstance(stored, dict) and isinstance(key, dict):
        names = set(stored) | set(key)
        return all(name in stored and name in key and same_key(stored[name], key[name])
                   or name not in stored and key.get(name) is None for name in names)
    return stored == key


def reuse_or_set_aside(root: Path, key: dict[str, Any], message: Callable[[str], None]) -> bool:
    """True when the run in ``root`` finished under exactly ``key``: its result is read, not repeated.

    Otherwise the run is to be made (or resumed, when ``root`` holds an unfinished run under the same key). A
    run made under another key (another model, recipe, step cap or starting model) is moved aside whole, to
    ``root.1`` (``root.2``, ...), and the key is written down before the run starts, so an interrupted run
    resumes only into the same settings."""
    from supportprune.store.layout import RunLayout
    from supportprune.store.run_aside import move_aside

    layout = RunLayout(root)
    key_path = root / RUN_KEY_FILE
    stored = json.loads(key_path.read_text()) if key_path.is_file() else None
    if stored is not None and same_key(stored, key):
        return layout.result.exists()
    moved = move_aside(root)
    if moved is not None:
        message(f"experiment: {root} was made with other settings (model, recipe, --max-steps or starting weights); "
                f"moved to {moved}")
    atomic_write_text(key_path, json.dumps(key, indent=1))
    return False


def _matching_sparsity(plan: ExperimentPlan, support: CompressMetrics) -> float:
    """The per-layer magnitude sparsity that removes as many weights as the support's channel pruning
    removed parameters (the comparison at equal parameters; the MACs of an unstructured model do not drop)."""
    from supportprune.method.criteria import sparsity_matching_parameters
    from supportprune.inputs.models import ModelSpec, build_model

    spec = ModelSpec(**support.spec)
    removed = support.baseline_params - support.alternations[-1]["params"]
    model = build_model(spec, None)
    return round(sparsity_matching_parameters(model, removed), 4)


def command_line() -> str:
    return "supportprune " + " ".join(shlex.quote(a) for a in sys.argv[1:])
