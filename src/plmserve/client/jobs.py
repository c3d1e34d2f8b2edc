"""Jobs in the SDK: the ``Job`` model, ``JobsAPI`` (``session.jobs``) and the future base class.

Mirrors the OpenProtein SDK 0.2 (``poet-api.md`` §4.1-4.2): ``Job.wait`` polls
``GET v1/jobs/{id}`` until the job is SUCCESS, FAILURE or CANCELED; futures expose ``refresh``,
``status``, ``progress``, ``num_records``, ``done``, ``cancelled``, ``id``, ``wait`` and
``wait_until_done``. Unlike SDK 0.2, a failed job raises
:class:`~plmserve.client.errors.JobFailedException` from ``wait``/``get`` (with the server's
``failure_message``) instead of failing later while parsing.
"""

from __future__ import annotations

import time
from datetime import datetime
from enum import Enum
from typing import Any, Optional

from pydantic import BaseModel, ConfigDict

from plmserve.client.base import APISession
from plmserve.client.errors import JobFailedException, TimeoutException

POLLING_INTERVAL = 1.0
POLLING_TIMEOUT = 900


class JobStatus(str, Enum):
    """Job states; SUCCESS, FAILURE and CANCELED are final."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCESS = "SUCCESS"
    FAILURE = "FAILURE"
    RETRYING = "RETRYING"
    CANCELED = "CANCELED"

    def done(self) -> bool:
        return self in (JobStatus.SUCCESS, JobStatus.FAILURE, JobStatus.CANCELED)

    def cancelled(self) -> bool:
        return self is JobStatus.CANCELED


class Job(BaseModel):
    """A job as the server reports it (extra fields such as ``msa_id``/``prompt_id`` are kept)."""

    model_config = ConfigDict(extra="allow", protected_namespaces=())

    job_id: str
    job_type: str
    status: JobStatus
    created_date: Optional[datetime] = None
    start_date: Optional[datetime] = None
    end_date: Optional[datetime] = None
    prerequisite_job_id: Optional[str] = None
    progress_message: Optional[str] = None
    progress_counter: Optional[int] = 0
    num_records: Optional[int] = None
    failure_message: Optional[str] = None
    parent_id: Optional[str] = None

    def refresh(self, session: APISession) -> "Job":
        """The job's current state from the server."""
        return job_get(session, self.job_id)

    def done(self) -> bool:
        return self.status.done()

    def cancelled(self) -> bool:
        return self.status.cancelled()

    def wait(self, session: APISession, interval: float | None = None, timeout: float | None = None,
             verbose: bool = False) -> "Job":
        """Poll until the job is done; returns the final job.

        Raises:
            TimeoutException: ``timeout`` seconds passed first.
        """
        interval = session.poll_interval if interval is None else interval
        start = time.monotonic()
        job = self.refresh(session)
        bar = None
        if verbose:
            from rich.progress import Progress

            bar = Progress(transient=True)
            bar.start()
            task = bar.add_task(f"job {self.job_id}", total=100)
        try:
            while not job.done():
                if timeout is not None and time.monotonic() - start >= timeout:
                    raise TimeoutException(
                        f"Wait time exceeded timeout {timeout}, waited {time.monotonic() - start:.1f}")
                if bar is not None:
                    bar.update(task, completed=job.progress_counter or 0, description=f"{job.status.value}")
                time.sleep(interval)
                job = job.refresh(session)
        finally:
            if bar is not None:
                bar.stop()
        return job


def job_get(session: APISession, job_id: str) -> Job:
    """``GET v1/jobs/{job_id}``."""
    return Job(**session.get(f"v1/jobs/{job_id}").json())


def job_args_get(session: APISession, job_id: str) -> dict[str, Any]:
    """``GET v1/jobs/{job_id}/args``."""
    return dict(session.get(f"v1/jobs/{job_id}/args").json())


