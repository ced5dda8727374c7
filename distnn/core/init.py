"""Weight initialisers.  W has shape (n_in, n_out); biases start at zero except for
``large``, which (as in Nielsen's ``large_weight_initializer``) draws them N(0, 1) too.

============  ========================================================
name          distribution of each weight
============  ========================================================
``large``     N(0, 1)
``fan-in``    N(0, 1/n_in)                     (the default; Nielsen ch. 3, LeCun 98)
``glorot``    U(-r, r), r = sqrt(6 / (n_in + n_out))   (Glorot & Bengio 2010)
``he``        N(0, 2/n_in)                     (He et al. 2015, for ReLU)
``uniform``   U(-a, a) with a given ``init_scale`` (default 0.05)
============  ========================================================
"""
from __future__ import annotations

import numpy as np

INITS = ("large", "fan-in", "glorot", "he", "uniform")


def check(name: str, scale: float = 0.05) -> None:
    if name not in INITS:
        raise ValueError(f"unknown init {name!r}; expected one of {list(INITS)}")
    if name == "uniform" and not scale > 0:
        raise ValueError(f"init 'uniform' needs init_scale > 0, got {scale!r}")


def init_dense(name: str, weight: np.ndarray, bias: np.ndarray | None,
               rng: np.random.Generator, scale: float = 0.05) -> None:
    """Fill ``weight`` (n_in, n_out) and ``bias`` (n_out,) in place."""
    check(name, scale)
    n_in, n_out = weight.shape
    if name == "large":
        w = rng.standard_normal(weight.shape)
    elif name == "fan-in":
        w = rng.standard_normal(weight.shape) / np.sqrt(n_in)
    elif name == "he":
        w = rng.standard_normal(weight.shape) * np.sqrt(2.0 / n_in)
    elif name == "glorot":
        r = np.sqrt(6.0 / (n_in + n_out))
        w = rng.uniform(-r, r, weight.shape)
    else:
        w = rng.uniform(-scale, scale, weight.shape)
    weight[...] = w
    if bias is not None:
        bias[...] = rng.standard_normal(bias.shape) if name == "large" else 0.0
