"""Cost functions: the per-example cost C and the output error delta = dC/dz.

Targets are integer class labels ``y`` (N,); ``Y`` below is their one-hot form.
Costs are *summed* over the batch here; the network divides by the example count
once (see ``Network.loss_and_grad``), which keeps the distributed sum exact.

=================  ==========================================  ====================
name               C for one example                           delta = dC/dz
=================  ==========================================  ====================
``quadratic``      1/2 ||a - Y||^2                             (a - Y) ⊙ f'(z)
``cross-entropy``  -sum_j [Y_j ln a_j + (1 - Y_j) ln(1 - a_j)]  a - Y   (sigmoid f)
``log-likelihood`` -ln a_y                                     a - Y   (softmax f)
=================  ==========================================  ====================

The last two rows are why those pairs learn fast: the f'(z) factor that makes a
saturated sigmoid neuron learn slowly under the quadratic cost cancels exactly
(Nielsen, ch. 3). The values are computed from z in a form that never takes
log(0) nor overflows exp.
"""
from __future__ import annotations

import numpy as np

from .activations import Activation


class Cost:
    name = ""
    #: output activation this cost is defined for; None means any.
    requires_output: str | None = None

    def check_output(self, act: Activation) -> None:
        if self.requires_output is not None and act.name != self.requires_output:
            raise ValueError(
                f"cost {self.name!r} needs output activation {self.requires_output!r}, "
                f"got {act.name!r}; use --output {self.requires_output} or --cost quadratic")

    def loss_and_delta(self, z, a, y, act, delta, scratch, scale) -> float:
        """Return sum_i C_i and write ``scale * dC/dz`` into ``delta``.

        Parameters
        ----------
        z, a : (N, C) pre-activation and output activation f(z) of the last layer.
        y : (N,) flat positions of the targets, ``arange(N) * C + labels`` (see
            ``target_positions``).  act : the output Activation.
        delta, scratch : (N, C) buffers; ``delta`` receives the result.
        scale : float multiplying delta (1 for sums, 1/N for means).
        """
        raise NotImplementedError


def target_positions(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Flat indices of the one-hot 1s in an (N, n_classes) array: i * C + labels[i]."""
    return np.arange(0, len(labels) * n_classes, n_classes) + labels


def _a_minus_onehot(a, pos, delta, scale):
    np.copyto(delta, a)
    flat = delta.reshape(-1)
    flat[pos] -= 1.0
    if scale != 1.0:
        delta *= scale
    return delta


class Quadratic(Cost):
    name = "quadratic"

    def loss_and_delta(self, z, a, y, act, delta, scratch, scale):
        _a_minus_onehot(a, y, delta, 1.0)
        loss = 0.5 * float(np.vdot(delta, delta))
        act.backward_(delta, a, scratch)
        if scale != 1.0:
            delta *= scale
        return loss


class CrossEntropy(Cost):
    name = "cross-entropy"
    requires_output = "sigmoid"

    def loss_and_delta(self, z, a, y, act, delta, scratch, scale):
        # -[Y ln s(z) + (1-Y) ln(1-s(z))] = softplus(z) - Y z, and softplus is logaddexp(0, z).
        np.logaddexp(0.0, z, out=scratch)
        loss = float(scratch.sum(dtype=np.float64)) - float(
            z.reshape(-1).take(y).sum(dtype=np.float64))
        _a_minus_onehot(a, y, delta, scale)
        return loss


class LogLikelihood(Cost):
    name = "log-likelihood"
    requires_output = "softmax"

    def loss_and_delta(self, z, a, y, act, delta, scratch, scale):
        # -ln softmax(z)_y = logsumexp(z) - z_y, shifted by max(z) so exp cannot overflow.
        m = z.max(axis=1, keepdims=True)
        np.subtract(z, m, out=scratch)
        np.exp(scratch, out=scratch)
        lse = np.log(scratch.sum(axis=1, dtype=np.float64)) + m[:, 0]
        loss = float(lse.sum() - z.reshape(-1).take(y).sum(dtype=np.float64))
        _a_minus_onehot(a, y, delta, scale)
        return loss


COSTS = {cls.name: cls for cls in (Quadratic, CrossEntropy, LogLikelihood)}


def get(name: str) -> Cost:
    if name not in COSTS:
        raise ValueError(f"unknown cost {name!r}; expected one of {sorted(COSTS)}")
    return COSTS[name]()
