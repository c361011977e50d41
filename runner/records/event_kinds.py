"""Every event runner writes to ``events.jsonl``: its name, the fields it may carry and what it means.

One place for the whole catalogue. ``EventLog.emit`` refuses a name that is not here (a bug,
caught where it is written), a test checks that every event a real run writes carries only
the fields listed, and ``docs/run-directory.md``'s table of events is generated from it
(``python -m runner.docs_tables --write``), so the docs and the code cannot drift apart.
Every event also has ``t`` (unix time) and ``event`` (its name).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EventKind:
    """One kind of event: ``fields`` it may carry (some only in some cases, as ``doc`` says);
    ``more``, when set, says what other fields it carries whose names depend on the run."""

    name: str
    fields: tuple[str, ...]
    doc: str
    more: str = ""


# A trial's result, as trial_complete (and trial_suspend, for its standing so far) writes it: TrialResult.to_json.
RESULT_FIELDS = (
    "trial",
    "state",
    "params",
    "score",
    "best",
    "final",
    "epochs",
    "seconds",
    "reason",
    "ends_experiment",
)

EVENTS: dict[str, EventKind] = {
    kind.name: kind
    for kind in (
        EventKind(
            "experiment_start",
            (
                "name",
                "seed",
                "run_dir",
                "base_dir",
                "plugins",
                "plugin_files",
                "runner_version",
                "metric",
                "mode",
                "planned_trials",
                "started_from",
            ),
            (
                "`name`, `seed`, `run_dir`, `base_dir` (the experiment file's folder), `plugins` (name: origin), "
                "`plugin_files` (the `--plugin` ones, which `resume` asks for again and never loads on its own), "
                "`runner_version`, `metric`, `mode`, `planned_trials` (null if the strategy does not know), "
                "`started_from` (with `runner start --from`: the earlier run's `run_dir`, `trial`, `params` and "
                "`score`, and with `--weights` the snapshot every trial starts from, `weights`: `path`, `snapshot`, "
                "`epoch`; else null)"
            ),
        ),
        EventKind(
            "trial_queued",
            ("queued", "params"),
            (
                "`queued` (the trial's id), `params`: the driver handed the trial to the executor; its `trial_start` "
                "follows when it begins (a resume starts a queued trial that never began)"
            ),
        ),
        EventKind(
            "trial_start",
            ("trial", "params", "seed", "config", "hyperparameters"),
            (
                "`trial`, `params` (the strategy's choices, by dotted path), `seed`, `config` (the full "
                "`model`/`train`/`backend` config), `hyperparameters` (live values)"
            ),
        ),
        EventKind(
            "epoch_end",
            ("trial", "epoch", "step", "train_loss", "seconds"),
            (
                "`trial`, `epoch` (from 0), `step` (steps so far), `train_loss` (mean over the epoch's batches), "
                "`val_loss`, `val_acc`, the live hyperparameters (`lr`, `momentum`, ...), `seconds`"
            ),
            more="the metrics the backend reports (val_loss, val_acc, ...) and the live settings (lr, momentum, ...)",
        ),
        EventKind(
            "nudge",
            ("trial", "epoch", "step", "changes", "source", "reason", "refusable_until", "order"),
            (
                '`trial`, `epoch`, `step` (the change is in force from the next step), `changes` (`{"lr": {"old": '
                '0.01, "new": 0.005}}`), `source` (`control`, `plugin`, `strategy`), `reason`; a person\'s nudge also '
                "`refusable_until` (the last step at which a divergence refuses it)"
            ),
        ),
        EventKind(
            "nudge_kept",
            ("trial", "order", "epoch", "step", "nudge_step", "asked"),
            (
                "`trial`, `order`, `epoch`, `step`, `nudge_step`, `asked` (the settings it set): a person's nudge "
                "trained through its `divergence.nudge_grace_steps` without diverging"
            ),
        ),
        EventKind(
            "nudge_refused",
            ("trial", "order", "epoch", "step", "nudge_step", "asked", "restored", "divergence", "reason"),
            (
                "`trial`, `order`, `epoch`, `step` (where training diverged), `nudge_step`, `asked` (the settings it "
                "set), `restored` (the same settings as before it, in force again), `divergence` (`kind`, `loss`, "
                "`threshold`), `reason`: a person's nudge that training refused; the `rollback` back to before it "
                "(`source` `control`, `snapshot` `before_nudge`) follows"
            ),
        ),
        EventKind(
            "checkpoint",
            ("trial", "path", "epoch", "step", "reason", "best", "rollbacks", "order"),
            (
                "`trial`, `path` (relative to the run directory), `epoch` (epochs completed), `step`, `reason` "
                "(`epoch`, `best`, `steps`, `interrupt`, `requested`, `before_nudge`: before a strategy's try or a "
                "person's nudge), `best`, `rollbacks` (the trial's so far when it was taken): written once the "
                "snapshot file is durable"
            ),
        ),
        EventKind(
            "control",
            ("read", "sha256", "orders"),
            (
                "`read` (how many versions of the control file were read, this one included), `sha256` (of the bytes "
                'read), `orders`: one per trial an order goes to, `{"order": "4.0", "trial": 0, "what": "lr=0.005", '
                '"action": null, "decision": {"kind": "Nudge", ...}}` (`trial` null: the next trial to start; '
                "`action`: the action's id; `decision`: what the loop applies)"
            ),
        ),
        EventKind(
            "control_error",
            ("message", "read", "sha256", "order", "trial", "epoch", "step"),
            (
                "`message`, and either `read`, `sha256` (a version of the control file that was refused: nothing in "
                "it applied) or `order` (an order that could not be carried out: with `read` when its trial was not "
                "running, with `trial`, `epoch` and `step` when the trial could not carry it out: no such snapshot, "
                "or it diverged first; "
                "with neither when the trial ended in its worker before the order got there)"
            ),
        ),
        EventKind(
            "pause",
            ("trial", "epoch", "step", "reason", "source", "order"),
            "`trial`, `epoch`, `step`, `reason`, `source`",
        ),
        EventKind(
            "unpause",
            ("trial", "epoch", "step", "reason", "source", "order"),
            "`trial`, `epoch`, `step`, `reason`, `source`",
        ),
        EventKind(
            "interrupted",
            ("trial", "epoch", "step", "between_trials"),
            "`trial`, `epoch`, `step` (or `between_trials`): Ctrl-C or SIGTERM stopped the run there",
        ),
        EventKind(
            "resume",
            ("trials", "notes", "runner_version", "settings", "orders"),
            (
                "`trials` (each interrupted trial and the snapshot it continues from, or null), `notes` (damaged "
                "files skipped), `runner_version`, `settings` (what `runner resume --set` put in force), `orders` "
                "(the nudge each trial that goes on carries out first, source `resume`)"
            ),
        ),
        EventKind(
            "trial_resume",
            ("trial", "epoch", "step", "hyperparameters", "snapshot"),
            (
                "`trial`, `epoch`, `step`, `hyperparameters`, `snapshot`: the trial goes on after a resume or a retry "
                "(its `trial_start` is earlier in the log)"
            ),
        ),
        EventKind(
            "trial_suspend",
            ("step", *RESULT_FIELDS),
            (
                "`trial`, `step`, and its standing as `trial_complete` gives a result: `state` (`suspended`), "
                "`params`, `score`, `best`, `final`, `epochs`, `seconds`, `reason`, `ends_experiment`. A `Suspend` "
                "ended this run of the trial with a durable snapshot; it waits until its strategy continues it"
            ),
        ),
        EventKind(
            "trial_continue",
            ("trial", "epoch", "reason", "orders"),
            (
                "`trial`, `epoch` (where it goes on from), `reason`, `orders` (what its strategy has it do first, "
                'each `{"order": "continue.3.41.0", "what": "rollback to epoch 4 of t005", "decision": {...}}`): '
                "its strategy continues a suspended trial; a `trial_resume` follows when it starts"
            ),
        ),
        EventKind(
            "trial_retry",
            ("trial", "attempt", "retries", "reason", "snapshot", "epoch", "step", "notes"),
            (
                "`trial`, `attempt` (from 1), `retries` (the limit), `reason` (`killed by SIGKILL`, `its Ray actor "
                "died: ...`), `snapshot` (the file it starts again from, or null: from scratch), `epoch`, `step`, "
                "`notes` (damaged files skipped): the trial's worker died and the trial starts again in a new one. "
                "The trial's events since that snapshot stay in the log, as a rollback's do"
            ),
        ),
        EventKind(
            "checkpoint_error",
            ("trial", "message"),
            "`trial`, `message`: a snapshot could not be written; training goes on",
        ),
        EventKind(
            "replay",
            ("of", "replayed_trial", "orders", "resumes"),
            (
                "`of` (the run directory replayed), `replayed_trial`, `orders` (the orders from outside the trial it "
                "delivers: a person's, the pruner's, `runner resume --set`'s), `resumes` (the interruptions it "
                "replays): `runner replay` begins, after its `experiment_start`"
            ),
        ),
        EventKind(
            "replay_check",
            ("identical", "events", "snapshots", "parted", "undelivered"),
            (
                "`identical` (the trial's events and the snapshot files both kept are the original's, bit for "
                "bit), `events` (compared), `snapshots` (files compared), `parted` (null, or where the replay "
                "parts from the original: `epoch`, `step`, `event`, `what` differs, `matched_step`, the last "
                "step that still matched), `undelivered` (orders the replay never reached)"
            ),
        ),
        EventKind(
            "divergence",
            (
                "trial",
                "kind",
                "epoch",
                "step",
                "loss",
                "threshold",
                "lr",
                "rollbacks",
                "seen",
                "since_epoch",
                "since_step",
            ),
            (
                "`trial`, `kind` (`non_finite_loss`, `loss_spike`, `non_finite_val_loss`, `val_loss_spike`, "
                "`non_finite_parameters`, `collapse`), `epoch`, `step`, `loss`, `threshold` (what a spike or a loss "
                "jump exceeded), `lr`, `rollbacks` (so far); a `collapse` adds `seen` (its signs: `loss_jump` "
                "`{first_loss, steps}`, `dead_units` `{layer: fraction}`, `chance` `{val_acc, val_loss, chance, "
                "chance_loss, best_val_acc}`) and `since_epoch`, `since_step` (where it began: the rollback goes "
                "back to a snapshot taken there or earlier)"
            ),
        ),
        EventKind(
            "rollback",
            (
                "trial",
                "to_epoch",
                "to_step",
                "from_epoch",
                "from_step",
                "snapshot",
                "reason",
                "source",
                "lr_before",
                "lr_after",
                "reshuffled",
                "rollbacks",
                "order",
                "donor",
                "donor_snapshot",
                "changes",
            ),
            (
                "`trial`, `to_epoch`, `to_step`, `from_epoch`, `from_step`, `snapshot` (its reason: `epoch`, `best`, "
                "`steps`, `start`, `before_nudge`, `resume`, `interrupt`, `exploit`), `reason`, `source`, "
                "`lr_before`, `lr_after`, `reshuffled`, `rollbacks`. A rollback to another trial's snapshot "
                "(population-based training's exploit) also has `donor` (that trial), `donor_snapshot` (its file, in "
                'the run directory) and `changes` (each live setting, `{"old": .., "new": ..}`)'
            ),
        ),
        EventKind(
            "prune",
            ("trial", "epoch", "step", "reason", "source", "order", "rung"),
            (
                "`trial`, `epoch`, `step`, `reason`, `source`: the trial ends `pruned`. A pruner's verdict "
                "(`search.pruner`) has `source` `pruner`, the `order` that carried it and the `rung` (epochs "
                "trained) it judged at"
            ),
        ),
        EventKind(
            "stop",
            ("trial", "epoch", "step", "reason", "source", "experiment", "order"),
            (
                "`trial`, `epoch`, `step`, `reason`, `source`, `experiment` (true if it ends the run); a `stop` "
                "without `trial` is the control file ending the run between trials"
            ),
        ),
        EventKind(
            "finish",
            ("trial", "epoch", "step", "reason", "source"),
            (
                "`trial`, `epoch`, `step`, `reason`, `source`: a `Finish` decision ended the trial as `completed` "
                "before its last epoch (panda-nudge's budget is spent)"
            ),
        ),
        EventKind(
            "note",
            ("trial", "epoch", "step", "kind", "reason", "source"),
            (
                "`kind`, `reason`, `source`, and the note's own fields: why a strategy or plugin did what it did. A "
                "strategy's note between trials (`Strategy.note`) has no `trial`; a `Note` decision from a trial's "
                "babysitter or a plugin has `trial`, `epoch`, `step`. The built-in kinds are listed with the "
                "strategies and pruners that write them"
            ),
            more="the note's own fields",
        ),
        EventKind(
            "trial_complete",
            (*RESULT_FIELDS, "traceback"),
            (
                "`trial`, `state` (`completed`, `diverged`, `pruned`, `stopped`, `failed`), `params`, `score` (best "
                "value of the metric), `best` (metrics of the best epoch), `final` (metrics of the last epoch), "
                "`epochs`, `seconds`, `reason`, `ends_experiment`; `traceback` when `failed` by an error (a trial "
                "whose worker died too often is `failed` as its newest snapshot left it)"
            ),
        ),
        EventKind(
            "experiment_complete",
            ("trials", "best_trial", "stopped_early"),
            "`trials`, `best_trial`, `stopped_early`",
        ),
    )
}


def unknown_fields(record: dict) -> list[str]:
    """The fields of a written event that its kind does not list (``t`` and ``event`` aside);
    none for a kind whose other fields depend on the run (``more``) beyond those it lists."""
    kind = EVENTS.get(record.get("event", ""))
    if kind is None:
        return [f"event {record.get('event')!r}"]
    if kind.more:
        return []
    return sorted(set(record) - {"t", "event", *kind.fields})
