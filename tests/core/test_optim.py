from types import SimpleNamespace

import numpy as np
import pytest

from distnn.core import optim


def make(name, **hyper):
    """An optimizer through the registry, from a config-like object (defaults as in
    TrainConfig, ``hyper`` overriding them)."""
    values = dict(optimizer=name, lr=0.1, momentum=0.9, beta1=0.9, beta2=0.999, eps=1e-8,
                  rho=0.9, ema=0.0)
    values.update(hyper)
    return optim.build(SimpleNamespace(**values))


def test_registry_builds_each_optimizer_with_its_declared_hyperparameters():
    opt = make("nesterov", lr=0.2, momentum=0.5, beta1=0.1)
    assert type(opt) is optim.Nesterov and (opt.lr, opt.momentum) == (0.2, 0.5)
    assert not hasattr(opt, "beta1")   # Adam's, not declared by Nesterov
    adam = make("adam", lr=0.01, beta2=0.9, momentum=0.0)
    assert (adam.lr, adam.beta1, adam.beta2) == (0.01, 0.9, 0.9)
    assert set(optim.OPTIMIZERS) == {"sgd", "momentum", "nesterov", "rmsprop", "adam"}
    with pytest.raises(ValueError, match="taken"):
        optim.register(type("Again", (optim.SGD,), {}))


def _run(opt, w0, grads):
    w = w0.copy()
    for g in grads:
        opt.step(w, g.copy())
    return w


@pytest.fixture
def case(rng):
    w0 = rng.standard_normal(7)
    grads = [rng.standard_normal(7) for _ in range(3)]
    return w0, grads


def test_sgd_formula(case):
    w0, gs = case
    expect = w0 - 0.1 * gs[0] - 0.1 * gs[1] - 0.1 * gs[2]
    np.testing.assert_allclose(_run(optim.SGD(0.1), w0, gs), expect)


def test_momentum_formula(case):
    w0, gs = case
    mu, lr = 0.9, 0.05
    v, w = np.zeros(7), w0.copy()
    for g in gs:
        v = mu * v - lr * g
        w = w + v
    np.testing.assert_allclose(_run(optim.Momentum(lr, mu), w0, gs), w)


def test_nesterov_formula(case):
    w0, gs = case
    mu, lr = 0.9, 0.05
    v, w = np.zeros(7), w0.copy()
    for g in gs:
        v = mu * v - lr * g
        w = w + mu * v - lr * g
    np.testing.assert_allclose(_run(optim.Nesterov(lr, mu), w0, gs), w)


def test_nesterov_matches_torch_form(case):
    # torch: b = mu b + g;  w -= lr (g + mu b)  -- the same trajectory
    w0, gs = case
    mu, lr = 0.8, 0.1
    b, w = np.zeros(7), w0.copy()
    for g in gs:
        b = mu * b + g
        w = w - lr * (g + mu * b)
    np.testing.assert_allclose(_run(optim.Nesterov(lr, mu), w0, gs), w)


def test_rmsprop_formula(case):
    w0, gs = case
    lr, rho, eps = 0.01, 0.9, 1e-8
    s, w = np.zeros(7), w0.copy()
    for g in gs:
        s = rho * s + (1 - rho) * g * g
        w = w - lr * g / (np.sqrt(s) + eps)
    np.testing.assert_allclose(_run(optim.RMSprop(lr, rho, eps), w0, gs), w)


