"""A trained model in formats other programs read: ``.npz`` (NumPy alone) and ONNX (any
ONNX runtime; needs the ``onnx`` package: ``pip install 'distnn[onnx]'``).

Both take what ``distnn eval`` takes: raw pixels (N, D) in 0..pixel_max, flattened in C
order.  The input scaling (and ``--standardize``'s mean/std) is part of the model, and
the output is the network's output activations (N, classes), evaluation mode: dropout
off, batch norm with its running statistics.
"""
from __future__ import annotations

import json

import numpy as np

ONNX_OPSET = 17


def to_npz(net, norm, path) -> None:
    """Every parameter and buffer by its checkpoint name (``dense0.weight`` is (n_in,
    n_out), y = x @ W + b), the input normalisation, and ``spec`` (a JSON string)."""
    arrays = {**net.named_params(), **net.named_buffers(), **norm.tensors(),
              "input.pixel_max": np.float64(norm.pixel_max),
              "input.eps": np.float64(norm.eps),
              "spec": np.array(json.dumps(net.config))}
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def _layers(net, norm):
    """The model as (op, constants, attributes) steps, in evaluation mode."""
    dt = net.dtype
    steps = [("Mul", [np.asarray(1.0 / norm.pixel_max, dt)], {})]
    if norm.mean is not None:
        steps += [("Sub", [norm.mean.astype(dt)], {}),
                  ("Div", [(norm.std + norm.eps).astype(dt)], {})]
    p, b = net.named_params(), net.named_buffers()
    images = {"nchw": False}        # ONNX's convolutions take (N, C, H, W) images
    for layer in net.layers:
        if layer.kind not in STEPS:
            raise ValueError(f"layer {layer.name} ({layer.kind}) has no ONNX export yet; "
                             "export it with --format npz")
        own = {k.split(".", 1)[1]: v.astype(dt) for k, v in {**p, **b}.items()
               if k.split(".", 1)[0] == layer.name}
        steps += STEPS[layer.kind](layer, own, dt, images)
    return steps + _activation(net.out_fn.name, dt)


def _dense(layer, p, dt, images) -> list:
    return [("MatMul", [p["weight"]], {})] + \
        ([("Add", [p["bias"]], {})] if "bias" in p else [])


def _batchnorm(layer, p, dt, images) -> list:
    scale = p["gamma"] / np.sqrt(p["running_var"] + dt.type(layer.eps))
    shift = p["beta"] - p["running_mean"] * scale
    if images["nchw"]:              # per channel: (C, 1, 1) broadcasts over H and W
        scale, shift = scale.reshape(-1, 1, 1), shift.reshape(-1, 1, 1)
    return [("Mul", [scale.astype(dt)], {}), ("Add", [shift.astype(dt)], {})]


def _to_nchw(layer, images) -> list:
    """The flat (N, H*W*C) rows as (N, C, H, W) images, once, before the first image
    layer (distnn's rows are NHWC)."""
    if images["nchw"]:
        return []
    images["nchw"] = True
    return [("Reshape", [np.array([-1, *layer.in_shape], np.int64)], {}),
            ("Transpose", [], {"perm": [0, 3, 1, 2]})]


def _conv(layer, p, dt, images) -> list:
    pad = layer.pad
    consts = [np.ascontiguousarray(p["weight"].transpose(3, 2, 0, 1))]    # (F, C, K, K)
    if "bias" in p:
        consts.append(p["bias"])
    return _to_nchw(layer, images) + [("Conv", consts, {
        "kernel_shape": [layer.k, layer.k], "pads": [pad] * 4, "strides": [1, 1]})]


def _pool(layer, p, dt, images) -> list:
    return _to_nchw(layer, images) + [("MaxPool", [], {
        "kernel_shape": [layer.p, layer.p], "strides": [layer.p, layer.p]})]


def _flatten(layer, p, dt, images) -> list:
    images["nchw"] = False          # back to rows in distnn's (H, W, C) order
    return [("Transpose", [], {"perm": [0, 2, 3, 1]}), ("Flatten", [], {"axis": 1})]


#: layer kind (``core.layers.LAYERS``) -> its evaluation-mode ONNX steps (dropout: none)
STEPS = {"dense": _dense, "batchnorm": _batchnorm, "dropout": lambda *a: [],
         "act": lambda layer, p, dt, images: _activation(layer.fn.name, dt),
         "conv": _conv, "pool": _pool, "flatten": _flatten}


def _activation(name: str, dt) -> list:
    if name == "scaled-tanh":          # 1.7159 tanh(2z/3)
        return [("Mul", [np.asarray(2 / 3, dt)], {}), ("Tanh", [], {}),
                ("Mul", [np.asarray(1.7159, dt)], {})]
    ops = {"sigmoid": "Sigmoid", "tanh": "Tanh", "relu": "Relu", "softmax": "Softmax",
           "identity": None}
    if name not in ops:
        raise ValueError(f"no ONNX operator for activation {name!r}")
    return [] if ops[name] is None else [(ops[name], [], {"axis": 1} if name == "softmax"
                                          else {})]


def to_onnx(net, norm, path) -> None:
    """An ONNX model: input ``pixels`` (N, D), output ``outputs`` (N, classes)."""
    try:
        import onnx
        from onnx import TensorProto, helper, numpy_helper
    except ImportError:
        raise ValueError("ONNX export needs the onnx package: pip install 'distnn[onnx]'") \
            from None
    elem = TensorProto.FLOAT if net.dtype == np.float32 else TensorProto.DOUBLE
    nodes, inits, cur = [], [], "pixels"
    for i, (op, consts, attrs) in enumerate(_layers(net, norm)):
        names = []
        for j, c in enumerate(consts):
            names.append(f"c{i}_{j}")
            inits.append(numpy_helper.from_array(np.ascontiguousarray(c), names[-1]))
        nodes.append(helper.make_node(op, [cur, *names], [f"t{i}"], **attrs))
        cur = f"t{i}"
    nodes.append(helper.make_node("Identity", [cur], ["outputs"]))
    graph = helper.make_graph(
        nodes, "distnn", [helper.make_tensor_value_info("pixels", elem, ["N", net.n_inputs])],
        [helper.make_tensor_value_info("outputs", elem, ["N", net.n_classes])], inits)
    model = helper.make_model(graph, producer_name="distnn",
                              opset_imports=[helper.make_opsetid("", ONNX_OPSET)])
    model.ir_version = min(model.ir_version, 9)     # runtimes of 2024 on read it
    onnx.checker.check_model(model)
    onnx.save(model, path)
