"""Several processes publishing the same request id at once, with a reader loading all along.

Retries of one task can overlap (a zombie try and its retry), so a request id may be published
by several processes at the same moment. The rule (last writer wins): after every round the
location holds one whole model, the one of a publisher that reported success; a publisher whose
manifest was replaced before it finished raises ``PublishConflictError``; a reader loading
during the publishes gets the old or the new model, never an error.
"""

from __future__ import annotations

import multiprocessing
import traceback
from pathlib import Path

import numpy as np
import pytest
import xgboost as xgb

from shardtrain.model.load import load_model, read_manifest
from shardtrain.model.manifest import file_entry
from shardtrain.model.publish import publish_model
from shardtrain.stage import open_stage

pytestmark = pytest.mark.subprocess  # several processes, 30 rounds

PUBLISHERS = 4
ROUNDS = 30
X = np.random.default_rng(0).random((300, 4))
Y = X @ np.array([1.0, -2.0, 0.5, 3.0])


def _model_dirs(tmp_path):
    """One model per publisher (plus one published first), told apart by their round count."""
    folders = []
    for index in range(PUBLISHERS + 1):
        booster = xgb.train({"max_depth": 3}, xgb.DMatrix(X, label=Y), index + 2)
        folder = tmp_path / f"m{index}"
        folder.mkdir()
        booster.save_model(str(folder / "model.ubj"))
        folders.append(str(folder))
    return folders


def _publisher(index, folder, stage, options, start, end, results):
    from threading import BrokenBarrierError

    from shardtrain.errors import PublishConflictError

    for round_ in range(ROUNDS):
        try:
            start.wait()
        except BrokenBarrierError:  # the test stopped early
            return
        try:
            artifact = publish_model(
                folder,
                framework="xgboost",
                stage=stage,
                storage_options=options,
                request_id="race",
                model_file="model.ubj",
            )
            results.put((round_, index, "ok", artifact.files[0]["sha256"]))
        except PublishConflictError as exc:
            results.put((round_, index, "lost", str(exc)))
        except Exception:
            results.put((round_, index, "error", traceback.format_exc()))
        try:
            end.wait()
        except BrokenBarrierError:
            return


def _reader(uri, options, stop, results):
    loads, errors = 0, []
    while not stop.is_set():
        try:
            booster = load_model(uri, storage_options=options)
            assert booster.num_boosted_rounds() >= 2
            loads += 1
        except Exception:
            errors.append(traceback.format_exc())
    results.put((loads, errors))


@pytest.mark.parametrize("backend", ["local", "s3"])
def test_same_request_id_from_several_processes_with_a_reader(backend, tmp_path, request):
    if backend == "local":
        stage, options = str(tmp_path / "stage"), None
    else:
        stage, options = "s3://shardtrain-test/race", request.getfixturevalue("s3_server")
    folders = _model_dirs(tmp_path)
    first = publish_model(
        folders[-1],
        framework="xgboost",
        stage=stage,
        storage_options=options,
        request_id="race",
        model_file="model.ubj",
    )
    sha_of = {  # model sha256 -> publisher index
        file_entry(Path(folder) / "model.ubj", "model.ubj")["sha256"]: index
        for index, folder in enumerate(folders[:PUBLISHERS])
    }
    ctx = multiprocessing.get_context("spawn")
    start, end = ctx.Barrier(PUBLISHERS + 1), ctx.Barrier(PUBLISHERS + 1)
    results, reads, stop = ctx.Queue(), ctx.Queue(), ctx.Event()
    procs = [
        ctx.Process(target=_publisher, args=(i, folders[i], stage, options, start, end, results))
        for i in range(PUBLISHERS)
    ]
    reader = ctx.Process(target=_reader, args=(first.uri, options, stop, reads))
    for proc in [*procs, reader]:
        proc.start()
    broken, failed = [], []
    try:
        for round_ in range(ROUNDS):
            start.wait(timeout=120)
            end.wait(timeout=120)
            outcome = [results.get(timeout=60) for _ in range(PUBLISHERS)]
            failed += [o for o in outcome if o[2] == "error"]
            winners = {o[3] for o in outcome if o[2] == "ok"}
            assert winners, f"round {round_}: every publisher says it lost: {outcome}"
            try:
                booster = load_model(first.uri, storage_options=options)
                manifest = read_manifest(open_stage(first.uri, storage_options=options))
            except Exception as exc:  # noqa: BLE001 - counted, reported below
                broken.append((round_, repr(exc)))
                continue
            final = manifest["files"][0]["sha256"]
            assert final in winners, (
                f"round {round_}: the published model (publisher {sha_of.get(final)}) is not "
                f"one whose publisher reported success: {outcome}"
            )
            assert booster.num_boosted_rounds() == sha_of[final] + 2
    finally:
        stop.set()
        start.abort()
        end.abort()
        for proc in procs:
            proc.join(timeout=60)
            if proc.is_alive():
                proc.kill()
        loads, read_errors = reads.get(timeout=120)
        reader.join(timeout=60)
    assert not failed, f"{len(failed)} publishes failed; the first: {failed[0][3]}"
    assert not broken, f"{len(broken)} of {ROUNDS} rounds left a broken model: {broken[:3]}"
    assert loads > 0
    assert not read_errors, (
        f"{len(read_errors)} of {loads + len(read_errors)} loads failed: " + (read_errors[0])
    )
