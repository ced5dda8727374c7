"""Learning-rate schedules.  ``schedule(t)`` gives η at training time t, measured in
epochs (t = epoch + fraction of the epoch done, from 0), for base rate η0.

=====================  ==============================  ============================
spec                   η(t)                            notes
=====================  ==============================  ============================
``constant``           η0
``step:K:G``           η0 · G^floor(t / K)             e.g. step:10:0.5
``exponential:G``      η0 · G^floor(t)
``inverse-time:D``     η0 / (1 + D · floor(t))
``plateau:N[:F]``      η0 / 2^h                        h = halvings so far: halve
                                                       after N epochs without
                                                       improvement, stop once η has
                                                       fallen by F (default 1024)
``cosine:E[:F]``       η0 · (F + (1 − F) ·             half a cosine from η0 down to
                       (1 + cos(π min(e, E) / E)) / 2)  F·η0 (default 0) over E
                                                       epochs, e = floor(t)
                                                       (Loshchilov & Hutter 2017,
                                                       without restarts)
=====================  ==============================  ============================

``warmup`` (in epochs) multiplies any of them by min(1, t / warmup): the linear
warm-up used with large global batches (Goyal et al. 2017).
"""
from __future__ import annotations

import math


class Schedule:
    spec = "constant"

    def __init__(self, lr0: float, warmup: float = 0.0):
        if not (lr0 > 0 and math.isfinite(lr0)):
            raise ValueError(f"lr must be a finite number > 0, got {lr0!r}")
        if not warmup >= 0:
            raise ValueError(f"warmup must be >= 0 epochs, got {warmup!r}")
        self.lr0, self.warmup = float(lr0), float(warmup)

    def base(self, epoch: int) -> float:
        return self.lr0

    def __call__(self, t: float) -> float:
        return self._warmed(self.base(int(math.floor(t))), t)

    def during(self, epoch: int, done: float) -> float:
        """η for a step of ``epoch`` once the fraction ``done`` (0, 1] of it is done: the
        epoch's own base rate, warmed up to t = epoch + done (so the last step of a
        warm-up epoch does not take the next epoch's rate)."""
        return self._warmed(self.base(epoch), epoch + done)

    def _warmed(self, lr: float, t: float) -> float:
        if self.warmup > 0 and t < self.warmup:
            lr *= max(t, 0.0) / self.warmup
        return lr

    # plateau-driven schedules override these; the others ignore the metric
    def on_epoch_end(self, improved: bool) -> None:
        pass

    @property
    def finished(self) -> bool:
        return False

    def state_dict(self) -> dict:
        return {"spec": self.spec}

    def load_state_dict(self, state: dict) -> None:
        pass


