"""Train the starting points once on the full Fashion-MNIST: the criteria study's bench of seven (issue #20).

    apt-get install dataset-fashion-mnist          # the data, in /usr/share/datasets/fashion-mnist
    nohup nice -n 10 python tools/train_starting_points.py > starting-points/train.log 2>&1 &

Writes ``starting-points/NAME.pt`` (a plain state dict of the model as ``supportprune`` builds it for
this data: 10 classes, 1 input channel; ``torch.load(..., weights_only=True)`` reads it) and
``starting-points/manifest.json`` (SHA-256, top-1 on the 10,000 test images, command, epochs, date).
Then ``supportprune compress resnet18 --weights starting-points/resnet18.pt ...`` starts from it.

Resumable: every epoch ends in a checkpoint (``starting-points/work/NAME/last.pt``); running the same
command again continues the unfinished model and skips the finished ones (``--force`` retrains).
The loop is the package's own (``supportprune.run.training_loop``): plain SGD with ReLU, the recipe's ``train``
section (recipes/starting-points.yaml), no supports (the dense model that DSD starts from).

The bench (``--models`` default, issue #20) differs the way users' models differ, each small enough to train
in a few minutes of two shared cores (the whole bench in about half an hour) and to be pruned many times:
a plain CNN without batch norm and a wide fully-connected layer (``plain_cnn``), VGG-11 without batch norm
and with it at a quarter of its widths (``vgg11_plain``, ``vgg11_bn_narrow``: torchvision's vgg11_bn costs
~1,000 s an epoch for its 25088->4096 classifier), resnet18, mobilenet_v2 at width 0.5, a concatenating
network (a small DenseNet) and the narrow vgg11_bn trained with label smoothing 0.1 (another recipe leaves
other weights behind). The factories are in benchmarks/zoo.py. The budget is what two cores shared with four
other jobs (a third of a core each, measured) gave in about half an hour: two epochs each, the plain CNN's
whole, the others' capped (150 steps of 128 images, a fresh shuffle each, for the narrow networks; 100 for
mobilenet_v2, 75 for resnet18). They are short of converged (their top-1 is in the manifest); the study
compares criteria from the same start, and a user's model is not always converged either. The earlier starting points (resnet18 12 epochs, mobilenet_v2, the full
vgg11_bn) stay in the table under their names.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import shlex
import sys
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from supportprune.store.atomic import atomic_write_bytes, atomic_write_text  # noqa: E402
from supportprune.store.checkpoint import read_checkpoint, save_checkpoint  # noqa: E402
from supportprune.inputs.data import load_data, make_loaders, reseed_epoch  # noqa: E402
from supportprune.errors import SupportpruneError  # noqa: E402
from supportprune.inputs.models import ModelSpec, build_model  # noqa: E402
from supportprune.inputs.recipe import load_recipe  # noqa: E402
from supportprune.run.training_loop import cross_entropy_loss, evaluate, make_optimizer, make_scheduler, seed_everything, train_epoch  # noqa: E402



@dataclass(frozen=True)
class StartingPoint:
    model: str  # torchvision name or package.module:factory
    epochs: int
    steps: int | None = None  # steps per epoch where not the whole training set
    lr: float | None = None  # the recipe's where None
    model_args: dict = field(default_factory=dict)
    label_smoothing: float = 0.0


# The compute budget on two quiet CPU cores (measured: resnet18 ~57 s an epoch of the 60,000 images,
# mobilenet_v2 ~120 s, vgg11_bn ~1,000 s, its 25088→4096 classifier included). resnet18 and mobilenet_v2
# train 12 and 8 full epochs under a cosine schedule (5 epochs left resnet18 at 89.3% top-1, still
# climbing); vgg11_bn gets 3 epochs of 150 steps each (57,600 images, one epoch's worth, a fresh shuffle
# every epoch), which batch norm makes enough for it to settle; it diverged at the recipe's lr 0.05 (NaN
# loss at step 104: its 25088→4096 classifier has no batch norm), hence 0.01. The networks without batch
# norm of the bench get lr 0.02 for the same reason.
ZOO = "benchmarks.zoo"
POINTS = {
    "resnet18": StartingPoint("resnet18", 12),
    "mobilenet_v2": StartingPoint("mobilenet_v2", 8),
    "vgg11_bn": StartingPoint("vgg11_bn", 3, steps=150, lr=0.01),
    # the bench of issue #20
    "plain_cnn": StartingPoint(f"{ZOO}:plain_cnn", 2, lr=0.02),
    "vgg11_plain": StartingPoint(f"{ZOO}:vgg11_plain", 2, steps=150, lr=0.02),
    "densenet_small": StartingPoint(f"{ZOO}:densenet_small", 2, steps=150),
    "vgg11_bn_narrow": StartingPoint(f"{ZOO}:vgg11_bn_narrow", 2, steps=150),
    "vgg11_bn_narrow_ls": StartingPoint(f"{ZOO}:vgg11_bn_narrow", 2, steps=150, label_smoothing=0.1),
    "mobilenet_v2_half": StartingPoint("mobilenet_v2", 2, steps=100, model_args={"width_mult": 0.5}),
    "resnet18_short": StartingPoint("resnet18", 2, steps=75),
}
BENCH = ["plain_cnn", "vgg11_plain", "densenet_small", "vgg11_bn_narrow", "vgg11_bn_narrow_ls",
         "mobilenet_v2_half", "resnet18_short"]


def smoothed_loss(smoothing: float):
    if not smoothing:
        return cross_entropy_loss
    return lambda logits, labels, images: F.cross_entropy(logits, labels, label_smoothing=smoothing)


def state_bytes(state: dict[str, torch.Tensor]) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def train_one(name: str, point: StartingPoint, epochs: int, recipe, out: Path, device: torch.device,
              max_steps: int | None, log) -> dict:
    """Train ``name`` to ``epochs`` (continuing its checkpoint), write NAME.pt; the manifest entry."""
    config = replace(recipe.train, epochs=epochs, lr=point.lr or recipe.train.lr)
    data = load_data(recipe.data.source, input_size=recipe.data.input_size, mean=recipe.data.mean,
                     std=recipe.data.std, augment=recipe.data.augment, channels=recipe.data.channels)
    train_loader, val_loader = make_loaders(data, batch_size=recipe.data.batch_size, workers=recipe.data.workers,
                                            seed=recipe.seed)
    seed_everything(recipe.seed)
    spec = ModelSpec(point.model, data.num_classes, data.channels, recipe.data.input_size, dict(point.model_args))
    model = build_model(spec, None).to(device)
    optimizer = make_optimizer(model, config)
    steps = len(train_loader) if max_steps is None else min(len(train_loader), max_steps)
    scheduler = make_scheduler(optimizer, config, steps)
    checkpoint = out / "work" / name / "last.pt"
    done, seconds = 0, 0.0
    if checkpoint.exists():
        saved = read_checkpoint(checkpoint)
        if saved["epochs"] != epochs:
            raise SupportpruneError(f"{checkpoint} trains {name} for {saved['epochs']} epochs, not {epochs}; "
                                    "delete it (or pass --force) to start over")
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        done, seconds = saved["epoch"], saved["seconds"]
        log(f"{name}: resuming after epoch {done}/{epochs}")
    while done < epochs:
        started = time.perf_counter()
        reseed_epoch(train_loader, recipe.seed, done)
        progress = train_epoch(model, train_loader, optimizer, scheduler, device, max_steps=max_steps,
                               loss_fn=smoothed_loss(point.label_smoothing))
        done += 1
        seconds += time.perf_counter() - started
        save_checkpoint(checkpoint, {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                     "scheduler": scheduler.state_dict(), "epoch": done, "epochs": epochs,
                                     "seconds": seconds})
        log(f"{name}: epoch {done}/{epochs}, loss {progress.loss:.4f}, train top-1 {progress.top1:.2f}%, "
            f"{time.perf_counter() - started:.0f} s")
    _, top1 = evaluate(model, val_loader, device)
    payload = state_bytes({k: v.cpu() for k, v in model.state_dict().items()})
    atomic_write_bytes(out / f"{name}.pt", payload)
    log(f"{name}: test top-1 {top1:.2f}% -> {out / f'{name}.pt'}")
    return {"file": f"{name}.pt", "model": point.model, "model_args": dict(point.model_args),
            "label_smoothing": point.label_smoothing, "sha256": hashlib.sha256(payload).hexdigest(), "top1": round(top1, 2),
            "epochs": epochs, "lr": config.lr, "steps_per_epoch": steps, "train_seconds": round(seconds),
            "spec": {"num_classes": spec.num_classes, "in_channels": spec.in_channels, "input_size": spec.input_size},
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"), "torch": torch.__version__}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default=",".join(BENCH), help="comma-separated, trained in this order "
                        f"(known: {', '.join(POINTS)})")
    parser.add_argument("--recipe", default=str(ROOT / "recipes" / "starting-points.yaml"))
    parser.add_argument("--out", default="starting-points", help="where NAME.pt and manifest.json go")
    parser.add_argument("--epochs", type=int, help="the same epochs for every model (default: the budget table)")
    parser.add_argument("--max-steps", type=int, help="cap steps per epoch (a timing run; not a starting point)")
    parser.add_argument("--force", action="store_true", help="retrain models the manifest already lists")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    manifest_path = out / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {"models": {}}
    recipe = load_recipe(args.recipe)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    command = "python " + shlex.join([str(Path(sys.argv[0])), *(argv if argv is not None else sys.argv[1:])])

    def log(text: str) -> None:
        print(f"{datetime.now().strftime('%H:%M:%S')} {text}", flush=True)

    for name in args.models.split(","):
        entry = manifest["models"].get(name)
        if entry and not args.force and (out / entry["file"]).exists():
            log(f"{name}: finished earlier (top-1 {entry['top1']}%), skipped")
            continue
        if args.force:
            (out / "work" / name / "last.pt").unlink(missing_ok=True)
        if name not in POINTS:
            raise SupportpruneError(f"unknown starting point {name!r}; --models takes names of {', '.join(POINTS)}")
        point = POINTS[name]
        epochs = args.epochs or point.epochs
        entry = train_one(name, point, epochs, recipe, out, device, args.max_steps or point.steps, log)
        entry["command"] = command
        entry["recipe"] = recipe.to_dict()
        # read again just before writing: another process may have added its model meanwhile
        manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {"models": {}}
        manifest["models"][name] = entry
        atomic_write_text(manifest_path, json.dumps(manifest, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except SupportpruneError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
