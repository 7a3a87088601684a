"""A process-wide store of sessions that outlive one queue run (GameCraft's play sessions), bounded in count, memory
and idle time, with a clear error for an id it does not hold.

ComfyUI runs each queued prompt as a fresh graph; a node that continues a rollout keeps its state here under a
session id the user (or the live panel) sends with every prompt. The store is a plain LRU: ``put`` adds or
replaces, ``get`` refreshes the idle clock, and sessions are dropped (least recently used first) when there are
more than ``max_sessions``, when their bytes together exceed ``max_bytes``, or when one sat idle longer than
``ttl_seconds``. A dropped id is remembered with the reason, so asking for it says "expired" or "evicted"
instead of "unknown". Objects stored need ``nbytes()``; nothing here knows what a session holds.
"""
from __future__ import annotations

import threading
import time
from collections import OrderedDict

DEFAULT_MAX_SESSIONS = 4
DEFAULT_MAX_BYTES = 16 * 10 ** 9
DEFAULT_TTL = 2 * 3600.0


class SessionError(ValueError):
    """An unknown, expired or evicted session id; the message names it and the fix."""


class SessionStore:
    def __init__(self, max_sessions: int = DEFAULT_MAX_SESSIONS, max_bytes: int = DEFAULT_MAX_BYTES,
                 ttl_seconds: float = DEFAULT_TTL, clock=time.monotonic):
        self.max_sessions, self.max_bytes, self.ttl = int(max_sessions), int(max_bytes), float(ttl_seconds)
        self.clock = clock
        self._items: OrderedDict[str, tuple[object, float]] = OrderedDict()
        self._gone: OrderedDict[str, str] = OrderedDict()  # id -> why it was dropped (bounded)
        self._lock = threading.Lock()

    def configure(self, *, max_sessions: int | None = None, max_bytes: int | None = None,
                  ttl_seconds: float | None = None) -> None:
        with self._lock:
            if max_sessions is not None:
                self.max_sessions = max(1, int(max_sessions))
            if max_bytes is not None:
                self.max_bytes = max(0, int(max_bytes))
            if ttl_seconds is not None:
                self.ttl = float(ttl_seconds)
            self._enforce(keep=None)

    def _forget(self, sid: str, why: str) -> None:
        self._items.pop(sid, None)
        self._gone[sid] = why
        while len(self._gone) > 256:
            self._gone.popitem(last=False)

    def _expire(self) -> None:
        now = self.clock()
        for sid, (_, used) in list(self._items.items()):
            if self.ttl > 0 and now - used > self.ttl:
                self._forget(sid, f"expired after {self.ttl / 60:g} min idle")

    def _enforce(self, keep: str | None) -> None:
        self._expire()
        while len(self._items) > self.max_sessions:
            victim = next(s for s in self._items if s != keep)
            self._forget(victim, f"evicted: more than {self.max_sessions} sessions")
        while self.max_bytes and self.nbytes() > self.max_bytes:
            victims = [s for s in self._items if s != keep]
            if not victims:
                break
            self._forget(victims[0], f"evicted: sessions together exceeded {self.max_bytes / 1e9:g} GB")

    def nbytes(self) -> int:
        return sum(int(obj.nbytes()) for obj, _ in self._items.values())

    def put(self, sid: str, obj) -> None:
        with self._lock:
            self._items[sid] = (obj, self.clock())
            self._items.move_to_end(sid)
            self._gone.pop(sid, None)
            self._enforce(keep=sid)

    def touch(self, sid: str) -> None:
        """Refresh a session's idle clock and re-check the bounds (after it grew)."""
        with self._lock:
            if sid in self._items:
                self._items[sid] = (self._items[sid][0], self.clock())
                self._items.move_to_end(sid)
                self._enforce(keep=sid)

    def get(self, sid: str, where: str = "session"):
        with self._lock:
            self._expire()
            if sid not in self._items:
                why = self._gone.get(sid)
                known = ", ".join(self._items) or "none"
                if why:
                    raise SessionError(f"{where}: session {sid!r} is gone ({why}). Fix: start it again (session "
                                       "'new'), or restore a snapshot with the Session node. Sessions held: "
                                       f"{known}")
                raise SessionError(f"{where}: no session {sid!r} (never started here, or ComfyUI restarted since). "
                                   f"Fix: set session to 'new' to start it, or restore a snapshot. Sessions held: "
                                   f"{known}")
            obj, _ = self._items[sid]
            self._items[sid] = (obj, self.clock())
            self._items.move_to_end(sid)
            return obj

    def has(self, sid: str) -> bool:
        with self._lock:
            self._expire()
            return sid in self._items

    def drop(self, sid: str) -> bool:
        with self._lock:
            if sid in self._items:
                self._forget(sid, "dropped by the user")
                return True
            return False

    def ids(self) -> list[str]:
        with self._lock:
            self._expire()
            return list(self._items)


STORE = SessionStore()
"""The process-wide store (ComfyUI runs every prompt in one process)."""
