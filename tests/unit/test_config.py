"""Unit tests for proxy.config: loading, defaults, every validation error, DSNs, summary."""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
from pathlib import Path
from typing import Any

import pytest

from proxy.config import (
    Config,
    Dsn,
    RangeSpec,
    format_ranges,
    load_config,
    parse_config,
    parse_dsn,
    qualify_table_name,
    range_bound_key,
    summarize,
)
from proxy.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "config" / "example.yaml"
PGBENCH = REPO / "config" / "pgbench.yaml"

# A valid SCRAM-SHA-256 verifier (salt and keys are well-formed base64; keys are 32 bytes).
VERIFIER = (
    "SCRAM-SHA-256$4096:c2FsdHNhbHQ=$"
    "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=:"
    "ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8="
)


def base() -> dict[str, Any]:
    """The smallest valid config: two shards, one scram user."""
    return {
        "database": "app",
        "auth": {"users": [{"name": "app", "password": "secret"}]},
        "shards": [
            {"name": "s0", "primary": "postgresql://postgres@127.0.0.1:5433/app"},
            {"name": "s1", "primary": "postgresql://postgres@127.0.0.1:5434/app"},
        ],
    }


def with_(**changes: Any) -> dict[str, Any]:
    data = base()
    data.update(copy.deepcopy(changes))
    return data


def parse(data: Any) -> Config:
    return parse_config(data, source="test.yaml")


def err(data: Any) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse(data)
    assert info.value.source == "test.yaml"
    return info.value


def assert_err(data: Any, key_path: str, *fragments: str) -> ConfigError:
    e = err(data)
    assert e.key_path == key_path, (e.key_path, e.problem)
    for fragment in fragments:
        assert fragment in e.problem, (fragment, e.problem)
    return e


def table(spec: Any, name: str = "t") -> dict[str, Any]:
    return with_(tables={name: spec})


# --------------------------------------------------------------------------- loading


def test_example_file_loads() -> None:
    cfg = load_config(EXAMPLE)
    assert cfg.source == str(EXAMPLE)
    assert cfg.database == "app"
    assert cfg.listen.host == "127.0.0.1" and cfg.listen.port == 6432
    assert cfg.admin.database == "shardwire" and cfg.admin.users == ("app",)
    assert cfg.metrics.enabled and cfg.metrics.port == 9930
    assert cfg.auth.method == "scram-sha-256"
    assert cfg.auth.users["app"].password == "secret"
    assert cfg.shard_names == ("s0", "s1")
    assert cfg.default_shard == "s0"
    assert cfg.sharding.buckets == 64
    assert cfg.sharding.assignment == ("s0",) * 32 + ("s1",) * 32
    assert cfg.unparsed == "default"
    assert set(cfg.tables) == {
        "public.users",
        "public.orders",
        "public.countries",
        "public.events",
        "public.logs",
    }
    assert cfg.tables["public.users"].strategy == "hash"
    assert cfg.tables["public.users"].shard_key == "id"
    assert cfg.tables["public.orders"].shard_key == "user_id"
    assert cfg.tables["public.countries"].strategy == "reference"
    assert cfg.tables["public.countries"].shard_key is None
    events = cfg.tables["public.events"]
    assert events.strategy == "list"
    assert dict(events.values) == {"eu": "s0", "us": "s1"}
    assert events.default == "s0"
    logs = cfg.tables["public.logs"]
    assert logs.strategy == "range"
    assert logs.ranges == (
        RangeSpec(None, "2025-01-01", "s0"),
        RangeSpec("2025-01-01", None, "s1"),
    )
    assert logs.range_kind == "timestamp"


def test_example_tls_paths_resolve_against_yaml_dir() -> None:
    cfg = load_config(str(EXAMPLE))
    assert cfg.tls is not None
    assert cfg.tls.cert == EXAMPLE.parent / "server.crt"
    assert cfg.tls.key == EXAMPLE.parent / "server.key"


def test_pgbench_file_loads() -> None:
    cfg = load_config(PGBENCH)
    assert [s.primary.port for s in cfg.shards] == [5433, 5434]
    keys = {name: t.shard_key for name, t in cfg.tables.items()}
    assert keys == {
        "public.pgbench_accounts": "aid",
        "public.pgbench_tellers": "tid",
        "public.pgbench_branches": "bid",
        "public.pgbench_history": "aid",
    }
    assert all(t.strategy == "hash" for t in cfg.tables.values())


def test_load_yaml_syntax_error_has_line_and_column(tmp_path: Path) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text("database: app\nshards: [\n  - {name: s0\n")
    with pytest.raises(ConfigError) as info:
        load_config(f)
    assert info.value.source == str(f)
    assert info.value.key_path == ""
    assert "invalid YAML at line" in info.value.problem
    assert "column" in info.value.problem


def test_load_duplicate_yaml_key_is_rejected(tmp_path: Path) -> None:
    f = tmp_path / "dup.yaml"
    f.write_text("database: app\ndatabase: other\n")
    with pytest.raises(ConfigError) as info:
        load_config(f)
    assert "duplicate key 'database'" in info.value.problem
    assert "line 2, column 1" in info.value.problem


def test_load_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "nope.yaml")
    assert "cannot read the file" in info.value.problem


