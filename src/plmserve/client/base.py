"""HTTP session of the plmserve SDK (httpx), with OpenProtein-style login.

``APISession(url, username, password)`` logs in with ``POST v1/auth/login`` (form body; older
servers: ``v1/login/user-access-token``) and sends ``Authorization: Bearer <token>``;
``APISession(url, api_key=KEY)`` sends a server API key instead. Every non-2xx answer raises
:class:`~plmserve.client.errors.APIError` (401/403: :class:`AuthError`) carrying the server's
``detail`` message.
"""

from __future__ import annotations

from typing import Any

import httpx

from plmserve.client.errors import APIError, AuthError


def normalise_base_url(url: str) -> str:
    """``http://host:8000``, ``http://host:8000/`` or ``http://host:8000/api/`` -> ``http://host:8000/api/``."""
    url = url.strip().rstrip("/")
    if not url.startswith(("http://", "https://")):
        url = "http://" + url
    if not url.endswith("/api"):
        url += "/api"
    return url + "/"


class APISession:
    """An authenticated connection to a plmserve server.

    Args:
        url: server root (``http://127.0.0.1:8000``); ``/api/`` is appended when missing.
        username, password: a job-service user (``plmserve users add NAME``).
        api_key: alternatively a server API key (``PLMSERVE_API_KEYS``); jobs are then owned by
            that key.
        timeout: per-request timeout in seconds.
        poll_interval: seconds between status polls in ``wait()`` (default 1).
        transport: an httpx transport (tests: ``httpx.ASGITransport``/``WSGITransport``).

    Raises:
        AuthError: the login was refused.
        APIError: the server could not be reached.
    """

    def __init__(self, url: str, username: str | None = None, password: str | None = None, *,
                 api_key: str | None = None, timeout: float = 120.0, poll_interval: float = 1.0,
                 transport: httpx.BaseTransport | None = None):
        self.backend = normalise_base_url(url)
        self.poll_interval = poll_interval
        self._client = httpx.Client(base_url=self.backend, timeout=timeout, transport=transport)
        self._token: str | None = None
        self._refresh_token: str | None = None
        if api_key is not None:
            self._client.headers["authorization"] = f"Token {api_key}"
        elif username is not None:
            self.login(username, password or "")

    # ------------------------------------------------------------------ auth
    def login(self, username: str, password: str) -> None:
        """Get a bearer token for ``username`` (raises :class:`AuthError` when refused).

        Uses ``v1/auth/login`` (credentials in a form body, never in the URL); a server without
        it (404) is asked through the older ``v1/login/user-access-token``."""
        try:
            r = self._client.post("v1/auth/login", data={"username": username, "password": password})
            if r.status_code == 404:
                r = self._client.post("v1/login/user-access-token",
                                      params={"username": username, "password": password})
        except httpx.HTTPError as exc:
            raise APIError(f"cannot reach {self.backend}: {exc}", url=self.backend) from None
        if r.status_code != 200:
            raise AuthError(f"Unable to authenticate with given credentials: {r.status_code} : {_detail(r)}",
                            status_code=r.status_code, detail=_detail(r), url=str(r.url))
        body = r.json()
        self._token = body["access_token"]
        self._refresh_token = body.get("refresh_token")
        self._client.headers["authorization"] = f"Bearer {self._token}"

    def refresh(self) -> bool:
        """Exchange the refresh token for a new access token (``v1/auth/refresh``); False when
        there is none or the server refused it."""
        token = getattr(self, "_refresh_token", None)
        if not token:
            return False
        try:
            r = self._client.post("v1/auth/refresh", json={"refresh_token": token})
        except httpx.HTTPError:
            return False
        if r.status_code != 200:
            self._refresh_token = None
            return False
        body = r.json()
        self._token, self._refresh_token = body["access_token"], body.get("refresh_token")
        self._client.headers["authorization"] = f"Bearer {self._token}"
        return True

    # ------------------------------------------------------------------ requests
    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """Send a request relative to ``<url>/api/``; raise :class:`APIError` unless 2xx."""
        try:
            r = self._client.request(method, path, **kwargs)
            if r.status_code == 401 and self.refresh():  # an expired access token: refresh once, retry
                r = self._client.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise APIError(f"request to {self.backend}{path} failed: {exc}", url=f"{self.backend}{path}") from None
        if r.status_code >= 400:
            detail = _detail(r)
            cls = AuthError if r.status_code in (401, 403) else APIError
            raise cls(f"Request failed: status {r.status_code}: {detail}", status_code=r.status_code,
                      detail=detail, url=str(r.url))
        return r

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", path, **kwargs)

    def close(self) -> None:
        """Close the connection pool."""
        self._client.close()

    def __enter__(self) -> "APISession":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _detail(r: httpx.Response) -> Any:
    try:
        body = r.json()
    except ValueError:
        return r.text
    if isinstance(body, dict) and "detail" in body:
        return body["detail"]
    return body
