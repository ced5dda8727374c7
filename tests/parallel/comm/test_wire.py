"""parallel/comm/wire.py: how numbers travel; bfloat16 rounds to nearest, ties to even."""
import numpy as np
import pytest

from distnn.parallel.comm.wire import BF16, RAW


def _bits(x):
    return np.array(x, np.float32).view(np.uint32)


def test_bf16_rounds_to_nearest_even_as_ml_dtypes_does(rng):
    import ml_dtypes             # (onnx needs it: in the test extra through onnx)
    x = (rng.standard_normal(20000) * 10.0 ** rng.integers(-30, 30, 20000)).astype(np.float32)
    ties = np.array([1.00390625, 1.01171875, -1.00390625, 3.4e38, -3.4e38, np.inf, 0.0,
                     -0.0, 1e-40], np.float32)      # halfway cases, overflow, subnormal
    x = np.concatenate([x, ties])
    w = np.empty(x.size, np.uint16)
    BF16.encode(x, w)
    np.testing.assert_array_equal(w, x.astype(ml_dtypes.bfloat16).view(np.uint16))
    back = np.empty_like(x)
    BF16.decode(w, back)
    np.testing.assert_array_equal(back, x.astype(ml_dtypes.bfloat16).astype(np.float32))
    nan = np.array([np.nan, -np.nan], np.float32)
    out = np.empty(2, np.uint16)
    BF16.encode(nan, out)
    BF16.decode(out, nan)
    assert np.isnan(nan).all()


def test_bf16_ties_go_to_the_even_neighbour_and_overflow_is_infinite():
    one = 1.0
    ulp = 2.0 ** -7                               # bfloat16's spacing at 1
    x = np.array([one + ulp / 2, one + 3 * ulp / 2, one + ulp / 2 + 2.0 ** -20,
                  -(one + ulp / 2), 3.3895e38, 3.4e38, 1.5], np.float32)
    BF16.round_(x)
    assert x[0] == one                            # tie: down to the even 1.0
    assert x[1] == one + 2 * ulp                  # tie: up to the even 1 + 2 ulp
    assert x[2] == one + ulp                      # past the tie: nearest
    assert x[3] == -one
    assert np.isfinite(x[4]) and np.isinf(x[5])   # beyond bfloat16's largest
    assert x[6] == 1.5 and (_bits(x) & 0xFFFF == 0).all()   # only the upper halves left


def test_bf16_sums_accumulate_in_float32_and_raw_is_exact(rng):
    x = rng.standard_normal(1000).astype(np.float32)
    acc = np.ones(1000, np.float32)
    w = np.empty(1000, BF16.dtype(np.float32))
    BF16.encode(x, w)
    BF16.add_(acc, w)
    r = x.copy()
    BF16.round_(r)
    np.testing.assert_array_equal(acc, np.float32(1) + r)
    assert np.abs(r - x).max() <= np.abs(x).max() * 2.0 ** -8
    raw = np.empty_like(x)
    RAW.encode(x, raw)
    RAW.add_(acc, raw)
    np.testing.assert_array_equal(acc, np.float32(1) + r + x)
    with pytest.raises(ValueError, match="bf16 carries float32 numbers, not float64"):
        BF16.dtype(np.float64)
