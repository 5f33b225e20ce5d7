"""The `supportprune` command line: parse, load the recipe, call one package function, report errors on one line."""

from __future__ import annotations

import functools
import os
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Callable, List, Optional

import click
import typer
from typer.core import TyperGroup, TyperOption

from supportprune.errors import StopRequested, SupportpruneError, UserCodeError, describe_unexpected, write_traceback

def _type_unless_flag(option: TyperOption, ctx: click.Context) -> Optional[str]:
    """Typer's help shows every option's type, ``<bool>`` for a flag (``--restart``, ``--int8/--no-int8``), which
    takes no value: flags show none."""
    return None if option.is_flag else _typer_display_type(option, ctx)


_typer_display_type = TyperOption.display_type_rich
TyperOption.display_type_rich = _type_unless_flag


class _DebugAnywhere(TyperGroup):
    """``--debug`` is accepted after the subcommand too (``supportprune compress resnet18 --debug``)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if "--debug" in args:
            args = ["--debug", *(arg for arg in args if arg != "--debug")]
        return super().parse_args(ctx, args)


app = typer.Typer(
    cls=_DebugAnywhere,
    help="Compress pretrained CNNs with learned supports (Huang, Kong, Lucey 2017): Dense–Sparse–Dense with B-alternation.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
recipes_app = typer.Typer(help="List the shipped recipes, or show one.", invoke_without_command=True)
app.add_typer(recipes_app, name="recipes")


def _err(text: str) -> None:
    # Under torchrun every process reports its own failure: the line says whose it is.
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        text = f"rank {os.environ.get('RANK', '?')}: {text}"
    typer.echo(f"error: {text}", err=True)


class _ErrorLog:
    """Where a failed command's full traceback goes: the run directory's log once a command knows its run
    directory, else a file in the temporary directory. ``--debug`` also prints it."""

    debug = False
    path: Path = Path(tempfile.gettempdir()) / "supportprune-error.log"

    @classmethod
    def use_run_dir(cls, run_dir: Path) -> None:
        cls.path = Path(run_dir) / "supportprune.log"

    @classmethod
    def record(cls, error: BaseException) -> Optional[Path]:
        if cls.debug:
            traceback.print_exception(type(error), error, error.__traceback__, file=sys.stderr)
        return write_traceback(error, cls.path)


@app.callback()
def _options(debug: bool = typer.Option(False, "--debug", help="show the full traceback of a failure (it is always written to a log)")) -> None:
    _ErrorLog.debug = debug


def friendly_errors(command: Callable) -> Callable:
    """Every failure becomes one line on stderr and a non-zero exit; no traceback. Known problems say what
    is wrong and how to fix it; an exception from the user's code or an unexpected one names its origin, and
    its traceback goes to the log (``--debug`` shows it)."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException, SystemExit):
            raise
        except UserCodeError as error:
            log = _ErrorLog.record(error.__cause__ or error)
            _err(f"{error}".replace("\n", " ") + (f" (full traceback in {log})" if log else ""))
            raise typer.Exit(1)
        except SupportpruneError as error:
            if _ErrorLog.debug:
                _ErrorLog.record(error)
            _err(str(error).replace("\n", " "))
            raise typer.Exit(getattr(error, "exit_code", 1))
        except StopRequested as stop:
            _err(str(stop))
            raise typer.Exit(stop.exit_code)
        except KeyboardInterrupt:
            _err("interrupted; run the same command again to resume from the last checkpoint")
            raise typer.Exit(130)
        except Exception as error:  # noqa: BLE001 - the last line of defence: no traceback reaches the user
            log = _ErrorLog.record(error)
            _err(describe_unexpected(error, log).replace("\n", " "))
            raise typer.Exit(1)

    return wrapper


