"""The durable job store: users, access tokens, jobs and their artifacts in SQLite or PostgreSQL.

``JobStore(url)`` opens (and migrates, with Alembic) the database at ``url``:

- the embedded default is a SQLite file in the data directory
  (``sqlite:///<data_dir>/plmserve.db``, see :meth:`plmserve.settings.Settings.resolved_database_url`);
- PostgreSQL is selected by URL, e.g.
  ``PLMSERVE_DATABASE_URL=postgresql+psycopg://user:pw@host:5432/plmserve``.

Every method runs in its own short transaction and returns plain snapshots
(:class:`JobRecord`, :class:`UserRecord`), so the store is safe to share between threads.
State changes of a job are conditional updates (``... WHERE status = 'RUNNING'``): a job that was
canceled while it ran is never turned into SUCCESS, and a result is written together with the
SUCCESS status in one transaction (a job's result is complete or absent, never partial).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import threading
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterable, Mapping

from sqlalchemy import create_engine, delete, event, func, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from plmserve.errors import (
    ConflictError,
    InvalidParameterError,
    NotFoundError,
)
from plmserve.jobs.models import AccessToken, Job, JobArtifact, User, utcnow

logger = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"

PENDING, RUNNING, SUCCESS, FAILURE, CANCELED = "PENDING", "RUNNING", "SUCCESS", "FAILURE", "CANCELED"
JOB_STATUSES = (PENDING, RUNNING, SUCCESS, FAILURE, "RETRYING", CANCELED)
DONE_STATUSES = frozenset({SUCCESS, FAILURE, CANCELED})

TOKEN_LIFETIME = timedelta(days=30)
_SCRYPT_N, _SCRYPT_R, _SCRYPT_P = 2**14, 8, 1


def _aware(dt: datetime | None) -> datetime | None:
    """SQLite returns naive datetimes; everything stored is UTC."""
    if dt is not None and dt.tzinfo is None:
        return dt.replace(tzinfo=timezone.utc)
    return dt


@dataclass(frozen=True)
class JobRecord:
    """A snapshot of one job row (see :class:`plmserve.jobs.models.Job` for the fields)."""

    job_id: str
    job_type: str
    status: str
    owner: str
    created_date: datetime
    start_date: datetime | None
    end_date: datetime | None
    progress_counter: int | None
    progress_message: str | None
    num_records: int | None
    failure_message: str | None
    args: dict[str, Any]
    parent_id: str | None
    prerequisite_job_id: str | None
    attempts: int = 0

    @property
    def done(self) -> bool:
        """SUCCESS, FAILURE or CANCELED."""
        return self.status in DONE_STATUSES

    def to_wire(self) -> dict[str, Any]:
        """The OpenProtein ``Job`` JSON (spec §3), ISO-8601 UTC dates, plus ``failure_message``,
        ``parent_id`` and ``args`` (extra fields newer SDKs keep)."""

        def iso(dt: datetime | None) -> str | None:
            return dt.isoformat() if dt is not None else None

        return {
            "job_id": self.job_id,
            "job_type": self.job_type,
            "status": self.status,
            "created_date": iso(self.created_date),
            "start_date": iso(self.start_date),
            "end_date": iso(self.end_date),
            "prerequisite_job_id": self.prerequisite_job_id,
            "progress_message": self.progress_message,
            "progress_counter": self.progress_counter,
            "num_records": self.num_records,
            "failure_message": self.failure_message,
            "parent_id": self.parent_id,
            "args": dict(self.args),
        }


def _snapshot(job: Job) -> JobRecord:
    return JobRecord(
        job_id=job.job_id,
        job_type=job.job_type,
        status=job.status,
        owner=job.owner,
        created_date=_aware(job.created_date),  # type: ignore[arg-type]
        start_date=_aware(job.start_date),
        end_date=_aware(job.end_date),
        progress_counter=job.progress_counter,
        progress_message=job.progress_message,
        num_records=job.num_records,
        failure_message=job.failure_message,
        args=dict(job.args or {}),
        parent_id=job.parent_id,
        prerequisite_job_id=job.prerequisite_job_id,
        attempts=job.attempts or 0,
    )


@dataclass(frozen=True)
class UserRecord:
    """A user: ``id``, ``name``, ``created_date``. ``owner`` is the string jobs are owned by."""

    id: int
    name: str
    created_date: datetime
    owner: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "owner", user_owner(self.name))


def user_owner(name: str) -> str:
    """The owner string of a user's jobs (``user:<name>``)."""
    return f"user:{name}"


