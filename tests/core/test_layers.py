import numpy as np
import pytest

from distnn.core.gradcheck import numerical_grad, rel_error
from distnn.core.layers import BatchNorm, Dense, Dropout


def _bind(layer, rng):
    params, grads = {}, {}
    for name, shape, _ in layer.param_specs():
        params[name] = rng.standard_normal(shape)
        grads[name] = np.zeros(shape)
    layer.bind(params, grads)
    return params, grads


def _check_layer(layer, x, params, grads, *, train=True):
    g = np.random.default_rng(1).standard_normal(layer.forward(x.copy(), train=train).shape)

    def f():
        return float(np.sum(layer.forward(x, train=train) * g))

    layer.forward(x, train=train)
    dx = layer.backward(g.copy())
    assert rel_error(dx, numerical_grad(f, x)) < 1e-6
    for name, p in params.items():
        layer.forward(x, train=train)
        layer.backward(g.copy())
        ana = grads[name].copy()
        assert rel_error(ana, numerical_grad(f, p)) < 1e-6, name


def test_dense_gradients(rng):
    layer = Dense("d", 5, 3)
    params, grads = _bind(layer, rng)
    _check_layer(layer, rng.standard_normal((4, 5)), params, grads)


@pytest.mark.parametrize("zero_cols", [[], [0, 2, 3, 7], list(range(8))])
def test_input_dense_skips_zero_columns_with_the_same_gradients(rng, zero_cols):
    """The first layer (no input gradient) multiplies only the columns that are non-zero
    somewhere in the training batch; its output and weight gradient stay those of the
    full product (numerically checked), and dW's rows for the zero columns are 0."""
    layer = Dense("d", 8, 3, need_input_grad=False)
    params, grads = _bind(layer, rng)
    x = rng.standard_normal((5, 8))
    x[:, zero_cols] = 0.0
    g = rng.standard_normal((5, 3))

    def f():
        return float(np.sum(layer.forward(x, train=True) * g))

    np.testing.assert_allclose(layer.forward(x, train=True), x @ params["weight"] + params["bias"])
    assert (layer.cols is not None) == (len(zero_cols) >= 2)   # 6/8 <= 0.85, 7/8 is not
    grads["weight"][:] = 7.0          # stale values from an earlier step must not survive
    assert layer.backward(g) is None
    np.testing.assert_allclose(grads["weight"], x.T @ g)
    assert not grads["weight"][zero_cols].any()
    for name, p in params.items():
        layer.forward(x, train=True)
        layer.backward(g)
        assert rel_error(grads[name].copy(), numerical_grad(f, p)) < 1e-6, name


def test_dense_computes_x_at_w_plus_b(rng):
    layer = Dense("d", 5, 3)
    params, _ = _bind(layer, rng)
    x = rng.standard_normal((4, 5))
    np.testing.assert_allclose(layer.forward(x, train=False), x @ params["weight"] + params["bias"])


def test_batchnorm_gradients_in_train_mode(rng):
    layer = BatchNorm("bn", 4)
    params, grads = _bind(layer, rng)
    _check_layer(layer, rng.standard_normal((6, 4)) * 3 + 1, params, grads)


def test_batchnorm_gradients_in_eval_mode(rng):
    layer = BatchNorm("bn", 4)
    params, grads = _bind(layer, rng)
    layer.running_mean[:] = rng.standard_normal(4)
    layer.running_var[:] = rng.random(4) + 0.5
    x = rng.standard_normal((6, 4))
    g = rng.standard_normal((6, 4))
    f = lambda: float(np.sum(layer.forward(x, train=False) * g))  # noqa: E731
    # eval mode is an affine map: dy/dx = gamma / sqrt(var + eps)
    expect = g * params["gamma"] / np.sqrt(layer.running_var + layer.eps)
    assert rel_error(expect, numerical_grad(f, x)) < 1e-6


def test_batchnorm_normalises_and_tracks_running_stats(rng):
    layer = BatchNorm("bn", 3, momentum=0.5)
    params, _ = _bind(layer, rng)
    params["gamma"][:] = 1.0
    params["beta"][:] = 0.0
    x = rng.standard_normal((50, 3)) * [1.0, 2.0, 3.0] + [5.0, -1.0, 0.0]
    out = layer.forward(x, train=True)
    np.testing.assert_allclose(out.mean(0), 0, atol=1e-12)
    np.testing.assert_allclose(out.std(0), 1, atol=1e-3)
    np.testing.assert_allclose(layer.running_mean, 0.5 * x.mean(0))
    np.testing.assert_allclose(layer.running_var, 0.5 + 0.5 * x.var(0, ddof=1))


def test_batchnorm_refuses_single_example_batches(rng):
    layer = BatchNorm("bn", 3)
    _bind(layer, rng)
    with pytest.raises(ValueError, match="at least 2 examples"):
        layer.forward(np.ones((1, 3)), train=True)


def test_dropout_with_fixed_mask_gradient(rng):
    layer = Dropout("drop", 0.6, seed=3, stream=7)
    layer.context = (2, np.arange(10, 16))
    _check_layer(layer, rng.standard_normal((6, 8)), {}, {})


def test_dropout_is_inverted_and_identity_at_eval(rng):
    layer = Dropout("drop", 0.5, seed=0, stream=1)
    x = np.ones((2000, 50))
    layer.context = (0, np.arange(2000))
    out = layer.forward(x, train=True)
    assert set(np.unique(out)) == {0.0, 2.0}
    assert abs(out.mean() - 1.0) < 0.02      # E[out] = x
    assert abs((out == 0).mean() - 0.5) < 0.02
    assert layer.forward(x, train=False) is x


def test_dropout_mask_depends_on_example_index_not_batch(rng):
    layer = Dropout("drop", 0.5, seed=0, stream=1)
    idx = np.array([7, 3, 99, 12])
    whole = layer.mask(4, idx, 30, np.dtype(np.float64)).copy()
    part = layer.mask(4, idx[2:], 30, np.dtype(np.float64))
    np.testing.assert_array_equal(whole[2:], part)
    other_epoch = layer.mask(5, idx, 30, np.dtype(np.float64))
    assert not np.array_equal(whole, other_epoch)


@pytest.mark.parametrize("p", [0.0, 1.5, -0.1])
def test_dropout_rejects_bad_keep_prob(p):
    with pytest.raises(ValueError, match="keep_prob must be in"):
        Dropout("d", p, 0, 0)
