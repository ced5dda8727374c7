"""Search spaces: a grid is the product of its value lists; random specs are drawn from
``np.random.default_rng(seed)``.  Both expand, deterministically, into an explicit list
of trials (override dicts), so a search is reproducible and resumable."""
from __future__ import annotations

import itertools
import math

import numpy as np

from ..config import TrainConfig, field_names

#: where and how each trial runs, and where it writes, is the search's to decide (every
#: trial writes under --out): none of these is a dimension to search over
NOT_SEARCHABLE = {"data_dir", "workers", "address", "allreduce", "comm_ports",
                  "comm_timeout", "check_replicas", "max_failures", "min_workers",
                  "replace_timeout", "replace_wait", "metrics_out", "checkpoint_dir", "keep_last", "resume",
                  "logdir", "overwrite", "override", "max_image_pixels"}
SEARCHABLE = (set(field_names()) - NOT_SEARCHABLE) | {"hidden"}


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
        if key in out:
            raise ValueError(f"--grid names {key} twice ({item!r}); give all its values "
                             f"once: {key}=V1,V2,...")
        out[key] = [_value(v) for v in vals.split(",")]
    return out


def _check_key(key):
    if key in NOT_SEARCHABLE:
        raise ValueError(f"cannot search over {key!r}: it says where or how a trial runs or "
                         "writes, which the search decides; give it as a flag for all trials")
    if key not in SEARCHABLE:
        raise ValueError(f"cannot search over {key!r}; use hidden or a train setting such as "
                         "lr, l2, batch_size, keep_prob")


#: the most trials one search expands to: a larger space is refused before it is drawn
MAX_TRIALS = 100_000


def count(grid: dict[str, list], samples: int | None) -> int:
    """How many trials a grid (times ``samples`` random draws, if any) makes."""
    n = math.prod(len(v) for v in grid.values()) if grid else 1
    return n * (samples if samples is not None else 1)


def check_size(n: int) -> None:
    if n > MAX_TRIALS:
        raise ValueError(f"this search has {n:,} trials, more than the {MAX_TRIALS:,} one "
                         "search runs; narrow the grid, lower --samples, or split it into "
                         "several searches (--out each)")


def check_trials(base: TrainConfig, trials: list[dict]) -> None:
    """Refuse a search none of whose trials has valid settings (each would only be
    recorded as an error): say the first one's error."""
    first = None
    for t in trials:
        try:
            apply(base, t)
            return
        except ValueError as e:
            first = first or (t, e)
    if first:
        raise ValueError(f"every one of the {len(trials)} trials has invalid settings; the "
                         f"first, {first[0]}: {first[1]}")


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
        if key in out:
            raise ValueError(f"--random names {key} twice ({item!r})")
        if kind == "choice":
            if not args.strip():
                raise ValueError(f"random item {item!r}: choice needs values, "
                                 "choice:V1,V2,...")
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


def _items(spec, what: str) -> list[str]:
    """``KEY=...`` strings from a list of them or a ``{key: values}`` mapping (values a
    list for a grid, a spec string such as ``"loguniform:1e-3:1"`` for a draw)."""
    if spec is None:
        return []
    if isinstance(spec, str):
        raise ValueError(f"{what} is a list of KEY=... strings or a {{key: values}} dict, "
                         f"not the string {spec!r}")
    if isinstance(spec, dict):
        out = []
        for key, vals in spec.items():
            if what == "grid":
                if isinstance(vals, (str, bytes)) or not hasattr(vals, "__iter__"):
                    vals = [vals]
                vals = list(vals)
                if not vals:
                    raise ValueError(f"grid {key!r} has no values")
                out.append(f"{key}=" + ",".join(str(v) for v in vals))
            else:
                out.append(f"{key}={vals}")
        return out
    return list(spec)


def trials(grid=None, random=None, samples: int = 10, seed: int = 0) -> list[dict]:
    """The configurations a search tries: every combination of ``grid``, each with
    ``samples`` draws from ``random`` (the draws the same for every combination), as
    override dicts; the grid and draws given as ``--grid``/``--random`` items or dicts
    (``{"lr": [0.05, 0.1]}``, ``{"lr": "loguniform:1e-3:1"}``)."""
    grid, random = _items(grid, "grid"), _items(random, "random")
    if not grid and not random:
        raise ValueError("nothing to search: give --grid and/or --random (or a search recipe)")
    grid_space = parse_grid(grid) if grid else {}
    rand_space = parse_random(random) if random else {}
    check_size(count(grid_space, samples if random else None))
    out = expand_grid(grid_space) if grid else [{}]
    if random:
        draws = sample_random(rand_space, samples, seed)
        out = [{**t, **d} for t in out for d in draws]
    return out


def apply(base: TrainConfig, overrides: dict) -> TrainConfig:
    """The trial's config: ``hidden=H`` sets every hidden layer to H."""
    o = dict(overrides)
    if "hidden" in o:
        h = int(o.pop("hidden"))
        o["layers"] = (base.layers[0], *([h] * (len(base.layers) - 2) or [h]), base.layers[-1])
    return base.replace(**o)
