"""Fixtures of the Ray cluster tests: one local Ray cluster for the session (a head with 1 CPU
and a second node process with 1 CPU, on 127.0.0.1), stopped afterwards even on failure."""

from __future__ import annotations

import pytest

from tests.client.support import postgres_url  # noqa: F401  (pytest fixture)
from tests.cluster.support import LocalRayCluster, ray_available

pytestmark = pytest.mark.ray


@pytest.fixture(scope="session")
def ray_cluster():
    if not ray_available():
        pytest.skip("Ray is not installed (pip install -e '.[dev]' installs it; CI does)")
    cluster = LocalRayCluster(head_cpus=1)
    try:
        cluster.start()
        cluster.add_node(num_cpus=1)
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def ray_driver(ray_cluster):
    """This test process connected to the cluster as a Ray driver (namespace ``plmserve``)."""
    import os

    import ray

    os.environ["RAY_AUTH_MODE"] = "disabled"  # as the cluster (tests.cluster.support.cluster_env)
    ray.init(address=ray_cluster.address, namespace="plmserve", log_to_driver=False)
    yield ray
    ray.shutdown()
