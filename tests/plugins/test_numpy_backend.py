"""The NumPy MLP backend: gradients, batch norm, softmax, optimizers, schedules, state."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import orjson
import pytest

from runner import Backend, BackendState
from runner.data import Dataset
from runner.errors import SpecError
from runner.experiment_file.typed import build
from runner.plugins.backends.numpy_mlp import Model, NumpyBackend, Options, Train, runner_register
from runner.plugins.backends.numpy_mlp.network import MLP, log_softmax, softmax_cross_entropy
from runner.plugins.backends.numpy_mlp.optimizers import make_optimizer
from runner.plugins.backends.schedules import scheduled_lr
from runner.registry import Registry

# -- helpers ---------------------------------------------------------------------------------


def blobs(m_train=60, m_val=30, n=4, classes=3, spread=1.0, seed=0) -> Dataset:
    """Gaussian blobs around random centres: separable when ``spread`` is small."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((classes, n)) * 3

    def draw(m):
        y = np.arange(m) % classes
        x = centres[y] + spread * rng.standard_normal((m, n))
        return x, y.astype(np.int64)

    x, y = draw(m_train)
    xv, yv = draw(m_val)
    return Dataset("blobs", x, y, xv, yv, tuple(str(c) for c in range(classes)))


def backend(data=None, dtype="float64", seed=0, model=None, **train) -> NumpyBackend:
    train.setdefault("epochs", 3)
    return NumpyBackend(
        model=model or Model(hidden=(8,)),
        train=Train(**train),
        options=Options(dtype=dtype),
        data=data or blobs(),
        seed=seed,
    )


def snapshot(b: NumpyBackend) -> dict[str, np.ndarray]:
    return {k: v.copy() for k, v in b.params.items()}


# -- 1. gradients -----------------------------------------------------------------------------


@pytest.mark.parametrize("batch_norm", [False, True])
@pytest.mark.parametrize("activation", ["relu", "tanh", "sigmoid"])
def test_gradients_match_central_differences(activation, batch_norm):
    rng = np.random.default_rng(1)
    net = MLP(n_inputs=4, hidden=(5, 4), n_classes=3, activation=activation, batch_norm=batch_norm)
    params = net.init_params(rng, "xavier", np.dtype("float64"))
    # Move every parameter off its initial value so that no gradient is trivially special.
    for k in params:
        params[k] = params[k] + 0.3 * rng.standard_normal(params[k].shape)
    x = rng.standard_normal((8, 4))
    y = rng.integers(0, 3, size=8)

    loss, grads, _ = net.loss_and_grads(params, x, y)
    assert list(grads) == list(params)
    assert float(loss) == pytest.approx(net.loss(params, x, y), rel=1e-12)
    h = 1e-6
    for k, p in params.items():
        numeric = np.zeros_like(p)
        for i in np.ndindex(p.shape):
            saved = p[i]
            p[i] = saved + h
            up = net.loss(params, x, y)
            p[i] = saved - h
            down = net.loss(params, x, y)
            p[i] = saved
            numeric[i] = (up - down) / (2 * h)
        assert grads[k].shape == p.shape
        rel = np.linalg.norm(numeric - grads[k]) / max(np.linalg.norm(numeric) + np.linalg.norm(grads[k]), 1e-12)
        assert rel < 1e-6, f"{k}: relative error {rel:.2e}"
        assert np.linalg.norm(grads[k]) > 1e-6, f"{k}: gradient vanished, the check would be vacuous"


def test_softmax_regression_has_one_layer():
    b = backend(model=Model(hidden=()))
    assert set(b.params) == {"W1", "b1"}
    assert b.params["W1"].shape == (4, 3)


# -- 2. batch norm ----------------------------------------------------------------------------


def bn_backend(**kw) -> NumpyBackend:
    return backend(
        model=Model(hidden=(6, 5), batch_norm=True, bn_momentum=0.9, bn_epsilon=1e-5),
        optimizer="gd",
        lr=0.1,
        batch_size=16,
        **kw,
    )


