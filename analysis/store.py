"""The jobs table: SQLite (stdlib `sqlite3`) under DATA_DIR, used from one dedicated thread.

Every call is a short statement on one connection owned by a single-thread executor, so the event
loop never blocks on disk and no two statements race. Rows hold the request and the result as
JSON text; a job's live progress is written at most about once a second by the runner.

The file is bounded: `prune` deletes the oldest finished rows beyond a row count and a byte budget,
and the file runs with `auto_vacuum=INCREMENTAL` (an older file is converted once at open) so the
pages they held go back to the file system; the WAL is checkpointed and kept under `_WAL_LIMIT`.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
# `JobStore.list` shadows the builtin inside the class body
JobRows = list[dict[str, Any]]

STATUSES = ("queued", "running", "completed", "failed", "cancelled", "interrupted")
FINISHED = ("completed", "failed", "cancelled", "interrupted")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    progress REAL NOT NULL DEFAULT 0,
    frames_done INTEGER NOT NULL DEFAULT 0,
    frames_planned INTEGER,
    eta_seconds REAL,
    phase TEXT,
    request TEXT NOT NULL,
    result TEXT,
    error TEXT,
    input_path TEXT,
    input_name TEXT,
    attempts INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS jobs_created ON jobs (created_at DESC);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status);
"""

_JSON_COLUMNS = ("request", "result")
_WAL_LIMIT = 4 * 1024 * 1024  # bytes the WAL file is truncated to after a checkpoint
_ROW_OVERHEAD = 256  # bytes a row takes besides its text columns (an estimate, for the byte budget)
_COLUMNS = (
    "id",
    "kind",
    "status",
    "created_at",
    "started_at",
    "finished_at",
    "progress",
    "frames_done",
    "frames_planned",
    "eta_seconds",
    "phase",
    "request",
    "result",
    "error",
    "input_path",
    "input_name",
    "attempts",
)


