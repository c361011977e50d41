"""Both built-in backends pass the conformance suite a third-party backend would run."""

from __future__ import annotations

import pytest
from runner.plugins.backends.numpy_mlp import NumpyBackend

from runner.testing import BackendConformance

try:
    from runner.plugins.backends.torch_mlp.backend import TorchBackend
except ImportError:  # no PyTorch: the Torch classes skip (marked torch, see conftest); the NumPy ones still run
    TorchBackend = None

CONFIG = {
    "model": {"hidden": [8], "batch_norm": True},
    "train": {"epochs": 2, "batch_size": 16, "lr": 0.02, "optimizer": "adam"},
}


def cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


class TestNumpyBackend(BackendConformance):
    backend_cls = NumpyBackend
    model, train = CONFIG["model"], CONFIG["train"]


class TestNumpyBackendMomentumFloat64(BackendConformance):
    backend_cls = NumpyBackend
    model = {"hidden": [8, 4], "activation": "tanh"}
    train = {"epochs": 2, "batch_size": 13, "lr": 0.05, "optimizer": "momentum", "lr_decay": 0.5}
    options = {"dtype": "float64"}


@pytest.mark.torch
class TestTorchBackendCPU(BackendConformance):
    backend_cls = TorchBackend
    model, train = CONFIG["model"], CONFIG["train"]
    options = {"device": "cpu"}


@pytest.mark.torch
@pytest.mark.cuda
@pytest.mark.skipif(not cuda_available(), reason="needs a CUDA device")
class TestTorchBackendCUDA(BackendConformance):
    backend_cls = TorchBackend
    model, train = CONFIG["model"], CONFIG["train"]
    options = {"device": "cuda"}