def test_batch_norm_parameters_start_at_gamma_one_beta_zero_without_bias():
    b = bn_backend()
    assert set(b.params) == {"W1", "gamma1", "beta1", "W2", "gamma2", "beta2", "W3", "b3"}
    for l, width in ((1, 6), (2, 5)):
        assert np.array_equal(b.params[f"gamma{l}"], np.ones(width))
        assert np.array_equal(b.params[f"beta{l}"], np.zeros(width))
        assert np.array_equal(b.running[f"running_mean{l}"], np.zeros(width))
        assert np.array_equal(b.running[f"running_var{l}"], np.ones(width))
    assert np.array_equal(b.params["b3"], np.zeros(3))


def test_batch_norm_training_forward_uses_batch_statistics():
    b = bn_backend()
    rng = np.random.default_rng(3)
    p = b.params
    p["gamma1"] = rng.uniform(0.5, 1.5, 6)
    p["beta1"] = rng.standard_normal(6)
    x = rng.standard_normal((10, 4))
    logits, caches = b.network.forward_train(p, x)

    z = x @ p["W1"]
    mu = z.sum(axis=0) / 10
    var = ((z - mu) ** 2).sum(axis=0) / 10
    zn = (z - mu) / np.sqrt(var + 1e-5)
    h = p["gamma1"] * zn + p["beta1"]
    assert np.allclose(caches[0].mean, mu, rtol=1e-12, atol=1e-14)
    assert np.allclose(caches[0].var, var, rtol=1e-12, atol=1e-14)
    assert np.allclose(caches[0].h, h, rtol=1e-12, atol=1e-13)
    assert np.allclose(caches[0].a, np.maximum(h, 0), rtol=1e-12, atol=1e-13)
    # Normalised rows have mean 0 and (almost, because of eps) variance 1.
    assert np.allclose(caches[0].zn.mean(axis=0), 0, atol=1e-12)
    assert np.allclose(caches[0].zn.var(axis=0), var / (var + 1e-5), rtol=1e-12)
    # The training logits depend on the batch: the same row gives another result alone with others.
    logits_half, _ = b.network.forward_train(p, x[:5])
    assert not np.allclose(logits_half, logits[:5])


def test_running_statistics_follow_the_ewma_with_unbiased_variance():
    b = bn_backend()
    b.begin_epoch(0)
    idx = b.state().arrays["perm"][:16]
    p0 = snapshot(b)
    xb = blobs().x_train[idx]  # the backend's first training batch
    b.train_step()

    z1 = xb @ p0["W1"]
    a1 = np.maximum((z1 - z1.mean(0)) / np.sqrt(z1.var(0) + 1e-5), 0)  # gamma 1, beta 0
    z2 = a1 @ p0["W2"]
    for l, z in ((1, z1), (2, z2)):
        assert np.allclose(b.running[f"running_mean{l}"], 0.9 * 0.0 + 0.1 * z.mean(0), rtol=1e-12, atol=1e-14)
        assert np.allclose(b.running[f"running_var{l}"], 0.9 * 1.0 + 0.1 * z.var(0, ddof=1), rtol=1e-12)


def test_evaluation_uses_running_statistics_and_is_per_example():
    b = bn_backend()
    b.begin_epoch(0)
    for _ in range(3):
        b.train_step()
    p, r, data = b.params, b.running, blobs()

    a = data.x_val
    for l in (1, 2):
        zn = (a @ p[f"W{l}"] - r[f"running_mean{l}"]) / np.sqrt(r[f"running_var{l}"] + 1e-5)
        a = np.maximum(p[f"gamma{l}"] * zn + p[f"beta{l}"], 0)
    logits = a @ p["W3"] + p["b3"]
    assert np.allclose(b.network.forward_eval(p, r, data.x_val), logits, rtol=1e-10, atol=1e-12)
    z = logits - logits.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    expected_loss = -logp[np.arange(len(logits)), data.y_val].mean()
    expected_acc = (logits.argmax(axis=1) == data.y_val).mean()
    metrics = b.evaluate("val")
    assert metrics["loss"] == pytest.approx(expected_loss, rel=1e-10)
    assert metrics["acc"] == pytest.approx(expected_acc)
    # One example alone gives the same result as within a batch, every time.
    one = b.network.forward_eval(p, r, data.x_val[:1])
    assert np.array_equal(one, b.network.forward_eval(p, r, data.x_val[:1]))
    assert np.allclose(one[0], logits[0], rtol=1e-10, atol=1e-12)