class Step(Schedule):
    def __init__(self, lr0, every: float, gamma: float, warmup=0.0):
        super().__init__(lr0, warmup)
        if not every >= 1:
            raise ValueError(f"step schedule needs an interval >= 1 epoch, got {every!r}")
        if not 0 < gamma <= 1:
            raise ValueError(f"step schedule factor must be in (0, 1], got {gamma!r}")
        self.every, self.gamma = int(every), float(gamma)
        self.spec = f"step:{self.every}:{self.gamma}"

    def base(self, epoch):
        return self.lr0 * self.gamma ** (epoch // self.every)


class Exponential(Schedule):
    def __init__(self, lr0, gamma: float, warmup=0.0):
        super().__init__(lr0, warmup)
        if not 0 < gamma <= 1:
            raise ValueError(f"exponential schedule factor must be in (0, 1], got {gamma!r}")
        self.gamma = float(gamma)
        self.spec = f"exponential:{self.gamma}"

    def base(self, epoch):
        return self.lr0 * self.gamma ** epoch


class InverseTime(Schedule):
    def __init__(self, lr0, decay: float, warmup=0.0):
        super().__init__(lr0, warmup)
        if not decay >= 0:
            raise ValueError(f"inverse-time decay must be >= 0, got {decay!r}")
        self.decay = float(decay)
        self.spec = f"inverse-time:{self.decay}"

    def base(self, epoch):
        return self.lr0 / (1.0 + self.decay * epoch)


class HalveOnPlateau(Schedule):
    """Nielsen's rule: halve η after ``patience`` epochs with no improvement of the
    monitored metric; training should stop once η ≤ η0 / ``factor``."""

    def __init__(self, lr0, patience: int, factor: float = 1024.0, warmup=0.0):
        super().__init__(lr0, warmup)
        if not patience >= 1:
            raise ValueError(f"plateau patience must be >= 1 epoch, got {patience!r}")
        if not factor > 1:
            raise ValueError(f"plateau stop factor must be > 1, got {factor!r}")
        self.patience, self.factor = int(patience), float(factor)
        self.halvings, self.waited = 0, 0
        self.spec = f"plateau:{self.patience}:{self.factor:g}"

    def base(self, epoch):
        return self.lr0 / 2.0 ** self.halvings

    def on_epoch_end(self, improved: bool) -> None:
        if improved:
            self.waited = 0
            return
        self.waited += 1
        if self.waited >= self.patience:
            self.halvings += 1
            self.waited = 0

    @property
    def finished(self) -> bool:
        return 2.0 ** self.halvings >= self.factor

    def state_dict(self):
        return {"spec": self.spec, "halvings": self.halvings, "waited": self.waited}

    def load_state_dict(self, state):
        h, w = state.get("halvings"), state.get("waited")
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (h, w)):
            raise ValueError(f"plateau schedule state needs integers halvings, waited >= 0, "
                             f"got {state!r:.80}")
        self.halvings, self.waited = h, w


class Cosine(Schedule):
    """Half a cosine from η0 to ``floor`` · η0 over ``epochs`` epochs, then flat: a fixed
    budget of epochs (``--epochs E --schedule cosine:E``) ends at a small rate without
    choosing a decay factor."""

    def __init__(self, lr0, epochs: float, floor: float = 0.0, warmup=0.0):
        super().__init__(lr0, warmup)
        if not (epochs >= 1 and float(epochs).is_integer()):
            raise ValueError(f"cosine schedule needs a whole number of epochs >= 1, got "
                             f"{epochs!r}")
        if not 0 <= floor <= 1:
            raise ValueError(f"cosine schedule floor must be in [0, 1], got {floor!r}")
        self.epochs, self.floor = int(epochs), float(floor)
        self.spec = f"cosine:{self.epochs}:{self.floor:g}"

    def base(self, epoch):
        c = (1.0 + math.cos(math.pi * min(epoch, self.epochs) / self.epochs)) / 2.0
        return self.lr0 * (self.floor + (1.0 - self.floor) * c)


def parse(spec: str, lr0: float, warmup: float = 0.0) -> Schedule:
    """Build a schedule from a spec string such as ``"step:10:0.5"``."""
    name, *args = str(spec).split(":")
    arity = {"constant": (0, 0), "step": (2, 2), "exponential": (1, 1),
             "inverse-time": (1, 1), "plateau": (1, 2), "cosine": (1, 2)}
    if name not in arity:
        raise ValueError(f"unknown schedule {spec!r}; expected constant, step:K:G, "
                         "exponential:G, inverse-time:D, plateau:N[:F] or cosine:E[:F]")
    lo, hi = arity[name]
    try:
        nums = [float(a) for a in args]
    except ValueError:
        raise ValueError(f"schedule {spec!r} has a non-numeric argument") from None
    if not all(math.isfinite(n) for n in nums):
        raise ValueError(f"schedule {spec!r} needs finite numbers")
    if not lo <= len(nums) <= hi:
        raise ValueError(f"schedule {name!r} takes {lo}-{hi} ':'-separated numbers, got {spec!r}")
    if name == "constant":
        return Schedule(lr0, warmup)
    if name == "step":
        return Step(lr0, nums[0], nums[1], warmup)
    if name == "exponential":
        return Exponential(lr0, nums[0], warmup)
    if name == "inverse-time":
        return InverseTime(lr0, nums[0], warmup)
    if name == "cosine":
        return Cosine(lr0, *nums, warmup=warmup)
    return HalveOnPlateau(lr0, int(nums[0]), *nums[1:], warmup=warmup)
