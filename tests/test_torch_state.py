"""runner.torch_state: a PyTorch model, its optimizer and its random streams saved as
arrays and JSON, and restored so that training continues bit for bit."""

from __future__ import annotations

import pickle
import re

import numpy as np
import orjson
import pytest

from runner.engine.snapshot_files import read_snapshot, write_snapshot

torch = pytest.importorskip("torch")
from runner.torch_state import capture, check_arrays, copy_arrays_into, restore, tensors_to_arrays  # noqa: E402

pytestmark = pytest.mark.torch
nn = torch.nn

OPTIMIZERS = {
    "sgd": lambda p: torch.optim.SGD(p, lr=0.1),
    "sgd-momentum": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9),
    "sgd-nesterov": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True),
    "sgd-weight-decay": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.5, weight_decay=1e-2),
    "adam": lambda p: torch.optim.Adam(p, lr=1e-2),
    "adam-amsgrad": lambda p: torch.optim.Adam(p, lr=1e-2, amsgrad=True, weight_decay=1e-3),
    "adamw": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1),
    "rmsprop": lambda p: torch.optim.RMSprop(p, lr=1e-3),
    "rmsprop-momentum-centered": lambda p: torch.optim.RMSprop(p, lr=1e-3, momentum=0.9, centered=True),
}
BEFORE, AFTER = 3, 4  # steps before the capture, and after it


