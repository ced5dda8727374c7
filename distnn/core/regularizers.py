"""Weight penalties, scaled by the training-set size n as in Nielsen ch. 3.

    L2:  C = C0 + (λ2 / 2n) Σ w²      ∂/∂w = (λ2 / n) w
    L1:  C = C0 + (λ1 / n)  Σ |w|     ∂/∂w = (λ1 / n) sign(w)

Only weights are penalised (biases and batch-norm γ, β are not): they are the
leading ``n_decay`` entries of the network's flat parameter vector.  In the
distributed path these terms are added once, after the gradient all-reduce.

λ may also be given per weight matrix (one value per matrix the network's layers declare,
input side first: ``Network.matrices``),
as in LeCun et al.'s "separate L2 per layer": ``Penalty`` resolves either form into
blocks of the flat vector, one block when every layer shares λ.

Max-norm (Srivastava et al. 2014) instead constrains each unit's incoming weight
vector after every update:  W[:, j] ← W[:, j] · min(1, c / ||W[:, j]||).
"""
from __future__ import annotations

import numpy as np


def per_layer(value, n_layers: int, name: str) -> list[float]:
    """λ as one float per weight matrix: a number is shared by every layer; a sequence
    must have one entry per Dense layer."""
    if isinstance(value, (int, float, np.number)) and not isinstance(value, bool):
        vals = [float(value)] * n_layers
    else:
        try:
            vals = [float(v) for v in value]
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be a number or one number per weight layer, "
                             f"got {value!r}") from None
        if len(vals) != n_layers:
            raise ValueError(f"{name} has {len(vals)} values but the network has {n_layers} "
                             f"weight layers; give one value or {n_layers}")
    for v in vals:
        if not v >= 0:
            raise ValueError(f"{name} must be >= 0, got {value!r}")
    return vals


def check(l1, l2, max_norm: float | None, n_layers: int = 1) -> None:
    per_layer(l1, n_layers, "l1")
    per_layer(l2, n_layers, "l2")
    if max_norm is not None and not max_norm > 0:
        raise ValueError(f"max_norm must be > 0 (or unset), got {max_norm!r}")


class Penalty:
    """The L1/L2 terms of a network, as blocks (slice, λ1, λ2) of its flat vectors."""

    def __init__(self, net, l1=0.0, l2=0.0):
        keys = [k for k, _ in net.matrices()]
        l1s, l2s = per_layer(l1, len(keys), "l1"), per_layer(l2, len(keys), "l2")
        if len(set(l1s)) == 1 and len(set(l2s)) == 1:
            blocks = [(slice(0, net.n_decay), l1s[0], l2s[0])]
        else:
            blocks = [(net.slices[k], a, b) for k, a, b in zip(keys, l1s, l2s)]
        self.blocks = [(sl, a, b) for sl, a, b in blocks if a or b]
        self.only_l2 = all(not a for _, a, _ in self.blocks)

    def __bool__(self) -> bool:
        return bool(self.blocks)

    def shard(self, lo: int, hi: int) -> "Penalty":
        """The same penalty on ``params[lo:hi]`` (blocks clipped to it, from 0)."""
        cache = self.__dict__.setdefault("_shards", {})
        if (lo, hi) not in cache:
            part = object.__new__(Penalty)
            part.blocks = [(slice(max(sl.start, lo) - lo, min(sl.stop, hi) - lo), a, b)
                           for sl, a, b in self.blocks if sl.start < hi and sl.stop > lo]
            part.only_l2 = self.only_l2
            cache[lo, hi] = part
        return cache[lo, hi]

    def value(self, params: np.ndarray, n: int) -> float:
        return sum(penalty(params[sl], a, b, n) for sl, a, b in self.blocks)

    def add_grad(self, grads, params, n, scratch=None, scale: float = 1.0) -> None:
        """grads += scale · ∂penalty/∂params, block by block (``scratch`` holds at least
        ``n_decay`` entries)."""
        for sl, a, b in self.blocks:
            add_grad(grads[sl], params[sl], a, b, n,
                     None if scratch is None else scratch[:sl.stop - sl.start], scale)

    def decay_(self, params, lr: float, n: int) -> None:
        """w ← (1 - lr λ2 / n) w for L2-only penalties (plain SGD's fused form)."""
        for sl, _, b in self.blocks:
            params[sl] *= params.dtype.type(1.0 - lr * b / n)


def penalty(weights: np.ndarray, l1: float, l2: float, n: int) -> float:
    """(λ1/n) Σ|w| + (λ2/2n) Σw² for the flat weight vector ``weights``."""
    out = 0.0
    if l2:
        out += l2 / (2.0 * n) * float(np.dot(weights, weights))
    if l1:
        out += l1 / n * float(np.abs(weights).sum(dtype=np.float64))
    return out


def add_grad(grad_w: np.ndarray, weights: np.ndarray, l1: float, l2: float, n: int,
             scratch: np.ndarray | None = None, scale: float = 1.0) -> None:
    """grad_w += scale ((λ2/n) w + (λ1/n) sign(w)), in place (``scale`` = -lr when the
    gradient has been pre-multiplied by -lr)."""
    if scratch is None:
        scratch = np.empty_like(weights)
    if l2:
        np.multiply(weights, weights.dtype.type(scale * l2 / n), out=scratch)
        grad_w += scratch
    if l1:
        np.sign(weights, out=scratch)
        scratch *= weights.dtype.type(scale * l1 / n)
        grad_w += scratch


def apply_max_norm(weight_mats, c: float) -> None:
    """Rescale each column (a unit's incoming weights) of each (n_in, n_out) matrix
    so its Euclidean norm is at most ``c``."""
    for w in weight_mats:
        norms = np.sqrt(np.einsum("ij,ij->j", w, w))
        over = norms > c
        if over.any():
            w[:, over] *= (c / norms[over]).astype(w.dtype)
