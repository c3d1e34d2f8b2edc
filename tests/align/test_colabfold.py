"""ColabFold MSA server client against a local test server on 127.0.0.1 (no internet)."""

from __future__ import annotations

import io
import json
import tarfile
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from plmserve.align import colabfold, create_msa
from plmserve.align.colabfold import ColabFoldError
from plmserve.errors import InvalidParameterError

QUERY = "MKTAYIAKQRQISFVKSHFSRQ"
UNIREF = f">101\n{QUERY}\n>UniRef100_A\tx\nMKTAYIAKQRQISFVKSHFSRQ\n>UniRef100_B\nMKTAYIgAKQRQ-SFVKSHFSRQ\n\x00"
ENV = f">101\n{QUERY}\n>MGYP0001\n--TAYIAKQRQISFVKSHFS--\n\x00"


def archive(files: dict[str, str]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


class Server:
    """A scripted ColabFold server: ``statuses`` are answered to submit/poll calls in order."""

    def __init__(self, statuses, files=None, download_status=200):
        self.statuses = list(statuses)
        self.files = files if files is not None else {"uniref.a3m": UNIREF, "bfd.mgnify30.metaeuk30.smag30.a3m": ENV}
        self.download_status = download_status
        self.requests: list[tuple[str, str, dict]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, code, body: bytes, ctype="application/json"):
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _status(self):
                state = outer.statuses.pop(0) if len(outer.statuses) > 1 else outer.statuses[0]
                self._send(200, json.dumps({"id": "T1", "status": state}).encode())

            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                form = urllib.parse.parse_qs(self.rfile.read(length).decode())
                outer.requests.append(("POST", self.path, {**form, "ua": self.headers.get("User-Agent")}))
                if self.path == "/ticket/msa":
                    self._status()
                else:
                    self._send(404, b"{}")

            def do_GET(self):
                outer.requests.append(("GET", self.path, {}))
                if self.path == "/ticket/T1":
                    self._status()
                elif self.path == "/result/download/T1":
                    if outer.download_status != 200:
                        self._send(outer.download_status, b"oops", "text/plain")
                    else:
                        self._send(200, archive(outer.files), "application/gzip")
                else:
                    self._send(404, b"{}")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_submit_poll_download_and_merge():
    with Server(["RATELIMIT", "PENDING", "RUNNING", "COMPLETE"]) as server:
        stages = []
        a3m = colabfold.search(QUERY, url=server.url, poll_interval=0.01, progress=lambda s, f: stages.append(s))
    posts = [r for r in server.requests if r[0] == "POST"]
    assert len(posts) == 2  # RATELIMIT -> submitted again
    assert posts[0][2]["q"] == [f">101\n{QUERY}\n"] and posts[0][2]["mode"] == ["env"]
    assert posts[0][2]["ua"].startswith("plmserve/")
    gets = [r[1] for r in server.requests if r[0] == "GET"]
    assert gets[-1] == "/result/download/T1" and gets.count("/ticket/T1") == 2
    names = [line[1:].split()[0] for line in a3m.splitlines() if line.startswith(">")]
    assert names == ["101", "UniRef100_A", "UniRef100_B", "MGYP0001"]
    assert "\x00" not in a3m
    assert "colabfold: downloading" in stages


def test_create_msa_with_colabfold_backend_and_cache(tmp_path):
    with Server(["COMPLETE"]) as server:
        msa = create_msa(QUERY, backend="colabfold", colabfold_url=server.url, cache_dir=tmp_path)
    assert msa.names == ["seed", "UniRef100_A", "UniRef100_B", "MGYP0001"]
    assert msa.aligned[2] == "MKTAYIAKQRQ-SFVKSHFSRQ" and msa.sequences[2] == "MKTAYIGAKQRQSFVKSHFSRQ"
    # the server is gone: the second call must come from the cache
    again = create_msa(QUERY, backend="colabfold", colabfold_url=server.url, cache_dir=tmp_path)
    assert again.to_a3m() == msa.to_a3m()


@pytest.mark.parametrize(
    "statuses,kwargs,match",
    [
        (["ERROR"], {}, "refused the job: status ERROR"),
        (["MAINTENANCE"], {}, "status MAINTENANCE"),
        (["PENDING", "ERROR"], {}, "ended with status ERROR"),
        (["COMPLETE"], {"files": {"other.txt": "x"}}, "no uniref.a3m"),
        (["COMPLETE"], {"download_status": 500}, "download failed with HTTP 500"),
    ],
)
def test_server_failures_are_clear_errors(statuses, kwargs, match):
    with Server(statuses, **kwargs) as server:
        with pytest.raises(ColabFoldError, match=match):
            colabfold.search(QUERY, url=server.url, poll_interval=0.01)


def test_unreachable_server_and_bad_mode():
    with pytest.raises(ColabFoldError, match="unreachable"):
        colabfold.search(QUERY, url="http://127.0.0.1:9", poll_interval=0.01)
    with pytest.raises(InvalidParameterError, match="unknown ColabFold mode"):
        colabfold.search(QUERY, mode="fast")


def test_timeout_while_pending():
    with Server(["PENDING"]) as server:
        with pytest.raises(ColabFoldError, match="not finished after"):
            colabfold.search(QUERY, url=server.url, poll_interval=0.01, timeout=0.05)