def test_adam_formula_with_bias_correction(case):
    w0, gs = case
    lr, b1, b2, eps = 0.01, 0.9, 0.999, 1e-8
    m, v, w = np.zeros(7), np.zeros(7), w0.copy()
    for t, g in enumerate(gs, start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        w = w - lr * (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + eps)
    np.testing.assert_allclose(_run(optim.Adam(lr), w0, gs), w, rtol=1e-12)
    # the first Adam step moves every weight by ~lr, whatever the gradient's scale
    step = _run(optim.Adam(lr), w0, [gs[0] * 1e3]) - w0
    np.testing.assert_allclose(np.abs(step), lr, rtol=1e-6)


@pytest.mark.parametrize("name", sorted(optim.OPTIMIZERS))
def test_state_round_trip_continues_identically(name, case):
    w0, gs = case
    a = make(name, lr=0.05)
    w = _run(a, w0, gs[:2])
    b = make(name, lr=0.05)
    b.load_state_dict(a.state_dict())
    wa, wb = w.copy(), w.copy()
    a.step(wa, gs[2].copy())
    b.step(wb, gs[2].copy())
    np.testing.assert_array_equal(wa, wb)
    assert b.t == 3


def test_state_of_another_optimizer_is_refused():
    with pytest.raises(ValueError, match="is for 'adam', not 'sgd'"):
        optim.SGD(0.1).load_state_dict(optim.Adam().state_dict())


@pytest.mark.parametrize("kwargs,match", [
    (dict(name="sgd", lr=0.0), "lr must be"), (dict(name="sgd", lr=-1.0), "lr must be"),
    (dict(name="sgd", lr=float("nan")), "lr must be"),
    (dict(name="momentum", lr=0.1, momentum=1.0), r"momentum must be in \[0, 1\)"),
    (dict(name="adam", lr=0.1, beta2=1.5), "beta2"),
    (dict(name="rmsprop", lr=0.1, eps=0.0), "eps"),
    (dict(name="adagrad", lr=0.1), "unknown optimizer 'adagrad'"),
])
def test_bad_hyperparameters_name_the_value(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make(**kwargs)


def test_float32_updates_stay_float32(rng):
    w = rng.standard_normal(5).astype(np.float32)
    for name in optim.OPTIMIZERS:
        opt = make(name, lr=0.1)
        opt.step(w, np.ones(5, np.float32))
        assert w.dtype == np.float32


@pytest.mark.parametrize("name", ["sgd", "momentum", "nesterov"])
def test_prescaled_step_equals_the_plain_step(name, case):
    w0, gs = case
    plain, pre = make(name, lr=0.07), make(name, lr=0.07)
    assert pre.prescalable
    wa, wb = w0.copy(), w0.copy()
    for g in gs:
        plain.step(wa, g.copy())
        pre.step_prescaled(wb, -0.07 * g)
    np.testing.assert_allclose(wa, wb, rtol=1e-12, atol=1e-15)
    assert pre.t == len(gs)


def test_adaptive_optimizers_refuse_prescaled_gradients():
    for name in ("adam", "rmsprop"):
        opt = make(name, lr=0.1)
        assert not opt.prescalable
        with pytest.raises(NotImplementedError, match="not linear"):
            opt.step_prescaled(np.zeros(2), np.zeros(2))


@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_parameter_average_follows_its_formula(name, case):
    """a ← w before the first step; a ← d a + (1 − d) w after step t,
    d = min(ema, (1 + t) / (10 + t))."""
    w0, gs = case
    gs = gs * 10   # 30 steps: d reaches its cap 0.7 at t = 20
    opt = make(name, lr=0.05, ema=0.7)
    plain = make(name, lr=0.05)
    w, wp, a = w0.copy(), w0.copy(), w0.copy()
    opt.start_average(w)
    for t, g in enumerate(gs, 1):
        opt.step(w, g.copy())
        opt.update_average(w)
        plain.step(wp, g.copy())
        d = min(0.7, (1 + t) / (10 + t))
        a = d * a + (1 - d) * w
    np.testing.assert_array_equal(w, wp)            # averaging leaves the step alone
    np.testing.assert_allclose(opt.state["average"], a, rtol=1e-12)
    assert not np.allclose(a, w, atol=1e-3)
    assert opt.slots[-1] == "average" and "average" not in plain.slots


def test_parameter_average_round_trips_and_is_refused_without_ema(case):
    w0, gs = case
    a = make("momentum", lr=0.05, ema=0.9)
    w = w0.copy()
    a.start_average(w)
    for g in gs:
        a.step(w, g.copy())
        a.update_average(w)
    b = make("momentum", lr=0.05, ema=0.9)
    b.load_state_dict(a.state_dict())
    b.start_average(w)                              # held already: not reset to w
    np.testing.assert_array_equal(b.state["average"], a.state["average"])
    with pytest.raises(ValueError, match="holds a parameter average .* give --ema"):
        make("momentum", lr=0.05).load_state_dict(a.state_dict())
    for bad in (1.0, -0.1):
        with pytest.raises(ValueError, match=r"ema must be in \[0, 1\)"):
            make("sgd", lr=0.1, ema=bad)
