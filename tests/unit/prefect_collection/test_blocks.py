"""[Unit layer: the checks that need no Ray, process or server; the rest are in tests/integration/prefect_collection/test_blocks.py.]

The collection is found by Prefect, and its blocks save and load through the real API."""

from __future__ import annotations

from prefect.blocks.core import Block
from prefect.plugins import load_prefect_collections
from prefect.utilities.dispatch import lookup_type

from prefect_shardtrain import ModelStage, RayCluster


def test_collection_entry_point_registers_the_blocks():
    assert "prefect_shardtrain" in load_prefect_collections()
    assert lookup_type(Block, "shardtrain-ray-cluster") is RayCluster
    assert lookup_type(Block, "shardtrain-model-stage") is ModelStage