def test_single_validation_example_evaluates_deterministically():
    d = blobs()
    single = dataclasses.replace(d, x_val=d.x_val[:1], y_val=d.y_val[:1])
    b = bn_backend(data=single)
    b.begin_epoch(0)
    b.train_step()
    first, second = b.evaluate("val"), b.evaluate("val")
    assert first == second
    assert math.isfinite(first["loss"]) and first["acc"] in (0.0, 1.0)


def test_batch_of_one_trains_without_touching_running_statistics():
    d = blobs(m_train=17)  # batch size 16 leaves a last batch of one example
    b = bn_backend(data=d)
    b.begin_epoch(0)
    b.train_step()
    before = {k: v.copy() for k, v in b.running.items()}
    assert math.isfinite(b.train_step())
    assert all(np.array_equal(before[k], b.running[k]) for k in before)
    assert all(np.isfinite(v).all() for v in b.params.values())


# -- 3. softmax and cross-entropy -------------------------------------------------------------


def test_cross_entropy_is_finite_for_huge_logits():
    logits = np.array([[1e4, 0.0, -1e4], [-1e4, -1e4, -1e4], [1e4, 1e4, -1e4]])
    y = np.array([1, 2, 0])
    loss, grad = softmax_cross_entropy(logits.copy(), y)
    assert np.isfinite(loss) and np.isfinite(grad).all()
    # Row losses: 1e4, log 3, log 2.
    assert float(loss) == pytest.approx((1e4 + math.log(3) + math.log(2)) / 3, rel=1e-12)
    expected_grad = np.array([[1, -1, 0], [1 / 3, 1 / 3, -2 / 3], [-0.5, 0.5, 0]]) / 3
    assert np.allclose(grad, expected_grad, atol=1e-15)
    assert np.isfinite(log_softmax(np.float32(1e4) * np.ones((2, 3), np.float32))).all()


def test_cross_entropy_known_value():
    logits = np.array([[1.0, 2.0, 3.0]])
    loss, grad = softmax_cross_entropy(logits.copy(), np.array([2]))
    e = np.exp([1.0, 2.0, 3.0])
    assert float(loss) == pytest.approx(-math.log(e[2] / e.sum()), rel=1e-14)
    assert float(loss) == pytest.approx(0.40760596444438, rel=1e-12)
    assert np.allclose(grad, e / e.sum() - np.array([0, 0, 1]), atol=1e-15)


# -- 4. optimizers ----------------------------------------------------------------------------


def run_steps(name, grads, lr=0.1, b1=0.9, b2=0.999, eps=1e-8):
    params = {"w": np.array([1.0, -2.0])}
    opt = make_optimizer(name, params, eps)
    history = []
    for g in grads:
        opt.step(params, {"w": np.array(g)}, lr, b1, b2)
        history.append(params["w"].copy())
    return history, opt


