"""``python -m shardtrain.jobs run --spec '<TrainingSpec JSON>'``: the Ray Job's entrypoint.

Runs the same fit code as in-process training and publishes the model to the spec's stage.
The submitter reads the result from the stage's manifest, never from this output. On failure
the last line says what went wrong (the submitter shows the log's tail).
"""

from __future__ import annotations

import argparse
import logging
import sys

from shardtrain.errors import ShardtrainError
from shardtrain.integrations import TrainingSpec, run_training
from shardtrain.runtime.cluster import connect


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shardtrain.jobs")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run a TrainingSpec (as a Ray Job's entrypoint)")
    run.add_argument("--spec", required=True, help="the TrainingSpec as JSON")
    args = parser.parse_args(argv)

    logging.basicConfig(stream=sys.stdout, level=logging.INFO, format="%(message)s", force=True)
    log = logging.getLogger("shardtrain.jobs")

    try:
        spec = TrainingSpec.from_json(args.spec)
        log.info("shardtrain job: %s training, request %s", spec.framework, spec.request_id)
        connect()
        artifact = run_training(spec)
    except ShardtrainError as exc:
        log.error("shardtrain job failed: %s: %s", type(exc).__name__, exc)
        return 1
    if artifact is None:
        log.info("shardtrain job done: the train function saved no model; nothing published")
    else:
        log.info("shardtrain job done: model published to %s", artifact.uri)
    return 0


if __name__ == "__main__":
    sys.exit(main())
