"""``plmserve users add|list`` and ``plmserve jobs list|show|cancel``.

These commands work on the job database directly (the server's ``PLMSERVE_DATABASE_URL``, or
the SQLite file in ``PLMSERVE_DATA_DIR``), so run them where the server runs. Each prints the
database it opened on stderr (``database: sqlite:////.../plmserve.db (...)``)::

    plmserve users add alice                 # asks for the password twice
    plmserve users add bob --password-stdin < pw.txt
    plmserve users list
    plmserve users passwd alice              # new password; the user's tokens are revoked
    plmserve jobs list --user alice --status RUNNING
    plmserve jobs show 3f2c...               # JSON: status, progress, failure message, args
    plmserve jobs cancel 3f2c...             # a running job stops at its next progress report

``jobs`` also works against a remote server with ``--server URL`` (and ``--username`` /
``--password`` or ``--api-key``): it then sees the jobs of that user only.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from plmserve.cli._common import cli_errors, console

users_app = typer.Typer(help="Job-service users (log in with the SDK or v1/login/user-access-token).",
                        no_args_is_help=True)
jobs_app = typer.Typer(help="Jobs of the job service (MSA, prompt, PoET score/single-site/generate).",
                       no_args_is_help=True)
out = Console() if sys.stdout.isatty() else Console(width=220)  # ids stay whole in pipes and logs

_DB = typer.Option(None, "--database-url", help="SQLAlchemy URL of the job database [env PLMSERVE_DATABASE_URL]")
_DATA = typer.Option(None, "--data-dir", help="data directory holding plmserve.db [env PLMSERVE_DATA_DIR]")
_SERVER = typer.Option(None, "--server", help="talk to a running server (http://host:port) instead of the database")
_USER = typer.Option(None, "--username", "-u", help="user for --server [env PLMSERVE_USERNAME]",
                     envvar="PLMSERVE_USERNAME")
_PASSWORD = typer.Option(None, "--password", help="password for --server [env PLMSERVE_PASSWORD]",
                         envvar="PLMSERVE_PASSWORD")
_API_KEY = typer.Option(None, "--api-key", help="API key for --server [env PLMSERVE_API_KEY]", envvar="PLMSERVE_API_KEY")


def open_store(database_url: str | None = None, data_dir: Path | None = None):
    """The job store named by the flags/environment (migrated to the newest schema)."""
    from plmserve.jobs.store import JobStore
    from plmserve.settings import get_settings

    settings = get_settings(database_url=database_url, data_dir=data_dir)
    console.print(f"database: {describe_database(settings, database_url, data_dir)}", highlight=False,
                  soft_wrap=True)
    return JobStore.from_settings(settings)


def describe_database(settings, database_url: str | None = None, data_dir: Path | None = None) -> str:
    """The database URL (password hidden) and where it came from, for one line on stderr."""
    import os

    from sqlalchemy.engine import make_url

    url = settings.resolved_database_url()
    try:
        shown = make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy can parse: JobStore will say so
        shown = url
    if database_url:
        origin = "--database-url"
    elif settings.database_url:
        origin = "PLMSERVE_DATABASE_URL"
    elif data_dir:
        origin = "SQLite file in --data-dir"
    elif os.environ.get("PLMSERVE_DATA_DIR"):
        origin = "SQLite file in PLMSERVE_DATA_DIR"
    else:
        origin = "default SQLite file: neither PLMSERVE_DATABASE_URL nor PLMSERVE_DATA_DIR is set"
    return f"{shown} ({origin})"


def remote_session(server: str, username: str | None, password: str | None, api_key: str | None):
    """An SDK session for ``--server`` (user/password or API key)."""
    from plmserve.client import connect
    from plmserve.errors import MissingParameterError

    if api_key:
        return connect(server, api_key=api_key)
    if not username:
        raise MissingParameterError("--server needs --username (and --password) or --api-key")
    if password is None:
        password = typer.prompt(f"password for {username}", hide_input=True)
    return connect(server, username, password)


def _job_row(job: dict) -> list[str]:
    progress = "" if job.get("progress_counter") is None else f"{job['progress_counter']}%"
    return [job["job_type"], job["status"], progress, (job.get("created_date") or "")[:19].replace("T", " "),
            job.get("owner", ""), (job.get("failure_message") or "")[:80], job["job_id"]]


def _read_password(password: str | None, from_stdin: bool, label: str) -> str:
    """``--password``, else one line of stdin (``--password-stdin``), else a hidden prompt asked twice."""
    if from_stdin:
        return sys.stdin.readline().rstrip("\n")
    if password is None:
        return typer.prompt(label, hide_input=True, confirmation_prompt=True)
    return password


def register(app: typer.Typer) -> None:
    """Add ``users`` and ``jobs`` to the root CLI."""

    @users_app.command("add")
    @cli_errors
    def users_add(
        name: str = typer.Argument(..., help="user name (no spaces)"),
        password: Optional[str] = typer.Option(None, "--password", help="the password (prompted when omitted)"),
        password_stdin: bool = typer.Option(False, "--password-stdin", help="read the password from stdin"),
        database_url: Optional[str] = _DB,
        data_dir: Optional[Path] = _DATA,
    ) -> None:
        """Create a user who can log in and own jobs."""
        password = _read_password(password, password_stdin, "password")
        store = open_store(database_url, data_dir)
        try:
            user = store.add_user(name, password)
        finally:
            store.close()
        console.print(f"user '{user.name}' created", highlight=False)

    @users_app.command("passwd")
    @cli_errors
    def users_passwd(
        name: str = typer.Argument(..., help="user name"),
        password: Optional[str] = typer.Option(None, "--password", help="the new password (prompted when omitted)"),
        password_stdin: bool = typer.Option(False, "--password-stdin", help="read the password from stdin"),
        database_url: Optional[str] = _DB,
        data_dir: Optional[Path] = _DATA,
    ) -> None:
        """Set a user's password (the user's access tokens are revoked)."""
        password = _read_password(password, password_stdin, "new password")
        store = open_store(database_url, data_dir)
        try:
            store.set_password(name, password)
        finally:
            store.close()
        console.print(f"password of '{name}' changed; its tokens were revoked", highlight=False)

    @users_app.command("list")
    @cli_errors
    def users_list(database_url: Optional[str] = _DB, data_dir: Optional[Path] = _DATA) -> None:
        """List users and how many jobs each owns."""
        store = open_store(database_url, data_dir)
        try:
            table = Table("name", "created", "jobs")
            for u in store.list_users():
                table.add_row(u.name, u.created_date.isoformat()[:19], str(store.count_jobs(u.owner)))
        finally:
            store.close()
        out.print(table)

    @jobs_app.command("list")
    @cli_errors
    def jobs_list(
        user: Optional[str] = typer.Option(None, "--user", help="only this user's jobs (database mode)"),
        status: Optional[str] = typer.Option(None, "--status", help="PENDING, RUNNING, SUCCESS, FAILURE, CANCELED"),
        job_type: Optional[str] = typer.Option(None, "--type", help="job type, e.g. /poet or /align/prompt"),
        limit: int = typer.Option(50, "--limit", help="at most this many (newest first)"),
        as_json: bool = typer.Option(False, "--json/--no-json", help="print JSON instead of a table"),
        server: Optional[str] = _SERVER,
        username: Optional[str] = _USER,
        password: Optional[str] = _PASSWORD,
        api_key: Optional[str] = _API_KEY,
        database_url: Optional[str] = _DB,
        data_dir: Optional[Path] = _DATA,
    ) -> None:
        """List jobs, newest first."""
        status = status.upper() if status else None
        if server:
            with remote_session(server, username, password, api_key) as s:
                jobs = [j.model_dump(mode="json") for j in s.jobs.list(status=status, job_type=job_type,
                                                                        page_size=limit)]
        else:
            from plmserve.jobs.store import user_owner

            store = open_store(database_url, data_dir)
            try:
                records = store.list_jobs(user_owner(user) if user else None, status=status, job_type=job_type,
                                          limit=limit)
                jobs = [{**r.to_wire(), "owner": r.owner} for r in records]
            finally:
                store.close()
        if as_json:
            print(json.dumps(jobs, indent=1))
            return
        table = Table("type", "status", "progress", "created (UTC)", "owner", "failure")
        table.columns[5].overflow = "fold"
        table.add_column("job_id", no_wrap=True, min_width=36)
        for j in jobs:
            table.add_row(*_job_row(j))
        out.print(table)

    @jobs_app.command("show")
    @cli_errors
    def jobs_show(
        job_id: str = typer.Argument(..., help="the job id"),
        server: Optional[str] = _SERVER,
        username: Optional[str] = _USER,
        password: Optional[str] = _PASSWORD,
        api_key: Optional[str] = _API_KEY,
        database_url: Optional[str] = _DB,
        data_dir: Optional[Path] = _DATA,
    ) -> None:
        """Print one job as JSON (status, dates, progress, failure message, args)."""
        if server:
            with remote_session(server, username, password, api_key) as s:
                job = s.jobs.get(job_id).model_dump(mode="json")
        else:
            store = open_store(database_url, data_dir)
            try:
                rec = store.get_job(job_id)
                job = {**rec.to_wire(), "owner": rec.owner, "attempts": rec.attempts,
                       "artifacts": store.artifact_names(job_id)}
            finally:
                store.close()
        print(json.dumps(job, indent=1))

    @jobs_app.command("cancel")
    @cli_errors
    def jobs_cancel(
        job_id: str = typer.Argument(..., help="the job id"),
        server: Optional[str] = _SERVER,
        username: Optional[str] = _USER,
        password: Optional[str] = _PASSWORD,
        api_key: Optional[str] = _API_KEY,
        database_url: Optional[str] = _DB,
        data_dir: Optional[Path] = _DATA,
    ) -> None:
        """Cancel a PENDING or RUNNING job (error when it is already finished)."""
        if server:
            with remote_session(server, username, password, api_key) as s:
                status = s.jobs.cancel(job_id).status.value
        else:
            store = open_store(database_url, data_dir)
            try:
                status = store.cancel(job_id).status
            finally:
                store.close()
        console.print(f"job {job_id}: {status}", highlight=False)

    @jobs_app.command("prune")
    @cli_errors
    def jobs_prune(
        older_than: str = typer.Option(..., "--older-than", help="age such as 30d, 12h, 90m (finished jobs only)"),
        database_url: Optional[str] = _DB,
        data_dir: Optional[Path] = _DATA,
    ) -> None:
        """Delete finished jobs (SUCCESS, FAILURE, CANCELED) older than --older-than, with their results."""
        from plmserve.serving.limits import parse_age

        age = parse_age(older_than)
        store = open_store(database_url, data_dir)
        try:
            n = store.prune(age)
        finally:
            store.close()
        console.print(f"deleted {n} job(s) finished more than {older_than} ago", highlight=False)

    app.add_typer(users_app, name="users")
    app.add_typer(jobs_app, name="jobs")
