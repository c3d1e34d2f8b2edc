"""Issue 14: the OpenProtein v1 ESM-2 / ESM C ``embed`` and ``logits`` jobs run through the model's
batching scheduler (``ModelScheduler.run_sync``, principal ``owner/job id``), give the arrays of the
direct engine calls, drop a canceled job's queued units, and share the app's scheduler (one worker
per loaded model) with the HTTP routes; ``/ready`` also covers the job service's own schedulers.
"""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient

from plmserve.jobs import poet_v1 as v1
from plmserve.jobs.poet import ART_INPUT
from plmserve.jobs.service import JobService
from plmserve.jobs.store import CANCELED, SUCCESS
from plmserve.settings import Settings
from tests.serving.test_poet_scheduler import Plug, queued_for, wait_until

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py

SEQS = ["MKTAYIAKQRQISFVKSHFSRQ", "MRTAY", "ACDEFGHIKLMNPQRSTVWY", "MKTLLVAGA"]
MODEL = {"esm2": "esm2-8m", "esmc": "esmc-300m"}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from tests.api._esm2_tiny import make_tiny_esm2_dir

    root = tmp_path_factory.mktemp("models")
    make_tiny_esm2_dir(root, slug="esm2-8m")
    return root


@pytest.fixture(scope="module")
def engines(model_dir):
    from plmserve.models.registry import ModelManager
    from tests.models.esmc._fixture import engine as esmc_engine

    manager = ModelManager(Settings(model_dir=model_dir, device="cpu", dtype="float32", offline=True))
    return {"esm2": manager.get("esm2-8m", family="esm2"), "esmc": esmc_engine()}


class _Models:
    def __init__(self, engines):
        self.engines = engines

    def get(self, name, family=None):
        return self.engines[family]


@pytest.fixture
def service(tmp_path, engines):
    # no express lane: every unit goes to the main worker (the cancellation test holds it)
    svc = JobService(Settings(data_dir=tmp_path, workers=2, express_max_tokens=0), _Models(engines))
    svc.start()
    yield svc
    svc.stop()


def _submit(svc, kind, family, seqs, reduction=None, owner="alice"):
    rows = [[f"sequence-{i}", s] for i, s in enumerate(seqs, start=1)]
    args = {"model_id": MODEL[family], "model": MODEL[family], "family": family, "n_variants": len(rows)}
    if kind == v1.JOB_EMBED:
        args["reduction"] = reduction
    return svc.submit(kind, owner, args, num_records=len(rows), artifacts={ART_INPUT: json.dumps(rows).encode()})


def _arrays(svc, job, timeout=120.0):
    wait_until(lambda: svc.store.get_job(job.job_id).status in (SUCCESS, CANCELED, "FAILURE"), f"job {job.job_id}",
               timeout)
    rec = svc.store.get_job(job.job_id)
    assert rec.status == SUCCESS, rec.failure_message
    return v1.load_arrays(svc.store.get_artifact(job.job_id, v1.ART_ARRAYS))


