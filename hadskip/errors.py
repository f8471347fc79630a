"""User-facing errors: one clear line, no traceback (the CLI prints `error: <message>` and exits 2)."""

from __future__ import annotations

import math


class HadSkipError(Exception):
    """Bad input or a missing resource that the user can fix; the message says what and how."""


class MissingExtraError(HadSkipError):
    """An optional dependency is not installed; the message names the extra to install."""

    def __init__(self, package: str, extra: str, what: str = ""):
        self.package, self.extra = package, extra
        purpose = f" for {what}" if what else ""
        super().__init__(f"{package} is needed{purpose}: pip install 'hadskip[{extra}]'")


def require(module: str, extra: str, what: str = ""):
    """Import an optional dependency or raise MissingExtraError naming the extra."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:  # the dependency (or one of its own) is absent
        raise MissingExtraError(module.split(".")[0], extra, what) from exc


def check_finite(name: str, value, *, low: float | None = None, low_open: bool = False) -> None:
    """A number setting is finite (not NaN or inf) and at least `low` (above it when `low_open`)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise HadSkipError(f"{name} must be a finite number, got {value!r}")
    if low is not None and (value <= low if low_open else value < low):
        raise HadSkipError(f"{name} must be {'>' if low_open else '>='} {low:g}, got {value:g}")
