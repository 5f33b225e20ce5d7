import os

import pytest
import torch

# Tests run on the CPU, small and deterministic; two threads match the CI machine.
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