class RichReporter:
    """Progress bars and messages on the terminal (plain lines where stdout is not a terminal)."""

    def __init__(self) -> None:
        from rich.console import Console

        self.console = Console(highlight=False, soft_wrap=True)
        self._progress = None
        self._task = None

    def message(self, text: str) -> None:
        self.console.print(text, markup=False)

    def start(self, description: str, total: int) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self._progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[metrics]}"),
            TimeElapsedColumn(), TimeRemainingColumn(), console=self.console, transient=True, disable=not self.console.is_terminal,
        )
        self._progress.start()
        self._task = self._progress.add_task(description, total=total, metrics="")

    def advance(self, completed: int, **fields: float) -> None:
        """``fields`` (loss, top1) are shown after the bar when a step reports them; NaN ones are left out."""
        if self._progress is not None:
            shown = {name: value for name, value in fields.items() if value == value}
            metrics = "  ".join(f"loss {v:.4f}" if k == "loss" else f"top-1 {v:.1f}%" if k == "top1" else f"{k} {v:g}"
                                for k, v in shown.items())
            self._progress.update(self._task, completed=completed, metrics=metrics)

    def stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


def _floats(text: Optional[str], option: str) -> Optional[list[float]]:
    if text is None:
        return None
    try:
        return [float(part) for part in text.split(",")]
    except ValueError:
        raise SupportpruneError(f"{option} {text!r}: expected comma-separated numbers like 0.485,0.456,0.406") from None


# The recipe key each command-line option sets, by the option's parameter name, for every command; ``{phase}``
# is the section the command trains (compress: sparse, train and experiment: train). Options left at None set nothing.
OPTION_KEYS = {
    "data": "data.source", "weights": "weights", "seed": "seed", "input_size": "data.input_size",
    "channels": "data.channels", "mean": "data.mean", "std": "data.std", "batch_size": "data.batch_size",
    "epochs": "{phase}.epochs", "granularity": "{phase}.granularity", "relative_threshold": "{phase}.relative_threshold",
    "target_macs": "sparse.target_macs", "round_to": "sparse.round_to", "concat_round_to": "sparse.concat_round_to",
    "criterion": "sparse.criterion", "sparse_alternation": "sparse.alternation", "allocation": "sparse.allocation",
    "target_latency": "sparse.target_latency", "latency_table": "sparse.latency_table", "int8": "export.int8",
    "alternation": "train.alternation", "warmup_epochs": "train.warmup_epochs", "gap_epochs": "train.gap_epochs",
    "mask_storage": "train.mask_storage", "mask_memory_mb": "train.mask_memory_mb",
}


def _recipe_overrides(options: dict, phase: str) -> dict:
    """The recipe keys a command's options set (``options``: its parameters, as ``locals()`` holds them)."""
    return {OPTION_KEYS[name].format(phase=phase): value for name, value in options.items() if name in OPTION_KEYS}


def _recipe_with_options(recipe: Optional[str], model: str, data: Optional[str], overrides: dict,
                         model_args: Optional[List[str]] = None, trained: bool = False):
    """(the recipe file ``resolve_recipe`` picks, that recipe with the command line's options on top);
    options left at None are not given; ``--model-arg`` values are added to the recipe's ``model_args``.
    Errors name the file and the option."""
    from supportprune.inputs.shipped import resolve_recipe
    from supportprune.inputs.recipe import load_recipe, with_overrides

    recipe_path = resolve_recipe(recipe, model, data, trained=trained)
    loaded = load_recipe(recipe_path)
    if model_args:
        overrides = {**overrides, "model_args": {**loaded.model_args, **_model_args(model_args)}}
    return recipe_path, with_overrides(loaded, overrides, f"{recipe_path} with command-line options")


def _model_args(pairs: List[str]) -> dict:
    """``--model-arg KEY=VALUE`` options as keyword arguments; values are YAML scalars (28, 0.5, true, null, text)."""
    import yaml

    parsed = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise SupportpruneError(f"--model-arg {pair!r}: expected NAME=VALUE, e.g. --model-arg input_size=28")
        try:
            parsed[key] = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError:
            raise SupportpruneError(f"--model-arg {pair!r}: the value is not a YAML scalar; quote it") from None
    return parsed


# The input options of every command that builds a model from data, and the recipe keys they set: one map for all.
INPUT_SIZE = typer.Option(None, "--input-size", help="image side in pixels")
CHANNELS = typer.Option(None, "--channels", help="input channels the model reads (default: the data's)")
MEAN = typer.Option(None, "--mean", help="normalisation mean, comma-separated")
STD = typer.Option(None, "--std", help="normalisation std, comma-separated")
MAX_STEPS = typer.Option(None, "--max-steps", help="cap training steps per epoch (a smaller budget; smoke tests)")



