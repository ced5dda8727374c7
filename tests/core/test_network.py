import numpy as np
import pytest

import distnn
from distnn.core import activations
from distnn.core.network import Network
from distnn.core.gradcheck import check_network

COMBOS = [(h, o, c) for h in sorted(activations.HIDDEN)
          for o, c in (("sigmoid", "cross-entropy"), ("softmax", "log-likelihood"),
                       ("sigmoid", "quadratic"), ("softmax", "quadratic"),
                       ("identity", "quadratic"))]


def _data(rng, n=7, d=6, k=4):
    return rng.standard_normal((n, d)), rng.integers(0, k, n)


@pytest.mark.parametrize("hidden,out,cost", COMBOS)
def test_gradcheck_every_activation_and_cost(hidden, out, cost, rng):
    net = distnn.Network([6, 5, 4], activation=hidden, output=out, cost=cost,
                         dtype="float64", seed=1)
    x, y = _data(rng)
    errors = check_network(net, x, y)
    assert max(errors.values()) < 1e-6, errors


@pytest.mark.parametrize("opts", [dict(batchnorm=True), dict(keep_prob=0.6),
                                  dict(keep_prob_input=0.8, keep_prob=0.5),
                                  dict(batchnorm=True, keep_prob=0.7)])
def test_gradcheck_batchnorm_and_dropout(opts, rng):
    net = distnn.Network([6, 5, 5, 4], activation="tanh", dtype="float64", seed=2, **opts)
    x, y = _data(rng)
    assert max(check_network(net, x, y).values()) < 1e-6


@pytest.mark.parametrize("l1,l2", [(0.3, 0.7), ((0.3, 0.0), (0.7, 2.0))])
def test_gradcheck_with_l1_and_l2(l1, l2, rng):
    net = distnn.Network([6, 5, 4], dtype="float64", seed=3)
    x, y = _data(rng)
    assert max(check_network(net, x, y, l1=l1, l2=l2, n=50).values()) < 1e-6


def test_loss_and_grad_is_mean_over_batch(rng):
    net = distnn.Network([6, 5, 4], dtype="float64")
    x, y = _data(rng, n=8)
    c_all, g_all = net.loss_and_grad(x, y)
    c1, g1 = net.loss_and_grad(x[:3], y[:3])
    c2, g2 = net.loss_and_grad(x[3:], y[3:])
    assert c_all == pytest.approx((3 * c1 + 5 * c2) / 8)
    np.testing.assert_allclose(g_all, (3 * g1 + 5 * g2) / 8, atol=1e-14)


def test_flat_vector_and_named_views_share_memory():
    net = distnn.Network([784, 100, 10])
    named = net.named_params()
    assert named["dense0.weight"].shape == (784, 100)
    assert named["dense0.bias"].shape == (100,)
    assert named["dense1.weight"].shape == (100, 10)
    assert net.params.dtype == np.float32 and net.params.flags.c_contiguous
    assert net.params.size == 784 * 100 + 100 + 100 * 10 + 10
    named["dense1.bias"][3] = 42.0
    assert 42.0 in net.params
    # regularised weights come first
    assert net.n_decay == 784 * 100 + 100 * 10
    assert np.shares_memory(net.params[:net.n_decay], named["dense1.weight"])


def test_forward_is_x_at_w_plus_b_through_the_stack(rng):
    net = distnn.Network([5, 4, 3], activation="relu", output="softmax", dtype="float64")
    p = net.named_params()
    x = rng.standard_normal((6, 5))
    h = np.maximum(x @ p["dense0.weight"] + p["dense0.bias"], 0)
    z = h @ p["dense1.weight"] + p["dense1.bias"]
    expect = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    np.testing.assert_allclose(net.predict_proba(x), expect, rtol=1e-12)
    np.testing.assert_array_equal(net.predict(x), expect.argmax(1))


def test_init_fan_in_statistics():
    net = distnn.Network([400, 300, 10], init="fan-in", seed=0)
    w = net.named_params()["dense0.weight"]
    assert abs(w.std() - 1 / np.sqrt(400)) < 0.002
    assert np.all(net.named_params()["dense0.bias"] == 0)
    big = distnn.Network([400, 300, 10], init="large", seed=0).named_params()["dense0.weight"]
    assert abs(big.std() - 1.0) < 0.01
    he = distnn.Network([400, 300, 10], init="he", seed=0).named_params()["dense0.weight"]
    assert abs(he.std() - np.sqrt(2 / 400)) < 0.002
    gl = distnn.Network([400, 300, 10], init="glorot", seed=0).named_params()["dense0.weight"]
    assert abs(np.abs(gl).max() - np.sqrt(6 / 700)) < 0.002
    un = distnn.Network([400, 300, 10], init="uniform", init_scale=0.2).named_params()["dense0.weight"]
    assert np.abs(un).max() <= 0.2 and np.abs(un).max() > 0.19


def test_same_seed_same_parameters_different_seed_different():
    a = distnn.Network([20, 10, 5], seed=4).params
    b = distnn.Network([20, 10, 5], seed=4).params
    c = distnn.Network([20, 10, 5], seed=5).params
    assert np.array_equal(a, b) and not np.array_equal(a, c)


