"""A run's outputs, decided and claimed before any work: its checkpoint and log
directories (locked, another run's refused), the metrics file (checked against every
other output and input), the local stages of URI outputs and the checkpoint a resume
reads; what is left of them when the run ends."""
from __future__ import annotations

import logging
from pathlib import Path

from ..config import TrainConfig

log = logging.getLogger(__name__)


CONFIG_HEADER = "# the settings of this run: distnn train --config config.toml trains it again\n"


def claim_outputs(cfg: TrainConfig, inputs: dict | None = None, resumed=None) -> list:
    """Before any work: the checkpoint and log directories become this run's (locked;
    another run's refused unless --resume continues the run they hold, or --overwrite;
    for a URI, its local stage is locked and the URI checked), and the metrics file is
    checked to be writable and to be no output directory's and no input's (``inputs``:
    {what: path}, such as --config).  A run resuming from a checkpoint inside its URI
    --checkpoint-dir copies the checkpoint it read (``resumed``, read from there) into
    the directory's stage.  Returns the locks to release at the end."""
    from ..io import checkpoint as ckpt
    from ..io import checkpoint_store as ckpt_store
    from ..io import store
    from ..io import tensorboard as tb
    from ..io.files import check_targets, claim, write_text_atomic
    from ..io.store import check_file_target
    metrics = metrics_path(cfg)
    check_targets({"--checkpoint-dir": cfg.checkpoint_dir, "--logdir": cfg.logdir},
                  {**(inputs or {}), "--resume": _resumed(cfg) if cfg.resume else None,
                   "the dataset": _dataset_path(cfg)},
                  ("--metrics-out", metrics) if metrics else None,
                  beside=cfg.checkpoint_dir if not cfg.metrics_out else None)
    if metrics:
        check_file_target(metrics, "--metrics-out")
    from ..data.datasets import read_from
    from ..io.files import check_not_input
    for flag, d in (("--checkpoint-dir", cfg.checkpoint_dir), ("--logdir", cfg.logdir)):
        if d:     # never into the data the run reads (a Parquet directory, --data-dir)
            check_not_input(d, flag, read_from(cfg.dataset, cfg.data_dir))
            if not store.is_uri(d):
                _check_own_config(Path(d) / "config.toml", d)   # before deleting anything
    locks = []
    kinds = {cfg.checkpoint_dir: ("--checkpoint-dir", ckpt.used, ckpt.clear, ckpt_store.used_names,
                                  ckpt_store.clear_remote),
             cfg.logdir: ("--logdir", tb.used_events, tb.clear_events, tb.used_event_names,
                          tb.clear_remote_events)}
    try:
        for d in (cfg.checkpoint_dir, cfg.logdir):
            if not d:
                continue
            flag, used, clear, used_remote, clear_remote = kinds[d]
            # checkpoints already there are this run's only when it resumes from them
            ours = bool(cfg.resume) and (d != cfg.checkpoint_dir or _resumes_from(cfg))
            how = dict(resume=ours, overwrite=cfg.overwrite)
            if store.is_uri(d):
                locks.append(store.claim_uri(d, flag, used=used_remote, clear=clear_remote,
                                             **how))
            else:
                locks.append(claim(d, flag, used=used, clear=clear, **how))
        if cfg.checkpoint_dir:
            ckpt.clean_leftovers(store.local(cfg.checkpoint_dir))
            if resumed is not None and store.is_uri(cfg.checkpoint_dir):
                _stage_resumed(cfg, resumed)
        for d in (cfg.checkpoint_dir, cfg.logdir):
            if d:        # the effective settings beside the run's outputs
                own = store.local(d) / "config.toml"
                _check_own_config(own, d)
                write_text_atomic(own, CONFIG_HEADER + cfg.replace(
                    resume=None, override=(), overwrite=False).to_toml())
    except BaseException:
        release(locks)
        raise
    return locks


#: the metrics JSON of a run with --checkpoint-dir and no --metrics-out, in that directory
METRICS_NAME = "metrics.json"


def metrics_path(cfg: TrainConfig) -> str | None:
    """Where the run's metrics JSON goes: --metrics-out, else beside its checkpoints
    (CKPT_DIR/metrics.json), else nowhere."""
    if cfg.metrics_out:
        return cfg.metrics_out
    if cfg.checkpoint_dir:
        return f"{str(cfg.checkpoint_dir).rstrip('/')}/{METRICS_NAME}"
    return None


def _check_own_config(own, d) -> None:
    """Refuse a directory whose config.toml distnn did not write (this run would replace
    it with its settings)."""
    if own.is_symlink() or (own.exists() and not own.read_text(
            errors="replace").startswith(CONFIG_HEADER)):
        raise ValueError(f"{d} holds a config.toml that distnn did not write; it would be "
                         "replaced by this run's settings: move it, or give the run a "
                         "directory of its own")


def _resumes_from(cfg: TrainConfig) -> bool:
    """Whether --resume names --checkpoint-dir or a checkpoint inside it (so what is
    there is this run's), rather than another run's directory."""
    from pathlib import Path

    from ..io import store
    src, d = str(_resumed(cfg)).rstrip("/"), str(cfg.checkpoint_dir).rstrip("/")
    if store.is_uri(src) or store.is_uri(d):
        return src == d or src.startswith(d + "/")
    s, r = Path(src).resolve(), Path(d).resolve()
    return s == r or r in s.parents


def _dataset_path(cfg: TrainConfig) -> str | None:
    """The local path the data are read from (to keep outputs off it), if any."""
    from ..data.datasets import location
    return location(cfg.dataset) or cfg.data_dir


def _resumed(cfg: TrainConfig):
    from .resume import source
    return source(cfg.resume, cfg.checkpoint_dir)


def _stage_resumed(cfg: TrainConfig, resumed) -> None:
    """A checkpoint resumed from inside the run's URI checkpoint directory: the local
    copy it was read from (the checkpoint, and the pointers read to find it) goes into
    the directory's stage, known to the mirror as already there; the run saves beside
    it.  (Resumed from elsewhere: nothing to copy.)"""
    import shutil

    from ..io import store
    src, d = str(_resumed(cfg)).rstrip("/"), cfg.checkpoint_dir.rstrip("/")
    if not (store.is_uri(src) and (src + "/").startswith(d + "/")):
        return
    copy, stage = resumed.path.parent, store.local(d)
    files = sorted(p.relative_to(copy).as_posix() for p in copy.rglob("*") if p.is_file())
    for rel in files:
        (stage / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(copy / rel, stage / rel)
    store.mirror(d).know(files)


def release(locks) -> None:
    for lock in locks:
        lock.release()


def stages_done(cfg: TrainConfig, kept: bool) -> None:
    """The local stages of URI outputs go with the run (their files are at the URI),
    unless a copy there failed (they are then the only copy) or DISTNN_KEEP_STAGE."""
    from ..io import store
    for d in (cfg.checkpoint_dir, cfg.logdir):
        if d and store.is_uri(d):
            if kept:
                log.error("what could not be copied to %s is in %s", d, store.local(d))
            else:
                store.remove_stage(d)