class Net(nn.Module):
    """Conv, batch norm, an optional hidden layer and dropout: every kind of state."""

    def __init__(self, seed: int, channels: int = 4, extra: bool = True, dropout: float = 0.0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.conv1 = nn.Conv2d(1, channels, 3)
        self.bn1 = nn.BatchNorm2d(channels)
        self.fc1 = nn.Linear(channels * 36, 8)
        self.fc2 = nn.Linear(8, 8) if extra else None
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(8, 3)

    def forward(self, x):
        h = torch.relu(self.fc1(torch.relu(self.bn1(self.conv1(x))).flatten(1)))
        if self.fc2 is not None:
            h = torch.relu(self.fc2(h))
        return self.out(self.drop(h))


def batches(n: int) -> list[tuple]:
    generator = torch.Generator().manual_seed(0)
    return [
        (torch.randn(16, 1, 8, 8, generator=generator), torch.randint(0, 3, (16,), generator=generator))
        for _ in range(n)
    ]


DATA = batches(BEFORE + AFTER)


def train(model, optimizer, data) -> list[dict]:
    """Train on ``data``; every parameter and buffer after each step (copies)."""
    model.train()
    seen = []
    for x, y in data:
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        seen.append({k: v.clone() for k, v in model.state_dict().items()})
    return seen


def started(make, seed: int = 0, **net) -> tuple:
    model = Net(seed, **net)
    optimizer = make(model.parameters())
    train(model, optimizer, DATA[:BEFORE])
    return model, optimizer


def assert_same_tensors(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key


def assert_same_optimizer(a, b) -> None:
    """Bit for bit: every slot of every parameter, and the param groups (types included)."""
    da, db = a.state_dict(), b.state_dict()
    assert da["param_groups"] == db["param_groups"]
    assert [type(v) for g in da["param_groups"] for v in g.values()] == [
        type(v) for g in db["param_groups"] for v in g.values()
    ]
    assert da["state"].keys() == db["state"].keys()
    for index, slots in da["state"].items():
        other = db["state"][index]
        assert slots.keys() == other.keys()
        for slot, value in slots.items():
            if isinstance(value, torch.Tensor):
                assert value.dtype == other[slot].dtype and value.device == other[slot].device, slot
                assert torch.equal(value, other[slot]), (index, slot)
            else:
                assert value == other[slot], (index, slot)


def frozen(state) -> dict:
    return {k: v.copy() for k, v in state.arrays.items()}


def assert_arrays_equal(arrays: dict, expected: dict) -> None:
    assert arrays.keys() == expected.keys()
    for key, value in expected.items():
        assert arrays[key].dtype == value.dtype and np.array_equal(arrays[key], value), key


# -- the promise: training continues bit for bit --------------------------------------------


@pytest.mark.parametrize("make", OPTIMIZERS.values(), ids=list(OPTIMIZERS))
def test_a_restored_model_and_optimizer_continue_bit_for_bit(make):
    model, optimizer = started(make)
    saved = capture(model, optimizer)
    assert any(k.startswith("module/bn1.running_") for k in saved.arrays) and "module/bn1.num_batches_tracked" in (
        saved.arrays
    )
    expected = train(model, optimizer, DATA[BEFORE:])

    fresh = Net(seed=1)  # other weights, an optimizer with no state yet
    fresh_optimizer = make(fresh.parameters())
    parameters = list(fresh.parameters())
    restore(saved, fresh, fresh_optimizer)
    assert all(a is b for a, b in zip(fresh.parameters(), parameters, strict=True))  # in place
    got = train(fresh, fresh_optimizer, DATA[BEFORE:])
    for a, b in zip(got, expected, strict=True):
        assert_same_tensors(a, b)
    assert_same_optimizer(fresh_optimizer, optimizer)

    restore(saved, model, optimizer)  # a rollback: into the optimizer that trained on
    again = train(model, optimizer, DATA[BEFORE:])
    for a, b in zip(again, expected, strict=True):
        assert_same_tensors(a, b)
    assert_same_optimizer(fresh_optimizer, optimizer)


@pytest.mark.parametrize("make", [OPTIMIZERS["sgd-momentum"], OPTIMIZERS["adam-amsgrad"]], ids=["sgd", "adam"])
def test_a_capture_is_a_copy_and_a_restore_does_not_share_it(make):
    model, optimizer = started(make)
    saved = capture(model, optimizer)
    before = frozen(saved)
    train(model, optimizer, DATA[BEFORE:])
    torch.rand(3)  # the global generator moves on too
    assert_arrays_equal(saved.arrays, before)

    restore(saved, model, optimizer)
    train(model, optimizer, DATA[BEFORE:])  # training after a restore must not write into the state either
    assert_arrays_equal(saved.arrays, before)


def test_dropout_continues_bit_for_bit_from_the_restored_global_generator():
    model, optimizer = started(OPTIMIZERS["adam"], dropout=0.5)
    saved = capture(model, optimizer)
    expected = train(model, optimizer, DATA[BEFORE:])

    fresh = Net(seed=7, dropout=0.5)  # seeding moved the global generator elsewhere
    fresh_optimizer = OPTIMIZERS["adam"](fresh.parameters())
    restore(saved, fresh, fresh_optimizer)
    for a, b in zip(train(fresh, fresh_optimizer, DATA[BEFORE:]), expected, strict=True):
        assert_same_tensors(a, b)

    torch.manual_seed(7)
    restore(saved, fresh, fresh_optimizer, rng=False)  # the dropout masks now differ
    assert not torch.equal(train(fresh, fresh_optimizer, DATA[BEFORE:])[-1]["out.weight"], expected[-1]["out.weight"])


def test_named_generators_are_saved_and_restored_and_must_match_by_name():
    model = Net(seed=0)
    noise = torch.Generator().manual_seed(3)
    torch.rand(5, generator=noise)
    saved = capture(model, generators={"noise": noise}, rng=False)
    assert "rng/noise" in saved.arrays and "rng/torch_cpu" not in saved.arrays
    expected = torch.rand(5, generator=noise)

    other = torch.Generator().manual_seed(99)
    restore(saved, Net(seed=1), generators={"noise": other}, rng=False)
    assert torch.equal(torch.rand(5, generator=other), expected)

    with pytest.raises(ValueError, match=re.escape("in it but not passed ['rng/noise']")):
        restore(saved, Net(seed=1), rng=False)
    with pytest.raises(ValueError, match=re.escape("passed but not in it ['rng/dropout']")):
        restore(saved, Net(seed=1), generators={"noise": other, "dropout": other}, rng=False)
    with pytest.raises(ValueError, match="captured with rng=False"):
        restore(saved, Net(seed=1), generators={"noise": other})


# -- refusals: a ValueError that names the misfit, and nothing restored ---------------------


def snapshot_of(model, optimizer) -> tuple:
    packed = optimizer.state_dict() if optimizer is not None else {"state": {}, "param_groups": []}
    return (
        {k: v.clone() for k, v in model.state_dict().items()},
        {
            i: {s: v.clone() if isinstance(v, torch.Tensor) else v for s, v in slots.items()}
            for i, slots in packed["state"].items()
        },
        [dict(g) for g in packed["param_groups"]],
        torch.get_rng_state(),
    )


def assert_untouched(model, optimizer, before: tuple) -> None:
    params, state, groups, rng = before
    assert_same_tensors(model.state_dict(), params)
    after = optimizer.state_dict() if optimizer is not None else {"state": {}, "param_groups": []}
    assert after["param_groups"] == groups
    assert after["state"].keys() == state.keys()
    for index, slots in state.items():
        assert_same_tensors(after["state"][index], slots)
    assert torch.equal(torch.get_rng_state(), rng)


def refused(saved, model, optimizer, match: str, **kwargs) -> None:
    """``restore`` raises ValueError matching ``match`` and changes nothing."""
    torch.manual_seed(1234)  # a global generator state unlike the saved one
    before = snapshot_of(model, optimizer)
    with pytest.raises(ValueError, match=match):
        restore(saved, model, optimizer, **kwargs)
    assert_untouched(model, optimizer, before)


def test_a_module_with_other_shapes_is_refused_naming_the_parameter():
    saved = capture(*started(OPTIMIZERS["adam"], channels=4))
    wide, wide_optimizer = started(OPTIMIZERS["adam"], seed=1, channels=8)  # trained: it has optimizer state
    refused(
        saved,
        wide,
        wide_optimizer,
        re.escape("module/conv1.weight: expected float32 (8, 1, 3, 3), got float32 (4, 1, 3, 3)"),
    )


def test_a_module_missing_a_layer_is_refused_naming_the_arrays():
    saved = capture(*started(OPTIMIZERS["sgd-momentum"]))
    small, small_optimizer = started(OPTIMIZERS["sgd-momentum"], seed=1, extra=False)
    refused(
        saved,
        small,
        small_optimizer,
        re.escape("arrays under 'module/' do not fit: missing [], unexpected ['module/fc2.bias', 'module/fc2.weight']"),
    )


def test_another_optimizer_class_is_refused_and_nothing_is_restored():
    saved = capture(*started(OPTIMIZERS["adam"]))
    model, optimizer = started(OPTIMIZERS["adamw"], seed=1)  # the module fits; only the optimizer does not
    refused(
        saved,
        model,
        optimizer,
        re.escape("the state is of a torch.optim.adam.Adam optimizer, not of a torch.optim.adamw.AdamW"),
    )


def test_an_optimizer_with_other_slots_or_parameters_is_refused():
    saved = capture(*started(OPTIMIZERS["adam"]))
    model, optimizer = started(lambda p: torch.optim.Adam(p, lr=1e-2, amsgrad=True), seed=1)
    refused(
        saved,
        model,
        optimizer,
        re.escape(
            "optimizer/conv1.weight: the state has slots ['exp_avg', 'exp_avg_sq', 'step'], "
            "this optimizer ['exp_avg', 'exp_avg_sq', 'max_exp_avg_sq', 'step']"
        ),
    )
    model = Net(seed=1)
    partial = torch.optim.Adam(model.out.parameters(), lr=1e-2)
    refused(saved, model, partial, re.escape("optimizer param group 0 does not fit: the state's has ['conv1.weight'"))
    refused(saved, model, None, "pass the optimizer to restore it into")


def test_damaged_optimizer_arrays_and_missing_generators_are_refused():
    model, optimizer = started(OPTIMIZERS["rmsprop-momentum-centered"])
    saved = capture(model, optimizer)
    target, target_optimizer = started(OPTIMIZERS["rmsprop-momentum-centered"], seed=1)

    arrays = dict(saved.arrays)
    del arrays["optimizer/fc1.bias/grad_avg"]
    damaged = type(saved)(arrays=arrays, meta=saved.meta)
    refused(damaged, target, target_optimizer, re.escape("missing ['optimizer/fc1.bias/grad_avg'], unexpected []"))

    arrays = dict(saved.arrays, **{"optimizer/fc1.bias/grad_avg": np.zeros(8, np.float64)})
    damaged = type(saved)(arrays=arrays, meta=saved.meta)
    refused(damaged, target, target_optimizer, re.escape("optimizer/fc1.bias/grad_avg: expected float32"))

    noise = torch.Generator()
    refused(
        saved, target, target_optimizer, re.escape("passed but not in it ['rng/noise']"), generators={"noise": noise}
    )


# -- no pickle, JSON-safe meta, a disk round trip -------------------------------------------


def test_it_never_unpickles_and_survives_the_snapshot_files(tmp_path, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("pickle or torch.load was used")

    for target, name in [(torch, "load"), (pickle, "load"), (pickle, "loads"), (pickle, "dump"), (pickle, "dumps")]:
        monkeypatch.setattr(target, name, forbidden)

    model, optimizer = started(OPTIMIZERS["adam"], dropout=0.3)
    saved = capture(model, optimizer)
    expected = train(model, optimizer, DATA[BEFORE:])
    path = tmp_path / "trials" / "t000" / "snapshot.safetensors"
    write_snapshot(path, saved, {"trial": 0}, within=tmp_path)
    loaded, document = read_snapshot(path)
    assert document["trial"] == 0 and loaded.meta == saved.meta
    assert_arrays_equal(loaded.arrays, saved.arrays)

    fresh = Net(seed=5, dropout=0.3)
    fresh_optimizer = OPTIMIZERS["adam"](fresh.parameters())
    restore(loaded, fresh, fresh_optimizer)
    for a, b in zip(train(fresh, fresh_optimizer, DATA[BEFORE:]), expected, strict=True):
        assert_same_tensors(a, b)


def test_meta_is_json_and_odd_hyperparameters_come_back_exactly():
    model = Net(seed=0)
    optimizer = torch.optim.Adam(model.parameters(), lr=torch.tensor(0.01), betas=(0.8, 0.9), foreach=False)
    optimizer.param_groups[0]["big"] = 2**70
    optimizer.param_groups[0]["limit"] = float("inf")
    train(model, optimizer, DATA[:BEFORE])
    saved = capture(model, optimizer)
    assert orjson.loads(orjson.dumps(saved.meta)) == saved.meta  # JSON as it is, nothing lost
    group = saved.meta["optimizer"]["param_groups"][0]
    assert group["betas"] == [0.8, 0.9] and group["big"] == {"int": str(2**70)} and group["limit"] == {"float": "inf"}
    assert group["lr"] == {"tensor": "optimizer/param_groups/0/lr"}
    assert saved.meta["optimizer"]["class"] == "torch.optim.adam.Adam"

    fresh = Net(seed=1)
    fresh_optimizer = torch.optim.Adam(fresh.parameters(), lr=torch.tensor(0.5), foreach=False)
    restore(type(saved)(arrays=saved.arrays, meta=orjson.loads(orjson.dumps(saved.meta))), fresh, fresh_optimizer)
    restored = fresh_optimizer.param_groups[0]
    assert restored["betas"] == (0.8, 0.9) and restored["big"] == 2**70 and restored["limit"] == float("inf")
    assert isinstance(restored["lr"], torch.Tensor) and restored["lr"].item() == pytest.approx(0.01)
    assert_same_optimizer(fresh_optimizer, optimizer)


@pytest.mark.parametrize(
    "value, kind", [({"warmup": 3}, "builtins.dict"), (np.float32(0.5), "numpy.float32"), (object(), "builtins.object")]
)
def test_a_hyperparameter_json_cannot_hold_is_refused_by_name(value, kind):
    model = Net(seed=0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    optimizer.param_groups[0]["schedule"] = value
    with pytest.raises(ValueError, match=re.escape(f"optimizer/param_groups/0/schedule: a {kind} cannot be saved")):
        capture(model, optimizer)


def test_a_module_with_extra_state_is_refused():
    class Counter(nn.Linear):
        def get_extra_state(self):
            return {"calls": 1}

        def set_extra_state(self, state):
            pass

    with pytest.raises(ValueError, match=re.escape("module/_extra_state: a dict (a module's extra state)")):
        capture(Counter(2, 2))


# -- the low-level pieces -------------------------------------------------------------------


def test_tensors_to_arrays_and_back_with_a_dtype_numpy_lacks():
    tensors = {
        "w": torch.randn(3, 2, dtype=torch.bfloat16),
        "t": torch.randn(4, dtype=torch.float64)[::2],  # not contiguous
        "n": torch.tensor(7),
    }
    arrays = tensors_to_arrays(tensors, "param/")
    assert sorted(arrays) == ["param/n", "param/t", "param/w"]
    assert arrays["param/w"].dtype == np.uint16 and arrays["param/n"].shape == ()
    before = {k: v.copy() for k, v in arrays.items()}
    originals = {k: v.clone() for k, v in tensors.items()}
    for tensor in tensors.values():
        tensor.add_(1)
    assert_arrays_equal(arrays, before)  # copies

    targets = {k: torch.zeros_like(v) for k, v in tensors.items()}
    copy_arrays_into(targets, {**arrays, "perm": np.arange(3)}, "param/")  # other prefixes are not looked at
    assert_same_tensors(targets, originals)

    arrays["param/t"] = arrays["param/t"].astype(np.float32)
    with pytest.raises(ValueError, match=re.escape("param/t: expected float64 (2,), got float32 (2,)")):
        copy_arrays_into(targets, arrays, "param/")
    arrays["param/t"] = before["param/t"]
    arrays["param/w"] = arrays["param/w"][:2]
    with pytest.raises(ValueError, match=re.escape("param/w: expected bfloat16 (as uint16 bits) (3, 2), got uint16")):
        check_arrays(targets, arrays, "param/")
    del arrays["param/n"]
    targets["n"].fill_(0)
    with pytest.raises(ValueError, match=re.escape("missing ['param/n'], unexpected []")):
        copy_arrays_into(targets, arrays, "param/")
    assert targets["n"].item() == 0  # nothing copied


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_state_moves_between_the_cpu_and_a_cuda_device():
    model, optimizer = started(OPTIMIZERS["adam"])
    saved = capture(model, optimizer)
    on_gpu = Net(seed=1).cuda()
    gpu_optimizer = OPTIMIZERS["adam"](on_gpu.parameters())
    restore(saved, on_gpu, gpu_optimizer)
    assert_same_tensors({k: v.cpu() for k, v in on_gpu.state_dict().items()}, model.state_dict())
    first = gpu_optimizer.state[on_gpu.conv1.weight]
    assert first["exp_avg"].is_cuda and first["step"].device.type == "cpu"

    train(on_gpu, gpu_optimizer, [(x.cuda(), y.cuda()) for x, y in DATA[BEFORE:]])
    from_gpu = capture(on_gpu, gpu_optimizer)
    assert "rng/torch_cuda/0" in from_gpu.arrays
    draws = torch.rand(4, device="cuda")
    back = Net(seed=2)
    back_optimizer = OPTIMIZERS["adam"](back.parameters())
    restore(from_gpu, back, back_optimizer)
    assert_same_tensors(back.state_dict(), {k: v.cpu() for k, v in on_gpu.state_dict().items()})
    assert torch.equal(torch.rand(4, device="cuda"), draws)  # the CUDA generator was restored too


def test_the_weights_of_a_snapshot_file_load_into_a_module_with_safetensors(tmp_path):
    """As docs/own-model.md says: ``safetensors.torch.load_file`` reads a snapshot, and its
    ``module/`` arrays, the prefix stripped, are the module's ``state_dict``."""
    load_file = pytest.importorskip("safetensors.torch").load_file
    model, optimizer = started(OPTIMIZERS["adam"], dropout=0.3)
    path = tmp_path / "snapshot.safetensors"
    write_snapshot(path, capture(model, optimizer), {"trial": 0})
    tensors = load_file(str(path))
    fresh = Net(seed=5, dropout=0.3)
    fresh.load_state_dict({k.removeprefix("module/"): v for k, v in tensors.items() if k.startswith("module/")})
    for (name, a), (_, b) in zip(model.state_dict().items(), fresh.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
