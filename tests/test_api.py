"""The Python API: the README's example runs as written, and the pruner's models keep their promises."""

import re
from pathlib import Path

import onnx
import pytest
import torch

from supportprune import SupportPruner
from tests.tiny_models import TinyResNet

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_example_runs(tmp_path, monkeypatch, capsys):
    block = re.search(r"<!-- api-example -->\s*```python\n(.*?)```", README.read_text(), re.S)
    assert block, "README has no python block after <!-- api-example -->"
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(block.group(1), "README.md", "exec"), namespace)
    pruner, sparse = namespace["pruner"], namespace["sparse"]
    kept = namespace["result"].macs / pruner.baseline_macs
    assert 0.4 < kept <= 0.5 + 0.05
    assert f"kept {kept:.0%} of the MACs" in capsys.readouterr().out
    onnx.checker.check_model(str(tmp_path / "sparse.onnx"))
    assert sum(p.numel() for p in sparse.parameters()) < sum(p.numel() for p in pruner.model.parameters())


def test_pruner_sparse_model_equals_masked_model_and_redense_restores_width():
    torch.manual_seed(0)
    example = torch.randn(8, 1, 12, 12)
    pruner = SupportPruner(TinyResNet(width=16), example, target_macs=0.5, round_to=1)
    pruner.start_sparse()
    pruner.model.train()
    for _ in range(3):
        pruner.model(torch.randn(16, 1, 12, 12))
    before = {name: m.weight.detach().clone() for name, m in pruner.model.named_modules() if isinstance(m, torch.nn.Conv2d)}
    result = pruner.prune()
    assert result.macs < 0.6 * pruner.baseline_macs
    sparse = pruner.sparse_model()
    pruner.model.eval()
    with torch.no_grad():
        assert torch.allclose(sparse(example), pruner.model(example), atol=1e-5)
    assert pruner.redense() > 0
    # revive restore (the default): with no training in between, every convolution is back as it was
    for name, module in pruner.model.named_modules():
        if isinstance(module, torch.nn.Conv2d):
            assert torch.equal(module.weight, before[name]), name
    assert all(kept == total for kept, total in pruner.kept_channels().values())


@pytest.mark.parametrize("criterion", ["taylor", "hessian", "magnitude"])
def test_criteria_prune_cannot_use_are_refused_at_construction(criterion):
    from supportprune.errors import SupportpruneError

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.LazyLinear(2))
    with pytest.raises(SupportpruneError, match=f"criterion '{criterion}'"):
        SupportPruner(model, example_input=torch.randn(2, 3, 8, 8), criterion=criterion)


@pytest.mark.parametrize("criterion", ["l1", "random"])
def test_weight_criteria_prune_through_the_api(criterion):
    import torchvision

    pruner = SupportPruner(torchvision.models.resnet18(num_classes=10), example_input=torch.randn(2, 3, 32, 32),
                           criterion=criterion)
    pruner.start_sparse()
    result = pruner.prune()
    assert result.macs <= 0.5 * pruner.baseline_macs * 1.05
