"""The image layers (``core.conv``): float64 central differences for inputs and
parameters, and PyTorch's conv2d/max_pool2d and autograd as the oracle (NCHW there,
NHWC here)."""
import numpy as np
import pytest

from distnn.core.conv import Conv2D, Flatten, MaxPool2D
from distnn.core.layers import BatchNorm, Dropout
from tests.core.test_layers import _bind, _check_layer


@pytest.mark.parametrize("padding,need_dx", [("valid", True), ("same", True),
                                             ("valid", False)])
def test_conv_gradients(padding, need_dx, rng):
    layer = Conv2D("c", (6, 5, 2), 3, 3, padding, need_input_grad=need_dx)
    params, grads = _bind(layer, rng)
    x = rng.standard_normal((2, 6, 5, 2))
    if need_dx:
        _check_layer(layer, x, params, grads)
    else:
        g = rng.standard_normal(layer.forward(x, train=True).shape)
        assert layer.backward(g) is None


def test_conv_without_bias_and_pool_and_flatten_gradients(rng):
    conv = Conv2D("c", (5, 5, 1), 2, 3, bias=False)
    params, grads = _bind(conv, rng)
    assert set(params) == {"weight"}
    _check_layer(conv, rng.standard_normal((3, 5, 5, 1)), params, grads)
    for size, shape in ((2, (6, 4, 3)), (2, (5, 7, 2)), (3, (6, 6, 1))):   # (odd: cropped)
        pool = MaxPool2D("p", shape, size)
        _check_layer(pool, rng.standard_normal((2, *shape)), {}, {})
    _check_layer(Flatten("f", (3, 2, 2)), rng.standard_normal((4, 3, 2, 2)), {}, {})


def test_batch_norm_and_dropout_act_per_channel_and_element_on_images(rng):
    bn = BatchNorm("bn", 3)
    params, grads = _bind(bn, rng)
    _check_layer(bn, rng.standard_normal((2, 4, 3, 3)), params, grads)
    x = rng.standard_normal((5, 4, 4, 3))
    out = bn.forward(x, train=True)
    flat = out.reshape(-1, 3)
    np.testing.assert_allclose((flat - params["beta"]).mean(axis=0), 0, atol=1e-12)
    drop = Dropout("d", 0.5, seed=1, stream=3)
    drop.context = (0, np.arange(5))
    y = drop.forward(x, train=True)
    kept = y != 0
    assert 0.3 < kept.mean() < 0.7 and kept.shape == x.shape
    np.testing.assert_allclose(y[kept], 2 * x[kept])


def test_shapes_that_do_not_fit_are_named():
    with pytest.raises(ValueError, match="layer conv1: a 5x5 kernel does not fit an input "
                                         "of 4x4x20"):
        Conv2D("conv1", (4, 4, 20), 40, 5)
    with pytest.raises(ValueError, match="'same' padding needs an odd kernel"):
        Conv2D("conv0", (8, 8, 1), 4, 2, "same")
    with pytest.raises(ValueError, match="layer pool0: a 3x3 pool does not fit"):
        MaxPool2D("pool0", (2, 2, 4), 3)
    with pytest.raises(ValueError, match=r"layer conv0 takes \(8, 8, 1\) images, got an "
                                         r"input of shape \(7, 7, 1\)"):
        Conv2D("conv0", (8, 8, 1), 4, 3).out_shape((7, 7, 1))


torch = pytest.importorskip("torch")


def _nchw(a):
    return torch.tensor(np.ascontiguousarray(a.transpose(0, 3, 1, 2)), requires_grad=True)


@pytest.mark.parametrize("padding,k,c,f", [("valid", 5, 1, 4), ("same", 3, 3, 5),
                                           ("valid", 3, 4, 2)])
