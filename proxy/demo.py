"""`shardwire demo`: two throwaway local Postgres shards, sample data, and the proxy in front.

Everything lives in one temporary directory: the two clusters (``proxy.localpg``, run with
this machine's own PostgreSQL binaries) and the generated ``topology.yaml``. The proxy
serves in the foreground; SIGINT (Ctrl-C) or SIGTERM shuts it down gracefully, then the
clusters are destroyed and the directory is removed, whatever happened before.

The schema (proxy/demo_schema.sql, package data) is created on every shard directly with psql,
because DDL broadcast comes later. The sample rows are inserted *through the proxy*, one row per
statement, so that routing (once it lands) places each row by its shard key; until then
they all land on the default shard.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import random
import secrets
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml

from proxy.cli import run_async, serve
from proxy.config import Config, load_config
from proxy.errors import ConfigError
from proxy.localpg import LocalPostgres, PostgresNotFound, PsqlError, find_bindir, free_port

__all__ = ["APP_PASSWORD", "APP_USER", "DATABASE", "SAMPLE_COUNTS", "run_demo", "sample_data"]

HOST = "127.0.0.1"
DATABASE = "app"
APP_USER = "app"
APP_PASSWORD = "secret"
SHARDS = ("s0", "s1")
SCHEMA_FILE = Path(__file__).resolve().parent / "demo_schema.sql"

COUNTRIES = (
    ("BR", "Brazil"),
    ("DE", "Germany"),
    ("FR", "France"),
    ("IN", "India"),
    ("JP", "Japan"),
    ("US", "United States"),
)
N_USERS = 100
N_ORDERS = 300
SAMPLE_COUNTS = {"countries": len(COUNTRIES), "users": N_USERS, "orders": N_ORDERS}

_FIRST = ("Ada", "Alan", "Barbara", "Dennis", "Edsger", "Frances", "Grace", "Guido",
          "Ken", "Leslie", "Margaret", "Niklaus", "Radia", "Tony", "Whitfield")
_LAST = ("Allen", "Hopper", "Kernighan", "Lamport", "Liskov", "Lovelace", "Perlman",
         "Ritchie", "Stonebraker", "Thompson", "Turing", "Wirth")
_STATUSES = ("new", "paid", "shipped", "delivered", "cancelled")

INSERT_COUNTRY = "INSERT INTO countries (code, name) VALUES ($1, $2)"
INSERT_USER = ("INSERT INTO users (id, name, email, country_code, created_at) "
               "VALUES ($1, $2, $3, $4, $5)")
INSERT_ORDER = ("INSERT INTO orders (id, user_id, amount, status, created_at) "
                "VALUES ($1, $2, $3, $4, $5)")


def _say(message: str = "") -> None:
    print(message, flush=True)


def _fail(message: str) -> None:
    print(f"shardwire demo: {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- sample data


def sample_data() -> dict[str, list[tuple[Any, ...]]]:
    """The demo rows, the same on every run: countries, users and orders (insert order)."""
    rng = random.Random(6432)
    epoch = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    users: list[tuple[Any, ...]] = []
    for uid in range(1, N_USERS + 1):
        first, last = rng.choice(_FIRST), rng.choice(_LAST)
        email = f"{first.lower()}.{last.lower()}{uid}@example.com"
        created = epoch + dt.timedelta(minutes=rng.randrange(525600))
        users.append((uid, f"{first} {last}", email, rng.choice(COUNTRIES)[0], created))
    orders: list[tuple[Any, ...]] = []
    for oid in range(1, N_ORDERS + 1):
        user = users[rng.randrange(N_USERS)]
        created = user[4] + dt.timedelta(minutes=rng.randrange(1, 100000))
        amount = Decimal(rng.randrange(199, 50000)) / 100
        orders.append((oid, user[0], amount, rng.choice(_STATUSES), created))
    return {"countries": list(COUNTRIES), "users": users, "orders": orders}


async def _load_sample_data(port: int) -> None:
    """Insert the sample rows through the proxy with asyncpg, one autocommit row at a time."""
    import asyncpg

    data = sample_data()
    conn = await asyncpg.connect(host=HOST, port=port, user=APP_USER, password=APP_PASSWORD,
                                 database=DATABASE, ssl=False, timeout=10)
    try:
        for sql, table in ((INSERT_COUNTRY, "countries"), (INSERT_USER, "users"),
                           (INSERT_ORDER, "orders")):
            for row in data[table]:
                await conn.execute(sql, *row)
    finally:
        await conn.close(timeout=5)


# --------------------------------------------------------------------------- topology


def _topology(port: int, shards: list[LocalPostgres]) -> dict[str, Any]:
    metrics_port = free_port(HOST)
    while metrics_port == port:
        metrics_port = free_port(HOST)
    return {
        "listen": {"host": HOST, "port": port},
        "database": DATABASE,
        "admin": {"database": "shardwire", "users": [APP_USER]},
        # A free port, so the demo never clashes with another shardwire on 9930.
        "metrics": {"host": HOST, "port": metrics_port},
        "auth": {"method": "scram-sha-256",
                 "users": [{"name": APP_USER, "password": APP_PASSWORD}]},
        "pool": {"mode": "transaction", "size": 10, "connect_timeout": 5,
                 "checkout_timeout": 10, "shutdown_timeout": 5},
        "shards": [{"name": name, "primary": pg.dsn(DATABASE)}
                   for name, pg in zip(SHARDS, shards, strict=True)],
        "default_shard": SHARDS[0],
        "sharding": {"buckets": 64},
        "tables": {
            "users": {"shard_key": "id"},
            "orders": {"shard_key": "user_id"},
            "countries": {"reference": True},
        },
    }


def _write_topology(path: Path, topology: dict[str, Any]) -> None:
    header = ("# Generated by `shardwire demo`; removed when the demo stops.\n"
              f"# Inspect it with: shardwire check --config {path}\n")
    path.write_text(header + yaml.safe_dump(topology, sort_keys=False))
    os.chmod(path, 0o600)  # it holds the shards' superuser password


# --------------------------------------------------------------------------- ports


def _listen_problem(host: str, port: int) -> str | None:
    """Why the proxy could not listen on host:port, or None if it can (checked by binding)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As asyncio.start_server does: a port in TIME_WAIT is fine, a listening one is not.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            return _port_message(host, port, exc)
    return None


