"""A conformance test suite for backends: what the loop relies on, checked the same way for
the built-ins and for yours.

Subclass ``BackendConformance`` in a pytest file and say how to build your backend::

    from runner.testing import BackendConformance

    class TestMyBackend(BackendConformance):
        backend_cls = MyBackend
        model = {"hidden": [16]}                     # your Model section, as JSON
        train = {"epochs": 2, "batch_size": 16, "lr": 0.01}
        options = {}

pytest then runs every ``test_*`` method below against it, on a small synthetic data set.
They check the contract in ``runner.backend``: epochs of ``steps_per_epoch`` steps, finite
losses, evaluation that changes nothing, live hyperparameters in force from the next step
and refused whole when invalid, ``state()`` as a copy, ``load_state`` continuing bit for
bit (what resume and rollback need), and a deterministic ``reshuffle``.

This module is public (``runner.PUBLIC_MODULES``); its ``__all__`` is the suite and the two
helpers it is built on, for a backend's own tests: ``small_dataset`` (a learnable
synthetic data set) and ``Driver`` (steps a backend as the loop does).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

import numpy as np
import pytest

from runner.backend import Backend, BackendState
from runner.data import DataOptions, RawData, prepare
from runner.experiment_file.typed import build

__all__ = ["BackendConformance", "Driver", "small_dataset"]


def small_dataset(n: int = 90, features: int = 5, classes: int = 3, seed: int = 0):
    """A learnable synthetic data set: Gaussian blobs, a third of it for validation."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(classes, features)) * 3
    y = rng.integers(classes, size=n)
    x = centers[y] + rng.normal(size=(n, features))
    return prepare("conformance", RawData(x=x, y=y), DataOptions(val_fraction=1 / 3), seed=seed)


class Driver:
    """Steps a backend as the loop does: a new epoch whenever one is used up, losses that
    ``train_step`` leaves for later collected from ``pending_losses``."""

    def __init__(self, backend: Backend, epoch: int = -1, step: int | None = None):
        self.backend, self.epoch, self.step = backend, epoch, step  # step: done in this epoch

    def run(self, steps: int) -> list[float]:
        out: list[float] = []
        backend = self.backend
        for _ in range(steps):
            if self.step is None or self.step == backend.steps_per_epoch:
                out.extend(backend.pending_losses())
                self.epoch += 1
                backend.begin_epoch(self.epoch)
                self.step = 0
            loss = backend.train_step()
            self.step += 1
            if loss is not None:
                out.append(loss)
        return out + backend.pending_losses()

    def continued_by(self, backend: Backend) -> Driver:
        """A driver for ``backend`` (restored from a state taken here) at this one's place."""
        return Driver(backend, self.epoch, self.step)


@contextmanager
def must_raise(error: type[Exception], rule: str) -> Iterator[None]:
    """The block must raise ``error``; if it does not, the test fails naming the method and
    the rule of the contract it broke (``rule``), not just the exception that was missing."""
    try:
        yield
    except error:
        return
    pytest.fail(f"{rule}; it raised nothing (expected {error.__name__})", pytrace=False)


def same_state(a: BackendState, b: BackendState) -> bool:
    return (
        set(a.arrays) == set(b.arrays)
        and a.meta == b.meta
        and all(np.array_equal(a.arrays[k], b.arrays[k]) for k in a.arrays)
    )


