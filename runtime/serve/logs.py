"""Logging that a client cannot flood: repeated records are rate-limited per message, and only the first of a
burst keeps its traceback.

A flood of bad requests, or of accept() errors when file descriptors run out, once grew the log by 175 MB in
30 s. `RateLimit` (a logging.Filter on the server's loggers) lets through `burst` records per message template
per `period_s`, and at most `total` records of any kind per period; the first record let through after a
suppression says how many were dropped.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

LOGGERS = ("uvicorn", "uvicorn.error", "asyncio")  # where uvicorn, asyncio's loop and the server write


class RateLimit(logging.Filter):
    def __init__(self, burst: int = 5, period_s: float = 60.0, total: int = 100,
                 clock: Callable[[], float] = time.monotonic):
        super().__init__()
        self.burst, self.period_s, self.total, self.clock = burst, period_s, total, clock
        self.lock = threading.Lock()
        self.window_start = clock()
        self.seen: dict[tuple, int] = {}  # (logger, level, template) -> records let through in this window
        self.passed = 0
        self.dropped = 0

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.levelno, str(record.msg)[:200])
        with self.lock:
            now = self.clock()
            if now - self.window_start >= self.period_s:
                self.window_start, self.seen, self.passed = now, {}, 0
            n = self.seen.get(key, 0)
            if n >= self.burst or self.passed >= self.total:
                self.dropped += 1
                return False
            if len(self.seen) < 4 * self.total:
                self.seen[key] = n + 1
            self.passed += 1
            dropped, self.dropped = self.dropped, 0
        if n:  # a repeat: one line, no traceback
            record.exc_info, record.exc_text, record.stack_info = None, None, None
        if dropped:
            record.msg = f"[{dropped} log records dropped by the rate limit] {record.msg}"
        return True


def install(limit: RateLimit | None = None) -> RateLimit:
    """Put one RateLimit on the server's loggers (once; later calls return the one installed)."""
    for name in LOGGERS:
        for f in logging.getLogger(name).filters:
            if isinstance(f, RateLimit):
                return f
    limit = limit or RateLimit()
    for name in LOGGERS:
        logging.getLogger(name).addFilter(limit)
    return limit
