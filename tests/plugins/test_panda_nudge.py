"""panda-nudge: babysits one run out of a learning rate far too high or far too low, reverts
what made things worse, yields to a person, and resumes exactly after a kill."""

from __future__ import annotations

import orjson
import pytest

from runner import SpecError
from runner.experiment_file.spec import parse
from tests.conftest import ROOT, deep_update, run_file
from tests.test_control_live import live  # noqa: F401  (a fixture)
from tests.test_resume import assert_resumed_from, outcome, resume, snapshots_to_resume, start

# The shipped example (lr 30, far too high), with the budget the fixed runs below get.
DIGITS = deep_update(orjson.loads((ROOT / "experiments" / "digits_panda.json").read_bytes()), {"train": {"epochs": 40}})


def run(tmp_path, changes: dict):
    """The example with ``changes``; without a strategy (``"strategy": None``), one fixed trial."""
    experiment = deep_update(DIGITS, changes)
    experiment["search"].setdefault("strategy", {"name": "grid"})
    path = tmp_path / "exp.json"
    path.write_bytes(orjson.dumps(experiment))
    return run_file(path, tmp_path)


def notes(events: list[dict], kind: str) -> list[dict]:
    return [e for e in events if e["event"] == "note" and e["kind"] == kind]


@pytest.fixture(scope="module", params=[30.0, 1e-4], ids=["lr-far-too-high", "lr-far-too-low"])
def babysat(request, tmp_path_factory):
    """The same file run with a fixed learning rate (grid over nothing: one trial) and babysat.
    The fixed run watches for no collapse: at lr 30 its loss leaps to hundreds of times its
    start in the first steps, which collapse detection answers with a tenfold cut, rescuing
    the fixed run too (``tests/test_collapse.py``); here it shows babysitting alone."""
    tmp = tmp_path_factory.mktemp("panda")
    fixed = run(tmp, {"train": {"lr": request.param}, "search": {"strategy": None}, "divergence": {"collapse": False}})
    panda = run(tmp, {"train": {"lr": request.param}})
    return request.param, fixed, panda


def test_it_reaches_95_percent_where_the_same_fixed_lr_run_does_not(babysat):
    lr, fixed, panda = babysat
    fixed_accs = [e["val_acc"] for e in fixed.events if e["event"] == "epoch_end"]
    assert max(fixed_accs) < 0.95
    if lr > 1:
        assert fixed.board[0].state == "diverged", "far too high: the fixed run diverges for good"
        assert notes(panda.events, "diverged"), "panda saw the divergence too, and survived it"
    result = panda.board[0]
    assert result.state == "completed" and result.best["val_acc"] >= 0.95
    trained = sum(e["event"] == "epoch_end" for e in panda.events)
    assert trained == 40, "the fixed run's budget: every epoch trained counts, those a revert undid too"
    finish = [e for e in panda.events if e["event"] == "finish"]
    assert len(finish) == 1 and "budget of 40 epochs" in finish[0]["reason"]


def test_every_try_is_judged_against_the_trend_and_a_worse_one_is_reverted(babysat):
    _, _, panda = babysat
    events = panda.events
    kept, reverted = notes(events, "keep"), notes(events, "revert")
    assert kept and reverted, "the log shows both outcomes"
    val_loss = {}  # the path's val_loss by epochs completed, as of each point in the log
    for i, e in enumerate(events):
        if e["event"] == "epoch_end":
            val_loss[e["epoch"] + 1] = e["val_loss"]
        if e["event"] == "note" and e["kind"] in ("keep", "revert"):
            assert e["after"] == val_loss[e["epoch"]], "judged on the epoch just trained"
            if e["kind"] == "keep":
                assert e["after"] < e["promised"], "kept: better than leaving things alone"
            else:
                assert e["after"] >= e["promised"], "reverted: no better than leaving things alone"
                back = events[i + 1]
                assert back["event"] == "rollback" and back["source"] == "strategy"
                assert back["snapshot"] == "before_nudge" and back["lr_after"] == pytest.approx(
                    e["old"] if e["setting"] == "lr" else back["lr_before"]
                )
    tries = [e for e in events if e["event"] == "nudge" and e["source"] == "strategy" and e["reason"].startswith("try")]
    assert len(tries) >= len(kept) + len(reverted) - 1  # every judged try was made (the last may be unjudged)