class BackendConformance:
    """Tests every backend must pass. Set ``backend_cls`` and the three config sections."""

    backend_cls: ClassVar[type[Backend]]
    model: ClassVar[dict[str, Any]] = {}
    train: ClassVar[dict[str, Any]] = {"epochs": 2}
    options: ClassVar[dict[str, Any]] = {}

    def make(self, seed: int = 7) -> Backend:
        """A backend built as the loop builds one, on ``small_dataset()``."""
        cls = self.backend_cls
        return cls(
            model=build(cls.Model, self.model, "model"),
            train=build(cls.Train, self.train, "train"),
            options=build(cls.Options, self.options, "backend"),
            data=small_dataset(),
            seed=seed,
        )

    def test_an_epoch_is_steps_per_epoch_steps_and_the_next_one_must_be_begun(self):
        backend = self.make()
        with must_raise(RuntimeError, "train_step() before any begin_epoch() must raise RuntimeError"):
            backend.train_step()
        backend.begin_epoch(0)
        for _ in range(backend.steps_per_epoch):
            backend.train_step()
        with must_raise(RuntimeError, "train_step() after steps_per_epoch steps of an epoch must raise RuntimeError"):
            backend.train_step()

    def test_the_same_seed_trains_the_same_way_and_the_loss_falls(self):
        first = Driver(self.make()).run(30)
        assert len(first) == 30, f"30 steps must give 30 losses (train_step, then pending_losses); got {len(first)}"
        assert first == Driver(self.make()).run(30), "two backends built with the same seed must train identically"
        assert all(math.isfinite(x) for x in first), "train_step's losses must be finite on easy data"
        assert np.mean(first[-5:]) < np.mean(first[:5]), "30 steps of train_step must lower the loss on easy data"
        assert Driver(self.make(seed=8)).run(30) != first, "another seed must give other initial weights or order"

    def test_evaluate_reports_loss_and_accuracy_and_changes_nothing(self):
        backend = self.make()
        Driver(backend).run(5)
        before = backend.state()
        metrics = backend.evaluate("val")
        missing = set(self.backend_cls.metrics_for("classification")) - set(metrics)
        assert not missing, f"evaluate() must report every name of metrics_for(task); missing {sorted(missing)}"
        assert math.isfinite(metrics["loss"]), f"evaluate()'s loss must be finite, got {metrics['loss']}"
        assert 0 <= metrics["acc"] <= 1, f"evaluate()'s acc must be in [0, 1], got {metrics['acc']}"
        assert backend.evaluate("val") == metrics, "evaluate() twice must give the same metrics"
        assert same_state(before, backend.state()), "evaluate() must change nothing that state() holds"

    def test_live_hyperparameters_are_in_force_from_the_next_step(self):
        backend, twin = self.make(), self.make()
        driver, twin_driver = Driver(backend), Driver(twin)
        driver.run(3), twin_driver.run(3)
        values = {name: 0.5 * value for name, value in backend.hyperparameters().items()}
        backend.set_hyperparameters(**values)
        assert backend.hyperparameters() == pytest.approx(values), (
            "hyperparameters() must report what set_hyperparameters() set"
        )
        changed, unchanged = driver.run(3), twin_driver.run(3)
        assert changed[0] == unchanged[0], "train_step's loss must be computed before its own update"
        assert changed[1:] != unchanged[1:], "set_hyperparameters() must be in force from the next train_step"

    def test_an_invalid_value_is_refused_and_nothing_is_applied(self):
        backend = self.make()
        before = backend.hyperparameters()
        with must_raise(ValueError, "set_hyperparameters() with a name not in live must raise ValueError"):
            backend.set_hyperparameters(lr=0.01, no_such_setting=1.0)
        with must_raise(ValueError, "set_hyperparameters() with a value that is not finite must raise ValueError"):
            backend.set_hyperparameters(lr=float("nan"))
        assert backend.hyperparameters() == before, "set_hyperparameters() that raises must apply nothing"

    def test_state_is_a_copy_and_load_state_continues_bit_for_bit(self):
        backend = self.make()
        driver = Driver(backend)
        driver.run(4)
        saved = backend.state()
        place = driver.continued_by(None)
        expected = driver.run(9)  # across an epoch's end
        assert not same_state(saved, backend.state()), "state() must return a copy that training on leaves alone"
        fresh = self.make(seed=123)  # other weights: load_state must replace everything
        fresh.load_state(saved)
        place.backend = fresh
        assert place.run(9) == expected, "after load_state(), training must continue bit for bit (same losses)"
        assert same_state(fresh.state(), backend.state()), "after load_state(), training must reach the same state"

    def test_a_state_that_does_not_fit_is_refused(self):
        saved = self.make().state()
        saved.arrays[next(iter(saved.arrays))] = np.zeros(3)
        with must_raise(ValueError, "load_state() of a state whose arrays do not fit must raise ValueError"):
            self.make().load_state(saved)

    def test_reshuffle_is_deterministic_and_changes_the_order(self):
        def reshuffled(salt: int) -> list[float]:
            driver = Driver(self.make())
            driver.run(2)
            driver.backend.reshuffle(salt)
            return driver.run(8)

        assert reshuffled(1) == reshuffled(1), "reshuffle() with the same salt must give the same order"
        assert reshuffled(1) != reshuffled(2), "reshuffle() with another salt must give another order"
