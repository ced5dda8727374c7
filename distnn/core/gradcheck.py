"""Central-difference gradient checking.

    g_num[i] = (f(p - 2h e_i) - 8 f(p - h e_i) + 8 f(p + h e_i) - f(p + 2h e_i)) / 12h
    rel_err  = |g - g_num| / max(|g| + |g_num|, 1e-6)     (elementwise, CS231n's form)

The five-point central difference has truncation error O(h^4) instead of the
two-point formula's O(h^2), so a larger h (1e-3) can be used and the rounding error
(~ eps |f| / h) stays small too: elementwise errors land near 1e-10, far below the
1e-6 a real bug produces.  The 1e-6 floor in the denominator keeps gradients that
are exactly zero (dead ReLUs, dropped units) from turning ~1e-13 of rounding noise
into a "relative error" of 1.  Use float64: in float32 rounding swamps the quotient.
"""
from __future__ import annotations

from typing import Callable

import numpy as np


def numerical_grad(f: Callable[[], float], p: np.ndarray, h: float = 1e-3,
                   indices=None) -> np.ndarray:
    """Numerical gradient of ``f()`` with respect to the array ``p`` (perturbed in place
    and restored).  ``indices`` restricts the check to some flat positions."""
    flat = p.reshape(-1)
    out = np.zeros(flat.shape, dtype=np.float64)
    for i in (range(flat.size) if indices is None else indices):
        old = flat[i]
        vals = []
        for step in (-2, -1, 1, 2):
            flat[i] = old + step * h
            vals.append(f())
        flat[i] = old
        out[i] = (vals[0] - 8 * vals[1] + 8 * vals[2] - vals[3]) / (12 * h)
    return out.reshape(p.shape)


def rel_error(a: np.ndarray, b: np.ndarray, floor: float = 1e-6) -> float:
    """max |a - b| / max(|a| + |b|, floor), elementwise."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.size == 0:
        return 0.0
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(a) + np.abs(b), floor)))


def check_network(net, x, y, *, l1=0.0, l2=0.0, n=None, h=1e-3, max_per_block=None,
                  rng=None) -> dict[str, float]:
    """Compare the network's analytic gradient (plus L1/L2 terms; λ a number or one per
    weight matrix) with central
    differences.  Returns {parameter name: max relative error}.

    ``max_per_block`` samples that many positions per parameter block (with ``rng``)
    to keep big networks quick; None checks every parameter.
    """
    from .regularizers import Penalty  # local: keeps this module standalone

    n = n or len(x)
    x, y = net.check_batch(x, y)
    pen = Penalty(net, l1, l2)

    def cost() -> float:
        c, _ = net.loss_and_grad(x, y)
        return c + pen.value(net.params, n)

    _, grad = net.loss_and_grad(x, y)
    pen.add_grad(grad, net.params, n)
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
