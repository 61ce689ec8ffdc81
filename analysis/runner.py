"""The job runner: a bounded queue, `ANALYSIS_WORKERS` jobs at once, progress, cancel, retry.

State lives in the `JobStore`; what only a running process knows (the task, the cancel flag, the
event subscribers) lives in `_LiveJob`. Each running job gets its own small executor (`ANALYSIS_TAG_THREADS`) whose
threads run at a raised nice value (`ANALYSIS_NICENESS`): decoding and embedded models lose every
contest for the CPU against live streams, so a live stream keeps its frame rate while a job runs.

Cancel: `cancel(id)` marks the job `cancelled` at once and cancels its task; the job's thread
finishes the frame it is on (well under a second) and the input is removed. A process that stops
with jobs queued or running leaves them `interrupted` (on the next start, at the latest);
`retry(id)` queues such a job again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from analysis.engine import AnalysisServices, JobFailed, run_job
from analysis.inputs import InputError, fetch_url, remove_quietly
from analysis.settings import AnalysisSettings
from analysis.store import FINISHED, JobStore, encode_json
from media.mailbox import DropOldestMailbox

log = logging.getLogger(__name__)

_PROGRESS_WRITE_INTERVAL = 1.0
_SUBSCRIBER_QUEUE = 64
_SWEEP_INTERVAL = 3600.0
_KEEP_FINISHED = 256  # finished jobs kept in memory besides the database
MAX_ERROR_CHARS = 2000  # a failed job's stored message (it may quote the caller's input)


class QueueFull(Exception):
    pass


class JobNotFound(Exception):
    pass


class RequestTooLarge(Exception):
    """The job's options, as stored, are over ANALYSIS_MAX_REQUEST_BYTES (413)."""


class JobConflict(Exception):
    pass


def _lower_priority(niceness: int) -> None:
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), niceness)
    except (AttributeError, OSError):
        pass
    try:
        import cv2

        cv2.setNumThreads(1)  # OpenCV work stays on this lowered thread
    except Exception:
        pass


@dataclass
class _LiveJob:
    id: str
    task: asyncio.Task | None = None
    cancel_requested: bool = False
    done: asyncio.Event = field(default_factory=asyncio.Event)
    subscribers: list[DropOldestMailbox] = field(default_factory=list)
    progress: dict[str, Any] = field(default_factory=dict)
    last_write: float = 0.0
    failure: Exception | None = None  # why the job failed: the edge answers a synchronous caller from it


