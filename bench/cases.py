"""Which cases a run measures, and how they are grouped into processes.

A *job* is one process: it starts Ray once when a case needs it and runs its cases, each
``repeats`` times. Training implementations never share a process (the loading cases do:
they only read, and have no memory target), so one's retained memory or warm
workers cannot help or hurt another. ``workers="cold"`` shuts shardtrain's warm pool down
after every repeat, so each repeat starts its worker processes as a fresh Airflow or Prefect
task would; ``workers="warm"`` runs one untimed fit first, as in a long-lived driver.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

QUICK_ROWS = 250_000
FULL_ROWS = 1_000_000
SCALING_ROWS = (250_000, 1_000_000, 4_000_000)


@dataclass(frozen=True)
class Case:
    name: str  # "<topic>/<implementation>", e.g. "xgboost/shardtrain"
    fn: str  # "module:function" under bench
    workers: str = ""  # "", "cold" or "warm"
    warmup: bool = False  # one untimed run first (implied by workers="warm")

    @property
    def preload(self) -> tuple[str, ...]:
        """Modules the job imports before timing: importing is not training."""
        topic, implementation = self.name.split("/", 1)
        topic = "xgboost" if topic == "small job" else topic
        implementation = implementation.split(" (")[0]
        modules = _PRELOAD.get(topic, ()) + _PRELOAD.get(implementation, ())
        ray_topic = "torch" if topic == "pytorch" else topic
        return tuple(m.format(topic=topic, ray_topic=ray_topic) for m in modules)


_PRELOAD = {
    "xgboost": ("xgboost",),
    "lightgbm": ("lightgbm",),
    "pytorch": ("torch",),
    "shardtrain": ("shardtrain.modeling.distributors.{topic}",),
    "Ray Train": ("ray.data", "ray.train.{ray_topic}"),
    "loading": ("torch", "ray.data", "shardtrain"),
}


@dataclass
class Job:
    name: str
    rows: int
    ray: bool
    cases: list[Case] = field(default_factory=list)

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "rows": self.rows,
            "ray": self.ray,
            "cases": [{**asdict(c), "preload": c.preload} for c in self.cases],
        }


def _gbdt(framework: str, rows: int, ray_train: bool, warm: bool) -> list[Job]:
    shardtrain = [Case(f"{framework}/shardtrain", f"gbdt:{framework}_shardtrain", "cold")]
    if warm:
        shardtrain.append(
            Case(f"{framework}/shardtrain (warm workers)", f"gbdt:{framework}_shardtrain", "warm")
        )
    jobs = [
        Job(
            f"{framework}-plain",
            rows,
            False,
            [Case(f"{framework}/plain", f"gbdt:{framework}_plain")],
        ),
        Job(f"{framework}-shardtrain", rows, True, shardtrain),
    ]
    if warm:  # the default scaling config: on the 2-CPU local Ray, 1 worker x 2 CPUs
        auto = f"gbdt:{framework}_shardtrain_auto"
        jobs.append(
            Job(
                f"{framework}-shardtrain-auto",
                rows,
                True,
                [
                    Case(f"{framework}/shardtrain (automatic config)", auto, "cold"),
                    Case(f"{framework}/shardtrain (automatic config, warm workers)", auto, "warm"),
                ],
            )
        )
    if ray_train:
        jobs.append(
            Job(
                f"{framework}-ray-train",
                rows,
                True,
                [Case(f"{framework}/Ray Train", f"gbdt:{framework}_ray_train")],
            )
        )
    return jobs


def plan(quick: bool, rows: int | None = None, ray_train: bool | None = None) -> list[Job]:
    """The jobs of a run. Quick: smaller data, no Ray Train and no scaling sweep."""
    rows = rows or (QUICK_ROWS if quick else FULL_ROWS)
    ray_train = (not quick) if ray_train is None else ray_train
    jobs = _gbdt("xgboost", rows, ray_train, warm=True)
    jobs += _gbdt("lightgbm", rows, ray_train, warm=True)
    jobs += [
        Job(
            "pytorch-multiprocessing",
            rows,
            False,
            [Case("pytorch/torch.multiprocessing", "pytorch:torch_multiprocessing")],
        ),
        Job(
            "pytorch-shardtrain",
            rows,
            True,
            [
                Case("pytorch/shardtrain", "pytorch:torch_shardtrain", "cold"),
                Case("pytorch/shardtrain (warm workers)", "pytorch:torch_shardtrain", "warm"),
            ],
        ),
        Job(
            "small-shardtrain",
            rows,
            True,
            [
                Case("small job/shardtrain", "gbdt:small_job_shardtrain", "cold"),
                Case(
                    "small job/shardtrain (warm workers)",
                    "gbdt:small_job_shardtrain",
                    "warm",
                ),
            ],
        ),
    ]
    if ray_train:
        jobs += [
            Job(
                "pytorch-ray-train",
                rows,
                True,
                [Case("pytorch/Ray Train", "pytorch:torch_ray_train")],
            ),
            Job(
                "small-ray-train",
                rows,
                True,
                [Case("small job/Ray Train", "gbdt:small_job_ray_train")],
            ),
        ]
    jobs.append(
        Job(
            "loading",
            rows,
            True,
            [
                Case("loading/pyarrow.dataset scan", "data_loading:pyarrow_scan", warmup=True),
                Case(
                    "loading/DataConnector.iter_batches",
                    "data_loading:connector_batches",
                    warmup=True,
                ),
                Case(
                    "loading/DataConnector.to_torch_dataset",
                    "data_loading:connector_torch",
                    warmup=True,
                ),
                Case(
                    "loading/Ray Data iter_torch_batches",
                    "data_loading:ray_data_torch",
                    warmup=True,
                ),
            ],
        )
    )
    if not quick:
        for size in SCALING_ROWS:
            if size != rows:
                jobs += [
                    Job(f"scaling-{size}-{job.name}", size, job.ray, job.cases[:1])
                    for job in _gbdt("xgboost", size, ray_train, warm=False)
                ]
    return jobs
