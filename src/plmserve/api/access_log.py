"""Keep credentials out of the server's access log.

The legacy OpenProtein login routes (``v1/login/user-access-token``, ``v1/login/access-token``)
accept ``username``/``password`` in the query string, and uvicorn's access log writes the full
request line (path and query). :class:`RedactCredentials` is a :class:`logging.Filter` for the
``uvicorn.access`` logger that replaces the values of credential-bearing query parameters with
``***`` before any handler formats the record. :func:`install` adds it once (idempotent); the
OpenProtein contract calls it when the app is built and again at start-up (after uvicorn applied
its logging configuration, which keeps existing filters).
"""

from __future__ import annotations

import logging
import re

#: Query parameters whose values never reach a log line.
SECRET_PARAMS = ("username", "password", "refresh_token", "access_token", "token", "api_key", "key")

_PATTERN = re.compile(
    r"(?i)([?&;](?:" + "|".join(re.escape(p) for p in SECRET_PARAMS) + r")=)[^&;\s\"]*"
)
REDACTED = "***"


def redact(text: str) -> str:
    """``text`` with the value of every :data:`SECRET_PARAMS` query parameter replaced by ``***``
    (``/login?username=a&password=b`` -> ``/login?username=***&password=***``)."""
    return _PATTERN.sub(lambda m: m.group(1) + REDACTED, text)


class RedactCredentials(logging.Filter):
    """Rewrites a log record's message and string arguments with :func:`redact`; never drops it."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in record.args)
        elif isinstance(record.args, dict):
            record.args = {k: redact(v) if isinstance(v, str) else v for k, v in record.args.items()}
        return True


def install(logger_name: str = "uvicorn.access") -> RedactCredentials:
    """Add one :class:`RedactCredentials` to ``logger_name`` (no duplicate); returns it."""
    log = logging.getLogger(logger_name)
    for f in log.filters:
        if isinstance(f, RedactCredentials):
            return f
    f = RedactCredentials()
    log.addFilter(f)
    return f
