"""How a replica's reduced gradient becomes its update: the one place that decides where
the factor -lr is applied.

An optimizer that is linear in the gradient (``prescalable``: SGD, momentum, Nesterov)
takes -lr g, which costs nothing when it is folded into the backward pass (the summed
gradient is scaled by -lr/B instead of 1/B) and saves a pass over the parameters.  That
is only right when the group's reduction is linear and keeps no state
(``Group.takes_scaled``); a compressor with error feedback must see the mean gradient,
so it is handed ``scale=-lr`` and applies it to what it returns.  Adaptive optimizers
(RMSprop, Adam) take the mean gradient itself.

=====================  ==================  ==================  ========================
optimizer, group       backward scale      reduction's scale   step
=====================  ==================  ==================  ========================
linear, linear         -lr / B             1                   ``step_prescaled``
linear, not linear     1 / B               -lr                 ``step_prescaled``
adaptive, any          1 / B               1                   ``step``
=====================  ==================  ==================  ========================

L1/L2 terms are added once, after the reduction, on the replica's shard, scaled like the
gradient they join; an L2-only penalty with an optimizer that ``folds_decay`` is applied
as w <- (1 - lr l2 / n) w instead (one pass fewer).
"""
from __future__ import annotations

import numpy as np


class Update:
    """The update rule of one replica for ``optimizer`` with a group that
    ``takes_scaled`` (see the module's docstring)."""

    def __init__(self, optimizer, takes_scaled: bool = True):
        self.optimizer = optimizer
        self.prescaled = optimizer.prescalable
        self.in_backward = self.prescaled and takes_scaled

    def backward_scale(self, batch_count: int) -> float:
        """What the summed batch gradient is multiplied by in the backward pass."""
        if self.in_backward:
            return -self.optimizer.lr / batch_count
        return 1.0 / batch_count

    def reduce_scale(self) -> float:
        """What the group multiplies the reduced gradient by (``reduce_parts_``)."""
        return -self.optimizer.lr if self.prescaled and not self.in_backward else 1.0

    def apply(self, params: np.ndarray, grads: np.ndarray, penalty, n: int,
              scratch: np.ndarray) -> None:
        """Add ``penalty``'s gradient (training-set size ``n``) to the reduced ``grads``
        and step the optimizer on ``params`` (this replica's shard of both)."""
        opt = self.optimizer
        opt.start_average(params)
        if not self.prescaled:
            penalty.add_grad(grads, params, n, scratch)
            opt.step(params, grads)
            return
        if penalty and penalty.only_l2 and opt.folds_decay:
            # w - lr (g + (l2/n) w) == (1 - lr l2 / n) w - lr g: one pass fewer
            penalty.decay_(params, opt.lr, n)
        else:
            penalty.add_grad(grads, params, n, scratch, scale=-opt.lr)
        opt.step_prescaled(params, grads)