def test_a_space_is_refused_it_trains_one_model(plugins):
    raw = deep_update(DIGITS, {"search": {"space": {"train.lr": {"low": 1e-3, "high": 1.0, "scale": "log"}}}})
    with pytest.raises(SpecError, match=r"search.space: panda-nudge trains one model.*--from RUN_DIR"):
        parse(raw, plugins.registry)


BABYSIT = {
    "name": "panda-live",
    "data": {"name": "spirals", "points_per_class": 100},
    "train": {"epochs": 100_000, "optimizer": "momentum", "lr": 0.01},
    "search": {"strategy": {"name": "panda-nudge", "every": 1, "probe_epochs": 1, "cooldown": 5}, "metric": "val_loss"},
}


def test_a_persons_nudge_wins_and_pauses_the_automatic_ones(live):  # noqa: F811
    run = live(BABYSIT)
    run.until(lambda: [e for e in run.find("nudge", source="strategy")])  # the babysitter is at work
    document = run.document()
    document["lr"] = 0.0123
    run.write(document)
    mine = run.until(lambda: run.find("nudge", source="control"))[0]
    run.until(lambda: [e for e in run.find("epoch_end") if e["step"] > mine["step"]][5:])
    assert run.stop() == 0
    events = run.events()
    at = events.index(next(e for e in events if e["event"] == "nudge" and e["source"] == "control"))
    after = events[at + 1 :]
    epochs = [e for e in after if e["event"] == "epoch_end"]
    assert epochs[0]["lr"] == 0.0123, "in force from the next step"
    yielded = notes(after, "yield")
    assert yielded and "a person nudged lr to 0.0123" in yielded[0]["reason"]
    quiet = after[: after.index(epochs[5])]
    assert not [e for e in quiet if e["event"] in ("nudge", "rollback") and e.get("source") == "strategy"], (
        "no automatic nudge or revert during the cooldown: the try in progress was dropped, not reverted"
    )
    assert all(e["lr"] == 0.0123 for e in epochs[:5])


RESUMABLE = deep_update(
    BABYSIT,
    {
        "name": "panda-resume",
        "seed": 3,
        "train": {"epochs": 30, "lr": 0.5},
        "search": {"strategy": {"name": "panda-nudge", "every": 2, "probe_epochs": 2}},
        "checkpoint": {"min_interval": 0, "keep": 10},
    },
)


@pytest.fixture(scope="module")
def uninterrupted_panda(tmp_path_factory):
    proc, run_dir = start(tmp_path_factory.mktemp("panda-baseline"), "baseline", RESUMABLE)
    assert proc.returncode == 0, proc.stderr
    return run_dir


