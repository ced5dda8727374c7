"""Export to .npz and ONNX: the exported model, run by NumPy alone or by onnxruntime on
raw pixels, gives distnn's own outputs."""
import json

import numpy as np
import pytest

from distnn import cli
from distnn.train.evaluate import load_model
from tests.runs import train_args

pytest.importorskip("pyarrow")


def _raw_test_pixels(blob_dir):
    from distnn.data import idx
    return idx.load(blob_dir / "t10k-images-idx3-ubyte").reshape(-1, 64)


@pytest.mark.parametrize("extra", [
    (),                                                        # sigmoid/softmax, momentum
    ("--activation", "relu", "--init", "he", "--standardize", "--batchnorm"),
    ("--activation", "scaled-tanh", "--output", "sigmoid", "--cost", "cross-entropy",
     "--dtype", "float64", "--ema", "0.9"),
    ("--activation", "tanh", "--output", "identity", "--cost", "quadratic",
     "--keep-prob-input", "0.9"),
    # image layers (NHWC here, NCHW in ONNX): conv 'same', batch norm per channel, pool
    ("--layers", "conv:4:3:same,pool:2,conv:6:3,12,4", "--activation", "relu", "--init",
     "he", "--batchnorm"),
    ("--layers", "64,conv:3:5,pool:2,4", "--standardize"),
])
def test_onnx_in_onnxruntime_gives_distnns_outputs(blob_dir, tmp_path, capsys, extra):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    c = tmp_path / "c"
    assert cli.main(["-q", *train_args(blob_dir, c, epochs=2, extra=extra)]) == 0
    assert cli.main(["export", str(c), str(tmp_path / "m.onnx")]) == 0
    assert "(onnx)" in capsys.readouterr().out
    net, norm, _, _ = load_model(c)
    x = _raw_test_pixels(blob_dir)
    want = net.predict_proba(norm(x, net.dtype))
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run(["outputs"], {"pixels": x.astype(net.dtype)})[0]
    tol = 1e-12 if net.dtype == np.float64 else 2e-5
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol)
    assert (got.argmax(1) == want.argmax(1)).mean() > 0.999


def test_npz_holds_everything_to_compute_the_outputs_with_numpy_alone(blob_dir, tmp_path):
    c = tmp_path / "c"
    assert cli.main(["-q", *train_args(blob_dir, c, epochs=2,
                                       extra=("--standardize", "--activation", "relu",
                                              "--init", "he"))]) == 0
    assert cli.main(["-q", "export", str(c), str(tmp_path / "m.npz")]) == 0
    z = np.load(tmp_path / "m.npz")
    spec = json.loads(str(z["spec"]))
    x = _raw_test_pixels(blob_dir) / z["input.pixel_max"]
    a = (x - z["input.mean"]) / (z["input.std"] + z["input.eps"])
    n = len(spec["sizes"]) - 1
    for i in range(n):
        a = a @ z[f"dense{i}.weight"] + z[f"dense{i}.bias"]
        if i < n - 1:
            a = np.maximum(a, 0)
    e = np.exp(a - a.max(1, keepdims=True))
    net, norm, _, _ = load_model(c)
    want = net.predict_proba(norm(_raw_test_pixels(blob_dir), net.dtype))
    np.testing.assert_allclose(e / e.sum(1, keepdims=True), want, rtol=1e-4, atol=1e-5)


def test_export_says_which_format_it_needs(blob_dir, tmp_path, capsys):
    c = tmp_path / "c"
    assert cli.main(["-q", *train_args(blob_dir, c, epochs=1)]) == 0
    capsys.readouterr()
    assert cli.main(["export", str(c), str(tmp_path / "m.bin")]) == 2
    assert "name it .npz, .onnx or .json" in capsys.readouterr().err
