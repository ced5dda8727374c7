"""Optimizers on flat parameter/gradient arrays, updated in place.

Notation: w parameters, g gradient, η learning rate (``lr``), t step count (from 1).

=============  =============================================================
SGD            w ← w − η g
Momentum       v ← μ v − η g;   w ← w + v                      (Nielsen ch. 3)
Nesterov       v ← μ v − η g;   w ← w + μ v − η g
               (Sutskever et al. 2013 with w stored at the look-ahead point;
               the same trajectory as torch.optim.SGD(nesterov=True))
RMSprop        s ← ρ s + (1 − ρ) g²;   w ← w − η g / (√s + ε)
Adam           m ← β1 m + (1 − β1) g;  s ← β2 s + (1 − β2) g²;
               m̂ = m / (1 − β1^t);  ŝ = s / (1 − β2^t);  w ← w − η m̂ / (√ŝ + ε)
=============  =============================================================

SGD, momentum and Nesterov are linear in g, so they also accept gradients already
multiplied by -η (``step_prescaled(params, -η g)``): the trainer folds -η/B into the
backward pass, which costs nothing there and saves a full pass over the parameters.

Any of them can also keep a running average of the parameters (Polyak averaging with
an exponential moving average, ``ema``: Keras's ``use_ema``), a state slot like the
others, used in place of the parameters for evaluation:

    a ← w                                   when averaging starts (before the first step)
    a ← d a + (1 − d) w,   d = min(ema, (1 + t) / (10 + t))   after each step

The warm-up of d (TensorFlow's ``ExponentialMovingAverage(num_updates=t)``) keeps the
first steps, far from where training ends, from lingering in the average.

Optimizers plug in through the registry ``OPTIMIZERS`` (name -> class): a class declares
its ``name``, its state ``slots`` and its hyperparameters ``hyper`` (each the keyword of
its ``__init__`` and the one spelling used by configs), and ``build(hparams)`` makes any
registered optimizer from an object that has those attributes (a ``TrainConfig``).
Adding AdamW is one class with ``@register`` here, plus its tests.

State is explicit and round-trips through ``state_dict``/``load_state_dict``
(plain floats and arrays, so it can be written to Parquet/JSON).  ``lr`` may be
changed between steps by a schedule.
"""
from __future__ import annotations

import numpy as np


def _positive(name, value):
    if not (isinstance(value, (int, float, np.floating)) and value > 0 and np.isfinite(value)):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")


def _unit(name, value, *, closed_low=True):
    ok = (0.0 <= value < 1.0) if closed_low else (0.0 < value < 1.0)
    if not ok:
        lo = "[0" if closed_low else "(0"
        raise ValueError(f"{name} must be in {lo}, 1), got {value!r}")


class Optimizer:
    name = ""
    slots: tuple[str, ...] = ()
    hyper: tuple[str, ...] = ("lr",)

    def __init__(self, lr: float):
        _positive("lr", lr)
        self.lr = float(lr)
        self.t = 0
        self.state: dict[str, np.ndarray] = {}

    #: decay of the parameter average (0: no average; see ``average``)
    ema = 0.0

    def average(self, ema: float) -> "Optimizer":
        """Also keep the running average of the parameters with decay ``ema`` (0 = off),
        in the state slot "average"."""
        if not (isinstance(ema, (int, float, np.floating)) and 0.0 <= ema < 1.0):
            raise ValueError(f"ema must be in [0, 1) (e.g. 0.999; 0 = off), got {ema!r}")
        self.ema = float(ema)
        self.slots = type(self).slots + (("average",) if self.ema else ())
        return self

    def start_average(self, params: np.ndarray) -> None:
        """a ← w, unless the average is already held (a restored or shared state)."""
        if self.ema and "average" not in self.state:
            self.state["average"] = params.copy()

    def update_average(self, params: np.ndarray) -> None:
        """a ← d a + (1 − d) w after step t (params: the range this optimizer steps)."""
        if not self.ema:
            return
        d = min(self.ema, (1.0 + self.t) / (10.0 + self.t))
        a, tmp = self.state["average"], self._scratch(params)
        a *= params.dtype.type(d)
        np.multiply(params, params.dtype.type(1.0 - d), out=tmp)
        a += tmp

    def _slot(self, name, like):
        s = self.state.get(name)
        if s is None or s.shape != like.shape or s.dtype != like.dtype:
            s = self.state[name] = np.zeros_like(like)
        return s

    def _scratch(self, like):
        s = self.__dict__.get("_tmp")
        if s is None or s.shape != like.shape or s.dtype != like.dtype:
            s = self._tmp = np.empty_like(like)
        return s

    #: True when ``step_prescaled`` is available (the update is linear in g)
    prescalable = False
    #: True when an L2 term may be folded into the parameters before a prescaled step
    #: (w ← (1 − η λ/n) w, then the step): only when nothing else sees the gradient
    folds_decay = False

    def step(self, params: np.ndarray, grads: np.ndarray) -> None:
        """Apply one update to ``params`` in place using ``grads`` (same shape)."""
        self.t += 1
        self._update(params, grads)

    def step_prescaled(self, params: np.ndarray, neg_lr_grads: np.ndarray) -> None:
        """The same update as ``step`` given ``-lr * grads`` instead of ``grads``."""
        raise NotImplementedError(f"{self.name} is not linear in the gradient")

    def _update(self, params, grads):
        raise NotImplementedError

    def state_dict(self) -> dict:
        """{"name", "t", hyperparameters..., "slots": {name: array}} (arrays copied)."""
        return {"name": self.name, "t": self.t, **{h: getattr(self, h) for h in self.hyper},
                "slots": {k: self.state[k].copy() for k in self.slots if k in self.state}}

    def load_state_dict(self, state: dict) -> None:
        if state.get("name") != self.name:
            raise ValueError(f"optimizer state is for {state.get('name')!r}, not {self.name!r}")
        unknown = set(state["slots"]) - set(self.slots)
        if unknown == {"average"}:
            raise ValueError("the state holds a parameter average (--ema) but this run keeps "
                             "none; give --ema with the value it was trained with")
        if unknown:
            raise ValueError(f"unknown {self.name} state slots {sorted(unknown)}")
        self.t = int(state["t"])
        for h in self.hyper:
            setattr(self, h, state[h])
        self.state = {k: np.array(v, copy=True) for k, v in state["slots"].items()}