def test_load_empty_file(tmp_path: Path) -> None:
    f = tmp_path / "empty.yaml"
    f.write_text("# nothing\n")
    with pytest.raises(ConfigError) as info:
        load_config(f)
    assert "empty document" in info.value.problem


def test_load_relative_tls_paths(tmp_path: Path) -> None:
    f = tmp_path / "sub" / "c.yaml"
    f.parent.mkdir()
    f.write_text(
        "database: app\nauth: {method: trust}\n"
        "shards: [{name: s0, primary: 'postgresql://h/app'}]\n"
        "tls: {cert: certs/a.crt, key: /abs/a.key}\n"
    )
    cfg = load_config(f)
    assert cfg.tls is not None
    assert cfg.tls.cert == f.parent / "certs" / "a.crt"
    assert cfg.tls.key == Path("/abs/a.key")


def test_error_str_includes_source_and_path() -> None:
    e = assert_err(with_(listen={"port": "abc"}), "listen.port")
    assert str(e) == "test.yaml: listen.port: expected an integer port 1-65535, got 'abc'"


# --------------------------------------------------------------------------- defaults


def test_defaults() -> None:
    cfg = parse(base())
    assert cfg.listen.host == "127.0.0.1" and cfg.listen.port == 6432
    assert cfg.admin.database == "shardwire" and cfg.admin.users == ()
    assert (cfg.metrics.host, cfg.metrics.port, cfg.metrics.enabled) == ("127.0.0.1", 9930, True)
    assert cfg.auth.method == "scram-sha-256"
    assert cfg.tls is None
    pool = cfg.pool
    assert pool.mode == "transaction" and pool.size == 20
    assert pool.connect_timeout == 5 and pool.checkout_timeout == 10
    assert pool.idle_timeout == 600 and pool.shutdown_timeout == 30
    assert pool.server_lifetime == 3600
    assert cfg.default_shard == "s0"
    assert cfg.sharding.buckets == 64
    assert dict(cfg.tables) == {}
    assert cfg.unparsed == "default"
    user = cfg.auth.users["app"]
    assert user.server_user is None and user.server_password is None


def test_dataclasses_are_frozen() -> None:
    cfg = parse(base())
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.database = "x"  # type: ignore[misc]
    with pytest.raises(TypeError):
        cfg.auth.users["x"] = cfg.auth.users["app"]  # type: ignore[index]


def test_pool_floats_and_extra_keys() -> None:
    cfg = parse(
        with_(pool={"connect_timeout": 0.5, "idle_timeout": 0, "server_lifetime": 60, "size": 3})
    )
    assert cfg.pool.connect_timeout == 0.5
    assert cfg.pool.idle_timeout == 0.0
    assert cfg.pool.server_lifetime == 60.0
    assert cfg.pool.size == 3


@pytest.mark.parametrize("metrics", [None, False, {"enabled": False}])
def test_metrics_can_be_disabled(metrics: Any) -> None:
    assert parse(with_(metrics=metrics)).metrics.enabled is False


def test_trust_needs_no_users() -> None:
    cfg = parse(with_(auth={"method": "trust"}, admin={"users": ["anyone"]}))
    assert cfg.auth.method == "trust"
    assert dict(cfg.auth.users) == {}


def test_trust_user_without_password() -> None:
    cfg = parse(with_(auth={"method": "trust", "users": [{"name": "app"}]}))
    assert cfg.auth.users["app"].password is None


def test_server_credentials() -> None:
    user = {"name": "app", "password": "pw1", "server_user": "svc", "server_password": "pw2"}
    cfg = parse(with_(auth={"users": [user]}))
    u = cfg.auth.users["app"]
    assert (u.server_user, u.server_password) == ("svc", "pw2")
    assert "pw1" not in repr(u) and "pw2" not in repr(u)


def test_scram_verifier_password() -> None:
    cfg = parse(with_(auth={"users": [{"name": "app", "password": VERIFIER}]}))
    assert cfg.auth.users["app"].password_is_verifier
    assert not parse(base()).auth.users["app"].password_is_verifier


def test_shard_lookup() -> None:
    cfg = parse(base())
    assert cfg.shard("s1").primary.port == 5434
    with pytest.raises(KeyError):
        cfg.shard("nope")


def test_replicas() -> None:
    data = base()
    data["shards"][0]["replicas"] = ["postgresql://r1:5440/app", "postgres://r2/app"]
    cfg = parse(data)
    assert [r.host for r in cfg.shard("s0").replicas] == ["r1", "r2"]
    assert cfg.shard("s1").replicas == ()


def test_explicit_default_shard() -> None:
    assert parse(with_(default_shard="s1")).default_shard == "s1"


# --------------------------------------------------------------------------- bucket assignment


def test_default_split_64_buckets_2_shards() -> None:
    s = parse(base()).sharding
    assert s.buckets_of("s0") == tuple(range(32))
    assert s.buckets_of("s1") == tuple(range(32, 64))
    assert s.ranges_of("s1") == "32-63"


def test_default_split_10_buckets_3_shards() -> None:
    data = with_(sharding={"buckets": 10})
    data["shards"].append({"name": "s2", "primary": "postgresql://h:5435/app"})
    s = parse(data).sharding
    # floor(i*10/3): 0, 3, 6, 10
    assert s.assignment == ("s0",) * 3 + ("s1",) * 3 + ("s2",) * 4


