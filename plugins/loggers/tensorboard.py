"""The tensorboard logger: each trial as a TensorBoard run, under the run directory.

``"loggers": ["tensorboard"]`` (or ``runner start --logger tensorboard``) writes, for each
trial, ``RUN_DIR/tensorboard/tNNN``:

- per epoch (the step is the epochs it has completed): ``train_loss``, the validation
  metrics (``val_loss``, ``val_acc``, ...) and the live settings (``lr``, ``momentum``, ...);
- nudges and rollbacks as text (tags ``nudges`` and ``rollbacks``), at the step of the first
  epoch they shape;
- when it ends, in ``tNNN/hparams``, the HParams plugin's summary: its searched values
  against its best metric (``best/<metric>``) and its end state.

``tensorboard --logdir RUN_DIR/tensorboard`` shows them. The logger runs in the driver, on
the run's events (``runner_event``), so trials in worker processes or on Ray, with or without
a shared disk, are logged alike. A trial that goes on after a rollback, a retry or a resume
writes on from the epoch it went back to, marked with TensorBoard's purge step, so that
TensorBoard drops the points it had from there on: each epoch shows once, as the trial's
history has it now (TensorBoard's fast data server drops them once the trial writes that
step again). A resume first passes on again all the log keeps, so what a crash kept from
reaching TensorBoard is written then.
Needs ``pip install 'panda-caviar[tensorboard]'`` (tensorboardX writes the files).
"""

from __future__ import annotations

import importlib.util
import math
import numbers
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runner import bounds, hookimpl
from runner.plugins.loggers.folders import check_folder, real_folder

NAME = "tensorboard"
INSTALL = "needs tensorboardX: pip install 'panda-caviar[tensorboard]'"
NOT_SCALARS = ("t", "trial", "epoch", "step", "seconds")  # the epoch_end fields that are not curves


@dataclass(frozen=True)
class Options:
    """Each trial as a TensorBoard run: curves per epoch, nudges and rollbacks as text, an HParams summary."""

    folder: str = field(
        default="tensorboard",
        metadata=bounds(doc="the folder, inside the run directory, that holds one TensorBoard run per trial"),
    )

    def __post_init__(self) -> None:
        check_folder(self.folder, NAME)


class TrialBoard:
    """One trial's TensorBoard run: a writer, opened again (with a purge step) when the
    trial goes back to an earlier epoch."""

    def __init__(self, run_dir: Path, folder: Path):
        self.run_dir, self.folder, self.writer = run_dir, folder, None

    def open(self, purge_step: int | None = None) -> Any:
        """The writer, new if ``purge_step`` is given: TensorBoard drops the points it had at
        that step and after. Each file's name sorts after the ones before it."""
        from tensorboardX import SummaryWriter

        if self.writer is None or purge_step is not None:
            self.close()
            self.writer = SummaryWriter(
                str(real_folder(self.run_dir, self.folder, NAME)),
                purge_step=purge_step,
                filename_suffix=f".{time.time_ns()}",
                flush_secs=5,
            )
        return self.writer

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class RunBoard:
    """What the logger writes for one run."""

    def __init__(self, experiment: Any, options: Options):
        self.run_dir = Path(experiment.run_dir)
        self.root = self.run_dir / options.folder
        self.metric = experiment.spec.search.metric
        self.trials: dict[int, TrialBoard] = {}

    def trial(self, trial: int) -> TrialBoard:
        if trial not in self.trials:
            self.trials[trial] = TrialBoard(self.run_dir, self.root / f"t{trial:03d}")
        return self.trials[trial]

    def write(self, event: dict[str, Any], replayed: bool) -> None:
        kind = event["event"]
        if kind == "trial_start":  # (its first writer drops all that a run before a resume wrote)
            self.trial(event["trial"]).open(purge_step=1)
        elif kind == "trial_resume":  # it goes on from the epochs it kept: what was written beyond them goes
            self.trial(event["trial"]).open(purge_step=event["epoch"] + 1)
        elif kind == "epoch_end":
            writer, step = self.trial(event["trial"]).open(), event["epoch"] + 1
            for name, value in event.items():
                if name not in NOT_SCALARS and isinstance(value, numbers.Real) and not isinstance(value, bool):
                    writer.add_scalar(name, value, step)
            writer.flush()
        elif kind == "nudge":
            changes = ", ".join(f"{k} {c['old']:g} → {c['new']:g}" for k, c in event["changes"].items())
            text = f"{event['source']}: {changes}" + (f" ({event['reason']})" if event.get("reason") else "")
            self.trial(event["trial"]).open().add_text("nudges", text, event["epoch"] + 1)  # the first epoch it sets
        elif kind == "rollback":
            board = self.trial(event["trial"])
            board.open(purge_step=event["to_epoch"] + 1)  # the path it left is dropped from the curves
            text = (
                f"{event['source']}: from epoch {event['from_epoch']} back to epoch {event['to_epoch']}"
                f" ({event.get('reason') or event['snapshot']}); lr {event.get('lr_before')} → {event.get('lr_after')}"
            )
            board.open().add_text("rollbacks", text, event["to_epoch"] + 1)  # the first epoch trained again
        elif kind == "trial_complete":
            if not (replayed and (self.trial(event["trial"]).folder / "hparams").exists()):  # once a trial
                self.summarise(event)
            self.trial(event["trial"]).close()
        elif kind in ("trial_suspend", "interrupted") and "trial" in event:  # its run of the trial ends here
            self.trial(event["trial"]).close()

    def summarise(self, event: dict[str, Any]) -> None:
        """The HParams plugin's summary of an ended trial: its searched values against its best metric."""
        hparams = {name: _hparam(value) for name, value in (event.get("params") or {}).items()}
        score = event.get("score")
        metrics = {f"best/{self.metric}": float(score) if score is not None else math.nan}
        board = self.trial(event["trial"])
        writer = board.open()
        real_folder(self.run_dir, board.folder / "hparams", NAME)  # (where add_hparams writes)
        writer.add_hparams({**hparams, "state": event["state"]}, metrics, name="hparams")

    def close(self) -> None:
        for board in self.trials.values():
            board.close()


def _hparam(value: Any) -> bool | str | float | int:
    """A searched value as the HParams plugin holds one (a list, such as hidden sizes, as text)."""
    return value if isinstance(value, bool | str | float | int) else str(value)


_RUNS: dict[Path, RunBoard] = {}  # run directory -> what is open for it (a process may run several)


@hookimpl
def runner_event(experiment, event, replayed):
    options = experiment.logger(NAME)
    if options is None:
        return
    key, kind = Path(experiment.run_dir), event["event"]
    if kind == "experiment_start" and key in _RUNS:  # (a resume's replay starts with it)
        _RUNS.pop(key).close()
    if key not in _RUNS:
        _RUNS[key] = RunBoard(experiment, options)
    _RUNS[key].write(event, replayed)
    if kind == "experiment_complete" or (kind == "interrupted" and "trial" not in event):
        _RUNS.pop(key).close()


@hookimpl
def runner_register(registry):
    if importlib.util.find_spec("tensorboardX") is None:
        registry.add_unavailable("logger", NAME, INSTALL)
        return
    registry.add_logger(NAME, Options)
