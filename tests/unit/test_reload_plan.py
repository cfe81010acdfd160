"""What a reload may change live (proxy/topology/reload.py) and the topology file watcher
(proxy/topology/watcher.py) on a real directory, with inotify and with polling."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from proxy.config import parse_config
from proxy.errors import ConfigError
from proxy.topology.reload import plan_reload
from proxy.topology.watcher import TopologyWatcher
from tests.configmap import ConfigMapDir


def cfg(**overrides: Any) -> Any:
    data: dict[str, Any] = {
        "listen": {"host": "127.0.0.1", "port": 6432},
        "database": "app",
        "auth": {"method": "trust"},
        "shards": [{"name": "s0", "primary": "postgresql://u@h0:5432/app"},
                   {"name": "s1", "primary": "postgresql://u@h1:5432/app"}],
        "tables": {"items": {"shard_key": "id"}},
    }
    data.update(overrides)
    return parse_config(data)


def test_nothing_changed() -> None:
    changes = plan_reload(cfg(), cfg(), two_phase=True)
    assert changes.unchanged and changes.summary == []


def test_restart_only_settings_keep_their_running_value() -> None:
    old = cfg()
    new = cfg(listen={"host": "0.0.0.0", "port": 7000}, pool={"mode": "session", "size": 3})
    changes = plan_reload(old, new, two_phase=True)
    assert changes.config.listen == old.listen
    assert changes.config.pool.mode == "transaction" and changes.config.pool.size == 3
    assert any("listen" in x for x in changes.restart_needed)
    assert any("pool.mode" in x for x in changes.restart_needed)
    assert "pool settings" in changes.summary


def test_shards_tables_and_buckets_are_listed() -> None:
    old = cfg()
    new = cfg(shards=[{"name": "s0", "primary": "postgresql://u@h0:5433/app"},
                      {"name": "s1", "primary": "postgresql://u@h1:5432/app"},
                      {"name": "s2", "primary": "postgresql://u@h2:5432/app"}],
              tables={"items": {"shard_key": "id"}, "codes": {"strategy": "reference"}})
    changes = plan_reload(old, new, two_phase=True)
    assert changes.moved_shards == ("s0",)
    assert "shards added: s2" in changes.summary
    assert "table added: public.codes (reference)" in changes.summary
    assert any(x.startswith("buckets:") for x in changes.summary)


def test_default_shard_cannot_move_under_two_phase_commit() -> None:
    with pytest.raises(ConfigError, match="two-phase commit keeps its decisions"):
        plan_reload(cfg(), cfg(default_shard="s1"), two_phase=True)
    assert "default shard s0 -> s1" in plan_reload(cfg(), cfg(default_shard="s1"),
                                                   two_phase=False).summary


def test_durations_with_units() -> None:
    c = cfg(reads={"max_replica_lag": "500ms", "read_your_writes": "2s"},
            health={"check_interval": "1m"})
    assert (c.reads.max_replica_lag, c.reads.read_your_writes) == (0.5, 2.0)
    assert c.health.check_interval == 60.0
    with pytest.raises(ConfigError, match=r"reads\.max_replica_lag"):
        cfg(reads={"max_replica_lag": "soon"})


@pytest.mark.parametrize("inotify", [True, False])
async def test_watcher_follows_symlink_swaps(tmp_path: Path, inotify: bool) -> None:
    cm = ConfigMapDir(tmp_path)
    cm.publish("a: 1\n")
    seen: list[str] = []
    changed = asyncio.Event()

    def on_change() -> None:
        seen.append(cm.path.read_text())
        changed.set()

    watcher = TopologyWatcher(cm.path, on_change, poll_interval=0.1,
                              debounce=0.05, use_inotify=inotify)
    watcher.start()
    try:
        await asyncio.sleep(0.3)  # let the watch start
        for text in ("a: 2\n", "a: 3\n"):
            changed.clear()
            cm.publish(text)
            await asyncio.wait_for(changed.wait(), 10)
        cm.publish("a: 3\n")  # same bytes: no reload
        await asyncio.sleep(0.5)
        assert seen == ["a: 2\n", "a: 3\n"]
        assert watcher.mode == ("inotify" if inotify else "polling")
    finally:
        await watcher.close()
