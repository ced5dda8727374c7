"""Every hyperparameter of a training run, in one frozen dataclass, with validation.

The same names are used by the CLI flags (``--batch-size``), TOML files
(``batch_size = 10``), checkpoints and TensorBoard.  Unknown keys are errors.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, fields

from .core import activations, architecture, costs, init, optim, regularizers, schedules
from .core.network import NetworkSpec
from .data.augment import parse_spec
from .data.datasets import check_known, on_demand


@dataclass(frozen=True)
class TrainConfig:
    """A training run.  See ``distnn train --help`` for each field's meaning."""

    # data
    dataset: str = "mnist"
    data_dir: str | None = None
    train_size: int | None = None
    merge_valid: bool = False
    standardize: bool = False
    augment: str = "none"
    label_column: str = "label"
    feature_columns: str = ""
    split_column: str | None = None
    split: str = "80/10/10"
    shard_memory: int | None = None
    data_shards: int = 0
    max_image_pixels: int = 1 << 24
    # network
    layers: tuple[int | str, ...] = (784, 30, 10)
    input_shape: tuple[int, ...] = ()
    activation: str = "sigmoid"
    output: str = "softmax"
    cost: str = "log-likelihood"
    init: str = "fan-in"
    init_scale: float = 0.05
    keep_prob: float = 1.0
    keep_prob_input: float = 1.0
    batchnorm: bool = False
    sync_batchnorm: bool = False
    dtype: str = "float32"
    # optimisation
    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    rho: float = 0.9
    l1: float | tuple[float, ...] = 0.0
    l2: float | tuple[float, ...] = 0.0
    max_norm: float | None = None
    ema: float = 0.0
    batch_size: int = 10
    epochs: int = 30
    schedule: str = "constant"
    warmup: float = 0.0
    early_stop: int = 0
    monitor: str = "valid_accuracy"
    # run
    seed: int = 0
    workers: int = 1
    threads: int | None = None
    address: str | None = None
    allreduce: str = "auto"
    compress: str = "none"
    comm_ports: str | None = None
    comm_timeout: float = 60.0
    bucket_mb: float = 0.0
    local_steps: int = 1
    outer: str = "average"
    replicas: int = 0
    overlap_sync: bool = False
    lr_scaling: str = "none"
    check_replicas: int = 0
    max_failures: int = 3
    min_workers: int | None = None
    replace_timeout: float = 120.0
    replace_wait: float = 0.0
    monitor_train: bool = True
    metrics_out: str | None = None
    checkpoint_dir: str | None = None
    keep_last: int = 3
    resume: str | None = None
    logdir: str | None = None
    overwrite: bool = False
    override: tuple[str, ...] = ()
    bayes_error: float = 0.0

    def __post_init__(self):
        for name in ("layers", "input_shape", "l1", "l2", "override"):
            v = getattr(self, name)
            if isinstance(v, list):
                object.__setattr__(self, name, tuple(v))
        for name in ("metrics_out", "checkpoint_dir", "logdir", "resume", "data_dir"):
            v = getattr(self, name)     # file:///x is the local path /x
            if isinstance(v, str) and v.startswith("file://"):
                object.__setattr__(self, name, v[len("file://"):])
        if isinstance(self.dataset, str) and self.dataset.startswith("parquet:file://"):
            object.__setattr__(self, "dataset", "parquet:" + self.dataset[len("parquet:file://"):])
        check_types(self)
        validate(self)

    @property
    def local(self) -> bool:
        """Whether the run trains logical replicas with local steps (``train.local``):
        --local-steps above 1, --replicas or another --outer than average given."""
        return self.local_steps > 1 or self.replicas > 0 or self.outer != "average"

    @property
    def replica_count(self) -> int:
        """K, the logical replicas of a run with local steps (--replicas, else
        --workers)."""
        return self.replicas or self.workers

    def replace(self, **changes) -> "TrainConfig":
        return dataclasses.replace(self, **changes)

    def data_options(self):
        """How a Parquet dataset's columns and splits are read (``data.parquet``)."""
        from .data.parquet import Options
        return Options(self.label_column, tuple(c.strip() for c in self.feature_columns
                                                .split(",") if c.strip()),
                       self.split_column, parse_split(self.split), self.max_image_pixels)

    def network_spec(self) -> NetworkSpec:
        """The network this run trains (the one spec a Network is built from)."""
        return NetworkSpec(sizes=self.layers, **{f.name: getattr(self, f.name)
                                                 for f in fields(NetworkSpec)
                                                 if f.name in _FIELDS})

    def to_toml(self) -> str:
        """The settings as a TOML file that ``--config`` reads back to this config (unset
        optional settings are left out: TOML has no null)."""
        lines = [f"{k} = {_toml(v)}" for k, v in self.to_dict().items() if v is not None]
        return "\n".join(lines) + "\n"

    def to_dict(self) -> dict:
        """Plain JSON values (tuples as lists)."""
        return {k: list(v) if isinstance(v, tuple) else v
                for k, v in dataclasses.asdict(self).items()}