OPTIMIZERS: dict[str, type[Optimizer]] = {}


def register(cls: type[Optimizer]) -> type[Optimizer]:
    """Class decorator: make ``cls`` available by its ``name`` to ``build``."""
    if not cls.name or cls.name in OPTIMIZERS:
        raise ValueError(f"optimizer name {cls.name!r} is empty or taken")
    OPTIMIZERS[cls.name] = cls
    return cls


@register
class SGD(Optimizer):
    name = "sgd"
    prescalable = True
    folds_decay = True

    def _update(self, params, grads):
        tmp = self._scratch(params)
        np.multiply(grads, params.dtype.type(self.lr), out=tmp)
        params -= tmp

    def step_prescaled(self, params, neg_lr_grads):
        self.t += 1
        params += neg_lr_grads


@register
class Momentum(Optimizer):
    name = "momentum"
    slots = ("velocity",)
    hyper = ("lr", "momentum")
    prescalable = True

    def __init__(self, lr: float, momentum: float = 0.9):
        super().__init__(lr)
        _unit("momentum", momentum)
        self.momentum = float(momentum)

    def _velocity(self, params, grads):
        v, tmp = self._slot("velocity", params), self._scratch(params)
        v *= params.dtype.type(self.momentum)
        np.multiply(grads, params.dtype.type(self.lr), out=tmp)
        v -= tmp
        return v, tmp

    def _update(self, params, grads):
        v, _ = self._velocity(params, grads)
        params += v

    def step_prescaled(self, params, neg_lr_grads):
        self.t += 1
        v = self._slot("velocity", params)
        v *= params.dtype.type(self.momentum)
        v += neg_lr_grads
        self._move(params, v, neg_lr_grads)

    def _move(self, params, v, neg_lr_grads):
        params += v                       # w += v


@register
class Nesterov(Momentum):
    name = "nesterov"

    def _update(self, params, grads):
        v, lr_g = self._velocity(params, grads)
        params -= lr_g
        lr_g[...] = v
        lr_g *= params.dtype.type(self.momentum)
        params += lr_g

    def _move(self, params, v, neg_lr_grads):
        params += neg_lr_grads            # w += mu v - lr g
        tmp = self._scratch(params)
        np.multiply(v, params.dtype.type(self.momentum), out=tmp)
        params += tmp


@register
class RMSprop(Optimizer):
    name = "rmsprop"
    slots = ("square_avg",)
    hyper = ("lr", "rho", "eps")

    def __init__(self, lr: float = 1e-3, rho: float = 0.9, eps: float = 1e-8):
        super().__init__(lr)
        _unit("rho", rho)
        _positive("eps", eps)
        self.rho, self.eps = float(rho), float(eps)

    def _update(self, params, grads):
        s, tmp = self._slot("square_avg", params), self._scratch(params)
        f = params.dtype.type
        s *= f(self.rho)
        np.multiply(grads, grads, out=tmp)
        tmp *= f(1.0 - self.rho)
        s += tmp
        np.sqrt(s, out=tmp)
        tmp += f(self.eps)
        np.divide(grads, tmp, out=tmp)
        tmp *= f(self.lr)
        params -= tmp


