"""Background jobs: long work (Score-CAM, many images) runs off the request, reports progress
that a page polls, and can be cancelled."""

from __future__ import annotations

import threading
import time
import uuid
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, Callable

QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"


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

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "status": self.status, "done": self.done,
                "total": self.total, "error": self.error,
                "result_url": f"/api/v1/jobs/{self.id}/result" if self.status == DONE else None}


class JobManager:
    """Runs jobs on the inference executor; keeps the most recent ``keep`` of them."""

    def __init__(self, executor: Executor, keep: int = 200):
        self.executor, self.keep = executor, keep
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()

    def submit(self, kind: str, work: Callable[[Job], Any]) -> Job:
        job = Job(uuid.uuid4().hex, kind)
        with self._lock:
            self._jobs[job.id] = job
            while len(self._jobs) > self.keep:
                self._jobs.pop(next(iter(self._jobs)))

        def run() -> None:
            if job._cancel.is_set():
                job.status = CANCELLED
                return
            job.status = RUNNING
            try:
                job.result = work(job)
                job.status = DONE
            except Cancelled:
                job.status = CANCELLED
            except Exception as err:  # reported to the client through the job's status
                job.status, job.error = FAILED, str(err)

        self.executor.submit(run)
        return job

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    def cancel(self, job_id: str) -> Job | None:
        job = self.get(job_id)
        if job is not None and job.status in (QUEUED, RUNNING):
            job._cancel.set()
            if job.status == QUEUED:
                job.status = CANCELLED
        return job
