"""``JobService``: the job store plus an executor running the PoET/align work functions.

One per server process (the OpenProtein API creates it on first use and starts it from the app's
start-up hook). Usable from a notebook too::

    from plmserve.jobs.service import JobService
    svc = JobService(Settings(data_dir="/tmp/plm"), models)
    svc.start()
    job = svc.submit("/poet", "local", {"prompt_id": ...}, artifacts={...})
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Mapping

from plmserve.jobs.executor import Executor, Handler, InProcessExecutor
from plmserve.jobs.poet import PoetResources, handlers as poet_handlers
from plmserve.jobs.store import PENDING, JobRecord, JobStore

logger = logging.getLogger(__name__)


class JobService:
    """Store + executor.

    Args:
        settings: :class:`plmserve.settings.Settings` (``database_url``/``data_dir``, ``workers``).
        models: the model manager shared with the HTTP routes (PoET engine ``poet``).
        store: an open store (default: :meth:`JobStore.from_settings`).
        executor: an executor (default: an :class:`InProcessExecutor` with ``settings.workers``
            threads running :func:`plmserve.jobs.poet.handlers`).
        extra_handlers: more ``job_type -> handler`` entries for the default executor.
        app: the FastAPI app serving this service: the in-process jobs then share its ESM-2 /
            ESM C batching schedulers with the HTTP routes (one worker per loaded model).
    """

    def __init__(self, settings: Any, models: Any = None, *, store: JobStore | None = None,
                 executor: Executor | None = None, extra_handlers: Mapping[str, Handler] | None = None,
                 app: Any = None):
        self.settings = settings
        self.models = models
        self.store = store or JobStore.from_settings(settings)
        if executor is None and getattr(settings, "executor", "inprocess") == "ray":  # issue 11: Ray
            from plmserve.jobs.ray_executor import RayExecutor

            executor = RayExecutor(self.store, settings)
        self.resources = PoetResources(settings, models, app=app)
        if executor is None:
            handlers = dict(poet_handlers())
            handlers.update(extra_handlers or {})
            executor = InProcessExecutor(self.store, handlers, workers=max(1, int(getattr(settings, "workers", 1))),
                                         resources=self.resources,
                                         max_attempts=int(getattr(settings, "job_max_attempts", 3) or 0) or None)
        self.executor = executor
        self._lock = threading.Lock()
        self._started = False

    def start(self) -> None:
        """Start the executor (re-queues PENDING and RUNNING jobs of a previous run). Idempotent."""
        with self._lock:
            if self._started:
                return
            self._started = True
        self.executor.start()

    def stop(self) -> None:
        """Stop the executor (running jobs are interrupted and re-run after the next start) and
        close the database connections."""
        with self._lock:
            if not self._started:
                self.store.close()
                return
            self._started = False
        self.executor.stop(wait=True)
        self.resources.close()  # the PoET (and app-less ESM) batching schedulers (issue 14)
        self.store.close()

    def submit(self, job_type: str, owner: str, args: Mapping[str, Any], *,
               artifacts: Mapping[str, bytes] | None = None, parent_id: str | None = None,
               prerequisite_job_id: str | None = None, num_records: int | None = None) -> JobRecord:
        """Create a PENDING job and queue it (it starts once its prerequisite succeeded)."""
        job = self.store.create_job(job_type, owner, args, status=PENDING, parent_id=parent_id,
                                    prerequisite_job_id=prerequisite_job_id, artifacts=artifacts,
                                    num_records=num_records)
        self.start()
        self.executor.submit(job.job_id)
        return job

    def cancel(self, job_id: str, owner: str | None = None) -> JobRecord:
        """Cancel a PENDING/RUNNING job (404 for another owner's job, 409 when already done)."""
        job = self.store.cancel(job_id, owner)
        self.executor.cancel(job_id)
        return job
