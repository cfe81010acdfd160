"""What a new topology changes, and whether a running proxy may take it (pure).

A reload keeps what needs a restart (the addresses it listens on, the pool mode, the
two-phase commit identity) at its running value and says so; refuses what would be unsafe
to change live; and lists what changed, for the log and the admin console.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from proxy.config import Config, Dsn
from proxy.errors import ConfigError

__all__ = ["Changes", "plan_reload"]


@dataclass(slots=True)
class Changes:
    """The effective new config and what it changes against the running one."""

    config: Config
    summary: list[str] = field(default_factory=list)  # one line per change, for the log
    restart_needed: list[str] = field(default_factory=list)  # kept at the running value
    removed_shards: tuple[str, ...] = ()
    moved_shards: tuple[str, ...] = ()  # same name, another primary or replica set

    @property
    def unchanged(self) -> bool:
        return not self.summary and not self.restart_needed


def _host(dsn: Dsn) -> tuple[str, int, str, str]:
    return (dsn.host, dsn.port, dsn.database, dsn.user)


def plan_reload(old: Config, new: Config, *, two_phase: bool) -> Changes:
    """The config to run with after a reload from `old` to `new`.

    Raises ConfigError for a change that cannot be taken live: with two-phase commit, the
    default shard holds the commit decisions that recovery reads, so it cannot move."""
    restart: list[str] = []
    keep: dict[str, object] = {}
    if new.listen != old.listen:
        restart.append(f"listen ({old.listen.host}:{old.listen.port} -> "
                       f"{new.listen.host}:{new.listen.port})")
        keep["listen"] = old.listen
    if new.metrics != old.metrics:
        restart.append("metrics (address or enabled)")
        keep["metrics"] = old.metrics
    if new.pool.mode != old.pool.mode:
        restart.append(f"pool.mode ({old.pool.mode} -> {new.pool.mode})")
        keep["pool"] = dataclasses.replace(new.pool, mode=old.pool.mode)
    if new.transactions != old.transactions:
        restart.append("transactions (mode or instance)")
        keep["transactions"] = old.transactions
    if two_phase and new.default_shard != old.default_shard:
        raise ConfigError(new.source, "default_shard",
                          f"cannot move from {old.default_shard!r} to {new.default_shard!r} "
                          "while the proxy runs: two-phase commit keeps its decisions on the "
                          "default shard; resolve in-doubt transactions, then restart")
    effective = dataclasses.replace(new, **keep) if keep else new  # type: ignore[arg-type]

    summary: list[str] = []
    old_shards = {s.name: s for s in old.shards}
    new_shards = {s.name: s for s in new.shards}
    added = [n for n in new_shards if n not in old_shards]
    removed = tuple(n for n in old_shards if n not in new_shards)
    moved = tuple(n for n in new_shards if n in old_shards and (
        _host(new_shards[n].primary) != _host(old_shards[n].primary)
        or new_shards[n].primary.password != old_shards[n].primary.password
        or new_shards[n].replicas != old_shards[n].replicas))
    if added:
        summary.append("shards added: " + ", ".join(added))
    if removed:
        summary.append("shards removed: " + ", ".join(removed))
    if moved:
        summary.append("shards with new hosts or credentials: " + ", ".join(moved))
    if new.default_shard != old.default_shard:
        summary.append(f"default shard {old.default_shard} -> {new.default_shard}")
    if new.sharding != old.sharding:
        moves = sum(1 for a, b in zip(old.sharding.assignment, new.sharding.assignment,
                                      strict=False) if a != b)
        summary.append(f"buckets: {old.sharding.buckets} -> {new.sharding.buckets}"
                       + (f", {moves} reassigned" if moves else ""))
    old_tables, new_tables = dict(old.tables), dict(new.tables)
    for name in sorted(set(old_tables) | set(new_tables)):
        before, after = old_tables.get(name), new_tables.get(name)
        if before == after:
            continue
        if before is None:
            summary.append(f"table added: {name} ({after.strategy})")  # type: ignore[union-attr]
        elif after is None:
            summary.append(f"table removed: {name}")
        else:
            summary.append(f"table changed: {name}")
    if effective.pool != old.pool:
        summary.append("pool settings")
    for section in ("auth", "admin", "tls", "merge", "unparsed", "database", "health",
                    "reads"):
        if getattr(effective, section) != getattr(old, section):
            summary.append(section)
    return Changes(effective, summary, restart, removed, moved)
