"""Watches the topology file and asks the proxy to reload it when its content changes.

The *directory* is watched, not the file's inode: editors replace files by rename, and a
Kubernetes ConfigMap volume updates by swapping its ``..data`` symlink to a new directory,
so the path keeps its name while the file behind it is another one. Every event in the
directory (and, as a polling fallback, every ``poll_interval`` without events) leads to a
re-read of the path; only a change of its bytes triggers a reload, so a half-written file
is reported once and a swap that changes nothing reloads nothing.

watchfiles (Rust ``notify``: inotify on Linux) does the watching; when it cannot run
(no inotify instances left, an unsupported filesystem) plain polling takes over.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("shardwire.topology")

__all__ = ["TopologyWatcher", "file_digest"]


def file_digest(path: Path) -> bytes | None:
    """SHA-256 of the file's bytes (following symlinks), or None if it cannot be read."""
    try:
        return hashlib.sha256(path.read_bytes()).digest()
    except OSError:
        return None


class TopologyWatcher:
    """Calls `on_change()` (on the event loop) each time the file's bytes change."""

    def __init__(self, path: str | Path, on_change: Callable[[], None], *,
                 poll_interval: float = 2.0, debounce: float = 0.2,
                 use_inotify: bool = True) -> None:
        self.path = Path(path).absolute()  # not resolved: the symlink may move
        self.on_change = on_change
        self.poll_interval = poll_interval
        self.debounce = debounce
        self.use_inotify = use_inotify
        self.digest = file_digest(self.path)
        self.mode = "starting"  # "inotify" or "polling", for the log and the admin console
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        self._stop.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    def seen(self) -> None:
        """Take the file's current bytes as known (after a reload by SIGHUP or RELOAD)."""
        self.digest = file_digest(self.path)

    def check(self) -> None:
        digest = file_digest(self.path)
        if digest is not None and digest != self.digest:
            self.digest = digest
            self.on_change()

    async def _run(self) -> None:
        try:
            if self.use_inotify:
                await self._watch()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # e.g. out of inotify watches
            log.warning("cannot watch %s (%s); polling it every %gs instead",
                        self.path.parent, exc, self.poll_interval)
        self.mode = "polling"
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.poll_interval)
            self.check()

    async def _watch(self) -> None:
        from watchfiles import awatch

        self.mode = "inotify"
        log.info("watching %s for topology changes", self.path)
        async for _ in awatch(self.path.parent, watch_filter=None, recursive=False,
                              debounce=int(self.debounce * 1000), step=50,
                              rust_timeout=int(self.poll_interval * 1000),
                              yield_on_timeout=True, stop_event=self._stop):
            self.check()