@pytest.mark.parametrize("kwargs,match", [
    (dict(sizes=[784]), "layers must be >= 2 positive integers"),
    (dict(sizes=[784, 0, 10]), "layers: 0 is not a layer"),
    (dict(sizes=["conv:4:5", 10]), r"image layers, which need the input's image shape"),
    (dict(sizes=["conv:4", 10], input_shape=(8, 8)), "'conv:4' is not a layer"),
    (dict(sizes=[100, "conv:4:5", 10], input_shape=(8, 8)), "input width of 100"),
    (dict(sizes=["conv:4:3", 10, "pool:2", 10]), "image layers .conv, pool. come before"),
    (dict(sizes=["conv:4:9", 10], input_shape=(8, 8)), "conv0: a 9x9 kernel does not fit"),
    (dict(sizes=[4, 3], activation="gelu"), "unknown hidden activation 'gelu'"),
    (dict(sizes=[4, 3], cost="hinge"), "unknown cost 'hinge'"),
    (dict(sizes=[4, 3], output="sigmoid", cost="log-likelihood"), "needs output activation"),
    (dict(sizes=[4, 3], keep_prob=0.0), "keep_prob"),
    (dict(sizes=[4, 3], dtype="float16"), "dtype"),
    (dict(sizes=[4, 3], init="zeros"), "unknown init"),
])
def test_bad_construction_is_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        distnn.Network(**kwargs)


def test_bad_batches_are_refused():
    net = distnn.Network([4, 3, 2])
    with pytest.raises(ValueError, match=r"shape \(N, 4\)"):
        net.loss_and_grad(np.zeros((5, 3)), np.zeros(5, int))
    with pytest.raises(ValueError, match=r"labels must be in \[0, 2\)"):
        net.loss_and_grad(np.zeros((2, 4)), np.array([0, 2]))
    with pytest.raises(ValueError, match="NaN or inf"):
        net.loss_and_grad(np.array([[0, np.nan, 0, 0]]), np.array([0]))
    with pytest.raises(ValueError, match="integers"):
        net.loss_and_grad(np.zeros((2, 4)), np.array([0.0, 1.0]))


def test_float32_and_float64_agree(rng):
    x, y = _data(rng)
    n32 = distnn.Network([6, 5, 4], seed=0, dtype="float32")
    n64 = distnn.Network([6, 5, 4], seed=0, dtype="float64")
    n64.params[:] = n32.params
    c32, g32 = n32.loss_and_grad(x, y)
    c64, g64 = n64.loss_and_grad(x, y)
    assert g32.dtype == np.float32
    assert c32 == pytest.approx(c64, rel=1e-5)
    np.testing.assert_allclose(g32, g64, rtol=1e-3, atol=1e-6)


def test_the_network_is_built_from_layer_entries_through_the_registry():
    from distnn.core.layers import LAYERS
    net = Network([6, 5, 4, 3], activation="relu", batchnorm=True, keep_prob=0.5,
                  keep_prob_input=0.8)
    entries = net.spec.entries()
    assert [(k, n) for k, n, _ in entries] == [
        ("dropout", "drop_in"), ("dense", "dense0"), ("batchnorm", "bn0"), ("act", "act0"),
        ("dropout", "drop0"), ("dense", "dense1"), ("batchnorm", "bn1"), ("act", "act1"),
        ("dropout", "drop1"), ("dense", "dense2")]
    assert [type(l) for l in net.layers] == [LAYERS[k] for k, _, _ in entries]
    assert [l.name for l in net.weight_layers] == ["dense0", "dense1", "dense2"]
    assert [k for k, _ in net.matrices()] == ["dense0.weight", "dense1.weight",
                                              "dense2.weight"]
    assert net.spec.n_params == net.params.size == 6 * 5 + 2 * 5 + 5 * 4 + 2 * 4 + 4 * 3 + 3
    assert set(net.named_buffers()) == {f"bn{i}.running_{s}" for i in (0, 1)
                                        for s in ("mean", "var")}


def test_an_unknown_layer_kind_and_a_layer_that_does_not_fit_are_named():
    from distnn.core.layers import Dense, build
    with pytest.raises(ValueError, match=r"unknown layer kind .lstm.; known: \[.act., "):
        build("lstm", "lstm0", {})
    with pytest.raises(ValueError, match=r"layer dense1 takes 7 inputs, got an input of "
                                         r"shape \(5,\)"):
        Dense("dense1", 7, 3).out_shape((5,))


def test_the_layers_draw_the_initial_weights_in_order(rng):
    """Each layer initialises its own parameters, in layer order, from one generator:
    the draws of a network of Dense layers with the fan-in rule, w ~ N(0, 1/n_in)."""
    net = Network([6, 5, 3], init="fan-in", seed=4, dtype="float64")
    g = np.random.default_rng(4)
    w0 = g.standard_normal((6, 5)) / np.sqrt(6)
    w1 = g.standard_normal((5, 3)) / np.sqrt(5)
    np.testing.assert_array_equal(net.named_params()["dense0.weight"], w0)
    np.testing.assert_array_equal(net.named_params()["dense1.weight"], w1)
    assert not net.named_params()["dense0.bias"].any()
