"""What ranks send the driver while they run, as frozen records that pickle across Ray
actors: metrics (per boosting round, or as a training function logs them) and checkpoint
snapshots. The driver polls rank 0 for them (``worker_group.WorkerGroup.run``). Log records a
rank forwards (``WorkerLog``) travel on a channel of their own, polled on every rank, and never
reach a trainer's ``on_progress``."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class RoundMetrics:
    """Global metrics after one boosting round: ``{'train': {'rmse': 0.5}, 'eval': {...}}``."""

    round: int
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)

    def format(self) -> str:
        """The line printed for it, as xgboost's ``verbose_eval`` prints one."""
        parts = [f"{s}-{m}:{v:.6g}" for s, ms in self.metrics.items() for m, v in ms.items()]
        return f"[{self.round}]\t" + "\t".join(parts)


@dataclass(frozen=True)
class RankMetrics:
    """Metrics a training function logged on one rank: ``{'loss': 0.1}``."""

    rank: int
    metrics: dict[str, float] = field(default_factory=dict)

    def format(self) -> str:
        return f"[rank {self.rank}] " + " ".join(f"{k}={v:.6g}" for k, v in self.metrics.items())


@dataclass(frozen=True)
class Snapshot:
    """A checkpoint a rank took: its step (boosting round or save count) and its bytes."""

    step: int
    data: bytes


@dataclass(frozen=True)
class WorkerLog:
    """A ``warnings`` warning or a WARNING+ ``logging`` record raised on a rank during a run
    (the rank's own stdout goes to the pool's job, not the driver's log)."""

    rank: int
    level: int  # logging level number
    logger: str  # the emitting logger's name ('py.warnings' for warnings)
    message: str
