"""Image layers, NHWC: 2-D convolution, max pooling, and the flattening between the image
part of a network and its dense part.  Registered in ``layers.LAYERS``.

Images travel as (N, H, W, C) arrays; the network's input is (N, H*W*C), each row an
image in C order, and the first image layer views it as (N, H, W, C) without a copy.

Convolution (cross-correlation, as in every framework), stride 1, kernel K x K,
F filters, 'valid' (no padding) or 'same' (zero padding p = (K - 1) / 2, K odd):

    y[n, i, j, f] = b[f] + sum_{a, b, c} x_pad[n, i + a, j + b, c] W[a, b, c, f]

As im2col: the patches of x_pad are a strided *view* (N, Ho, Wo, K, K, C) copied once
into ``cols`` (N*Ho*Wo, K*K*C); then one sgemm each:

    forward      Y  = cols @ Wm                        (N*Ho*Wo, F), Wm = W as (K*K*C, F)
    weights      dWm = cols^T @ dY,  db = sum over n, i, j of dY
    input        D[a, b] = dY @ W[a, b]^T  (one batched sgemm: (K*K, N*Ho*Wo, C)), then
                 dx_pad[:, a:a+Ho, b:b+Wo] += D[a, b] for each kernel offset (col2im: a
                 loop over the K*K offsets, never over examples or positions)

With one input channel (a grey image: the first layer) the patches are copied kernel
offset by kernel offset into ``cols`` laid out (K, K, N*Ho*Wo) instead, each a block of
whole image rows, and the products read it transposed: the same sgemms, a copy four
times faster than gathering runs of K numbers.  D's layout lets col2im add contiguous
blocks.  The first layer of a network skips the input gradient, as Dense does.
"""
from __future__ import annotations

import numpy as np

from . import init as initializers
from .layers import Layer, register

PADDINGS = ("valid", "same")


def patches(xp: np.ndarray, k: int) -> np.ndarray:
    """The (N, Ho, Wo, K, K, C) view of every K x K patch of ``xp`` (N, H, W, C),
    Ho = H - K + 1: no copy."""
    n, h, w, c = xp.shape
    s = xp.strides
    return np.lib.stride_tricks.as_strided(
        xp, (n, h - k + 1, w - k + 1, k, k, c), (s[0], s[1], s[2], s[1], s[2], s[3]),
        writeable=False)


