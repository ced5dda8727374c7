"""Layers: forward/backward pairs that cache what backward needs.

Layers never update their own parameters.  Each declares its parameters with
``param_specs()``; the network allocates one flat vector for all of them and hands
each layer views into it (``bind``).  ``backward`` writes parameter gradients into
the bound gradient views and returns the gradient with respect to the layer input.

Buffers are reused between calls of the same batch size, so the arrays a layer
returns are only valid until its next forward/backward call.

A layer declares what it is, so that the rest of distnn asks it instead of assuming a
dense stack: its parameters and which of them decay (``param_specs``), which are weight
matrices and how each reads as (fan-in, units) (``matrices``, ``as_matrix``: for
initialisation, max-norm, PowerSGD), its non-trained ``buffers``, and the shape it
makes of an input's (``out_shape``).  Layers plug in through the registry ``LAYERS``
(kind -> class); a network is built from entries ``(kind, name, arguments)``
(``NetworkSpec.entries``).  Adding a layer type is one class here with
``@register``, its gradient check, and where it has no ONNX operator yet, an entry in
``io/export.py``; a module of layers of its own (``conv``) is imported by the package's
``__init__`` so that its layers are registered whatever is imported first.
"""
from __future__ import annotations

import numpy as np

from . import activations, init as initializers
from .random import fold_key, keyed_bits

#: kind -> layer class (see the module's docstring)
LAYERS: dict[str, type["Layer"]] = {}


def register(cls):
    LAYERS[cls.kind] = cls
    return cls


def build(kind: str, name: str, args: dict) -> "Layer":
    """The layer of registered ``kind`` named ``name`` with ``args``."""
    if kind not in LAYERS:
        raise ValueError(f"unknown layer kind {kind!r}; known: {sorted(LAYERS)}")
    return LAYERS[kind](name, **args)


class Layer:
    kind = ""
    name = ""
    #: the parameters that are weight matrices (see ``as_matrix``)
    matrices: tuple[str, ...] = ()

    def param_specs(self) -> list[tuple[str, tuple[int, ...], bool]]:
        """[(param name, shape, regularised?)] for this layer's parameters."""
        return []

    def as_matrix(self, name: str, value: np.ndarray) -> np.ndarray:
        """Parameter ``name`` (one of ``matrices``) as a (fan-in, units) view: a
        unit's incoming weights are a column."""
        return value

    def init_(self, params: dict, how: str, rng: np.random.Generator, scale: float) -> None:
        """Draw this layer's initial ``params`` ({name: view}) in place."""

    def buffers(self) -> dict[str, np.ndarray]:
        """Non-trained state (e.g. batch-norm running statistics)."""
        return {}

    def out_shape(self, in_shape: tuple[int, ...]) -> tuple[int, ...]:
        """The shape (without the batch axis) of the output for an input of
        ``in_shape``; a ValueError naming the layer where the input does not fit."""
        return in_shape

    #: its output has kinks that a finite difference may cross (max pooling's choice of
    #: maximum, ReLU's at 0): ``piece()`` then says which smooth piece the last forward
    #: pass was on
    kinked = False

    def piece(self) -> np.ndarray | None:
        return None
    #: numbers of scratch a pass holds per example beyond its output (a convolution's
    #: patches), for sizing the chunks of an evaluation
    scratch_per_example = 0

    def bind(self, params: dict, grads: dict) -> None:
        """Receive views into the network's flat parameter/gradient vectors."""

    def forward(self, x: np.ndarray, *, train: bool) -> np.ndarray:
        raise NotImplementedError

    def backward(self, dout: np.ndarray) -> np.ndarray | None:
        raise NotImplementedError

    def _buf(self, key: str, shape: tuple[int, ...], dtype) -> np.ndarray:
        cache = self.__dict__.setdefault("_bufs", {})
        buf = cache.get(key)
        if buf is None or buf.shape != shape or buf.dtype != dtype:
            buf = cache[key] = np.empty(shape, dtype)
        return buf