@register
class Adam(Optimizer):
    name = "adam"
    slots = ("m", "v")
    hyper = ("lr", "beta1", "beta2", "eps")

    def __init__(self, lr: float = 1e-3, beta1: float = 0.9, beta2: float = 0.999,
                 eps: float = 1e-8):
        super().__init__(lr)
        _unit("beta1", beta1)
        _unit("beta2", beta2)
        _positive("eps", eps)
        self.beta1, self.beta2, self.eps = float(beta1), float(beta2), float(eps)

    def _update(self, params, grads):
        m, v, tmp = self._slot("m", params), self._slot("v", params), self._scratch(params)
        f = params.dtype.type
        m *= f(self.beta1)
        np.multiply(grads, f(1.0 - self.beta1), out=tmp)
        m += tmp
        v *= f(self.beta2)
        np.multiply(grads, grads, out=tmp)
        tmp *= f(1.0 - self.beta2)
        v += tmp
        c1 = 1.0 - self.beta1 ** self.t
        c2 = 1.0 - self.beta2 ** self.t
        # w -= lr m̂ / (sqrt(ŝ) + eps)  ==  w -= (lr / c1) m / (sqrt(s / c2) + eps)
        np.multiply(v, f(1.0 / c2), out=tmp)
        np.sqrt(tmp, out=tmp)
        tmp += f(self.eps)
        np.divide(m, tmp, out=tmp)
        tmp *= f(self.lr / c1)
        params -= tmp


def hyperparameters(hparams) -> dict:
    """The hyperparameters the class of optimizer ``hparams.optimizer`` declares, read
    from ``hparams`` by their one spelling (``hparams.lr``, ``hparams.momentum``, ...);
    ``hparams`` is a ``TrainConfig`` or any object with those attributes."""
    name = hparams.optimizer
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; expected one of {sorted(OPTIMIZERS)}")
    return {h: getattr(hparams, h) for h in OPTIMIZERS[name].hyper}


def build(hparams) -> Optimizer:
    """The optimizer ``hparams.optimizer`` with its ``hyperparameters(hparams)``, keeping
    the parameter average when ``hparams.ema`` > 0."""
    hyper = hyperparameters(hparams)       # (an unknown name is refused there)
    return OPTIMIZERS[hparams.optimizer](**hyper).average(hparams.ema)


class Outer:
    """The outer optimizer of training with local steps (``--outer``): how the replicas'
    averaged change since the last synchronisation, ``delta = θ − mean_r θ_r`` (the
    *outer gradient*), moves the global parameters θ.

    ``average``              θ ← θ − delta  (= mean_r θ_r: local SGD, model averaging)
    ``nesterov:LR:MOMENTUM`` m ← μ m + delta;  θ ← θ − LR (delta + μ m)
                             (DiLoCo, Douillard et al. 2023: LR 0.7, μ 0.9; the update of
                             ``torch.optim.SGD(nesterov=True)`` with delta as the gradient)

    Its state (the momentum m) is explicit, like an optimizer's: ``state``.
    """

    def __init__(self, spec: str):
        self.spec = spec
        name, _, rest = str(spec).partition(":")
        if name == "average" and not rest:
            self.lr, self.momentum = 1.0, 0.0
        elif name == "nesterov":
            args = rest.split(":") if rest else []
            try:
                vals = [float(a) for a in args]
            except ValueError:
                vals = None
            if vals is None or len(vals) > 2:
                raise ValueError(f"outer must be average or nesterov[:LR[:MOMENTUM]] such as "
                                 f"nesterov:0.7:0.9, got {spec!r}")
            self.lr, self.momentum = (vals + [0.7, 0.9][len(vals):])
            _positive("the outer learning rate (--outer nesterov:LR:...)", self.lr)
            _unit("the outer momentum (--outer nesterov:LR:MOMENTUM)", self.momentum)
        else:
            raise ValueError(f"outer must be average or nesterov[:LR[:MOMENTUM]] such as "
                             f"nesterov:0.7:0.9, got {spec!r}")
        self.name = name
        self.state: dict[str, np.ndarray] = {}

    def step(self, params: np.ndarray, delta: np.ndarray) -> None:
        """θ ← the outer update of ``params`` with the outer gradient ``delta`` (same
        dtype; ``delta`` is used as scratch)."""
        if self.name == "average":
            params -= delta
            return
        f = params.dtype.type
        m = self.state.get("momentum")
        if m is None or m.shape != params.shape:
            m = self.state["momentum"] = np.zeros_like(params)
        m *= f(self.momentum)
        m += delta
        delta += f(self.momentum) * m
        delta *= f(self.lr)
        params -= delta
