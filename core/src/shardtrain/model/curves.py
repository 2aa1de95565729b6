"""Training curves: a fit's per-round metrics drawn as an image published beside its model.

The driver records the metrics rank 0 reports each round (``runtime.run.Run.observe``), and
``RunPlan.publish`` draws them here into ``training_curves.png``, one panel per metric with a
curve per data set and a dashed line at the round early stopping kept. The image is one of
the model's files, so it is published (and replaced) atomically with the model; the
artifact's and manifest's ``curves`` is its URI (``curves_uri`` reads it back).

matplotlib is imported only here, lazily, on the driver, and drawn on its Agg canvas (no
display, no pyplot state shared between threads). Without it a model publishes with no image
and one info line says so.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger("shardtrain")

#: The image's file name among the model's files.
CURVES_FILE = "training_curves.png"
#: Image size: a fixed width, one panel of fixed height per metric (exact at this DPI).
WIDTH_PX = 960
PANEL_HEIGHT_PX = 320
DPI = 80
#: What to install for the image (core does not require matplotlib).
INSTALL_HINT = "pip install matplotlib, or the shardtrain[all] extra"

#: Metric history: ``{'train': {'rmse': [per round, from round 1]}, 'eval': {...}}``.
History = dict[str, dict[str, list[float]]]


@dataclass
class TrainingHistory:
    """What a fit's curves are drawn from: its per-round metrics, the rounds it planned and
    its early-stopping patience (None: no early stopping)."""

    metrics: History = field(default_factory=dict)
    rounds: int | None = None
    early_stopping_rounds: int | None = None

    def record(self, round_: int, round_metrics: dict[str, dict[str, float]]) -> None:
        """The metrics of round ``round_`` (from 1); a round reported again (a retried
        attempt) replaces what was recorded from it on."""
        for data_set, values in round_metrics.items():
            for metric, value in values.items():
                series = self.metrics.setdefault(data_set, {}).setdefault(metric, [])
                del series[round_ - 1 :]
                if len(series) == round_ - 1:
                    series.append(float(value))

    def reset(self, history: History, step: int) -> None:
        """Start again from a checkpoint's history, cut at its step (a restarted attempt
        reports the rounds after it again)."""
        self.metrics = {s: {m: list(v[:step]) for m, v in ms.items()} for s, ms in history.items()}

    @property
    def last_round(self) -> int:
        return max((len(v) for ms in self.metrics.values() for v in ms.values()), default=0)


@dataclass(frozen=True)
class Curve:
    """One data set's values of one metric, by round (rounds count from 1)."""

    data_set: str
    rounds: list[int]
    values: list[float]


@dataclass(frozen=True)
class Panel:
    metric: str
    curves: list[Curve]


@dataclass(frozen=True)
class CurvePlot:
    """What the image shows: a panel per metric, and the round early stopping kept."""

    panels: list[Panel]
    best_round: int | None

    @property
    def size_px(self) -> tuple[int, int]:
        return WIDTH_PX, PANEL_HEIGHT_PX * len(self.panels)


def best_round(history: TrainingHistory) -> int | None:
    """The round early stopping kept, or None (no early stopping, or it never stopped).

    XGBoost and LightGBM both stop ``early_stopping_rounds`` rounds after the best one, so a
    fit that stopped before its planned rounds had its best that many rounds before its last.
    """
    patience, last = history.early_stopping_rounds, history.last_round
    if not patience or history.rounds is None or last >= history.rounds or last <= patience:
        return None
    return last - patience


def curve_plot(history: TrainingHistory) -> CurvePlot | None:
    """The plot of a history; None when it has no per-round metrics."""
    metrics: list[str] = []
    for values in history.metrics.values():
        metrics += [m for m, v in values.items() if v and m not in metrics]
    if not metrics:
        return None
    panels = [
        Panel(
            metric,
            [
                Curve(data_set, list(range(1, len(ms[metric]) + 1)), list(ms[metric]))
                for data_set, ms in history.metrics.items()
                if ms.get(metric)
            ],
        )
        for metric in metrics
    ]
    return CurvePlot(panels, best_round(history))


#: Held while drawing: matplotlib's font and text caches are shared by every figure.
_DRAWING = threading.Lock()


def render_png(plot: CurvePlot, path: str | Path, *, title: str = "") -> bool:
    """Draw ``plot`` as a PNG at ``path``; False (one info line) when matplotlib is absent."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        logger.info("no training-curve image: matplotlib is not installed (%s).", INSTALL_HINT)
        return False
    width, height = plot.size_px
    with _DRAWING:
        figure = Figure(figsize=(width / DPI, height / DPI), dpi=DPI, layout="constrained")
        FigureCanvasAgg(figure)
        axes = figure.subplots(len(plot.panels), 1, squeeze=False)[:, 0]
        for ax, panel in zip(axes, plot.panels, strict=True):
            for curve in panel.curves:
                ax.plot(curve.rounds, curve.values, label=curve.data_set, linewidth=1.5)
            if plot.best_round is not None:
                ax.axvline(
                    plot.best_round,
                    color="0.4",
                    linestyle="--",
                    linewidth=1,
                    label=f"best round ({plot.best_round})",
                )
            ax.set_title(panel.metric)
            ax.set_xlabel("round")
            ax.grid(alpha=0.3)
            ax.legend(loc="best")
        if title:
            figure.suptitle(title)
        figure.savefig(path, format="png", dpi=DPI)
    return True


def prewarm() -> None:
    """Import matplotlib in a background thread (once), so that drawing at publish does not
    wait for its import: a fit's driver mostly waits on its workers meanwhile."""
    global _prewarmed
    with _PREWARM:
        if _prewarmed:
            return
        _prewarmed = True
    threading.Thread(target=_import_matplotlib, name="shardtrain-curves", daemon=True).start()


_PREWARM = threading.Lock()
_prewarmed = False


def _import_matplotlib() -> None:
    try:
        import matplotlib.backends.backend_agg  # noqa: F401
        import matplotlib.figure  # noqa: F401
    except ImportError:
        pass


def curves_uri(artifact: Any) -> str | None:
    """Where a published model's training-curve image is (a ``ModelArtifact`` or its dict),
    or None when it has none (no per-round metrics, no matplotlib, an older manifest)."""
    uri = (
        artifact.get("curves") if isinstance(artifact, dict) else getattr(artifact, "curves", None)
    )
    return uri if isinstance(uri, str) and uri else None
