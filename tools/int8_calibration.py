"""INT8 calibration choices compared on a finished run's fp32 models: for each option, the share of validation
images on which the int8 model picks the fp32 model's class (both run by ONNX Runtime on the CPU), the int8 top-1,
and the int8 throughput at batch 64 relative to the default option's, timed side by side.

    python tools/int8_calibration.py runs/resnet18 --out benchmarks/results/DATE-int8-calibration.md
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from supportprune.deploy.benchmark import benchmark_side_by_side, environment  # noqa: E402
from supportprune.deploy.quantize import Int8Options, calibration_batches, quantize_int8  # noqa: E402
from supportprune.inputs.data import load_data, make_loaders  # noqa: E402
from supportprune.inputs.recipe import recipe_from_dict  # noqa: E402

OPTIONS = {
    "minmax": Int8Options(),
    "minmax, ends fp32": Int8Options(fp32_layers=("first", "last")),
    "minmax, first fp32": Int8Options(fp32_layers=("first",)),
    "minmax, last fp32": Int8Options(fp32_layers=("last",)),
    "percentile 99.999": Int8Options(method="percentile", percentile=99.999),
    "percentile 99.99": Int8Options(method="percentile", percentile=99.99),
    "entropy": Int8Options(method="entropy"),
    "percentile 99.999, ends fp32": Int8Options(method="percentile", percentile=99.999, fp32_layers=("first", "last")),
}


def predictions(path: Path, images: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: images[i:i + 100]})[0].argmax(1) for i in range(0, len(images), 100)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path)
    parser.add_argument("--kinds", default="baseline,sparse,dense")
    parser.add_argument("--options", default=";".join(OPTIONS), help="names of OPTIONS, separated by ;")
    parser.add_argument("--calibration-images", default="256")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    recipe = recipe_from_dict(yaml.safe_load((args.run / "recipe.yaml").read_text()), str(args.run / "recipe.yaml"))
    data = load_data(recipe.data.source, input_size=recipe.data.input_size, mean=recipe.data.mean, std=recipe.data.std,
                     channels=recipe.data.channels, resize_to=recipe.data.resize_to)
    train, val = make_loaders(data, batch_size=recipe.data.batch_size, workers=0, seed=recipe.seed)
    images = np.concatenate([x.numpy() for x, _ in val])[: recipe.export.agreement_images].astype(np.float32)
    labels = np.concatenate([y.numpy() for _, y in val])[: len(images)]
    rows, timed = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for images_count in map(int, args.calibration_images.split(",")):
            batches = calibration_batches(train, images_count)
            for kind in args.kinds.split(","):
                fp32 = args.run / f"{kind}.onnx"
                reference = predictions(fp32, images)
                for label in args.options.split(";"):
                    path = Path(tmp) / f"{kind}-{label.replace(' ', '_').replace(',', '')}-{images_count}.int8.onnx"
                    quantize_int8(fp32, path, batches, OPTIONS[label])
                    got = predictions(path, images)
                    rows.append((kind, label, images_count, float((got == reference).mean()), 100 * float((got == labels).mean()),
                                 100 * float((reference == labels).mean())))
                    print(rows[-1], flush=True)
                    if images_count == int(args.calibration_images.split(",")[0]):
                        timed.append((f"{kind}|{label}", path))
        results = benchmark_side_by_side(timed, batch_sizes=(64,), runs=args.runs, warmup=3, device="cpu")
    speed = {r.model: r.throughput for r in results}
    lines = [f"# INT8 calibration options ({datetime.now(timezone.utc):%Y-%m-%d})", "",
             f"`python tools/int8_calibration.py {args.run} --calibration-images {args.calibration_images} --runs {args.runs}`"
             f" on {environment()['host']}", "",
             "| model | option | calibration images | agreement with fp32 | int8 top-1 | fp32 top-1 | images/s, batch 64 |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for kind, label, count, agreement, top1, ref in rows:
        rate = speed.get(f"{kind}|{label}") if count == int(args.calibration_images.split(",")[0]) else None
        lines.append(f"| {kind} | {label} | {count} | {100 * agreement:.1f}% | {top1:.2f} | {ref:.2f} | "
                     f"{'' if rate is None else f'{rate:,.0f}'} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
