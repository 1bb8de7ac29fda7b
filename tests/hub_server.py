"""A tiny in-memory Hugging Face Hub for tests: just the routes huggingface_hub uses to push and pull.

Repos live in memory as commits (sha -> {path: bytes}) plus a `main` branch pointer. Uploads are
"regular" (base64 inside the NDJSON commit), so no LFS/Xet storage is needed. Unknown routes answer 404
with the path and are recorded in `server.unknown`, which is how the routes below were found. Commits to
a repo whose name contains "readonly" are refused with 403 (a failed upload, for tests).

Run it standalone (`python tests/hub_server.py`) to get an endpoint on stdout for manual checks.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

_REPO = r"(?P<repo>[^/]+/[^/]+)"
_REV = r"(?P<rev>[^/]+)"


def _git_sha(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class FakeHub:
    """State shared by every request: repos, commits, and the routes nobody implemented."""

    def __init__(self) -> None:
        self.repos: dict[str, dict] = {}
        self.lock = threading.Lock()
        self.unknown: list[str] = []
        self.requests: list[str] = []
        self.validated = 0  # README front matters checked by /api/validate-yaml

    def create(self, repo_id: str, private: bool) -> bool:
        with self.lock:
            if repo_id in self.repos:
                return False
            sha = hashlib.sha1(f"init {repo_id}".encode()).hexdigest()
            self.repos[repo_id] = {
                "private": private,
                "branches": {"main": sha},
                "commits": {sha: {}},
            }
            return True

    def files(self, repo_id: str, rev: str) -> tuple[str, dict[str, bytes]] | None:
        repo = self.repos[repo_id]
        sha = repo["branches"].get(rev, rev)
        if sha not in repo["commits"]:
            return None
        return sha, repo["commits"][sha]

    def commit(self, repo_id: str, rev: str, added: dict[str, bytes], deleted: list[str]) -> str:
        with self.lock:
            repo = self.repos[repo_id]
            parent = repo["branches"].get(rev, repo["branches"]["main"])
            tree = dict(repo["commits"][parent])
            tree.update(added)
            for path in deleted:
                tree.pop(path, None)
            sha = hashlib.sha1(f"{parent}{time.time_ns()}{sorted(tree)}".encode()).hexdigest()
            repo["commits"][sha] = tree
            repo["branches"][rev] = sha
            return sha


class _Handler(BaseHTTPRequestHandler):
    hub: FakeHub  # set on the subclass made by `serve`
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args) -> None:  # keep test output clean
        pass

    # ---- plumbing
    def _send(
        self, status: int, body: bytes = b"", headers: dict | None = None, head=False
    ) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, str(v))
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _json(self, status: int, obj, headers: dict | None = None, head=False) -> None:
        h = {"Content-Type": "application/json", **(headers or {})}
        self._send(status, json.dumps(obj).encode(), h, head)

    def _error(self, status: int, code: str | None, message: str, head=False) -> None:
        headers = {"X-Error-Code": code, "X-Error-Message": message} if code else {}
        self._json(status, {"error": message}, headers, head)

    def _body(self) -> bytes:
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _route(self, method: str) -> None:
        path = unquote(urlsplit(self.path).path)
        self.hub.requests.append(f"{method} {path}")
        routes = [
            ("POST", r"/api/repos/create", self.create_repo),
            ("POST", r"/api/validate-yaml", self.validate_yaml),
            ("POST", rf"/api/models/{_REPO}/preupload/{_REV}", self.preupload),
            ("POST", rf"/api/models/{_REPO}/commit/{_REV}", self.commit),
            ("GET", rf"/api/models/{_REPO}/revision/{_REV}", self.repo_info),
            ("GET", rf"/api/models/{_REPO}", self.repo_info),
            ("GET", rf"/api/models/{_REPO}/tree/{_REV}(?:/(?P<sub>.*))?", self.tree),
            ("GET", rf"/{_REPO}/resolve/{_REV}/(?P<file>.+)", self.resolve),
            ("HEAD", rf"/{_REPO}/resolve/{_REV}/(?P<file>.+)", self.resolve),
        ]
        for m, pattern, fn in routes:
            match = re.fullmatch(pattern, path)
            if m == method and match:
                if self._repo_missing(match.groupdict().get("repo"), head=method == "HEAD"):
                    return
                return fn(**match.groupdict(), head=method == "HEAD")
        if method == "POST":
            self._body()
        self.hub.unknown.append(f"{method} {path}")
        self._error(404, None, f"fake hub: no route for {method} {path}", head=method == "HEAD")

    def _repo_missing(self, repo: str | None, head: bool) -> bool:
        if repo is None or repo in self.hub.repos:
            return False
        if self.command == "POST":
            self._body()
        self._error(404, "RepoNotFound", f"Repository {repo} not found", head)
        return True

    def do_GET(self) -> None:
        self._route("GET")

    def do_HEAD(self) -> None:
        self._route("HEAD")

    def do_POST(self) -> None:
        self._route("POST")

    # ---- routes
    def create_repo(self, head: bool) -> None:
        payload = json.loads(self._body() or b"{}")
        repo_id = f"{payload.get('organization') or 'user'}/{payload['name']}"
        url = f"http://{self.headers['Host']}/{repo_id}"
        if not self.hub.create(repo_id, payload.get("visibility") == "private"):
            return self._json(409, {"error": "You already created this model repo", "url": url})
        self._json(200, {"url": url, "name": repo_id, "id": repo_id})

    def validate_yaml(self, head: bool) -> None:
        """The card's YAML front matter must parse to a mapping (the real Hub checks much more)."""
        import yaml

        content = json.loads(self._body()).get("content", "")
        parts = content.split("---", 2) if content.startswith("---") else ["", "", ""]
        try:
            meta = yaml.safe_load(parts[1]) if parts[1].strip() else {}
            ok = isinstance(meta, dict)
        except yaml.YAMLError:
            ok = False
        if not ok:
            return self._json(400, {"errors": [{"message": "metadata is not a YAML mapping"}]})
        self.hub.validated += 1
        self._json(200, {"errors": [], "warnings": []})

    def preupload(self, repo: str, rev: str, head: bool) -> None:
        payload = json.loads(self._body())
        files = [
            {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": None}
            for f in payload["files"]
        ]
        self._json(200, {"files": files, "commitOid": self.hub.repos[repo]["branches"]["main"]})

    def commit(self, repo: str, rev: str, head: bool) -> None:
        body = self._body()
        if "readonly" in repo:  # lets tests see a refused upload
            return self._error(403, None, f"You don't have the rights to push to {repo}")
        added, deleted = {}, []
        for line in body.splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "file":
                added[value["path"]] = base64.b64decode(value["content"])
            elif key in ("deletedFile", "deletedFolder"):
                deleted.append(value["path"])
            elif key != "header":
                return self._error(400, None, f"fake hub: unsupported commit line {key}")
        sha = self.hub.commit(repo, unquote(rev), added, deleted)
        url = f"http://{self.headers['Host']}/{repo}/commit/{sha}"
        self._json(200, {"success": True, "commitOid": sha, "commitUrl": url})

    def repo_info(self, repo: str, rev: str = "main", head: bool = False) -> None:
        found = self.hub.files(repo, rev)
        if found is None:
            return self._error(404, "RevisionNotFound", f"Revision {rev} not found")
        sha, files = found
        siblings = [
            {"rfilename": p, "size": len(b), "blobId": _git_sha(b)} for p, b in files.items()
        ]
        info = {"id": repo, "modelId": repo, "sha": sha, "private": self.hub.repos[repo]["private"]}
        self._json(200, info | {"siblings": siblings, "tags": [], "library_name": "timm"})

    def tree(self, repo: str, rev: str, sub: str | None = None, head: bool = False) -> None:
        found = self.hub.files(repo, rev)
        if found is None:
            return self._error(404, "RevisionNotFound", f"Revision {rev} not found")
        prefix = f"{sub.strip('/')}/" if sub else ""
        entries = [
            {"type": "file", "path": p, "size": len(b), "oid": _git_sha(b)}
            for p, b in sorted(found[1].items())
            if p.startswith(prefix)
        ]
        self._json(200, entries)

    def resolve(self, repo: str, rev: str, file: str, head: bool) -> None:
        found = self.hub.files(repo, rev)
        if found is None:
            return self._error(404, "RevisionNotFound", f"Revision {rev} not found", head)
        sha, files = found
        if file not in files:
            return self._error(404, "EntryNotFound", f"{file} does not exist in {repo}", head)
        data = files[file]
        headers = {"X-Repo-Commit": sha, "ETag": f'"{_git_sha(data)}"'}
        self._send(200, data, headers | {"Content-Type": "application/octet-stream"}, head)


class HubServer:
    """`with HubServer() as hub:` serves on 127.0.0.1 at a free port; `hub.endpoint` is its URL."""

    def __init__(self) -> None:
        self.state = FakeHub()
        handler = type("Handler", (_Handler,), {"hub": self.state})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> HubServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    @property
    def unknown(self) -> list[str]:
        return self.state.unknown


if __name__ == "__main__":
    with HubServer() as server:
        print(server.endpoint, flush=True)
        try:
            while True:
                time.sleep(1)
        except KeyboardInterrupt:
            print("unknown routes:", server.unknown)
