"""[Unit layer: the checks that need no Ray, process or server; the rest are in tests/integration/core/test_curves.py.]

Training curves: a fit's per-round metrics drawn as a PNG published beside its model and
listed in its manifest; the plot's data (panels, the early-stopping mark) checked directly."""

from __future__ import annotations

import json
import logging
import struct
import sys
from pathlib import Path

import numpy as np
import pytest

from shardtrain import ModelArtifact
from shardtrain.errors import ModelIntegrityError
from shardtrain.model.curves import (
    CURVES_FILE,
    PANEL_HEIGHT_PX,
    WIDTH_PX,
    TrainingHistory,
    best_round,
    curve_plot,
    curves_uri,
    render_png,
)
from shardtrain.model.load import fetched_model
from shardtrain.model.manifest import MANIFEST, read_manifest
from shardtrain.model.publish import publish_model
from shardtrain.stage import open_stage
from shardtrain.stage.urls import browse_url

FEATURES = [f"F{i}" for i in range(6)]


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk; fails unless the file is a PNG."""
    data = Path(path).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def history(train: list[float], eval_: list[float] | None = None, **kwargs) -> TrainingHistory:
    metrics = {"train": {"rmse": train, "mae": [v / 2 for v in train]}}
    if eval_ is not None:
        metrics["eval"] = {"rmse": eval_}
    return TrainingHistory(metrics, **kwargs)


def test_the_plot_has_a_panel_per_metric_and_a_curve_per_data_set():
    plot = curve_plot(history([3, 2, 1], [3.5, 2.5, 2.0], rounds=3))
    assert [p.metric for p in plot.panels] == ["rmse", "mae"]
    rmse = plot.panels[0]
    assert [(c.data_set, c.rounds, c.values) for c in rmse.curves] == [
        ("train", [1, 2, 3], [3, 2, 1]),
        ("eval", [1, 2, 3], [3.5, 2.5, 2.0]),
    ]
    assert [c.data_set for c in plot.panels[1].curves] == ["train"]
    assert plot.best_round is None  # no early stopping
    assert plot.size_px == (WIDTH_PX, 2 * PANEL_HEIGHT_PX)
    assert curve_plot(TrainingHistory()) is None
    assert curve_plot(TrainingHistory({"train": {"rmse": []}})) is None


def test_the_early_stopping_mark_is_the_round_it_kept():
    # best eval at round 4, then 3 rounds without improvement: stopped at 7 of 50
    eval_ = [5, 4, 3, 2, 2.1, 2.2, 2.3]
    stopped = history(list(range(7, 0, -1)), eval_, rounds=50, early_stopping_rounds=3)
    assert best_round(stopped) == 4 == 1 + int(np.argmin(eval_))
    assert curve_plot(stopped).best_round == 4
    # ran all its rounds: early stopping chose nothing to mark
    assert best_round(history([3, 2, 1], [3, 2, 1], rounds=3, early_stopping_rounds=2)) is None
    assert best_round(history([3, 2, 1], [3, 2, 1], rounds=9)) is None


def test_a_round_reported_again_replaces_what_was_recorded_from_it():
    recorded = TrainingHistory()
    for round_ in (1, 2, 3):
        recorded.record(round_, {"train": {"rmse": float(round_)}})
    recorded.record(2, {"train": {"rmse": 20.0}})  # a retried attempt from round 1
    recorded.record(3, {"train": {"rmse": 30.0}})
    assert recorded.metrics == {"train": {"rmse": [1.0, 20.0, 30.0]}}
    recorded.reset({"train": {"rmse": [1.0, 20.0, 30.0]}}, 1)  # back to a checkpoint at 1
    assert recorded.metrics == {"train": {"rmse": [1.0]}} and recorded.last_round == 1


def test_render_writes_a_png_of_the_plot_size(tmp_path):
    plot = curve_plot(history([3, 2, 1], [3.5, 2.5, 2.0], rounds=3))
    assert render_png(plot, tmp_path / "c.png", title="xgboost r1")
    assert png_size(tmp_path / "c.png") == plot.size_px == (960, 640)


def test_without_matplotlib_there_is_no_image_and_one_info_line(tmp_path, monkeypatch, caplog):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed
    caplog.set_level(logging.INFO, logger="shardtrain")
    plot = curve_plot(history([3, 2, 1]))
    assert render_png(plot, tmp_path / "c.png") is False
    assert not (tmp_path / "c.png").exists()
    lines = [r for r in caplog.records if "matplotlib is not installed" in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelno == logging.INFO
    assert "pip install matplotlib" in lines[0].getMessage()


def test_publish_lists_the_image_in_the_manifest(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.ubj").write_bytes(b"{}")
    render_png(curve_plot(history([3, 2, 1])), out / CURVES_FILE)
    stage = str(tmp_path / "stage")
    artifact = publish_model(
        out, framework="xgboost", stage=stage, model_file="model.ubj", curves_file=CURVES_FILE
    )
    manifest = read_manifest(open_stage(artifact.uri))
    assert CURVES_FILE in [e["path"] for e in manifest["files"]]  # checksummed, published with
    uri = f"{artifact.uri}/{manifest['attempt']}/{CURVES_FILE}"  # the model, replaced with it
    assert manifest["curves"] == artifact.curves == uri
    assert curves_uri(artifact) == curves_uri(artifact.to_dict()) == uri
    assert ModelArtifact.from_dict(manifest) == artifact
    assert png_size(Path(uri)) == (960, 640)
    assert browse_url(uri, is_file=True) == Path(uri).as_uri()
    with fetched_model(artifact) as (_, folder):  # loading checks it like every model file
        assert png_size(folder / CURVES_FILE) == (960, 640)


def test_manifests_without_an_image_read_as_before(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.ubj").write_bytes(b"{}")
    artifact = publish_model(out, framework="xgboost", stage=str(tmp_path / "s"))
    assert curves_uri(artifact) is None and artifact.curves is None
    path = Path(artifact.uri) / MANIFEST
    manifest = json.loads(path.read_text())
    del manifest["curves"]  # as an older version wrote it
    path.write_text(json.dumps(manifest))
    assert ModelArtifact.from_dict(read_manifest(open_stage(artifact.uri))) == artifact
    assert curves_uri({"uri": "x", "files": []}) is None
    manifest["curves"] = 7
    path.write_text(json.dumps(manifest))
    with pytest.raises(ModelIntegrityError, match="'curves' must be the training-curve image"):
        read_manifest(open_stage(artifact.uri))


@pytest.mark.parametrize(
    "uri,url",
    [
        ("s3://b/model/r/a/x.png", "https://s3.console.aws.amazon.com/s3/object/b?prefix=model/r/a/x.png"),
        ("gs://b/model/r/a/x.png", "https://console.cloud.google.com/storage/browser/_details/b/model/r/a/x.png"),
        ("/srv/s/model/r/a/x.png", "file:///srv/s/model/r/a/x.png"),
        ("@ML.PUBLIC.M/model/r/a/x.png", "https://app.snowflake.com/_deeplink/#/data/databases/ML/schemas/PUBLIC/stage/M"),
        ("memory://s/x.png", ""),
    ],
)  # fmt: skip
def test_file_urls_open_the_object_page(uri, url):
    assert browse_url(uri, is_file=True) == url
