"""Random combinations of valid flags (hypothesis): `distnn train` ends with exit 0 or
one clean `error:` line, never a traceback."""
import os

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

from distnn import cli  # noqa: E402

FLAGS = {
    "--activation": st.sampled_from(["sigmoid", "tanh", "scaled-tanh", "relu"]),
    "--output": st.sampled_from(["softmax", "sigmoid", "identity", "tanh"]),
    "--cost": st.sampled_from(["log-likelihood", "cross-entropy", "quadratic"]),
    "--init": st.sampled_from(["fan-in", "glorot", "he", "large", "uniform"]),
    "--optimizer": st.sampled_from(["sgd", "momentum", "nesterov", "rmsprop", "adam"]),
    "--lr": st.sampled_from(["0.01", "0.1", "0.5", "3"]),
    "--batch-size": st.sampled_from(["1", "7", "32", "500"]),
    "--keep-prob": st.sampled_from(["1", "0.8", "0.5"]),
    "--keep-prob-input": st.sampled_from(["1", "0.9"]),
    "--l2": st.sampled_from(["0", "1", "0.5,2"]),
    "--l1": st.sampled_from(["0", "0.1"]),
    "--max-norm": st.sampled_from(["1", "3"]),
    "--ema": st.sampled_from(["0", "0.9"]),
    "--schedule": st.sampled_from(["constant", "step:1:0.5", "exponential:0.9",
                                   "inverse-time:0.1", "plateau:1"]),
    "--warmup": st.sampled_from(["0", "0.5", "1"]),
    "--early-stop": st.sampled_from(["0", "1"]),
    "--monitor": st.sampled_from(["valid_accuracy", "valid_cost", "train_accuracy",
                                  "train_cost"]),
    "--augment": st.sampled_from(["none", "rotate=10", "shift=1,scale=0.1",
                                  "elastic=4:2", "flip=0.5"]),
    "--compress": st.sampled_from(["none", "bf16", "powersgd:1", "powersgd:3"]),
    "--dtype": st.sampled_from(["float32", "float64"]),
    "--train-size": st.sampled_from(["50", "300"]),
    "--epochs": st.sampled_from(["1", "2"]),
}
SWITCHES = ["--batchnorm", "--standardize", "--merge-valid", "--no-monitor-train"]
HIDDEN = st.lists(st.integers(1, 24), min_size=1, max_size=2)


@settings(max_examples=int(os.environ.get("DISTNN_PROPERTY_EXAMPLES", 25)), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(chosen=st.dictionaries(st.sampled_from(sorted(FLAGS)), st.just(None), max_size=10),
       switches=st.lists(st.sampled_from(SWITCHES), unique=True, max_size=3),
       hidden=HIDDEN, data=st.data(), outputs=st.booleans())
def test_any_valid_flags_end_in_success_or_one_error_line(chosen, switches, hidden, data,
                                                          outputs, tmp_path_factory, capsys):
    argv = ["-q", "train", "--dataset", "digits", "--layers",
            ",".join(map(str, [64, *hidden, 10]))]
    for flag in chosen:
        argv += [flag, data.draw(FLAGS[flag], label=flag)]
    argv += switches
    if outputs:
        d = tmp_path_factory.mktemp("out")
        argv += ["--checkpoint-dir", str(d / "ck"), "--logdir", str(d / "tb"),
                 "--metrics-out", str(d / "m.json")]
    capsys.readouterr()
    rc = cli.main(argv)          # an exception escaping main is the traceback a user sees
    err = capsys.readouterr().err
    assert "Traceback" not in err, (argv, err)
    assert rc in (0, 2, 3), (argv, rc, err)        # done, refused, diverged
    if rc:
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert lines and lines[0].startswith("error:"), (argv, err)
