"""Data-parallel runs (gloo, 2 CPU processes): global supports and identical pruning on every rank."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import yaml

from supportprune.store.checkpoint import read_checkpoint
from supportprune.method.support import SupportSite, batch_support_mask

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _site_worker(rank: int, world_size: int, port: int, granularity: str, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        q = torch.randn(8, 4, 3, 3, generator=torch.Generator().manual_seed(5)) - 0.3  # the global batch
        q[:, 2] = -1.0  # one channel with no support anywhere
        local = q.chunk(world_size)[rank]
        site = SupportSite(4).train()
        site.mode, site.granularity, site.record_stats, site.global_supports = "batch", granularity, True, True
        site.relative_threshold.fill_(0.6)
        output = site(local)
        torch.save({"output": output, "support_batches": site.stat_support_batches}, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("granularity", ["channel", "element"])
def test_global_masks_are_identical_across_ranks_and_equal_the_single_process_mask(tmp_path, granularity):
    mp.spawn(_site_worker, args=(2, _free_port(), granularity, str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    q = torch.randn(8, 4, 3, 3, generator=torch.Generator().manual_seed(5)) - 0.3
    q[:, 2] = -1.0
    activation = torch.relu(q)
    mask = batch_support_mask(activation, 0.6, granularity)  # Eq. 41 on the concatenated batch
    assert torch.allclose(torch.cat([r["output"] for r in ranks]), activation * mask, atol=1e-6)
    assert torch.equal(ranks[0]["support_batches"], ranks[1]["support_batches"])
    assert ranks[0]["support_batches"][2] == 0


RECIPE = {
    "version": 1,
    "seed": 1,
    "data": {"source": "embedded", "input_size": 12, "batch_size": 32},
    "dense": {"epochs": 1, "lr": 0.05},
    "sparse": {"epochs": 2, "lr": 0.01, "relative_threshold": 0.5, "prune_at": [1]},
    "redense": {"epochs": 1, "lr": 0.005},
    "export": {"check_batch": 8},
    "bench": {"batch_sizes": [1], "runs": 1, "warmup": 1},
}


def _supportprune(processes, *args):
    """``python -m supportprune ARGS`` on the CPU, under torchrun with ``processes`` gloo ranks when more than one;
    returns its stdout."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    command = (launcher if processes > 1 else [sys.executable]) + ["-m", "supportprune", *args, "--device", "cpu"]
    result = subprocess.run(command, cwd=Path(__file__).parent, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def _run(tmp_path, out, processes):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(RECIPE))
    return _supportprune(processes, "compress", "tiny_models:tiny_plain", "--recipe", str(recipe), "--out", str(out),
                         "--max-steps", "6")


def _assert_same_epochs(single, double):
    """Every epoch of both runs, none missing. tiny_plain has no batch norm, so two ranks compute the
    single process's global-batch gradients up to the order of float additions in the all-reduce."""
    assert len(single) == len(double) and single
    for a, b in zip(single, double):
        assert a["epoch"] == b["epoch"] and a["phase"] == b["phase"]
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-6)  # measured: ≤ 4e-8 relative
        assert b["val_top1"] == a["val_top1"]


def test_distributed_compress_prunes_like_one_process_on_the_same_global_batches(tmp_path):
    single, double = tmp_path / "single", tmp_path / "double"
    _run(tmp_path, single, 1)
    output = _run(tmp_path, double, 2)
    assert "2 processes" in output
    keep = {}
    for run in (single, double):
        state = read_checkpoint(run / "models" / "sparse.pt")["model"]
        keep[run] = {k: v for k, v in state.items() if k.endswith(".keep")}
    assert keep[single].keys() == keep[double].keys()
    assert all(torch.equal(keep[single][k], keep[double][k]) for k in keep[single])
    assert sum(int((v == 0).sum()) for v in keep[single].values()) > 0  # something was pruned
    # Metrics are aggregated over both ranks: the same global batches give the same numbers, epoch by epoch.
    metrics = [[json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()] for run in (single, double)]
    _assert_same_epochs(*metrics)
    exported = json.loads((double / "export.json").read_text())
    assert {m["kind"] for m in exported["models"]} == {"baseline", "sparse", "dense"}