MODEL_ARG_HELP = "keyword argument of the model factory (or torchvision builder), NAME=VALUE, value parsed as YAML; repeatable"


def _run_name(model: str) -> str:
    """A model name (or package.module:factory) as a directory name."""
    return model.replace(":", "_").replace("/", "_")


def _ints(text: Optional[str], option: str) -> Optional[list[int]]:
    if text is None:
        return None
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise SupportpruneError(f"{option} {text!r}: expected comma-separated integers like 1,64,256") from None


@app.command()
@friendly_errors
def compress(
    model: str = typer.Argument(..., help="torchvision model name (resnet18, vgg16, googlenet, ...) or package.module:factory"),
    recipe: Optional[str] = typer.Option(None, "--recipe", "-r", help="recipe file or shipped recipe name (default: recipes/MODEL.yaml for data other than the embedded, else 'pretrained' with --weights, else 'embedded')"),
    data: Optional[str] = typer.Option(None, "--data", help="embedded | fashion-mnist:DIR | cifar10:DIR | imagenet:DIR | folder:DIR"),
    weights: Optional[str] = typer.Option(None, "--weights", help="torchvision weights name (IMAGENET1K_V1, DEFAULT) or a file (state dict or supportprune checkpoint): the trained model to compress"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="run directory (default runs/MODEL)"),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N"),
    seed: Optional[int] = typer.Option(None, "--seed", help="random seed (overrides the recipe)"),
    input_size: Optional[int] = INPUT_SIZE,
    channels: Optional[int] = CHANNELS,
    mean: Optional[str] = MEAN,
    std: Optional[str] = STD,
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="mini-batch size (the B-alternation mask is shared by a batch)"),
    granularity: Optional[str] = typer.Option(None, "--granularity", help="support unit: element or channel"),
    relative_threshold: Optional[float] = typer.Option(None, "--relative-threshold", help="Eq. 41's β as a multiple of each site's mean unit energy"),
    target_macs: Optional[float] = typer.Option(None, "--target-macs", help="fraction of baseline MACs to keep; the threshold is searched to meet it"),
    round_to: Optional[int] = typer.Option(None, "--round-to", help="keep channel counts multiples of this"),
    concat_round_to: Optional[int] = typer.Option(None, "--concat-round-to", help="...and channels that reach a concatenation multiples of this too (16 in the shipped recipes: ONNX Runtime's CPU layout)"),
    criterion: Optional[str] = typer.Option(None, "--criterion", help="what prunes in the Sparse step: support (the paper), or a baseline: magnitude (DSD, weights), or channels at --target-macs by a torch-pruning importance: l1, l2, fpgm, lamp, bn_scale, taylor, hessian (gradients of sparse.observe_batches batches), random"),
    sparse_alternation: Optional[str] = typer.Option(None, "--sparse-alternation", help="support criterion: batch (B-alternation) or instance (I-alternation)"),
    allocation: Optional[str] = typer.Option(None, "--allocation", help="how the cut is spread: global (one support threshold to --target-macs), latency (by layer latencies measured on the benchmark device, to --target-latency) or measured (by whole pruned models timed on the benchmark device, to --target-latency)"),
    target_latency: Optional[float] = typer.Option(None, "--target-latency", help="allocation latency / measured: fraction of the dense model's predicted / measured time to keep (default: --target-macs)"),
    latency_table: Optional[str] = typer.Option(None, "--latency-table", help="allocation latency: a latency-table.json (of an earlier run, or timed on the deployment machine) instead of timing here"),
    model_arg: Optional[List[str]] = typer.Option(None, "--model-arg", help=MODEL_ARG_HELP),
    int8: Optional[bool] = typer.Option(None, "--int8/--no-int8", help="also export static-quantized int8 ONNX models, checked against fp32 and benchmarked (default: the recipe's export.int8)"),
    restart: bool = typer.Option(False, "--restart", help="start afresh: an earlier run in --out is moved aside to OUT.1 (OUT.2, ...), not resumed"),
    max_steps: Optional[int] = MAX_STEPS,
) -> None:
    """Dense → Sparse (B-alternation; channels with zero support pruned) → re-Dense; export and benchmark baseline, sparse and dense ONNX models."""
    from supportprune.pipelines.compress import compress as run_compress

    mean, std = _floats(mean, "--mean"), _floats(std, "--std")
    overrides = _recipe_overrides(locals(), phase="sparse")
    recipe_path, resolved = _recipe_with_options(recipe, model, data, overrides, model_arg, trained=weights is not None)
    out_dir = out or Path("runs") / _run_name(model)
    _ErrorLog.use_run_dir(out_dir)
    reporter = RichReporter()
    reporter.message(f"supportprune compress {model}: recipe {recipe_path}, output {out_dir}")
    result = run_compress(model, resolved, out_dir, device=device, restart=restart, reporter=reporter, max_steps_per_epoch=max_steps,
                          criterion_given=criterion is not None)
    reporter.message(f"done in {result.seconds:.0f} s: {result.out_dir}/report.md")


