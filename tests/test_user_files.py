"""Files the user hands in that are at fault are named as such, on one line: a damaged image in an image folder
(also when DataLoader workers read it), and a weights file that would need unpickling (never suggesting
weights_only=False)."""

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from supportprune.cli import app
from supportprune.errors import SupportpruneError
from supportprune.inputs.data import load_data, make_loaders
from tests.cli_helpers import one_line_error, write_recipe
from tests.test_cli import TINY_RECIPE
from tests.test_data import RGB, write_folder

runner = CliRunner()


@pytest.mark.parametrize("scheme", ["folder", "imagenet"])
@pytest.mark.parametrize("workers", [0, 2])
def test_a_damaged_image_is_named_as_the_datas_fault(tmp_path: Path, scheme: str, workers: int) -> None:
    write_folder(tmp_path)
    damaged = tmp_path / "train" / "dog" / "1.png"
    damaged.write_bytes(damaged.read_bytes()[:40])  # cut short, as a failed copy leaves it
    splits = load_data(f"{scheme}:{tmp_path}", input_size=16, **RGB)
    train, _ = make_loaders(splits, batch_size=4, workers=workers, seed=0)
    with pytest.raises(SupportpruneError) as info:
        list(train)
    message = str(info.value)
    assert str(damaged) in message and "the data is at fault" in message and "replace or remove the file" in message
    assert "\n" not in message and "Caught" not in message and "Traceback" not in message


def test_a_damaged_image_through_the_cli_is_one_line(tmp_path: Path) -> None:
    write_folder(tmp_path / "data", per_class=4)
    damaged = tmp_path / "data" / "val" / "cat" / "0.png"
    damaged.write_bytes(b"not an image")
    recipe = write_recipe(tmp_path / "r.yaml", {**TINY_RECIPE, "data": {**TINY_RECIPE["data"], "workers": 2}})
    result = runner.invoke(app, ["compress", "tiny_models:tiny_resnet", "--recipe", str(recipe), "--data",
                                 f"folder:{tmp_path / 'data'}", "--mean", "0.5,0.5,0.5", "--std", "0.25,0.25,0.25",
                                 "--out", str(tmp_path / "out"), "--max-steps", "1"])
    one_line_error(result, str(damaged), "the data is at fault")
    assert "bug in supportprune" not in result.output


def test_a_whole_pickled_model_is_refused_without_unsafe_advice(tmp_path: Path) -> None:
    from tests.tiny_models import TinyResNet

    weights = tmp_path / "model.pt"
    torch.save(TinyResNet(), weights)  # the whole module, not its state dict
    recipe = write_recipe(tmp_path / "r.yaml", TINY_RECIPE)
    result = runner.invoke(app, ["compress", "tiny_models:tiny_resnet", "--recipe", str(recipe), "--weights",
                                 str(weights), "--out", str(tmp_path / "out"), "--max-steps", "1"])
    one_line_error(result, "model.pt", "refused to unpickle", "TinyResNet", "torch.save(model.state_dict()")
    assert "weights_only" not in result.output and "set to False" not in result.output