def _train(tmp_path, out, processes):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({**RECIPE, "train": {"epochs": 2, "lr": 0.05, "warmup_epochs": 1, "relative_threshold": 0.2}}))
    _supportprune(processes, "train", "tiny_models:tiny_plain", "--alternation", "instance", "--recipe", str(recipe),
                  "--out", str(out), "--max-steps", "4")
    return json.loads((out / "result.json").read_text())


def test_distributed_i_alternation_trains_like_one_process(tmp_path):
    """Rank 0 estimates every example's supports once; every rank trains its slice of each global batch
    with the supports of its own examples."""
    single = _train(tmp_path, tmp_path / "single", 1)
    double = _train(tmp_path, tmp_path / "double", 2)
    # The supports were saved once, atomically: the final file and no temporary left beside it.
    assert sorted(p.name for p in (tmp_path / "double" / "masks").iterdir()) == ["instance-supports.npy"]
    _assert_same_epochs(single["metrics"], double["metrics"])
    assert single["maskt_val_error"] == double["maskt_val_error"]


def _global_bn_worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    from supportprune.run.sync_batch_norm import use_global_batch_statistics

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        torch.manual_seed(7)  # the same layer and global batch on every rank
        layer = torch.nn.BatchNorm2d(3, momentum=None)  # cumulative average: the count enters the running stats
        layer.weight.data.uniform_(0.5, 1.5)
        layer.bias.data.uniform_(-0.5, 0.5)
        x = torch.randn(8, 3, 4, 5) * 3 + 1
        use_global_batch_statistics(layer)
        local = x.chunk(world_size)[rank].clone().requires_grad_(True)
        output = layer(local)
        (output * torch.arange(output.numel()).view_as(output).sin()).sum().backward()  # a loss mixing the rows
        torch.save({"output": output.detach(), "input_grad": local.grad, "weight_grad": layer.weight.grad,
                    "bias_grad": layer.bias.grad, "running_mean": layer.running_mean,
                    "running_var": layer.running_var}, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_global_batch_norm_on_two_ranks_equals_batch_norm_on_the_whole_batch(tmp_path):
    mp.spawn(_global_bn_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    torch.manual_seed(7)
    layer = torch.nn.BatchNorm2d(3, momentum=None)
    layer.weight.data.uniform_(0.5, 1.5)
    layer.bias.data.uniform_(-0.5, 0.5)
    x = (torch.randn(8, 3, 4, 5) * 3 + 1).requires_grad_(True)
    output = layer(x)
    weights = torch.cat([torch.arange(o.numel()).view_as(o).sin() for o in (r["output"] for r in ranks)])
    (output * weights).sum().backward()
    # float32 sums over two halves then added, against one sum: equal up to rounding (~1e-7 relative).
    assert torch.allclose(torch.cat([r["output"] for r in ranks]), output.detach(), atol=1e-5)
    assert torch.allclose(torch.cat([r["input_grad"] for r in ranks]), x.grad, atol=1e-5)
    # Each rank holds the gradient of its own rows' loss; DistributedDataParallel sums (then averages) them.
    for name, expected in (("weight_grad", layer.weight.grad), ("bias_grad", layer.bias.grad)):
        assert torch.allclose(ranks[0][name] + ranks[1][name], expected, atol=1e-4)
    for rank in ranks:  # running statistics of the global batch (unbiased variance over its 160 values per channel)
        assert torch.allclose(rank["running_mean"], layer.running_mean, atol=1e-6)
        assert torch.allclose(rank["running_var"], layer.running_var, atol=1e-5)


BN_RECIPE = {**RECIPE, "train": {"epochs": 1, "lr": 0.05, "alternation": "none"}}


def _train_with_batch_norm(tmp_path, out, processes, sync):
    recipe = tmp_path / f"bn-{sync}.yaml"
    recipe.write_text(yaml.safe_dump({**BN_RECIPE, "sync_batch_norm": sync}))
    _supportprune(processes, "train", "tiny_models:tiny_resnet", "--recipe", str(recipe), "--out", str(out),
                  "--max-steps", "4")
    return read_checkpoint(out / "models" / "trained.pt")["model"]


def _largest_difference(a, b):
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].is_floating_point())


