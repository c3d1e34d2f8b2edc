"""Prompt-service queries (PoET-2 ``query=``; ``openprotein-v1-api.md`` §5.6): a FASTA or mmCIF
file stored per owner under a lowercase UUIDv4 id, in the ``prompt_queries`` table (migration
0009). Like jobs, a query of another owner is reported as not found.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Column, DateTime, LargeBinary, MetaData, String, Table, insert, select

from plmserve.errors import NotFoundError
from plmserve.jobs.models import utcnow
from plmserve.jobs.store import JobStore, _aware

_meta = MetaData()
prompt_queries = Table(
    "prompt_queries", _meta,
    Column("query_id", String(36), primary_key=True),
    Column("owner", String(200), nullable=False, index=True),
    Column("created_date", DateTime(timezone=True), nullable=False),
    Column("filename", String(255), nullable=False),
    Column("content_type", String(100), nullable=False),
    Column("content", LargeBinary, nullable=False),
)


@dataclass(frozen=True)
class QueryRecord:
    """One stored query: ``query_id`` (canonical lowercase UUIDv4), its file and media type."""

    query_id: str
    owner: str
    created_date: datetime
    filename: str
    content_type: str
    content: bytes


def add_query(store: JobStore, owner: str, filename: str, content_type: str, content: bytes) -> QueryRecord:
    """Store a query file for ``owner``; returns it with a new ``str(uuid.uuid4())`` id."""
    rec = QueryRecord(str(uuid.uuid4()), owner, utcnow(), filename, content_type, bytes(content))
    with store.engine.begin() as conn:
        conn.execute(insert(prompt_queries).values(
            query_id=rec.query_id, owner=owner, created_date=rec.created_date, filename=filename,
            content_type=content_type, content=rec.content))
    return rec


def get_query(store: JobStore, query_id: str, owner: str | None = None) -> QueryRecord:
    """The query ``query_id`` (of ``owner`` when given).

    Raises:
        NotFoundError: unknown id, or another owner's query (404).
    """
    with store.engine.connect() as conn:
        row = conn.execute(select(prompt_queries).where(prompt_queries.c.query_id == str(query_id))).first()
    if row is None or (owner is not None and row.owner != owner):
        raise NotFoundError(f"query {query_id} not found")
    return QueryRecord(row.query_id, row.owner, _aware(row.created_date), row.filename,  # type: ignore[arg-type]
                       row.content_type, bytes(row.content))
