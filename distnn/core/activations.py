"""Activation functions, applied in place, with derivatives from their outputs.

Every activation here has a derivative that can be written in terms of its output
``a = f(z)``, so a layer only has to keep ``a`` (not ``z``) for the backward pass:

==============  ==============================  ===============================
name            f(z)                            f'(z) written with a = f(z)
==============  ==============================  ===============================
``sigmoid``     1 / (1 + exp(-z))               a (1 - a)
``tanh``        tanh(z)                         1 - a^2
``scaled-tanh`` 1.7159 tanh(2z/3)  (LeCun 98)   (2/3) (1.7159 - a^2 / 1.7159)
``relu``        max(z, 0)                       1 if a > 0 else 0
``identity``    z                               1
==============  ==============================  ===============================

``softmax`` (output layer only) is row-wise: a_j = exp(z_j) / sum_k exp(z_k); its
Jacobian-vector product is  a ⊙ (g - <g, a>)  for an upstream gradient g.
"""
from __future__ import annotations

import numpy as np

LECUN_A = 1.7159
LECUN_B = 2.0 / 3.0


class Activation:
    """Elementwise activation: ``forward_`` overwrites z with f(z);
    ``backward_`` overwrites the upstream gradient with grad * f'(z)."""

    name = ""

    def forward_(self, z: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def backward_(self, grad: np.ndarray, a: np.ndarray, scratch: np.ndarray) -> np.ndarray:
        """grad (N, D) *= f'(z), using a = f(z) (N, D); ``scratch`` is a free (N, D) buffer."""
        raise NotImplementedError


class Sigmoid(Activation):
    name = "sigmoid"

    def forward_(self, z):
        # exp(-z) overflows to inf for z < -88 (float32) and 1/(1+inf) = 0 is the right
        # limit; callers run this under np.errstate(over="ignore") (see ``quiet``).
        np.negative(z, out=z)
        np.exp(z, out=z)
        z += 1.0
        np.reciprocal(z, out=z)
        return z

    def backward_(self, grad, a, scratch):
        np.subtract(1.0, a, out=scratch)
        scratch *= a
        grad *= scratch
        return grad


class Tanh(Activation):
    name = "tanh"

    def forward_(self, z):
        return np.tanh(z, out=z)

    def backward_(self, grad, a, scratch):
        np.multiply(a, a, out=scratch)
        np.subtract(1.0, scratch, out=scratch)
        grad *= scratch
        return grad


class ScaledTanh(Activation):
    """LeCun et al. (1998) 'Efficient BackProp': 1.7159 tanh(2z/3), so that f(±1) = ±1."""

    name = "scaled-tanh"

    def forward_(self, z):
        z *= LECUN_B
        np.tanh(z, out=z)
        z *= LECUN_A
        return z

    def backward_(self, grad, a, scratch):
        # d/dz A tanh(Bz) = A B (1 - tanh^2) = B (A - a^2 / A)
        np.multiply(a, a, out=scratch)
        scratch *= -LECUN_B / LECUN_A
        scratch += LECUN_A * LECUN_B
        grad *= scratch
        return grad


class ReLU(Activation):
    name = "relu"

    def forward_(self, z):
        return np.maximum(z, 0.0, out=z)

    def backward_(self, grad, a, scratch):
        # Multiplying by the boolean mask is the branch-free form of "grad where a > 0".
        np.greater(a, 0.0, out=scratch)
        grad *= scratch
        return grad


class Identity(Activation):
    name = "identity"

    def forward_(self, z):
        return z

    def backward_(self, grad, a, scratch):
        return grad


class Softmax(Activation):
    """Row-wise softmax, shifted by the row maximum so exp never overflows."""

    name = "softmax"

    def forward_(self, z):
        z -= z.max(axis=1, keepdims=True)
        np.exp(z, out=z)
        z /= z.sum(axis=1, keepdims=True)
        return z

    def backward_(self, grad, a, scratch):
        # J^T g = a * (g - sum_k g_k a_k): the softmax Jacobian is diag(a) - a a^T.
        np.multiply(grad, a, out=scratch)
        dot = scratch.sum(axis=1, keepdims=True)
        grad -= dot
        grad *= a
        return grad


def quiet() -> np.errstate:
    """The floating-point error state the network runs under: overflow in exp is the
    intended saturation of sigmoid, and a NaN from a diverging run is caught by the
    trainer's finite-cost check, which says what happened and what to try."""
    return np.errstate(over="ignore", under="ignore", invalid="ignore")


HIDDEN = {cls.name: cls for cls in (Sigmoid, Tanh, ScaledTanh, ReLU)}
OUTPUT = {cls.name: cls for cls in (Sigmoid, Softmax, Tanh, ScaledTanh, ReLU, Identity)}


def get(name: str, *, output: bool = False) -> Activation:
    """Return the activation called ``name``; raise ValueError listing the choices."""
    table = OUTPUT if output else HIDDEN
    if name not in table:
        role = "output" if output else "hidden"
        raise ValueError(
            f"unknown {role} activation {name!r}; expected one of {sorted(table)}")
    return table[name]()
