"""io/files.py: one run per output directory, outputs checked before any work, and
writes that leave the old content whole when they fail."""
import json
import os

import pytest

from distnn.io.files import (LOCK_NAME, DirectoryInUse, OutputError, check_file_target,
                             check_targets, claim, is_uri, write_text_atomic)


def _claim(root, used=lambda r: None, cleared=None, resume=False, overwrite=False):
    return claim(root, "--checkpoint-dir", used=used,
                 clear=lambda r: cleared.append(r) if cleared is not None else None,
                 resume=resume, overwrite=overwrite)


def test_uris_are_not_local_paths():
    assert is_uri("s3://b/k") and is_uri("gs://b") and not is_uri("file:///tmp/x")
    assert not is_uri("/tmp/s3://x") and not is_uri(None)


def test_a_directory_is_held_by_one_run_and_free_once_released(tmp_path):
    root = tmp_path / "ck"
    lock = _claim(root)
    assert json.loads((root / LOCK_NAME).read_text())["pid"] == os.getpid()
    with pytest.raises(DirectoryInUse, match=r"is in use by another run \(\{\"pid\": "):
        _claim(root)
    lock.release()
    _claim(root).release()


def test_another_runs_outputs_are_refused_unless_resumed_or_overwritten(tmp_path):
    root, cleared = tmp_path / "ck", []
    used = lambda r: "checkpoints"                    # noqa: E731
    with pytest.raises(DirectoryInUse, match="already holds checkpoints of another run; "
                                             "resume it with --resume"):
        _claim(root, used)
    _claim(root, used, cleared, resume=True).release()
    assert cleared == []
    _claim(root, used, cleared, overwrite=True).release()
    assert cleared == [root]


def test_links_and_files_are_not_claimed(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(DirectoryInUse, match="is a symbolic link"):
        _claim(tmp_path / "link")
    (tmp_path / "file").write_text("x")
    with pytest.raises(DirectoryInUse, match="is a file; give a directory"):
        _claim(tmp_path / "file")
    victim = tmp_path / "victim"
    victim.write_text("keep")
    (tmp_path / "real" / LOCK_NAME).symlink_to(victim)
    with pytest.raises(DirectoryInUse, match="its .distnn.lock is a symbolic link"):
        _claim(tmp_path / "real")
    assert victim.read_text() == "keep"


def test_the_metrics_file_goes_only_where_nothing_else_is(tmp_path):
    ck, data, cfg = tmp_path / "ck", tmp_path / "data", tmp_path / "run.toml"
    data.mkdir()
    (data / "train-images").write_text("pixels")
    cfg.write_text("")
    outputs, inputs = {"--checkpoint-dir": str(ck)}, {"--data-dir": str(data),
                                                     "--config": str(cfg)}
    check_targets(outputs, inputs, ("--metrics-out", str(tmp_path / "m.json")))
    check_targets(outputs, inputs, ("--metrics-out", str(data / "new.json")))  # new file
    check_targets(outputs, inputs, None)
    check_targets(outputs, inputs, ("--metrics-out", "s3://bucket/m.json"))
    with pytest.raises(ValueError, match="is inside --checkpoint-dir"):
        check_targets(outputs, inputs, ("--metrics-out", str(ck / "m.json")))
    with pytest.raises(ValueError, match="would overwrite --config"):
        check_targets(outputs, inputs, ("--metrics-out", str(cfg)))
    with pytest.raises(ValueError, match="would overwrite --data-dir"):
        check_targets(outputs, inputs, ("--metrics-out", str(data / "train-images")))
    (tmp_path / "dir.json").mkdir()
    with pytest.raises(ValueError, match="is not a regular file"):
        check_targets(outputs, inputs, ("--metrics-out", str(tmp_path / "dir.json")))
    (tmp_path / "l.json").symlink_to(tmp_path / "elsewhere.json")
    with pytest.raises(ValueError, match="is not a regular file"):
        check_targets(outputs, inputs, ("--metrics-out", str(tmp_path / "l.json")))


def test_a_file_target_is_checked_before_training(tmp_path):
    check_file_target(tmp_path / "a" / "b" / "m.json", "--metrics-out")   # can be made
    with pytest.raises(ValueError, match="is a directory; give a file name"):
        check_file_target(tmp_path, "--metrics-out")
    (tmp_path / "f").write_text("")
    with pytest.raises(ValueError, match="is a file, not a directory"):
        check_file_target(tmp_path / "f" / "m.json", "--metrics-out")


def test_a_failed_write_keeps_the_old_content_and_no_temporary(tmp_path, monkeypatch):
    import errno
    import pathlib
    p = tmp_path / "m.json"
    write_text_atomic(p, "old")
    real = pathlib.Path.write_text

    def half_then_full(self, text):           # the disk fills half way through
        real(self, text[:len(text) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(pathlib.Path, "write_text", half_then_full)
    with pytest.raises(OutputError, match=f"could not write {p}: no space left on the device"):
        write_text_atomic(p, "new content")
    assert p.read_text() == "old"
    assert [f.name for f in tmp_path.iterdir()] == ["m.json"]
