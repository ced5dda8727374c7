"""What ``--layers`` says, as the layer entries a network is built from.

An architecture is a sequence of items:

- a positive integer: a dense layer of that width (the first number of a
  fully-connected network is its input width: ``784,800,10``);
- ``conv:F:K`` (F filters of K x K, 'valid') or ``conv:F:K:same`` (zero-padded to keep
  the image's size; K odd): a convolution, followed by the hidden activation (and, with
  batch norm, a batch norm per channel between them);
- ``pool:P``: max pooling over P x P windows.

Image items come first, after an optional input width (checked against the input's
shape); the first dense layer after them flattens the image.  A network with image
items needs the shape of its input images, (H, W, C), which a run takes from its
dataset: ``conv:20:5,pool:2,conv:40:5,pool:2,1000,10`` on MNIST's 28x28x1.

``layer_entries`` turns an architecture into entries ``(kind, name, arguments)`` for
``layers.LAYERS``: dense layers are ``dense0``, ``dense1``, ... (with ``bn<i>``,
``act<i>``, ``drop<i>``) exactly as a fully-connected network always had them;
convolutions ``conv0``, ... (``bnc<i>``, ``actc<i>``), pools ``pool0``, ...
"""
from __future__ import annotations

import numpy as np

from .layers import build as build_layer

IMAGE_KINDS = ("conv", "pool")


def parse_item(item) -> tuple[str, dict]:
    """("dense", {"width"}), ("conv", {"filters", "kernel", "padding"}) or ("pool",
    {"size"}) for one item; a ValueError that names the item otherwise."""
    if isinstance(item, (int, np.integer)) and not isinstance(item, bool):
        if item >= 1:
            return "dense", {"width": int(item)}
    elif isinstance(item, str):
        kind, *args = item.strip().split(":")
        nums = [a for a in args if a.isdigit() and int(a) >= 1]
        if kind == "conv" and len(args) in (2, 3) and len(nums) == 2 and \
                args[:2] == nums and (len(args) == 2 or args[2] in ("valid", "same")):
            return "conv", {"filters": int(args[0]), "kernel": int(args[1]),
                            "padding": args[2] if len(args) == 3 else "valid"}
        if kind == "pool" and len(args) == 1 and nums == args:
            return "pool", {"size": int(args[0])}
    raise ValueError(f"layers: {item!r} is not a layer; expected a positive width (a dense "
                     "layer), conv:F:K or conv:F:K:same (F filters of KxK), or pool:P "
                     "(PxP max pooling), e.g. conv:20:5,pool:2,100,10")


def check(items) -> None:
    """The grammar of an architecture (see the module's docstring), before any shape is
    known: a ValueError naming what is wrong and showing the form expected."""
    kinds = [parse_item(i)[0] for i in items]
    image = any(k in IMAGE_KINDS for k in kinds)
    lead = 1 if kinds and kinds[0] == "dense" else 0
    rest = kinds[lead:]
    first_dense = rest.index("dense") if "dense" in rest else len(rest)
    if not image:
        if len(items) < 2:
            raise ValueError(f"layers must be >= 2 positive integers like 784,30,10 (the "
                             f"input width first), got {list(items)!r}")
        return
    if first_dense == len(rest):
        raise ValueError(f"layers {list(items)!r} end in an image layer; end with dense "
                         "layers, the last of one unit per class, e.g. ...,pool:2,100,10")
    if any(k in IMAGE_KINDS for k in rest[first_dense:]):
        raise ValueError(f"layers {list(items)!r}: image layers (conv, pool) come before the "
                         "dense layers, e.g. conv:20:5,pool:2,100,10")


def weight_layer_count(items) -> int:
    """How many weight matrices (conv and dense layers) the architecture has: the number
    of values a per-layer L1/L2 strength takes."""
    kinds = [parse_item(i)[0] for i in items]
    lead = 1 if kinds and kinds[0] == "dense" else 0
    return sum(k != "pool" for k in kinds[lead:])


