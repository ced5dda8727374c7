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
    input        dcols = dY @ Wm^T, scattered back onto dx_pad by K*K strided additions
                 (col2im; a loop over kernel offsets, never over examples or positions)

The first layer of a network skips the input gradient, as Dense does.
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
        cols = self._buf("cols", (n, ho, wo, k, k, c), x.dtype)
        np.copyto(cols, patches(self._padded(x), k))        # im2col: the one copy
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
        if self.gb is not None:
            np.add.reduce(d2, axis=0, out=self.gb)
        if not self.need_input_grad:
            return None
        ho, wo = self.out_hw
        k, (h, w, c), p = self.k, self.in_shape, self.pad
        dcols = self._buf("dcols", (n, ho, wo, k, k, c), dout.dtype)
        np.matmul(d2, self.W.reshape(-1, f).T, out=dcols.reshape(n * ho * wo, k * k * c))
        dxp = self._buf("dxp", (n, h + 2 * p, w + 2 * p, c), dout.dtype)
        dxp[...] = 0
        for a in range(k):                        # col2im: K*K strided additions
            for b in range(k):
                dxp[:, a:a + ho, b:b + wo] += dcols[:, :, :, a, b]
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
    choice among ties, which ReLU's zeros make common)."""

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

    def _windows(self, x):
        """(N, Ho, Wo, C, P*P) copy of every window."""
        n, (ho, wo), p, c = x.shape[0], self.out_hw, self.p, self.in_shape[2]
        v = x[:, :ho * p, :wo * p].reshape(n, ho, p, wo, p, c).transpose(0, 1, 3, 5, 2, 4)
        win = self._buf("win", (n, ho, wo, c, p, p), x.dtype)
        np.copyto(win, v)
        return win.reshape(n, ho, wo, c, p * p)

    def forward(self, x, *, train):
        x = x.reshape(x.shape[0], *self.in_shape)
        win = self._windows(x)
        self.arg = win.argmax(axis=-1)[..., None]
        out = self._buf("out", win.shape[:-1], x.dtype)
        np.copyto(out, np.take_along_axis(win, self.arg, axis=-1)[..., 0])
        return out

    def piece(self):
        """Which element of each window the last forward pass took (a copy)."""
        return self.arg.copy()

    def backward(self, dout):
        n, (ho, wo), p, (h, w, c) = dout.shape[0], self.out_hw, self.p, self.in_shape
        dwin = self._buf("dwin", (n, ho, wo, c, p * p), dout.dtype)
        dwin[...] = 0
        np.put_along_axis(dwin, self.arg, dout[..., None], axis=-1)
        dx = self._buf("dx", (n, h, w, c), dout.dtype)
        back = dwin.reshape(n, ho, wo, c, p, p).transpose(0, 1, 4, 2, 5, 3)
        if (ho * p, wo * p) == (h, w):
            dx.reshape(n, ho, p, wo, p, c)[...] = back      # (a view: dx is whole)
        else:
            dx[...] = 0
            dx[:, :ho * p, :wo * p] = back.reshape(n, ho * p, wo * p, c)
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