def test_default_split_fewer_buckets_than_shards() -> None:
    data = with_(sharding={"buckets": 1})
    s = parse(data).sharding
    assert s.assignment == ("s1",)
    assert s.buckets_of("s0") == ()


def test_explicit_assignment_with_ranges_and_singles() -> None:
    cfg = parse(with_(sharding={"buckets": 8, "assignment": {"s0": "0-2, 5", "s1": "3-4,6-7"}}))
    assert cfg.sharding.assignment == ("s0", "s0", "s0", "s1", "s1", "s0", "s1", "s1")
    assert cfg.sharding.ranges_of("s0") == "0-2,5"


def test_assignment_int_single_bucket() -> None:
    cfg = parse(with_(sharding={"buckets": 2, "assignment": {"s0": 0, "s1": "1"}}))
    assert cfg.sharding.assignment == ("s0", "s1")


def test_assignment_unknown_shard() -> None:
    assert_err(
        with_(sharding={"assignment": {"s0": "0-63", "s9": "1"}}),
        "sharding.assignment.s9",
        "unknown shard 's9'",
        "s0, s1",
    )


def test_assignment_overlap_names_both_shards_and_bucket() -> None:
    assert_err(
        with_(sharding={"assignment": {"s0": "0-32", "s1": "32-63"}}),
        "sharding.assignment.s1",
        "bucket 32",
        "s0",
        "s1",
    )


def test_assignment_overlap_compact_ranges() -> None:
    assert_err(
        with_(sharding={"assignment": {"s0": "0-40", "s1": "30-63"}}),
        "sharding.assignment.s1",
        "buckets 30-40 assigned to both s0 and s1",
    )


def test_assignment_incomplete_lists_missing_ranges() -> None:
    assert_err(
        with_(sharding={"assignment": {"s0": "0-9,12", "s1": "20-62"}}),
        "sharding.assignment",
        "10-11,13-19,63",
        "not assigned",
    )


def test_assignment_bucket_out_of_range() -> None:
    assert_err(
        with_(sharding={"assignment": {"s0": "0-31", "s1": "32-64"}}),
        "sharding.assignment.s1",
        "bucket 64 out of range",
        "0-63",
    )


def test_assignment_reversed_range() -> None:
    assert_err(
        with_(sharding={"assignment": {"s0": "31-0", "s1": "32-63"}}),
        "sharding.assignment.s0",
        "reversed",
        "'31-0'",
    )


@pytest.mark.parametrize("spec", ["abc", "1-", "", "1,,2", "-3"])
def test_assignment_bad_syntax(spec: str) -> None:
    assert_err(
        with_(sharding={"assignment": {"s0": spec, "s1": "0-63"}}),
        "sharding.assignment.s0",
        "bucket numbers or ranges",
    )


def test_assignment_wrong_type() -> None:
    assert_err(
        with_(sharding={"assignment": ["0-63"]}),
        "sharding.assignment",
        "expected a mapping",
        "got a list",
    )


@pytest.mark.parametrize("buckets", [0, -1])
def test_buckets_below_one(buckets: int) -> None:
    assert_err(with_(sharding={"buckets": buckets}), "sharding.buckets", "1-65536", str(buckets))


def test_buckets_wrong_type() -> None:
    assert_err(with_(sharding={"buckets": "64"}), "sharding.buckets", "got '64'")


# --------------------------------------------------------------------------- top level and types


def test_unknown_top_level_key() -> None:
    e = assert_err(with_(shardz=[]), "shardz", "unknown key; expected one of", "shards")
    assert "did you mean 'shards'" in e.problem


def test_unknown_nested_key() -> None:
    assert_err(with_(pool={"sise": 3}), "pool.sise", "unknown key", "did you mean 'size'")


def test_top_level_not_a_mapping() -> None:
    assert_err(["database"], "", "expected a mapping", "got a list")


def test_database_required() -> None:
    data = base()
    del data["database"]
    assert_err(data, "database", "required")


def test_database_wrong_type() -> None:
    assert_err(with_(database=5), "database", "got 5")


def test_shards_required() -> None:
    data = base()
    del data["shards"]
    assert_err(data, "shards", "required")


def test_shards_empty() -> None:
    assert_err(with_(shards=[]), "shards", "non-empty list")


def test_shard_not_a_mapping() -> None:
    assert_err(with_(shards=["postgresql://h/app"]), "shards[0]", "expected a mapping")


def test_shard_missing_primary() -> None:
    assert_err(with_(shards=[{"name": "s0"}]), "shards[0].primary", "required")


def test_duplicate_shard_names() -> None:
    data = base()
    data["shards"][1]["name"] = "s0"
    assert_err(data, "shards[1].name", "duplicate shard name 's0'", "shards[0]")


def test_bad_shard_name() -> None:
    data = base()
    data["shards"][1]["name"] = "s 1"
    assert_err(data, "shards[1].name", "got 's 1'")


@pytest.mark.parametrize("port", ["abc", 0, 70000, True, 1.5])
def test_listen_port_invalid(port: Any) -> None:
    assert_err(with_(listen={"port": port}), "listen.port", "expected an integer port 1-65535")


def test_listen_wrong_type() -> None:
    assert_err(with_(listen="127.0.0.1:6432"), "listen", "expected a mapping", "'127.0.0.1:6432'")


