"""A loopback stand-in for the Hugging Face hub's HTTP API: just the routes huggingface_hub's create_repo,
create_branch, create_commit (preupload, LFS batch + basic PUT, the NDJSON commit), file_exists / hf_hub_download
(HEAD/GET resolve) and snapshot_download (repo info at a revision) call, storing blobs on disk. Tests point the
real client at it with HF_ENDPOINT, so a push and a load go through huggingface_hub itself.

    hub = HubStandin(tmp_path / "hub", token="hf_standin"); hub.start()   # hub.url: the endpoint
    ... HF_ENDPOINT=hub.url HF_TOKEN=hf_standin hadskip push ...
    hub.files("me/model")              # {path: bytes} at main
    hub.stop()

Git is not modelled: a commit is a {path: sha256 of the blob} map with a made-up 40-hex id. Writes need the token
(401 without it, like the hub); a private repo reads as missing (404) without it."""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

import yaml


class HubStandin:
    def __init__(self, root: str | Path, token: str = "hf_standin"):
        self.root = Path(root)
        (self.root / "blobs").mkdir(parents=True, exist_ok=True)
        self.token = token
        self.repos: dict[str, dict] = {}  # repo id -> {"private", "refs": {branch: commit}, "commits": {id: files}}
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request, for tests
        self.lock = threading.Lock()
        self.server: ThreadingHTTPServer | None = None

    # -- lifecycle -----------------------------------------------------------------------------------------
    def start(self) -> HubStandin:
        hub = self

        class Handler(_Handler):
            standin = hub

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    # -- state ---------------------------------------------------------------------------------------------
    def blob(self, sha: str) -> bytes:
        return (self.root / "blobs" / sha).read_bytes()

    def put_blob(self, data: bytes) -> str:
        sha = hashlib.sha256(data).hexdigest()
        (self.root / "blobs" / sha).write_bytes(data)
        return sha

    def commit_of(self, repo_id: str, revision: str) -> str | None:
        repo = self.repos[repo_id]
        if revision in repo["commits"]:
            return revision
        return repo["refs"].get(revision)

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        commit = self.commit_of(repo_id, revision)
        return {p: self.blob(s) for p, s in self.repos[repo_id]["commits"][commit].items()}


def _new_commit_id(parent: str, files: dict) -> str:
    return hashlib.sha1(json.dumps([parent, sorted(files.items())]).encode()).hexdigest()