@app.command("train")
@friendly_errors
def train_command(
    model: str = typer.Argument(..., help="torchvision model name or package.module:factory"),
    alternation: Optional[str] = typer.Option(None, "--alternation", "-a", help="none (SGD, ReLU), instance (I-alternation, Eq. 36–38) or batch (B-alternation, Eq. 39–41); default: the recipe's"),
    recipe: Optional[str] = typer.Option(None, "--recipe", "-r", help="recipe file or shipped recipe name (its train section)"),
    data: Optional[str] = typer.Option(None, "--data", help="embedded | fashion-mnist:DIR | cifar10:DIR | imagenet:DIR | folder:DIR"),
    weights: Optional[str] = typer.Option(None, "--weights", help="start from these weights (torchvision name or file)"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="run directory (default runs/train-MODEL-ALTERNATION)"),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N"),
    seed: Optional[int] = typer.Option(None, "--seed", help="random seed (overrides the recipe)"),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="training epochs"),
    warmup_epochs: Optional[int] = typer.Option(None, "--warmup-epochs", help="plain SGD epochs before alternating"),
    gap_epochs: Optional[int] = typer.Option(None, "--gap-epochs", help="instance: epochs between support estimations"),
    granularity: Optional[str] = typer.Option(None, "--granularity", help="support unit: element or channel"),
    relative_threshold: Optional[float] = typer.Option(None, "--relative-threshold", help="β of Eq. 38/41 as a multiple of the mean unit energy"),
    mask_storage: Optional[str] = typer.Option(None, "--mask-storage", help="instance supports: auto, memory or disk"),
    mask_memory_mb: Optional[int] = typer.Option(None, "--mask-memory-mb", help="memory budget for the instance supports"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="mini-batch size"),
    model_arg: Optional[List[str]] = typer.Option(None, "--model-arg", help=MODEL_ARG_HELP),
    restart: bool = typer.Option(False, "--restart", help="start afresh: an earlier run in --out is moved aside to OUT.1 (OUT.2, ...), not resumed"),
    input_size: Optional[int] = INPUT_SIZE,
    channels: Optional[int] = CHANNELS,
    mean: Optional[str] = MEAN,
    std: Optional[str] = STD,
    max_steps: Optional[int] = MAX_STEPS,
) -> None:
    """Train a model by alternating weights and supports (paper section 4.1), or with plain SGD: the same loop, seed and data order for all three."""
    from supportprune.pipelines.train import train

    mean, std = _floats(mean, "--mean"), _floats(std, "--std")
    overrides = _recipe_overrides(locals(), phase="train")
    recipe_path, resolved = _recipe_with_options(recipe, model, data, overrides, model_arg)
    out_dir = out or Path("runs") / f"train-{_run_name(model)}-{resolved.train.alternation}"
    _ErrorLog.use_run_dir(out_dir)
    reporter = RichReporter()
    reporter.message(f"supportprune train {model} --alternation {resolved.train.alternation}: recipe {recipe_path}, output {out_dir}")
    train(model, resolved, out_dir, device=device, restart=restart, reporter=reporter, max_steps_per_epoch=max_steps)