@pytest.mark.parametrize("family", ["esm2", "esmc"])
def test_embed_and_logits_jobs_equal_the_direct_engine_calls_and_go_through_the_scheduler(service, engines, family):
    engine = engines[family]
    sched = service.resources.model_scheduler(MODEL[family], family, engine)
    assert service.resources.model_scheduler(MODEL[family], family, engine) is sched  # one per model
    before = sched.units_computed
    cases = [(v1.JOB_EMBED, None), (v1.JOB_EMBED, "MEAN"), (v1.JOB_LOGITS, None)]
    jobs = [_submit(service, kind, family, SEQS, reduction) for kind, reduction in cases]
    got = [_arrays(service, job) for job in jobs]
    assert sched.units_computed - before == len(cases) * len(SEQS)  # every sequence of every job, scheduled
    for (kind, reduction), arrays in zip(cases, got):
        direct = v1.esm_arrays(engine, SEQS, "embed" if kind == v1.JOB_EMBED else "logits", reduction, family)
        assert sorted(arrays) == list(range(len(SEQS)))
        for i, seq in enumerate(SEQS):
            assert arrays[i].dtype == np.float32 and arrays[i].shape == direct[i].shape
            np.testing.assert_allclose(arrays[i], direct[i], rtol=1e-5, atol=1e-5)
    # independent of esm_arrays: the engines' own outputs
    emb, mean, logits = got
    ref = engine.encode(SEQS, include=["logits"])
    for i, seq in enumerate(SEQS):
        assert emb[i].shape == (len(seq), engine.embed_dim) and mean[i].shape == (engine.embed_dim,)
        np.testing.assert_allclose(mean[i], emb[i].mean(axis=0), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(logits[i], ref[i]["logits"], rtol=1e-5, atol=1e-5)
    if family == "esm2":
        per_token = engine.encode(SEQS, include=["per_token"], repr_layers=[-1])
        for i in range(len(SEQS)):
            np.testing.assert_allclose(emb[i], next(iter(per_token[i]["representations"].values())),
                                       rtol=1e-5, atol=1e-5)


def test_a_canceled_jobs_queued_units_are_not_computed(service, engines):
    engine = engines["esm2"]
    sched = service.resources.model_scheduler("esm2-8m", "esm2", engine)
    plug = Plug(sched)
    plug.wait_running()
    job = _submit(service, v1.JOB_EMBED, "esm2", SEQS, "MEAN")
    principal = f"alice/{job.job_id}"  # owner/job id, as the PoET jobs
    wait_until(lambda: queued_for(sched, principal, "encode") == len(SEQS), "the job's units to be queued")
    before = sched.units_computed
    service.cancel(job.job_id, "alice")
    wait_until(lambda: queued_for(sched, "alice") == 0, "the canceled job's units to be dropped")
    plug.release()
    wait_until(lambda: not service.executor._running, "the job thread to end")
    time.sleep(0.2)
    assert sched.units_computed == before + 1  # the plug only; none of the job's units
    assert service.store.get_job(job.job_id).status == CANCELED
    assert service.store.get_artifact(job.job_id, v1.ART_ARRAYS) is None


def test_a_job_survives_its_models_scheduler_being_stopped(service, engines):
    """The model was evicted (its scheduler stopped, queued units failed) while the job waited:
    the job reloads the model and finishes on a new scheduler instead of failing."""
    engine = engines["esmc"]
    sched = service.resources.model_scheduler("esmc-300m", "esmc", engine)
    plug = Plug(sched)
    plug.wait_running()
    job = _submit(service, v1.JOB_LOGITS, "esmc", SEQS)
    wait_until(lambda: queued_for(sched, f"alice/{job.job_id}") == len(SEQS), "the job's units to be queued")
    sched.stop(timeout=0)
    arrays = _arrays(service, job)
    plug.release()
    fresh = service.resources.model_scheduler("esmc-300m", "esmc", engine)
    assert fresh is not sched and fresh.alive() and fresh.units_computed == len(SEQS)
    direct = v1.esm_arrays(engine, SEQS, "logits", None, "esmc")
    for i in range(len(SEQS)):
        np.testing.assert_allclose(arrays[i], direct[i], rtol=1e-5, atol=1e-5)


def test_jobs_share_the_apps_scheduler_and_ready_covers_the_job_schedulers(tmp_path, model_dir):
    from plmserve.api.app import create_app
    from plmserve.api.openprotein import get_service

    settings = Settings(data_dir=tmp_path / "data", model_dir=model_dir, device="cpu", dtype="float32",
                        offline=True, api_keys=["admin-key"])
    app = create_app(settings)
    with TestClient(app) as client:
        svc = get_service(app)
        r = client.post("/api/v2/esm2-8m/encode/", json={"items": [{"sequence": "MKTAY"}]},
                        headers={"Authorization": "Token admin-key"})
        assert r.status_code == 200, r.text
        engine = app.state.models.get("esm2-8m", family="esm2")
        sched = app.state.schedulers["esm2-8m"]  # created by the HTTP route
        assert svc.resources.model_scheduler("esm2_t6_8M_UR50D", "esm2", engine) is sched
        before = sched.units_computed
        arrays = _arrays(svc, _submit(svc, v1.JOB_LOGITS, "esm2", SEQS[:2], owner="local"))
        assert sched.units_computed - before == 2 and len(arrays) == 2
        assert sum(t.name == "plmserve-batcher-esm2-8m" for t in threading.enumerate()) == 1

        ready = client.get("/ready", headers={"Authorization": "Token admin-key"})
        assert ready.status_code == 200 and ready.json()["checks"]["batch_workers"] == "ok", ready.text
        poet = svc.resources.schedulers.get(object(), "poet")  # a PoET scheduler of the job service
        poet.stop()  # its worker ended: not ready
        ready = client.get("/ready", headers={"Authorization": "Token admin-key"})
        assert ready.status_code == 503 and ready.json()["checks"]["batch_workers"] == "stopped: poet (jobs)"