class _Handler(BaseHTTPRequestHandler):
    standin: HubStandin
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # quiet
        pass

    # -- plumbing ------------------------------------------------------------------------------------------
    def _body(self) -> bytes:
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _send(self, status: int, body: bytes | dict | None = None, headers: dict | None = None,
              head: bool = False) -> None:
        data = json.dumps(body).encode() if isinstance(body, dict) else (body or b"")
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if isinstance(body, dict):
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if not head:
            self.wfile.write(data)

    def _error(self, status: int, code: str, message: str, head: bool = False) -> None:
        self._send(status, {"error": message}, {"X-Error-Code": code, "X-Error-Message": message}, head=head)

    def _authorised(self) -> bool:
        return self.headers.get("Authorization") == f"Bearer {self.standin.token}"

    def _repo(self, repo_id: str, head: bool = False) -> dict | None:
        repo = self.standin.repos.get(repo_id)
        if repo is None or (repo["private"] and not self._authorised()):
            self._error(404, "RepoNotFound", "Repository not found", head)
            return None
        return repo

    # -- routes --------------------------------------------------------------------------------------------
    def do_HEAD(self) -> None:
        self._get(head=True)

    def do_GET(self) -> None:
        self._get(head=False)

    def _get(self, head: bool) -> None:
        path = unquote(urlparse(self.path).path)
        self.standin.requests.append((self.command, path))
        parts = path.strip("/").split("/")
        with self.standin.lock:
            if parts[:2] == ["api", "models"] and len(parts) >= 4:
                repo_id = "/".join(parts[2:4])
                repo = self._repo(repo_id, head)
                if repo is None:
                    return
                revision = parts[5] if len(parts) >= 6 and parts[4] == "revision" else "main"
                commit = self.standin.commit_of(repo_id, revision)
                if commit is None:
                    return self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}", head)
                files = repo["commits"][commit]
                return self._send(200, {"id": repo_id, "modelId": repo_id, "sha": commit, "private": repo["private"],
                                        "siblings": [{"rfilename": p} for p in sorted(files)]}, head=head)
            if len(parts) >= 5 and parts[2] == "resolve":
                repo_id, revision, rel = "/".join(parts[:2]), parts[3], "/".join(parts[4:])
                repo = self._repo(repo_id, head)
                if repo is None:
                    return
                commit = self.standin.commit_of(repo_id, revision)
                if commit is None:
                    return self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}", head)
                sha = repo["commits"][commit].get(rel)
                if sha is None:
                    return self._error(404, "EntryNotFound", f"{rel} does not exist", head)
                data = self.standin.blob(sha)
                return self._send(200, data, {"X-Repo-Commit": commit, "ETag": f'"{sha}"',
                                              "Content-Type": "application/octet-stream"}, head=head)
        self._error(404, "NotFound", f"no route {path}", head)

    def do_PUT(self) -> None:
        path = unquote(urlparse(self.path).path)
        self.standin.requests.append(("PUT", path))
        parts = path.strip("/").split("/")
        if parts[0] == "lfs-upload" and len(parts) == 2:
            data = self._body()
            if hashlib.sha256(data).hexdigest() != parts[1]:
                return self._error(400, "BadRequest", "sha256 mismatch")
            self.standin.put_blob(data)
            return self._send(200, b"")
        self._error(404, "NotFound", f"no route {path}")

    def do_POST(self) -> None:
        path = unquote(urlparse(self.path).path)
        self.standin.requests.append(("POST", path))
        body = self._body()
        parts = path.strip("/").split("/")
        with self.standin.lock:
            if path == "/api/validate-yaml":
                return self._validate_yaml(json.loads(body))
            if not self._authorised():
                return self._error(401, "Unauthorized", "Invalid credentials in Authorization header")
            if path == "/api/repos/create":
                return self._create(json.loads(body))
            if len(parts) == 6 and parts[:2] == ["api", "models"]:
                repo_id, action, revision = "/".join(parts[2:4]), parts[4], parts[5]
                repo = self._repo(repo_id)
                if repo is None:
                    return
                if action == "preupload":
                    return self._preupload(json.loads(body))
                if action == "commit":
                    return self._commit(repo_id, repo, revision, body)
                if action == "branch":
                    return self._branch(repo_id, repo, revision, json.loads(body or b"{}"))
            if path.endswith(".git/info/lfs/objects/batch"):
                return self._lfs_batch(json.loads(body))
        self._error(404, "NotFound", f"no route {path}")

    def _validate_yaml(self, payload: dict) -> None:
        text = payload.get("content", "")
        if text.startswith("---\n"):
            try:
                meta = yaml.safe_load(text[4:text.index("\n---", 4)])
            except (ValueError, yaml.YAMLError) as exc:
                return self._send(400, {"errors": [{"message": f"invalid YAML: {exc}"}]},
                                  {"X-Error-Code": "BadRequest"})
            if meta is not None and not isinstance(meta, dict):
                return self._send(400, {"errors": [{"message": "metadata must be a mapping"}]})
        self._send(200, {"errors": [], "warnings": []})

    def _create(self, payload: dict) -> None:
        repo_id = f"{payload['organization']}/{payload['name']}"
        url = f"{self.standin.url}/{repo_id}"
        if repo_id in self.standin.repos:
            return self._send(409, {"error": "You already created this model repo", "url": url},
                              {"X-Error-Message": "You already created this model repo"})
        empty = _new_commit_id("", {})
        self.standin.repos[repo_id] = {"private": bool(payload.get("private")), "refs": {"main": empty},
                                       "commits": {empty: {}}}
        self._send(200, {"url": url, "name": repo_id})

    def _branch(self, repo_id: str, repo: dict, branch: str, payload: dict) -> None:
        if branch in repo["refs"]:
            return self._error(409, "Conflict", f"Reference already exists: refs/heads/{branch}")
        start = self.standin.commit_of(repo_id, payload.get("startingPoint") or "main")
        repo["refs"][branch] = start
        self._send(200, {})

    def _preupload(self, payload: dict) -> None:
        out = []
        for f in payload["files"]:
            sample = base64.b64decode(f["sample"])
            binary = b"\0" in sample or f["size"] > 10 << 20  # like the hub: binaries and big files go to LFS
            out.append({"path": f["path"], "uploadMode": "lfs" if binary else "regular", "shouldIgnore": False})
        self._send(200, {"files": out})

    def _lfs_batch(self, payload: dict) -> None:
        objects = []
        for o in payload["objects"]:
            have = (self.standin.root / "blobs" / o["oid"]).is_file()
            obj = {"oid": o["oid"], "size": o["size"]}
            if not have:
                obj["actions"] = {"upload": {"href": f"{self.standin.url}/lfs-upload/{o['oid']}"}}
            objects.append(obj)
        self._send(200, {"transfer": "basic", "objects": objects})

    def _commit(self, repo_id: str, repo: dict, revision: str, body: bytes) -> None:
        if revision not in repo["refs"]:
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        parent = repo["refs"][revision]
        files = dict(repo["commits"][parent])
        for line in body.decode().splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "file":
                files[value["path"]] = self.standin.put_blob(base64.b64decode(value["content"]))
            elif key == "lfsFile":
                if not (self.standin.root / "blobs" / value["oid"]).is_file():
                    return self._error(400, "BadRequest", f"LFS object {value['oid']} was not uploaded")
                files[value["path"]] = value["oid"]
            elif key == "deletedFile":
                files.pop(value["path"], None)
        commit = _new_commit_id(parent, files)
        repo["commits"][commit] = files
        repo["refs"][revision] = commit
        self._send(200, {"commitUrl": f"{self.standin.url}/{repo_id}/commit/{commit}", "commitOid": commit,
                         "pullRequestUrl": None})
