"""The plugin contract: every hook the runner calls, in the order a run calls them.

Every hook is prefixed ``runner_`` and called with keyword arguments, so an implementation
may accept any subset of a hook's arguments, and a hook may gain an argument later without
breaking older plugins. Objects passed to hooks (``trial``, ``experiment``) are owned by the
runner: read them, do not change them. Changes to a run go through returned decisions
(``Nudge``, ``Stop``, ``Prune``), which the loop alone applies.

A plugin's own options come from the experiment file's ``plugins`` section: declare them in
``runner_register`` (``registry.add_options("my_logger", Options)``, a frozen dataclass) and
read them in any hook with ``experiment.options("my_logger")`` or ``trial.options("my_logger")``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from runner.decisions import Decision
    from runner.engine.divergence import DivergenceEvent
    from runner.engine.experiment import Experiment
    from runner.registry import Registry
    from runner.report import ReportFigure, RunView
    from runner.trial import Trial, TrialResult

hookspec = pluggy.HookspecMarker("runner")


# --------------------------------------------------------------------------------------
# Set-up
# --------------------------------------------------------------------------------------


@hookspec
def runner_register(registry: Registry) -> None:
    """Add backends, strategies, pruners, datasets and executors by name.

    Called once per run, when the plugin manager is built, before the experiment file is
    validated (validation needs to know every plugin's options); and once in each worker
    process of an executor that runs trials elsewhere, which builds its own manager. Call
    ``registry.add_backend(cls)``, ``add_strategy(cls)``, ``add_pruner(cls)``,
    ``add_dataset(obj)`` or ``add_executor(cls)``; two plugins registering the same name is
    an error. A plugin that only implements hooks declares the options it takes from the experiment file with
    ``registry.add_options(name, Options)`` (a frozen dataclass, fields with defaults and
    ``runner.bounds``): the file's ``plugins.<name>`` is checked against it before anything
    runs, and hooks read the result with ``experiment.options(name)`` or ``trial.options(name)``.
    """


# --------------------------------------------------------------------------------------
# The experiment
# --------------------------------------------------------------------------------------


@hookspec
def runner_experiment_start(experiment: Experiment) -> None:
    """Called once, after the run directory exists and before the first trial (and once
    more when ``runner resume`` continues the run).

    ``experiment.spec`` is the validated experiment file, ``experiment.run_dir`` the run
    directory, ``experiment.options(name)`` the options declared as ``name`` with
    ``registry.add_options``, as the file's ``plugins`` section set them. Results are ignored.
    """


@hookspec
def runner_experiment_complete(experiment: Experiment, results: list[TrialResult]) -> None:
    """Called once at the end of a run, after ``results.json`` is written.

    ``results`` is the leaderboard: every trial, best first by the experiment's metric.
    Also called when the run ends early (a ``Stop(experiment=True)``). Results are ignored.
    """


# --------------------------------------------------------------------------------------
# A trial
# --------------------------------------------------------------------------------------


@hookspec
def runner_trial_start(trial: Trial) -> None:
    """Called before a trial's first training step, where the trial runs, and again when a
    resumed run continues the trial (``trial.epoch`` and ``trial.step`` say from where).

    ``trial.params`` are the strategy's choices, ``trial.config`` the full config and
    ``trial.hyperparameters`` the live values in force; ``trial.options(name)`` gives a
    plugin's options (``registry.add_options``), in every hook that receives the trial,
    wherever it runs. Results are ignored.
    """


@hookspec
def runner_epoch_end(trial: Trial, epoch: int, metrics: dict[str, float]) -> Decision | list[Decision] | None:
    """Called after each epoch's evaluation, where the trial runs.

    ``epoch`` counts from 0; ``metrics`` holds ``train_loss``, ``val_loss``, ``val_acc``,
    ``lr``, ``momentum`` and ``seconds`` (plus any metric the backend adds). Every
    implementation is called; each may return None, a decision or a list of decisions
    (``Nudge``, ``Rollback``, ``Stop``, ``Prune``, ``Finish``, ``Suspend``, ``Note``), which the loop
    applies in plugin call order before the next epoch.
    """


@hookspec(firstresult=True)
def runner_divergence(trial: Trial, event: DivergenceEvent, experiment: Experiment) -> Decision | None:
    """Called when training diverges: a non-finite or spiking training loss (checked each
    step), or a non-finite or exploding validation loss (checked each epoch); a non-finite
    parameter found when a snapshot is taken; a collapse (kind ``collapse``: a loss jump,
    dead units or accuracy back at chance, ``runner.engine.collapse``). Not called for a divergence within
    ``divergence.nudge_grace_steps`` steps of a person's nudge (the control file, ``runner
    nudge``): the loop refuses that nudge itself, whatever plugins are installed (a
    ``nudge_refused`` event, then a ``rollback`` with source ``control`` to the snapshot from
    just before it; no lr cut, not counted in ``trial.divergence_rollbacks``), unless that
    snapshot is gone (its file damaged or pruned before a resume).

    ``event`` says what was seen (``kind``, ``epoch``, ``step``, ``loss``, ``threshold``; for a
    collapse, ``seen`` and where it began, ``since_epoch`` and ``since_step``: a rollback should
    go back there or earlier, ``Rollback(upto_step=event.since_step)``);
    ``trial.divergence_rollbacks`` counts the rollbacks that answered a divergence so far
    (``trial.recent_rollbacks`` those since an epoch last trained through, ``trial.rollbacks``
    all rollbacks, a person's and a strategy's included); ``experiment.spec.divergence`` holds
    the experiment's divergence options. Stops at the first non-None result, which decides
    what happens: ``Rollback`` restores a snapshot and training goes on; ``Stop`` or
    ``Prune`` end the trial in that state. With no answer the trial ends as ``diverged``.
    The built-in ``rollback`` plugin answers last (``trylast``), so a plugin of yours is
    asked first and can replace its policy.
    """


@hookspec
def runner_nudge_applied(trial: Trial, change: dict[str, Any], source: str) -> None:
    """Called after a nudge took effect, before the next training step.

    ``change`` maps each hyperparameter to ``{"old": .., "new": ..}``; ``source`` says who
    asked (``plugin``, ``strategy``, ``control``: a person through the control file, ``resume``:
    a person's ``runner resume --set``). Results are ignored.
    """


@hookspec
def runner_checkpoint_saved(trial: Trial, checkpoint: dict[str, Any]) -> None:
    """Called after a snapshot of a trial is durable on disk.

    ``checkpoint`` describes it: ``path``, ``epoch``, ``step``, ``reason``. Results are
    ignored.
    """


@hookspec
def runner_trial_complete(trial: Trial, result: TrialResult) -> None:
    """Called when a trial has ended, whatever the way: ``result.state`` is ``completed``,
    ``diverged``, ``pruned``, ``stopped`` or ``failed``. Called where the trial ran, or in
    the driver for a trial whose worker died too often. Results are ignored."""


# --------------------------------------------------------------------------------------
# The run's events
# --------------------------------------------------------------------------------------


@hookspec
def runner_event(experiment: Experiment, event: dict[str, Any], replayed: bool) -> None:
    """Called in the driver with each event the run writes to ``events.jsonl``, in the log's
    order, wherever its trial ran (in this process, a worker process, a Ray actor): the whole
    run in one place, for a logger (``registry.add_logger``) to pass on. A plugin that
    registered loggers is called only when the experiment lists one of them.

    ``event`` is the record as written (``docs/run-directory.md`` lists the kinds and their
    fields); do not change it. Called on a thread of its own, after the event is written, so
    a slow call never holds up training; the run waits for the calls still to make only at
    its end. ``runner resume`` cuts the log back to where the run continues, then calls it
    first with every event the log keeps, from its ``experiment_start`` on (``replayed``
    True: a logger rebuilds from them what a crash may have cost it, or skips them), then
    with those written from then on: the first is ``resume``, and each trial that goes on
    starts with ``trial_resume`` (its ``epoch``: the epochs it keeps). An implementation that
    raises is not called again this run, and the person is told why. Results are ignored.
    """


# --------------------------------------------------------------------------------------
# Reports
# --------------------------------------------------------------------------------------


@hookspec
def runner_report_figures(run: RunView) -> ReportFigure | list[ReportFigure] | None:
    """Called by ``runner report``, in its own process (never during a run), after the
    built-in figures are drawn: return figures to add to the report, or None.

    ``run`` is the run directory as its event log stands (``runner.report.RunView``): the
    trials best first, each with its result, its ``epoch_end`` events and its marks
    (nudges, rollbacks, divergences); the strategy's name; the ``note`` events; the search
    space. A figure is a ``runner.report.ReportFigure(name, title, figure, caption)`` holding a
    ``matplotlib.figure.Figure`` (the object API, never pyplot: reports are drawn
    headless); ``runner.report.figures`` has the helpers the built-in ones use. A plugin
    whose implementation raises is named in the report, and the rest is still written.
    """
