"""Model building: names, factories, weights files, head and input adaptation, clear errors."""

import sys
import urllib.error

import pytest
import torch
import torchvision

from supportprune.errors import SupportpruneError
from supportprune.inputs.models import ModelSpec, build_model
from supportprune.method.convert import convert_relus


def test_torchvision_model_adapts_head_and_input_channels():
    model = build_model(ModelSpec("resnet18", num_classes=10, in_channels=1, input_size=32))
    assert model.fc.out_features == 10 and model.conv1.in_channels == 1
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 10)


def test_grayscale_stem_gives_the_response_of_the_rgb_copy(tmp_path):
    rgb = torchvision.models.resnet18(num_classes=10).eval()
    path = tmp_path / "rgb.pth"
    torch.save(rgb.state_dict(), path)
    gray = build_model(ModelSpec("resnet18", 10, 1, 32), str(path)).eval()
    image = torch.randn(2, 1, 32, 32)
    # Averaged filters reproduce only the mean over colour channels; equal when R = G = B.
    assert torch.allclose(gray(image), rgb(image.repeat(1, 3, 1, 1)), atol=1e-4)


def test_googlenet_has_no_aux_heads():
    model = build_model(ModelSpec("googlenet", 10, 3, 32))
    assert model.aux1 is None and model.aux2 is None
    assert model.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def test_user_factory_model_and_our_checkpoint_as_weights(tmp_path):
    spec = ModelSpec("tiny_models:tiny_resnet", 10, 1, 8)
    model = build_model(spec)
    converted = convert_relus(model, spec.example_input())
    path = tmp_path / "ckpt.pt"
    torch.save({"model": converted.state_dict()}, path)  # site buffers included, as our checkpoints hold
    again = build_model(spec, str(path))
    assert torch.equal(again.stem.weight, model.stem.weight)


def test_factory_in_the_working_directory_leaves_sys_path_as_it_was(tmp_path, monkeypatch):
    (tmp_path / "cwd_factory_model.py").write_text(
        "import torch.nn as nn\n\ndef net():\n    return nn.Sequential(nn.Conv2d(1, 2, 8), nn.Flatten(), nn.Linear(2, 3))\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".", str(tmp_path))])
    monkeypatch.delitem(sys.modules, "cwd_factory_model", raising=False)
    before = list(sys.path)
    spec = ModelSpec("cwd_factory_model:net", 10, 1, 8)
    assert build_model(spec)(spec.example_input()).shape == (2, 10)  # found in the working directory
    assert sys.path == before
    assert build_model(spec)(spec.example_input()).shape == (2, 10)  # rebuilt from the imported module
    assert sys.path == before
    with pytest.raises(SupportpruneError, match="cannot import model factory"):
        build_model(ModelSpec("cwd_factory_model:missing", 10, 1, 8))
    assert sys.path == before  # a failed import cleans up too


def test_unknown_model_names_it_and_suggests():
    with pytest.raises(SupportpruneError, match=r"unknown model 'resnet1'.*did you mean.*resnet18"):
        build_model(ModelSpec("resnet1", 10, 1, 32))


def test_bad_factory():
    with pytest.raises(SupportpruneError, match="cannot import model factory 'nowhere.module:f'"):
        build_model(ModelSpec("nowhere.module:f", 10, 1, 32))


def test_corrupt_weights_file(tmp_path):
    path = tmp_path / "broken.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(SupportpruneError, match=r"cannot read weights file .*broken.pth"):
        build_model(ModelSpec("resnet18", 10, 1, 32), str(path))


def test_weights_of_another_architecture(tmp_path):
    path = tmp_path / "vgg.pth"
    torch.save(torchvision.models.vgg11().features.state_dict(), path)
    with pytest.raises(SupportpruneError, match="do not fit resnet18"):
        build_model(ModelSpec("resnet18", 10, 1, 32), str(path))


def test_unknown_weights_name():
    with pytest.raises(SupportpruneError, match=r"'IMAGENET9K'.*IMAGENET1K_V1"):
        build_model(ModelSpec("resnet18", 10, 1, 32), "IMAGENET9K")


def test_offline_download_says_what_to_do(monkeypatch):
    def offline(self, *args, **kwargs):
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr(torchvision.models.WeightsEnum, "get_state_dict", offline)
    with pytest.raises(SupportpruneError, match=r"could not download torchvision weights resnet18/IMAGENET1K_V1.*--weights FILE"):
        build_model(ModelSpec("resnet18", 10, 1, 32), "IMAGENET1K_V1")
