"""redense.revive: whether the channels re-dense brings back can learn again."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from supportprune.method import dsd
from supportprune.method.pruning import apply_keep_masks
from supportprune.inputs.typed_yaml import RecipeError
from supportprune.inputs.recipe import recipe_from_dict
from supportprune.method.convert import convert_relus
from supportprune.method.support import support_sites

PRUNED = [1, 4]  # channels of the first site


class TwoConvs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(6)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(6, 5, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(5)
        self.relu2 = nn.ReLU()
        self.fc = nn.Linear(5, 3)

    def forward(self, x):
        x = self.relu2(self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x))))))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def _pruned_then_revived(revive: str):
    torch.manual_seed(0)
    example = torch.zeros(2, 1, 8, 8)
    model = convert_relus(TwoConvs(), example)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    saved = dsd.remember_pruned_weights(None, model, example)  # what the alternation point stores
    keep = {name: torch.ones(site.channels) for name, site in support_sites(model)}
    keep["relu1"][PRUNED] = 0
    apply_keep_masks(model, keep)
    with torch.no_grad():  # the Sparse epochs after the point move the weights (weight decay, say)
        model.conv1.weight.mul_(0.5)
        model.conv2.weight.mul_(0.5)
    assert dsd.redense(model, example, revive, saved) == len(PRUNED)
    revived = {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.train()  # one training step's gradient (it also moves batch-norm statistics: compare `revived`)
    F.cross_entropy(model(torch.randn(8, 1, 8, 8)), torch.randint(0, 3, (8,))).backward()
    return model, before, revived


def _grad_norms(model):
    producing = float(model.conv1.weight.grad[PRUNED].abs().sum())
    consuming = float(model.conv2.weight.grad[:, PRUNED].abs().sum())
    return producing, consuming


def test_zero_revival_is_a_saddle():
    """Today's (DSD's) behaviour: every weight of a revived channel is zero and gets no gradient."""
    model, _, revived = _pruned_then_revived("zero")
    assert float(revived["conv1.weight"][PRUNED].abs().sum()) == 0 and float(revived["conv2.weight"][:, PRUNED].abs().sum()) == 0
    assert _grad_norms(model) == (0.0, 0.0)


def test_restore_brings_back_the_weights_of_the_pruning_and_they_learn():
    model, before, revived = _pruned_then_revived("restore")
    for key, index in (("conv1.weight", PRUNED), ("conv2.weight", (slice(None), PRUNED)), ("bn1.weight", PRUNED),
                       ("bn1.running_var", PRUNED)):
        torch.testing.assert_close(revived[key][index], before[key][index])
    kept = [c for c in range(6) if c not in PRUNED]  # the rest is as trained, not restored
    torch.testing.assert_close(revived["conv1.weight"][kept], 0.5 * before["conv1.weight"][kept])
    producing, consuming = _grad_norms(model)
    assert producing > 0 and consuming > 0


def test_reinit_redraws_producing_weights_and_the_consuming_ones_learn():
    model, before, revived = _pruned_then_revived("reinit")
    assert float(revived["conv2.weight"][:, PRUNED].abs().sum()) == 0  # the network computes what the pruned one did
    assert float(revived["conv1.weight"][PRUNED].abs().sum()) > 0
    assert not torch.allclose(revived["conv1.weight"][PRUNED], before["conv1.weight"][PRUNED])
    torch.testing.assert_close(revived["bn1.weight"][PRUNED], torch.ones(len(PRUNED)))
    _, consuming = _grad_norms(model)
    assert consuming > 0


def test_remembered_weights_keep_the_value_from_when_a_channel_was_pruned():
    example = torch.zeros(2, 1, 8, 8)
    model = convert_relus(TwoConvs(), example)
    first = {k: v.clone() for k, v in dsd.remember_pruned_weights(None, model, example).items()}
    keep = {name: torch.ones(site.channels) for name, site in support_sites(model)}
    keep["relu1"][PRUNED] = 0
    apply_keep_masks(model, keep)
    with torch.no_grad():
        model.conv1.weight.mul_(0.5)
    second = dsd.remember_pruned_weights(first, model, example)  # the next alternation point
    torch.testing.assert_close(second["conv1.weight"][PRUNED], first["conv1.weight"][PRUNED])
    torch.testing.assert_close(second["conv1.weight"][2], 0.5 * first["conv1.weight"][2])


def test_revive_key_is_validated():
    with pytest.raises(RecipeError, match="redense.revive: must be one of zero, restore, reinit"):
        recipe_from_dict({"redense": {"revive": "regrow"}})


def test_compress_runs_with_the_new_options(tmp_path):
    """The wiring: a DSD run with a cubic schedule over two points, estimated β, distillation in both steps
    and restored channels; the points meet their scheduled targets and the checkpoint keeps the weights."""
    import json

    from supportprune.store.checkpoint import read_checkpoint
    from supportprune.pipelines.compress import compress

    recipe = recipe_from_dict({
        "seed": 3, "data": {"source": "embedded", "input_size": 12, "batch_size": 32},
        "dense": {"epochs": 1, "lr": 0.05},
        "sparse": {"epochs": 2, "lr": 0.01, "prune_at": [1, 2], "target_macs": 0.5, "target_schedule": "cubic",
                   "beta": "estimated", "distill": {"alpha": 0.5, "temperature": 2.0}},
        "redense": {"epochs": 1, "lr": 0.005, "revive": "restore", "distill": {"alpha": 0.5, "temperature": 2.0}},
    })
    compress("tiny_models:tiny_resnet", recipe, tmp_path / "run", max_steps_per_epoch=3, deliver=False)
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    baseline = result["baseline_macs"]
    first, second = result["alternations"]
    assert first["macs"] <= (0.5 + 0.5 / 8) * baseline and second["macs"] <= 0.5 * baseline
    saved = read_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert saved["revive_store"] is not None and "stem.weight" in saved["revive_store"]
