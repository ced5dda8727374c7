"""Weight penalties, scaled by the training-set size n as in Nielsen ch. 3.

    L2:  C = C0 + (λ2 / 2n) Σ w²      ∂/∂w = (λ2 / n) w
    L1:  C = C0 + (λ1 / n)  Σ |w|     ∂/∂w = (λ1 / n) sign(w)

Only weights are penalised (biases and batch-norm γ, β are not): they are the
leading ``n_decay`` entries of the network's flat parameter vector.  In the
distributed path these terms are added once, after the gradient all-reduce.

Max-norm (Srivastava et al. 2014) instead constrains each unit's incoming weight
vector after every update:  W[:, j] ← W[:, j] · min(1, c / ||W[:, j]||).
"""
from __future__ import annotations

import numpy as np


def check(l1: float, l2: float, max_norm: float | None) -> None:
    if not l1 >= 0:
        raise ValueError(f"l1 must be >= 0, got {l1!r}")
    if not l2 >= 0:
        raise ValueError(f"l2 must be >= 0, got {l2!r}")
    if max_norm is not None and not max_norm > 0:
        raise ValueError(f"max_norm must be > 0 (or unset), got {max_norm!r}")


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