def test_adam_first_two_steps_by_hand():
    (w1, w2), opt = run_steps("adam", [[0.5, -0.1], [0.2, 0.3]])
    # Step 1: v = 0.1 g, s = 0.001 g^2; corrected they are g and g^2, so the step is lr*g/(|g|+eps).
    assert np.allclose(w1, [1.0 - 0.1 * 0.5 / (0.5 + 1e-8), -2.0 + 0.1 * 0.1 / (0.1 + 1e-8)], rtol=1e-14)
    # Step 2: v = [0.065, 0.021], s = [0.00028975, 0.00009999], 1-b1^2 = 0.19, 1-b2^2 = 0.001999.
    step2 = 0.1 * np.array([0.065, 0.021]) / 0.19 / (np.sqrt(np.array([0.00028975, 0.00009999]) / 0.001999) + 1e-8)
    assert np.allclose(w2, w1 - step2, rtol=1e-13)
    assert np.allclose(w2, [0.8101424839, -1.9494189911], rtol=1e-9)
    assert opt.t == 2
    assert np.allclose(opt.moments["v"]["w"], [0.065, 0.021], rtol=1e-14)
    assert np.allclose(opt.moments["s"]["w"], [0.00028975, 0.00009999], rtol=1e-14)


def test_momentum_steps_by_hand():
    (w1, w2), _ = run_steps("momentum", [[0.5, -0.1], [0.2, 0.3]])
    assert np.allclose(w1, [1.0 - 0.1 * 0.05, -2.0 + 0.1 * 0.01], rtol=1e-14)  # v = 0.1 g
    assert np.allclose(w2, w1 - 0.1 * np.array([0.065, 0.021]), rtol=1e-14)  # v = 0.9 v + 0.1 g


def test_rmsprop_step_by_hand():
    (w1,), _ = run_steps("rmsprop", [[0.5, -0.1]])
    s = np.array([0.00025, 0.00001])  # 0.001 g^2
    assert np.allclose(w1, np.array([1.0, -2.0]) - 0.1 * np.array([0.5, -0.1]) / (np.sqrt(s) + 1e-8), rtol=1e-14)


def test_gd_step_by_hand():
    (w1,), _ = run_steps("gd", [[0.5, -0.1]])
    assert np.allclose(w1, [0.95, -1.99], rtol=1e-15)


def test_backend_first_adam_step_updates_every_parameter_including_gamma_and_beta():
    b = backend(model=Model(hidden=(6,), batch_norm=True), optimizer="adam", lr=0.01, batch_size=200)
    b.begin_epoch(0)
    x, y = blobs().x_train[b.state().arrays["perm"]], blobs().y_train[b.state().arrays["perm"]]
    p0 = snapshot(b)
    _, grads, _ = b.network.loss_and_grads(p0, x, y)
    b.train_step()
    for k in p0:
        g = grads[k]
        assert np.allclose(b.params[k], p0[k] - 0.01 * g / (np.abs(g) + 1e-8), rtol=1e-10, atol=1e-14), k
        assert not np.array_equal(b.params[k], p0[k]), k


# -- 5. learning-rate schedules ---------------------------------------------------------------


