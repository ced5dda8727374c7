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
                   indices=None, smooth: Callable[[], bool] | None = None) -> np.ndarray:
    """Numerical gradient of ``f()`` with respect to the array ``p`` (perturbed in place
    and restored).  ``indices`` restricts the check to some flat positions.  ``smooth()``,
    if given, says after each ``f()`` whether it stayed on the smooth piece it started
    on (a max-pooling layer chose the same maxima); where it did not, the step h is
    divided by 10 for that position, down to 1e-7, and a position that still crosses a
    kink (one that sits on it: a ReLU's input exactly 0) has no derivative to compare:
    NaN."""
    flat = p.reshape(-1)
    out = np.zeros(flat.shape, dtype=np.float64)
    for i in (range(flat.size) if indices is None else indices):
        old, step_h = flat[i], h
        while True:
            vals, kinked = [], False
            for step in (-2, -1, 1, 2):
                flat[i] = old + step * step_h
                vals.append(f())
                kinked = kinked or (smooth is not None and not smooth())
            flat[i] = old
            if not kinked or step_h <= 1e-7:
                break
            step_h /= 10
        out[i] = np.nan if kinked else \
            (vals[0] - 8 * vals[1] + 8 * vals[2] - vals[3]) / (12 * step_h)
    return out.reshape(p.shape)


def rel_error(a: np.ndarray, b: np.ndarray, floor: float = 1e-6) -> float:
    """max |a - b| / max(|a| + |b|, floor), elementwise."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.size == 0:
        return 0.0
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(a) + np.abs(b), floor)))


def check_network(net, x, y, *, l1=0.0, l2=0.0, n=None, h=None, max_per_block=None,
                  rng=None) -> dict[str, float]:
    """Compare the network's analytic gradient (plus L1/L2 terms; λ a number or one per
    weight matrix) with central
    differences.  Returns {parameter name: max relative error}.

    ``max_per_block`` samples that many positions per parameter block (with ``rng``)
    to keep big networks quick; None checks every parameter.  Where a step of ``h``
    crosses a kink of a layer's output (max pooling choosing another maximum: a window
    whose two largest values are that close), that position is measured again with a
    smaller step (``numerical_grad``'s ``smooth``).
    """
    from .regularizers import Penalty  # local: keeps this module standalone

    n = n or len(x)
    h = 1e-3 if h is None else h
    x, y = net.check_batch(x, y)
    pen = Penalty(net, l1, l2)

    def cost() -> float:
        c, _ = net.loss_and_grad(x, y)
        return c + pen.value(net.params, n)

    _, grad = net.loss_and_grad(x, y)
    pen.add_grad(grad, net.params, n)
    kinked = [layer for layer in net.layers if layer.kinked]
    pieces = [layer.piece() for layer in kinked]

    def smooth() -> bool:
        return all(np.array_equal(layer.piece(), was) for layer, was in zip(kinked, pieces))

    errors = {}
    for name, sl in net.slices.items():
        size = sl.stop - sl.start
        idx = np.arange(size)
        if max_per_block is not None and size > max_per_block:
            rng = rng or np.random.default_rng(0)
            idx = np.sort(rng.choice(size, max_per_block, replace=False))
        num = numerical_grad(cost, net.params[sl], h, indices=idx,
                             smooth=smooth if kinked else None)
        ok = np.isfinite(num[idx])        # (positions on a kink have no derivative)
        errors[name] = rel_error(grad[sl][idx][ok], num[idx][ok])
    return errors
