"""A fully-connected network over one flat parameter vector.

Layer stack for ``sizes = [n0, n1, ..., nL]``::

    [Dropout(keep_prob_input)] -> Dense0 -> [BatchNorm0] -> f -> [Dropout(keep_prob)]
    -> ... -> Dense(L-1) -> output activation -> cost

The network is a list of layers built from entries ``(kind, name, arguments)``
(``NetworkSpec.entries``) through the layer registry ``core.layers.LAYERS``; what the
rest of distnn needs to know of a layer it asks the layer (``weight_layers``,
``matrices``, ``decayed``), never its type.

All parameters live in ``net.params`` (one contiguous array) and all gradients in
``net.grads``; ``named_params()`` gives views keyed ``"dense0.weight"`` etc.  The
regularised parameters (the layers' weights) come first, so ``params[:net.n_decay]``
is exactly the part that L1/L2 act on.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from . import activations, architecture, costs, init as initializers
from .layers import BatchNorm, Dropout, Layer, build as build_layer

DTYPES = ("float32", "float64")


def _check_sizes(sizes) -> list:
    """The architecture's items (``core.architecture``): widths as ints, image layers
    as their text."""
    sizes = [int(s) if isinstance(s, (int, np.integer)) and not isinstance(s, bool) else s
             for s in sizes]
    architecture.check(sizes)
    return sizes


@dataclass(frozen=True)
class NetworkSpec:
    """Everything that defines a network before training: what ``Network.from_spec``
    builds, what a training config, ``distnn gradcheck`` and a checkpoint describe a
    network by.  Field meanings and usual values as in ``Network``."""

    sizes: tuple[int | str, ...]
    activation: str
    output: str
    cost: str
    init: str
    init_scale: float
    keep_prob: float
    keep_prob_input: float
    batchnorm: bool
    seed: int
    dtype: str
    bn_momentum: float = 0.9
    input_shape: tuple[int, ...] = ()     # (H, W[, C]) of the input images: image layers

    def replace(self, **changes) -> "NetworkSpec":
        return dataclasses.replace(self, **changes)

    @property
    def n_params(self) -> int:
        """The network's parameters: every weight, a bias per Dense layer's unit (none
        before a batch norm), batch norm's gamma and beta."""
        return architecture.parameter_count(self.entries())

    def entries(self) -> list[tuple[str, str, dict]]:
        """The network as layer entries (kind, name, arguments), in order::

            [dropout drop_in] dense0 [batchnorm bn0] act0 [dropout drop0] ... dense(L-1)

        (the output activation and the cost are the network's own)."""
        return architecture.layer_entries(
            self.sizes, self.activation, self.batchnorm, self.keep_prob,
            self.keep_prob_input, self.seed, self.bn_momentum, self.input_shape)


def parameter_count(sizes, batchnorm: bool = False, input_shape=()) -> int:
    """The parameters of a network of layer ``sizes`` (``Network`` allocates these)."""
    return architecture.parameter_count(architecture.layer_entries(
        list(sizes), "relu", batchnorm, input_shape=input_shape))


