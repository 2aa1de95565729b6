"""The run engine every trainer shares (XGBoost, LightGBM, PyTorch): where a run publishes
and checkpoints (``RunPlan``), its latest checkpoint and the restarts after a worker death
(``Run``), and the one path by which a trained model reaches the stage (``RunPlan.publish``).

A trainer supplies one *attempt*: lease a worker group, run its ranks from a given
``Checkpoint``, and hand the driver its events and snapshots. The engine runs it again from
the latest checkpoint after each worker death, up to ``FailureConfig.max_failures``.

A trainer that hands the run its per-round metrics (``Run.observe``) gets, for free, progress
lines and observer updates (``runtime.progress``) and a training-curve image published beside
its model (``model.curves``).
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from shardtrain.config import FailureConfig
from shardtrain.errors import StageError, WorkerDiedError, WorkerError
from shardtrain.model.artifact import ModelArtifact, check_request_id, new_request_id
from shardtrain.model.curves import (
    CURVES_FILE,
    TrainingHistory,
    curve_plot,
    curves_uri,
    prewarm,
    render_png,
)
from shardtrain.model.frameworks import spec
from shardtrain.model.publish import publish_model
from shardtrain.runtime.events import RoundMetrics
from shardtrain.runtime.progress import ProgressReporter, current_observers
from shardtrain.stage import open_stage
from shardtrain.stage.base import Stage

logger = logging.getLogger("shardtrain")
T = TypeVar("T")


def emit(message: str) -> None:
    """Progress for people: through logging when the app configured it, else printed
    (as xgboost's own ``verbose_eval`` does)."""
    if logging.getLogger().handlers or logger.handlers:
        logger.info(message)
    else:
        print(message, flush=True)


@dataclass(frozen=True)
class Checkpoint:
    """Where a run resumes: the step reached (boosting round, or checkpoint count), the model
    or checkpoint bytes (None: from scratch) and the metric history up to that step."""

    step: int = 0
    data: bytes | None = None
    history: dict[str, Any] = field(default_factory=dict)


#: Checkpoints of a run live in ``<stage>/checkpoints/<request_id>/`` until it publishes.
CHECKPOINTS_DIR = "checkpoints"


class CheckpointStore:
    """The latest checkpoint of a run, on the run's stage: ``checkpoints/<request_id>/``.

    The model bytes go first and ``state.json`` (step reached, metric history, and what the
    run is: ``of``) last, so a reader never pairs a state with the wrong model; the previous
    checkpoint's bytes are removed once the new state names the new ones (only what resuming
    needs is kept). A checkpoint is used only by a run of the same ``identity`` (parameters,
    rounds, columns, data): a retry that changed any of it starts fresh, saying so.
    """

    def __init__(
        self,
        stage: Stage,
        request_id: str,
        model_name: str,
        identity: dict[str, Any] | None = None,
    ) -> None:
        self.stage = stage
        self.base = f"{CHECKPOINTS_DIR}/{request_id}"
        self.model_name = model_name
        self.identity = _plain(identity or {})

    def load(self) -> Checkpoint:
        if not self.stage.exists(f"{self.base}/state.json"):
            return Checkpoint()
        state = json.loads(self.stage.read_bytes(f"{self.base}/state.json"))
        recorded = state.get("of")
        if recorded != self.identity:
            changed = sorted(
                k
                for k in set(self.identity) | set(recorded or {})
                if (recorded or {}).get(k) != self.identity.get(k)
            )
            emit(
                f"not resuming from the checkpoint in {self.stage.child_uri(self.base)} (at "
                f"step {state.get('step')}): it is a checkpoint of a different run (changed: "
                f"{', '.join(changed) or 'unrecorded'}); starting fresh."
            )
            self.clear()
            return Checkpoint()
        try:
            data = self.stage.read_bytes(f"{self.base}/{state['file']}")
        except (StageError, FileNotFoundError):  # replaced by a concurrent run of this id
            emit(f"the checkpoint in {self.stage.child_uri(self.base)} is gone; starting fresh.")
            return Checkpoint()
        return Checkpoint(int(state["step"]), data, state.get("history", {}))

    def save(self, checkpoint: Checkpoint) -> None:
        name = f"{checkpoint.step:08d}-{self.model_name}"
        self.stage.write_bytes(f"{self.base}/{name}", checkpoint.data or b"")
        state = {
            "step": checkpoint.step,
            "file": name,
            "history": checkpoint.history,
            "of": self.identity,
            "saved_at": time.time(),  # retention (runtime.retention) ages leftovers by it
        }
        self.stage.write_bytes(f"{self.base}/state.json", json.dumps(state).encode())
        for path in self.stage.list(self.base):
            if path.rsplit("/", 1)[-1] not in (name, "state.json"):
                self.stage.delete(path)

    def clear(self) -> None:
        self.stage.delete(self.base)


def _plain(value: dict[str, Any]) -> dict[str, Any]:
    """``value`` as JSON gives it back (tuples as lists, keys as strings), so a recorded
    identity compares equal to the same identity built again."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


@dataclass(frozen=True)
class RunPlan:
    """Where a run publishes (``stage``, ``request_id``) and checkpoints (None: it does not),
    and the per-round metrics its training curves are drawn from at publish."""

    stage: Stage
    request_id: str
    checkpoints: CheckpointStore | None
    history: TrainingHistory = field(default_factory=TrainingHistory, compare=False, repr=False)

    @classmethod
    def open(
        cls,
        artifact_stage_location: str | None,
        request_id: str | None,
        *,
        session: Any = None,
        storage_options: dict | None = None,
        checkpoint_every: int = 0,
        checkpoint_name: str = "checkpoint",
        identity: dict[str, Any] | None = None,
    ) -> RunPlan:
        """Open the stage; a new request id when None; checkpoints when ``checkpoint_every``
        (used again only by a run of the same ``identity``: see ``CheckpointStore``)."""
        request_id = check_request_id(request_id) if request_id is not None else new_request_id()
        stage = open_stage(
            artifact_stage_location, session=session, storage_options=storage_options
        )
        store = (
            CheckpointStore(stage, request_id, checkpoint_name, identity)
            if checkpoint_every
            else None
        )
        return cls(stage, request_id, store)

    def publish(
        self, framework: str, write: Callable[[Path], object], **metadata: Any
    ) -> ModelArtifact | None:
        """Publish what ``write(folder)`` puts in an empty folder, then drop the checkpoints.

        The framework's spec names the model file among the files; the training curves of
        the recorded ``history`` go beside it. Returns None, keeping the checkpoints, when
        ``write`` wrote nothing.
        """
        with tempfile.TemporaryDirectory(prefix="shardtrain-publish-") as tmp:
            folder = Path(tmp)
            write(folder)
            files = sorted(
                p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()
            )
            if not files:
                return None
            curves = None if CURVES_FILE in files else self._draw_curves(folder, framework)
            artifact = publish_model(
                folder,
                framework=framework,
                stage=self.stage,
                request_id=self.request_id,
                model_file=spec(framework).model_file_in(files),
                curves_file=curves,
                **metadata,
            )
        if self.checkpoints is not None:
            self.checkpoints.clear()
        if curves_uri(artifact):
            emit(f"training curves: {curves_uri(artifact)}")
        return artifact

    def _draw_curves(self, folder: Path, framework: str) -> str | None:
        """The training-curve image in ``folder`` (its name), or None: no per-round metrics,
        no matplotlib, or drawing failed (a picture never fails a publish)."""
        plot = curve_plot(self.history)
        if plot is None:
            return None
        try:
            drawn = render_png(plot, folder / CURVES_FILE, title=f"{framework} {self.request_id}")
        except Exception as exc:
            logger.warning("could not draw the training curves: %s", exc, exc_info=True)
            (folder / CURVES_FILE).unlink(missing_ok=True)
            return None
        return CURVES_FILE if drawn else None


class Run:
    """One fit or run: its plan, the latest checkpoint, and the restarts.

    ``unit`` names a checkpoint's step in messages (``"round"``, ``"checkpoint"``).
    """

    def __init__(self, plan: RunPlan, failure_config: FailureConfig, unit: str) -> None:
        self.plan = plan
        self.failure_config = failure_config
        self.unit = unit
        self.started = time.monotonic()
        self.progress: ProgressReporter | None = None
        self._observers = current_observers()  # those of the fit's caller (its context)
        self.latest = plan.checkpoints.load() if plan.checkpoints else Checkpoint()
        if self.latest.step:
            emit(f"resuming {plan.request_id} from its checkpoint at {unit} {self.latest.step}")

    def observe(
        self, events: list[Any], rounds: int, early_stopping_rounds: int | None = None
    ) -> None:
        """Per-round metrics from the driver's poll (``RoundMetrics``; other events are not
        rounds): recorded for the training curves, and reported as progress out of ``rounds``."""
        history = self.plan.history
        history.rounds, history.early_stopping_rounds = rounds, early_stopping_rounds
        if self.progress is None:
            self.progress = ProgressReporter(
                rounds, started=self.started, line=emit, observers=self._observers, unit=self.unit
            )
        for event in events:
            if isinstance(event, RoundMetrics):
                if event.metrics:
                    # A curve will be drawn at publish: matplotlib imports while the ranks
                    # train. A fit without per-round metrics draws none and never imports it
                    # (~0.3 s of CPU beside the ranks of a small fit).
                    prewarm()
                history.record(event.round, event.metrics)
                self.progress.update(event.round)

    def save(self, checkpoint: Checkpoint) -> None:
        """Make ``checkpoint`` the one a restart resumes from, and store it when the run
        checkpoints to its stage."""
        self.latest = checkpoint
        if self.plan.checkpoints is not None:
            self.plan.checkpoints.save(checkpoint)

    def execute(self, attempt: Callable[[Checkpoint], T]) -> T:
        """``attempt(latest)``, run again from the latest checkpoint after each worker death,
        up to ``max_failures`` times; any other error, or one death too many, propagates."""
        failures = 0
        limit = self.failure_config.max_failures
        while True:
            try:
                self.plan.history.reset(self.latest.history, self.latest.step)
                result = attempt(self.latest)
            except WorkerDiedError as exc:
                failures += 1
                if failures > limit:
                    self._explain(exc)
                    raise
                emit(
                    f"{exc} Restarting the worker group ({failures}/{limit}) from "
                    f"{self.unit} {self.latest.step}."
                )
                continue
            except WorkerError as exc:
                self._explain(exc)
                raise
            if self.progress is not None:
                self.progress.finish()
            return result

    def _explain(self, exc: WorkerError) -> None:
        """Say in the error which rank failed, at which round (step), and what to do."""
        at = self.progress.step if self.progress is not None else self.latest.step
        total = f" of {self.progress.total}" if self.progress is not None else ""
        exc.details["round"] = exc.round = at
        where = f"rank {exc.rank}" if getattr(exc, "rank", None) is not None else "a rank"
        resume = (
            f" A rerun with the same request id resumes from its checkpoint at {self.unit} "
            f"{self.latest.step}."
            if self.plan.checkpoints is not None and self.latest.step
            else ""
        )
        if isinstance(exc, WorkerDiedError):
            todo = (
                "Its process died (killed, or out of memory: check the node's memory); "
                "FailureConfig(max_failures=n, checkpoint_frequency=k) restarts the group "
                "from the latest checkpoint."
                if not self.failure_config.max_failures
                else "It died more often than FailureConfig.max_failures allows."
            )
        else:
            todo = "Fix the cause (the rank's traceback is in this message) and run again."
        if self.progress is not None or at:
            where += f", after {self.unit} {at}{total}"
        exc.message = f"{exc.message} [{where}] {todo}{resume}"
        exc.args = (exc.message,)
