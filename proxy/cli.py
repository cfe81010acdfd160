"""Command line: `shardwire serve | check | demo` — argv to config to a running proxy."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from proxy import __version__
from proxy.config import Config, load_config, summarize
from proxy.errors import ConfigError

log = logging.getLogger("shardwire")


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("watchfiles").setLevel(logging.WARNING)  # it logs every event at DEBUG


def run_async(main: Callable[[], Coroutine[Any, Any, int]]) -> int:
    """Run `main` on uvloop when available (it is a hard dependency on Linux/macOS)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - Windows
        return asyncio.run(main())
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main())


async def serve(config: Config, ready: Callable[[int], None] | None = None,
                config_path: str | None = None) -> int:
    """Serve until SIGINT/SIGTERM, then shut down gracefully. With `config_path` the
    topology file is watched and reloaded on change and on SIGHUP."""
    from proxy.server import Proxy

    try:
        proxy = Proxy(config, config_path)
        await proxy.start()
    except ConfigError as exc:  # e.g. unreadable TLS files
        print(f"shardwire: invalid topology: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # e.g. the port is taken; was a bare traceback (fault tests)
        listen = config.listen
        print(f"shardwire: cannot listen on {listen.host}:{listen.port}: "
              f"{exc.strerror or exc}", file=sys.stderr)
        return 1
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: proxy.reload("SIGHUP"))
    if ready is not None:
        ready(proxy.port)
    await stop.wait()
    log.info("shutting down (waiting up to %gs for running transactions)",
             config.pool.shutdown_timeout)
    await proxy.shutdown()
    return 0


def _load(path: str) -> Config | None:
    """Load a topology, or print why it is invalid (the caller exits 2)."""
    try:
        return load_config(path)
    except ConfigError as exc:
        print(f"shardwire: invalid topology: {exc}", file=sys.stderr)
        return None


def cmd_serve(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if config is None:
        if not args.wait_for_valid_config:
            return 2
        return run_async(lambda: serve_when_valid(args.config))
    return run_async(lambda: serve(config, config_path=args.config))


async def serve_when_valid(path: str) -> int:
    """`serve --wait-for-valid-config`: the topology is invalid at start. Answer /health
    with 503 (a Kubernetes readiness probe keeps the pod out of its Service, and a rolling
    update stops there) and wait for the file to become valid, then serve it."""
    from proxy.metrics import WaitingServer
    from proxy.topology.watcher import TopologyWatcher

    changed = asyncio.Event()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, changed.set)
    problem = ["invalid topology"]
    host, port = WaitingServer.address_of(path)
    probe: WaitingServer | None = None
    try:
        probe = WaitingServer(host, port, lambda: problem[0])  # binds the port
        probe.start()
    except OSError as exc:
        log.warning("cannot answer /health on %s:%d: %s", host, port, exc)
    watcher = TopologyWatcher(path, changed.set)
    watcher.start()
    try:
        while True:
            try:
                config = load_config(path)
                break
            except ConfigError as exc:
                problem[0] = f"invalid topology: {exc}"
                log.error("%s; waiting for a valid file (/health answers 503)", problem[0])
            changed.clear()
            waiter = asyncio.ensure_future(changed.wait())
            stopper = asyncio.ensure_future(stop.wait())
            await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            stopper.cancel()
            if stop.is_set():
                return 2
    finally:
        await watcher.close()
        if probe is not None:
            await asyncio.to_thread(probe.stop)
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.remove_signal_handler(sig)
    log.info("the topology is valid now: starting")
    return await serve(config, config_path=path)


def cmd_check(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if config is None:
        return 2
    try:
        # Also load the TLS files, so `check` refuses what `serve` would refuse.
        from proxy.server import make_ssl_context

        make_ssl_context(config)
    except ConfigError as exc:
        print(f"shardwire: invalid topology: {exc}", file=sys.stderr)
        return 2
    print(summarize(config))
    if getattr(args, "connect", False):
        return asyncio.run(_check_shards(config))
    return 0


async def _check_shards(config: Config) -> int:
    """`check --connect`: reach every shard and report what would fail at run time (so
    far: two-phase commit without prepared-transaction slots)."""
    from proxy.backend.connection import open_server
    from proxy.exec import twophase

    problems = 0
    for shard in config.shards:
        dsn = shard.primary
        try:
            server = await open_server(
                shard=shard.name, role="primary", host=dsn.host, port=dsn.port,
                user=dsn.user, database=dsn.database, password=dsn.password,
                connect_timeout=config.pool.connect_timeout)
        except Exception as exc:
            print(f"shard {shard.name}: not reachable: {exc}")
            problems += 1
            continue
        try:
            warning = None
            if config.transactions.mode == "two_phase" and len(config.shards) > 1:
                warning = await twophase.check_prepared_slots(server)
            print(f"shard {shard.name}: " + (f"WARNING: {warning}" if warning else "ok"))
            problems += warning is not None
        finally:
            server.terminate()
    return 1 if problems else 0


def cmd_route(args: argparse.Namespace) -> int:
    """Print where a statement would go and why (the planner's route and reason)."""
    from proxy.sql import Planner, explain

    config = _load(args.config)
    if config is None:
        return 2
    route = Planner(config).plan(args.sql, args.param or None)
    print(explain(route))
    if route.error is None and route.needs_merge:
        from proxy.errors import ShardwireError
        from proxy.sql.merge import plan_merge

        try:
            plan = plan_merge(args.sql)
        except ShardwireError as exc:
            print(f"merge: refused, {exc.sqlstate}: {exc.message}")
            return 1
        print("merge plan:")
        print("\n".join(f"  {line}" for line in plan.describe().splitlines()))
    return 1 if route.error is not None else 0


def cmd_demo(args: argparse.Namespace) -> int:
    from proxy.demo import run_demo

    return run_demo(port=args.port)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="shardwire",
                                     description="An SQL-aware sharding proxy for PostgreSQL.")
    parser.add_argument("--version", action="version", version=f"shardwire {__version__}")
    parser.add_argument("--log-level", default="info",
                        choices=["debug", "info", "warning", "error"])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("serve", help="run the proxy in the foreground")
    p.add_argument("--config", "-c", required=True, help="topology YAML file")
    p.add_argument("--wait-for-valid-config", action="store_true",
                   help="if the topology is invalid at start, answer /health with 503 and "
                        "wait for the file to be fixed instead of exiting (Kubernetes)")
    p.set_defaults(func=cmd_serve)
    p = sub.add_parser("check", help="validate a topology file and print a summary")
    p.add_argument("--config", "-c", required=True, help="topology YAML file")
    p.add_argument("--connect", action="store_true",
                   help="also reach every shard and warn about what would fail at run time "
                        "(e.g. max_prepared_transactions = 0 with two-phase commit)")
    p.set_defaults(func=cmd_check)
    p = sub.add_parser("route", help="show which shard(s) a statement goes to, and why")
    p.add_argument("--config", "-c", required=True, help="topology YAML file")
    p.add_argument("--param", "-p", action="append",
                   help="a $n parameter value in text form (repeat in order: $1, $2, ...)")
    p.add_argument("sql", help="the SQL statement")
    p.set_defaults(func=cmd_route)
    p = sub.add_parser("demo", help="start two throwaway local shards and serve them")
    p.add_argument("--port", type=int, default=6432)
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.log_level)
    return int(args.func(args))
