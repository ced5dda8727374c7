"""Gradient compression on top of any communication group: ``--compress NAME[:ARG]``.

``COMPRESSORS[name]`` is a ``Compressor`` class; a worker builds one from the run's
config once (it holds run state that outlives a re-wiring after a fault) and trains
through ``CompressedGroup(group, compressor)``, which any backend's group can be.

=========  =================================================================
none       the exact all-reduce (the default; the worker is not wrapped at all)
bf16       the gradient travels as bfloat16 (half the bytes), every member's own
           contribution rounded to nearest even, sums accumulated in float32
powersgd:R PowerSGD (Vogels, Karimireddy & Jaggi, NeurIPS 2019): each weight
           matrix as a rank-R product, with error feedback (R = 1..64)
=========  =================================================================

What every compressor keeps: the batch's summed cost (the last number of the buffer)
is reduced exactly, every member ends with the same bits (so replicas stay identical),
and each member applies the whole update from the reduced gradient (``shard`` is
everything): no all-gather of the parameters crosses a link.  A compressor with state
(``takes_scaled`` False: PowerSGD's error feedback) sees the mean gradient (scaled 1/B),
so that its state is in gradient units whatever the learning-rate schedule does, and
multiplies what it returns by ``scale`` (-lr, for the optimizers that take pre-scaled
gradients); a stateless one (bf16) is given the gradient as the exact all-reduce is.

PowerSGD, for each weight matrix W (n_in x n_out) with a gradient sum g_i on member i
and that member's error e_i (its part of what earlier steps left out):

    M_i = g_i + e_i
    P   = sum_i M_i Q              (one all-reduce of every matrix's n_in x R P, with the
                                    exactly reduced numbers riding along)
    P  <- P with orthonormal columns (Gram-Schmidt in column order: the same P on every
          member gives the same bits)
    Q   = sum_i M_i^T P            (one all-reduce of every n_out x R Q)
    G   = P Q^T                    (the same on every member: the reduced gradient)
    e_i <- M_i - G / N

Every reduction is a sum, so only sum_i e_i matters: it is the error one process would
have, and N members compute one process's G (up to rounding).  Q is warm-started: the
next step multiplies by this step's Q.  Biases, batch-norm parameters and matrices for
which R (n_in + n_out) is not at most half of n_in n_out are reduced exactly.

The update's -lr is folded into the product that makes G (``scale``: Q is scaled, a
few numbers, not G), as it is folded into the backward pass without compression.

Run state: Q (the same on every member) and the errors.  At every epoch's end the pool
collects the members' errors and gives their sum to the first member, zeros to the
others (``merge`` and ``load_state_dict``), so a checkpoint holds one error per matrix
(the one-process error), an epoch replayed after a fault or resumed from a checkpoint
starts from exactly the state the uninterrupted run had, and a change of the number of
workers keeps the sum of the errors.
"""
from __future__ import annotations

import time

import numpy as np

from ...train.state import PluginState
from .base import Group
from .wire import BF16, RAW


class Compressor:
    """``none``: the gradient as it is.  A compressor's ``reduce_`` sums the gradient
    buffer ``buf`` (P gradient numbers and the batch's cost) over ``group`` with the two
    collective keys ``key`` and ``key + 1``."""

    name = "none"
    #: what the ARG of NAME:ARG is, for messages (None: takes none)
    arg = None
    #: stateless and linear: it may be given a gradient pre-multiplied by -lr
    takes_scaled = True

    def __init__(self, arg, layout, dtype, seed: int):
        if arg is not None:
            raise ValueError(f"--compress {self.name} takes no argument, got {arg!r}")
        self.layout, self.dtype, self.seed = layout, np.dtype(dtype), seed
        self.seconds = 0.0            # local work (encoding, products), not the waiting

    def reduce_(self, group: Group, key: int, buf: np.ndarray, world: int,
                scale: float = 1.0) -> None:
        """``buf[:-1]`` <- the (approximate) sum times ``scale``; ``buf[-1]``: the sum."""
        group.allreduce_(key, buf)

    def state(self) -> PluginState | None:
        """The run state it keeps between steps (None: it keeps none)."""
        return None

    def load_state(self, state: PluginState | None) -> None:
        """Take this member's part of a whole state (None: start afresh)."""


class BF16Compressor(Compressor):
    """``bf16``: each member rounds its own gradient to bfloat16 (so a member's
    contribution is what it sends), the group carries bfloat16 and accumulates in
    float32; the cost travels exactly."""

    name = "bf16"

    def __init__(self, arg, layout, dtype, seed):
        super().__init__(arg, layout, dtype, seed)
        if self.dtype != np.float32:
            raise ValueError("--compress bf16 rounds float32 gradients; use --dtype float32")

    def reduce_(self, group, key, buf, world, scale=1.0):
        t0 = time.perf_counter()
        BF16.round_(buf[:-1])
        self.seconds += time.perf_counter() - t0
        group.allreduce_(key, buf, BF16, tail=1)


