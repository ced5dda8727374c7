"""train/outputs.py: a run's outputs decided and claimed before any work."""

import pytest

from distnn.config import TrainConfig, from_mapping
from distnn.io.files import DirectoryInUse
from distnn.train.outputs import CONFIG_HEADER, claim_outputs, release
from distnn.train.resume import source


def test_the_outputs_are_locked_and_hold_the_runs_settings(tmp_path):
    cfg = TrainConfig(checkpoint_dir=str(tmp_path / "ck"), logdir=str(tmp_path / "tb"),
                      lr=0.05, resume=None)
    locks = claim_outputs(cfg)
    try:
        for d in ("ck", "tb"):
            text = (tmp_path / d / "config.toml").read_text()
            assert text.startswith(CONFIG_HEADER) and "lr = 0.05" in text
        with pytest.raises(DirectoryInUse, match="--checkpoint-dir .* is in use by another run"):
            claim_outputs(cfg)
    finally:
        release(locks)
    import tomllib
    again = from_mapping(tomllib.loads((tmp_path / "ck" / "config.toml").read_text()))
    assert again == cfg                         # the file trains the same run again
    release(claim_outputs(cfg))             # its own config.toml is replaced, not refused


def test_a_config_toml_distnn_did_not_write_is_not_replaced(tmp_path):
    (tmp_path / "ck").mkdir()
    (tmp_path / "ck" / "config.toml").write_text("lr = 1\n")
    with pytest.raises(ValueError, match="holds a config.toml that distnn did not write"):
        claim_outputs(TrainConfig(checkpoint_dir=str(tmp_path / "ck")))
    assert (tmp_path / "ck" / "config.toml").read_text() == "lr = 1\n"
    release(claim_outputs(TrainConfig(checkpoint_dir=str(tmp_path / "ck2"))))  # unlocked


def test_the_metrics_file_is_kept_off_the_outputs_and_the_data(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.parquet").write_text("")
    with pytest.raises(ValueError, match="is inside --logdir"):
        claim_outputs(TrainConfig(logdir=str(tmp_path / "tb"),
                                  metrics_out=str(tmp_path / "tb" / "m.json")))
    with pytest.raises(ValueError, match="would overwrite the dataset"):
        claim_outputs(TrainConfig(dataset=f"parquet:{data}",
                                  metrics_out=str(data / "train.parquet")))
    assert not (tmp_path / "tb").exists()          # refused before anything was made


def test_what_a_resume_reads_and_whether_it_continues_this_directory():
    from distnn.train.outputs import _resumes_from
    here = TrainConfig(checkpoint_dir="/runs/a", resume="/runs/a/epoch-0003")
    assert _resumes_from(here) and source(here.resume, here.checkpoint_dir) == \
        "/runs/a/epoch-0003"
    assert not _resumes_from(TrainConfig(checkpoint_dir="/runs/b", resume="/runs/a"))
    assert source("latest", "/runs/b") == "/runs/b" and source(None, "/runs/b") is None
    remote = TrainConfig(checkpoint_dir="s3://bk/run", resume="s3://bk/run/epoch-0002")
    assert _resumes_from(remote)
    other = TrainConfig(checkpoint_dir="s3://bk/run2", resume="s3://bk/run")
    assert not _resumes_from(other) and source(other.resume, other.checkpoint_dir) == \
        "s3://bk/run"


def test_a_run_with_checkpoints_writes_its_metrics_beside_them(blob_dir, tmp_path, capsys):
    """No --metrics-out: the metrics JSON is CKPT_DIR/metrics.json (the one place for a
    run's result, issue 42), readable as a table by pandas from its history, and a
    resume from that directory writes it again; --config of the run's config.toml does
    not point another run there."""
    import json

    from distnn import cli
    from tests.runs import train_args
    d = tmp_path / "ck"
    assert cli.main(["-q", *train_args(blob_dir, d, epochs=2)]) == 0
    assert "metrics written to " + str(d / "metrics.json") in capsys.readouterr().out
    m = json.loads((d / "metrics.json").read_text())
    assert [h["epoch"] for h in m["history"]] == [0, 1] and "test_accuracy" in m
    assert "metrics_out" not in (d / "config.toml").read_text()
    assert cli.main(["-q", *train_args(blob_dir, d, epochs=3), "--resume"]) == 0
    assert [h["epoch"] for h in json.loads((d / "metrics.json").read_text())["history"]] \
        == [0, 1, 2]
    pd = pytest.importorskip("pandas")
    assert len(pd.DataFrame(m["history"])) == 2