def hash_password(password: str) -> str:
    """scrypt (RFC 7914, via :func:`hashlib.scrypt`) with a random 16-byte salt.

    Returns ``scrypt$<n>$<r>$<p>$<salt hex>$<hash hex>``.
    """
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=_SCRYPT_N, r=_SCRYPT_R, p=_SCRYPT_P, dklen=32)
    return f"scrypt${_SCRYPT_N}${_SCRYPT_R}${_SCRYPT_P}${salt.hex()}${digest.hex()}"


def verify_password(password: str, stored: str) -> bool:
    """True when ``password`` matches a :func:`hash_password` string (constant-time compare)."""
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
    except ValueError:
        return False
    if scheme != "scrypt":
        return False
    test = hashlib.scrypt(password.encode(), salt=bytes.fromhex(salt), n=int(n), r=int(r), p=int(p),
                          dklen=len(digest) // 2)
    return hmac.compare_digest(test.hex(), digest)


_REFRESH_PREFIX = "refresh:"
_DUMMY_HASH: list[str] = []


def _dummy_hash() -> str:
    """A fixed scrypt hash (computed once) that unknown users' passwords are checked against."""
    if not _DUMMY_HASH:
        _DUMMY_HASH.append(hash_password(secrets.token_urlsafe(16)))
    return _DUMMY_HASH[0]


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def migrate(engine: Engine) -> None:
    """Upgrade the database behind ``engine`` to the newest schema (Alembic ``upgrade head``).

    Idempotent; safe on an empty database and on one already at head.
    """
    from alembic import command
    from alembic.config import Config

    cfg = Config(str(MIGRATIONS_DIR / "alembic.ini"))
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    with engine.begin() as connection:
        cfg.attributes["connection"] = connection
        command.upgrade(cfg, "head")


class JobStore:
    """Jobs, users and tokens in one relational database.

    Args:
        url: SQLAlchemy URL (``sqlite:///path.db``, ``postgresql+psycopg://...``). The parent
            directory of a SQLite file is created.
        run_migrations: upgrade the schema on open (default True).

    All methods are thread-safe. ``owner`` arguments restrict a lookup to one owner: a job of
    another owner is reported as not found (404), never as forbidden.
    """

    def __init__(self, url: str, *, run_migrations: bool = True):
        self.url = url
        kwargs: dict[str, Any] = {"future": True, "pool_pre_ping": True}
        if url.startswith("sqlite"):
            path = url.split("///", 1)[1] if "///" in url else ""
            if path and path != ":memory:":
                Path(path).expanduser().parent.mkdir(parents=True, exist_ok=True)
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
        self.engine: Engine = create_engine(url, **kwargs)
        if url.startswith("sqlite"):

            @event.listens_for(self.engine, "connect")
            def _sqlite_pragmas(dbapi_conn, _record):  # pragma: no cover - driver glue
                cur = dbapi_conn.cursor()
                cur.execute("PRAGMA foreign_keys=ON")
                cur.execute("PRAGMA journal_mode=WAL")
                cur.execute("PRAGMA synchronous=FULL")  # a SUCCESS is on disk when committed
                cur.close()

        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._lock = threading.Lock()
        if run_migrations:
            migrate(self.engine)

    @classmethod
    def from_settings(cls, settings: Any) -> "JobStore":
        """The store named by ``settings.resolved_database_url()`` (SQLite in ``data_dir`` by default)."""
        return cls(settings.resolved_database_url())

    def close(self) -> None:
        """Release all pooled connections."""
        self.engine.dispose()

    def _session(self) -> Session:
        return self._sessions()

    # ------------------------------------------------------------------ users and tokens
    def add_user(self, name: str, password: str) -> UserRecord:
        """Create a user.

        Raises:
            InvalidParameterError: empty name, a name with whitespace or ':' or over 100
                characters, or a password shorter than 8 characters.
            ConflictError: a user of that name exists (409).
        """
        name = name.strip()
        if not name or len(name) > 100 or any(c.isspace() for c in name) or ":" in name:
            raise InvalidParameterError(
                f"invalid user name {name!r}: 1-100 characters, no whitespace and no ':'"
            )
        if len(password) < 8:
            raise InvalidParameterError("the password must be at least 8 characters long")
        with self._session() as s:
            user = User(name=name, password_hash=hash_password(password), created_date=utcnow())
            s.add(user)
            try:
                s.commit()
            except IntegrityError:
                s.rollback()
                raise ConflictError(f"user '{name}' already exists") from None
            return UserRecord(id=user.id, name=user.name, created_date=_aware(user.created_date))  # type: ignore[arg-type]

    def set_password(self, name: str, password: str) -> None:
        """Replace a user's password and revoke the user's tokens. Raises NotFoundError."""
        if len(password) < 8:
            raise InvalidParameterError("the password must be at least 8 characters long")
        with self._session() as s:
            user = s.scalar(select(User).where(User.name == name))
            if user is None:
                raise NotFoundError(f"no user named '{name}'")
            user.password_hash = hash_password(password)
            s.execute(delete(AccessToken).where(AccessToken.user_id == user.id))
            s.commit()

    def list_users(self) -> list[UserRecord]:
        """All users, by name."""
        with self._session() as s:
            return [
                UserRecord(id=u.id, name=u.name, created_date=_aware(u.created_date))  # type: ignore[arg-type]
                for u in s.scalars(select(User).order_by(User.name))
            ]

    def authenticate(self, name: str, password: str) -> UserRecord | None:
        """The user when ``password`` is right, else None (unknown users cost the same time)."""
        with self._session() as s:
            user = s.scalar(select(User).where(User.name == name))
            if user is None:
                # one scrypt verification, as for a known user with a wrong password
                verify_password(password, _dummy_hash())
                return None
            if not verify_password(password, user.password_hash):
                return None
            return UserRecord(id=user.id, name=user.name, created_date=_aware(user.created_date))  # type: ignore[arg-type]

    def issue_token(self, user_id: int, lifetime: timedelta = TOKEN_LIFETIME) -> str:
        """A new random bearer token for ``user_id`` (only its SHA-256 is stored)."""
        token = secrets.token_urlsafe(32)
        with self._session() as s:
            s.add(AccessToken(token_hash=_token_hash(token), user_id=user_id, created_date=utcnow(),
                              expires_date=utcnow() + lifetime))
            s.commit()
        return token

    def user_for_token(self, token: str) -> UserRecord | None:
        """The user a valid, unexpired token belongs to, or None."""
        with self._session() as s:
            row = s.get(AccessToken, _token_hash(token))
            if row is None:
                return None
            expires = _aware(row.expires_date)
            if expires is not None and expires < utcnow():
                return None
            user = s.get(User, row.user_id)
            if user is None:
                return None
            return UserRecord(id=user.id, name=user.name, created_date=_aware(user.created_date))  # type: ignore[arg-type]

    def revoke_token(self, token: str) -> bool:
        """Delete an access token (dashboard logout); False when it was not known."""
        with self._session() as s:
            res = s.execute(delete(AccessToken).where(AccessToken.token_hash == _token_hash(token)))
            s.commit()
            return res.rowcount == 1

    # ------------------------------------------------------------------ refresh tokens (v1/auth)
    def issue_refresh_token(self, user_id: int, lifetime: timedelta = TOKEN_LIFETIME) -> str:
        """A new random refresh token for ``user_id``.

        Stored in the access-token table under the SHA-256 of ``"refresh:" + token``, so a
        refresh token is never accepted as an access token (and vice versa).
        """
        token = secrets.token_urlsafe(32)
        with self._session() as s:
            s.add(AccessToken(token_hash=_token_hash(_REFRESH_PREFIX + token), user_id=user_id,
                              created_date=utcnow(), expires_date=utcnow() + lifetime))
            s.commit()
        return token

    def use_refresh_token(self, token: str) -> UserRecord | None:
        """Consume a refresh token (one use: it is deleted) and return its user; None when the
        token is unknown, already used, revoked (password change) or expired."""
        with self._session() as s:
            row = s.get(AccessToken, _token_hash(_REFRESH_PREFIX + token))
            if row is None:
                return None
            user_id, expires = row.user_id, _aware(row.expires_date)
            s.delete(row)
            s.commit()
            if expires is not None and expires < utcnow():
                return None
            user = s.get(User, user_id)
            if user is None:
                return None
            return UserRecord(id=user.id, name=user.name, created_date=_aware(user.created_date))  # type: ignore[arg-type]

    # ------------------------------------------------------------------ jobs
    def create_job(
        self,
        job_type: str,
        owner: str,
        args: Mapping[str, Any] | None = None,
        *,
        status: str = PENDING,
        parent_id: str | None = None,
        prerequisite_job_id: str | None = None,
        num_records: int | None = None,
        artifacts: Mapping[str, bytes] | None = None,
        job_id: str | None = None,
    ) -> JobRecord:
        """Insert a job (and its input ``artifacts``) in one transaction.

        ``status=SUCCESS`` creates an already finished job (e.g. an uploaded MSA), with start and
        end dates equal to the creation date and progress 100.
        """
        if status not in JOB_STATUSES:
            raise InvalidParameterError(f"unknown job status {status!r}")
        now = utcnow()
        job = Job(
            job_id=job_id or str(uuid.uuid4()),
            job_type=job_type,
            status=status,
            owner=owner,
            created_date=now,
            start_date=now if status in DONE_STATUSES else None,
            end_date=now if status in DONE_STATUSES else None,
            progress_counter=100 if status == SUCCESS else 0,
            num_records=num_records,
            args=dict(args or {}),
            parent_id=parent_id,
            prerequisite_job_id=prerequisite_job_id,
            attempts=0,
        )
        with self._session() as s:
            s.add(job)
            s.flush()
            for name, content in (artifacts or {}).items():
                s.add(JobArtifact(job_id=job.job_id, name=name, content=bytes(content), created_date=now))
            s.commit()
            return _snapshot(job)

    def get_job(self, job_id: str, owner: str | None = None) -> JobRecord:
        """The job ``job_id`` (of ``owner`` when given).

        Raises:
            NotFoundError: no such job, or it belongs to another owner (404).
        """
        with self._session() as s:
            job = s.get(Job, str(job_id))
            if job is None or (owner is not None and job.owner != owner):
                raise NotFoundError(f"job {job_id} not found")
            return _snapshot(job)

    def list_jobs(
        self,
        owner: str | None = None,
        *,
        status: str | Iterable[str] | None = None,
        job_type: str | None = None,
        more_recent_than: datetime | None = None,
        parent_id: str | None = None,
        limit: int | None = None,
        offset: int = 0,
        oldest_first: bool = False,
    ) -> list[JobRecord]:
        """Jobs filtered by owner/status/type/creation date/parent, newest first by default."""
        q = select(Job)
        if owner is not None:
            q = q.where(Job.owner == owner)
        if status is not None:
            statuses = [status] if isinstance(status, str) else list(status)
            q = q.where(Job.status.in_(statuses))
        if job_type is not None:
            q = q.where(Job.job_type == job_type)
        if more_recent_than is not None:
            q = q.where(Job.created_date > more_recent_than)
        if parent_id is not None:
            q = q.where(Job.parent_id == parent_id)
        order = Job.created_date.asc() if oldest_first else Job.created_date.desc()
        q = q.order_by(order, Job.job_id).offset(offset)
        if limit is not None:
            q = q.limit(limit)
        with self._session() as s:
            return [_snapshot(j) for j in s.scalars(q)]

    def count_jobs(self, owner: str | None = None) -> int:
        """Number of jobs (of ``owner``)."""
        q = select(func.count()).select_from(Job)
        if owner is not None:
            q = q.where(Job.owner == owner)
        with self._session() as s:
            return int(s.scalar(q) or 0)

    def claim(self, job_id: str) -> JobRecord | None:
        """Atomically move a PENDING job to RUNNING (start date now, attempts + 1).

        Returns the running job, or None when the job is not PENDING (canceled, taken, done).
        """
        now = utcnow()
        with self._session() as s:
            res = s.execute(
                update(Job)
                .where(Job.job_id == job_id, Job.status == PENDING)
                .values(status=RUNNING, start_date=now, end_date=None, progress_counter=0,
                        failure_message=None, progress_message=None, attempts=Job.attempts + 1)
            )
            s.commit()
            if res.rowcount != 1:
                return None
            job = s.get(Job, job_id)
            return _snapshot(job) if job is not None else None

    def set_progress(self, job_id: str, counter: int, message: str | None = None) -> str:
        """Record progress (clamped to 0..100) of a RUNNING job; returns the job's status.

        A caller that gets back CANCELED should stop working.
        """
        counter = max(0, min(100, int(counter)))
        with self._session() as s:
            values: dict[str, Any] = {"progress_counter": counter}
            if message is not None:
                values["progress_message"] = message
            s.execute(update(Job).where(Job.job_id == job_id, Job.status == RUNNING).values(**values))
            s.commit()
            status = s.scalar(select(Job.status).where(Job.job_id == job_id))
            return status or CANCELED

    def status_of(self, job_id: str) -> str | None:
        """The current status of a job, or None when it does not exist."""
        with self._session() as s:
            return s.scalar(select(Job.status).where(Job.job_id == job_id))

    def complete(self, job_id: str, artifacts: Mapping[str, bytes], num_records: int | None = None,
                 message: str | None = None) -> bool:
        """Store the results and mark a RUNNING job SUCCESS, in one transaction.

        Returns False (and stores nothing) when the job is no longer RUNNING (e.g. canceled).
        """
        now = utcnow()
        with self._session() as s:
            res = s.execute(
                update(Job)
                .where(Job.job_id == job_id, Job.status == RUNNING)
                .values(status=SUCCESS, end_date=now, progress_counter=100, num_records=num_records,
                        progress_message=message)
            )
            if res.rowcount != 1:
                s.rollback()
                return False
            names = list(artifacts)
            if names:
                s.execute(delete(JobArtifact).where(JobArtifact.job_id == job_id, JobArtifact.name.in_(names)))
            for name, content in artifacts.items():
                s.add(JobArtifact(job_id=job_id, name=name, content=bytes(content), created_date=now))
            s.commit()
            return True

    def fail(self, job_id: str, message: str) -> bool:
        """Mark a PENDING or RUNNING job FAILURE with ``message``; False when already done."""
        with self._session() as s:
            res = s.execute(
                update(Job)
                .where(Job.job_id == job_id, Job.status.in_([PENDING, RUNNING]))
                .values(status=FAILURE, end_date=utcnow(), failure_message=message[:10000])
            )
            s.commit()
            return res.rowcount == 1

    def cancel(self, job_id: str, owner: str | None = None) -> JobRecord:
        """Cancel a PENDING or RUNNING job (a running worker stops at its next progress report).

        Raises:
            NotFoundError: unknown job or another owner's (404).
            ConflictError: the job is already SUCCESS/FAILURE/CANCELED (409).
        """
        job = self.get_job(job_id, owner)
        with self._session() as s:
            res = s.execute(
                update(Job)
                .where(Job.job_id == job.job_id, Job.status.in_([PENDING, RUNNING]))
                .values(status=CANCELED, end_date=utcnow())
            )
            s.commit()
        if res.rowcount != 1:
            current = self.get_job(job_id)
            raise ConflictError(f"job {job_id} is already {current.status} and cannot be canceled")
        return self.get_job(job_id)

    def requeue_unfinished(self) -> list[JobRecord]:
        """Restart recovery: RUNNING jobs go back to PENDING (they re-run from the start);
        returns every PENDING job, oldest first."""
        with self._session() as s:
            s.execute(
                update(Job).where(Job.status == RUNNING)
                .values(status=PENDING, start_date=None, progress_counter=0,
                        progress_message="re-queued after a server restart")
            )
            s.commit()
        return self.list_jobs(status=PENDING, oldest_first=True)

    def requeue(self, job_id: str) -> bool:
        """Put a RUNNING job back to PENDING (interrupted by a shut-down); False otherwise."""
        with self._session() as s:
            res = s.execute(
                update(Job).where(Job.job_id == job_id, Job.status == RUNNING)
                .values(status=PENDING, start_date=None, progress_counter=0,
                        progress_message="interrupted by a server shut-down; will re-run")
            )
            s.commit()
            return res.rowcount == 1

    def prune(self, older_than: timedelta, statuses: tuple[str, ...] = (SUCCESS, FAILURE, CANCELED)) -> int:
        """Delete finished jobs (``statuses``) that ended (or, without an end date, were created)
        more than ``older_than`` ago, with their stored results; returns how many were deleted.
        Unfinished jobs are never deleted."""
        cutoff = utcnow() - older_than
        with self._session() as s:
            ids = list(s.scalars(select(Job.job_id).where(
                Job.status.in_(list(statuses)),
                func.coalesce(Job.end_date, Job.created_date) < cutoff)))
            for chunk in range(0, len(ids), 500):
                part = ids[chunk: chunk + 500]
                s.execute(delete(JobArtifact).where(JobArtifact.job_id.in_(part)))
                s.execute(delete(Job).where(Job.job_id.in_(part)))
            s.commit()
        return len(ids)

    # ------------------------------------------------------------------ artifacts
    def put_artifact(self, job_id: str, name: str, content: bytes) -> None:
        """Store (or replace) one named blob of a job."""
        with self._session() as s:
            s.execute(delete(JobArtifact).where(JobArtifact.job_id == job_id, JobArtifact.name == name))
            s.add(JobArtifact(job_id=job_id, name=name, content=bytes(content), created_date=utcnow()))
            s.commit()

    def get_artifact(self, job_id: str, name: str) -> bytes | None:
        """A job's blob, or None when it has none of that name."""
        with self._session() as s:
            row = s.get(JobArtifact, (job_id, name))
            return bytes(row.content) if row is not None else None

    def artifact_names(self, job_id: str) -> list[str]:
        """Names of a job's stored blobs."""
        with self._session() as s:
            return list(s.scalars(select(JobArtifact.name).where(JobArtifact.job_id == job_id)))
