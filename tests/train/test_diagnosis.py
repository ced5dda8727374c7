"""The bias/variance diagnosis every run ends with."""
import pytest

from distnn.train.diagnosis import diagnose, format_diagnosis


@pytest.mark.parametrize("train,valid,bayes,verdict", [
    (0.15, 0.16, 0.0, "high bias"),
    (0.01, 0.11, 0.0, "high variance"),
    (0.05, 0.053, 0.047, "balanced"),
    (0.08, 0.12, 0.07, "high variance"),
])
def test_bias_variance_verdicts(train, valid, bayes, verdict):
    d = diagnose(train, valid, bayes)
    assert d["verdict"] == verdict
    assert d["avoidable_bias"] == pytest.approx(train - bayes)
    assert d["variance"] == pytest.approx(valid - train)
    assert ("bigger network" in d["remedies"]) == (verdict == "high bias")
    assert ("regularisation" in format_diagnosis(d)) == (verdict != "balanced")
