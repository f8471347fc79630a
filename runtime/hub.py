"""A model dir named by a Hugging Face hub repo id: the one resolver every loader calls (torch-free).

    resolve_model("models/h3")              # a local folder that exists: itself (a local dir always wins)
    resolve_model("user/sst2-h3")           # else a repo id: fetched into the HF cache, the snapshot folder
    resolve_model("user/sst2-h3", "v2")     # a branch, tag or commit (--revision)

Fetching goes through huggingface_hub (the `hub` extra; imported only here and only for a repo id), so the
hub's own settings hold: HF_HOME / HF_HUB_CACHE for the cache, HF_HUB_OFFLINE=1 for the cache only, HF_ENDPOINT,
HF_TOKEN or a `hf auth login` for private repos. manifest.json is fetched first and read, so a repo that is not
a hadskip model dir fails before anything else is downloaded; then exactly the files it lists, at the same
commit. The snapshot's files are links into the cache's blobs (runtime/manifest.py `check_inside` allows that
for a snapshot folder only), and the caller's manifest checks (every sha256) run on them as on any model dir.
Every failure is one line (HubError, MissingExtraError naming the extra).
"""

from __future__ import annotations

import glob
import re
from pathlib import Path

from hadskip.errors import HadSkipError, require
from hadskip.runtime.manifest import MANIFEST, ManifestError, load_manifest

EXTRA = "hub"  # pip install 'hadskip[hub]' installs huggingface_hub
_PART = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?")


class HubError(HadSkipError):
    """A hub repo that cannot be fetched or written: not found, unauthorised, offline, not a hadskip model."""


def looks_like_repo_id(name: str) -> bool:
    """Whether `name` is written as a hub repo id (owner/name) rather than a local path: one slash, no leading
    '.', '/' or '~', no backslash or space. Validity is check_repo_id's job."""
    return (name.count("/") == 1 and not name.startswith((".", "/", "~")) and "\\" not in name
            and not any(c.isspace() for c in name) and all(name.split("/")))


def check_repo_id(repo_id: str) -> str:
    """`repo_id` when it is a valid hub model repo id (owner/name: letters, digits, '-', '_', '.', at most 96
    each, no '..' or '--', not ending in .git), else HubError in one line."""
    parts = repo_id.split("/") if isinstance(repo_id, str) else []
    if len(parts) != 2 or not all(_PART.fullmatch(p) for p in parts) or ".." in repo_id or "--" in repo_id \
            or repo_id.endswith(".git"):
        raise HubError(f"{str(repo_id)[:200]!r} is not a hub repo id: write owner/name (letters, digits, '-', '_', "
                       "'.'; no '..' or '--'; at most 96 characters each)")
    return repo_id


def hub_module(what: str):
    """huggingface_hub, or MissingExtraError naming the `hub` extra."""
    return require("huggingface_hub", EXTRA, what)


def resolve_model(model: str | Path, revision: str | None = None) -> Path:
    """The local folder of `model`: itself when it exists (a local dir wins over a repo id of the same
    spelling), else the hub repo `model` fetched into the HF cache at `revision` (None: main). A name that is not
    written as a repo id comes back as a Path, for the caller's own "does not exist" message."""
    path = Path(model).expanduser()
    if path.exists():
        if revision is not None:
            raise HadSkipError(f"--revision {revision} applies to a hub repo id, and {model} is a local folder")
        return path
    name = str(model)
    if not looks_like_repo_id(name):
        if revision is not None:
            raise HadSkipError(f"--revision {revision} applies to a hub repo id; {name} is neither a local folder "
                               "nor written as one (owner/name)")
        return path
    check_repo_id(name)
    return download(name, revision)


def download(repo_id: str, revision: str | None = None) -> Path:
    """The snapshot folder of hub model repo `repo_id` at `revision`, holding manifest.json and every file it
    lists (fetched into the HF cache, or found there when HF_HUB_OFFLINE=1)."""
    hub = hub_module(f"loading {repo_id} from the Hugging Face hub (there is no local folder {repo_id})")
    at = f"{repo_id}" + (f" at revision {revision}" if revision else "")
    with hub_errors(hub, at, repo_id, revision):
        first = Path(hub.hf_hub_download(repo_id, MANIFEST, revision=revision))
    snapshot = first.parent
    try:
        manifest = load_manifest(snapshot, verify=False)
    except ManifestError as exc:
        raise HubError(f"hub repo {at} is not a hadskip model dir: {exc}") from None
    patterns = [glob.escape(p) for p in (MANIFEST, *manifest.files)]
    with hub_errors(hub, at, repo_id, revision):  # the same commit as manifest.json (the snapshot's name)
        got = Path(hub.snapshot_download(repo_id, revision=snapshot.name, allow_patterns=patterns))
    return got


class hub_errors:
    """Turns huggingface_hub's and the network's exceptions into one-line HubErrors naming the repo."""

    def __init__(self, hub, at: str, repo_id: str, revision: str | None, writing: bool = False):
        self.hub, self.at, self.repo_id, self.revision, self.writing = hub, at, repo_id, revision, writing

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        if exc is None or not isinstance(exc, Exception) or isinstance(exc, HadSkipError):
            return False
        raise HubError(self.message(exc)) from None

    def message(self, exc: Exception) -> str:
        from huggingface_hub import constants
        from huggingface_hub import errors as e

        login = "log in with `hf auth login` or set HF_TOKEN"
        status = getattr(getattr(exc, "response", None), "status_code", None)
        offline = bool(getattr(constants, "HF_HUB_OFFLINE", False))
        if isinstance(exc, e.OfflineModeIsEnabled) or (offline and self.writing):
            return f"HF_HUB_OFFLINE is set: {self.at} cannot be reached (unset HF_HUB_OFFLINE to use the network)"
        local = "" if self.writing else f" (and there is no local folder {self.repo_id})"
        if isinstance(exc, e.LocalEntryNotFoundError):
            if offline:
                return (f"{self.at} is not in the hub cache ({constants.HF_HUB_CACHE}) and HF_HUB_OFFLINE is set: "
                        f"fetch it once with the network on, or unset HF_HUB_OFFLINE{local}")
            return f"cannot reach the hub ({constants.ENDPOINT}) and {self.at} is not in the hub cache{local}"
        if isinstance(exc, e.GatedRepoError):
            return f"hub repo {self.repo_id} is gated: ask for access on the hub, then {login}"
        if isinstance(exc, e.RepositoryNotFoundError):
            return (f"hub repo {self.repo_id} was not found, or is private and this token cannot see it "
                    f"({login}){local}")
        if isinstance(exc, e.RevisionNotFoundError):
            return f"hub repo {self.repo_id} has no revision {self.revision} (a branch, tag or commit)"
        if isinstance(exc, e.EntryNotFoundError):
            return f"hub repo {self.at} holds no {MANIFEST}: it is not a hadskip model dir (push one with hadskip push)"
        if status in (401, 403):
            return f"the hub refused ({status}) {'writing to' if self.writing else 'reading'} {self.at}: {login}"
        if isinstance(exc, e.HfHubHTTPError):
            return f"the hub answered an error for {self.at}: {_first_line(exc)}"
        if isinstance(exc, (OSError, ConnectionError)):  # requests' connection errors are OSErrors
            return f"cannot reach the hub ({constants.ENDPOINT}) for {self.at}: {_first_line(exc)}"
        if isinstance(exc, ValueError):
            return f"{self.at}: {_first_line(exc)}"
        return f"{self.at}: {type(exc).__name__}: {_first_line(exc)}"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:300]