@pytest.mark.parametrize("kill", ["step:23", "step:45", "step:90"])
def test_killed_and_resumed_it_babysits_exactly_as_if_never_stopped(tmp_path, uninterrupted_panda, kill):
    events = [orjson.loads(x) for x in (uninterrupted_panda / "events.jsonl").read_bytes().splitlines()]
    assert notes(events, "keep") or notes(events, "revert"), "the run babysits: there is something to restore"
    proc, run_dir = start(tmp_path, "killed", RESUMABLE, kill=kill)
    assert proc.returncode == -9
    expected = snapshots_to_resume(run_dir)
    assert expected.keys() == {0} and expected[0] is not None, "killed after snapshots were written"
    resumed, trained = resume(run_dir)
    assert resumed.returncode == 0, resumed.stderr
    assert_resumed_from(run_dir, expected, trained)  # from the snapshot, not from scratch
    resumed_log = [orjson.loads(x) for x in (run_dir / "events.jsonl").read_bytes().splitlines()]
    at = next(i for i, e in enumerate(resumed_log) if e["event"] == "resume")
    reverts = [e for e in resumed_log[at:] if e["event"] == "rollback" and e["source"] == "strategy"]
    assert reverts, "each kill lands before a revert: the resumed run has a try to revert"
    assert all(e["snapshot"] == "before_nudge" for e in reverts), (
        "a try is reverted to its own snapshot, from disk if need be"
    )
    a, b = outcome(uninterrupted_panda), outcome(run_dir)
    assert a["trials"] == b["trials"]
    for name, (epoch, arrays) in a["finals"].items():
        assert b["finals"][name][0] == epoch
        assert all((arrays[k] == b["finals"][name][1][k]).all() for k in arrays)


POISON = """
import os
from runner.plugins.backends.numpy_mlp.backend import NumpyBackend
real, count = NumpyBackend.train_step, [0]

def train_step(self):  # the 26th step trained returns NaN: right after the first revert
    count[0] += 1
    return float("nan") if count[0] == 26 else real(self)

NumpyBackend.train_step = train_step
"""


def test_a_divergence_after_a_revert_never_rolls_forward_onto_the_path_left_behind(tmp_path):
    (tmp_path / "poison.py").write_text(POISON)
    path = tmp_path / "exp.json"
    path.write_bytes(orjson.dumps(deep_update(RESUMABLE, {"checkpoint": {"min_interval": 30}})))
    events = run_file(path, tmp_path, [str(tmp_path / "poison.py")]).events
    rollbacks = [e for e in events if e["event"] == "rollback"]
    assert [e["source"] for e in rollbacks][:2] == ["strategy", "divergence"]
    assert all(e["to_step"] <= e["from_step"] for e in rollbacks), "every rollback goes back, never forward"
    revert, blowup = rollbacks[:2]
    assert blowup["to_step"] <= revert["to_step"], "not onto the epochs of the reverted try"


def test_a_judge_the_backend_does_not_report_is_refused_when_the_file_is_read(plugins):
    raw = deep_update(DIGITS, {"search": {"strategy": {"name": "panda-nudge", "judge": "val_accuracy"}}})
    with pytest.raises(
        SpecError,
        match=r"search.strategy.judge: the backend does not report 'val_accuracy'; "
        r"it reports train_loss, val_loss, val_acc",
    ):
        parse(raw, plugins.registry)


def test_the_notebook_stays_small_on_a_long_run_and_a_plateau_is_still_seen():
    from types import SimpleNamespace

    from runner.plugins.strategies.panda_nudge import KEPT_SCORES, PandaBabysitter, PandaOptions

    sitter = PandaBabysitter(
        PandaOptions(moves=("momentum",), patience=6), "val_loss", "min", budget=10**6, live=("lr", "momentum")
    )
    trial = SimpleNamespace(epoch=0, hyperparameters={"lr": 0.1, "momentum": 0.0}, collapse_signs=())
    cuts = []
    for epoch in range(5000):
        trial.epoch = epoch + 1
        loss = 1.0 / (epoch + 1) if epoch < 4000 else 1.0  # learning, then flat for good
        for decision in sitter.epoch_end(trial, epoch, {"val_loss": loss}):
            if getattr(decision, "reason", "").startswith("plateau"):
                cuts.append(epoch)
    book = sitter.book
    assert len(book.scores) <= 2 * KEPT_SCORES and book.epochs == 5000
    assert cuts and 4000 < cuts[0] <= 4000 + 6 + 1, "the plateau after epoch 4000 is seen within its patience"
    sitter.rolled_back(SimpleNamespace(epoch=10, hyperparameters=trial.hyperparameters), {"source": "control"})
    assert book.epochs == 10 and book.scores == [], "a rollback behind what is kept forgets it all"
