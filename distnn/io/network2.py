"""Nielsen's network2.py JSON format (``save()``/``load()`` in the book's code):

    {"sizes": [784, 30, 10], "weights": [W1, W2, ...], "biases": [b1, b2, ...],
     "cost": "CrossEntropyCost" | "QuadraticCost"}

with each W of shape (n_out, n_in) and each b a column (n_out, 1), sigmoid neurons
throughout.  distnn stores W as (n_in, n_out), so conversion transposes.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

COSTS = {"cross-entropy": "CrossEntropyCost", "quadratic": "QuadraticCost"}


def export(net, path) -> None:
    """Write ``net`` as network2 JSON; only networks network2 can run are accepted."""
    c = net.config
    problems = [f"{k} is {c[k]!r}" for k, want in
                (("activation", "sigmoid"), ("output", "sigmoid")) if c[k] != want]
    if c["cost"] not in COSTS:
        problems.append(f"cost is {c['cost']!r}")
    if c["batchnorm"]:
        problems.append("it uses batch norm")
    image = sorted({layer.kind for layer in net.layers} - {"dense", "act", "dropout"})
    if image:
        problems.append(f"it has {' and '.join(image)} layers (network2 has dense ones only)")
    if problems:
        raise ValueError("network2.py runs sigmoid networks with a cross-entropy or quadratic "
                         "cost only; this one cannot be exported: " + "; ".join(problems))
    p = net.named_params()
    n = len(net.sizes) - 1
    doc = {"sizes": net.sizes,
           "weights": [p[f"dense{i}.weight"].T.astype(float).tolist() for i in range(n)],
           "biases": [p[f"dense{i}.bias"].reshape(-1, 1).astype(float).tolist() for i in range(n)],
           "cost": COSTS[c["cost"]]}
    from .files import write_text_atomic
    write_text_atomic(path, json.dumps(doc))


def load(path):
    """A distnn ``Network`` (float64, as network2 computes) from network2 JSON."""
    from ..core.network import Network
    try:
        doc = json.loads(Path(path).read_text())
        sizes, ws, bs, cost = doc["sizes"], doc["weights"], doc["biases"], doc["cost"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: not network2 JSON ({e})") from None
    inv = {v: k for k, v in COSTS.items() if isinstance(v, str)}
    if not isinstance(cost, str) or cost not in inv:
        raise ValueError(f"{path}: unknown cost {cost!r}; expected one of {sorted(inv)}")
    if not (isinstance(sizes, list) and len(sizes) >= 2 and all(
            isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= 1 << 20
            for n in sizes)) or not isinstance(ws, list) or not isinstance(bs, list) \
            or not len(ws) == len(bs) == len(sizes) - 1:
        raise ValueError(f"{path}: 'sizes' must list >= 2 layer sizes (1..2**20) and "
                         "'weights'/'biases' one entry per layer after the first")
    net = Network(sizes, activation="sigmoid", output="sigmoid", cost=inv[cost], dtype="float64")
    p = net.named_params()
    for i, (w, b) in enumerate(zip(ws, bs)):
        w, b = _array(w, path, i), _array(b, path, i)
        if w.shape != (sizes[i + 1], sizes[i]) or b.shape != (sizes[i + 1], 1):
            raise ValueError(f"{path}: layer {i} has weights {w.shape} and biases {b.shape}; "
                             f"expected {(sizes[i + 1], sizes[i])} and {(sizes[i + 1], 1)}")
        p[f"dense{i}.weight"][...] = w.T
        p[f"dense{i}.bias"][...] = b[:, 0]
    return net


def _array(values, path, i) -> np.ndarray:
    try:
        a = np.asarray(values, np.float64)
    except (ValueError, TypeError):
        raise ValueError(f"{path}: layer {i} holds values that are not a matrix of "
                         "numbers") from None
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{path}: layer {i} holds NaN or infinite values")
    return a
