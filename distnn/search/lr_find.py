"""Nielsen's learning-rate finder (ch. 3): the threshold rate at which the training
cost stops falling over the first few epochs, and half of it as the suggestion."""
from __future__ import annotations

import math

from ..config import TrainConfig
from ..data.splits import Splits


def decreasing(costs: list[float]) -> bool:
    """'The training cost falls over the first few epochs': ``costs`` starts with the
    untrained network's cost; every later value must be below it, and the last the
    lowest so far (no blow-up, no oscillation upward)."""
    return all(math.isfinite(c) for c in costs) and costs[-1] < costs[0] and \
        costs[-1] <= min(costs) + 1e-12 and max(costs[1:]) < costs[0]


def find_threshold(cost_curve, start: float = 0.01, refine: int = 4,
                   lo_limit: float = 1e-6, hi_limit: float = 1e4) -> dict:
    """Nielsen's procedure.  ``cost_curve(lr)`` returns the training cost before training
    and after each of the first few epochs.  From ``start``, go up by factors of 10 while
    the cost falls (down while it does not), then bisect (geometrically) between the
    largest falling and the smallest non-falling rate ``refine`` times.  Suggests half
    the threshold."""
    tried = {}

    def ok(lr):
        if lr not in tried:
            tried[lr] = cost_curve(lr)
        return decreasing(tried[lr])

    lr = start
    if ok(lr):
        while lr * 10 <= hi_limit and ok(lr * 10):
            lr *= 10
        good, bad = lr, lr * 10
    else:
        while lr / 10 >= lo_limit and not ok(lr / 10):
            lr /= 10
        if lr / 10 < lo_limit:
            raise ValueError("the training cost does not fall at any learning rate tried; "
                             "check the data and the network")
        good, bad = lr / 10, lr
    for _ in range(refine):
        mid = math.sqrt(good * bad)
        good, bad = (mid, bad) if ok(mid) else (good, mid)
    return {"threshold": good, "suggested_lr": good / 2, "first_failing": bad,
            "tried": {k: tried[k] for k in sorted(tried)}}


def initial_cost(cfg: TrainConfig, splits: Splits) -> float:
    """The untrained network's training cost: where every learning rate starts from."""
    from ..core.network import Network
    from ..core.regularizers import Penalty
    from ..train.batches import Batches
    from ..train.data import fit_input, prepare
    from ..train.evaluate import cost_and_accuracy, measure
    cfg = fit_input(cfg, splits)
    data = prepare(cfg, splits)
    net = Network.from_spec(cfg.network_spec())
    rows = Batches(data.train, data.normalizer, None, net.dtype)
    parts = [measure(net, rows, 0, len(data.train))]
    return cost_and_accuracy(net, Penalty(net, cfg.l1, cfg.l2), parts, len(data.train))[0]


def find_lr(cfg: TrainConfig, splits: Splits, *, start: float = 0.01, refine: int = 4,
            report=print) -> dict:
    """``find_threshold`` on real training: each rate trains ``cfg.epochs`` epochs from
    the same initial parameters; ``report`` gets a line per rate tried."""
    from ..parallel.driver import train
    from ..train.records import DivergenceError
    cfg = cfg.replace(early_stop=0, checkpoint_dir=None, logdir=None, metrics_out=None,
                      resume=None, monitor_train=True)
    initial = initial_cost(cfg, splits)

    def curve(lr):
        try:
            h = train(cfg.replace(lr=lr), splits, progress=False)["history"]
            costs = [initial] + [e["train_cost"] for e in h]
        except DivergenceError:
            costs = [initial, float("nan")]
        report(f"  lr {lr:<10.4g} training cost from the start, by epoch: "
               + ", ".join(f"{c:.4f}" for c in costs))
        return costs

    return find_threshold(curve, start=start, refine=refine)
