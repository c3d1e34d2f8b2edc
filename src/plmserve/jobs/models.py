"""SQLAlchemy 2 ORM tables of the job service: users, access tokens, jobs and job artifacts.

The schema is created and upgraded by the Alembic migrations shipped in
``plmserve/jobs/migrations`` (never by ``metadata.create_all``), so SQLite files and PostgreSQL
databases carry the same, versioned schema.

Job fields follow the OpenProtein ``Job`` model (spec ``poet-api.md`` §3): ``job_id`` (UUID
string), ``job_type`` (e.g. ``/align/align``, ``/poet``), ``status`` (PENDING, RUNNING, SUCCESS,
FAILURE, CANCELED), created/start/end dates, ``progress_counter`` (0..100), ``num_records``,
``failure_message``, ``args`` (JSON), the owner, and the lineage (``parent_id``: the job whose
output this job consumes; ``prerequisite_job_id``: the job that must succeed before this one runs).

Results are stored as :class:`JobArtifact` rows (bytes), written in the same transaction that
marks the job SUCCESS, so a result is either complete or absent.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import JSON, DateTime, ForeignKey, Integer, LargeBinary, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> datetime:
    """Timezone-aware current UTC time."""
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    """Declarative base of the job-service tables."""


class User(Base):
    """A person who logs in with a password and owns jobs."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(100), unique=True, nullable=False)
    password_hash: Mapped[str] = mapped_column(String(255), nullable=False)
    created_date: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, nullable=False)


class AccessToken(Base):
    """A bearer token issued by ``v1/login/user-access-token``; only its SHA-256 is stored."""

    __tablename__ = "access_tokens"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), nullable=False, index=True)
    created_date: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, nullable=False)
    expires_date: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class Job(Base):
    """One unit of asynchronous work (MSA search, prompt sampling, scoring, generation)."""

    __tablename__ = "jobs"

    job_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    job_type: Mapped[str] = mapped_column(String(64), nullable=False, index=True)
    status: Mapped[str] = mapped_column(String(16), nullable=False, index=True)
    owner: Mapped[str] = mapped_column(String(200), nullable=False, index=True)
    created_date: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, nullable=False)
    start_date: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    end_date: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    progress_counter: Mapped[int | None] = mapped_column(Integer, nullable=True)
    progress_message: Mapped[str | None] = mapped_column(Text, nullable=True)
    num_records: Mapped[int | None] = mapped_column(Integer, nullable=True)
    failure_message: Mapped[str | None] = mapped_column(Text, nullable=True)
    args: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False, default=dict)
    parent_id: Mapped[str | None] = mapped_column(String(36), nullable=True, index=True)
    prerequisite_job_id: Mapped[str | None] = mapped_column(String(36), nullable=True, index=True)
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0)


class JobArtifact(Base):
    """A named blob belonging to a job: an uploaded input (``raw``) or a result (``result``)."""

    __tablename__ = "job_artifacts"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.job_id", ondelete="CASCADE"), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    content: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)
    created_date: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, nullable=False)