@register
class Conv2D(Layer):
    """F filters of K x K over an (H, W, C) input (see the module's docstring).
    Parameters ``weight`` (K, K, C, F), read as a (K*K*C, F) matrix, and ``bias`` (F,)
    (none before a batch norm)."""

    kind = "conv"
    matrices = ("weight",)

    def __init__(self, name: str, in_shape, filters: int, kernel: int, padding: str = "valid",
                 *, bias: bool = True, need_input_grad: bool = True):
        h, w, c = (int(v) for v in in_shape)
        if padding not in PADDINGS:
            raise ValueError(f"layer {name}: padding must be one of {PADDINGS}, got {padding!r}")
        if not (isinstance(filters, int) and filters >= 1 and isinstance(kernel, int)
                and kernel >= 1):
            raise ValueError(f"layer {name}: filters and kernel size must be positive "
                             f"integers, got {filters!r} and {kernel!r}")
        if padding == "same" and kernel % 2 == 0:
            raise ValueError(f"layer {name}: 'same' padding needs an odd kernel size, got "
                             f"{kernel}")
        self.pad = (kernel - 1) // 2 if padding == "same" else 0
        if h + 2 * self.pad < kernel or w + 2 * self.pad < kernel:
            raise ValueError(f"layer {name}: a {kernel}x{kernel} kernel does not fit an input "
                             f"of {h}x{w}x{c} ('{padding}' padding)")
        self.name, self.in_shape, self.filters, self.k = name, (h, w, c), filters, kernel
        self.padding, self.has_bias, self.need_input_grad = padding, bias, need_input_grad
        self.out_hw = (h + 2 * self.pad - kernel + 1, w + 2 * self.pad - kernel + 1)
        self.scratch_per_example = self.out_hw[0] * self.out_hw[1] * kernel * kernel * c

    def param_specs(self):
        k, c = self.k, self.in_shape[2]
        specs = [("weight", (k, k, c, self.filters), True)]
        if self.has_bias:
            specs.append(("bias", (self.filters,), False))
        return specs

    def as_matrix(self, name, value):
        return value.reshape(-1, self.filters)

    def init_(self, params, how, rng, scale):
        initializers.init_dense(how, self.as_matrix("weight", params["weight"]),
                                params.get("bias"), rng, scale)

    def out_shape(self, in_shape):
        if tuple(in_shape) not in (self.in_shape, (int(np.prod(self.in_shape)),)):
            raise ValueError(f"layer {self.name} takes {self.in_shape} images, got an input "
                             f"of shape {tuple(in_shape)}")
        return (*self.out_hw, self.filters)

    def bind(self, params, grads):
        self.W, self.gW = params["weight"], grads["weight"]
        self.b, self.gb = params.get("bias"), grads.get("bias")

    def _padded(self, x):
        """x (N, H, W, C) inside a zero border of ``pad`` (x itself without one)."""
        if not self.pad:
            return x
        p, (h, w, c) = self.pad, self.in_shape
        xp = self._buf("xp", (x.shape[0], h + 2 * p, w + 2 * p, c), x.dtype)
        xp[:, :p], xp[:, p + h:], xp[:, :, :p], xp[:, :, p + w:] = 0, 0, 0, 0
        xp[:, p:p + h, p:p + w] = x
        return xp

    def forward(self, x, *, train):
        n = x.shape[0]
        x = x.reshape(n, *self.in_shape)
        ho, wo = self.out_hw
        k, c, f = self.k, self.in_shape[2], self.filters
        xp = self._padded(x)
        if c == 1:          # (K, K, N*Ho*Wo): whole rows of the image per kernel offset
            cols = self._buf("cols", (k, k, n, ho, wo), x.dtype)
            for a in range(k):
                for b in range(k):
                    cols[a, b] = xp[:, a:a + ho, b:b + wo, 0]
            self.cols = cols.reshape(k * k, -1).T
        else:
            cols = self._buf("cols", (n, ho, wo, k, k, c), x.dtype)
            np.copyto(cols, patches(xp, k))                  # im2col: the one copy
            self.cols = cols.reshape(n * ho * wo, k * k * c)
        out = self._buf("out", (n, ho, wo, f), x.dtype)
        np.matmul(self.cols, self.W.reshape(-1, f), out=out.reshape(-1, f))
        if self.b is not None:
            out += self.b
        return out

    def backward(self, dout):
        n = dout.shape[0]
        f = self.filters
        d2 = dout.reshape(-1, f)
        np.matmul(self.cols.T, d2, out=self.gW.reshape(-1, f))
        if self.gb is not None:     # (a GEMV: 7x a reduction over few long columns)
            ones = self.__dict__.get("_ones")
            if ones is None or ones.shape != d2.shape[:1] or ones.dtype != d2.dtype:
                ones = self._ones = np.ones(d2.shape[:1], d2.dtype)   # (made once)
            np.matmul(ones, d2, out=self.gb)
        if not self.need_input_grad:
            return None
        ho, wo = self.out_hw
        k, (h, w, c), p = self.k, self.in_shape, self.pad
        wt = self._buf("wt", (k * k, f, c), dout.dtype)      # W[a, b]^T, each (F, C)
        np.copyto(wt, self.W.reshape(k * k, c, f).transpose(0, 2, 1))
        d = self._buf("dcols", (k * k, n * ho * wo, c), dout.dtype)
        np.matmul(d2, wt, out=d)
        dxp = self._buf("dxp", (n, h + 2 * p, w + 2 * p, c), dout.dtype)
        dxp[...] = 0
        for a in range(k):                        # col2im: K*K additions of blocks
            for b in range(k):
                dxp[:, a:a + ho, b:b + wo] += d[a * k + b].reshape(n, ho, wo, c)
        if not p:
            return dxp
        dx = self._buf("dx", (n, h, w, c), dout.dtype)
        np.copyto(dx, dxp[:, p:p + h, p:p + w])
        return dx


