"""Snapshots: durable files that load bit for bit, retention, corruption caught on load."""

from __future__ import annotations

import numpy as np
import pytest

from runner.backend import BackendState
from runner.engine.checkpoints import CheckpointOptions, CheckpointStore, SnapshotWriter
from runner.engine.experiment import load_dataset, trial_seed
from runner.engine.snapshot_files import CorruptSnapshot, read_snapshot
from runner.experiment_file.spec import trial_sections
from tests.conftest import run_file


def state(value: float) -> BackendState:
    return BackendState(
        arrays={"w": np.full((3, 2), value, np.float32), "perm": np.arange(5)},
        meta={"epoch": int(value), "rng": str(2**100 + int(value))},
    )


@pytest.fixture
def writer():
    w = SnapshotWriter()
    yield w
    w.close()


def test_a_snapshot_round_trips_exactly_and_leaves_no_temporary_file(tmp_path, writer):
    store = CheckpointStore(tmp_path / "t000", 0, CheckpointOptions(min_interval=0), writer)
    saved = store.save(
        state(1.5),
        epoch=1,
        step=10,
        reason="epoch",
        best=False,
        hyperparameters={"lr": 0.1},
        metrics={"val_loss": 0.5},
        loop={},
    )
    [durable] = store.collect(wait=True)
    assert durable == saved and saved.path.exists()
    loaded, meta = read_snapshot(saved.path)
    assert np.array_equal(loaded.arrays["w"], state(1.5).arrays["w"]) and loaded.arrays["w"].dtype == np.float32
    assert loaded.meta == {"epoch": 1, "rng": str(2**100 + 1)}
    assert meta == {
        "trial": 0,
        "epoch": 1,
        "step": 10,
        "reason": "epoch",
        "best": False,
        "hyperparameters": {"lr": 0.1},
        "metrics": {"val_loss": 0.5},
        "loop": {},
    }
    assert [p.name for p in (tmp_path / "t000").iterdir()] == [saved.path.name]


def test_keeps_the_last_k_and_the_best(tmp_path, writer):
    store = CheckpointStore(tmp_path, 0, CheckpointOptions(keep=2, min_interval=0), writer)
    for epoch in range(1, 7):
        store.save(
            state(epoch),
            epoch=epoch,
            step=epoch * 10,
            reason="epoch",
            best=epoch == 2,
            hyperparameters={},
            metrics={},
            loop={},
        )
        store.collect(wait=True)
    kept = sorted(p.name for p in tmp_path.iterdir())
    assert kept == [
        "e00002-s000000020-n000000.safetensors",
        "e00005-s000000050-n000000.safetensors",
        "e00006-s000000060-n000000.safetensors",
    ]
    assert store.best.epoch == 2
    assert [s.epoch for s, _, _ in store.ring] == [3, 4, 5, 6], "the in-memory ring holds the latest four"


def test_the_latest_two_suspensions_are_kept_for_the_members_that_take_them(tmp_path, writer):
    store = CheckpointStore(tmp_path, 0, CheckpointOptions(keep=1, min_interval=0, best=False), writer)
    for epoch in range(1, 9):
        reason = "suspend" if epoch % 2 == 0 else "epoch"
        store.save(
            state(epoch), epoch=epoch, step=epoch, reason=reason, best=False, hyperparameters={}, metrics={}, loop={}
        )
        store.collect(wait=True)
    assert sorted(p.name[:6] for p in tmp_path.iterdir()) == ["e00006", "e00008"], "8 is also the last"


@pytest.mark.parametrize("damage", ["truncate", "flip", "empty", "garbage"])
def test_a_damaged_snapshot_is_detected_with_a_clear_message(tmp_path, writer, damage):
    store = CheckpointStore(tmp_path, 0, CheckpointOptions(min_interval=0), writer)
    path = store.save(
        state(3.0), epoch=1, step=1, reason="epoch", best=False, hyperparameters={}, metrics={}, loop={}
    ).path
    store.collect(wait=True)
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "flip":
        offset = data.index(np.float32(3.0).tobytes())  # inside the array payload
        data[offset] ^= 0xFF
    elif damage == "empty":
        data = bytearray()
    else:
        data = bytearray(b"not a snapshot at all")
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptSnapshot, match=str(path)):
        read_snapshot(path)