@register
class Dense(Layer):
    """Affine map  y = x @ W + b,  x (N, n_in), W (n_in, n_out), b (n_out,).

    Backward:  dW = x^T dy,  db = sum_n dy,  dx = dy W^T (skipped when the input
    needs no gradient, as for the first layer during training).

    Zero input columns: when the input needs no gradient (the data itself), a training
    batch's inputs that are zero in every example (an image's blank border) contribute
    nothing to ``x @ W`` and their rows of ``dW`` are zero, so both GEMMs run on the
    columns that are non-zero somewhere in the batch (``x[:, c] @ W[c]``,
    ``dW[c] = x[:, c]^T dy``, the other rows of ``dW`` set to 0) once at most
    ``SPARSE_COLUMNS`` of them are non-zero.  Same result up to float rounding (the
    same products, fewer zero terms); on MNIST a batch of 128 has about 2/3 of its 784
    pixels non-zero somewhere, a third fewer first-layer FLOPs.
    """

    SPARSE_COLUMNS = 0.85   # use the non-zero columns only below this fraction
    kind = "dense"
    matrices = ("weight",)

    def __init__(self, name: str, n_in: int, n_out: int, *, bias: bool = True,
                 need_input_grad: bool = True):
        self.name, self.n_in, self.n_out = name, n_in, n_out
        self.has_bias = bias
        self.need_input_grad = need_input_grad

    def param_specs(self):
        specs = [("weight", (self.n_in, self.n_out), True)]
        if self.has_bias:
            specs.append(("bias", (self.n_out,), False))
        return specs

    def init_(self, params, how, rng, scale):
        initializers.init_dense(how, params["weight"], params.get("bias"), rng, scale)

    def out_shape(self, in_shape):
        if int(np.prod(in_shape)) != self.n_in:
            raise ValueError(f"layer {self.name} takes {self.n_in} inputs, got an input of "
                             f"shape {in_shape}")
        return (self.n_out,)

    def bind(self, params, grads):
        self.W, self.gW = params["weight"], grads["weight"]
        self.b = params.get("bias")
        self.gb = grads.get("bias")

    def forward(self, x, *, train):
        out = self._buf("out", (x.shape[0], self.n_out), self.W.dtype)
        self.cols = None
        if train and not self.need_input_grad:
            nonzero = np.flatnonzero(x.any(axis=0))
            if len(nonzero) <= self.SPARSE_COLUMNS * self.n_in:
                self.cols = nonzero
                x = x[:, nonzero]
        np.matmul(x, self.W if self.cols is None else self.W[self.cols], out=out)
        if self.b is not None:
            out += self.b
        self.x = x
        return out

    def backward(self, dout):
        if self.cols is None:
            np.matmul(self.x.T, dout, out=self.gW)
        else:
            self.gW[:] = 0.0
            self.gW[self.cols] = self.x.T @ dout
        if self.gb is not None:
            np.add.reduce(dout, axis=0, out=self.gb)
        if not self.need_input_grad:
            return None
        dx = self._buf("dx", (dout.shape[0], self.n_in), dout.dtype)
        np.matmul(dout, self.W.T, out=dx)
        return dx


@register
class Act(Layer):
    """An elementwise activation applied in place; keeps a = f(z) for backward
    (``fn``: an ``activations.Activation`` or its name)."""

    kind = "act"

    def __init__(self, name: str, fn):
        self.name = name
        self.fn = activations.get(fn) if isinstance(fn, str) else fn
        self.kinked = self.fn.name == "relu"

    def piece(self):
        """Which units were positive in the last forward pass (ReLU's kink is at 0)."""
        return self.a > 0

    def forward(self, x, *, train):
        self.a = self.fn.forward_(x)
        return self.a

    def backward(self, dout):
        scratch = self._buf("scratch", dout.shape, dout.dtype)
        return self.fn.backward_(dout, self.a, scratch)


