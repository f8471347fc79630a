"""What the loopback benchmarks of `hadskip serve-local` (load_test, slow_bodies, bounded_cost) share: the model dir
argument and the options each takes (a loopback-only --host, --start-timeout-s, --json) with their checks, a free
port, and the tiny random model dir they serve without MODEL_DIR. serve_process.py starts and stops the server.

    p = loopback.parser(__doc__, tiny_default=True)       # MODEL_DIR (optional: a tiny random one)
    p.add_argument(...)                                   # the benchmark's own options
    args = loopback.parse(p, argv, start_timeout_s=180.0)  # + --host, --start-timeout-s, --json; checked
"""

from __future__ import annotations

import argparse
import socket
from pathlib import Path

from hadskip.runtime.serve.config import is_loopback


def parser(doc: str, *, tiny_default: bool) -> argparse.ArgumentParser:
    """An ArgumentParser described by the first paragraph of `doc`, with MODEL_DIR (optional with `tiny_default`:
    then a tiny random one is built)."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    if tiny_default:
        p.add_argument("model", type=Path, nargs="?", help="model dir (default: build a tiny random one)")
    else:
        p.add_argument("model", type=Path, help="model dir written by `hadskip export`")
    return p


def parse(p: argparse.ArgumentParser, argv: list[str] | None, *, start_timeout_s: float) -> argparse.Namespace:
    """Adds --host, --start-timeout-s and --json (after the benchmark's own options, so --help lists those first)
    and parses; exit 2 (p.error) for a host that is not this machine or a folder that is not a model dir."""
    p.add_argument("--host", default="127.0.0.1", help="loopback only")
    p.add_argument("--start-timeout-s", type=float, default=start_timeout_s)
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    args = p.parse_args(argv)
    if not is_loopback(args.host):
        p.error(f"--host {args.host} is not a loopback address: this benchmark only targets this machine")
    if args.model is not None and not (args.model / "manifest.json").is_file():
        p.error(f"{args.model} is not a model dir (no manifest.json)")
    return args


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def tiny_model_dir(root: Path) -> Path:
    """ROOT/model: a tiny random model dir, exported from a run built the way the tests build theirs (max length
    64; needs the train and export extras)."""
    from hadskip.export import export_model
    from hadskip.testing import tiny_run

    run = tiny_run(root / "run", max_len=64)
    export_model(run, root / "model", validate=False, progress=False)
    return root / "model"