@pytest.mark.parametrize(
    "schedule, formula",
    [
        ("inverse_time", lambda e: 0.1 / (1 + 0.5 * e)),
        ("exponential", lambda e: 0.1 * math.exp(-0.5 * e)),
        ("step", lambda e: 0.1 * 0.5 ** (e // 2)),
    ],
)
def test_schedules_set_the_rate_of_each_epoch(schedule, formula):
    b = backend(lr=0.1, lr_decay=0.5, lr_schedule=schedule, lr_step_epochs=2)
    for epoch in range(4):
        b.begin_epoch(epoch)
        assert b.lr_in_force == pytest.approx(formula(epoch), rel=1e-15)
        assert scheduled_lr(0.1, epoch, schedule=schedule, decay=0.5, step_epochs=2) == pytest.approx(
            formula(epoch), rel=1e-15
        )
        assert b.hyperparameters()["lr"] == b.lr_in_force, "lr reported is the rate in force"
    b.set_hyperparameters(lr=0.2)  # a nudge sets the rate in force now ...
    assert b.lr_in_force == b.hyperparameters()["lr"] == 0.2
    b.begin_epoch(4)  # ... and the schedule decays on from it
    assert b.lr_in_force == pytest.approx(0.2 * formula(4) / formula(3), rel=1e-12)


def test_scheduled_rate_is_the_one_a_step_uses():
    b = backend(optimizer="gd", lr=0.1, lr_decay=1.0, batch_size=1000)  # inverse_time: 0.05 at epoch 1
    b.begin_epoch(0)
    b.train_step()
    b.begin_epoch(1)
    perm = b.state().arrays["perm"]
    p0 = snapshot(b)
    _, grads, _ = b.network.loss_and_grads(p0, blobs().x_train[perm], blobs().y_train[perm])
    b.train_step()
    for k in p0:
        assert np.allclose(b.params[k], p0[k] - 0.05 * grads[k], rtol=1e-12, atol=1e-15)


def test_step_schedule_needs_decay_below_one():
    with pytest.raises(SpecError) as err:
        build(Train, {"epochs": 1, "lr_schedule": "step", "lr_decay": 1.0}, "train")
    assert err.value.path == "train.lr_decay"
    assert build(Train, {"epochs": 1, "lr_decay": 1.0}, "train").lr_decay == 1.0


# -- 6. state ---------------------------------------------------------------------------------


def continue_training(b: NumpyBackend, plan: list[str]) -> list[float]:
    """Run ``plan``: "s" is a step, an integer string begins that epoch."""
    losses = []
    for item in plan:
        if item == "s":
            losses.append(b.train_step())
        else:
            b.begin_epoch(int(item))
    return losses


@pytest.mark.parametrize("optimizer", ["adam", "momentum", "rmsprop", "gd"])
@pytest.mark.parametrize("split_after", [2, 4])  # mid-epoch, and at the end of epoch 0
def test_state_round_trip_continues_bit_for_bit(optimizer, split_after):
    data = blobs(m_train=50)  # batch 16: four steps per epoch, the last of 2 examples
    model = Model(hidden=(7, 5), batch_norm=True, activation="tanh")
    kw = dict(model=model, data=data, optimizer=optimizer, batch_size=16, lr=0.01, lr_decay=0.3)
    a = backend(seed=5, **kw)
    assert a.steps_per_epoch == 4
    a.begin_epoch(0)
    a.set_hyperparameters(lr=0.02, momentum=0.8)  # nudged values must come back too
    for _ in range(split_after):
        a.train_step()
    saved = a.state()
    saved_copy = BackendState({k: v.copy() for k, v in saved.arrays.items()}, orjson.loads(orjson.dumps(saved.meta)))

    rest = ["s"] * (4 - split_after) + ["1", "s", "s", "s", "s", "2", "s", "s"]
    losses_a = continue_training(a, rest)
    # state() handed out copies: training on did not change them.
    assert saved.arrays.keys() == saved_copy.arrays.keys()
    assert all(np.array_equal(saved.arrays[k], saved_copy.arrays[k]) for k in saved.arrays)
    assert saved.meta == saved_copy.meta

    b = backend(seed=99, **kw)  # other initial weights and generator: everything must come from the state
    b.load_state(BackendState(dict(saved_copy.arrays), orjson.loads(orjson.dumps(saved_copy.meta))))
    assert b.hyperparameters() == {"lr": 0.02, "momentum": 0.8, "beta2": 0.999}
    losses_b = continue_training(b, rest)

    assert losses_a == losses_b
    final_a, final_b = a.state(), b.state()
    assert final_a.arrays.keys() == final_b.arrays.keys()
    for k in final_a.arrays:
        assert np.array_equal(final_a.arrays[k], final_b.arrays[k]), k
    assert final_a.meta == final_b.meta
    assert a.evaluate("val") == b.evaluate("val")


def test_state_contents_and_json_safety():
    b = backend(model=Model(hidden=(4,), batch_norm=True), optimizer="adam")
    b.begin_epoch(0)
    b.train_step()
    s = b.state()
    assert set(s.arrays) == {
        "param/W1",
        "param/gamma1",
        "param/beta1",
        "param/W2",
        "param/b2",
        "running/running_mean1",
        "running/running_var1",
        "perm",
        *(f"opt/{slot}/{k}" for slot in ("v", "s") for k in ("W1", "gamma1", "beta1", "W2", "b2")),
    }
    assert all(isinstance(v, np.ndarray) for v in s.arrays.values())
    meta = orjson.loads(orjson.dumps(s.meta))
    assert meta == s.meta
    assert meta["t"] == 1 and meta["epoch"] == 0 and meta["position"] == 60
    assert int(meta["rng"]["state"]) >= 0 and isinstance(meta["rng"]["state"], str)
    for k, v in b.params.items():  # copies, not views
        assert not np.shares_memory(s.arrays[f"param/{k}"], v)


def test_load_state_rejects_a_state_of_another_network():
    s = backend(model=Model(hidden=(4,))).state()
    with pytest.raises(ValueError, match="missing"):
        backend(model=Model(hidden=(5, 3))).load_state(s)
    with pytest.raises(ValueError, match="dtype"):
        backend(model=Model(hidden=(4,)), dtype="float32").load_state(s)


# -- 7. float32 -------------------------------------------------------------------------------


class Recorder:
    """Wraps an MLP and keeps what each training step's ``loss_and_grads`` saw and returned."""

    def __init__(self, net):
        self.net, self.calls = net, []

    def loss_and_grads(self, params, x, y):
        out = self.net.loss_and_grads(params, x, y)
        self.calls.append((x.dtype, out))
        return out

    def __getattr__(self, name):
        return getattr(self.net, name)


@pytest.mark.parametrize("batch_norm", [False, True])
def test_float32_stays_float32(batch_norm):
    b = NumpyBackend(  # float32 is the default dtype
        model=Model(hidden=(8, 6), batch_norm=batch_norm, activation="sigmoid"),
        train=Train(epochs=2, batch_size=16),
        options=Options(),
        data=blobs(),
        seed=0,
    )
    b.network = Recorder(b.network)
    for epoch in range(2):
        b.begin_epoch(epoch)
        for _ in range(b.steps_per_epoch):
            assert isinstance(b.train_step(), float)
    f32 = np.dtype("float32")
    for x_dtype, (loss, grads, caches) in b.network.calls:
        assert x_dtype == f32 and loss.dtype == f32
        assert all(g.dtype == f32 for g in grads.values())
        for c in caches:
            arrays = [c.a_prev, c.z, c.h, c.a] + ([c.zn, c.inv_std, c.mean, c.var] if batch_norm else [])
            assert all(a.dtype == f32 for a in arrays)
    s = b.state()
    assert all(v.dtype == f32 for k, v in s.arrays.items() if k != "perm")
    assert b.network.forward_eval(b.params, b.running, blobs().x_val.astype(np.float32)).dtype == f32
    m = b.evaluate("train")
    assert isinstance(m["loss"], float) and isinstance(m["acc"], float)


# -- 8. live hyperparameters ------------------------------------------------------------------


def test_set_hyperparameters_takes_effect_from_the_next_step():
    b = backend(optimizer="gd", lr=0.1, batch_size=20)
    b.begin_epoch(0)
    b.train_step()
    b.set_hyperparameters(lr=0.0)
    before = snapshot(b)
    b.train_step()
    assert all(np.array_equal(before[k], b.params[k]) for k in before)
    b.set_hyperparameters(lr=0.3)
    perm = b.state().arrays["perm"][40:60]
    _, grads, _ = b.network.loss_and_grads(before, blobs().x_train[perm], blobs().y_train[perm])
    b.train_step()
    for k in before:
        assert np.allclose(b.params[k], before[k] - 0.3 * grads[k], rtol=1e-12, atol=1e-15)
    assert b.hyperparameters() == {"lr": 0.3, "momentum": 0.9, "beta2": 0.999}


def test_set_hyperparameters_rejects_unknown_names_and_bad_values():
    b = backend()
    with pytest.raises(ValueError, match="batch_size"):
        b.set_hyperparameters(lr=0.5, batch_size=3)
    with pytest.raises(ValueError, match="momentum"):
        b.set_hyperparameters(lr=0.5, momentum=1.0)
    with pytest.raises(ValueError, match="lr"):
        b.set_hyperparameters(lr=-1.0)
    assert b.hyperparameters() == {"lr": 1e-3, "momentum": 0.9, "beta2": 0.999}  # nothing applied
    assert set(b.hyperparameters()) == set(NumpyBackend.live) == {"lr", "momentum", "beta2"}


# -- 9. learning, epochs and wiring -----------------------------------------------------------


@pytest.mark.parametrize("batch_norm", [False, True])
def test_learns_a_separable_problem(batch_norm):
    data = blobs(m_train=300, m_val=150, n=5, classes=3, spread=1.0, seed=2)
    b = backend(data=data, dtype="float32", model=Model(hidden=(16,), batch_norm=batch_norm), lr=0.01, batch_size=32)
    start = b.evaluate("val")
    for epoch in range(5):
        b.begin_epoch(epoch)
        for _ in range(b.steps_per_epoch):
            b.train_step()
    end = b.evaluate("val")
    assert end["acc"] > 0.9
    assert end["loss"] < start["loss"]


def test_steps_per_epoch_and_running_past_the_end():
    b = backend(data=blobs(m_train=50), batch_size=16)
    assert b.steps_per_epoch == 4
    with pytest.raises(RuntimeError, match="begin_epoch"):
        b.train_step()
    b.begin_epoch(0)
    for _ in range(4):
        b.train_step()
    assert b.state().meta["position"] == 50
    with pytest.raises(RuntimeError, match="begin_epoch\\(1\\)"):
        b.train_step()
    b.begin_epoch(1)
    assert math.isfinite(b.train_step())
    with pytest.raises(ValueError):
        b.evaluate("test")


def test_same_seed_same_run_and_epochs_reshuffle():
    a, b = backend(seed=4), backend(seed=4)
    assert all(np.array_equal(a.params[k], b.params[k]) for k in a.params)
    a.begin_epoch(0)
    first = a.state().arrays["perm"]
    a.begin_epoch(1)
    assert not np.array_equal(first, a.state().arrays["perm"])
    assert sorted(first) == list(range(60))


def test_init_schemes():
    data = blobs(m_train=2000, n=50)
    he = backend(data=data, model=Model(hidden=(400,), init="auto", activation="relu"))
    xavier = backend(data=data, model=Model(hidden=(400,), init="auto", activation="tanh"))
    assert he.params["W1"].var() == pytest.approx(2 / 50, rel=0.05)
    assert xavier.params["W1"].var() == pytest.approx(1 / 50, rel=0.05)
    assert xavier.params["W2"].var() == pytest.approx(1 / 400, rel=0.1)
    assert np.array_equal(he.params["b1"], np.zeros(400))


def test_config_sections_validate_and_document_every_field():
    assert build(Model, {"hidden": [], "activation": "tanh"}, "model") == Model(hidden=(), activation="tanh")
    with pytest.raises(SpecError) as err:
        build(Model, {"hidden": [8, 0]}, "model")
    assert err.value.path == "model.hidden.1"
    with pytest.raises(SpecError):
        build(Model, {"bn_momentum": 1.0}, "model")
    with pytest.raises(SpecError):
        build(Train, {"epochs": 1, "lr": 0}, "train")
    with pytest.raises(SpecError):
        build(Options, {"dtype": "float16"}, "backend")
    for cls in (Model, Train, Options):
        for f in dataclasses.fields(cls):
            assert f.metadata.get("doc"), f"{cls.__name__}.{f.name} has no doc"


def test_plugin_registers_the_backend():
    registry = Registry()
    runner_register(registry=registry)
    assert registry.get("backend", "numpy") is NumpyBackend
    assert issubclass(NumpyBackend, Backend)
    assert NumpyBackend.Model is Model and NumpyBackend.Train is Train and NumpyBackend.Options is Options
