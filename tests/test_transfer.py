"""Transfer learning: a trained model whose head is replaced to fit the user's classes says so, trains the new head
alone before anything is pruned (the `head` step), and reports its top-1 on the user's data before the cut."""

import json
import re

import torch
from typer.testing import CliRunner

from supportprune.cli import app
from supportprune.store.checkpoint import read_checkpoint
from tests.cli_helpers import write_recipe

runner = CliRunner()

RECIPE = {
    "version": 1, "description": "test: transfer", "seed": 0,
    "data": {"source": "embedded", "input_size": 12, "batch_size": 32},
    "head": {"epochs": 1, "lr": 0.1},
    "dense": {"epochs": 0, "lr": 0.05},
    "sparse": {"epochs": 1, "lr": 0.01, "prune_at": [1], "target_macs": 0.5, "round_to": 1, "criterion": "lamp"},
    "redense": {"epochs": 1, "lr": 0.005},
    "export": {"check_batch": 8, "int8": False},
    "bench": {"batch_sizes": [1], "runs": 1, "warmup": 1},
}


def _pretrained_digitnet(digit_classifier):
    """DigitNet trained briefly on the embedded images, then given a 4-class head: features that are worth keeping,
    a head that does not fit the data."""
    from supportprune.inputs.data import load_data

    data = load_data("embedded", input_size=12, mean=[0.286], std=[0.353])
    model = digit_classifier.DigitNet(12, num_classes=10)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    images = torch.stack([data.train[i][0] for i in range(2048)])
    labels = torch.tensor([data.train[i][1] for i in range(2048)])
    for step in range(96):
        batch = slice(64 * (step % 32), 64 * (step % 32 + 1))
        loss = torch.nn.functional.cross_entropy(model(images[batch]), labels[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.fc2 = torch.nn.Linear(32, 4)
    return model


def test_replaced_head_is_said_trained_alone_before_the_cut_and_the_starting_top1_reported(tmp_path):
    import digit_classifier

    torch.manual_seed(5)
    trained = _pretrained_digitnet(digit_classifier)  # its head has 4 classes; the data has 10
    weights = tmp_path / "digits4.pt"
    torch.save(trained.state_dict(), weights)
    recipe = write_recipe(tmp_path / "transfer.yaml", RECIPE)
    out = tmp_path / "out"
    result = runner.invoke(app, ["compress", "digit_classifier:DigitNet", "--model-arg", "input_size=12", "--weights",
                                 str(weights), "--recipe", str(recipe), "--out", str(out), "--max-steps", "12"])
    assert result.exit_code == 0, result.output
    said = "the 4-class head fc2 replaced by a new, untrained 10-class one"
    assert said in result.output
    report = (out / "report.md").read_text()
    assert said in report

    # The head step ran first, alone: the rest of the model left it as loaded.
    phases = [json.loads(line)["phase"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert phases[0] == "head" and phases.index("sparse") > 0
    baseline = read_checkpoint(out / "models" / "baseline.pt")["model"]  # the model the cut starts from
    for key in ("features.block1.0.weight", "features.block2.0.weight", "fc1.weight", "fc1.bias"):
        torch.testing.assert_close(baseline[key], trained.state_dict()[key], msg=key)
    assert baseline["fc2.weight"].shape == (10, 32)

    # Its top-1 before the cut is the trained head's, well above the untrained head's (chance).
    found = re.search(r"before any cut: top-1 ([\d.]+)% \(with the replaced head untrained: ([\d.]+)%", report)
    assert found, report
    before_cut, untrained = float(found.group(1)), float(found.group(2))
    assert untrained < 25 and before_cut > untrained + 15
    assert f"val top-1 {before_cut:.2f}%" in result.output
