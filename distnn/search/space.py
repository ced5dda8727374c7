"""Search spaces: a grid is the product of its value lists; random specs are drawn from
``np.random.default_rng(seed)``.  Both expand, deterministically, into an explicit list
of trials (override dicts), so a search is reproducible and resumable."""
from __future__ import annotations

import itertools
import math

import numpy as np

from ..config import TrainConfig, field_names

SEARCHABLE = set(field_names()) | {"hidden"}


def _value(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def parse_grid(items) -> dict[str, list]:
    """``["hidden=10,25", "lr=0.05,0.1"]`` -> {"hidden": [10, 25], "lr": [0.05, 0.1]}."""
    out = {}
    for item in items:
        key, sep, vals = item.partition("=")
        if not sep or not vals:
            raise ValueError(f"grid item {item!r} must look like KEY=V1,V2,...")
        _check_key(key)
        out[key] = [_value(v) for v in vals.split(",")]
    return out


def _check_key(key):
    if key not in SEARCHABLE:
        raise ValueError(f"cannot search over {key!r}; use hidden or a train setting such as "
                         "lr, l2, batch_size, keep_prob")


def expand_grid(grid: dict[str, list]) -> list[dict]:
    keys = list(grid)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))]


def parse_random(items) -> dict[str, tuple]:
    """``["lr=loguniform:1e-3:1", "hidden=choice:30,100", "batch_size=randint:8:64"]``."""
    out = {}
    for item in items:
        key, sep, spec = item.partition("=")
        kind, _, args = spec.partition(":")
        _check_key(key)
        if not sep or kind not in ("uniform", "loguniform", "randint", "choice"):
            raise ValueError(f"random item {item!r} must be KEY=uniform:A:B, loguniform:A:B, "
                             "randint:A:B or choice:V1,V2,...")
        if kind == "choice":
            out[key] = (kind, [_value(v) for v in args.split(",")])
            continue
        try:
            a, b = (float(v) for v in args.split(":"))
        except ValueError:
            raise ValueError(f"random item {item!r}: {kind} needs two numbers A:B") from None
        if not a < b or (kind == "loguniform" and a <= 0):
            raise ValueError(f"random item {item!r}: need A < B (and A > 0 for loguniform)")
        out[key] = (kind, (a, b))
    return out


def sample_random(space: dict[str, tuple], samples: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    trials = []
    for _ in range(samples):
        t = {}
        for key, (kind, args) in space.items():
            if kind == "choice":
                t[key] = args[int(rng.integers(len(args)))]
            elif kind == "uniform":
                t[key] = float(rng.uniform(*args))
            elif kind == "loguniform":
                t[key] = float(math.exp(rng.uniform(math.log(args[0]), math.log(args[1]))))
            else:
                t[key] = int(rng.integers(int(args[0]), int(args[1]) + 1))
        trials.append(t)
    return trials


def apply(base: TrainConfig, overrides: dict) -> TrainConfig:
    """The trial's config: ``hidden=H`` sets every hidden layer to H."""
    o = dict(overrides)
    if "hidden" in o:
        h = int(o.pop("hidden"))
        o["layers"] = (base.layers[0], *([h] * (len(base.layers) - 2) or [h]), base.layers[-1])
    return base.replace(**o)