def _toml(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    return json.dumps(v)        # a JSON string is a TOML basic string


_FIELDS = {f.name for f in fields(TrainConfig)}
MONITORS = ("valid_accuracy", "valid_cost", "train_accuracy", "train_cost")
# settings that say where and how a run is carried out, not what it computes: a resumed
# run may change them freely (``workers`` too, unless --lr-scaling linear ties the
# learning rate to it); any other difference from the checkpoint needs --override KEY
PLACEMENT_KEYS = frozenset({
    "data_dir", "workers", "threads", "address", "allreduce", "comm_ports", "comm_timeout", "bucket_mb",
    "check_replicas", "max_failures", "min_workers", "replace_timeout", "replace_wait",
    "monitor_train",
    "metrics_out", "checkpoint_dir", "keep_last", "resume", "logdir", "overwrite",
    "override", "bayes_error", "epochs", "max_image_pixels"})


def field_names() -> list[str]:
    return [f.name for f in fields(TrainConfig)]


def _require(ok: bool, msg: str) -> None:
    if not ok:
        raise ValueError(msg)


def _int_at_least(name, value, lo):
    _require(isinstance(value, int) and not isinstance(value, bool) and value >= lo,
             f"{name} must be an integer >= {lo}, got {value!r}")


def _positive(name, value):
    _require(isinstance(value, (int, float)) and not isinstance(value, bool)
             and math.isfinite(value) and value > 0,
             f"{name} must be a finite number > 0, got {value!r}")


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _integer(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


# what each annotation admits, and how to say it
_TYPES = {
    "str": (lambda v: isinstance(v, str), "a string"),
    "str | None": (lambda v: v is None or isinstance(v, str), "a string"),
    "bool": (lambda v: isinstance(v, bool), "true or false"),
    "int": (_integer, "an integer"),
    "int | None": (lambda v: v is None or _integer(v), "an integer"),
    "float": (_number, "a finite number"),
    "float | None": (lambda v: v is None or _number(v), "a finite number"),
    "float | tuple[float, ...]": (
        lambda v: _number(v) or (isinstance(v, tuple) and len(v) > 0
                                 and all(_number(x) for x in v)),
        "a finite number or a list of them (one per weight layer)"),
    "tuple[int, ...]": (lambda v: isinstance(v, tuple) and all(_integer(x) for x in v),
                        "a list of integers like [784, 30, 10] (or \"784,30,10\")"),
    "tuple[int | str, ...]": (
        lambda v: isinstance(v, tuple) and all(_integer(x) or isinstance(x, str) for x in v),
        "a list of widths and image layers like [784, 30, 10] or \"conv:20:5,pool:2,100,10\""),
    "tuple[str, ...]": (lambda v: isinstance(v, tuple) and all(isinstance(x, str) for x in v),
                        "a list of setting names"),
}


def check_types(c: TrainConfig) -> None:
    """Raise ValueError for the first value of the wrong type (a TOML ``momentum =
    "0.9"``, ``layers = 784``, ``monitor_train = "no"``) or a number that is not finite."""
    for f in fields(TrainConfig):
        ok, what = _TYPES[f.type]
        v = getattr(c, f.name)
        _require(ok(v), f"{f.name} must be {what}, got {v!r}"
                 + (f" ({type(v).__name__})" if not isinstance(v, (int, float)) else ""))


def validate(c: TrainConfig) -> None:
    """Raise ValueError naming the first bad value and what was expected."""
    check_known(c.dataset)
    _validate_network(c)
    _validate_optimisation(c)
    _validate_run(c)


def _validate_network(c: TrainConfig) -> None:
    architecture.check(c.layers)
    _require(not c.input_shape or (len(c.input_shape) in (2, 3) and min(c.input_shape) >= 1),
             f"input_shape must be the input images' H,W or H,W,C, got {c.input_shape!r}")
    if c.input_shape and architecture.has_images(c.layers):   # shapes fit: before any work
        architecture.layer_entries(c.layers, input_shape=c.input_shape)
    activations.get(c.activation)
    out = activations.get(c.output, output=True)
    costs.get(c.cost).check_output(out)
    init.check(c.init, c.init_scale)
    _require(c.dtype in ("float32", "float64"), f"dtype must be float32 or float64, got {c.dtype!r}")
    for name in ("keep_prob", "keep_prob_input"):
        v = getattr(c, name)
        _require(isinstance(v, (int, float)) and 0 < v <= 1,
                 f"{name} must be in (0, 1], got {v!r}")
    if c.batchnorm:
        _require(c.batch_size >= 2, "batchnorm needs batch_size >= 2")
    _require(c.batchnorm or not c.sync_batchnorm, "sync_batchnorm needs batchnorm (--batchnorm)")


def _validate_optimisation(c: TrainConfig) -> None:
    _require(c.optimizer in optim.OPTIMIZERS, f"unknown optimizer {c.optimizer!r}; expected "
             f"one of {sorted(optim.OPTIMIZERS)}")
    _positive("lr", c.lr)
    optim.build(c)
    for name in ("l1", "l2"):
        regularizers.per_layer(getattr(c, name), architecture.weight_layer_count(c.layers),
                               name)
    if c.max_norm is not None:
        _positive("max_norm", c.max_norm)
    _int_at_least("batch_size", c.batch_size, 1)
    _int_at_least("epochs", c.epochs, 1)
    _int_at_least("early_stop", c.early_stop, 0)
    if c.merge_valid and c.monitor.startswith("valid_"):
        _require(not c.early_stop and not str(c.schedule).startswith("plateau"),
                 "--merge-valid trains on the validation split, so --early-stop and the "
                 f"plateau schedule have no {c.monitor} to watch; add --monitor "
                 "train_accuracy (or train_cost) or drop them")
    schedules.parse(c.schedule, c.lr, c.warmup)
    _require(c.monitor in MONITORS, f"monitor must be one of {list(MONITORS)}, got {c.monitor!r}")


def _validate_local(c: TrainConfig) -> None:
    """--local-steps, --outer and --replicas, and what they do not combine with (yet)."""
    _int_at_least("local_steps", c.local_steps, 1)
    _int_at_least("replicas", c.replicas, 0)
    optim.Outer(c.outer)
    if not c.local:
        _require(not c.overlap_sync, "--overlap-sync overlaps the synchronisations of "
                 "local steps: give --local-steps H (H > 1) or --replicas with it")
        return
    _require(c.replicas == 0 or c.replicas >= c.workers,
             f"--replicas {c.replicas} is fewer than --workers {c.workers}: every worker "
             "hosts at least one logical replica; give --replicas >= --workers")
    _require(not c.data_shards or c.data_shards >= c.replica_count,
             f"--data-shards {c.data_shards} is fewer than the {c.replica_count} logical "
             "replicas: each replica reads shards of its own; give at least --replicas")
    _require(c.replica_count <= c.batch_size,
             f"--replicas {c.replica_count} is more than --batch-size {c.batch_size}: each "
             "replica takes its slice of every global batch")
    _require(c.compress in ("none", "bf16"),
             f"--compress {c.compress} does not apply to training with local steps "
             f"(--local-steps {c.local_steps}, --replicas, --outer): their synchronisation "
             "is an exact sum, which bf16 keeps (the changes rounded onto a grid that "
             "bfloat16 carries exactly) and a low-rank or lossy sum would not; use "
             "--compress bf16 or leave it out")
    for ok, what in ((not c.sync_batchnorm, "--sync-batchnorm"),
                     (not c.bucket_mb, f"--bucket-mb {c.bucket_mb:g}"),
                     (c.threads in (None, 1), f"--threads {c.threads}"),
                     (c.shard_memory is None, f"--shard-memory {c.shard_memory}"),
                     (c.lr_scaling == "none", f"--lr-scaling {c.lr_scaling} (it ties the "
                      "learning rate to --workers)")):
        _require(ok, f"{what} does not apply to training with local steps (--local-steps "
                 f"{c.local_steps}, --replicas, --outer): the replicas train apart between "
                 "synchronisations, which are exact sums, one replica per BLAS thread (so "
                 "that where a replica runs never changes its bits); leave it out")


def _validate_run(c: TrainConfig) -> None:
    parse_split(c.split)
    _int_at_least("data_shards", c.data_shards, 0)
    _int_at_least("max_image_pixels", c.max_image_pixels, 1)
    if c.shard_memory is not None:
        _int_at_least("shard_memory", c.shard_memory, 1)
    parquet = on_demand(c.dataset)
    for name, default in (("shard_memory", None), ("data_shards", 0),
                          ("label_column", "label"), ("feature_columns", ""),
                          ("split_column", None), ("split", "80/10/10")):
        _require(parquet or getattr(c, name) == default, f"{name} applies to a --dataset "
                 f"parquet:... (or a Ray Dataset); {c.dataset} has its own splits and "
                 "columns and is held "
                 "whole: leave it out")
    features = [f.strip() for f in c.feature_columns.split(",") if f.strip()]
    _require(len(set(features)) == len(features), f"feature_columns names a column twice: "
             f"{c.feature_columns!r}")
    _require(c.label_column not in features and c.split_column not in features,
             f"feature_columns {c.feature_columns!r} holds the label or split column: "
             "the network would be given the answer")
    for name in ("metrics_out", "checkpoint_dir", "logdir", "data_dir"):
        _require(getattr(c, name) != "", f"{name} is empty: give a path, or leave it out")
    _int_at_least("seed", c.seed, 0)
    _int_at_least("workers", c.workers, 1)
    if c.threads is not None:
        _int_at_least("threads", c.threads, 1)
    # the backend name is checked against the registry of backends (parallel.comm)
    # by the driver, before any work: the backends live above this module
    _require(isinstance(c.allreduce, str) and c.allreduce,
             f"allreduce must be a backend name such as auto, got {c.allreduce!r}")
    # likewise the compressor (parallel.comm.compress), its form checked here
    _require(isinstance(c.compress, str) and c.compress.partition(":")[0] != "",
             f"compress must be NAME or NAME:ARG such as none or powersgd:4, got "
             f"{c.compress!r}")
    parse_ports(c.comm_ports)
    _positive("comm_timeout", c.comm_timeout)
    _require(isinstance(c.bucket_mb, (int, float)) and not isinstance(c.bucket_mb, bool)
             and 0 <= c.bucket_mb < float("inf"), f"bucket_mb must be a number of megabytes "
             f">= 0 (0: no overlap), got {c.bucket_mb!r}")
    _positive("replace_timeout", c.replace_timeout)
    _validate_local(c)
    if c.bucket_mb:        # where it cannot apply: refused, never silently ignored
        for ok, why in ((c.workers > 1, "one worker has no all-reduce to overlap"),
                        (c.compress == "none", f"--compress {c.compress} reduces the "
                         "gradient whole, after backprop"),
                        (not c.sync_batchnorm, "--sync-batchnorm all-reduces inside the "
                         "forward and backward passes")):
            _require(ok, f"--bucket-mb {c.bucket_mb:g} does not apply: {why}; leave it out")
    _require(not (c.checkpoint_dir and c.checkpoint_dir == c.logdir),
             f"--checkpoint-dir and --logdir are both {c.checkpoint_dir}: each is a "
             "directory of its own (e.g. ckpt/run and runs/run)")
    # shorter waits cannot work: connecting a group and a first step take longer
    _require(c.comm_timeout >= 1, f"comm_timeout must be at least 1 second (a worker "
             f"waits that long for its peers), got {c.comm_timeout!r}")
    _require(c.replace_timeout >= 1, f"replace_timeout must be at least 1 second, got "
             f"{c.replace_timeout!r}")
    _require(_number(c.replace_wait) and 0 <= c.replace_wait <= c.replace_timeout,
             f"replace_wait must be 0..replace_timeout ({c.replace_timeout:g}) seconds, got "
             f"{c.replace_wait!r}")
    _require(c.lr_scaling in ("none", "linear"),
             f"lr_scaling must be none or linear, got {c.lr_scaling!r}")
    _int_at_least("check_replicas", c.check_replicas, 0)
    _int_at_least("max_failures", c.max_failures, 0)
    _int_at_least("keep_last", c.keep_last, 1)
    _require(isinstance(c.bayes_error, (int, float)) and 0 <= c.bayes_error < 1,
             f"bayes_error must be a fraction in [0, 1), got {c.bayes_error!r}")
    _require(c.resume is None or c.resume != "latest" or c.checkpoint_dir is not None,
             "--resume alone (or --resume latest) resumes from --checkpoint-dir's latest "
             "checkpoint, and no --checkpoint-dir is given: add --checkpoint-dir DIR, or "
             "give --resume the checkpoint or checkpoint directory to resume from")
    for name in ("metrics_out", "checkpoint_dir", "logdir", "resume"):
        v = getattr(c, name)
        _require(not (isinstance(v, str) and v.endswith("://")),
                 f"--{name.replace('_', '-')} {v} names no location: give "
                 f"{v}BUCKET/PATH (a bucket, then a path in it)")
    if c.min_workers is not None:
        _int_at_least("min_workers", c.min_workers, 1)
        _require(c.min_workers <= c.workers, f"min_workers {c.min_workers} must not exceed "
                 f"workers {c.workers}")
    if c.train_size is not None:
        _int_at_least("train_size", c.train_size, 1)
    _require(c.seed < 2 ** 63, f"seed must be below 2**63, got {c.seed}")
    _require(c.warmup >= 0, f"warmup must be >= 0 epochs, got {c.warmup!r}")
    unknown = sorted(set(c.override) - _FIELDS - {"data"})
    _require(not unknown, f"override names unknown setting(s) {unknown}")
    _require(not c.override or c.resume is not None, "--override only applies to a "
             "--resume: a fresh run takes every setting from its flags")
    parse_spec(c.augment)


def from_mapping(values: dict, base: TrainConfig | None = None, where: str = "config") -> TrainConfig:
    """Build a config from a flat mapping (TOML table or parsed flags); unknown keys are
    errors that name the key and list the known ones."""
    known = set(field_names())
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; known keys: {sorted(known)}")
    base = base or TrainConfig()
    vals = dict(values)
    if "layers" in vals and isinstance(vals["layers"], str):
        vals["layers"] = parse_layers(vals["layers"])
    if isinstance(vals.get("input_shape"), str):
        vals["input_shape"] = parse_layers(vals["input_shape"].replace("x", ","))
    for name in ("l1", "l2"):
        if isinstance(vals.get(name), str):
            vals[name] = parse_strength(vals[name], name)
    return base.replace(**vals)


def parse_strength(text: str, name: str = "l2"):
    """"5.0" -> 5.0; "0.01,0.001" -> (0.01, 0.001), one λ per weight matrix."""
    try:
        vals = tuple(float(p) for p in str(text).split(","))
    except ValueError:
        raise ValueError(f"{name} must be a number or comma-separated numbers (one per weight "
                         f"layer), got {text!r}") from None
    return vals[0] if len(vals) == 1 else vals


def parse_split(text: str) -> tuple[float, float, float]:
    """"80/10/10" -> (0.8, 0.1, 0.1): train/validation/test shares of the rows."""
    try:
        vals = tuple(float(p) for p in str(text).split("/"))
    except ValueError:
        vals = ()
    _require(len(vals) == 3 and all(math.isfinite(v) and v >= 0 for v in vals)
             and vals[0] > 0, f"split must be three shares TRAIN/VALID/TEST like 80/10/10 "
             f"(train > 0), got {text!r}")
    return tuple(v / sum(vals) for v in vals)


def parse_ports(text: str | None) -> tuple[int, int] | None:
    """--comm-ports "LO-HI" (or "P") -> (LO, HI), inclusive; None: any port."""
    if text is None:
        return None
    lo, _, hi = str(text).partition("-")
    ok = lo.isdigit() and (hi == "" or hi.isdigit())
    _require(ok and 1 <= int(lo) <= int(hi or lo) <= 65535,
             f"comm_ports must be a port or a range LO-HI within 1-65535, got {text!r}")
    return int(lo), int(hi or lo)


def parse_layers(text: str) -> tuple[int | str, ...]:
    """"784,30,10" -> (784, 30, 10); "conv:20:5,pool:2,100,10" -> ("conv:20:5",
    "pool:2", 100, 10) (checked by ``core.architecture``)."""
    items = [p.strip() for p in str(text).split(",")]
    return tuple(int(p) if p.lstrip("-").isdigit() else p for p in items)
