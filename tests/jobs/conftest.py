"""Fixtures of the job-service tests (defined in tests/client/support.py)."""

from tests.client.support import postgres_url  # noqa: F401  (pytest fixture)
