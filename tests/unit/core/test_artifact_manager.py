"""``Context.get_artifact_manager()`` on a rank, driven in process (a fake reporter stands in
for the worker's channel to the driver). Publishing rank 0's artifacts to the stage in a real
run: tests/integration/core/test_pytorch.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from shardtrain.errors import ConfigError
from shardtrain.modeling.distributors.pytorch import ArtifactManager, Context


class Reporter:
    def __init__(self) -> None:
        self.checkpoints: list[tuple[int, bytes]] = []

    def checkpoint(self, step: int, data: bytes) -> None:
        self.checkpoints.append((step, data))

    def report(self, event) -> None:
        pass


def context(tmp_path, rank: int = 0, reporter=None, checkpoint=None) -> Context:
    model_dir = tmp_path / f"model-r{rank}"
    model_dir.mkdir()
    return Context(
        rank=rank,
        world_size=2,
        local_rank=rank,
        local_world_size=2,
        node_rank=0,
        master_addr="127.0.0.1",
        master_port=1,
        hyper_params={},
        dataset_map={},
        model_dir=str(model_dir),
        reporter=reporter or Reporter(),
        checkpoint=checkpoint,
        checkpoint_step=0,
        gpus=False,
        stage_location="/stage/model/r1",
    )


def test_saved_files_and_folders_land_in_the_published_folder(tmp_path):
    manager = context(tmp_path).get_artifact_manager()
    assert isinstance(manager, ArtifactManager)
    assert manager.get_stage_location() == "/stage/model/r1"
    (tmp_path / "vocab.json").write_text("{}")
    (tmp_path / "plots").mkdir()
    (tmp_path / "plots" / "loss.txt").write_text("1.0")
    assert manager.save_artifact(tmp_path / "vocab.json").endswith("model-r0/vocab.json")
    manager.save_artifact(tmp_path / "plots", name="reports/plots")
    assert manager.list_artifacts() == ["reports/plots/loss.txt", "vocab.json"]
    assert manager.get_local_dir() == str(tmp_path / "model-r0")


@pytest.mark.parametrize("name", ["../outside.json", "/etc/outside.json"])
def test_a_name_outside_the_folder_is_refused(tmp_path, name):
    (tmp_path / "vocab.json").write_text("{}")
    manager = context(tmp_path).get_artifact_manager()
    with pytest.raises(ConfigError, match="must be a relative path inside the model folder"):
        manager.save_artifact(tmp_path / "vocab.json", name=name)


def test_a_missing_file_is_named(tmp_path):
    manager = context(tmp_path).get_artifact_manager()
    with pytest.raises(ConfigError, match="gone.json does not exist"):
        manager.save_artifact(tmp_path / "gone.json")


def test_checkpoints_go_through_the_run_as_the_context_s_do(tmp_path):
    reporter = Reporter()
    manager = context(tmp_path, reporter=reporter).get_artifact_manager()
    assert manager.get_checkpoint() is None  # a first try
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "state.pt").write_bytes(b"weights")
    manager.save_checkpoint(tmp_path / "ckpt")
    assert [step for step, _ in reporter.checkpoints] == [1]
    (tmp_path / "again").mkdir()
    resumed = context(tmp_path / "again", checkpoint=reporter.checkpoints[0][1])
    folder = resumed.get_artifact_manager().get_checkpoint()
    assert (Path(folder) / "state.pt").read_bytes() == b"weights"
    resumed.remove_local_folders()