def test_files_are_throttled_by_min_interval_and_the_best_is_written_at_the_end(tmp_path, writer):
    now = [0.0]
    store = CheckpointStore(tmp_path, 0, CheckpointOptions(min_interval=10, keep=5), writer, clock=lambda: now[0])
    written = []
    for epoch, (t, best) in enumerate([(4, True), (11, False), (15, True), (19, False), (22, False)], 1):
        now[0] = t
        store.save(
            state(epoch), epoch=epoch, step=epoch, reason="epoch", best=best, hyperparameters={}, metrics={}, loop={}
        )
        written += [s.epoch for s in store.collect(wait=True)]
    assert written == [2, 5], "a file 10 s after the start, then 10 s after that one"
    assert [s.epoch for s, _, _ in store.ring] == [2, 3, 4, 5], "every due snapshot is in memory"
    store.finish()
    [best] = store.collect(wait=True)
    assert (best.epoch, best.best) == (3, True) and store.best == best
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "e00002-s000000002-n000000.safetensors",
        "e00003-s000000003-n000000.safetensors",
        "e00005-s000000005-n000000.safetensors",
    ]


def test_a_write_error_is_reported_not_raised(tmp_path, writer):
    folder = tmp_path / "t000"
    store = CheckpointStore(folder, 0, CheckpointOptions(min_interval=0), writer)
    folder.mkdir()
    (folder / "e00001-s000000001-n000000.safetensors").mkdir()  # a folder where the file must go: rename fails
    store.save(state(1.0), epoch=1, step=1, reason="epoch", best=False, hyperparameters={}, metrics={}, loop={})
    [error] = store.collect(wait=True)
    assert isinstance(error, OSError)


def run(path, tmp_path):
    r = run_file(path, tmp_path)
    return r.plugins, r.spec, r.run_dir, r.events


def test_a_run_snapshots_each_epoch_and_a_snapshot_continues_bit_for_bit(write_experiment, tmp_path):
    changes = {"train": {"epochs": 4}, "checkpoint": {"keep": 10}, "search": {"space": None}}
    plugins, spec, run_dir, events = run(write_experiment(changes), tmp_path)
    snapshots = sorted((run_dir / "trials" / "t000").glob("*.safetensors"))
    assert len(snapshots) == 4
    assert [e["epoch"] for e in events if e["event"] == "checkpoint"] == [1, 2, 3, 4]

    # Continue from the epoch-2 snapshot with a fresh backend: epochs 3 and 4 come out identical.
    model, train, options = trial_sections(spec, {})
    dataset = load_dataset(spec, plugins)
    backend = plugins.registry.get("backend", "numpy")(
        model=model, train=train, options=options, data=dataset, seed=trial_seed(spec.seed, 0)
    )
    state_2, meta_2 = read_snapshot(snapshots[1])
    assert meta_2["epoch"] == 2
    backend.load_state(state_2)
    for epoch in (2, 3):
        backend.begin_epoch(epoch)
        for _ in range(backend.steps_per_epoch):
            backend.train_step()
    final, _ = read_snapshot(snapshots[3])
    for name, array in backend.state().arrays.items():
        assert np.array_equal(array, final.arrays[name]), name


