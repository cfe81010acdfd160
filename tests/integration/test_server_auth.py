"""The proxy authenticates to shards with every method Postgres offers it.

Each shard here is a cluster of its own whose pg_hba asks for one method; a client connects
through a proxy in front of it and must get answers. A wrong shard password must give the
client a clear 08001 naming the shard, never a hang.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from proxy.localpg import LocalPostgres
from tests.integration.conftest import RunningProxy, base_topology, start_proxy


@pytest.mark.parametrize("method", ["trust", "md5", "password", "scram-sha-256"])
def test_server_auth_method(method: str, pg_factory: Callable[..., LocalPostgres],
                            tmp_path: Path) -> None:
    shard = pg_factory(f"auth_{method.replace('-', '_')}", auth=method)
    shard.create_database("app")
    running: RunningProxy = start_proxy(tmp_path, base_topology([shard]), name="proxy")
    try:
        with psycopg.connect(running.dsn()) as conn:
            row = conn.execute("SELECT current_user, 40 + 2").fetchone()
        assert row == ("postgres", 42)
        # The shard really asked for that method: its pg_hba line says so.
        methods = set(shard.psql("SELECT auth_method FROM pg_hba_file_rules "
                                 "WHERE type = 'host'").split())
        assert methods == {method}
    finally:
        running.stop()


def test_wrong_shard_password_names_the_shard(pg_factory: Callable[..., LocalPostgres],
                                              tmp_path: Path) -> None:
    shard = pg_factory("auth_wrongpw", auth="scram-sha-256")
    shard.create_database("app")
    topo: dict[str, Any] = base_topology([shard])
    topo["shards"][0]["primary"] = shard.dsn("app", password="not-the-password")
    running = start_proxy(tmp_path, topo, name="proxy")
    try:
        with pytest.raises(psycopg.OperationalError) as info:
            psycopg.connect(running.dsn())
        text = str(info.value)
        assert 'shard "s0"' in text and "refused the connection" in text
        assert "password authentication failed" in text
    finally:
        running.stop()
