"""Snowflake-style message ids, like the 19-digit ids JetLinks puts on its messages."""

from __future__ import annotations

import itertools
import threading
import time

_EPOCH_MS = 1288834974657  # Twitter's snowflake epoch, as JetLinks' ids use


class SnowflakeIds:
    """Unique, increasing, decimal-string ids: ms since epoch << 22 | sequence."""

    def __init__(self, worker: int = 1) -> None:
        self._worker = worker & 0x3FF
        self._lock = threading.Lock()
        self._last = 0
        self._seq = itertools.count()

    def next(self) -> str:
        with self._lock:
            ms = int(time.time() * 1000) - _EPOCH_MS
            value = (ms << 22) | (self._worker << 12) | (next(self._seq) & 0xFFF)
            self._last = max(value, self._last + 1)
            return str(self._last)


_default = SnowflakeIds()


def new_message_id() -> str:
    return _default.next()
