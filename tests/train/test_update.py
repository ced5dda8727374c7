"""Where -lr goes, decided once (``train.update.Update``), against the written update."""
import numpy as np
import pytest

from distnn.core import optim, regularizers
from distnn.core.network import Network
from distnn.train.update import Update


@pytest.mark.parametrize("name,takes_scaled,backward,reduce", [
    ("momentum", True, -0.1 / 8, 1.0),      # folded into the backward pass
    ("momentum", False, 1 / 8, -0.1),       # a compressor with state applies it
    ("adam", True, 1 / 8, 1.0),             # adaptive: the mean gradient itself
    ("adam", False, 1 / 8, 1.0),
])
def test_where_minus_lr_is_applied(name, takes_scaled, backward, reduce):
    opt = optim.OPTIMIZERS[name](lr=0.1)
    u = Update(opt, takes_scaled)
    assert u.backward_scale(8) == pytest.approx(backward)
    assert u.reduce_scale() == pytest.approx(reduce)


@pytest.mark.parametrize("name", ["sgd", "momentum", "adam"])
@pytest.mark.parametrize("l1,l2", [(0.0, 0.0), (0.0, 2.0), (1.0, 2.0)])
def test_every_path_takes_the_same_step_as_the_plain_formula(name, l1, l2, rng):
    """However -lr is folded, the step is w <- step(w, g + dPenalty/dw)."""
    net = Network([5, 4, 3], dtype="float64")
    pen = regularizers.Penalty(net, l1, l2)
    g = rng.standard_normal(net.params.size)
    n = 50
    want_opt = optim.OPTIMIZERS[name](lr=0.1)
    want = net.params.copy()
    full = g.copy()
    pen.add_grad(full, want, n)
    want_opt.step(want, full)
    for takes_scaled in (True, False):
        opt = optim.OPTIMIZERS[name](lr=0.1)
        u = Update(opt, takes_scaled)
        params = net.params.copy()
        # what the reduction hands over: g scaled in the backward pass and by the group
        grads = g * (u.backward_scale(1) * u.reduce_scale())
        u.apply(params, grads, pen, n, np.empty(net.n_decay))
        np.testing.assert_allclose(params, want, rtol=1e-12, atol=1e-14)
