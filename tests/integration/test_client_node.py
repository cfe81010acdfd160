"""node-postgres (pg 8), unchanged, through a transaction-pooling shardwire: results equal
direct.

One script (tests/clients/node/workload.js) runs a scripted workload and prints JSON lines
[key, value]; it runs once through a proxy with a pool of 2 server connections and once
against the shard directly, and the outputs must be equal. It covers simple queries,
parameterized queries (the unnamed statement), named statements on a pg.Pool of 4 clients
(re-prepared on whichever server connection a client gets), transactions and savepoints,
types, errors (code, message, detail, position...) and pg-cursor (portals read in chunks).

pg and pg-cursor are installed once per test session with npm into a temporary directory,
from tests/clients/node/package.json.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import (
    ProxyFactory,
    RunningProxy,
    assert_clean_log,
    assert_same_output,
)

NODE_DIR = Path(__file__).resolve().parents[1] / "clients" / "node"
HOW = ("node-postgres is installed from the npm registry: node 18+ and npm are needed "
       "(`apt-get install nodejs npm`), with the registry reachable")


@pytest.fixture(scope="module")
def node_modules(tmp_path_factory: pytest.TempPathFactory) -> Path:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.fail(f"node/npm not found. {HOW}", pytrace=False)
    workdir = tmp_path_factory.mktemp("node-pg")
    shutil.copy(NODE_DIR / "package.json", workdir / "package.json")
    try:
        result = subprocess.run(
            [npm, "install", "--no-audit", "--no-fund", "--no-package-lock", "--loglevel=error"],
            cwd=workdir, capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        pytest.fail(f"npm install of pg timed out after 300 s. {HOW}", pytrace=False)
    if result.returncode != 0 or not (workdir / "node_modules" / "pg").is_dir():
        pytest.fail(f"npm install of pg failed ({result.returncode}). {HOW}\n"
                    f"{result.stdout[-2000:]}\n{result.stderr[-4000:]}", pytrace=False)
    return workdir / "node_modules"


@pytest.fixture(scope="module")
def small(proxy_factory: ProxyFactory) -> RunningProxy:
    return proxy_factory(pool={"mode": "transaction", "size": 2, "connect_timeout": 3,
                               "checkout_timeout": 10, "shutdown_timeout": 5})


def run_workload(node_modules: Path, host: str, port: int, user: str,
                 password: str) -> tuple[list[tuple[str, Any]], dict[str, Any]]:
    """Run the JS workload; return its compared lines (in order) and its info lines."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "NODE_"))}
    env.update(TZ="UTC", NODE_PATH=str(node_modules), LC_ALL="C")
    result = subprocess.run(
        ["node", str(NODE_DIR / "workload.js"), host, str(port), user, password],
        capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, (f"workload against {host}:{port} failed "
                                    f"({result.returncode}):\n{result.stdout[-4000:]}\n"
                                    f"{result.stderr[-6000:]}")
    compared: list[tuple[str, Any]] = []
    info: dict[str, Any] = {}
    for line in result.stdout.splitlines():
        key, value = json.loads(line)
        if key.startswith("info."):
            info[key] = value
        else:
            compared.append((key, value))
    return compared, info


def test_node_postgres_workload_equals_direct(small: RunningProxy, direct_dsn: str,
                                              node_modules: Path) -> None:
    kv = dict(part.split("=", 1) for part in direct_dsn.split())
    since = len(small.log())
    got, got_info = run_workload(node_modules, small.host, small.port, "app", "secret")
    want, want_info = run_workload(node_modules, kv["host"], int(kv["port"]), kv["user"],
                                   kv["password"])
    assert_same_output(got, want)
    values = dict(got)
    # the workload did what it meant to
    assert values["error.unique"]["code"] == "23505"
    assert values["error.unique"]["detail"] == "Key (id)=(1) already exists."
    assert values["error.syntax"]["position"] == "1"
    assert values["error.named.3"]["code"] == "22012"
    assert values["tx.savepoints"] == [{"ids": [1, 3, 4]}]
    assert values["cursor.count"] == 321
    assert values["named.task0"][0][0] == [{"name": "item 1", "price": "0.25"}]
    # pg's statement names reach Postgres directly, never through shardwire
    for t in range(8):
        direct_prep, proxy_prep = want_info[f"info.named.prepared{t}"], \
            got_info[f"info.named.prepared{t}"]
        assert direct_prep["client_names"] == "1"
        assert proxy_prep["client_names"] == "0"
        assert int(proxy_prep["shardwire_names"]) >= 2
    assert_clean_log(small, since)
