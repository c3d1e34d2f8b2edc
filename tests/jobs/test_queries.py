"""Prompt-service queries in the job store (migration 0009), on SQLite and PostgreSQL."""

from __future__ import annotations

import uuid

import pytest

from plmserve.errors import NotFoundError
from plmserve.jobs.queries import add_query, get_query
from plmserve.jobs.store import JobStore


def _roundtrip(store: JobStore) -> None:
    q = add_query(store, "user:alice", "query.fasta", "text/x-fasta", b">q\nMKT\n")
    assert str(uuid.UUID(q.query_id, version=4)) == q.query_id
    got = get_query(store, q.query_id, "user:alice")
    assert (got.content, got.content_type, got.filename) == (b">q\nMKT\n", "text/x-fasta", "query.fasta")
    assert got.created_date.tzinfo is not None
    with pytest.raises(NotFoundError):
        get_query(store, q.query_id, "user:bob")
    with pytest.raises(NotFoundError):
        get_query(store, str(uuid.uuid4()))


def test_queries_sqlite(tmp_path):
    store = JobStore(f"sqlite:///{tmp_path}/q.db")
    try:
        _roundtrip(store)
    finally:
        store.close()


@pytest.mark.postgres
def test_queries_postgres(postgres_url):
    store = JobStore(postgres_url)
    try:
        _roundtrip(store)
    finally:
        store.close()
