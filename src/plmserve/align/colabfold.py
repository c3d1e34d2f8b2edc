"""Client of the public ColabFold MSA server (``https://api.colabfold.com``), the protocol used by
ColabFold and Boltz. Needs internet; plmserve never calls it unless ``backend="colabfold"``.

Protocol (one query):

1. ``POST {url}/ticket/msa`` with the form fields ``q=">101\\n<SEQ>\\n"`` and ``mode`` (``env``:
   UniRef + environmental databases, ``all``: UniRef only; ``-nofilter`` variants
   ``env-nofilter``/``nofilter`` skip redundancy filtering). The answer is JSON
   ``{"id": <ticket>, "status": "PENDING" | "RUNNING" | "COMPLETE" | "ERROR" | "RATELIMIT" |
   "MAINTENANCE" | "UNKNOWN"}``.
2. ``GET {url}/ticket/{id}`` until the status is ``COMPLETE`` (``RATELIMIT``/``UNKNOWN`` on submit:
   wait and submit again; ``ERROR``/``MAINTENANCE``: fail).
3. ``GET {url}/result/download/{id}``: a ``.tar.gz`` with ``uniref.a3m`` and, for ``env``,
   ``bfd.mgnify30.metaeuk30.smag30.a3m``. Each is A3M (query first, header ``>101``); several
   queries would be separated by NUL bytes.

The A3M files are concatenated (the environmental file without its query row).
"""

from __future__ import annotations

import io
import tarfile
import time
from typing import Callable

import httpx

from plmserve.errors import InvalidParameterError, PlmserveError

MODES = ("env", "all", "env-nofilter", "nofilter")


class ColabFoldError(PlmserveError):
    """The ColabFold MSA server refused or failed the request (HTTP 502 when surfaced by the API)."""

    status_code = 502


def _user_agent() -> str:
    from plmserve import __version__

    return f"plmserve/{__version__}"


def _a3m_without_query(text: str) -> str:
    records = text.split(">")
    return "".join(">" + r for r in records[2:]) if len(records) > 2 else ""


def search(
    sequence: str,
    *,
    url: str = "https://api.colabfold.com",
    mode: str = "env",
    poll_interval: float = 5.0,
    timeout: float = 3600.0,
    progress: Callable[[str, float], None] | None = None,
    client: httpx.Client | None = None,
) -> str:
    """Run one ColabFold MSA search and return the A3M text (query first, named ``101``).

    Args:
        sequence: the query (validated upper-case residues).
        url: server base URL.
        mode: ``env`` | ``all`` | ``env-nofilter`` | ``nofilter``.
        poll_interval: seconds between status polls (and between retries after ``RATELIMIT``).
        timeout: give up after this many seconds in total.
        progress: ``progress(stage, fraction)``.
        client: an ``httpx.Client`` to use (tests); one is created otherwise.

    Raises:
        InvalidParameterError: unknown ``mode``.
        ColabFoldError: HTTP errors, ``ERROR``/``MAINTENANCE`` status, a malformed answer or
            archive, or the timeout.
    """
    if mode not in MODES:
        raise InvalidParameterError(f"unknown ColabFold mode {mode!r}; expected one of {', '.join(MODES)}")
    own = client is None
    http = client or httpx.Client(timeout=60.0, headers={"User-Agent": _user_agent()})
    base = url.rstrip("/")
    deadline = time.monotonic() + timeout
    try:
        status = _submit(http, base, sequence, mode, poll_interval, deadline, progress)
        ticket = status["id"]
        while status.get("status") != "COMPLETE":
            state = status.get("status")
            if state in ("ERROR", "MAINTENANCE"):
                raise ColabFoldError(f"ColabFold MSA server: job {ticket} ended with status {state}")
            if time.monotonic() > deadline:
                raise ColabFoldError(f"ColabFold MSA server: job {ticket} not finished after {timeout:.0f} s")
            if progress:
                progress(f"colabfold: {str(state).lower()}", 0.3)
            time.sleep(poll_interval)
            status = _json(http.get(f"{base}/ticket/{ticket}"), "ticket status")
        if progress:
            progress("colabfold: downloading", 0.9)
        resp = http.get(f"{base}/result/download/{ticket}")
        if resp.status_code != 200:
            raise ColabFoldError(f"ColabFold MSA server: download failed with HTTP {resp.status_code}")
        return _read_archive(resp.content)
    except httpx.HTTPError as exc:
        raise ColabFoldError(f"ColabFold MSA server at {base} unreachable: {exc}") from None
    finally:
        if own:
            http.close()


def _json(resp: httpx.Response, what: str) -> dict:
    if resp.status_code != 200:
        raise ColabFoldError(f"ColabFold MSA server: {what} failed with HTTP {resp.status_code}: {resp.text[:200]}")
    try:
        data = resp.json()
    except ValueError:
        raise ColabFoldError(f"ColabFold MSA server: {what} answered non-JSON: {resp.text[:200]!r}") from None
    if not isinstance(data, dict) or "status" not in data:
        raise ColabFoldError(f"ColabFold MSA server: {what} answered without a status: {data!r}")
    return data


def _submit(http, base, sequence, mode, poll_interval, deadline, progress) -> dict:
    while True:
        if progress:
            progress("colabfold: submitting", 0.0)
        status = _json(http.post(f"{base}/ticket/msa", data={"q": f">101\n{sequence}\n", "mode": mode}), "submission")
        if status["status"] in ("RATELIMIT", "UNKNOWN"):
            if time.monotonic() > deadline:
                raise ColabFoldError(f"ColabFold MSA server: still {status['status']} at the timeout")
            time.sleep(poll_interval)
            continue
        if status["status"] in ("ERROR", "MAINTENANCE"):
            raise ColabFoldError(f"ColabFold MSA server refused the job: status {status['status']}")
        if "id" not in status:
            raise ColabFoldError(f"ColabFold MSA server: submission answered without a ticket id: {status!r}")
        return status


def _read_archive(content: bytes) -> str:
    try:
        with tarfile.open(fileobj=io.BytesIO(content), mode="r:gz") as tar:
            files = {m.name.rsplit("/", 1)[-1]: m for m in tar.getmembers() if m.isfile()}
            texts = {}
            for name, member in files.items():
                if name.endswith(".a3m"):
                    handle = tar.extractfile(member)
                    texts[name] = handle.read().decode() if handle else ""
    except (tarfile.TarError, OSError, EOFError, UnicodeDecodeError) as exc:
        raise ColabFoldError(f"ColabFold MSA server: the result archive is unreadable: {exc}") from None
    if "uniref.a3m" not in texts:
        raise ColabFoldError(f"ColabFold MSA server: no uniref.a3m in the result archive (found {sorted(texts)})")
    # one query: the first NUL-separated block of each file
    main = texts.pop("uniref.a3m").split("\x00")[0].strip() + "\n"
    for name in sorted(texts):
        main += _a3m_without_query(texts[name].split("\x00")[0].strip() + "\n")
    return main