def has_images(items) -> bool:
    return any(parse_item(i)[0] in IMAGE_KINDS for i in items)


def layer_entries(sizes, activation: str = "sigmoid", batchnorm: bool = False,
                  keep_prob: float = 1.0, keep_prob_input: float = 1.0, seed: int = 0,
                  bn_momentum: float = 0.9, input_shape=()) -> list[tuple[str, str, dict]]:
    """The entries of the architecture ``sizes`` (see the module's docstring) for input
    images of ``input_shape`` (needed with image items)."""
    out = []
    if keep_prob_input != 1.0:
        out.append(("dropout", "drop_in", {"keep_prob": keep_prob_input, "seed": seed,
                                           "stream": 1000}))
    if not has_images(sizes):
        return out + _dense_entries(list(sizes), activation, batchnorm, keep_prob, seed,
                                    bn_momentum, first_needs_grad=False)
    items, shape = _image_input(list(sizes), input_shape)
    n_conv = n_pool = 0
    while items and parse_item(items[0])[0] in IMAGE_KINDS:
        kind, args = parse_item(items.pop(0))
        if kind == "pool":
            entry = ("pool", f"pool{n_pool}", {"in_shape": shape, **args})
            n_pool += 1
            out.append(entry)
        else:
            entry = ("conv", f"conv{n_conv}", {"in_shape": shape, **args, "bias": not batchnorm,
                                               "need_input_grad": n_conv > 0})
            out.append(entry)
            if batchnorm:
                out.append(("batchnorm", f"bnc{n_conv}", {"n": args["filters"],
                                                          "momentum": bn_momentum}))
            out.append(("act", f"actc{n_conv}", {"fn": activation}))
            n_conv += 1
        shape = build_layer(*entry).out_shape(shape)
    out.append(("flatten", "flatten", {"in_shape": shape}))
    return out + _dense_entries([int(np.prod(shape)), *items], activation, batchnorm,
                                keep_prob, seed, bn_momentum, first_needs_grad=n_conv > 0)


def _image_input(items: list, input_shape) -> tuple[list, tuple[int, int, int]]:
    """(the items after an input width, checked; the input's (H, W, C))."""
    if len(input_shape) not in (2, 3) or not all(int(v) >= 1 for v in input_shape):
        raise ValueError(f"layers {items!r} have image layers, which need the input's "
                         f"image shape (H, W) or (H, W, C); got {tuple(input_shape)!r}")
    shape = (*map(int, input_shape), 1)[:3]
    if parse_item(items[0])[0] == "dense":
        if items[0] != int(np.prod(shape)):
            raise ValueError(f"layers start with an input width of {items[0]}, but the "
                             f"input images are {'x'.join(map(str, shape))} = "
                             f"{int(np.prod(shape))} values; give {int(np.prod(shape))} or "
                             "leave the width out")
        items = items[1:]
    return items, shape


def _dense_entries(widths, activation, batchnorm, keep_prob, seed, bn_momentum,
                   first_needs_grad: bool) -> list[tuple[str, str, dict]]:
    out = []
    n = len(widths) - 1
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        bn = batchnorm and i < n - 1
        # nothing before the first layer with parameters: skip its dx GEMM
        out.append(("dense", f"dense{i}", {"n_in": a, "n_out": b, "bias": not bn,
                                           "need_input_grad": i > 0 or first_needs_grad}))
        if i == n - 1:
            break
        if bn:
            out.append(("batchnorm", f"bn{i}", {"n": b, "momentum": bn_momentum}))
        out.append(("act", f"act{i}", {"fn": activation}))
        if keep_prob != 1.0:
            out.append(("dropout", f"drop{i}", {"keep_prob": keep_prob, "seed": seed,
                                                "stream": 1001 + i}))
    return out


def parameter_count(entries) -> int:
    """The parameters the layers of ``entries`` hold."""
    return sum(int(np.prod(shape)) for kind, name, args in entries
               for _, shape, _ in build_layer(kind, name, args).param_specs())
