"""Train the starting points once: resnet18, vgg11_bn and mobilenet_v2 on the full Fashion-MNIST.

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
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import shlex
import sys
import time
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from supportprune.store.atomic import atomic_write_bytes, atomic_write_text  # noqa: E402
from supportprune.store.checkpoint import read_checkpoint, save_checkpoint  # noqa: E402
from supportprune.inputs.data import load_data, make_loaders, reseed_epoch  # noqa: E402
from supportprune.errors import SupportpruneError  # noqa: E402
from supportprune.inputs.models import ModelSpec, build_model  # noqa: E402
from supportprune.inputs.recipe import load_recipe  # noqa: E402
from supportprune.run.training_loop import evaluate, make_optimizer, make_scheduler, seed_everything, train_epoch  # noqa: E402

# The compute budget on two quiet CPU cores (measured: resnet18 ~57 s an epoch of the 60,000 images,
# mobilenet_v2 ~120 s, vgg11_bn ~1,000 s, its 25088→4096 classifier included). resnet18 and mobilenet_v2
# train 12 and 8 full epochs under a cosine schedule (5 epochs left resnet18 at 89.3% top-1, still
# climbing); vgg11_bn gets 3 epochs of 150 steps each (57,600 images, one epoch's worth, a fresh shuffle
# every epoch), which batch norm makes enough for it to settle.
EPOCHS = {"resnet18": 12, "mobilenet_v2": 8, "vgg11_bn": 3}
STEPS = {"vgg11_bn": 150}  # steps per epoch where not the whole training set
# vgg11_bn diverged at the recipe's lr 0.05 (NaN loss at step 104: its 25088→4096 classifier has no batch norm)
LR = {"vgg11_bn": 0.01}


def state_bytes(state: dict[str, torch.Tensor]) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def train_one(name: str, epochs: int, recipe, out: Path, device: torch.device, max_steps: int | None, log) -> dict:
    """Train ``name`` to ``epochs`` (continuing its checkpoint), write NAME.pt; the manifest entry."""
    config = replace(recipe.train, epochs=epochs, lr=LR.get(name, recipe.train.lr))
    data = load_data(recipe.data.source, input_size=recipe.data.input_size, mean=recipe.data.mean,
                     std=recipe.data.std, augment=recipe.data.augment, channels=recipe.data.channels)
    train_loader, val_loader = make_loaders(data, batch_size=recipe.data.batch_size, workers=recipe.data.workers,
                                            seed=recipe.seed)
    seed_everything(recipe.seed)
    spec = ModelSpec(name, data.num_classes, data.channels, recipe.data.input_size)
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
        progress = train_epoch(model, train_loader, optimizer, scheduler, device, max_steps=max_steps)
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
    return {"file": f"{name}.pt", "sha256": hashlib.sha256(payload).hexdigest(), "top1": round(top1, 2),
            "epochs": epochs, "lr": config.lr, "steps_per_epoch": steps, "train_seconds": round(seconds),
            "spec": {"num_classes": spec.num_classes, "in_channels": spec.in_channels, "input_size": spec.input_size},
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"), "torch": torch.__version__}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default=",".join(EPOCHS), help="comma-separated, trained in this order")
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
        epochs = args.epochs or EPOCHS.get(name, recipe.train.epochs)
        entry = train_one(name, epochs, recipe, out, device, args.max_steps or STEPS.get(name), log)
        entry["command"] = command
        entry["recipe"] = recipe.to_dict()
        manifest["models"][name] = entry
        atomic_write_text(manifest_path, json.dumps(manifest, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except SupportpruneError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
