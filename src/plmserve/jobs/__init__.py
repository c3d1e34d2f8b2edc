"""The job service: a durable job store (SQLAlchemy 2 + Alembic; SQLite or PostgreSQL) and
executors that run jobs (an in-process worker pool by default).

- :mod:`plmserve.jobs.models` -- the ORM tables (users, tokens, jobs, artifacts).
- :mod:`plmserve.jobs.store` -- :class:`JobStore`: every read and write, in short transactions.
- :mod:`plmserve.jobs.executor` -- :class:`Executor` interface and :class:`InProcessExecutor`.
- :mod:`plmserve.jobs.poet` -- the PoET/align job types and their work functions.
- :mod:`plmserve.jobs.service` -- :class:`JobService`: store + executor + handlers for a server.
"""

from plmserve.jobs.executor import (
    Executor,
    InProcessExecutor,
    JobCanceled,
    JobContext,
    JobInterrupted,
    JobOutput,
)
from plmserve.jobs.store import (
    CANCELED,
    DONE_STATUSES,
    FAILURE,
    PENDING,
    RUNNING,
    SUCCESS,
    JobRecord,
    JobStore,
    UserRecord,
    user_owner,
)

__all__ = [
    "CANCELED", "DONE_STATUSES", "FAILURE", "PENDING", "RUNNING", "SUCCESS",
    "Executor", "InProcessExecutor", "JobCanceled", "JobContext", "JobInterrupted", "JobOutput",
    "JobRecord", "JobStore", "UserRecord", "user_owner",
]