@app.command()
@friendly_errors
def experiment(
    model: str = typer.Argument("resnet18", help="torchvision model name or package.module:factory"),
    recipe: Optional[str] = typer.Option(None, "--recipe", "-r", help="base recipe (default: pretrained with --weights, else embedded); its train, sparse and redense sections set every run"),
    data: Optional[str] = typer.Option(None, "--data", help="embedded | fashion-mnist:DIR | cifar10:DIR | imagenet:DIR | folder:DIR"),
    seeds: str = typer.Option("0,1,2", "--seeds", help="comma-separated seeds; tables give mean ± std over them"),
    targets: Optional[str] = typer.Option(None, "--targets", help="MACs fractions for accuracy against MACs (default 0.7,0.5,0.3; with --weights 0.5,0.3)"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="directory for report.md, results.json and plots (default results/experiment-MODEL-DATA, e.g. results/experiment-resnet18-embedded)"),
    runs_dir: Optional[Path] = typer.Option(None, "--runs-dir", help="where the individual runs (with their checkpoints) go; default runs/NAME-OF-OUT"),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N"),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="training epochs of the train runs (the Dense step)"),
    model_arg: Optional[List[str]] = typer.Option(None, "--model-arg", help=MODEL_ARG_HELP),
    weights: Optional[str] = typer.Option(None, "--weights", "-w", help="a trained model (.pt state dict): compare pruning criteria from it instead of measuring the paper's claims"),
    criteria: Optional[str] = typer.Option(None, "--criteria", help="with --weights: comma-separated criteria (default support and every torch-pruning importance)"),
    variant: Optional[List[str]] = typer.Option(None, "--variant", help="with --weights: the support with recipe keys changed, 'NAME: key=value key=value' (repeatable)"),
    allocations: str = typer.Option("global", "--allocations", help="with --weights: global (matched on MACs), latency (matched on predicted time), or both"),
    input_size: Optional[int] = INPUT_SIZE,
    channels: Optional[int] = CHANNELS,
    mean: Optional[str] = MEAN,
    std: Optional[str] = STD,
    max_steps: Optional[int] = MAX_STEPS,
) -> None:
    """Measure the paper's claims with several seeds: Figure 3 and Table 7 (SGD vs I- vs B-alternation), Table 8 (DSD criteria), accuracy against MACs (support vs L1/L2/random); writes report.md with tables and plots. With --weights: every pruning criterion (support, its --variant ablations, the torch-pruning importances) from that trained model with the same budget, matched on MACs or predicted time, sparse models timed with ONNX Runtime. Resumes where it stopped."""
    from supportprune.pipelines.experiment import ExperimentPlan, command_line, run_experiment

    mean, std = _floats(mean, "--mean"), _floats(std, "--std")
    _, resolved = _recipe_with_options(recipe or ("pretrained" if weights else "embedded"), model, data,
                                       _recipe_overrides(locals(), phase="train"), model_arg)
    kind = "criteria" if weights else "experiment"
    out = out or Path("results") / f"{kind}-{_run_name(model)}-{resolved.data.source.split(':')[0]}"
    reporter = RichReporter()
    if weights:
        from supportprune.pipelines.criteria import DEFAULT_CRITERIA, ComparisonPlan, parse_variant, run_comparison

        plan = ComparisonPlan(
            model, resolved, out, tuple(criteria.split(",")) if criteria else DEFAULT_CRITERIA,
            tuple(parse_variant(v) for v in variant or ()), tuple(_ints(seeds, "--seeds")),
            tuple(_floats(targets, "--targets") or (0.5, 0.3)), tuple(allocations.split(",")),
            tuple(resolved.bench.batch_sizes), resolved.bench.runs, device=device, max_steps=max_steps,
            runs_dir=runs_dir or Path("runs") / out.name, command=command_line())
        report = run_comparison(plan, message=reporter.message, reporter=reporter)
    else:
        if criteria or variant or allocations != "global":
            raise SupportpruneError("--criteria, --variant and --allocations compare criteria from a trained model: add --weights FILE")
        plan = ExperimentPlan(model, resolved, out, tuple(_ints(seeds, "--seeds")),
                              tuple(_floats(targets, "--targets") or (0.7, 0.5, 0.3)), device=device,
                              max_steps=max_steps, runs_dir=runs_dir or Path("runs") / out.name, command=command_line())
        report = run_experiment(plan, message=reporter.message, reporter=reporter)
    reporter.message(f"done: {report}")


@recipes_app.callback()
@friendly_errors
def recipes(ctx: typer.Context) -> None:
    """List the shipped recipes."""
    if ctx.invoked_subcommand is not None:
        return
    from supportprune.inputs.shipped import shipped_recipes
    from supportprune.inputs.recipe import load_recipe

    for name, path in shipped_recipes().items():
        typer.echo(f"{name:12s} {load_recipe(path).description}")


