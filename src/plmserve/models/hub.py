"""The Hugging Face hub, seen from the weight loaders: offline mode and one fast reachability check.

Without a network, ``huggingface_hub`` retries every request with back-off (about 25 s per file, with a
warning per retry). The loaders therefore ask :func:`hub_unreachable` once before any download: it
resolves the hub's host name and opens a TCP connection to it (``HF_ENDPOINT``, default
``https://huggingface.co``) with a short timeout, and remembers the answer for a minute, so a machine
without a network fails in about a second with one message that says why (DNS, refused, timed out).
"""

from __future__ import annotations

import os
import socket
import threading
import time
from typing import Any
from urllib.parse import urlsplit

#: seconds a DNS lookup / TCP connection to the hub may take before it counts as unreachable
CHECK_TIMEOUT_S = 1.5
#: seconds a reachability answer is reused
_CACHE_TTL_S = 60.0
_cache: dict[str, tuple[float, str | None]] = {}
_lock = threading.Lock()

_TRUE = {"1", "true", "yes", "on"}


def hub_offline(settings: Any = None) -> bool:
    """True when the network must not be used: ``settings.offline`` (``PLMSERVE_OFFLINE=1``),
    ``HF_HUB_OFFLINE=1`` or ``TRANSFORMERS_OFFLINE=1``."""
    if bool(getattr(settings, "offline", False)):
        return True
    if os.environ.get("PLMSERVE_OFFLINE", "").strip().lower() in _TRUE:
        return True
    env = os.environ.get("HF_HUB_OFFLINE", "") or os.environ.get("TRANSFORMERS_OFFLINE", "")
    return env.strip().lower() in _TRUE


def hub_endpoint() -> str:
    """The hub's base URL (``HF_ENDPOINT``, default ``https://huggingface.co``)."""
    if os.environ.get("HF_ENDPOINT"):
        return os.environ["HF_ENDPOINT"].rstrip("/")
    try:
        from huggingface_hub import constants

        return str(constants.ENDPOINT).rstrip("/")
    except Exception:  # pragma: no cover - huggingface_hub is a dependency
        return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def _resolve(host: str, port: int, timeout: float) -> list:
    """``socket.getaddrinfo`` with a timeout (it has none of its own): run in a daemon thread."""
    result: dict[str, Any] = {}

    def work() -> None:
        try:
            result["addrs"] = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            result["error"] = exc

    thread = threading.Thread(target=work, daemon=True, name="plmserve-hub-dns")
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise TimeoutError(f"DNS lookup of {host} took longer than {timeout:g} s")
    if "error" in result:
        raise result["error"]
    return result["addrs"]


def check_reachable(endpoint: str, timeout: float = CHECK_TIMEOUT_S) -> str | None:
    """None when a TCP connection to ``endpoint``'s host and port opens within ``timeout`` seconds,
    else a one-line reason naming the cause: ``DNS lookup of huggingface.co failed (...)``,
    ``connection to 127.0.0.1:9 refused``, ``... timed out``. Does not cache (see
    :func:`hub_unreachable`)."""
    parts = urlsplit(endpoint)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    if not host:
        return f"the hub endpoint {endpoint!r} has no host name"
    deadline = time.monotonic() + timeout
    try:
        addrs = _resolve(host, port, timeout)
    except TimeoutError as exc:
        return f"{exc} (no network or no DNS server)"
    except OSError as exc:
        return f"DNS lookup of {host} failed ({exc.strerror or exc}): no network or no DNS server"
    last: str = "no address"
    for family, socktype, proto, _name, addr in addrs:
        left = deadline - time.monotonic()
        if left <= 0:
            return f"connecting to {host}:{port} timed out after {timeout:g} s"
        try:
            with socket.socket(family, socktype, proto) as sock:
                sock.settimeout(left)
                sock.connect(addr)
            return None
        except TimeoutError:
            last = f"connecting to {host}:{port} timed out after {timeout:g} s"
        except ConnectionRefusedError:
            last = f"connection to {host}:{port} refused"
        except OSError as exc:
            last = f"connecting to {host}:{port} failed ({exc.strerror or exc})"
    return last


def hub_unreachable(timeout: float = CHECK_TIMEOUT_S) -> str | None:
    """None when the hub (:func:`hub_endpoint`) answers, else why not, e.g.
    ``"https://huggingface.co unreachable: DNS lookup of huggingface.co failed (...)"``.

    The answer is remembered per endpoint for 60 s, so a process asks the network once even when
    it looks for several models or files."""
    endpoint = hub_endpoint()
    now = time.monotonic()
    with _lock:
        hit = _cache.get(endpoint)
        if hit is not None and now - hit[0] < _CACHE_TTL_S:
            return hit[1]
    reason = check_reachable(endpoint, timeout)
    answer = None if reason is None else f"{endpoint} unreachable: {reason}"
    with _lock:
        _cache[endpoint] = (time.monotonic(), answer)
    return answer


def clear_cache() -> None:
    """Forget remembered reachability answers (tests; after the network comes back)."""
    with _lock:
        _cache.clear()


#: the advice appended to every "hub unreachable" message
OFFLINE_ADVICE = (
    "set PLMSERVE_OFFLINE=1 to skip the hub, or run `plmserve models pull <model>` on a connected "
    "machine and copy the weights into PLMSERVE_MODEL_DIR"
)