def test_metrics_port_invalid() -> None:
    assert_err(with_(metrics={"port": "x"}), "metrics.port", "1-65535", "'x'")


def test_metrics_port_clashes_with_listen() -> None:
    assert_err(with_(metrics={"port": 6432}), "metrics.port", "different from listen.port")


def test_metrics_enabled_not_bool() -> None:
    assert_err(with_(metrics={"enabled": "no"}), "metrics.enabled", "true or false", "'no'")


def test_default_shard_unknown() -> None:
    assert_err(with_(default_shard="s9"), "default_shard", "unknown shard 's9'", "s0, s1")


def test_unparsed_invalid() -> None:
    assert_err(with_(unparsed="ignore"), "unparsed", "default, error", "'ignore'")


def test_unparsed_error() -> None:
    assert parse(with_(unparsed="error")).unparsed == "error"


def test_tls_missing_key() -> None:
    assert_err(with_(tls={"cert": "a.crt"}), "tls.key", "expected a file path", "null")


def test_tls_relative_without_base_dir_stays_relative() -> None:
    cfg = parse(with_(tls={"cert": "a.crt", "key": "a.key"}))
    assert cfg.tls is not None and cfg.tls.cert == Path("a.crt")


def test_tls_base_dir() -> None:
    cfg = parse_config(with_(tls={"cert": "a.crt", "key": "a.key"}), base_dir=Path("/etc/sw"))
    assert cfg.tls is not None and cfg.tls.key == Path("/etc/sw/a.key")
    assert cfg.source == "<config>"


# --------------------------------------------------------------------------- auth


def test_auth_method_invalid() -> None:
    assert_err(
        with_(auth={"method": "password", "users": []}),
        "auth.method",
        "scram-sha-256, md5, trust",
        "'password'",
    )


def test_auth_users_required_unless_trust() -> None:
    assert_err(with_(auth={"method": "md5"}), "auth.users", "at least one user", "md5")


def test_auth_users_empty_list() -> None:
    assert_err(with_(auth={"users": []}), "auth.users", "at least one user", "empty list")


def test_user_without_password() -> None:
    data = with_(auth={"users": [{"name": "app", "password": "x"}, {"name": "bob"}]})
    assert_err(data, "auth.users[1].password", "expected a password", "scram-sha-256")


def test_user_password_not_string() -> None:
    data = with_(auth={"users": [{"name": "app", "password": 1234}]})
    assert_err(data, "auth.users[0].password", "quote it", "1234")


def test_user_missing_name() -> None:
    assert_err(with_(auth={"users": [{"password": "x"}]}), "auth.users[0].name", "user name")


def test_duplicate_user() -> None:
    users = [{"name": "app", "password": "x"}, {"name": "app", "password": "y"}]
    assert_err(with_(auth={"users": users}), "auth.users[1].name", "duplicate user 'app'")


def test_user_unknown_key() -> None:
    users = [{"name": "app", "pasword": "x"}]
    assert_err(with_(auth={"users": users}), "auth.users[0].pasword", "unknown key")


def test_malformed_verifier() -> None:
    users = [{"name": "app", "password": "SCRAM-SHA-256$4096:abc"}]
    e = assert_err(with_(auth={"users": users}), "auth.users[0].password", "SCRAM-SHA-256")
    assert "4096:abc" not in e.problem


def test_verifier_with_md5_rejected() -> None:
    data = with_(auth={"method": "md5", "users": [{"name": "app", "password": VERIFIER}]})
    assert_err(data, "auth.users[0].password", "plain password for md5")


def test_server_password_verifier_rejected() -> None:
    users = [{"name": "app", "password": "x", "server_password": VERIFIER}]
    assert_err(with_(auth={"users": users}), "auth.users[0].server_password", "plain password")


def test_admin_user_not_in_auth_users() -> None:
    assert_err(
        with_(admin={"users": ["app", "root"]}),
        "admin.users[1]",
        "unknown user 'root'",
        "app",
    )


def test_admin_database_same_as_database() -> None:
    assert_err(with_(admin={"database": "app"}), "admin.database", "must differ")


# --------------------------------------------------------------------------- pool


def test_pool_mode_invalid() -> None:
    assert_err(with_(pool={"mode": "statement"}), "pool.mode", "transaction, session", "statement")


@pytest.mark.parametrize("size", [0, -5, "20", 2.5])
def test_pool_size_invalid(size: Any) -> None:
    assert_err(with_(pool={"size": size}), "pool.size", "expected an integer >= 1")


@pytest.mark.parametrize("key", ["connect_timeout", "checkout_timeout"])
def test_pool_timeouts_must_be_positive(key: str) -> None:
    assert_err(with_(pool={key: 0}), f"pool.{key}", "seconds > 0", "got 0")


def test_pool_timeout_not_number() -> None:
    assert_err(with_(pool={"idle_timeout": "ten"}), "pool.idle_timeout", "seconds >= 0", "'ten'")


def test_pool_timeout_with_unit() -> None:
    cfg = parse_config(with_(pool={"idle_timeout": "10m", "connect_timeout": "250ms"}))
    assert (cfg.pool.idle_timeout, cfg.pool.connect_timeout) == (600.0, 0.25)


# --------------------------------------------------------------------------- DSNs