def test_snapshot_schedule_follows_the_checkpoint_section(write_experiment, tmp_path):
    changes = {"train": {"epochs": 4}, "checkpoint": {"every_epochs": 2, "best": False}, "search": {"space": None}}
    _, _, _, events = run(write_experiment(changes), tmp_path)
    assert [(e["epoch"], e["reason"]) for e in events if e["event"] == "checkpoint"] == [(2, "epoch"), (4, "epoch")]
    changes = {"train": {"epochs": 3}, "checkpoint": {"every_epochs": 0, "best": True}, "search": {"space": None}}
    _, _, _, events = run(write_experiment(changes), tmp_path)
    snaps = [e for e in events if e["event"] == "checkpoint"]
    assert snaps and all(e["reason"] == "best" and e["best"] for e in snaps)


def test_every_steps_takes_snapshots_mid_epoch_that_continue_exactly(write_experiment, tmp_path):
    """Spirals quick: 3 steps an epoch; a snapshot every 2 steps lands mid-epoch at step 2, 4..."""
    changes = {
        "train": {"epochs": 2},
        "checkpoint": {"every_steps": 2, "every_epochs": 0, "best": False, "keep": 10},
        "search": {"space": None},
    }
    _, _, run_dir, events = run(write_experiment(changes), tmp_path)
    steps = [e["step"] for e in events if e["event"] == "checkpoint"]
    assert steps == [2, 4], "step 6 ends the trial's last epoch: no step snapshot there"
    [path] = (run_dir / "trials" / "t000").glob("e00000-s000000002-n*.safetensors")
    _, meta = read_snapshot(path)
    assert meta["reason"] == "steps" and meta["loop"]["partial"][0] == 2


def test_the_first_snapshot_outlives_the_ring_and_a_resume_forgets_what_only_memory_held(tmp_path, writer):
    """Collapse rollbacks reach the trial's first snapshot however many came since;
    ``forget_memory`` is what a resumed process has (``runner replay`` replays a resume)."""
    store = CheckpointStore(tmp_path, 0, CheckpointOptions(min_interval=3600, memory=2), writer)

    def save(value: float, step: int, reason: str, durable: bool = False) -> None:
        store.save(
            state(value), epoch=step // 10, step=step, reason=reason, best=False,
            hyperparameters={}, metrics={}, loop={"events": step}, durable=durable,
        )  # fmt: skip

    save(0.0, 0, "start")
    save(1.0, 10, "epoch", durable=True)
    for step in (20, 30, 40):
        save(step / 10, step, "epoch")
    store.collect(wait=True)
    assert store.find("last", upto_step=5)[1]["reason"] == "start", "past the ring of 2"
    assert store.find("last", upto_step=25)[1]["step"] == 10, "the file, newest at or before step 25"
    assert store.find("last", older=10)[1]["reason"] == "start", "the oldest of all"
    save(4.5, 45, "before_nudge")
    store.forget_memory()
    assert store.find("before_nudge") is None, "it had no file"
    assert store.find("last")[1]["step"] == 10 and store.find("last", upto_step=5) is None, "only the file is left"


def test_pruning_spares_the_newest_file_a_resume_can_start_from(tmp_path, writer):
    """A strategy trying a nudge every epoch writes a before-nudge file each time: with the
    last ``keep`` all of them, the epoch file behind them stays, or a resume would start over."""
    store = CheckpointStore(tmp_path, 0, CheckpointOptions(keep=2, min_interval=0, best=False), writer)
    saved = [(6, "before_nudge", None), (8, "before_nudge", None), (10, "epoch", 8)]  # a try from step 8 in progress
    saved += [(step, "before_nudge", None) for step in (12, 14, 16)]
    for step, reason, tried_at in saved:
        loop = {"events": step, "before_nudge_events": tried_at}
        store.save(
            state(step), epoch=1, step=step, reason=reason, best=False, hyperparameters={}, metrics={}, loop=loop
        )
        store.collect(wait=True)
    kept = sorted((read_snapshot(p)[1]["step"], read_snapshot(p)[1]["reason"]) for p in tmp_path.glob("*.safetensors"))
    assert kept == [(8, "before_nudge"), (10, "epoch"), (14, "before_nudge"), (16, "before_nudge")], (
        "the epoch file, and the before-nudge file its try would be reverted to"
    )