def _port_message(host: str, port: int, exc: OSError) -> str:
    import errno

    if exc.errno == errno.EADDRINUSE:
        return (f"port {port} on {host} is already in use (another shardwire, pgbouncer or "
                f"Postgres?); stop it or pick another port: shardwire demo --port <port>")
    return f"cannot listen on {host}:{port}: {exc.strerror or exc}"


# --------------------------------------------------------------------------- running


@dataclass
class _Run:
    """What the serving coroutine reports back to run_demo."""

    topology_path: Path
    base_dir: Path
    load_error: BaseException | None = None
    listen_error: str | None = None
    tasks: set[asyncio.Task[None]] = field(default_factory=set)


def _banner(port: int, run: _Run) -> None:
    url = f"postgresql://{APP_USER}:{APP_PASSWORD}@{HOST}:{port}/{DATABASE}"
    counts = ", ".join(f"{n} {table}" for table, n in SAMPLE_COUNTS.items())
    _say(f"shardwire demo: ready ({counts} loaded through the proxy).")
    _say()
    _say(f'  Connect:   psql "{url}"')
    _say(f"  Topology:  {run.topology_path}")
    _say("  Try:       SELECT u.name, count(*) FROM users u JOIN orders o ON o.user_id = u.id"
         " GROUP BY 1 ORDER BY 2 DESC LIMIT 5;")
    _say(f"  Stop:      press Ctrl-C (or: kill {os.getpid()}); the shards and "
         f"{run.base_dir} are then removed.")
    _say()