def test_conv_equals_torch_conv2d_forward_and_backward(padding, k, c, f, rng):
    conv = Conv2D("c", (9, 8, c), f, k, padding)
    params, grads = _bind(conv, rng)
    x = rng.standard_normal((3, 9, 8, c))
    y = conv.forward(x, train=True)
    g = rng.standard_normal(y.shape)
    dx = conv.backward(g.copy()).copy()
    xt = _nchw(x)
    wt = torch.tensor(params["weight"].transpose(3, 2, 0, 1).copy(), requires_grad=True)
    bt = torch.tensor(params["bias"], requires_grad=True)
    yt = torch.nn.functional.conv2d(xt, wt, bt, padding=(k - 1) // 2 if padding == "same"
                                    else 0)
    yt.backward(torch.tensor(g.transpose(0, 3, 1, 2).copy()))
    np.testing.assert_allclose(y, yt.detach().numpy().transpose(0, 2, 3, 1), rtol=1e-10,
                               atol=1e-12)
    np.testing.assert_allclose(dx, xt.grad.numpy().transpose(0, 2, 3, 1), rtol=1e-10,
                               atol=1e-12)
    np.testing.assert_allclose(grads["weight"], wt.grad.numpy().transpose(2, 3, 1, 0),
                               rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(grads["bias"], bt.grad.numpy(), rtol=1e-10, atol=1e-12)


def test_max_pool_equals_torch_with_ties_routed_to_the_first_maximum(rng):
    """ReLU's zeros make ties common; PyTorch sends a window's gradient to its first
    maximum, and so does distnn (never to every tied element)."""
    pool = MaxPool2D("p", (6, 7, 2), 2)
    x = np.maximum(rng.standard_normal((2, 6, 7, 2)), 0)        # many windows all zero
    y = pool.forward(x, train=True)
    g = rng.standard_normal(y.shape)
    dx = pool.backward(g.copy())
    xt = _nchw(x)
    yt = torch.nn.functional.max_pool2d(xt, 2)
    yt.backward(torch.tensor(g.transpose(0, 3, 1, 2).copy()))
    np.testing.assert_array_equal(y, yt.detach().numpy().transpose(0, 2, 3, 1))
    np.testing.assert_array_equal(dx, xt.grad.numpy().transpose(0, 2, 3, 1))
    assert (x.reshape(-1) == 0).mean() > 0.3


def test_a_conv_network_equals_torch_autograd_end_to_end(rng):
    """A whole network (conv, ReLU, pool, conv 'same', ReLU, pool, flatten, dense, ReLU,
    dense, softmax, log-likelihood) against the same network in PyTorch: the cost and
    every parameter's gradient, float64."""
    from distnn.core.network import Network
    net = Network(["conv:4:5", "pool:2", "conv:6:3:same", "pool:2", 20, 10],
                  activation="relu", output="softmax", cost="log-likelihood",
                  init="he", input_shape=(12, 12, 2), dtype="float64", seed=5)
    x = rng.random((7, 288))
    y = rng.integers(0, 10, 7)
    cost, grad = net.loss_and_grad(x, y)
    p = {k: torch.tensor(v.copy(), requires_grad=True) for k, v in net.named_params().items()}
    F = torch.nn.functional
    h = torch.tensor(x).reshape(7, 12, 12, 2).permute(0, 3, 1, 2)

    def conv(t, key, pad):
        return F.conv2d(t, p[f"{key}.weight"].permute(3, 2, 0, 1), p[f"{key}.bias"],
                        padding=pad)
    h = F.max_pool2d(F.relu(conv(h, "conv0", 0)), 2)
    h = F.max_pool2d(F.relu(conv(h, "conv1", 1)), 2)
    h = h.permute(0, 2, 3, 1).reshape(7, -1)         # NHWC order, as distnn flattens
    h = F.relu(h @ p["dense0.weight"] + p["dense0.bias"])
    z = h @ p["dense1.weight"] + p["dense1.bias"]
    loss = F.cross_entropy(z, torch.tensor(y))
    loss.backward()
    assert cost == pytest.approx(loss.item(), rel=1e-12)
    for k, sl in net.slices.items():
        np.testing.assert_allclose(grad[sl], p[k].grad.numpy().reshape(-1), rtol=1e-9,
                                   atol=1e-12, err_msg=k)
