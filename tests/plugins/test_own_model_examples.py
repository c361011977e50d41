"""The own-model examples in experiments/ train to what their docs promise."""

from __future__ import annotations

import orjson
import pytest

import runner
from tests.conftest import ROOT

pytest.importorskip("torch")
pytestmark = pytest.mark.torch

EXPERIMENTS = ROOT / "experiments"


def example(name: str, space: dict) -> dict:
    """The example file with its search narrowed to one trial (the example's own ranges
    hold the chosen values)."""
    experiment = orjson.loads((EXPERIMENTS / name).read_bytes())
    experiment["search"]["strategy"] = {"name": "grid"}
    experiment["search"]["space"] = {path: {"choices": [value]} for path, value in space.items()}
    experiment["backend"]["device"] = "cpu"
    return experiment


def test_the_digits_cnn_reaches_97_percent_on_8x8_images(tmp_path):
    experiment = example("digits_cnn.json", {"model.init_args.channels": 16, "train.lr": 0.05})
    result = runner.run(experiment, out=tmp_path, base_dir=EXPERIMENTS)
    assert result.best is not None and result.best.state == "completed"
    assert result.best.best["val_acc"] >= 0.97


def test_the_sine_regression_learns_the_next_value_to_within_the_noise(tmp_path):
    experiment = example("sine_regression.json", {"train.lr": 0.005})
    result = runner.run(experiment, out=tmp_path, base_dir=EXPERIMENTS)
    assert result.metric == "val_mae" and result.mode == "min"
    # Predicting 0 leaves a mean absolute error of about 0.64 (the mean |sin|); the noise alone, about 0.04.
    assert result.best.best["val_mae"] < 0.08
