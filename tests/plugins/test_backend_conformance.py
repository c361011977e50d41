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


class Lenient(NumpyBackend):
    """A backend that breaks two rules: it trains on outside an epoch, and it ignores
    settings it does not know instead of refusing them."""

    def train_step(self):
        try:
            return super().train_step()
        except RuntimeError:
            return 0.0

    def set_hyperparameters(self, **values):
        super().set_hyperparameters(**{k: v for k, v in values.items() if k in self.live})


class LenientSuite(BackendConformance):  # not collected: no Test prefix
    backend_cls = Lenient
    model, train = CONFIG["model"], CONFIG["train"]


@pytest.mark.parametrize(
    ("test", "message"),
    [
        (
            "test_an_epoch_is_steps_per_epoch_steps_and_the_next_one_must_be_begun",
            "train_step() before any begin_epoch() must raise RuntimeError; it raised nothing (expected RuntimeError)",
        ),
        (
            "test_an_invalid_value_is_refused_and_nothing_is_applied",
            "set_hyperparameters() with a name not in live must raise ValueError; "
            "it raised nothing (expected ValueError)",
        ),
    ],
)
def test_a_broken_backend_is_told_the_method_and_the_rule_it_broke(test, message):
    with pytest.raises(pytest.fail.Exception) as failed:
        getattr(LenientSuite(), test)()
    assert str(failed.value) == message