def orthonormalize_(p: np.ndarray) -> None:
    """The columns of ``p`` (n, R), in order, made orthonormal in place (modified
    Gram-Schmidt); a column that is zero, or dependent on the ones before, becomes 0."""
    before = np.sqrt(np.einsum("ij,ij->j", p, p))
    tiny = 16 * np.finfo(p.dtype).eps
    for i in range(p.shape[1]):
        col = p[:, i]
        norm = float(np.sqrt(col @ col))
        if not norm > tiny * before[i]:    # nothing left of it but rounding (NaN too:
            col[...] = 0                   # the exact cost then stops the run)
            continue
        col /= col.dtype.type(norm)
        if i + 1 < p.shape[1]:
            rest = p[:, i + 1:]
            rest -= np.outer(col, col @ rest)


def compressible(shape, rank: int) -> bool:
    """A weight matrix worth compressing at ``rank``: P and Q together at most half of it
    (PyTorch's ``min_compression_rate`` of 2)."""
    if len(shape) != 2:
        return False
    n, m = shape
    return rank < min(n, m) and 2 * rank * (n + m) <= n * m


class PowerSGD(Compressor):
    """``powersgd:R`` (see the module's docstring)."""

    name = "powersgd"
    arg = "the rank R, an integer 1..64"
    takes_scaled = False

    def __init__(self, arg, layout, dtype, seed):
        Compressor.__init__(self, None, layout, dtype, seed)
        try:
            rank = int(arg)
        except (TypeError, ValueError):
            rank = 0
        if not 1 <= rank <= 64 or str(arg) != str(rank):
            raise ValueError(f"--compress powersgd:R takes the rank R, an integer 1..64, "
                             f"got {arg!r}")
        self.rank = rank
        self.mats = [(k, sl, shape) for k, sl, shape in layout if compressible(shape, rank)]
        size = layout[-1][1].stop if layout else 0
        self.exact = _complement([sl for _, sl, _ in self.mats], size + 1)  # + the cost
        n_exact = sum(b - a for a, b in self.exact)
        p_sizes = [shape[0] * rank for _, _, shape in self.mats]
        q_sizes = [shape[1] * rank for _, _, shape in self.mats]
        self.pbuf = np.zeros(sum(p_sizes) + n_exact, self.dtype)
        self.qbuf = np.zeros(sum(q_sizes), self.dtype)
        # P and Q kept transposed, (R, n_in) and (R, n_out), C-ordered: the products
        # below then read M in the order BLAS reads fastest (``p``, ``q``: their (n, R)
        # views)
        self.pt = _views(self.pbuf, [(rank, s[0]) for _, _, s in self.mats])
        self.qt_new = _views(self.qbuf, [(rank, s[1]) for _, _, s in self.mats])
        self.pexact = self.pbuf[sum(p_sizes):]
        self.qt = [np.ascontiguousarray(self._initial_q(j, s[1]).T)
                   for j, (_, _, s) in enumerate(self.mats)]
        self.errors = [np.zeros(s, self.dtype) for _, _, s in self.mats]
        self._tmp = np.empty(max((s[0] * s[1] for _, _, s in self.mats), default=0),
                             self.dtype)

    @property
    def q(self) -> list[np.ndarray]:
        """Each matrix's Q, (n_out, R)."""
        return [qt.T for qt in self.qt]

    def _initial_q(self, j: int, m: int) -> np.ndarray:
        """Q of matrix j before the first step: the same on every member for the seed."""
        q = np.random.default_rng([self.seed, 0xC0, j]).standard_normal((m, self.rank))
        q = q.astype(self.dtype)
        orthonormalize_(q)
        return q

    def reduce_(self, group, key, buf, world, scale=1.0):
        t0 = time.perf_counter()
        for (_, sl, shape), e, qt, pt in zip(self.mats, self.errors, self.qt, self.pt):
            e += buf[sl].reshape(shape)                  # M_i = g_i + e_i, held in e_i
            np.matmul(qt, e.T, out=pt)                   # P^T = Q^T M^T
        self._gather_exact(buf)
        t1 = time.perf_counter()
        group.allreduce_(key, self.pbuf)
        t2 = time.perf_counter()
        self._scatter_exact(buf, scale)
        for e, pt, qtn in zip(self.errors, self.pt, self.qt_new):
            orthonormalize_(pt.T)
            np.matmul(pt, e, out=qtn)                    # Q^T = P^T M
        t3 = time.perf_counter()
        group.allreduce_(key + 1, self.qbuf)
        t4 = time.perf_counter()
        for (_, sl, shape), e, qt, pt, qtn in zip(self.mats, self.errors, self.qt, self.pt,
                                                  self.qt_new):
            g = buf[sl].reshape(shape)
            qt[...] = qtn                                 # the warm start
            qtn *= qtn.dtype.type(scale)                  # (Q is small: scale it, not G)
            np.matmul(pt.T, qtn, out=g)                   # scale G = P (scale Q)^T
            tmp = self._tmp[:g.size].reshape(shape)
            np.multiply(g, g.dtype.type(-1.0 / (scale * world)), out=tmp)
            e += tmp                                      # e_i = M_i - G / N
        self.seconds += (t1 - t0) + (t3 - t2) + (time.perf_counter() - t4)

    def _gather_exact(self, buf):
        o = 0
        for a, b in self.exact:
            self.pexact[o:o + b - a] = buf[a:b]
            o += b - a

    def _scatter_exact(self, buf, scale):
        o, end = 0, buf.size - 1
        for a, b in self.exact:
            buf[a:b] = self.pexact[o:o + b - a]
            o += b - a
        if scale != 1.0:             # the gradient's exact parts; the cost stays a sum
            for a, b in self.exact:
                buf[a:min(b, end)] *= buf.dtype.type(scale)

    # -- run state -----------------------------------------------------------------------
    def state(self):
        """Q (the same on every member) and the error feedback: each member's own share
        of the whole, which is their sum (``shares``)."""
        return PluginState(
            {"name": self.name, "rank": self.rank},
            {"q": {k: q.copy() for (k, _, _), q in zip(self.mats, self.q)},
             "errors": {k: e.copy() for (k, _, _), e in zip(self.mats, self.errors)}},
            shares=("errors",))

    def load_state(self, state):
        if state is None:
            for j, ((_, _, shape), qt, e) in enumerate(zip(self.mats, self.qt, self.errors)):
                qt[...] = self._initial_q(j, shape[1]).T
                e[...] = 0
            return
        name, rank = state.scalars.get("name"), state.scalars.get("rank")
        if name != self.name or rank != self.rank:
            raise ValueError(f"compression state is for {name}:{rank}, "
                             f"not {self.name}:{self.rank}")
        for (k, _, shape), qt, e in zip(self.mats, self.qt, self.errors):
            qt[...] = state.arrays["q"][k].T
            e[...] = state.arrays["errors"][k]


