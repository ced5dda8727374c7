"""Central-difference gradient checking.

    g_num[i] = (f(p + h e_i) - f(p - h e_i)) / 2h
    rel_err  = |g - g_num| / max(|g| + |g_num|, tiny)     (CS231n's form)

Use float64: in float32 the rounding error of f swamps the difference quotient.
"""
from __future__ import annotations

from typing import Callable

import numpy as np


def numerical_grad(f: Callable[[], float], p: np.ndarray, h: float = 1e-5,
                   indices=None) -> np.ndarray:
    """Numerical gradient of ``f()`` with respect to the array ``p`` (perturbed in place
    and restored).  ``indices`` restricts the check to some flat positions."""
    flat = p.reshape(-1)
    out = np.zeros(flat.shape, dtype=np.float64)
    for i in (range(flat.size) if indices is None else indices):
        old = flat[i]
        flat[i] = old + h
        fp = f()
        flat[i] = old - h
        fm = f()
        flat[i] = old
        out[i] = (fp - fm) / (2 * h)
    return out.reshape(p.shape)


def rel_error(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b| / max(|a| + |b|, 1e-12), elementwise."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.size == 0:
        return 0.0
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(a) + np.abs(b), 1e-12)))


def check_network(net, x, y, *, l1=0.0, l2=0.0, n=None, h=1e-5, max_per_block=None,
                  rng=None) -> dict[str, float]:
    """Compare the network's analytic gradient (plus L1/L2 terms) with central
    differences.  Returns {parameter name: max relative error}.

    ``max_per_block`` samples that many positions per parameter block (with ``rng``)
    to keep big networks quick; None checks every parameter.
    """
    from .regularizers import add_grad, penalty  # local: keeps this module standalone

    n = n or len(x)
    x, y = net.check_batch(x, y)

    def cost() -> float:
        c, _ = net.loss_and_grad(x, y)
        return c + penalty(net.params[:net.n_decay], l1, l2, n)

    _, grad = net.loss_and_grad(x, y)
    add_grad(grad[:net.n_decay], net.params[:net.n_decay], l1, l2, n)
    errors = {}
    for name, sl in net.slices.items():
        size = sl.stop - sl.start
        idx = np.arange(size)
        if max_per_block is not None and size > max_per_block:
            rng = rng or np.random.default_rng(0)
            idx = np.sort(rng.choice(size, max_per_block, replace=False))
        num = numerical_grad(cost, net.params[sl], h, indices=idx)
        errors[name] = rel_error(grad[sl][idx], num[idx])
    return errors