def test_dsn_basic() -> None:
    d = parse_dsn("postgresql://alice:pw@db.example:5433/orders?sslmode=require")
    assert d == Dsn("db.example", 5433, "alice", "pw", "orders", (("sslmode", "require"),))
    assert d.param("sslmode") == "require"
    assert d.param("nope") is None


def test_dsn_percent_encoded_password() -> None:
    d = parse_dsn("postgresql://app:p%40ss%3Aw%2Frd%25@h/app")
    assert d.password == "p@ss:w/rd%"


def test_dsn_percent_encoded_user_and_database() -> None:
    d = parse_dsn("postgresql://my%20user@h/my%2Fdb")
    assert d.user == "my user" and d.database == "my/db"


def test_dsn_defaults() -> None:
    d = parse_dsn("postgres://db.example")
    assert (d.host, d.port, d.user, d.password, d.database) == (
        "db.example",
        5432,
        "postgres",
        None,
        "postgres",
    )


def test_dsn_default_database_is_user() -> None:
    d = parse_dsn("postgresql://alice@h:5433")
    assert d.database == "alice" and d.port == 5433


def test_dsn_empty_password() -> None:
    assert parse_dsn("postgresql://alice:@h/x").password == ""


def test_dsn_ipv6() -> None:
    d = parse_dsn("postgresql://u@[::1]:5433/app")
    assert d.host == "::1" and d.port == 5433
    assert d.redacted() == "postgresql://u@[::1]:5433/app"


def test_dsn_ipv6_default_port() -> None:
    d = parse_dsn("postgresql://[::1]/app")
    assert d.host == "::1" and d.port == 5432


def test_dsn_query_overrides() -> None:
    d = parse_dsn("postgresql:///app?host=/var/run/postgresql&port=5440&user=bob&password=x")
    assert (d.host, d.port, d.user, d.password, d.database, d.params) == (
        "/var/run/postgresql",
        5440,
        "bob",
        "x",
        "app",
        (),
    )


def test_dsn_redacted_hides_password() -> None:
    d = parse_dsn("postgresql://app:s3cret@h:5433/app?application_name=sw")
    assert d.redacted() == "postgresql://app@h:5433/app?application_name=sw"
    assert "s3cret" not in repr(d) and "s3cret" not in str(d)
    assert parse_dsn(d.url()) == d