class _Context:
    """The `JobContext` the engine sees."""

    def __init__(
        self, runner: JobRunner, job: dict[str, Any], input_path: str, executor: ThreadPoolExecutor, threads: int = 1
    ) -> None:
        self.id = job["id"]
        self.threads = threads  # the executor's threads: embedded tagging runs this many frames at once
        self.input_path = input_path
        self._runner = runner
        self._executor = executor
        self._started = time.monotonic()
        self._frames_done = 0
        self._frames_planned: int | None = None
        self._phase: str | None = None

    async def call(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def progress(
        self,
        *,
        frames_done: int | None = None,
        frames_planned: int | None = None,
        phase: str | None = None,
        fraction: float | None = None,
    ) -> None:
        if frames_planned is not None:
            self._frames_planned = frames_planned
        if frames_done is not None:
            self._frames_done = frames_done
        if phase is not None:
            self._phase = phase
        if fraction is None and self._frames_planned:
            fraction = self._frames_done / self._frames_planned
        elapsed = time.monotonic() - self._started
        eta = None
        if fraction and fraction > 0.02:
            eta = round(elapsed * (1 - fraction) / fraction, 1)
        self._runner._progress(
            self.id,
            {
                "fraction": round(min(1.0, max(0.0, fraction or 0.0)), 4),
                "frames_done": self._frames_done,
                "frames_planned": self._frames_planned,
                "eta_seconds": eta,
                "phase": self._phase,
            },
        )


class JobRunner:
    def __init__(self, settings: AnalysisSettings, services: AnalysisServices, outbound_policy: Any = None) -> None:
        self.settings = settings
        self.services = services
        self.outbound_policy = outbound_policy
        self.store = JobStore(settings.db_path)
        self._queue: deque[str] = deque()  # bounded by ANALYSIS_MAX_QUEUED: submit() refuses beyond it (503)
        self._wake = asyncio.Event()
        self._live: dict[str, _LiveJob] = {}
        self._workers: list[asyncio.Task] = []
        self._sweeper: asyncio.Task | None = None
        self._subscriptions: set[asyncio.Queue] = set()  # every open event stream's queue, of any job
        self._finished: deque[str] = deque()  # bounded: trimmed to _KEEP_FINISHED on every append
        self._writes: set[asyncio.Task] = set()
        self._reserved_bytes = 0  # byte caps granted to uploads/downloads in progress
        self.running = 0
        self.completed = 0
        self.failed = 0
        self.cancelled = 0
        self.rejected_full = 0
        self.interrupted_at_start = 0

    # -- lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        self.settings.uploads_dir.mkdir(parents=True, exist_ok=True)
        self.interrupted_at_start = await self.store.open()
        if self.interrupted_at_start:
            log.warning(
                "%d analysis job(s) were interrupted by the last shutdown; retry them with POST /v1/jobs/{id}/retry",
                self.interrupted_at_start,
            )
        self._remove_stale_downloads()
        await self.sweep()
        self._workers = [
            asyncio.create_task(self._worker(i), name=f"analysis-worker-{i}") for i in range(self.settings.workers)
        ]
        self._sweeper = asyncio.create_task(self._sweep_forever(), name="analysis-retention")

    async def stop(self) -> None:
        unfinished = [
            *self._queue,
            *(live.id for live in self._live.values() if live.task is not None and not live.done.is_set()),
        ]
        tasks = [*self._workers, *([self._sweeper] if self._sweeper else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        now = time.time()
        for job_id in unfinished:
            await self.store.update(
                job_id,
                status="interrupted",
                finished_at=now,
                eta_seconds=None,
                error="the server stopped before the job finished; POST /v1/jobs/{id}/retry runs it again",
            )
        self._queue.clear()
        for live in self._live.values():
            self._finish_subscribers(live, None)
        await asyncio.gather(*self._writes, return_exceptions=True)
        await self.store.close()
        await self.services.close()

    def _remove_stale_downloads(self) -> None:
        for path in self.settings.uploads_dir.glob("*.download"):
            remove_quietly(path)

    # -- submitting --------------------------------------------------------------------------------

    @property
    def queued(self) -> int:
        return len(self._queue)

    def check_capacity(self) -> None:
        if len(self._queue) >= self.settings.max_queued:
            self.rejected_full += 1
            raise QueueFull(
                f"the analysis queue is full ({len(self._queue)} jobs waiting, ANALYSIS_MAX_QUEUED="
                f"{self.settings.max_queued}); try again later"
            )

    def new_id(self) -> str:
        return "job_" + secrets.token_hex(8)

    @property
    def reserved_bytes(self) -> int:
        """Bytes of the disk budget held by uploads and downloads in progress."""
        return self._reserved_bytes

    @property
    def subscriber_count(self) -> int:
        """Job event streams open now (bounded by ANALYSIS_MAX_SUBSCRIBERS)."""
        return len(self._subscriptions)

    def check_request_size(self, request: dict[str, Any]) -> None:
        size = len(encode_json(request).encode())
        if size > self.settings.max_request_bytes:
            raise RequestTooLarge(
                f"the job's options take {size} bytes; the limit is "
                f"{self.settings.max_request_bytes} (ANALYSIS_MAX_REQUEST_BYTES)"
            )

    @contextlib.contextmanager
    def transfer_budget(self):
        """The byte cap for one upload or download: ANALYSIS_MAX_BYTES, less whatever the inputs on
        disk and the other transfers in progress could take from ANALYSIS_DISK_BUDGET. Raises
        InputError (507) when the budget is spent."""
        on_disk = sum(p.stat().st_size for p in self.settings.uploads_dir.iterdir() if p.is_file())
        room = self.settings.disk_budget - on_disk - self._reserved_bytes
        cap = min(self.settings.max_bytes, room)
        if cap < 1024:
            raise InputError(
                f"the analysis inputs fill their disk budget ({self.settings.disk_budget} bytes, "
                "ANALYSIS_DISK_BUDGET); try again when queued jobs have finished",
                code="insufficient_storage",
            )
        self._reserved_bytes += cap
        try:
            yield cap
        finally:
            self._reserved_bytes -= cap

    def upload_path(self, job_id: str) -> Path:
        return self.settings.uploads_dir / f"{job_id}.input"

    async def submit(
        self,
        kind: str,
        request: dict[str, Any],
        *,
        job_id: str | None = None,
        input_path: Path | None = None,
        input_name: str | None = None,
    ) -> dict[str, Any]:
        """Queue a job. `request` carries `video_url`, or `input_path` names an uploaded file that
        the job now owns (removed when it finishes). Raises QueueFull (503), RequestTooLarge (413)."""
        try:
            self.check_request_size(request)
            self.check_capacity()
        except (QueueFull, RequestTooLarge):
            remove_quietly(input_path)
            raise
        job_id = job_id or self.new_id()
        job: dict[str, Any] = {
            "id": job_id,
            "kind": kind,
            "status": "queued",
            "created_at": time.time(),
            "request": request,
            "input_path": str(input_path) if input_path else None,
            "input_name": input_name[:255] if input_name else None,
            "progress": 0.0,
            "frames_done": 0,
        }
        try:
            await self.store.insert(job)
        except BaseException:
            remove_quietly(input_path)
            raise
        self._enqueue(job_id)
        await self._prune(keep=(job_id,))
        return await self.get(job_id)

    def _enqueue(self, job_id: str) -> None:
        self._live[job_id] = _LiveJob(job_id)
        self._queue.append(job_id)
        self._wake.set()

    async def get(self, job_id: str) -> dict[str, Any]:
        job = await self.store.get(job_id)
        if job is None:
            raise JobNotFound(job_id)
        live = self._live.get(job_id)
        if live is not None and live.progress and job["status"] == "running":
            job.update(
                {
                    "progress": live.progress["fraction"],
                    "frames_done": live.progress["frames_done"],
                    "frames_planned": live.progress["frames_planned"],
                    "eta_seconds": live.progress["eta_seconds"],
                    "phase": live.progress["phase"],
                }
            )
        return job

    def failure(self, job_id: str) -> Exception | None:
        """Why a job failed, while it is still held (None once it is only on disk)."""
        live = self._live.get(job_id)
        return live.failure if live is not None else None

    async def list(self, limit: int, offset: int, status: str | None = None) -> tuple[list[dict[str, Any]], int]:
        return await self.store.list(limit, offset, status)

    async def wait(self, job_id: str, timeout: float) -> dict[str, Any]:
        live = self._live.get(job_id)
        if live is not None:
            try:
                await asyncio.wait_for(asyncio.shield(live.done.wait()), timeout)
            except TimeoutError:
                pass
        return await self.get(job_id)

    # -- cancel, delete, retry -------------------------------------------------------------------------

    async def cancel_or_delete(self, job_id: str) -> str:
        """Cancel a queued/running job ("cancelled"), or delete a finished one ("deleted")."""
        job = await self.store.get(job_id)
        if job is None:
            raise JobNotFound(job_id)
        if job["status"] in FINISHED:
            await self.store.delete(job_id)
            remove_quietly(job.get("input_path"))
            self._live.pop(job_id, None)
            return "deleted"
        live = self._live.get(job_id)
        if job_id in self._queue:
            self._queue.remove(job_id)
        await self.store.update(
            job_id, status="cancelled", finished_at=time.time(), eta_seconds=None, error="cancelled by request"
        )
        self.cancelled += 1
        if live is not None:
            live.cancel_requested = True
            if live.task is not None and not live.task.done():
                live.task.cancel()  # the job's own awaits raise; its thread ends its current frame
                try:  # the worker cleans up (input removed) within a frame's time
                    await asyncio.wait_for(asyncio.shield(live.done.wait()), 1.0)
                except TimeoutError:
                    log.warning("analysis job %s still winding down after cancel", job_id)
            else:
                remove_quietly(job.get("input_path"))
                live.done.set()
                self._forget_later(job_id)
            self._finish_subscribers(live, await self.store.get(job_id))
        return "cancelled"

    async def retry(self, job_id: str) -> dict[str, Any]:
        job = await self.store.get(job_id)
        if job is None:
            raise JobNotFound(job_id)
        if job["status"] not in ("interrupted", "failed", "cancelled"):
            raise JobConflict(
                f"job {job_id} is {job['status']}; only interrupted, failed or cancelled jobs are retried"
            )
        if job.get("input_path") and not Path(job["input_path"]).is_file():
            raise JobConflict(f"the uploaded file of job {job_id} is no longer kept; upload it again")
        self.check_capacity()
        await self.store.update(
            job_id,
            status="queued",
            started_at=None,
            finished_at=None,
            progress=0.0,
            frames_done=0,
            frames_planned=None,
            eta_seconds=None,
            phase=None,
            result=None,
            error=None,
        )
        self._enqueue(job_id)
        return await self.get(job_id)

    # -- running -------------------------------------------------------------------------------------

    async def _worker(self, index: int) -> None:
        while True:
            while not self._queue:
                self._wake.clear()
                await self._wake.wait()
            job_id = self._queue.popleft()
            live = self._live.get(job_id)
            if live is None or live.cancel_requested:
                continue
            live.task = asyncio.current_task()
            try:
                await self._run(job_id, live)
            except asyncio.CancelledError:
                if not live.cancel_requested:
                    raise  # the runner is stopping
                # a cancelled job: the worker goes on with the next one
                current = asyncio.current_task()
                if current is not None:
                    current.uncancel()
            except Exception:  # e.g. the database's disk is full: this job is lost, the worker is not
                log.exception("analysis worker %d: job %s could not be recorded", index, job_id)
                live.done.set()
            finally:
                live.task = None
                self._forget_later(job_id)

    async def _run(self, job_id: str, live: _LiveJob) -> None:
        job = await self.store.get(job_id)
        if job is None:
            return
        attempts = int(job.get("attempts") or 0) + 1
        await self.store.update(job_id, status="running", started_at=time.time(), attempts=attempts)
        self.running += 1
        executor = ThreadPoolExecutor(
            max_workers=self.settings.tag_threads,
            thread_name_prefix=f"analysis-{job_id[-6:]}",
            initializer=_lower_priority,
            initargs=(self.settings.niceness,),
        )
        download: Path | None = None
        upload = job.get("input_path")
        status, result, error = "failed", None, None
        try:
            if upload:
                input_path = upload
            else:
                download = self.settings.uploads_dir / f"{job_id}.download"
                live.progress = {
                    "fraction": 0.0,
                    "frames_done": 0,
                    "frames_planned": None,
                    "eta_seconds": None,
                    "phase": "downloading",
                }
                self._publish(live, "progress", live.progress)
                with self.transfer_budget() as cap:
                    await fetch_url(
                        job["request"]["video_url"],
                        download,
                        max_bytes=cap,
                        timeout=self.settings.fetch_timeout,
                        policy=self.outbound_policy,
                    )
                input_path = str(download)
            ctx = _Context(self, job, input_path, executor, threads=self.settings.tag_threads)
            result = await run_job(ctx, self.services, job["kind"], job["request"])
            status = "completed"
        except (JobFailed, InputError) as exc:
            error = getattr(exc, "message", None) or str(exc)
            live.failure = exc
        except asyncio.CancelledError:
            status = "cancelled"
            raise
        except Exception as exc:  # a bug or an unexpected decoder error: this job fails, the server carries on
            log.exception("analysis job %s failed", job_id)
            error = f"internal error: {type(exc).__name__}: {exc}"
            live.failure = exc
        finally:
            self.running -= 1
            executor.shutdown(wait=False, cancel_futures=True)
            remove_quietly(download)
            stopping = status == "cancelled" and not live.cancel_requested
            if upload and not stopping:
                remove_quietly(upload)  # the job owned its upload (kept only for a job the shutdown interrupted)
            if status != "cancelled":
                await self._finish(job_id, live, status, result, error)
            else:
                live.done.set()

    async def _finish(self, job_id: str, live: _LiveJob, status: str, result: Any, error: str | None) -> None:
        if live.cancel_requested:  # a cancel won the race with the job's last frame
            live.done.set()
            return
        if error is not None and len(error) > MAX_ERROR_CHARS:
            error = error[: MAX_ERROR_CHARS - 1] + "…"
        fields: dict[str, Any] = {"status": status, "finished_at": time.time(), "eta_seconds": None, "error": error}
        if status == "completed":
            self.completed += 1
            fields.update(result=result, progress=1.0)
            if live.progress:
                fields["frames_done"] = live.progress["frames_done"]
                fields["frames_planned"] = live.progress["frames_planned"]
        else:
            self.failed += 1
            log.info("analysis job %s failed: %s", job_id, error)
        await self.store.update(job_id, **fields)
        live.done.set()
        self._finish_subscribers(live, await self.store.get(job_id))
        await self._prune(keep=(job_id,))

    def _forget_later(self, job_id: str) -> None:
        """Finished jobs stay in memory (for `wait` and late event subscribers) only while they
        are among the last `_KEEP_FINISHED`; the database has the rest."""
        self._finished.append(job_id)
        while len(self._finished) > _KEEP_FINISHED:
            old = self._finished.popleft()
            live = self._live.get(old)
            if live is not None and live.done.is_set() and not live.subscribers:
                del self._live[old]

    def _progress(self, job_id: str, progress: dict[str, Any]) -> None:
        live = self._live.get(job_id)
        if live is None or live.cancel_requested:
            return
        live.progress = progress
        self._publish(live, "progress", progress)
        now = time.monotonic()
        if now - live.last_write >= _PROGRESS_WRITE_INTERVAL:
            live.last_write = now
            self._write(
                self.store.update(
                    job_id,
                    progress=progress["fraction"],
                    frames_done=progress["frames_done"],
                    frames_planned=progress["frames_planned"],
                    eta_seconds=progress["eta_seconds"],
                    phase=progress["phase"],
                )
            )

    def _write(self, coro) -> None:
        """A progress row update in the background (at most one per job per second)."""
        task = asyncio.get_running_loop().create_task(coro)
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    # -- events ----------------------------------------------------------------------------------------

    def subscribe(self, job_id: str) -> DropOldestMailbox | None:
        """A queue of (event, data) for a job that is still queued/running (None when it is not
        live here). Raises QueueFull when ANALYSIS_MAX_SUBSCRIBERS streams are open."""
        live = self._live.get(job_id)
        if live is None or live.done.is_set():
            return None
        if len(self._subscriptions) >= self.settings.max_subscribers:
            raise QueueFull(
                f"too many open job event streams (ANALYSIS_MAX_SUBSCRIBERS={self.settings.max_subscribers})"
            )
        queue: DropOldestMailbox = DropOldestMailbox(_SUBSCRIBER_QUEUE)
        live.subscribers.append(queue)
        self._subscriptions.add(queue)
        if live.progress:
            queue.put_nowait(("progress", live.progress))
        return queue

    def unsubscribe(self, job_id: str, queue: DropOldestMailbox) -> None:
        """Release a stream's place; also when its job was deleted or forgotten meanwhile."""
        self._subscriptions.discard(queue)
        live = self._live.get(job_id)
        if live is not None and queue in live.subscribers:
            live.subscribers.remove(queue)

    @staticmethod
    def _put(queue: DropOldestMailbox, item: Any) -> None:
        queue.offer(item)  # a slow reader: drop its oldest progress, keep the newest

    def _publish(self, live: _LiveJob, event: str, data: Any) -> None:
        for queue in live.subscribers:
            self._put(queue, (event, data))

    def _finish_subscribers(self, live: _LiveJob, job: dict[str, Any] | None) -> None:
        for queue in list(live.subscribers):
            if job is not None:
                self._put(queue, ("result", job))
            self._put(queue, ("end", None))

    # -- retention ----------------------------------------------------------------------------------------

    async def sweep(self) -> int:
        before = time.time() - self.settings.retention_days * 86400
        expired = await self.store.expired(before)
        for job in expired:
            await self.store.delete(job["id"])
            self._forget_row(job)
        surplus = await self._prune()
        if expired:
            log.info("removed %d analysis job(s) older than %g days", len(expired), self.settings.retention_days)
        return len(expired) + surplus

    async def _prune(self, keep: tuple[str, ...] = ()) -> int:
        """Hold the jobs table to ANALYSIS_MAX_JOBS rows and ANALYSIS_DB_BUDGET bytes (oldest
        finished first, their files too). A failure is logged: the job it follows is not lost."""
        try:
            removed = await self.store.prune(self.settings.max_jobs, self.settings.db_budget, keep)
        except Exception:
            log.exception("pruning the analysis jobs table failed")
            return 0
        for job in removed:
            self._forget_row(job)
        if removed:
            log.info(
                "removed %d finished analysis job(s) beyond ANALYSIS_MAX_JOBS=%d / ANALYSIS_DB_BUDGET=%d",
                len(removed),
                self.settings.max_jobs,
                self.settings.db_budget,
            )
        return len(removed)

    def _forget_row(self, job: dict[str, Any]) -> None:
        remove_quietly(job.get("input_path"))
        self._live.pop(job["id"], None)

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(_SWEEP_INTERVAL)
            try:
                await self.sweep()
            except Exception:
                log.exception("analysis retention sweep failed")

    def stats(self) -> dict[str, Any]:
        return {
            "queued": len(self._queue),
            "running": self.running,
            "workers": self.settings.workers,
            "max_queued": self.settings.max_queued,
            "completed": self.completed,
            "failed": self.failed,
            "cancelled": self.cancelled,
            "rejected_queue_full": self.rejected_full,
            "interrupted_at_start": self.interrupted_at_start,
            "event_streams": len(self._subscriptions),
            "transfer_bytes_reserved": self._reserved_bytes,
        }
