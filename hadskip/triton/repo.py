"""Write a Triton model repository that serves a hadskip model dir (torch-free; no Triton needed to write it).

    write_repo(model_dir, "repo", TritonRepoConfig(backend="ort-cpu")) -> Path("repo/hadskip")

    REPO/NAME/config.pbtxt    Python backend, dynamic batching, instance_group, the parameters model.py reads
    REPO/NAME/labels.txt      one label per line (Triton's classification extension on PROBS)
    REPO/NAME/1/model.py      hadskip/triton/model.py, verbatim
    REPO/NAME/1/model/        the model dir's manifest and every file it lists (unless `copy=False`, which
                              references the model dir by absolute path instead); sha256s are checked here
                              and again by every instance when it loads

The folder is written beside its final place and renamed into it, so an interrupted write never leaves a
model Triton would load. Not included: ensembles, per-layer Triton models (docs/triton.md explains why the
whole runtime is one Python model), model warmup entries.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from hadskip.errors import HadSkipError
from hadskip.runtime.hub import resolve_model
from hadskip.runtime.manifest import MANIFEST, check_inside, load_manifest

BACKENDS = ("ort-cpu", "ort-cuda", "trt")
GPU_BACKENDS = ("ort-cuda", "trt")
MODEL_PY = Path(__file__).with_name("model.py")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


@dataclass
class TritonRepoConfig:
    """How the model is served; every field is a `hadskip triton-repo` option."""

    name: str = "hadskip"  # the model's name in Triton's URLs (/v2/models/NAME/infer)
    backend: str = "ort-cpu"  # runtime backend inside each instance: ort-cpu | ort-cuda | trt
    instances: int = 1  # model instances; for ort-cuda/trt this many on EACH listed GPU
    gpus: tuple[int, ...] | None = None  # GPUs of a KIND_GPU group (None: every GPU Triton sees)
    max_batch: int = 32  # max_batch_size: the most rows one execution (one Runtime.predict call) gets
    preferred_batch: tuple[int, ...] | None = None  # dynamic batcher's preferred sizes (None: (max_batch,))
    max_queue_delay_us: int = 2000  # how long the batcher holds a request to fill a batch
    threads: int | None = None  # onnxruntime intra-op threads per session per instance (None: ORT's default)
    copy: bool = True  # copy the model dir into the repo; False: reference it by absolute path
    python_env: str | None = None  # EXECUTION_ENV_PATH: a Python env (folder or conda-pack .tar.gz) with hadskip
    max_text_bytes: int = 1 << 20  # a longer TEXT / TEXT_PAIR fails its request (cost stays bounded)
    version: int = 1  # the model version folder

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise HadSkipError(f"model name {self.name!r} must be letters, digits, '_', '.' or '-' "
                               "(at most 128, starting with a letter or digit)")
        if self.backend not in BACKENDS:
            raise HadSkipError(f"backend must be one of {', '.join(BACKENDS)} for Triton, got {self.backend!r}")
        for field_name, low in (("instances", 1), ("max_batch", 1), ("max_text_bytes", 1), ("version", 1),
                                ("max_queue_delay_us", 0)):
            value = getattr(self, field_name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise HadSkipError(f"{field_name} must be an integer >= {low}, got {value!r}")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise HadSkipError(f"threads must be >= 1, got {self.threads!r}")
        if self.gpus is not None:
            self.gpus = tuple(self.gpus)
            if self.backend not in GPU_BACKENDS:
                raise HadSkipError(f"gpus only apply to ort-cuda and trt, not {self.backend}")
            if not self.gpus or any(not isinstance(g, int) or g < 0 for g in self.gpus):
                raise HadSkipError(f"gpus must be GPU indices >= 0, got {list(self.gpus)}")
        preferred = self.preferred_batch if self.preferred_batch is not None else (self.max_batch,)
        self.preferred_batch = tuple(sorted(set(preferred)))
        if not self.preferred_batch or any(not 1 <= b <= self.max_batch for b in self.preferred_batch):
            raise HadSkipError(f"preferred batch sizes must be within 1..{self.max_batch} (max batch), "
                               f"got {list(preferred)}")
        if self.python_env is not None:
            _check_python_env(_check_text(self.python_env, "python_env"))

    @property
    def kind(self) -> str:
        return "KIND_GPU" if self.backend in GPU_BACKENDS else "KIND_CPU"


def _check_python_env(value: str) -> None:
    """EXECUTION_ENV_PATH is read by the server: a path under the model's own folder (Triton expands
    $$TRITON_MODEL_DIRECTORY) is taken as it is; any other path must be, here, a Python env folder (bin/python)
    or a conda-pack .tar.gz, so a typo is caught when the repository is written, not when Triton loads it."""
    if value.startswith("$$TRITON_MODEL_DIRECTORY"):
        return
    p = Path(value)
    if not p.is_absolute():
        raise HadSkipError(f"python_env {value!r} must be an absolute path or start with $$TRITON_MODEL_DIRECTORY")
    if p.is_dir():
        if not (p / "bin" / "python").exists() and not (p / "bin" / "python3").exists():
            raise HadSkipError(f"python_env {value} is a folder without bin/python: not a Python environment")
    elif not (p.is_file() and value.endswith((".tar.gz", ".tgz"))):
        raise HadSkipError(f"python_env {value} does not exist here (give an env folder or a conda-pack .tar.gz, "
                           "or a path starting with $$TRITON_MODEL_DIRECTORY)")


def _check_text(value: str, what: str) -> str:
    if any(ord(c) < 32 or c in '"\\' for c in value):
        raise HadSkipError(f"{what} {value!r} must not hold quotes, backslashes or control characters")
    return value


def config_pbtxt(config: TritonRepoConfig, num_labels: int, num_layers: int, model_dir_param: str) -> str:
    """The text of config.pbtxt (protobuf text format) for a model with these label and layer counts."""
    c = config
    inputs = [
        '  { name: "TEXT" data_type: TYPE_STRING dims: [ 1 ] }',
        '  { name: "TEXT_PAIR" data_type: TYPE_STRING dims: [ 1 ] optional: true }',
        # a target average of layers per row through the model's budget dial; rows with different budgets
        # share one execution (model.py passes them to Runtime.predict per row)
        '  { name: "BUDGET" data_type: TYPE_FP32 dims: [ 1 ] optional: true }',
    ]
    outputs = [
        '  { name: "LABEL_ID" data_type: TYPE_INT64 dims: [ 1 ] }',
        f'  {{ name: "PROBS" data_type: TYPE_FP32 dims: [ {num_labels} ] label_filename: "labels.txt" }}',
        f'  {{ name: "LAYERS" data_type: TYPE_INT8 dims: [ {num_layers} ] }}',
    ]
    group = f"count: {c.instances} kind: {c.kind}"
    if c.gpus is not None:
        group += f" gpus: [ {', '.join(str(g) for g in c.gpus)} ]"
    params = {"HADSKIP_MODEL_DIR": model_dir_param, "HADSKIP_BACKEND": c.backend,
              "HADSKIP_THREADS": "" if c.threads is None else str(c.threads),
              "HADSKIP_MAX_TEXT_BYTES": str(c.max_text_bytes)}
    if c.python_env is not None:
        params["EXECUTION_ENV_PATH"] = c.python_env
    lines = [
        f'name: "{c.name}"',
        'backend: "python"',
        f"max_batch_size: {c.max_batch}",
        "input [", ",\n".join(inputs), "]",
        "output [", ",\n".join(outputs), "]",
        "dynamic_batching {",
        f"  preferred_batch_size: [ {', '.join(str(b) for b in c.preferred_batch)} ]",
        f"  max_queue_delay_microseconds: {c.max_queue_delay_us}",
        "}",
        f"instance_group [ {{ {group} }} ]",
        *(f'parameters: {{ key: "{k}" value: {{ string_value: "{_check_text(v, k)}" }} }}'
          for k, v in params.items()),
    ]
    return "\n".join(lines) + "\n"


def write_repo(model_dir: str | Path, out: str | Path, config: TritonRepoConfig | None = None,
               force: bool = False, revision: str | None = None) -> Path:
    """Write REPO/NAME for `model_dir` (checked: manifest and every sha256) and return that folder. `model_dir`
    may be a hub repo id (fetched at `revision` into the HF cache: hadskip.runtime.hub).

    An existing REPO/NAME is an error unless `force`, which replaces it; other models in REPO are kept.
    """
    config = config or TritonRepoConfig()
    src = resolve_model(model_dir, revision).resolve()
    manifest = load_manifest(src, verify=True)
    if config.backend == "trt" and not manifest.units.get("engines"):
        raise HadSkipError(f"{src} has no TensorRT engines for backend trt: export it with --engine trt")
    repo = Path(out)
    target = repo / config.name
    _check_repo(repo, src)
    if target.exists() or target.is_symlink():
        if not force:
            raise HadSkipError(f"{target} exists; choose another --out or --name, or pass --force to replace it")
        if not _is_our_model(target):
            raise HadSkipError(f"{target} is not a model this command wrote (no config.pbtxt naming "
                               "HADSKIP_MODEL_DIR); refusing to replace it even with --force")
        others = _not_written_here(target)
        if others:
            raise HadSkipError(f"{target} holds files this command did not write ({', '.join(others[:3])}); "
                               "refusing to replace it even with --force (move them out first)")
    try:
        repo.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a file on the way, no permission, read-only file system
        raise HadSkipError(f"cannot create the repository folder {repo}: {exc.strerror or exc}") from None
    tmp = Path(tempfile.mkdtemp(prefix=f".{config.name}.", dir=repo))  # a dot name: Triton skips it
    try:
        version = tmp / str(config.version)
        version.mkdir()
        shutil.copyfile(MODEL_PY, version / "model.py")
        if config.copy:
            _copy_model(src, version / "model", [MANIFEST, *manifest.files])
            model_param = "model"
        else:
            model_param = _check_text(str(src), "the model dir path")
        (tmp / "labels.txt").write_text("".join(f"{_one_line(label)}\n" for label in manifest.labels))
        (tmp / "config.pbtxt").write_text(config_pbtxt(config, len(manifest.labels), manifest.num_layers,
                                                       model_param))
        if config.copy:
            load_manifest(version / "model", verify=True)  # the copy is what Triton will load
        if target.exists():  # force: swap, then drop the old one
            old = Path(tempfile.mkdtemp(prefix=f".{config.name}.old.", dir=repo))
            target.rename(old / "model")
            tmp.rename(target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _check_repo(repo: Path, model_dir: Path) -> None:
    """The repository may not be the model dir, lie inside it (the model dir holds only what export wrote), hold
    it, or be a hadskip run dir or model dir."""
    r = repo.resolve()
    if r == model_dir or model_dir in r.parents:
        raise HadSkipError(f"--out {repo} is inside the model dir {model_dir}; give a folder outside it")
    if r in model_dir.parents:
        raise HadSkipError(f"--out {repo} holds the model dir {model_dir}; give a folder that does not contain it")
    for marker, what in (("run.json", "a hadskip run dir"), (MANIFEST, "a hadskip model dir")):
        if (r / marker).is_file():
            raise HadSkipError(f"--out {repo} is {what}, not a Triton model repository; give another folder")


def _is_our_model(target: Path) -> bool:
    config = target / "config.pbtxt"
    if target.is_symlink() or not target.is_dir() or config.is_symlink() or not config.is_file():
        return False
    try:
        return '"HADSKIP_MODEL_DIR"' in config.read_text(encoding="utf-8", errors="replace")[:1 << 20]
    except OSError:
        return False


def _not_written_here(target: Path) -> list[str]:
    """Entries of an earlier REPO/NAME that write_repo does not write: config.pbtxt, labels.txt, and version
    folders holding model.py and model/ (plus Python's __pycache__)."""
    found = []
    for e in sorted(target.iterdir()):
        if e.is_symlink():
            found.append(f"{e.name} (a symlink)")
        elif e.name in ("config.pbtxt", "labels.txt") and e.is_file():
            continue
        elif e.is_dir() and e.name.isdigit():
            found += [f"{e.name}/{x.name}" for x in sorted(e.iterdir())
                      if x.is_symlink() or x.name not in ("model.py", "model", "__pycache__")]
        else:
            found.append(e.name)
    return found


def _one_line(label: str) -> str:
    return " ".join(str(label).split()) or "_"


def _copy_model(src: Path, dst: Path, relpaths: list[str]) -> None:
    for rel in relpaths:
        path = src / rel
        check_inside(src, path)  # the manifest's own rule (a hub-cache snapshot links into its blobs)
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, dst / rel)