@register
class MaxPool2D(Layer):
    """Max pooling over non-overlapping P x P windows (stride P) of (N, H, W, C); rows
    and columns past the last whole window are dropped (Ho = H // P), as PyTorch's
    default.  Backward routes each window's gradient to its first maximum (PyTorch's
    choice among ties, which ReLU's zeros make common).  Both are P*P element-wise
    passes over strided views of the windows' k-th elements, no copy of the windows."""

    kind = "pool"
    kinked = True

    def __init__(self, name: str, in_shape, size: int):
        h, w, c = (int(v) for v in in_shape)
        if not (isinstance(size, int) and 1 <= size <= min(h, w)):
            raise ValueError(f"layer {name}: a {size}x{size} pool does not fit an input of "
                             f"{h}x{w}x{c}")
        self.name, self.in_shape, self.p = name, (h, w, c), size
        self.out_hw = (h // size, w // size)

    def out_shape(self, in_shape):
        if tuple(in_shape) != self.in_shape:
            raise ValueError(f"layer {self.name} takes {self.in_shape} images, got an input "
                             f"of shape {tuple(in_shape)}")
        return (*self.out_hw, self.in_shape[2])

    def _elements(self, a):
        """The P*P (N, Ho, Wo, C) strided views of ``a`` (N, H, W, C): each window's
        element (i, j), in row order."""
        (ho, wo), p = self.out_hw, self.p
        s = a.strides
        v = np.lib.stride_tricks.as_strided(
            a, (a.shape[0], ho, p, wo, p, a.shape[3]),
            (s[0], s[1] * p, s[1], s[2] * p, s[2], s[3]))
        return [v[:, :, i, :, j] for i in range(p) for j in range(p)]

    def forward(self, x, *, train):
        self.x = x = x.reshape(x.shape[0], *self.in_shape)
        first, *rest = self._elements(x)
        out = self._buf("out", (x.shape[0], *self.out_hw, self.in_shape[2]), x.dtype)
        np.copyto(out, first)
        for e in rest:
            np.maximum(out, e, out=out)
        self.out = out
        return out

    def piece(self):
        """Which element of each window the last forward pass took."""
        taken = np.full(self.out.shape, -1, np.int8)
        for k, e in enumerate(self._elements(self.x)):
            taken[(taken < 0) & (e == self.out)] = k
        return taken

    def backward(self, dout):
        n, (h, w, c) = dout.shape[0], self.in_shape
        dx = self._buf("dx", (n, h, w, c), dout.dtype)
        if (h, w) != (self.out_hw[0] * self.p, self.out_hw[1] * self.p):
            dx[...] = 0           # (the rows and columns no window covers)
        taken = self._buf("taken", dout.shape, np.bool_)
        mine = self._buf("mine", dout.shape, np.bool_)
        taken[...] = False
        for e, de in zip(self._elements(self.x), self._elements(dx)):
            np.equal(e, self.out, out=mine)       # a maximum of its window, and the
            np.greater(mine, taken, out=mine)     # first (mine and not taken): it takes dout
            taken |= mine
            np.multiply(dout, mine, out=de)
        return dx


@register
class Flatten(Layer):
    """(N, H, W, C) images as (N, H*W*C) rows (C order: a view), between the image
    part of a network and its dense part."""

    kind = "flatten"

    def __init__(self, name: str, in_shape):
        self.name, self.in_shape = name, tuple(int(v) for v in in_shape)

    def out_shape(self, in_shape):
        return (int(np.prod(in_shape)),)

    def forward(self, x, *, train):
        return x.reshape(x.shape[0], -1)

    def backward(self, dout):
        return dout.reshape(dout.shape[0], *self.in_shape)