@pytest.mark.parametrize(
    "text",
    [
        "mysql://u:pw@h/db",
        "host=h port=5432 password=hunter2",
        "h:5432",
        "postgresql://h:abc/db",
        "postgresql://h:0/db",
        "postgresql://h1,h2/db",
    ],
)
def test_dsn_invalid(text: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_dsn(text)
    assert "pw" not in str(info.value) and "hunter2" not in str(info.value)


def test_config_dsn_not_postgres_url() -> None:
    data = base()
    data["shards"][1]["primary"] = "mysql://root:hunter2@h/app"
    e = assert_err(data, "shards[1].primary", "postgresql://", "mysql://root:***@h/app")
    assert "hunter2" not in str(e)


def test_config_dsn_bad_port() -> None:
    data = base()
    data["shards"][0]["primary"] = "postgresql://h:99999/app"
    assert_err(data, "shards[0].primary", "port 1-65535", "'99999'")


def test_config_dsn_not_string() -> None:
    data = base()
    data["shards"][0]["primary"] = 5432
    assert_err(data, "shards[0].primary", "postgresql://", "got 5432")


def test_config_replica_dsn_invalid() -> None:
    data = base()
    data["shards"][0]["replicas"] = ["postgresql://r/app", "redis://r"]
    assert_err(data, "shards[0].replicas[1]", "postgresql://")


# --------------------------------------------------------------------------- tables


def test_qualify_table_name() -> None:
    assert qualify_table_name("users") == "public.users"
    assert qualify_table_name("Users") == "public.users"
    assert qualify_table_name("sales.orders") == "sales.orders"
    assert qualify_table_name('Sales."Orders"') == "sales.Orders"
    with pytest.raises(ValueError):
        qualify_table_name("a.b.c")
    with pytest.raises(ValueError):
        qualify_table_name("bad name")


def test_schema_qualified_tables() -> None:
    cfg = parse(
        with_(tables={"sales.orders": {"shard_key": "user_id"}, "Users": {"shard_key": "ID"}})
    )
    assert set(cfg.tables) == {"sales.orders", "public.users"}
    assert cfg.tables["sales.orders"].name == "sales.orders"
    assert cfg.tables["public.users"].shard_key == "id"
    assert cfg.table("users") is cfg.tables["public.users"]
    assert cfg.table("sales.orders") is not None
    assert cfg.table("public.nope") is None


def test_quoted_shard_key_keeps_case() -> None:
    cfg = parse(table({"shard_key": '"UserId"'}))
    assert cfg.tables["public.t"].shard_key == "UserId"


def test_duplicate_table_after_qualification() -> None:
    data = with_(tables={"users": {"shard_key": "id"}, "public.users": {"shard_key": "id"}})
    assert_err(data, "tables['public.users']", "duplicate table 'public.users'", "'users'")


def test_bad_table_name() -> None:
    assert_err(table({"shard_key": "id"}, name="a.b.c"), "tables['a.b.c']", "schema.table")


def test_table_neither_shard_key_nor_reference() -> None:
    assert_err(table({}), "tables.t", "shard_key", "reference", "neither")


def test_table_null_spec() -> None:
    assert_err(table(None), "tables.t", "shard_key", "reference")


def test_table_reference_false_without_key() -> None:
    assert_err(table({"reference": False}), "tables.t", "neither")


def test_table_strategy_without_key() -> None:
    assert_err(table({"strategy": "list", "values": {"a": "s0"}}), "tables.t.shard_key", "list")


def test_table_unknown_key() -> None:
    assert_err(table({"shard_key": "id", "sharding_key": "x"}), "tables.t.sharding_key", "unknown")


def test_table_unknown_strategy() -> None:
    assert_err(table({"shard_key": "id", "strategy": "modulo"}), "tables.t.strategy", "'modulo'")


def test_reference_with_shard_key() -> None:
    assert_err(table({"reference": True, "shard_key": "id"}), "tables.t.shard_key", "reference")


def test_reference_via_strategy() -> None:
    assert parse(table({"strategy": "reference"})).tables["public.t"].is_reference


def test_reference_conflicting_strategy() -> None:
    data = table({"reference": True, "strategy": "hash"})
    assert_err(data, "tables.t.strategy", "reference table", "'hash'")


def test_hash_with_values_rejected() -> None:
    assert_err(table({"shard_key": "id", "values": {"a": "s0"}}), "tables.t.values", "list")


def test_hash_with_default_rejected() -> None:
    assert_err(table({"shard_key": "id", "default": "s0"}), "tables.t.default", "list or range")


def test_list_values_unknown_shard() -> None:
    spec = {"shard_key": "region", "strategy": "list", "values": {"eu": "s0", "us": "s9"}}
    assert_err(table(spec, "events"), "tables.events.values.us", "unknown shard 's9'")


def test_list_default_unknown_shard() -> None:
    spec = {"shard_key": "r", "strategy": "list", "values": {"eu": "s0"}, "default": "s7"}
    assert_err(table(spec), "tables.t.default", "unknown shard 's7'")


def test_list_values_missing() -> None:
    spec = {"shard_key": "r", "strategy": "list"}
    assert_err(table(spec), "tables.t.values", "non-empty mapping", "null")


def test_list_values_numeric_and_date_keys() -> None:
    values = {1: "s0", 2.5: "s1", dt.date(2025, 1, 1): "s0", "x": "s1"}
    spec = {"shard_key": "r", "strategy": "list", "values": values}
    t = parse(table(spec)).tables["public.t"]
    assert dict(t.values) == {"1": "s0", "2.5": "s1", "2025-01-01": "s0", "x": "s1"}
    assert t.default is None


def test_list_values_bool_key_rejected() -> None:
    spec = {"shard_key": "r", "strategy": "list", "values": {True: "s0"}}
    assert_err(table(spec), "tables.t.values", "quote it", "true")


def test_list_values_duplicate_after_normalization() -> None:
    spec = {"shard_key": "r", "strategy": "list", "values": {1: "s0", "1": "s1"}}
    assert_err(table(spec), "tables.t.values['1']", "duplicate value '1'")


def _range_table(*ranges: dict[str, Any], default: str | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"shard_key": "k", "strategy": "range", "ranges": list(ranges)}
    if default is not None:
        spec["default"] = default
    return table(spec, "logs")


def test_range_integers_compare_numerically() -> None:
    # As strings "9" > "10"; as integers these ranges are fine.
    data = _range_table(
        {"from": 1, "to": 9, "shard": "s0"},
        {"from": 9, "to": 10, "shard": "s1"},
        {"from": "10", "to": 100, "shard": "s0"},
    )
    t = parse(data).tables["public.logs"]
    assert t.range_kind == "integer"
    assert t.ranges[2] == RangeSpec("10", "100", "s0")


def test_range_integers_overlap() -> None:
    data = _range_table(
        {"from": 1, "to": 100, "shard": "s0"},
        {"from": 9, "to": 200, "shard": "s1"},
    )
    assert_err(data, "tables.logs.ranges[1]", "overlaps ranges[0]", "[1, 100)", "integer")


def test_range_numeric() -> None:
    data = _range_table({"to": "1.5", "shard": "s0"}, {"from": "1.5", "shard": "s1"})
    assert parse(data).tables["public.logs"].range_kind == "numeric"


def test_range_dates_compare_as_timestamps() -> None:
    data = _range_table(
        {"to": "2025-01-01", "shard": "s0"},
        {"from": "2025-01-01 00:00:00", "to": "2025-06-01T00:00", "shard": "s1"},
        {"from": dt.date(2025, 6, 1), "shard": "s0"},
    )
    t = parse(data).tables["public.logs"]
    assert t.range_kind == "timestamp"
    assert t.ranges[2].lo == "2025-06-01"


def test_range_dates_overlap() -> None:
    data = _range_table(
        {"to": "2025-01-02", "shard": "s0"},
        {"from": "2025-01-01T12:00", "shard": "s1"},
    )
    assert_err(data, "tables.logs.ranges[1]", "overlaps ranges[0]", "timestamp")


def test_range_text_overlap() -> None:
    data = _range_table(
        {"from": "a", "to": "m", "shard": "s0"},
        {"from": "k", "to": "z", "shard": "s1"},
    )
    assert_err(data, "tables.logs.ranges[1]", "overlaps", "text")


def test_range_two_unbounded_overlap() -> None:
    data = _range_table({"to": 5, "shard": "s0"}, {"to": 10, "shard": "s1"})
    assert_err(data, "tables.logs.ranges[1]", "overlaps ranges[0]", "-inf")


def test_range_empty_range() -> None:
    data = _range_table({"from": 10, "to": 2, "shard": "s0"})
    assert_err(data, "tables.logs.ranges[0]", "from < to", "[10, 2)")


def test_range_unknown_shard() -> None:
    data = _range_table({"to": 5, "shard": "s0"}, {"from": 5, "shard": "s5"})
    assert_err(data, "tables.logs.ranges[1].shard", "unknown shard 's5'")


def test_range_missing_shard() -> None:
    assert_err(_range_table({"to": 5}), "tables.logs.ranges[0].shard", "required")


def test_range_missing_ranges() -> None:
    assert_err(table({"shard_key": "k", "strategy": "range"}), "tables.t.ranges", "non-empty list")


def test_range_mixed_time_zones() -> None:
    data = _range_table(
        {"to": "2025-01-01T00:00+00:00", "shard": "s0"},
        {"from": "2025-02-01", "shard": "s1"},
    )
    assert_err(data, "tables.logs.ranges", "time zone")


def test_range_with_gap_and_default() -> None:
    data = _range_table(
        {"to": 5, "shard": "s0"},
        {"from": 10, "shard": "s1"},
        default="s0",
    )
    assert parse(data).tables["public.logs"].default == "s0"


# --------------------------------------------------------------------------- key_type


def test_key_type_defaults_to_none() -> None:
    assert parse(table({"shard_key": "id"})).tables["public.t"].key_type is None


@pytest.mark.parametrize(
    ("spelled", "key_type"),
    [
        ("bigint", "bigint"),
        ("int8", "bigint"),
        ("BIGINT", "bigint"),
        ("bigserial", "bigint"),
        ("integer", "integer"),
        ("int", "integer"),
        ("int4", "integer"),
        ("smallint", "smallint"),
        ("int2", "smallint"),
        ("text", "text"),
        ("varchar", "text"),
        ("varchar(20)", "text"),
        ("character varying", "text"),
        ("pg_catalog.text", "text"),
        ("uuid", "uuid"),
        (" UUID ", "uuid"),
    ],
)
def test_key_type_aliases_are_normalised(spelled: str, key_type: str) -> None:
    t = parse(table({"shard_key": "id", "key_type": spelled})).tables["public.t"]
    assert t.key_type == key_type
    assert t.strategy == "hash"


def test_key_type_null_means_none() -> None:
    assert parse(table({"shard_key": "id", "key_type": None})).tables["public.t"].key_type is None


@pytest.mark.parametrize("bad", ["float8", "numeric", "char(3)", "bpchar", "jsonb", "big int"])
def test_key_type_unsupported(bad: str) -> None:
    assert_err(
        table({"shard_key": "id", "key_type": bad}, "users"),
        "tables.users.key_type",
        "smallint, integer, bigint, text, uuid",
        repr(bad),
    )


@pytest.mark.parametrize("bad", [8, "", True, ["bigint"]])
def test_key_type_not_a_string(bad: Any) -> None:
    assert_err(table({"shard_key": "id", "key_type": bad}), "tables.t.key_type", "expected one of")


def test_key_type_path_of_schema_qualified_table() -> None:
    data = with_(tables={"billing.invoices": {"shard_key": "id", "key_type": "money"}})
    assert_err(data, "tables['billing.invoices'].key_type", "'money'")


def test_key_type_on_reference_table_rejected() -> None:
    assert_err(
        table({"reference": True, "key_type": "bigint"}, "countries"),
        "tables.countries.key_type",
        "not allowed on a reference table",
        "no shard key",
    )
    assert_err(
        table({"strategy": "reference", "key_type": "text"}),
        "tables.t.key_type",
        "reference table",
    )


def test_key_type_without_shard_key() -> None:
    assert_err(table({"key_type": "bigint"}), "tables.t", "neither")


def test_key_type_list_integer_values_are_normalised() -> None:
    spec = {"shard_key": "store", "strategy": "list", "key_type": "integer",
            "values": {1: "s0", "02": "s1", " -3 ": "s0"}}
    t = parse(table(spec)).tables["public.t"]
    assert t.key_type == "integer"
    assert dict(t.values) == {"1": "s0", "2": "s1", "-3": "s0"}


def test_key_type_list_value_not_of_the_type() -> None:
    spec = {"shard_key": "r", "strategy": "list", "key_type": "bigint",
            "values": {1: "s0", "eu": "s1"}}
    assert_err(table(spec), "tables.t.values.eu", "an integer", "key_type bigint", "'eu'")
    spec["values"] = {1.5: "s0"}
    assert_err(table(spec), "tables.t.values['1.5']", "an integer")
    spec["key_type"] = "smallint"
    spec["values"] = {40000: "s0"}
    assert_err(table(spec), "tables.t.values['40000']", "fits key_type smallint")


def test_key_type_list_duplicate_after_conversion() -> None:
    spec = {"shard_key": "r", "strategy": "list", "key_type": "int",
            "values": {"007": "s0", 7: "s1"}}
    assert_err(table(spec), "tables.t.values['7']", "duplicate value '7'", "'007'")


def test_key_type_list_uuid_values() -> None:
    u = "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11"
    spec = {"shard_key": "d", "strategy": "list", "key_type": "uuid", "values": {u: "s1"}}
    assert dict(parse(table(spec)).tables["public.t"].values) == {u.lower(): "s1"}
    spec["values"] = {u: "s1", "nope": "s0"}
    assert_err(table(spec), "tables.t.values.nope", "a uuid", "'nope'")


def test_key_type_list_text_keeps_values() -> None:
    spec = {"shard_key": "r", "strategy": "list", "key_type": "text",
            "values": {"007": "s0", 7: "s1"}}
    assert dict(parse(table(spec)).tables["public.t"].values) == {"007": "s0", "7": "s1"}


def test_key_type_range_integer_needs_integer_bounds() -> None:
    data = _range_table({"to": 100, "shard": "s0"}, {"from": "100", "shard": "s1"})
    data["tables"]["logs"]["key_type"] = "bigint"
    t = parse(data).tables["public.logs"]
    assert (t.key_type, t.range_kind) == ("bigint", "integer")
    data = _range_table({"to": "2025-01-01", "shard": "s0"}, {"from": "2025-01-01", "shard": "s1"})
    data["tables"]["logs"]["key_type"] = "bigint"
    assert_err(data, "tables.logs.ranges[0].to", "an integer bound", "key_type bigint")


def test_key_type_range_text_compares_as_text() -> None:
    data = _range_table({"to": 5, "shard": "s0"}, {"from": 5, "shard": "s1"})
    assert parse(data).tables["public.logs"].range_kind == "integer"
    data["tables"]["logs"]["key_type"] = "varchar"
    t = parse(data).tables["public.logs"]
    assert (t.key_type, t.range_kind) == ("text", "text")
    # 9 < 10 as integers, but '10' < '9' as text: these ranges overlap for a text key
    data = _range_table({"to": 9, "shard": "s0"}, {"from": 10, "shard": "s1"})
    data["tables"]["logs"]["key_type"] = "text"
    assert_err(data, "tables.logs.ranges[1]", "overlaps", "compared as text")


def test_key_type_range_uuid_rejected() -> None:
    data = _range_table({"to": 5, "shard": "s0"}, {"from": 5, "shard": "s1"})
    data["tables"]["logs"]["key_type"] = "uuid"
    assert_err(data, "tables.logs.key_type", "not supported for strategy range")


def test_range_bound_key() -> None:
    assert range_bound_key("integer", "10") > range_bound_key("integer", "9")
    assert range_bound_key("timestamp", "2025-01-01") == dt.datetime(2025, 1, 1)
    assert range_bound_key("text", "b") == "b"
    with pytest.raises(ValueError):
        range_bound_key("integer", "x")


# --------------------------------------------------------------------------- summary


def test_format_ranges() -> None:
    assert format_ranges([]) == ""
    assert format_ranges([5]) == "5"
    assert format_ranges([0, 1, 2, 5, 7, 8]) == "0-2,5,7-8"


def test_summarize_example() -> None:
    data = base()
    data["shards"][0]["primary"] = "postgresql://postgres:topsecret@127.0.0.1:5433/app"
    data["auth"]["users"][0]["password"] = "hunter2"
    data["tables"] = {"users": {"shard_key": "id"}, "countries": {"reference": True},
                      "accounts": {"shard_key": "id", "key_type": "int8"}}
    text = summarize(parse(data))
    assert "topsecret" not in text and "hunter2" not in text
    assert "127.0.0.1:6432" in text
    assert "scram-sha-256" in text and "app" in text
    assert "postgresql://postgres@127.0.0.1:5433/app" in text
    assert "buckets: 32 [0-31]" in text and "buckets: 32 [32-63]" in text
    assert "  public.users: hash on id" in text.splitlines()  # no key_type: none shown
    assert "public.accounts: hash on id, key_type bigint" in text
    assert "public.countries: reference" in text
    assert "transaction" in text


def test_summarize_loaded_example() -> None:
    text = summarize(load_config(EXAMPLE))
    assert "public.events: list on region" in text
    assert "public.logs: range on created_at" in text
    assert "secret" not in text


def test_merge_max_groups() -> None:
    assert parse(base()).merge.max_groups == 1_000_000
    assert parse(with_(merge={"max_groups": 5})).merge.max_groups == 5
    with pytest.raises(ConfigError, match=r"merge\.max_groups"):
        parse(with_(merge={"max_groups": 0}))
    with pytest.raises(ConfigError, match="merge"):
        parse(with_(merge={"max_rows": 5}))


def test_transactions_section() -> None:
    cfg = parse(base())
    assert (cfg.transactions.mode, cfg.transactions.instance) == ("two_phase", None)
    cfg = parse(with_(transactions={"mode": "best_effort", "instance": "proxy-a.1"}))
    assert (cfg.transactions.mode, cfg.transactions.instance) == ("best_effort", "proxy-a.1")
    with pytest.raises(ConfigError, match=r"transactions\.mode"):
        parse(with_(transactions={"mode": "eventual"}))
    with pytest.raises(ConfigError, match=r"transactions\.instance"):
        parse(with_(transactions={"instance": "has space"}))
