"""``Content-Encoding: gzip`` request bodies, decompressed for every route (ASGI middleware).

The official BioLM client (``biolmai`` 0.4.0) gzips every JSON body over 256 bytes and sends it
with ``Content-Encoding: gzip`` (``shared/specs/esmc-and-biolm-v3.md`` §8.1). This middleware
inflates such bodies before any route sees them, so ``/api/v2``, ``/api/v3``, Forge and
OpenProtein routes all accept them. The decompressed size is bounded
(``Settings.max_decompressed_body_bytes``): a larger body (a "zip bomb" included) is refused with
413 naming the limit while it is being inflated, never materialised. A corrupt or truncated gzip
stream answers 400; any other content coding 415.
"""

from __future__ import annotations

import json
import zlib
from typing import Any

GZIP_CODINGS = ("gzip", "x-gzip")


class GzipRequestMiddleware:
    """Pure ASGI middleware; ``max_bytes`` bounds the inflated body (and the compressed one)."""

    def __init__(self, app: Any, max_bytes: int = 32 * 2**20) -> None:
        self.app = app
        self.max_bytes = int(max_bytes)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        coding = ""
        for name, value in scope.get("headers", ()):
            if name == b"content-encoding":
                coding = value.decode("latin-1").strip().lower()
        if coding in ("", "identity"):
            await self.app(scope, receive, send)
            return
        if coding not in GZIP_CODINGS:
            await _error(send, 415, f"unsupported Content-Encoding '{coding}': send the body plain or gzip-compressed")
            return
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        out = bytearray()
        received = 0
        too_big = (f"request body is larger than {self.max_bytes} bytes after gzip decompression "
                   "(server setting PLMSERVE_MAX_DECOMPRESSED_BODY_BYTES)")  # fmt: skip
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            received += len(chunk)
            if received > self.max_bytes:
                await _error(send, 413, too_big)
                return
            try:
                out += inflater.decompress(chunk, self.max_bytes + 1 - len(out))
            except zlib.error as exc:
                await _error(send, 400, f"request body is not valid gzip data (Content-Encoding: gzip): {exc}")
                return
            if len(out) > self.max_bytes or inflater.unconsumed_tail:
                await _error(send, 413, too_big)
                return
            if not message.get("more_body", False):
                break
        if not inflater.eof:
            await _error(send, 400, "request body is a truncated gzip stream (Content-Encoding: gzip)")
            return
        body = bytes(out)
        headers = [(k, v) for k, v in scope.get("headers", ()) if k not in (b"content-encoding", b"content-length")]
        headers.append((b"content-length", str(len(body)).encode()))
        scope = dict(scope, headers=headers)
        sent = False

        async def inflated_receive() -> dict:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, inflated_receive, send)


async def _error(send: Any, status: int, detail: str) -> None:
    payload = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]})
    await send({"type": "http.response.body", "body": payload})
