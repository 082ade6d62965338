"""A forge for tests: bare repositories served over git's smart HTTP by git's own `http-backend`, behind
HTTP basic auth with one token, as a hosted forge takes a personal access token. Pods on the real node
reach it on the host; the clone step's unit tests reach it on loopback."""

from __future__ import annotations

import base64
import os
import subprocess
import tempfile
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

AUTHOR = {
    "GIT_AUTHOR_NAME": "Forge",
    "GIT_AUTHOR_EMAIL": "forge@example.com",
    "GIT_COMMITTER_NAME": "Forge",
    "GIT_COMMITTER_EMAIL": "forge@example.com",
}


def git(*args: str, cwd: Path | None = None) -> str:
    env = {**os.environ, **AUTHOR, "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull}
    run = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if run.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)}: {run.stderr.strip()}")
    return run.stdout.strip()


@dataclass
class Request:
    method: str
    path: str
    authorized: bool


@dataclass
class GitServer:
    root: Path
    token: str
    username: str = "x-access-token"
    host: str = "127.0.0.1"
    requests: list[Request] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None

    def __enter__(self) -> GitServer:
        forge = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                forge._serve(self)

            def do_POST(self) -> None:
                forge._serve(self)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer((self.host, 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.server_address[1])

    def url(self, name: str, host: str | None = None) -> str:
        return f"http://{host or self.host}:{self.port}/{name}.git"

    def create(self, name: str, files: dict[str, str], branch: str = "main") -> str:
        """A bare repository `name` with one commit of `files` on `branch` (its default); its hash."""
        bare = self.root / f"{name}.git"
        git("init", "--quiet", "--bare", f"--initial-branch={branch}", str(bare))
        git("config", "http.receivepack", "true", cwd=bare)
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            git("init", "--quiet", f"--initial-branch={branch}", cwd=work)
            for path, text in files.items():
                (work / path).parent.mkdir(parents=True, exist_ok=True)
                (work / path).write_text(text)
            git("add", "--all", cwd=work)
            git("commit", "--quiet", "--message", "The first commit", cwd=work)
            git("push", "--quiet", str(bare), branch, cwd=work)
            return git("rev-parse", "HEAD", cwd=work)

    def commit(self, name: str, path: str, text: str, branch: str = "main") -> str:
        """One more commit on `branch` of `name`, changing `path`; its hash."""
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp) / "work"
            git("clone", "--quiet", "--branch", branch, str(self.root / f"{name}.git"), str(work))
            (work / path).write_text(text)
            git("commit", "--quiet", "--all", "--message", f"Change {path}", cwd=work)
            git("push", "--quiet", "origin", branch, cwd=work)
            return git("rev-parse", "HEAD", cwd=work)

    def _authorized(self, header: str | None) -> bool:
        expected = base64.b64encode(f"{self.username}:{self.token}".encode()).decode()
        return header == f"Basic {expected}"

    def _serve(self, handler: BaseHTTPRequestHandler) -> None:
        url = urlsplit(handler.path)
        authorized = self._authorized(handler.headers.get("Authorization"))
        self.requests.append(Request(handler.command, url.path, authorized))
        if not authorized:
            handler.send_response(401)
            handler.send_header("WWW-Authenticate", 'Basic realm="forge"')
            handler.end_headers()
            return
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "GIT_PROJECT_ROOT": str(self.root),
            "GIT_HTTP_EXPORT_ALL": "1",
            "PATH_INFO": url.path,
            "QUERY_STRING": url.query,
            "REQUEST_METHOD": handler.command,
            "CONTENT_TYPE": handler.headers.get("Content-Type", ""),
            "REMOTE_USER": self.username,
            "REMOTE_ADDR": handler.client_address[0],
            "GIT_PROTOCOL": handler.headers.get("Git-Protocol", ""),
            "HTTP_CONTENT_ENCODING": handler.headers.get("Content-Encoding", ""),
        }
        body = _body(handler)
        env["CONTENT_LENGTH"] = str(len(body))
        run = subprocess.run(["git", "http-backend"], input=body, env=env, capture_output=True, check=False)
        head, _, payload = run.stdout.partition(b"\r\n\r\n")
        status, headers = 200, []
        for line in head.decode("latin-1").split("\r\n"):
            name, _, value = line.partition(":")
            if name.lower() == "status":
                status = int(value.split()[0])
            elif name:
                headers.append((name, value.strip()))
        handler.send_response(status)
        for name, value in headers:
            handler.send_header(name, value)
        handler.send_header("Content-Length", str(len(payload)))
        handler.end_headers()
        handler.wfile.write(payload)


def _body(handler: BaseHTTPRequestHandler) -> bytes:
    """The request's body, whether sized or chunked (git sends large pushes chunked)."""
    if handler.headers.get("Transfer-Encoding", "").lower() != "chunked":
        return handler.rfile.read(int(handler.headers.get("Content-Length") or 0))
    chunks: list[bytes] = []
    while True:
        size = int(handler.rfile.readline().split(b";")[0].strip() or b"0", 16)
        if size == 0:
            handler.rfile.readline()
            return b"".join(chunks)
        chunks.append(handler.rfile.read(size))
        handler.rfile.readline()
