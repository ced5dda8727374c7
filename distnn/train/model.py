"""What a run trains, built from its config in one place: the network, its optimizer,
the learning-rate schedule and the L1/L2 penalty (the trainer and every replica's
engine build the same)."""
from __future__ import annotations

from dataclasses import dataclass

from ..config import TrainConfig
from ..core import optim, regularizers, schedules
from ..core.network import Network


@dataclass
class Model:
    net: Network
    optimizer: optim.Optimizer
    schedule: schedules.Schedule
    penalty: regularizers.Penalty


def build_model(cfg: TrainConfig) -> Model:
    net = Network.from_spec(cfg.network_spec())
    return Model(net, optim.build(cfg), schedules.parse(cfg.schedule, cfg.lr, cfg.warmup),
                 regularizers.Penalty(net, cfg.l1, cfg.l2))