@register
class Dropout(Layer):
    """Inverted dropout: train  y = x ⊙ m / p  with m_ij ~ Bernoulli(p = keep_prob);
    eval  y = x.  Backward:  dx = dy ⊙ m / p.

    The mask of example i depends only on (seed, layer, epoch, index[i]) through the
    counter-based hash in ``core.random``; set ``context = (epoch, indices)`` before
    a training forward pass.
    """

    kind = "dropout"

    def __init__(self, name: str, keep_prob: float, seed: int, stream: int):
        if not 0.0 < keep_prob <= 1.0:
            raise ValueError(f"keep_prob must be in (0, 1], got {keep_prob!r}")
        self.name, self.keep_prob, self.seed, self.stream = name, keep_prob, seed, stream
        self.context = (0, None)
        self._key_epoch = None
        # keep an element when its 64-bit hash is below p * 2^64
        self._threshold = np.uint64(min(int(keep_prob * 2.0 ** 64), 2 ** 64 - 1))

    def mask(self, epoch: int, indices: np.ndarray, n: int, dtype) -> np.ndarray:
        """(len(indices), n) mask with values 0 and 1/keep_prob."""
        if self._key_epoch is None or self._key_epoch[1] != epoch:
            self._key_epoch = (fold_key(self.seed, self.stream, epoch), epoch)
        keep = keyed_bits(self._key_epoch[0], indices, n) < self._threshold
        m = self._buf("mask", keep.shape, dtype)
        np.multiply(keep, dtype.type(1.0 / self.keep_prob), out=m)
        return m

    def forward(self, x, *, train):
        if not train or self.keep_prob == 1.0:
            self.m = None
            return x
        epoch, indices = self.context
        if indices is None:
            indices = np.arange(x.shape[0])
        if len(indices) != x.shape[0]:
            raise ValueError(f"dropout got {len(indices)} example indices for a batch of "
                             f"{x.shape[0]}")
        # (an image's elements are masked alike: (N, H, W, C) as rows of H*W*C)
        self.m = self.mask(epoch, indices, x[0].size, x.dtype).reshape(x.shape)
        out = self._buf("out", x.shape, x.dtype)
        return np.multiply(x, self.m, out=out)

    def backward(self, dout):
        if self.m is not None:
            dout *= self.m
        return dout


