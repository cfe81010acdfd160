"""The smallest end-to-end proof: psycopg through a real shardwire process to a real shard."""

import psycopg

from tests.integration.conftest import RunningProxy


def test_select_through_proxy(proxy: RunningProxy) -> None:
    with psycopg.connect(proxy.dsn()) as conn:
        row = conn.execute("SELECT 1 + 1, current_database()").fetchone()
    assert row == (2, "app")
