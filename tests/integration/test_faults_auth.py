"""Authentication and startup refusals: the right SQLSTATE and message for unknown databases,
unknown users and wrong passwords under each auth method; md5 and SCRAM with psycopg and
asyncpg. A refused client never holds a server connection."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
import pytest

from proxy.localpg import LocalPostgres
from proxy.wire import messages as m
from proxy.wire.auth import make_scram_verifier
from tests.integration.conftest import (
    APP_PASSWORD,
    APP_USER,
    RunningProxy,
    base_topology,
    start_proxy,
)
from tests.integration.test_faults_helpers import (
    RawClient,
    StartupRejected,
    create_server_role,
    dedicated_shard,
    no_busy_backends,
    server_backends,
)

POOL_SIZE = 2
USERS = [{"name": APP_USER, "password": APP_PASSWORD}, {"name": "other", "password": "otherpw"}]


@pytest.fixture(scope="module")
def shard(pg_factory) -> LocalPostgres:
    return dedicated_shard(pg_factory, "fauth")


@pytest.fixture(scope="module")
def proxies(shard: LocalPostgres, tmp_path_factory) -> Iterator[dict[str, RunningProxy]]:
    workdir = Path(tmp_path_factory.mktemp("fauth"))
    pool = {"size": POOL_SIZE, "connect_timeout": 3, "checkout_timeout": 5,
            "shutdown_timeout": 2}
    verifier = make_scram_verifier(APP_PASSWORD).to_string()
    verifier_users = [{"name": APP_USER, "password": verifier}]
    auths: dict[str, dict[str, Any]] = {
        "scram": {"method": "scram-sha-256", "users": USERS},
        "scram-verifier": {"method": "scram-sha-256", "users": verifier_users},
        "md5": {"method": "md5", "users": USERS},
        "trust": {"method": "trust", "users": [{"name": APP_USER}, {"name": "other"}]},
        "trust-anyone": {"method": "trust"},
    }
    running = {}
    for name, auth in auths.items():
        # Each proxy logs in to the shard as its own role, so its connections can be counted.
        dsn = create_server_role(shard, role_of(name))
        topo = base_topology([shard], auth=auth, pool=pool)
        topo["shards"] = [{"name": "s0", "primary": dsn}]
        running[name] = start_proxy(workdir, topo, name=name)
    yield running
    for proxy in running.values():
        proxy.stop()


def role_of(proxy_name: str) -> str:
    return "px_" + proxy_name.replace("-", "_")


def raw_refusal(proxy: RunningProxy, **kw: Any) -> dict[str, str]:
    """Start up over a raw socket; return the ErrorResponse's fields; the proxy must close."""
    with RawClient(proxy.host, proxy.port) as raw:
        with pytest.raises(StartupRejected) as info:
            raw.startup(**kw)
        assert raw.is_closed(), "the proxy kept the refused connection open"
    return info.value.fields


async def asyncpg_refusal(proxy: RunningProxy, **kw: Any) -> Exception:
    args: dict[str, Any] = {"host": proxy.host, "port": proxy.port, "user": APP_USER,
                            "password": APP_PASSWORD, "database": "app", "timeout": 10}
    args.update(kw)
    with pytest.raises(asyncpg.PostgresError) as info:
        conn = await asyncpg.connect(**args)
        await conn.close()
    return info.value


def assert_no_leak(proxy: RunningProxy, shard: LocalPostgres) -> None:
    assert proxy.process.poll() is None, proxy.log()
    password = None if proxy.topology["auth"]["method"] == "trust" else APP_PASSWORD
    with psycopg.connect(proxy.dsn(password=password)) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    role = role_of(proxy.config_path.stem)
    assert 1 <= server_backends(shard, role) <= POOL_SIZE
    assert no_busy_backends(shard, role)
    assert "[BUG]" not in proxy.log()


# ------------------------------------------------------------------ unknown database


@pytest.mark.parametrize("method", ["scram", "md5", "trust"])
async def test_unknown_database(method: str, proxies: dict[str, RunningProxy],
                                shard: LocalPostgres) -> None:
    proxy = proxies[method]
    fields = raw_refusal(proxy, database="nope")
    assert (fields["S"], fields["C"]) == ("FATAL", "3D000"), fields
    assert fields["M"] == 'database "nope" does not exist'
    assert "app" in fields.get("H", "")

    err = await asyncpg_refusal(proxy, database="nope")
    assert isinstance(err, asyncpg.InvalidCatalogNameError)
    assert err.sqlstate == "3D000"

    with pytest.raises(psycopg.OperationalError, match='database "nope" does not exist'):
        psycopg.connect(proxy.dsn(dbname="nope"), connect_timeout=10)
    assert_no_leak(proxy, shard)


# ------------------------------------------------------------------ unknown user


@pytest.mark.parametrize("method", ["scram", "scram-verifier", "md5"])
async def test_unknown_user_with_password_method(method: str, proxies: dict[str, RunningProxy],
                                                 shard: LocalPostgres) -> None:
    """Unknown users fail exactly like a wrong password, so names cannot be probed."""
    proxy = proxies[method]
    fields = raw_refusal(proxy, user="ghost", password="whatever")
    assert (fields["S"], fields["C"]) == ("FATAL", "28P01"), fields
    assert fields["M"] == 'password authentication failed for user "ghost"'

    err = await asyncpg_refusal(proxy, user="ghost")
    assert isinstance(err, asyncpg.InvalidPasswordError)
    assert err.sqlstate == "28P01"
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(proxy.dsn(user="ghost"), connect_timeout=10)
    assert_no_leak(proxy, shard)