def test_sync_batch_norm_trains_a_batch_norm_network_like_one_process(tmp_path):
    """TinyResNet has five batch-norm layers. With sync_batch_norm, two processes (16 images each) train what
    one process computes on the 32-image global batch; without it, each normalises over its 16 images."""
    single = _train_with_batch_norm(tmp_path, tmp_path / "single", 1, True)
    synced = _train_with_batch_norm(tmp_path, tmp_path / "synced", 2, True)
    local = _train_with_batch_norm(tmp_path, tmp_path / "local", 2, False)
    assert synced.keys() == single.keys()  # plain batch-norm state dict: export rebuilds plain layers from it
    # Weights and running statistics after 4 SGD steps: float32 rounding of differently ordered sums only.
    assert _largest_difference(synced, single) < 1e-5
    assert _largest_difference(local, single) > 1e-3  # the test can tell local statistics apart


def _rng_worker(rank: int, world_size: int, port: int, out_dir: str, recipe_path: str, attempt: str) -> None:
    sys.path.insert(0, str(Path(__file__).parent))  # tiny_models
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size),
                      LOCAL_RANK=str(rank))
    import supportprune.pipelines.train as compress
    import supportprune.run.engine as engine
    import supportprune.run.setup as setup
    from supportprune.inputs.recipe import load_recipe

    seed_everything, save, resume = setup.seed_everything, engine.Engine._save, engine.Engine._resume
    seen = {}

    def seed_per_rank(seed):  # the ranks draw different random numbers, so their states differ
        seed_everything(seed + rank)

    def recording_save(self, optimizer, scheduler):
        seen["at_checkpoint"] = torch.get_rng_state()
        save(self, optimizer, scheduler)

    def recording_resume(self):
        saved = resume(self)
        seen["after_resume"] = torch.get_rng_state()
        return saved

    setup.seed_everything, engine.Engine._save, engine.Engine._resume = seed_per_rank, recording_save, recording_resume
    compress.train("tiny_models:tiny_plain", load_recipe(recipe_path), Path(out_dir) / "run", device="cpu",
                   max_steps_per_epoch=2)
    torch.save(seen, Path(out_dir) / f"{attempt}-rank{rank}.pt")


@pytest.mark.slow  # two runs under torchrun or two reduced experiments: minutes on 2 cores
def test_each_rank_resumes_its_own_random_number_state(tmp_path):
    recipe = tmp_path / "rng.yaml"
    recipe.write_text(yaml.safe_dump({**BN_RECIPE, "checkpoint_every_steps": 1}))
    for attempt in ("first", "again"):  # the second run finds the first's checkpoint and resumes it
        mp.spawn(_rng_worker, args=(2, _free_port(), str(tmp_path), str(recipe), attempt), nprocs=2, join=True)
    first = [torch.load(tmp_path / f"first-rank{r}.pt") for r in range(2)]
    again = [torch.load(tmp_path / f"again-rank{r}.pt") for r in range(2)]
    assert not torch.equal(first[0]["at_checkpoint"], first[1]["at_checkpoint"])
    for rank in range(2):
        assert torch.equal(again[rank]["after_resume"], first[rank]["at_checkpoint"]), rank
    saved = read_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["rng"]
    assert [torch.equal(s["torch"], f["at_checkpoint"]) for s, f in zip(saved["ranks"], first)] == [True, True]
