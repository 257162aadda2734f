"""Checkpointer: when to write an open document back to storage.

A change starts the clock. The document is written once nobody has typed for
``quiet_period`` seconds, and at the latest ``max_interval`` seconds after the first change
that is not yet saved, so continuous typing cannot postpone a save forever (a pure debounce,
as upstream jupyter-collaboration has, can). ``flush()`` saves at once: when the last client
leaves and at shutdown. A failed save keeps the document dirty and is retried with
exponential backoff; nothing is dropped.

With the defaults (2 s, 30 s), someone typing without a pause gets a checkpoint, that is a
CS3 version, every 30 s; someone who types a sentence and stops gets one 2 s later.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

import anyio

from mesh_collab import metrics
from mesh_collab.errors import MeshCollabError


class Checkpointer:
    """Schedules saves of one document.

    Args:
        save: writes the document; raising keeps it dirty for a retry.
        quiet_period: seconds without change before saving.
        max_interval: seconds after the first unsaved change by which a save starts anyway.
        max_backoff: longest wait between retries of a failed save, in seconds.
    """

    def __init__(
        self,
        save: Callable[[], Awaitable[None]],
        *,
        quiet_period: float = 2.0,
        max_interval: float = 30.0,
        max_backoff: float = 30.0,
        on_saved: Callable[[], None] | None = None,
        log: logging.Logger | None = None,
    ) -> None:
        if quiet_period < 0 or max_interval <= 0:
            raise ValueError(f"bad checkpoint periods: {quiet_period!r}, {max_interval!r}")
        self._save = save
        self._on_saved = on_saved
        self.quiet_period = quiet_period
        self.max_interval = max_interval
        self.max_backoff = max_backoff
        self.log = log or logging.getLogger(__name__)
        self._first_change: float | None = None
        self._last_change = 0.0
        self._wake = anyio.Event()
        self._lock = anyio.Lock()
        self.enabled = True
        self.saves = 0
        self.failures = 0
        self.last_saved: float | None = None
        self.saved = anyio.Event()

    @property
    def dirty(self) -> bool:
        """Whether there are changes not yet saved."""
        return self._first_change is not None

    @property
    def unsaved_since(self) -> float | None:
        """The ``time.monotonic()`` of the oldest change not yet saved; None if saved."""
        return self._first_change

    def set_enabled(self, enabled: bool) -> None:
        """Allow or stop saving (stopped while our lock is lost or another app holds it)."""
        self.enabled = enabled
        self._wake.set()

    def changed(self) -> None:
        """Note a change (call from the room loop: never waits).

        Only the first change wakes the saver: later ones move its due time later, which it
        finds when it wakes (a wake per keystroke cost the node a task switch and a timer).
        """
        now = time.monotonic()
        self._last_change = now
        if self._first_change is None:
            self._first_change = now
            self._wake.set()

    def _due(self) -> float:
        assert self._first_change is not None
        return min(self._last_change + self.quiet_period, self._first_change + self.max_interval)

    async def run(self) -> None:
        """Save whenever due, until cancelled."""
        backoff = 1.0
        while True:
            if not self.dirty or not self.enabled:
                await self._wake.wait()
                self._wake = anyio.Event()
                continue
            delay = self._due() - time.monotonic()
            if delay > 0:
                with anyio.move_on_after(delay):
                    await self._wake.wait()
                self._wake = anyio.Event()
                continue
            if await self.flush():
                backoff = 1.0
            else:
                with anyio.move_on_after(backoff):
                    await anyio.sleep_forever()
                backoff = min(backoff * 2, self.max_backoff)

    async def flush(self) -> bool:
        """Save now if there are unsaved changes. Returns whether the document is saved.

        Errors (storage unavailable, lock lost, and any other) are logged and leave the
        document dirty; they do not propagate: a failed save never closes the room.
        """
        async with self._lock:
            if not self.dirty:
                return True
            if not self.enabled:
                return False
            started = self._first_change
            self._first_change = None
            begin = time.monotonic()
            try:
                await self._save()
            except Exception as exc:
                # Changes made before this save are still unsaved: keep the older start.
                if self._first_change is None or (started or 0) < self._first_change:
                    self._first_change = started
                self.failures += 1
                metrics.COUNTS.checkpoint_failures += 1
                if isinstance(exc, MeshCollabError):
                    self.log.warning("checkpoint failed, will retry: %s", exc)
                else:  # a defect, but the room and its users carry on
                    self.log.exception("checkpoint failed, will retry")
                return False
            self.saves += 1
            metrics.CHECKPOINT_DURATION.observe(time.monotonic() - begin)
            self.last_saved = time.time()
            self.saved.set()
            self.saved = anyio.Event()
            if self._on_saved is not None:
                self._on_saved()
            self.log.info("checkpoint written duration=%.3fs", time.monotonic() - begin)
            return True