async def test_unknown_user_in_trust_mode(proxies: dict[str, RunningProxy],
                                          shard: LocalPostgres) -> None:
    proxy = proxies["trust"]
    fields = raw_refusal(proxy, user="ghost", password=None)
    assert (fields["S"], fields["C"]) == ("FATAL", "28000"), fields
    assert fields["M"] == 'role "ghost" does not exist'

    err = await asyncpg_refusal(proxy, user="ghost", password=None)
    assert isinstance(err, asyncpg.InvalidAuthorizationSpecificationError)
    assert err.sqlstate == "28000"
    # Known users need no password.
    with psycopg.connect(proxy.dsn(user="other", password=None)) as conn:
        assert conn.execute("SELECT current_user = session_user").fetchone() == (True,)
    assert_no_leak(proxy, shard)


async def test_trust_without_user_list_admits_any_name(proxies: dict[str, RunningProxy],
                                                       shard: LocalPostgres) -> None:
    proxy = proxies["trust-anyone"]
    with psycopg.connect(proxy.dsn(user="anybody", password=None)) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    conn2 = await asyncpg.connect(host=proxy.host, port=proxy.port, user="someone",
                                  database="app")
    try:
        assert await conn2.fetchval("SELECT 2") == 2
    finally:
        await conn2.close()
    # One pool per (shard, client user): two client names, two pools of POOL_SIZE at most.
    assert 1 <= server_backends(shard, role_of("trust-anyone")) <= 2 * POOL_SIZE


def test_no_user_in_startup_packet(proxies: dict[str, RunningProxy]) -> None:
    proxy = proxies["scram"]
    with RawClient(proxy.host, proxy.port) as raw:
        raw.send(m.startup_message({"database": "app"}))
        fields = raw.expect_fatal()
    assert (fields["S"], fields["C"]) == ("FATAL", "28000"), fields
    assert "no PostgreSQL user name specified" in fields["M"]


# ------------------------------------------------------------------ wrong password


@pytest.mark.parametrize("method", ["scram", "scram-verifier", "md5"])
async def test_wrong_password(method: str, proxies: dict[str, RunningProxy],
                              shard: LocalPostgres) -> None:
    proxy = proxies[method]
    fields = raw_refusal(proxy, password="not-the-password")
    assert (fields["S"], fields["C"]) == ("FATAL", "28P01"), fields
    assert fields["M"] == f'password authentication failed for user "{APP_USER}"'

    err = await asyncpg_refusal(proxy, password="not-the-password")
    assert isinstance(err, asyncpg.InvalidPasswordError)
    with pytest.raises(psycopg.OperationalError,
                       match=f'password authentication failed for user "{APP_USER}"'):
        psycopg.connect(proxy.dsn(password="not-the-password"), connect_timeout=10)
    # The other user's password does not open this one.
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(proxy.dsn(password="otherpw"), connect_timeout=10)
    assert_no_leak(proxy, shard)


def test_wrong_message_during_authentication(proxies: dict[str, RunningProxy]) -> None:
    """A Query where the password should be: 08P01, as Postgres."""
    proxy = proxies["md5"]
    with RawClient(proxy.host, proxy.port) as raw:
        raw.send(m.startup_message({"user": APP_USER, "database": "app"}))
        mtype, body = raw.read_message() or (0, b"")
        assert mtype == m.AUTHENTICATION and m.decode_int32(body) == m.AUTH_MD5
        raw.send(m.query("SELECT 1"))
        fields = raw.expect_fatal()
    assert (fields["S"], fields["C"]) == ("FATAL", "08P01"), fields
    assert "expected password response" in fields["M"]


# ------------------------------------------------------------------ methods that work


@pytest.mark.parametrize("method", ["scram", "scram-verifier", "md5"])
async def test_password_methods_work(method: str, proxies: dict[str, RunningProxy],
                                     shard: LocalPostgres) -> None:
    proxy = proxies[method]
    with psycopg.connect(proxy.dsn(), connect_timeout=10) as conn:
        assert conn.execute("SELECT current_database(), 6 * 7").fetchone() == ("app", 42)
    conns = [await asyncpg.connect(host=proxy.host, port=proxy.port, user=APP_USER,
                                   password=APP_PASSWORD, database="app", timeout=10)
             for _ in range(3)]
    try:
        results = await asyncio.gather(*(c.fetchval("SELECT $1::int * 2", i)
                                         for i, c in enumerate(conns)))
        assert results == [0, 2, 4]
    finally:
        for c in conns:
            await c.close()
    assert_no_leak(proxy, shard)


@pytest.mark.parametrize("method", ["scram", "trust"])
def test_non_utf8_user_name(method: str, proxies: dict[str, RunningProxy],
                            shard: LocalPostgres) -> None:
    """A latin1 user name: refused with the name echoed byte for byte. Formatting the error
    used to raise UnicodeEncodeError, so the client got no answer at all."""
    proxy = proxies[method]
    user, _ = m.read_cstr(b"jos\xe9\x00", 0)  # as the proxy decodes it
    fields = raw_refusal(proxy, user=user, password="pw")
    expected = "28P01" if method == "scram" else "28000"
    assert (fields["S"], fields["C"]) == ("FATAL", expected), fields
    assert "jos\udce9" in fields["M"], fields  # the raw 0xE9 byte came back
    assert_no_leak(proxy, shard)
