"""Snowpark DataFrames as sources.

On a live session the query runs once, on the driver, and its Arrow *result batches* become
the units: each pickles as a download link, so every worker fetches its own batches straight
from Snowflake and the session itself never leaves the driver. A ``local_testing`` session
has no SQL and its ``to_arrow`` returns Rows, so there the emulated result is collected with
``to_pandas_batches()`` into Arrow on the driver (local testing data is small by nature).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from shardtrain.data.source import ArrowTableSource, Source
from shardtrain.errors import DataSourceError


class ResultBatchSource(Source):
    """A Snowflake query's result batches (``cursor.get_result_batches()``).

    Each batch pickles as a download link, so whichever worker owns it fetches it directly;
    the driver only ran the query.
    """

    def __init__(self, batches: Sequence[Any], schema: pa.Schema, description: dict) -> None:
        self._batches = list(batches)
        self._schema = schema
        self._description = description
        self._unit_rows = [int(b.rowcount) for b in self._batches]
        super().__init__()

    def describe(self) -> dict[str, Any]:
        return dict(self._description, num_rows=self.num_rows)

    def _read_range(self, start, stop, columns):
        for unit, lo, hi in self._units_in(start, stop):
            table = self._batches[unit].to_arrow()
            if columns is not None:
                table = table.select(columns)
            yield from table.slice(lo, hi - lo).to_batches()


def is_local_testing(session: Any) -> bool:
    """True for a Snowpark session created with ``config("local_testing", True)``."""
    return type(session._conn).__name__ == "MockServerConnection"


def describe_dataframe(df: Any) -> dict[str, Any]:
    """What the data is (table name or query text), never who read it."""
    table_name = getattr(df, "table_name", None)
    if table_name:
        return {"kind": "snowpark", "table": str(table_name)}
    if is_local_testing(df.session):
        return {"kind": "snowpark"}
    return {"kind": "snowpark", "query": df.queries["queries"][-1]}


def snowpark_source(df: Any) -> ArrowTableSource | ResultBatchSource:
    description = describe_dataframe(df)
    if is_local_testing(df.session):
        frames = [pa.Table.from_pandas(p, preserve_index=False) for p in df.to_pandas_batches()]
        frames = [f for f in frames if f.num_columns]
        if not frames:
            schema = pa.schema([(name, pa.null()) for name in df.columns])
            return ArrowTableSource(schema.empty_table(), description)
        return ArrowTableSource(pa.concat_tables(frames, promote_options="permissive"), description)
    return _result_batch_source(df, description)


def _result_batch_source(df: Any, description: dict[str, Any]) -> ResultBatchSource:
    """Run the DataFrame's query and keep its result batches (live sessions only)."""
    queries = df.queries
    cursor = df.session._conn._conn.cursor()
    try:
        for statement in queries["queries"][:-1]:
            cursor.execute(statement)
        cursor.execute(queries["queries"][-1])
        batches = cursor.get_result_batches() or []
        # The schema comes from the first batch; an empty result still has an Arrow schema.
        schema = (
            batches[0].to_arrow().schema
            if batches
            else cursor.fetch_arrow_all(force_return_table=True).schema
        )
        for statement in queries.get("post_actions", []):
            cursor.execute(statement)
    except Exception as exc:  # the connector raises its own ProgrammingError family
        raise DataSourceError(
            f"the Snowflake query failed: {exc}. Check the table or query and the session's "
            "role, warehouse, database and schema.",
        ) from exc
    return ResultBatchSource(batches, schema, description)


def dataframe_from_sql(query: str, session: Any = None) -> Any:
    """``session.sql(query)``, with the active session by default."""
    if session is None:
        try:
            from snowflake.snowpark.context import get_active_session

            session = get_active_session()
        except Exception as exc:
            raise DataSourceError(
                "from_sql needs a Snowpark session: pass session=..., or create one first "
                f"so that it is the active session ({exc}).",
            ) from exc
    try:
        return session.sql(query)
    except NotImplementedError as exc:
        raise DataSourceError(
            "this Snowpark session cannot run SQL (a local_testing session has no SQL "
            "engine); use DataConnector.from_dataframe(session.table('NAME')) instead.",
        ) from exc
