"""Background jobs: long work (Score-CAM, PCA, many images) runs off the request, reports
progress that a page polls, and can be cancelled.

Jobs have their own small pool of threads, apart from the workers that answer ``/check`` and
``/classify``, so an interactive request never waits behind a job. At most ``max_pending``
jobs are waiting or running at once; past that, :meth:`JobManager.submit` raises
:class:`~belka.server.guard.ServiceBusy` (429, with the limit in the message). A job stays
addressable (listed, polled, cancelled) until it has ended; of the ended ones the newest
``keep`` are remembered for their results.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

from .guard import ServiceBusy

QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
ACTIVE = (QUEUED, RUNNING)


class Cancelled(Exception):
    """Raised inside a job's work when its cancel was requested."""


@dataclass
class Job:
    """One unit of background work; ``progress(done, total)`` raises :class:`Cancelled`
    once a cancel has been asked for, so work stops at its next step."""

    id: str
    kind: str
    status: str = QUEUED
    done: int = 0
    total: int = 0
    result: Any = None
    error: str | None = None
    created_at: float = field(default_factory=time.time)
    _cancel: threading.Event = field(default_factory=threading.Event, repr=False)

    def progress(self, done: int, total: int) -> None:
        self.done, self.total = done, total
        if self._cancel.is_set():
            raise Cancelled()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "status": self.status, "done": self.done,
                "total": self.total, "error": self.error, "created_at": self.created_at,
                "result_url": f"/api/v1/jobs/{self.id}/result" if self.status == DONE else None}


class JobManager:
    """Runs jobs on a pool of ``workers`` threads of their own, with at most ``max_pending``
    queued or running; remembers the newest ``keep`` ended jobs."""

    def __init__(self, workers: int = 1, max_pending: int = 32, keep: int = 200):
        self.workers, self.max_pending, self.keep = workers, max_pending, keep
        self.executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="belka-job")
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._lock = threading.Lock()

    def submit(self, kind: str, work: Callable[[Job], Any]) -> Job:
        """Queue ``work(job)``; raises ServiceBusy (429) when ``max_pending`` jobs are already
        queued or running."""
        job = Job(uuid.uuid4().hex, kind)
        with self._lock:
            active = sum(1 for j in self._jobs.values() if j.status in ACTIVE)
            if active >= self.max_pending:
                raise ServiceBusy(
                    f"too many background jobs: {active} are queued or running and the limit "
                    f"is {self.max_pending}; wait for one to end (GET /api/v1/jobs) or cancel "
                    "one", status=429, kind="too_many_jobs", retry_after=5)
            self._jobs[job.id] = job
            self._forget_ended()
        try:
            self.executor.submit(self._run, job, work)
        except RuntimeError:  # the pool is shut down: the server is stopping
            job.status, job.error = FAILED, "the server is shutting down"
        return job

    def _run(self, job: Job, work: Callable[[Job], Any]) -> None:
        if job.cancelled:
            job.status = CANCELLED
            return
        job.status = RUNNING
        try:
            job.result = work(job)
            job.status = DONE
        except Cancelled:
            job.status = CANCELLED
        except ServiceBusy as err:
            job.status, job.error = FAILED, err.message
        except Exception as err:  # reported to the client through the job's status
            job.status, job.error = FAILED, getattr(err, "message", None) or str(err)
        finally:
            with self._lock:
                self._forget_ended()

    def _forget_ended(self) -> None:
        """Keep every active job and the newest ``keep`` ended ones (lock held)."""
        ended = [key for key, j in self._jobs.items() if j.status not in ACTIVE]
        for key in ended[:max(0, len(ended) - self.keep)]:
            del self._jobs[key]

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    def list(self, *, active_only: bool = False) -> list[Job]:
        """Jobs known now, oldest first."""
        with self._lock:
            return [j for j in self._jobs.values() if not active_only or j.status in ACTIVE]

    def cancel(self, job_id: str) -> Job | None:
        job = self.get(job_id)
        if job is not None and job.status in ACTIVE:
            job._cancel.set()
            if job.status == QUEUED:
                job.status = CANCELLED
        return job

    def close(self) -> None:
        for job in self.list(active_only=True):
            job._cancel.set()
        self.executor.shutdown(wait=False, cancel_futures=True)