def encode_json(value: Any) -> str:
    """A JSON column's text, as stored (UTF-8 as it is, no spaces): what the size caps measure."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


class JobStore:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="analysis-db")
        self._conn: sqlite3.Connection | None = None

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    @property
    def _db(self) -> sqlite3.Connection:
        conn = self._conn
        if conn is None:
            raise RuntimeError("the job store is not open")
        return conn

    # -- lifecycle ---------------------------------------------------------------------------------

    async def open(self) -> int:
        """Create the table if needed; jobs left queued/running by a previous process become
        `interrupted`. Returns how many were."""
        return await self._run(self._open)

    def _open(self) -> int:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA auto_vacuum=INCREMENTAL")  # takes effect on a new file (before its first table)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute(f"PRAGMA journal_size_limit={_WAL_LIMIT}")
        conn.executescript(_SCHEMA)
        if conn.execute("PRAGMA auto_vacuum").fetchone()[0] != 2:
            conn.execute("VACUUM")  # a file from before: converted once, so deleted rows give their pages back
        self._conn = conn
        cursor = conn.execute(
            "UPDATE jobs SET status='interrupted', finished_at=?, eta_seconds=NULL,"
            " error='the server stopped before the job finished; POST /v1/jobs/{id}/retry runs it again'"
            " WHERE status IN ('queued', 'running')",
            (time.time(),),
        )
        return cursor.rowcount

    async def close(self) -> None:
        def close() -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

        await self._run(close)
        self._executor.shutdown(wait=True)

    # -- rows --------------------------------------------------------------------------------------

    @staticmethod
    def _encode(fields: dict[str, Any]) -> dict[str, Any]:
        out = {}
        for key, value in fields.items():
            if key not in _COLUMNS:
                raise KeyError(f"unknown job column {key!r}")
            if key in _JSON_COLUMNS and value is not None:
                value = encode_json(value)
            out[key] = value
        return out

    @staticmethod
    def _decode(row: sqlite3.Row | None) -> dict[str, Any] | None:
        return None if row is None else JobStore._decode_row(row)

    @staticmethod
    def _decode_row(row: sqlite3.Row) -> dict[str, Any]:
        job = dict(row)
        for key in _JSON_COLUMNS:
            if job.get(key) is not None:
                job[key] = json.loads(job[key])
        return job

    async def insert(self, job: dict[str, Any]) -> None:
        fields = self._encode(job)
        names = ", ".join(fields)
        marks = ", ".join("?" for _ in fields)
        await self._run(
            lambda: self._db.execute(f"INSERT INTO jobs ({names}) VALUES ({marks})", tuple(fields.values()))
        )

    async def update(self, job_id: str, **fields: Any) -> None:
        if not fields:
            return
        encoded = self._encode(fields)
        assignments = ", ".join(f"{name}=?" for name in encoded)
        await self._run(
            lambda: self._db.execute(f"UPDATE jobs SET {assignments} WHERE id=?", (*encoded.values(), job_id))
        )

    async def get(self, job_id: str) -> dict[str, Any] | None:
        return await self._run(
            lambda: self._decode(self._db.execute("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone())
        )

    async def list(self, limit: int, offset: int, status: str | None = None) -> tuple[list[dict[str, Any]], int]:
        """Newest first, without the (possibly large) result column."""

        def query() -> tuple[JobRows, int]:
            where, args = ("WHERE status=?", (status,)) if status else ("", ())
            columns = ", ".join(c for c in _COLUMNS if c != "result")
            rows = self._db.execute(
                f"SELECT {columns} FROM jobs {where} ORDER BY created_at DESC, rowid DESC LIMIT ? OFFSET ?",
                (*args, limit, offset),
            ).fetchall()
            total = self._db.execute(f"SELECT COUNT(*) FROM jobs {where}", args).fetchone()[0]
            return [self._decode_row(r) for r in rows], int(total)

        return await self._run(query)

    async def delete(self, job_id: str) -> bool:
        return await self._run(lambda: self._db.execute("DELETE FROM jobs WHERE id=?", (job_id,)).rowcount > 0)

    async def expired(self, before: float) -> JobRows:
        """Finished jobs whose finish time is before `before` (for the retention sweep)."""
        marks = ", ".join("?" for _ in FINISHED)
        return await self._run(
            lambda: [
                self._decode_row(r)
                for r in self._db.execute(
                    f"SELECT id, input_path FROM jobs WHERE status IN ({marks}) AND finished_at < ? LIMIT 1000",
                    (*FINISHED, before),
                ).fetchall()
            ]
        )

    async def prune(self, max_rows: int, max_bytes: int, keep: tuple[str, ...] = ()) -> JobRows:
        """Delete finished jobs, oldest first: those past the newest `max_rows` rows, then, when the
        file's pages in use are over `max_bytes`, enough more to be 10% under it; never those in `keep`.
        Returns the deleted rows' id and input_path (the caller removes the files); the freed pages go
        back to the file system."""
        return await self._run(self._prune, max_rows, max_bytes, keep)

    def _prune(self, max_rows: int, max_bytes: int, keep: tuple[str, ...]) -> JobRows:
        conn = self._db
        marks = ", ".join("?" for _ in FINISHED)
        spared = f"AND id NOT IN ({', '.join('?' for _ in keep)})" if keep else ""
        doomed: JobRows = []
        newest = conn.execute(
            "SELECT created_at FROM jobs ORDER BY created_at DESC LIMIT 1 OFFSET ?", (max_rows - 1,)
        ).fetchone()
        if newest is not None:
            doomed += [
                dict(r)
                for r in conn.execute(
                    f"SELECT id, input_path FROM jobs WHERE status IN ({marks}) AND created_at < ? {spared}",
                    (*FINISHED, newest[0], *keep),
                ).fetchall()
            ]
        gone = {row["id"] for row in doomed}
        # the file's pages in use (no scan); only when over the budget are rows' sizes read, oldest first
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        pages = conn.execute("PRAGMA page_count").fetchone()[0] - conn.execute("PRAGMA freelist_count").fetchone()[0]
        excess = pages * page_size - max_bytes
        if excess > 0:
            excess += max_bytes // 10  # some room, so not every new job prunes again
            size = (
                f"{_ROW_OVERHEAD} + length(CAST(request AS BLOB)) + coalesce(length(CAST(result AS BLOB)), 0)"
                " + coalesce(length(CAST(error AS BLOB)), 0)"
            )
            for row in conn.execute(
                f"SELECT id, input_path, {size} AS size FROM jobs WHERE status IN ({marks}) "
                f"{spared} ORDER BY created_at, rowid",
                (*FINISHED, *keep),
            ):
                if excess <= 0:
                    break
                excess -= row["size"]
                if row["id"] not in gone:
                    doomed.append({"id": row["id"], "input_path": row["input_path"]})
                    gone.add(row["id"])
        if doomed:
            conn.execute("BEGIN")
            try:
                conn.executemany("DELETE FROM jobs WHERE id=?", [(row["id"],) for row in doomed])
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            self._compact()
        return doomed

    def _compact(self) -> None:
        self._db.executescript("PRAGMA incremental_vacuum;")  # run to the end (a cursor steps it once)
        self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()

    async def file_bytes(self) -> int:
        """Bytes on disk: the database file and its WAL."""

        def size() -> int:
            return sum(
                p.stat().st_size for p in (self.path, self.path.with_name(self.path.name + "-wal")) if p.exists()
            )

        return await self._run(size)