class JobsAPI:
    """``session.jobs``: list, get, wait for and cancel jobs."""

    def __init__(self, session: APISession):
        self.session = session

    def list(self, status: str | None = None, job_type: str | None = None, assay_id: str | None = None,
             more_recent_than: str | datetime | None = None, page_size: int | None = None,
             page_offset: int = 0) -> list[Job]:
        """The caller's jobs, newest first."""
        params: dict[str, Any] = {"page_offset": page_offset}
        for k, v in (("status", status), ("job_type", job_type), ("assay_id", assay_id),
                     ("page_size", page_size)):
            if v is not None:
                params[k] = v.value if isinstance(v, Enum) else v
        if more_recent_than is not None:
            params["more_recent_than"] = (more_recent_than.isoformat() if isinstance(more_recent_than, datetime)
                                          else more_recent_than)
        return [Job(**j) for j in self.session.get("v1/jobs", params=params).json()]

    def get(self, job_id: str) -> Job:
        """One job by id (APIError 404 for unknown or another user's job)."""
        return job_get(self.session, job_id)

    def args(self, job_id: str) -> dict[str, Any]:
        """The job's registered arguments."""
        return job_args_get(self.session, job_id)

    def cancel(self, job_id: str) -> Job:
        """Cancel a PENDING/RUNNING job (APIError 409 when it is already done)."""
        return Job(**self.session.post(f"v1/jobs/{job_id}/cancel").json())

    def wait(self, job: Job | str, interval: float | None = None, timeout: float | None = None,
             verbose: bool = False) -> Job:
        """Wait for a job (object or id) to finish; returns the final job."""
        if isinstance(job, str):
            job = job_get(self.session, job)
        return job.wait(self.session, interval=interval, timeout=timeout, verbose=verbose)


class AsyncJobFuture:
    """A submitted job whose results can be fetched when it is done."""

    def __init__(self, session: APISession, job: Job | str):
        if isinstance(job, str):
            job = job_get(session, job)
        self.session = session
        self.job = job

    def __repr__(self) -> str:
        return f"{type(self).__name__}(job_id={self.job.job_id!r}, status={self.job.status.value})"

    @property
    def id(self) -> str:
        return self.job.job_id

    def refresh(self) -> None:
        """Update ``self.job`` from the server."""
        self.job = self.job.refresh(self.session)

    @property
    def status(self) -> JobStatus:
        return self.job.status

    @property
    def progress(self) -> int:
        return self.job.progress_counter or 0

    @property
    def num_records(self) -> int | None:
        return self.job.num_records

    def done(self) -> bool:
        return self.job.done()

    def cancelled(self) -> bool:
        return self.job.cancelled()

    def cancel(self) -> None:
        """Ask the server to cancel the job."""
        self.job = JobsAPI(self.session).cancel(self.job.job_id)

    def get(self, verbose: bool = False) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def _raise_if_failed(self) -> None:
        if self.job.status in (JobStatus.FAILURE, JobStatus.CANCELED):
            raise JobFailedException(self.job.job_id, self.job.failure_message, self.job.status.value)

    def wait_until_done(self, interval: float | None = None, timeout: float | None = None,
                        verbose: bool = False) -> bool:
        """Wait for the job to finish without fetching results; returns ``done()``."""
        self.job = self.job.wait(self.session, interval=interval, timeout=timeout, verbose=verbose)
        return self.done()

    def wait(self, interval: float | None = None, timeout: float | None = None, verbose: bool = False) -> Any:
        """Wait for the job, then return :meth:`get`.

        Raises:
            TimeoutException: ``timeout`` passed.
            JobFailedException: the job ended FAILURE or CANCELED.
        """
        self.wait_until_done(interval=interval, timeout=timeout, verbose=verbose)
        self._raise_if_failed()
        return self.get(verbose=verbose)


class StreamingAsyncJobFuture(AsyncJobFuture):
    """A future whose results are streamed (``get()`` = ``list(stream())``)."""

    def stream(self):  # pragma: no cover - abstract
        raise NotImplementedError

    def get(self, verbose: bool = False) -> list:
        """The whole result as a list (the items of :meth:`stream`)."""
        return list(self.stream())
