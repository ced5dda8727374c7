import numpy as np
import pytest

from distnn.core import regularizers
from distnn.core.gradcheck import numerical_grad, rel_error


def test_penalties_and_their_gradients(rng):
    w = rng.standard_normal(20)
    n, l1, l2 = 50, 0.3, 5.0
    assert regularizers.penalty(w, 0, l2, n) == pytest.approx(l2 / (2 * n) * np.sum(w ** 2))
    assert regularizers.penalty(w, l1, 0, n) == pytest.approx(l1 / n * np.sum(np.abs(w)))
    g = np.zeros(20)
    regularizers.add_grad(g, w, l1, l2, n)
    num = numerical_grad(lambda: regularizers.penalty(w, l1, l2, n), w)
    assert rel_error(g, num) < 1e-6


def test_max_norm_caps_each_units_incoming_weights(rng):
    w = rng.standard_normal((30, 4)) * np.array([0.01, 1.0, 3.0, 0.1])
    before = np.linalg.norm(w, axis=0)
    regularizers.apply_max_norm([w], 2.0)
    after = np.linalg.norm(w, axis=0)
    np.testing.assert_allclose(after, np.minimum(before, 2.0))


def test_bad_strengths():
    with pytest.raises(ValueError, match="l2 must be >= 0"):
        regularizers.check(0.0, -1.0, None)
    with pytest.raises(ValueError, match="max_norm must be > 0"):
        regularizers.check(0.0, 0.0, 0.0)


def test_per_layer_strengths_act_on_their_own_weight_matrix(rng):
    import distnn
    net = distnn.Network([6, 5, 4, 3], dtype="float64", seed=1)
    pen = regularizers.Penalty(net, l1=0.0, l2=(2.0, 0.0, 7.0))
    named = net.named_params()
    w0, w2 = named["dense0.weight"], named["dense2.weight"]
    want = 2.0 / (2 * 40) * np.sum(w0 ** 2) + 7.0 / (2 * 40) * np.sum(w2 ** 2)
    assert pen.value(net.params, 40) == pytest.approx(want)
    g = np.zeros_like(net.params)
    pen.add_grad(g, net.params, 40)
    gv = {k: g[sl].reshape(v.shape) for (k, sl), v in zip(net.slices.items(),
                                                              named.values())}
    np.testing.assert_allclose(gv["dense0.weight"], 2.0 / 40 * w0)
    assert not gv["dense1.weight"].any() and not gv["dense0.bias"].any()
    np.testing.assert_allclose(gv["dense2.weight"], 7.0 / 40 * w2)
    # the same strength everywhere is one block, and equals the scalar form
    same = regularizers.Penalty(net, 0.5, (3.0, 3.0, 3.0))
    assert len(same.blocks) == 1
    assert same.value(net.params, 40) == pytest.approx(
        regularizers.Penalty(net, 0.5, 3.0).value(net.params, 40))


def test_per_layer_strengths_need_one_value_per_weight_layer():
    with pytest.raises(ValueError, match="l2 has 2 values but the network has 3 weight layers"):
        regularizers.check(0.0, (1.0, 2.0), None, 3)
    with pytest.raises(ValueError, match="l1 must be >= 0"):
        regularizers.check((1.0, -2.0), 0.0, None, 2)