@recipes_app.command("show")
@friendly_errors
def recipes_show(name: str = typer.Argument(..., help="shipped recipe name or file")) -> None:
    """Print a recipe, validated and with every default filled in."""
    from supportprune.inputs.shipped import shipped_recipes
    from supportprune.inputs.recipe import load_recipe

    path = shipped_recipes().get(name, Path(name))
    typer.echo(load_recipe(path).to_yaml(), nl=False)


@app.command("export")
@friendly_errors
def export_run(
    run_dir: Path = typer.Argument(..., help="a compress run directory"),
    device: str = typer.Option("auto", "--device", help="device for the accuracy check"),
) -> None:
    """Re-export a finished run's baseline, sparse and dense models to ONNX (checked against PyTorch)."""
    from supportprune.pipelines.export import export_run as export_finished_run

    _ErrorLog.use_run_dir(run_dir)
    export_finished_run(run_dir, device=device, reporter=RichReporter())


@app.command()
@friendly_errors
def bench(
    models: List[Path] = typer.Argument(..., help="ONNX files"),
    batch_sizes: str = typer.Option("1,64", "--batch-sizes", help="comma-separated batch sizes"),
    runs: int = typer.Option(50, "--runs", help="timed runs per batch size"),
    warmup: int = typer.Option(10, "--warmup", help="untimed runs first"),
    device: str = typer.Option("auto", "--device", help="auto (CUDA when a GPU is present), cuda or cpu"),
    baseline: Optional[str] = typer.Option(None, "--baseline", help="model (file stem) to compare with: speed-up, MACs reduction, realised share"),
    cuda_defaults: bool = typer.Option(False, "--cuda-defaults", help="ONNX Runtime's default CUDA options instead of the tuned ones (exhaustive cuDNN search, NHWC)"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="write benchmark.json and benchmark.md into this directory"),
) -> None:
    """Benchmark ONNX models with ONNX Runtime: median and p90 latency, throughput, and speed against MACs.

    fp16 models (exported with export.fp16) are fed fp16 inputs. On a GPU the input is bound on the device."""
    from supportprune.deploy.benchmark import benchmark_side_by_side, realised_markdown, realised_speedups, results_markdown, write_benchmark
    from supportprune.run.signals import StopRequests, stage

    sizes = _ints(batch_sizes, "--batch-sizes")
    if len({path.stem for path in models}) < len(models):
        raise SupportpruneError("two models share a file name; rename one so the results can tell them apart")
    if baseline is not None and baseline not in {path.stem for path in models}:  # before minutes of timing
        raise SupportpruneError(f"--baseline {baseline!r} is none of the benchmarked models ({', '.join(p.stem for p in models)})")
    # Side by side: the timed runs of all models are interleaved, so their ratios do not depend on drift.
    with StopRequests(), stage("benchmarking"):
        results = benchmark_side_by_side([(path.stem, path) for path in models], batch_sizes=sizes, runs=runs,
                                         warmup=warmup, device=device, cuda_options={} if cuda_defaults else None)
    realised = realised_speedups(results, baseline) if baseline else []
    if results:
        typer.echo(f"ONNX Runtime provider: {results[0].provider}")
    typer.echo(results_markdown(results))
    if realised:
        typer.echo(realised_markdown(realised, baseline))
    if out is not None:
        write_benchmark(results, out / "benchmark.json", out / "benchmark.md", realised=realised)


@app.command()
@friendly_errors
def theory(
    quick: bool = typer.Option(False, "--quick", help="small sweeps (seconds), for smoke tests"),
    out: Path = typer.Option(Path("results/theory"), "--out", "-o", help="directory for report.md and the plots"),
    seed: int = typer.Option(0, "--seed", help="random seed of every experiment"),
) -> None:
    """Check the paper's title claim on small networks: fixed-support linearity (Eq. 14–19), Theorem 1's RIP condition and global optimum vs gradient descent, and Tian's population gradient."""
    from supportprune.theory.report import run_theory

    if out.exists() and not out.is_dir():
        raise SupportpruneError(f"--out {out} exists and is not a directory")
    reporter = RichReporter()
    report = run_theory(out, quick=quick, seed=seed, message=reporter.message)
    reporter.message(f"done: {report}")


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
