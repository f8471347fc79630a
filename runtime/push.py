"""`hadskip push MODEL_DIR REPO_ID`: a model dir to a Hugging Face hub model repo, through huggingface_hub
(the `hub` extra), torch-free.

    push("models/h3", "user/sst2-h3", private=True, revision="v2")   # -> PushReport

Before anything is sent, the model dir is checked against its manifest (every file's size and sha256: a file
changed since export is refused, naming it), and the bytes huggingface_hub is about to upload are checked against
the same sha256s. One commit then holds manifest.json, every file it lists, compare.json when the model dir has
one, and README.md, the model card (`card`):
    "auto"       the model dir's README.md when there is one (uploaded as it is); else the repo's README.md when
                 it already has one (kept: not replaced); else the generated card (runtime/card.py)
    "generated"  the generated card, replacing the repo's README.md (the model dir's own is not uploaded; no
                 local file is ever written or changed)
    "none"       no README.md
    a file path  that file as README.md
Other files in the model dir are not uploaded (they are listed in the report). The repo is created when missing
(`private`); an existing public repo is refused with `private` (pushing would publish what was meant to be
private). `revision`: a branch, created from main when missing. The token is huggingface_hub's own (HF_TOKEN or
`hf auth login`); HF_ENDPOINT points it at another hub. Every failure is one line (HubError).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from hadskip.errors import HadSkipError
from hadskip.runtime.bounded_json import JsonBoundsError, loads_bounded
from hadskip.runtime.card import model_card
from hadskip.runtime.files import sha256_file
from hadskip.runtime.hub import HubError, check_repo_id, hub_errors, hub_module
from hadskip.runtime.manifest import MANIFEST, Manifest, load_manifest

CARD = "README.md"
COMPARE = "compare.json"
CARD_CHOICES = ("auto", "generated", "none")
MAX_CARD_BYTES = 1 << 20  # a README.md given with --card, or the model dir's own
MAX_COMPARE_BYTES = 16 << 20


@dataclass
class PushReport:
    repo_id: str
    revision: str
    commit: str
    url: str
    created: bool  # the repo did not exist
    files: int  # files in the commit
    bytes: int
    card: str  # where README.md came from: "generated", "model dir", "kept (the repo's)", "none", or the file
    not_uploaded: list[str] = field(default_factory=list)  # files of the model dir that are not in the commit

    def to_dict(self) -> dict:
        return asdict(self)


def _read_compare(path: Path) -> dict | None:
    try:
        if path.stat().st_size > MAX_COMPARE_BYTES:
            raise HadSkipError(f"{path} is over {MAX_COMPARE_BYTES} bytes: not a hadskip compare result")
        data = loads_bounded(path.read_text(encoding="utf-8"), 64, 20)
    except (OSError, UnicodeDecodeError, JsonBoundsError) as exc:
        raise HadSkipError(f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("rows"), list):
        raise HadSkipError(f"{path} is not a `hadskip compare` result (no rows)")
    return data


def find_compare(model_dir: Path, manifest: Manifest, run: str | Path | None) -> tuple[dict | None, str]:
    """(the compare result for the card, where it came from): MODEL/compare.json, else with `run` (the run dir
    the model was exported from, checked by its weights' sha256) RUN/compare.json or that of the compare folder
    holding the run (its rows name the run)."""
    own = model_dir / COMPARE
    if own.is_file():
        return _read_compare(own), str(own)
    if run is None:
        return None, ""
    run = Path(run)
    weights = run / "model.safetensors"
    recorded = ((manifest.export or {}).get("run") or {}).get("weights_sha256")
    if not weights.is_file():
        raise HadSkipError(f"--run {run} is not a hadskip run dir (no model.safetensors)")
    if not recorded or sha256_file(weights) != recorded:
        raise HadSkipError(f"--run {run} is not the run {model_dir} was exported from (its weights' sha256 differs "
                           "from the manifest's export.run)")
    for f in (run / COMPARE, run.parent / COMPARE):
        if f.is_file():
            data = _read_compare(f)
            names = {Path(str(r.get("run", ""))).name for r in data["rows"] if isinstance(r, dict)}
            if f.parent == run or run.name in names:
                return data, str(f)
    return None, ""


def _card_source(model_dir: Path, card: str) -> tuple[str, Path | None]:
    """("auto" | "generated" | "none" | "file", the file to upload as README.md or None)."""
    if card in CARD_CHOICES:
        own = model_dir / CARD
        return card, (own if card == "auto" and own.is_file() else None)
    path = Path(card).expanduser()
    if not path.is_file():
        raise HadSkipError(f"--card {card}: choose {', '.join(CARD_CHOICES)} or give a README.md file that exists")
    return "file", path


def _readme_bytes(path: Path) -> bytes:
    size = path.stat().st_size
    if size > MAX_CARD_BYTES:
        raise HadSkipError(f"{path} has {size} bytes; a model card has at most {MAX_CARD_BYTES}")
    data = path.read_bytes()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        raise HadSkipError(f"{path} is not UTF-8 text: not a model card") from None
    return data


def push(model_dir: str | Path, repo_id: str, *, private: bool = False, revision: str | None = None,
         card: str = "auto", run: str | Path | None = None, message: str | None = None) -> PushReport:
    """Upload model dir `model_dir` to hub model repo `repo_id` (see the module docstring)."""
    root = Path(model_dir).expanduser()
    if not root.is_dir():
        raise HadSkipError(f"model dir {model_dir} does not exist (push takes a local model dir)")
    check_repo_id(repo_id)
    if revision is not None and (not revision.strip() or revision != revision.strip() or ".." in revision):
        raise HadSkipError(f"--revision {revision!r} is not a branch name")
    manifest = load_manifest(root, verify=True)  # a changed, missing or linked-out file is refused here
    kind, readme = _card_source(root, card)
    compare, _ = find_compare(root, manifest, run)
    uploads = [MANIFEST, *manifest.files] + ([COMPARE] if (root / COMPARE).is_file() else [])

    hub = hub_module("hadskip push")
    from huggingface_hub import CommitOperationAdd, constants

    branch = revision or "main"
    at = f"{repo_id}" + (f" (branch {branch})" if revision else "")
    if constants.HF_HUB_OFFLINE:
        raise HubError(f"HF_HUB_OFFLINE is set: pushing to {at} needs the network (unset HF_HUB_OFFLINE)")
    if hub.get_token() is None:
        raise HubError("no Hugging Face token: log in with `hf auth login` or set HF_TOKEN (a write token)")
    api = hub.HfApi()
    with hub_errors(hub, at, repo_id, revision, writing=True):
        created = _create(api, hub, repo_id, private)
        if branch != "main":
            api.create_branch(repo_id, branch=branch, exist_ok=True)
        readme_bytes, where = None, "none"
        if kind == "file" or readme is not None:
            readme_bytes, where = _readme_bytes(readme), ("model dir" if kind == "auto" else str(readme))
        elif kind == "generated" or (kind == "auto" and (created or not api.file_exists(repo_id, CARD,
                                                                                          revision=branch))):
            readme_bytes, where = model_card(manifest, repo_id, compare).encode("utf-8"), "generated"
        elif kind == "auto":
            where = "kept (the repo's)"
        ops = [CommitOperationAdd(path_in_repo=rel, path_or_fileobj=str(root / rel)) for rel in uploads]
        for op in ops:  # the bytes huggingface_hub hashed for the upload are the ones the manifest vouches for
            meta = manifest.files.get(op.path_in_repo)
            if meta is not None and op.upload_info.sha256.hex() != meta["sha256"]:
                raise HadSkipError(f"{root / op.path_in_repo} changed while pushing: its sha256 no longer matches "
                                   f"{root / MANIFEST}")
        if readme_bytes is not None:
            ops.append(CommitOperationAdd(path_in_repo=CARD, path_or_fileobj=readme_bytes))
        info = api.create_commit(repo_id, operations=ops, revision=branch,
                                 commit_message=message or f"hadskip push: {manifest.num_layers}-layer "
                                                           f"{manifest.backbone.get('model_type', '')} model dir")
    listed = set(uploads) | ({CARD} if where == "model dir" else set())
    others = sorted(str(p.relative_to(root)) for p in root.rglob("*")
                    if (p.is_file() or p.is_symlink()) and str(p.relative_to(root)) not in listed)
    total = sum(op.upload_info.size for op in ops)
    return PushReport(repo_id=repo_id, revision=branch, commit=str(info.oid), url=str(info.commit_url),
                      created=created, files=len(ops), bytes=total, card=where, not_uploaded=others)


def _create(api, hub, repo_id: str, private: bool) -> bool:
    """Create the repo when missing (True), else False; an existing public repo is refused with `private`."""
    from huggingface_hub.errors import HfHubHTTPError

    try:
        api.create_repo(repo_id, private=private, exist_ok=False)
        return True
    except HfHubHTTPError as exc:
        if getattr(exc.response, "status_code", None) != 409:
            raise
    if private and not api.repo_info(repo_id).private:
        raise HubError(f"hub repo {repo_id} exists and is public, and --private was asked: pushing would publish "
                       "the model (make the repo private on the hub first, or push without --private)")
    return False


def report_line(r: PushReport) -> str:
    """The one-line summary `hadskip push` prints."""
    made = "created" if r.created else "updated"
    skipped = f"; not uploaded: {', '.join(r.not_uploaded[:5])}" + ("..." if len(r.not_uploaded) > 5 else "") \
        if r.not_uploaded else ""
    return (f"{made} {r.repo_id} ({r.revision}): commit {r.commit[:12]}, {r.files} files, {r.bytes} bytes, "
            f"card: {r.card}{skipped}; load it with hadskip.pipeline({json.dumps(r.repo_id)})")