async def _serve_demo(config: Config, run: _Run) -> int:
    loop = asyncio.get_running_loop()

    async def load(port: int) -> None:
        try:
            await _load_sample_data(port)
        except Exception as exc:
            run.load_error = exc
            _fail(f"loading the sample data through the proxy failed: "
                  f"{type(exc).__name__}: {exc}")
            os.kill(os.getpid(), signal.SIGTERM)  # serve() shuts down on SIGTERM
            return
        _banner(port, run)

    def ready(port: int) -> None:
        _say(f"shardwire demo: proxy listening on {HOST}:{port}; loading the sample data "
             f"through it ...")
        task = loop.create_task(load(port))
        run.tasks.add(task)
        task.add_done_callback(run.tasks.discard)

    try:
        code = await serve(config, ready=ready)
    except OSError as exc:  # lost a race for the port after the early check
        run.listen_error = _port_message(config.listen.host, config.listen.port, exc)
        return 1
    finally:
        for task in list(run.tasks):
            task.cancel()
        if run.tasks:
            await asyncio.wait(run.tasks, timeout=5)
    return 1 if run.load_error is not None else code


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _start_shards(base_dir: Path, bindir: Path, password: str, schema: str,
                  clusters: list[LocalPostgres]) -> None:
    """Start the shards (appending each to `clusters` first, so cleanup always sees it)."""
    for name in SHARDS:
        pg = LocalPostgres(base_dir, name, auth="scram-sha-256", superuser_password=password,
                           bindir=bindir)
        clusters.append(pg)
        pg.start()
        pg.create_database(DATABASE)
        pg.psql(schema, dbname=DATABASE)
        _say(f"shardwire demo: shard {name} is up on {pg.host}:{pg.port} "
             f"(data in {pg.datadir})")


def _cleanup(clusters: list[LocalPostgres], base_dir: Path | None) -> bool:
    """Destroy the clusters and remove the directory; False if something was left behind."""
    clean = True
    for pg in reversed(clusters):
        try:
            pg.destroy()
        except Exception as exc:  # keep going: the rest must still be removed
            _fail(f"could not stop shard {pg.name}: {exc}")
            clean = False
    if base_dir is not None:
        shutil.rmtree(base_dir, ignore_errors=True)
        if base_dir.exists():
            _fail(f"could not remove {base_dir}")
            clean = False
    return clean


def run_demo(port: int = 6432) -> int:
    """Run the demo in the foreground until SIGINT/SIGTERM; return the exit code.

    0 after a normal stop, 1 when something failed (port busy, no PostgreSQL, a shard or the
    sample data did not come up), 130 when interrupted before the proxy was serving.
    """
    if not 1 <= port <= 65535:
        _fail(f"expected a port 1-65535, got {port}")
        return 2
    problem = _listen_problem(HOST, port)
    if problem is not None:
        _fail(problem)
        return 1
    try:
        bindir = find_bindir()
    except PostgresNotFound as exc:
        _fail(str(exc))
        return 1
    try:
        schema = SCHEMA_FILE.read_text(encoding="utf-8")
    except OSError as exc:
        _fail(f"cannot read the demo schema {SCHEMA_FILE}: {exc.strerror or exc} "
              f"(the demo runs from a source checkout)")
        return 1

    handlers: dict[int, Callable[..., Any] | int | None] = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        handlers[sig] = signal.signal(sig, _interrupt)
    clusters: list[LocalPostgres] = []
    base_dir: Path | None = None
    try:
        # Short (unix socket paths are limited) and traversable by the postgres user, which
        # runs the clusters when we are root.
        base_dir = Path(tempfile.mkdtemp(prefix="shardwire-demo-"))
        os.chmod(base_dir, 0o755)
        _say(f"shardwire demo: starting two local PostgreSQL shards ({bindir}) in {base_dir}")
        _start_shards(base_dir, bindir, secrets.token_hex(16), schema, clusters)
        run = _Run(topology_path=base_dir / "topology.yaml", base_dir=base_dir)
        _write_topology(run.topology_path, _topology(port, clusters))
        config = load_config(run.topology_path)
        code = run_async(lambda: _serve_demo(config, run))
        if run.listen_error is not None:
            _fail(run.listen_error)
        _say("shardwire demo: stopping the shards and removing the temporary files ...")
        return code
    except KeyboardInterrupt:
        _fail("interrupted; cleaning up ...")
        return 130
    except (RuntimeError, PsqlError, ConfigError, OSError) as exc:
        _fail(f"setup failed: {exc}")
        return 1
    finally:
        # A second Ctrl-C / SIGTERM must not leave clusters or files behind.
        for sig in handlers:
            signal.signal(sig, signal.SIG_IGN)
        try:
            clean = _cleanup(clusters, base_dir)
        finally:
            for sig, handler in handlers.items():
                signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        if clean and base_dir is not None:
            _say(f"shardwire demo: stopped; the shards and {base_dir} are removed.")