@register
class BatchNorm(Layer):
    """Batch normalisation (Ioffe & Szegedy 2015) over the batch axis (for images
    (N, H, W, C): per channel, over the batch and every position).

    Train:  x̂ = (x - μ_B) / sqrt(σ²_B + eps),  y = γ ⊙ x̂ + β, and the running
    averages move as  r ← m r + (1 - m) s_B  (m = ``momentum``; the running variance
    uses the unbiased batch variance).  Eval: μ, σ² are the running averages.
    Backward (train):  dx = (γ / (N σ)) (N dŷ - Σ dŷ - x̂ Σ dŷ x̂),  dγ = Σ dy x̂,
    dβ = Σ dy, with dŷ = dy (the γ factor is applied outside the bracket).

    Synchronised mode (``sync`` set to a function that sums a flat array over every
    data-parallel replica, in place): the batch B is the *global* batch, split over
    the replicas.  μ_B and σ²_B come from all-reduced Σx and Σ(x - μ_B)² (two passes,
    no E[x²] - E[x]² cancellation), and the sums Σ dŷ, Σ dŷ x̂ in dx are all-reduced
    too, so every replica computes exactly its rows of the one-process dx.  dγ and dβ
    stay local sums (the gradient all-reduce adds them up).  Three all-reduces of
    ~2n numbers per layer and step; ``sync_idle`` makes the same calls with zeros for
    a replica that has no rows in a batch.
    """

    kind = "batchnorm"

    def __init__(self, name: str, n: int, *, momentum: float = 0.9, eps: float = 1e-5):
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"batch-norm momentum must be in [0, 1), got {momentum!r}")
        if not eps > 0:
            raise ValueError(f"batch-norm eps must be > 0, got {eps!r}")
        self.name, self.n, self.momentum, self.eps = name, n, momentum, eps
        self.running_mean = None
        self.running_var = None
        self.sync = None

    def param_specs(self):
        return [("gamma", (self.n,), False), ("beta", (self.n,), False)]

    def bind(self, params, grads):
        self.gamma, self.beta = params["gamma"], params["beta"]
        self.ggamma, self.gbeta = grads["gamma"], grads["beta"]
        if self.running_mean is None or self.running_mean.dtype != self.gamma.dtype:
            self.running_mean = np.zeros(self.n, self.gamma.dtype)
            self.running_var = np.ones(self.n, self.gamma.dtype)

    def buffers(self) -> dict[str, np.ndarray]:
        return {"running_mean": self.running_mean, "running_var": self.running_var}

    def init_(self, params, how, rng, scale):
        params["gamma"][...] = 1.0
        params["beta"][...] = 0.0
        self.running_mean[...] = 0.0
        self.running_var[...] = 1.0

    def out_shape(self, in_shape):
        if in_shape[-1] != self.n:
            raise ValueError(f"layer {self.name} normalises {self.n} features, got an "
                             f"input of shape {in_shape}")
        return in_shape

    def _batch_stats(self, x, centred):
        """(mean, biased variance, batch count), over the global batch when synced;
        leaves x - mean in ``centred``."""
        n = x.shape[0]
        if self.sync is None:
            mean = x.mean(axis=0)
            np.subtract(x, mean, out=centred)
            return mean, np.mean(np.square(centred), axis=0), n
        s = self._buf("sync_sum", (self.n + 1,), x.dtype)
        np.add.reduce(x, axis=0, out=s[:-1])
        s[-1] = n
        self.sync(s)
        n = int(round(float(s[-1])))
        mean = s[:-1] / n
        np.subtract(x, mean, out=centred)
        sq = self._buf("sync_sq", (self.n,), x.dtype)
        np.einsum("ij,ij->j", centred, centred, out=sq)
        self.sync(sq)
        return mean, sq / n, n

    def forward(self, x, *, train):
        shape = x.shape     # images (N, H, W, C): per channel, over N*H*W positions
        x = x.reshape(-1, self.n)
        out = self._buf("out", x.shape, x.dtype)
        if train:
            mean, var, n = self._batch_stats(x, out)
            if n < 2:
                raise ValueError("batch norm needs at least 2 examples per batch in "
                                 f"training, got {n}; raise --batch-size")
            self.n_batch = n
            self.inv_std = 1.0 / np.sqrt(var + self.eps)
            out *= self.inv_std
            self.xhat = self._buf("xhat", x.shape, x.dtype)
            np.copyto(self.xhat, out)
            m = self.momentum
            self.running_mean *= m
            self.running_mean += (1 - m) * mean
            self.running_var *= m
            self.running_var += (1 - m) * var * (n / (n - 1))
        else:
            np.subtract(x, self.running_mean, out=out)
            out /= np.sqrt(self.running_var + self.eps)
        out *= self.gamma
        out += self.beta
        return out.reshape(shape)

    def backward(self, dout):
        shape = dout.shape
        dout = dout.reshape(-1, self.n)
        n = self.n_batch
        xhat = self.xhat
        np.add.reduce(dout, axis=0, out=self.gbeta)
        np.einsum("ij,ij->j", dout, xhat, out=self.ggamma)
        sum_dy, sum_dy_xhat = self.gbeta, self.ggamma
        if self.sync is not None:
            s = self._buf("sync_back", (2, self.n), dout.dtype)
            s[0], s[1] = self.gbeta, self.ggamma
            self.sync(s.reshape(-1))
            sum_dy, sum_dy_xhat = s[0], s[1]
        dx = self._buf("dx", dout.shape, dout.dtype)
        np.multiply(xhat, sum_dy_xhat / n, out=dx)
        dx += sum_dy / n
        np.subtract(dout, dx, out=dx)
        dx *= self.gamma * self.inv_std
        return dx.reshape(shape)

    def sync_idle(self, dtype, backward: bool) -> None:
        """Take part in this layer's all-reduces with zeros (no rows this batch)."""
        if backward:
            self.sync(np.zeros(2 * self.n, dtype))
        else:
            self.sync(np.zeros(self.n + 1, dtype))
            self.sync(np.zeros(self.n, dtype))