class Network:
    """Fully-connected network.

    Parameters
    ----------
    sizes : [n_in, hidden..., n_classes]
    activation : hidden activation (sigmoid, tanh, scaled-tanh, relu)
    output : output activation (softmax, sigmoid, tanh, scaled-tanh, relu, identity)
    cost : quadratic, cross-entropy (sigmoid output) or log-likelihood (softmax output)
    init : weight initialiser (see ``core.init``); ``init_scale`` for ``uniform``
    keep_prob, keep_prob_input : dropout keep probabilities after each hidden
        activation and on the input (1.0 = off)
    batchnorm : batch norm between each hidden Dense layer and its activation
    seed : seeds the initial weights and the dropout masks
    dtype : "float32" (default) or "float64"
    """

    def __init__(self, sizes, activation="sigmoid", output="softmax", cost="log-likelihood",
                 init="fan-in", keep_prob=1.0, batchnorm=False, seed=0, dtype="float32",
                 *, keep_prob_input=1.0, init_scale=0.05, bn_momentum=0.9, input_shape=()):
        self.sizes = _check_sizes(sizes)
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
        for name, p in (("keep_prob", keep_prob), ("keep_prob_input", keep_prob_input)):
            if not 0.0 < p <= 1.0:
                raise ValueError(f"{name} must be in (0, 1], got {p!r}")
        if not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        self.dtype = np.dtype(dtype)
        self.hidden_fn = activations.get(activation)
        self.out_fn = activations.get(output, output=True)
        self.cost = costs.get(cost)
        self.cost.check_output(self.out_fn)
        initializers.check(init, init_scale)
        self.spec = NetworkSpec(tuple(self.sizes), activation, output, cost, init, init_scale,
                                keep_prob, keep_prob_input, bool(batchnorm), int(seed), dtype,
                                bn_momentum, tuple(int(v) for v in input_shape))
        self.layers = self._build(self.spec.entries())
        self._allocate()
        self.reset(init, seed, init_scale)

    @classmethod
    def from_spec(cls, spec: NetworkSpec) -> "Network":
        return cls(**dataclasses.asdict(spec))

    @property
    def config(self) -> dict:
        """The spec as a plain dict (``sizes`` a list), e.g. for JSON."""
        return {**dataclasses.asdict(self.spec), "sizes": list(self.sizes)}

    # -- construction -------------------------------------------------------------
    def _build(self, entries) -> list[Layer]:
        layers = [build_layer(kind, name, args) for kind, name, args in entries]
        shape: tuple[int, ...] = (self.n_inputs,)
        #: the most numbers one array of a pass holds per example (evaluation chunks)
        self.values_per_example = self.n_inputs
        for layer in layers:
            shape = layer.out_shape(shape)
            self.values_per_example = max(self.values_per_example, int(np.prod(shape)),
                                          layer.scratch_per_example)
        if shape != (self.n_classes,):
            raise ValueError(f"the network ends with {shape} outputs, not {self.n_classes}")
        #: the layers that hold weight matrices, input side first (L1/L2 per layer,
        #: max-norm, gradient buckets)
        self.weight_layers = [l for l in layers if l.matrices]
        self.dropouts = [l for l in layers if isinstance(l, Dropout)]
        self.batchnorms = [l for l in layers if isinstance(l, BatchNorm)]
        return layers

    def _allocate(self) -> None:
        specs = [(l, name, shape, decay) for l in self.layers
                 for name, shape, decay in l.param_specs()]
        specs.sort(key=lambda s: not s[3])  # regularised parameters first (stable sort)
        total = sum(int(np.prod(s[2])) for s in specs)
        self.params = np.zeros(total, self.dtype)
        self.grads = np.zeros(total, self.dtype)
        self._views, self._gviews, self.slices = {}, {}, {}
        per_layer: dict[Layer, tuple[dict, dict]] = {}
        off = 0
        self.n_decay = 0
        for layer, name, shape, decay in specs:
            size = int(np.prod(shape))
            key = f"{layer.name}.{name}"
            self.slices[key] = slice(off, off + size)
            p = self.params[off:off + size].reshape(shape)
            g = self.grads[off:off + size].reshape(shape)
            self._views[key], self._gviews[key] = p, g
            pv, gv = per_layer.setdefault(layer, ({}, {}))
            pv[name], gv[name] = p, g
            off += size
            if decay:
                self.n_decay = off
        for layer, (pv, gv) in per_layer.items():
            layer.bind(pv, gv)

    def reset(self, init: str = "fan-in", seed: int = 0, init_scale: float = 0.05) -> None:
        """Re-draw all parameters from ``init`` with ``np.random.default_rng(seed)``."""
        initializers.check(init, init_scale)
        rng = np.random.default_rng(seed)
        views = self.named_params()
        for layer in self.layers:
            own = {n: views[f"{layer.name}.{n}"] for n, _, _ in layer.param_specs()}
            layer.init_(own, init, rng, init_scale)

    def rebind_grads(self, buf: np.ndarray) -> None:
        """Make ``buf[:P]`` the gradient vector (e.g. inside a larger all-reduce buffer
        that also carries the loss), so no copy is needed before communicating."""
        self.grads = self._check_buffer("gradient", buf)
        self._bind_layers()

    def rebind_params(self, buf: np.ndarray, copy: bool = True) -> None:
        """Make ``buf[:P]`` the parameter vector (``copy``: holding the parameters'
        values now; else as it is), e.g. memory the replicas of a node share."""
        new = self._check_buffer("parameter", buf)
        if copy and new is not self.params:
            np.copyto(new, self.params)
        self.params = new
        self._bind_layers()

    def _check_buffer(self, what: str, buf: np.ndarray) -> np.ndarray:
        if buf.dtype != self.dtype or buf.size < self.params.size:
            raise ValueError(f"{what} buffer must be {self.dtype} with >= {self.params.size} "
                             f"entries, got {buf.dtype} {buf.size}")
        return buf if buf.size == self.params.size else buf[:self.params.size]

    def _bind_layers(self) -> None:
        """Every layer's views into ``params`` and ``grads`` (after either moved)."""
        per_layer: dict = {}
        for key, sl in self.slices.items():
            layer_name, pname = key.split(".", 1)
            shape = self._views[key].shape
            self._views[key] = p = self.params[sl].reshape(shape)
            self._gviews[key] = g = self.grads[sl].reshape(shape)
            pv, gv = per_layer.setdefault(layer_name, ({}, {}))
            pv[pname], gv[pname] = p, g
        for layer in self.layers:
            if layer.name in per_layer:
                layer.bind(*per_layer[layer.name])

    def sync_batchnorm(self, allreduce) -> None:
        """Batch statistics over the data-parallel global batch: ``allreduce(a)`` must
        sum the flat array ``a`` over every replica in place (None: this process only)."""
        for bn in self.batchnorms:
            bn.sync = allreduce

    def sync_idle(self) -> None:
        """A replica with no rows in this batch makes the all-reduces a forward and
        backward pass would make (synchronised batch norm), with zeros."""
        for bn in self.batchnorms:
            bn.sync_idle(self.dtype, backward=False)
        for bn in reversed(self.batchnorms):
            bn.sync_idle(self.dtype, backward=True)

    @property
    def syncs_per_step(self) -> int:
        """All-reduces a training step makes inside forward/backward."""
        return 3 * sum(bn.sync is not None for bn in self.batchnorms)

    # -- views -------------------------------------------------------------------
    def named_params(self) -> dict[str, np.ndarray]:
        """{"dense0.weight": (n_in, n_out) view, "dense0.bias": (n_out,), ...}."""
        return dict(self._views)

    def layout(self) -> list[tuple[str, slice, tuple[int, ...]]]:
        """[(key, slice of ``params``, shape)] of every parameter, in their order in the
        flat vector (weights first); a weight matrix's shape is the (fan-in, units) its
        layer reads it as (``matrices``: what PowerSGD compresses), any other's its own."""
        shapes = {k: m.shape for k, m in self.matrices()}
        return sorted(((k, sl, shapes.get(k, self._views[k].shape))
                       for k, sl in self.slices.items()), key=lambda t: t[1].start)

    def named_buffers(self) -> dict[str, np.ndarray]:
        """Non-trained state (batch-norm running statistics), keyed like parameters."""
        return {f"{l.name}.{k}": v for l in self.layers for k, v in l.buffers().items()}

    def matrices(self) -> list[tuple[str, np.ndarray]]:
        """[("dense0.weight", its (fan-in, units) view), ...]: every weight matrix,
        input side first, as its layer reads it (``Layer.as_matrix``)."""
        views = self.named_params()
        return [(f"{l.name}.{m}", l.as_matrix(m, views[f"{l.name}.{m}"]))
                for l in self.weight_layers for m in l.matrices]

    @property
    def n_classes(self) -> int:
        return self.sizes[-1]

    @property
    def n_inputs(self) -> int:
        """The width of an input row: an image's H*W*C values (C order), or the first
        of ``sizes`` for a fully-connected network."""
        shape = self.spec.input_shape
        return int(np.prod(shape)) if architecture.has_images(self.sizes) else self.sizes[0]

    # -- computation ---------------------------------------------------------------
    def _forward(self, x, train, epoch, indices):
        for d in self.dropouts:
            d.context = (epoch, indices)
        for layer in self.layers:
            x = layer.forward(x, train=train)
        return x  # z of the output layer (the last Dense output buffer)

    def loss_and_grad_sum_(self, x, y, *, epoch=0, indices=None, scale=1.0, after=None):
        """Forward + backward without input checks (the trainer's hot path; checked
        batches from ``check_batch``).  Returns the summed cost; writes ``scale`` times
        the summed gradient into ``self.grads``.  ``after(layer)``, if given, is called
        as soon as backprop has finished each layer (its gradient is final)."""
        with activations.quiet():
            z = self._forward(x, True, epoch, indices)
            last = self.layers[-1]
            a = last._buf("a", z.shape, z.dtype)
            np.copyto(a, z)
            self.out_fn.forward_(a)
            delta = last._buf("delta", z.shape, z.dtype)
            scratch = last._buf("cost_scratch", z.shape, z.dtype)
            pos = costs.target_positions(y, self.n_classes)
            loss = self.cost.loss_and_delta(z, a, pos, self.out_fn, delta, scratch, scale)
            d = delta
            for layer in reversed(self.layers):
                d = layer.backward(d)
                if after is not None:
                    after(layer)
                if d is None:
                    break
        return loss

    def check_batch(self, x, y=None):
        """Validate and convert a batch; returns (x as self.dtype, y as intp)."""
        x = np.asarray(x)
        if x.ndim != 2 or x.shape[1] != self.n_inputs:
            raise ValueError(f"inputs must have shape (N, {self.n_inputs}) for layer sizes "
                             f"{self.sizes}, got {x.shape}")
        if not np.issubdtype(x.dtype, np.number):
            raise ValueError(f"inputs must be numeric, got dtype {x.dtype}")
        x = np.ascontiguousarray(x, dtype=self.dtype)
        if not np.isfinite(x).all():
            raise ValueError("inputs contain NaN or inf; clean or impute the data first")
        if y is None:
            return x, None
        y = np.asarray(y)
        if y.shape != (x.shape[0],) or not np.issubdtype(y.dtype, np.integer):
            raise ValueError(f"labels must be integers of shape ({x.shape[0]},), got "
                             f"{y.dtype} {y.shape}")
        if y.size and (y.min() < 0 or y.max() >= self.n_classes):
            raise ValueError(f"labels must be in [0, {self.n_classes}) for an output layer of "
                             f"{self.n_classes}, got range [{y.min()}, {y.max()}]")
        return x, y.astype(np.intp, copy=False)

    def loss_and_grad(self, x, y, *, epoch=0, indices=None):
        """Mean cost over the batch (no regularisation) and its flat gradient (a copy).

        Parameters
        ----------
        x : (N, n_in) inputs; y : (N,) int labels.
        epoch, indices : select the dropout masks (default: epoch 0, indices 0..N-1).

        Returns
        -------
        cost : float, (1/N) sum_i C_i
        grad : (P,) array aligned with ``self.params``
        """
        x, y = self.check_batch(x, y)
        loss = self.loss_and_grad_sum_(x, y, epoch=epoch, indices=indices,
                                       scale=1.0 / x.shape[0])
        return loss / x.shape[0], self.grads.copy()

    def forward(self, x, *, train=False, epoch=0, indices=None) -> np.ndarray:
        """Output activations (N, n_classes), a new array."""
        x, _ = self.check_batch(x)
        with activations.quiet():
            z = self._forward(x, train, epoch, indices)
            return self.out_fn.forward_(z.copy())

    def evaluate(self, x, y, *, chunk=2000) -> tuple[float, int]:
        """(summed cost, number correct) in eval mode, in chunks to bound memory."""
        x_all, y_all = np.asarray(x), np.asarray(y)
        loss, correct = 0.0, 0
        for s in range(0, len(x_all), chunk):
            xb, yb = self.check_batch(x_all[s:s + chunk], y_all[s:s + chunk])
            with activations.quiet():
                z = self._forward(xb, False, 0, None)
                a = self.out_fn.forward_(z.copy())
                pos = costs.target_positions(yb, self.n_classes)
                loss += self.cost.loss_and_delta(z, a, pos, self.out_fn, np.empty_like(z),
                                                 np.empty_like(z), 1.0)
            correct += int((a.argmax(axis=1) == yb).sum())
        return loss, correct

    def predict_proba(self, x, *, chunk=2000) -> np.ndarray:
        """Output activations (N, n_classes) in eval mode."""
        x = np.asarray(x)
        out = [self.forward(x[s:s + chunk]) for s in range(0, len(x), chunk)]
        return np.concatenate(out) if out else np.empty((0, self.n_classes), self.dtype)

    def predict(self, x, *, chunk=2000) -> np.ndarray:
        """(N,) predicted labels."""
        return self.predict_proba(x, chunk=chunk).argmax(axis=1)
