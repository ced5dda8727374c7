"""A replica's state, typed: everything one replica holds between steps, and the one
place that knows how per-worker shares of it merge, how it goes into a checkpoint and
how it comes back.

``ReplicaState`` holds

- ``params``: the flat parameter vector (every replica holds all of it);
- ``buffers``: non-trained tensors keyed like parameters (batch-norm statistics);
- ``optimizer``: the optimizer's ``state_dict()`` (``core.optim``), its slots over
  ``shard`` only when the update is sharded across workers;
- ``schedule``: the learning-rate schedule's ``state_dict()``;
- ``replicas``: ``{r: optimizer state_dict}``, each logical replica's own (inner)
  optimizer state in training with local steps (``train.local``); empty otherwise;
- ``plugins``: ``{setting: PluginState}``, the run state of each plug-in that keeps one
  (``"compress"``: a compressor's), keyed by the setting that chose the plug-in, so a
  resume that changes that setting (``--override compress``) starts it afresh.

A plug-in declares how its state merges through ``PluginState.shares``: the parts that
are each worker's share of a whole (summed, in rank order, when the workers' states are
merged; the whole goes back to the first worker and zeros to the others when a merged
state is handed out).  Every other part is the same on every worker (the first's is
kept).  No other module reads a state by key.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np


@dataclass
class PluginState:
    """The run state of a plug-in: ``scalars`` (JSON values: its name, settings) and
    ``arrays`` ``{part: {key: array}}``; ``shares``: the parts that are each worker's
    share of a whole (see the module's docstring)."""

    scalars: dict
    arrays: dict[str, dict[str, np.ndarray]]
    shares: tuple[str, ...] = ()

    @classmethod
    def merge(cls, states: list["PluginState"]) -> "PluginState":
        """One whole state from every worker's, in rank order."""
        first = states[0]
        arrays = {part: ({k: _sum_in_order([s.arrays[part][k] for s in states])
                          for k in keys} if part in first.shares else keys)
                  for part, keys in first.arrays.items()}
        return cls(first.scalars, arrays, first.shares)

    def share(self, first: bool) -> "PluginState":
        """What one worker takes of a whole state: all of it for the first worker; for
        the others, zeros in place of the shared-out parts."""
        if first or not self.shares:
            return self
        arrays = {part: ({k: np.zeros_like(a) for k, a in keys.items()}
                         if part in self.shares else keys)
                  for part, keys in self.arrays.items()}
        return PluginState(self.scalars, arrays, self.shares)


@dataclass
class ReplicaState:
    """See the module's docstring."""

    params: np.ndarray
    buffers: dict[str, np.ndarray]
    optimizer: dict
    schedule: dict
    plugins: dict[str, PluginState] = field(default_factory=dict)
    shard: tuple[int, int] | None = None
    replicas: dict[int, dict] = field(default_factory=dict)

    # -- capture and restore ---------------------------------------------------------
    @classmethod
    def capture(cls, net, optimizer, schedule, plugins: dict | None = None,
                shard: tuple[int, int] | None = None,
                replicas: dict | None = None) -> "ReplicaState":
        """A copy of a replica's state now (``optimizer`` holding ``shard`` of its
        slots; ``replicas``: the inner optimizers of the logical replicas it hosts)."""
        return cls(net.params.copy(),
                   {k: v.copy() for k, v in net.named_buffers().items()},
                   optimizer.state_dict(), schedule.state_dict(), dict(plugins or {}),
                   shard, {r: o.state_dict() for r, o in (replicas or {}).items()})

    def put(self, net, optimizer, schedule, average: bool = False) -> None:
        """Into a replica: parameters (the average with ``average``), buffers, the
        optimizer's and the schedule's state."""
        self.load_into(net, average)
        optimizer.load_state_dict(self.optimizer)
        schedule.load_state_dict(self.schedule)

    def load_into(self, net, average: bool = True) -> None:
        """The parameters (``model_params`` with ``average``, else the trained ones)
        and the buffers into ``net``."""
        net.params[...] = self.model_params() if average else self.params
        for k, v in net.named_buffers().items():
            v[...] = self.buffers[k]

    def plugin_for(self, name: str, rank: int) -> PluginState | None:
        """The state plug-in ``name`` of worker ``rank`` takes (None: start afresh)."""
        p = self.plugins.get(name)
        return None if p is None else p.share(first=rank == 0)

    # -- what it holds -----------------------------------------------------------------
    @property
    def average(self) -> np.ndarray | None:
        """The parameter average (``--ema``), or None when the run keeps none."""
        return self.optimizer["slots"].get("average")

    def model_params(self) -> np.ndarray:
        """The parameters the state is evaluated and exported with: the average when the
        run keeps one, else the parameters."""
        avg = self.average
        return avg if avg is not None else self.params

    @property
    def has_shares(self) -> bool:
        """Whether some of it is held a share per worker (a merged state must then be
        handed out again for every worker to continue from it)."""
        return any(p.shares for p in self.plugins.values())

    def replace(self, **changes) -> "ReplicaState":
        return dataclasses.replace(self, **changes)

    def with_hyperparameters(self, hparams: dict) -> "ReplicaState":
        """The same, with the optimizer's hyperparameters ``hparams`` (a resume's)."""
        return self.replace(optimizer={**self.optimizer, **hparams})

    def for_settings(self, saved: dict, now: dict) -> "ReplicaState":
        """The same, less the state of each plug-in whose setting differs between the
        run that wrote it (``saved``) and this one (``now``): it starts afresh."""
        keep = {k: p for k, p in self.plugins.items() if saved.get(k) == now.get(k)}
        return self.replace(plugins=keep)

    # -- merging per-worker states -------------------------------------------------------
    @classmethod
    def merge(cls, states: list["ReplicaState"]) -> "ReplicaState":
        """One whole state from the workers' (rank order): the parameters and buffers of
        the first, each optimizer slot assembled from the workers' shards, each plug-in's
        state merged as it declares."""
        first = states[0]
        P = first.params.size
        slots, covered = {}, np.zeros(P, bool)
        for name in first.optimizer["slots"]:
            full = np.empty(P, first.params.dtype)
            for st in states:
                full[slice(*st.span(P))] = st.optimizer["slots"][name]
            slots[name] = full
        for st in states:
            covered[slice(*st.span(P))] = True
        if not covered.all():
            raise RuntimeError("the replicas' shards do not cover the parameters; "
                               "this is a bug, please report it")
        plugins = {k: PluginState.merge([st.plugins[k] for st in states])
                   for k in first.plugins}
        replicas = {r: d for st in states for r, d in st.replicas.items()}
        if replicas and sorted(replicas) != list(range(len(replicas))) \
                or sum(len(st.replicas) for st in states) != len(replicas):
            raise RuntimeError(f"the workers hold logical replicas {sorted(replicas)}, not "
                               "each of 0..K-1 once; this is a bug, please report it")
        return cls(first.params, first.buffers, {**first.optimizer, "slots": slots},
                   first.schedule, plugins, None, dict(sorted(replicas.items())))

    def span(self, size: int) -> tuple[int, int]:
        return self.shard if self.shard is not None else (0, size)

    # -- checkpoints ---------------------------------------------------------------------
    def to_checkpoint(self, net, normalizer=None) -> tuple[dict, dict, dict]:
        """(tensors, optimizer rows, meta entries) of a whole state, for
        ``io.checkpoint.save``: parameters and buffers (and the input normalisation) as
        tensors keyed like the network's; each slot as rows "<slot>.<key>"; each
        plug-in's arrays as rows "<plugin>.<part>.<key>" and its scalars as meta."""
        shapes = net.named_params()
        tensors = {k: self.params[sl].reshape(shapes[k].shape) for k, sl in net.slices.items()}
        tensors.update(self.buffers)
        if normalizer is not None:
            tensors.update(normalizer.tensors())
        rows = {f"{name}.{key}": slot[sl].reshape(shapes[key].shape)
                for name, slot in self.optimizer["slots"].items()
                for key, sl in net.slices.items()}
        meta = {"optimizer": {k: v for k, v in self.optimizer.items() if k != "slots"},
                "schedule": self.schedule}
        if self.plugins:
            meta["plugins"] = {k: {"shares": list(p.shares)} for k, p in self.plugins.items()}
        for name, p in self.plugins.items():
            meta[name] = dict(p.scalars)
            rows.update({f"{name}.{part}.{key}": a for part, arrays in p.arrays.items()
                         for key, a in arrays.items()})
        if self.replicas:
            meta["replicas"] = {str(r): {k: v for k, v in d.items() if k != "slots"}
                                for r, d in self.replicas.items()}
            rows.update({f"{REPLICA}{r}.{name}.{key}": slot[sl].reshape(shapes[key].shape)
                         for r, d in self.replicas.items()
                         for name, slot in d["slots"].items()
                         for key, sl in net.slices.items()})
        return tensors, rows, meta

    @classmethod
    def from_checkpoint(cls, c, net) -> "ReplicaState":
        """The inverse of ``to_checkpoint``, from a loaded ``io.checkpoint.Checkpoint``;
        every tensor checked against the network's shapes and for NaN/infinity."""
        from ..io.checkpoint import CheckpointError

        def tensor(table: dict, key: str, shape) -> np.ndarray:
            a = table.get(key)
            if a is None or tuple(a.shape) != tuple(shape):
                raise CheckpointError(
                    f"{c.path}: tensor {key} is "
                    f"{'missing' if a is None else f'of shape {a.shape}'}; "
                    f"the network needs {tuple(shape)}")
            if not np.isfinite(a).all():
                raise CheckpointError(f"{c.path}: tensor {key} holds NaN or infinity")
            return a.reshape(-1)

        def flat(table: dict, prefix: str) -> np.ndarray:
            out = np.empty_like(net.params)
            for key, sl in net.slices.items():
                out[sl] = tensor(table, prefix + key, shapes[key].shape)
            return out

        shapes = net.named_params()
        plugins = _plugins_of(c)
        replicas = c.meta.get("replicas") or {}
        slot_names = sorted({k.split(".", 1)[0] for k in c.optimizer} - set(plugins)
                            - {f"{REPLICA}{r}" for r in replicas})
        state = cls(flat(c.tensors, ""),
                    {k: tensor(c.tensors, k, v.shape) for k, v in net.named_buffers().items()},
                    {**c.meta["optimizer"],
                     "slots": {name: flat(c.optimizer, name + ".") for name in slot_names}},
                    c.meta["schedule"])
        for name, shares in plugins.items():
            arrays: dict[str, dict] = {}
            for k, a in c.optimizer.items():
                if k.startswith(name + "."):
                    part, key = k[len(name) + 1:].split(".", 1)
                    arrays.setdefault(part, {})[key] = a
            state.plugins[name] = PluginState(dict(c.meta[name]), arrays, shares)
        for r, d in replicas.items():
            names = sorted({k.split(".")[1] for k in c.optimizer
                            if k.startswith(f"{REPLICA}{r}.")})
            state.replicas[int(r)] = {**d, "slots": {
                name: flat(c.optimizer, f"{REPLICA}{r}.{name}.") for name in names}}
        state.replicas = dict(sorted(state.replicas.items()))
        return state


#: the prefix of a logical replica's optimizer rows in a checkpoint: "replica3.velocity.<key>"
REPLICA = "replica"


def _plugins_of(c) -> dict[str, tuple[str, ...]]:
    """{plug-in: its shares} of a checkpoint's meta ("plugins"); checkpoints written
    before it was recorded hold at most a compressor's, whose errors were shares."""
    meta = c.meta
    if isinstance(meta.get("plugins"), dict):
        return {k: tuple(v.get("shares", ())) for k, v in meta["plugins"].items()
                if isinstance(meta.get(k), dict)}
    return {"compress": ("errors",)} if isinstance(meta.get("compress"), dict) else {}


def _sum_in_order(arrays: list[np.ndarray]) -> np.ndarray:
    total = arrays[0].copy()
    for a in arrays[1:]:
        total += a
    return total