def _complement(slices, size: int) -> list[tuple[int, int]]:
    """The ranges of [0, size) that none of ``slices`` covers, in order."""
    out, at = [], 0
    for sl in sorted(slices, key=lambda s: s.start):
        if sl.start > at:
            out.append((at, sl.start))
        at = max(at, sl.stop)
    if at < size:
        out.append((at, size))
    return out


def _views(flat: np.ndarray, shapes) -> list[np.ndarray]:
    out, o = [], 0
    for n, m in shapes:
        out.append(flat[o:o + n * m].reshape(n, m))
        o += n * m
    return out


COMPRESSORS: dict[str, type[Compressor]] = {c.name: c for c in (
    Compressor, BF16Compressor, PowerSGD)}


def parse(spec: str) -> tuple[type[Compressor], str | None]:
    """"powersgd:4" -> (PowerSGD, "4"); an unknown name is a ValueError naming the
    known ones."""
    name, sep, arg = str(spec).partition(":")
    if name not in COMPRESSORS:
        raise ValueError(f"--compress must be one of {sorted(COMPRESSORS)} (with :ARG where "
                         f"it takes one, e.g. powersgd:4), got {spec!r}")
    return COMPRESSORS[name], (arg if sep else None)


def build(spec: str, layout, dtype, seed: int) -> Compressor:
    """The compressor ``spec`` names, for a gradient laid out as ``layout`` ([(key,
    slice, shape)] of every parameter, in order)."""
    cls, arg = parse(spec)
    if cls.arg is not None and arg is None:
        raise ValueError(f"--compress {cls.name} needs :ARG, {cls.arg} (e.g. {cls.name}:4)")
    return cls(arg, layout, dtype, seed)


def check(spec: str, dtype) -> None:
    """Refuse an unknown or malformed --compress before any work (ValueError)."""
    build(spec, [], dtype, 0)


class CompressedGroup(Group):
    """``group`` with its gradient reductions done by ``compressor``: every member
    applies the whole update (``shard`` is everything) and no parameters are gathered."""

    def __init__(self, group: Group, compressor: Compressor, world: int):
        self.inner, self.compressor, self.world = group, compressor, world
        self.name = group.name
        self.takes_scaled = compressor.takes_scaled

    @property
    def stats(self):
        return {**self.inner.stats, "compress_seconds": self.compressor.seconds}

    def allreduce_(self, step, buf, wire=RAW, tail=0):
        self.inner.allreduce_(step, buf, wire, tail)      # batch-norm sums: exact

    def shard(self, size):
        return 0, size

    def reduce_parts_(self, step, buf, parts, scale=1.0):
        self.compressor.reduce_(self.inner, step, buf, self.world, scale)

    def all_gather_(self, step, vec, lo, hi):
        """Nothing to gather: every member updated everything."""

    #: the setting that chose the compressor: its state's key in a replica's state
    SETTING = "compress"

    def plugin_states(self):
        state = self.compressor.state()
        return {} if state is None else {self.SETTING: state}

    def load_plugin_states(self, state, rank):
        self.compressor.load_state(state.plugin_for(self.SETTING, rank))

    def set_timeout(self, seconds):
        self.inner.set_timeout(seconds)

    def deliver(self, key, data):
        self.inner.deliver(key, data)

    def abort(self):
        self.inner.abort()

    def close(self):
        self.inner.close()
