"""A Ray Dataset as a source: its Arrow blocks in the object store."""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from shardtrain.data.source import Source
from shardtrain.errors import DataSourceError


class RayDatasetSource(Source):
    """A Ray Dataset, executed once into Arrow blocks; any worker fetches the blocks it owns."""

    fork_safe = False

    def __init__(self, dataset: Any) -> None:
        import ray

        self._refs = dataset.to_arrow_refs()
        self._schema = _ray_block_schema(dataset, self._refs)
        self._unit_rows = ray.get([_ray_num_rows(ref) for ref in self._refs])
        super().__init__()

    def describe(self) -> dict[str, Any]:
        return {"kind": "ray_dataset", "blocks": len(self._refs), "num_rows": self.num_rows}

    def _read_range(self, start, stop, columns):
        import ray

        for unit, lo, hi in self._units_in(start, stop):
            table = ray.get(self._refs[unit])
            if columns is not None:
                table = table.select(columns)
            yield from table.slice(lo, hi - lo).to_batches()


def _ray_num_rows(ref):
    import ray

    @ray.remote(num_cpus=0)
    def count(table: pa.Table) -> int:
        return table.num_rows

    return count.remote(ref)


def _ray_block_schema(dataset, refs) -> pa.Schema:
    import ray

    schema = dataset.schema()
    base = getattr(schema, "base_schema", None)
    if isinstance(base, pa.Schema):
        return base
    if not refs:
        raise DataSourceError("the Ray Dataset has no blocks and no Arrow schema.")
    return ray.get(refs[0]).schema
