"""Does a cut's calibrated accuracy predict its accuracy after fine-tuning? (EagleEye, Li et al. 2020)

For each starting point, target and criterion: cut the trained model (no training first), re-estimate
the batch-norm statistics on training batches, and score top-1 on validation images. Compare the ranking
with the criteria screens' sparse top-1 (runs/criteria-*), where each cut was fine-tuned for 2 epochs.
"""
import itertools, json, sys, time
import torch
from supportprune.inputs.data import load_data, make_loaders
from supportprune.inputs.models import ModelSpec, build_model
from supportprune.method import dsd
from supportprune.method.convert import convert_relus
from supportprune.method.pruning import count_macs_params
from supportprune.inputs.recipe import SparseConfig
from supportprune.method.support import set_site_mode, reset_support_stats

torch.manual_seed(0)
models = sys.argv[1].split(",")
targets = [float(t) for t in sys.argv[2].split(",")]
criteria = sys.argv[3].split(",")
data = load_data("fashion-mnist:/usr/share/datasets/fashion-mnist", input_size=32, mean=[0.2860], std=[0.3530], channels=1)
train, val = make_loaders(data, batch_size=128, seed=0)
train_batches = list(itertools.islice(train, 40))
val_batches = list(itertools.islice(val, 16))

def top1(model):
    model.eval(); right = n = 0
    with torch.no_grad():
        for x, y in val_batches:
            right += int((model(x).argmax(1) == y).sum()); n += len(y)
    return 100 * right / n

def recalibrate(model, batches):
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in norms]
    for m in norms: m.reset_running_stats(); m.momentum = None
    model.train()
    with torch.no_grad():
        for x, _ in batches: model(x)
    for m, s in zip(norms, saved): m.momentum = s
    model.eval()

for name in models:
    spec = ModelSpec(name, 10, 1, 32)
    base = build_model(spec, None)
    base.load_state_dict(torch.load(f"starting-points/{name}.pt", weights_only=True))
    example = spec.example_input(2)
    base = convert_relus(base, example)
    macs, _ = count_macs_params(base, example)
    print(name, "start", f"{top1(base):.2f}", flush=True)
    for target, criterion in itertools.product(targets, criteria):
        import copy
        model = copy.deepcopy(base)
        stat = "energy_x_consumer"
        config = SparseConfig(epochs=3, target_macs=target, criterion=criterion, relative_threshold=0.0,
                              support_statistic=stat, round_to=8)
        dsd.begin_sparse(model, config)
        if criterion == "support":
            model.train()
            with torch.no_grad():
                for x, _ in train_batches[:20]: model(x)
        started = time.perf_counter()
        result = dsd.alternation_point(model, example, config, macs)
        dsd.end_sparse(model)
        raw = top1(model)
        recalibrate(model, train_batches[20:40])
        cal = top1(model)
        print(json.dumps({"model": name, "target": target, "criterion": criterion, "macs": round(result.macs / macs, 3),
                          "raw": round(raw, 2), "calibrated": round(cal, 2),
                          "seconds": round(time.perf_counter() - started, 1)}), flush=True)
