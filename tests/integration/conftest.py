"""Fixtures that run shardwire as a real subprocess in front of the test suite's shards."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from proxy.localpg import LocalPostgres, free_port

ROOT = Path(__file__).resolve().parents[2]
APP_USER = "app"
APP_PASSWORD = "secret"


def base_topology(shards: list[LocalPostgres], **overrides: Any) -> dict[str, Any]:
    """A topology for the given clusters; `overrides` replace top-level keys."""
    listen_port = free_port()
    metrics_port = free_port()
    while metrics_port == listen_port:  # two probes can return the same free port
        metrics_port = free_port()
    topo: dict[str, Any] = {
        "listen": {"host": "127.0.0.1", "port": listen_port},
        "database": "app",
        "metrics": {"host": "127.0.0.1", "port": metrics_port},
        "auth": {"method": "scram-sha-256",
                 "users": [{"name": APP_USER, "password": APP_PASSWORD},
                           {"name": "other", "password": "otherpw"}]},
        "pool": {"mode": "transaction", "size": 10, "connect_timeout": 3,
                 "checkout_timeout": 5, "shutdown_timeout": 5},
        "shards": [{"name": f"s{i}", "primary": pg.dsn("app")} for i, pg in enumerate(shards)],
        "default_shard": "s0",
    }
    topo.update(overrides)
    return topo


@dataclass
class RunningProxy:
    host: str
    port: int
    config_path: Path
    process: subprocess.Popen[bytes]
    log_path: Path
    topology: dict[str, Any] = field(default_factory=dict)

    def dsn(self, user: str = APP_USER, password: str | None = APP_PASSWORD,
            dbname: str = "app", **params: str) -> str:
        """A libpq keyword/value connection string (works for psycopg, psql, pgbench)."""
        parts = [f"host={self.host}", f"port={self.port}", f"user={user}", f"dbname={dbname}"]
        if password is not None:
            parts.append(f"password={password}")
        parts += [f"{k}={v}" for k, v in params.items()]
        return " ".join(parts)

    def url(self, user: str = APP_USER, password: str = APP_PASSWORD,
            dbname: str = "app") -> str:
        return f"postgresql://{user}:{password}@{self.host}:{self.port}/{dbname}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def wait_for_port(host: str, port: int, process: subprocess.Popen[bytes], log_path: Path,
                  timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"shardwire exited with {process.returncode}:\n"
                               f"{log_path.read_text(errors='replace')}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"shardwire did not listen on {host}:{port} within {timeout}s:\n"
                       f"{log_path.read_text(errors='replace')}")


def start_proxy(workdir: Path, topology: dict[str, Any], name: str = "proxy",
                env: dict[str, str] | None = None,
                config_path: Path | None = None) -> RunningProxy:
    """Run `shardwire serve` on `topology`, written to `<name>.yaml` in `workdir` (or
    already at `config_path`, which the caller keeps up to date)."""
    workdir.mkdir(parents=True, exist_ok=True)
    if config_path is None:
        config_path = workdir / f"{name}.yaml"
        config_path.write_text(yaml.safe_dump(topology, sort_keys=False))
    log_path = workdir / f"{name}.log"
    env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "proxy", "--log-level", "debug", "serve",
             "--config", str(config_path)],
            stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
    listen = topology["listen"]
    wait_for_port(listen["host"], listen["port"], process, log_path)
    return RunningProxy(listen["host"], listen["port"], config_path, process, log_path,
                        topology)


ProxyFactory = Callable[..., RunningProxy]


def assert_clean_log(running: RunningProxy, since: int = 0) -> None:
    """Nothing the clients did may have made the proxy log a traceback, a [BUG] or a
    failed session sync (in the log from offset `since`)."""
    log = running.log()[since:]
    for marker in ("Traceback", "[BUG]", "session sync failed", "unexpected error"):
        assert marker not in log, f"{marker!r} in the proxy log:\n{log[-3000:]}"


@contextmanager
def pooled_proxy(factory: ProxyFactory, *, mode: str = "transaction", size: int = 2,
                 checkout_timeout: float = 10) -> Iterator[RunningProxy]:
    """A proxy with a small pool (so clients share server connections); its log must stay
    clean while it is used."""
    running = factory(pool={"mode": mode, "size": size, "connect_timeout": 3,
                            "checkout_timeout": checkout_timeout, "shutdown_timeout": 5})
    yield running
    assert_clean_log(running)


def assert_same_output(got: list[tuple[str, Any]], want: list[tuple[str, Any]]) -> None:
    """A client workload's output through the proxy equals its output direct, line by line;
    on failure the first differing line is shown before the whole lists."""
    assert got[-1] == ("done", "ok")
    for (gk, gv), (wk, wv) in zip(got, want, strict=False):
        assert (gk, gv) == (wk, wv), f"first difference at {wk!r}:\nproxy:  {gv}\ndirect: {wv}"
    assert got == want


@pytest.fixture(scope="session")
def proxy_factory(tmp_path_factory: pytest.TempPathFactory,
                  shard_clusters: list[LocalPostgres]) -> Iterator[ProxyFactory]:
    """Start a proxy over the two shards with top-level topology overrides."""
    started: list[RunningProxy] = []
    workdir = tmp_path_factory.mktemp("proxies")

    def factory(**overrides: Any) -> RunningProxy:
        running = start_proxy(workdir, base_topology(shard_clusters, **overrides),
                              name=f"proxy{len(started)}")
        started.append(running)
        return running

    yield factory
    for running in started:
        running.stop(signal.SIGKILL)


@pytest.fixture(scope="session")
def proxy(proxy_factory: ProxyFactory) -> RunningProxy:
    """The default proxy: transaction pooling, SCRAM auth, two shards (default s0)."""
    return proxy_factory()


@pytest.fixture(scope="session")
def direct(shard_clusters: list[LocalPostgres]) -> LocalPostgres:
    """The default shard itself, for comparing a client's results with and without shardwire."""
    return shard_clusters[0]


@pytest.fixture(scope="session")
def direct_dsn(direct: LocalPostgres) -> str:
    return (f"host={direct.host} port={direct.port} user=postgres password=postgres "
            f"dbname=app")
