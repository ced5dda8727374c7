"""Nielsen's learning-rate finder, on synthetic curves and on real training."""
import pytest

from distnn.search import lr_find


def _synthetic(threshold):
    """Cost curve of a quadratic bowl: falls for lr < threshold, oscillates/grows above."""
    def curve(lr):
        r = abs(1 - lr / (threshold / 2))      # contraction factor per epoch
        return [10.0 * r ** (2 * k) for k in range(4)]
    return curve


@pytest.mark.parametrize("threshold", [0.37, 4.2, 0.0031])
def test_lr_find_locates_the_threshold(threshold):
    res = lr_find.find_threshold(_synthetic(threshold), start=0.01, refine=6)
    assert res["threshold"] < threshold <= res["first_failing"]
    assert res["first_failing"] / res["threshold"] < 10 ** (1 / 2 ** 6) + 1e-9
    assert res["suggested_lr"] == pytest.approx(res["threshold"] / 2)


def test_lr_find_treats_nan_as_failure():
    def curve(lr):
        return [1.0, 0.5, 0.2] if lr < 0.3 else [1.0, float("nan")]
    res = lr_find.find_threshold(curve, refine=3)
    assert res["threshold"] < 0.3 <= res["first_failing"]


def test_lr_find_cli_on_real_training(tmp_path, capsys):
    from distnn import cli
    from tests.data import tiny
    data = tiny.write_blobs(tmp_path, 400, 40, low=150, high=100)
    rc = cli.main(["-q", "lr-find", "--dataset", "idx", "--data-dir", str(data),
                   "--layers", "64,8,4", "--batch-size", "20", "--find-epochs", "3",
                   "--refine", "2", "--no-monitor-train"])
    out = capsys.readouterr().out
    assert rc == 0, out
    import re
    m = re.search(r"threshold learning rate ~ ([0-9.e+-]+) .* suggested --lr ([0-9.e+-]+)", out)
    assert m and float(m.group(2)) == pytest.approx(float(m.group(1)) / 2, rel=1e-3)
    assert 1e-4 < float(m.group(1)) < 1e4
