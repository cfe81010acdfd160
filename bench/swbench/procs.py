"""Child processes the benchmark starts (PgBouncer, shardwire, py-spy) and their cleanup.

Every child runs in its own session (process group), so a Ctrl-C in the terminal reaches
only the benchmark itself, which then stops its children in order: first the signal each
one shuts down cleanly on, then SIGKILL for the whole group if it does not exit in time.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from proxy.localpg import LocalPostgres, free_port
from swbench import topology

CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
REPO = Path(__file__).resolve().parents[2]


def bench_postgres(workdir: Path, name: str, stack: contextlib.ExitStack, *,
                   max_prepared: int = 0) -> LocalPostgres:
    """A throwaway Postgres for a benchmark (fsync off, destroyed with `stack`), with the
    benchmark database created."""
    pg = LocalPostgres(workdir, name, auth="trust", settings={
        "fsync": "off",
        "synchronous_commit": "off",
        "max_connections": "200",
        "shared_buffers": "256MB",
        "max_prepared_transactions": str(max_prepared),
        "log_min_messages": "warning",
    })
    stack.callback(pg.destroy)
    pg.start()
    pg.create_database(topology.DATABASE)
    return pg


def announce_snapshot(src: Path, rev: str | None) -> str:
    """Copy proxy/ (git `rev`, or the work tree) to `src` and say so; returns its hash."""
    from swbench.runner import say

    src_hash = snapshot_source(src, rev)
    what = f"git {rev}" if rev else "the work tree"
    say(f"shardwire code: proxy/ from {what} (sha256 {src_hash}) copied to {src}")
    return src_hash


class BenchError(RuntimeError):
    """A step of the benchmark failed in a way that makes the run meaningless."""


def account(name: str = "postgres") -> pwd.struct_passwd | None:
    """The unprivileged account daemons run as when we are root (None when we are not)."""
    if os.geteuid() != 0:
        return None
    return pwd.getpwnam(name)


def chown_tree(path: Path, acct: pwd.struct_passwd | None) -> None:
    if acct is None:
        return
    for root, dirs, files in os.walk(path):
        os.chown(root, acct.pw_uid, acct.pw_gid)
        for name in (*dirs, *files):
            os.chown(os.path.join(root, name), acct.pw_uid, acct.pw_gid)


def clean_env() -> dict[str, str]:
    """The environment without libpq's PG* variables (they would redirect pgbench/psql)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C"
    return env


def cpu_times(pid: int) -> tuple[float, float] | None:
    """(user, system) CPU seconds a process has used so far (None if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    # After "(comm)": state is field 0, utime is field 11, stime field 12.
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


def wait_for_port(host: str, port: int, proc: Managed, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive:
            status = proc.popen.returncode if proc.popen else "?"
            raise BenchError(f"{proc.name} exited with {status} before listening on "
                             f"{host}:{port}:\n{proc.log_tail()}")
        try:
            with socket.create_connection((host, port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise BenchError(f"{proc.name} did not listen on {host}:{port} within {timeout:g}s:\n"
                     f"{proc.log_tail()}")


class Managed:
    """One child process in its own session, with its output going to a log file."""

    def __init__(self, name: str, args: list[str], *, log_path: Path,
                 acct: pwd.struct_passwd | None = None, cwd: Path | None = None,
                 env: dict[str, str] | None = None,
                 stop_signal: signal.Signals = signal.SIGTERM) -> None:
        self.name = name
        self.args = args
        self.log_path = log_path
        self.acct = acct
        self.cwd = cwd
        self.env = env if env is not None else clean_env()
        self.stop_signal = stop_signal
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self) -> Managed:
        kwargs: dict[str, object] = {}
        if self.acct is not None:
            kwargs.update(user=self.acct.pw_uid, group=self.acct.pw_gid, extra_groups=[])
        with self.log_path.open("ab") as log:
            self.popen = subprocess.Popen(
                self.args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                cwd=self.cwd, env=self.env, start_new_session=True, **kwargs)  # type: ignore[call-overload]
        return self

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 15.0) -> int | None:
        """Ask the process to exit (stop_signal), then SIGKILL its group. Returns its status."""
        popen = self.popen
        if popen is None:
            return None
        if popen.poll() is None:
            try:
                os.kill(popen.pid, self.stop_signal)
            except ProcessLookupError:
                pass
            try:
                popen.wait(timeout)
            except subprocess.TimeoutExpired:
                print(f"  {self.name} ignored {self.stop_signal.name} for {timeout:g}s; killing",
                      file=sys.stderr)
        self._kill_group()
        try:
            return popen.wait(10)
        except subprocess.TimeoutExpired:
            return None

    def _kill_group(self) -> None:
        assert self.popen is not None
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


# --------------------------------------------------------------------------- PgBouncer


@dataclass(frozen=True)
class PgBouncerInfo:
    path: str
    version: str
    version_tuple: tuple[int, ...]

    @property
    def supports_prepared(self) -> bool:
        """Protocol-level prepared statements in transaction mode arrived in PgBouncer 1.21."""
        return self.version_tuple >= (1, 21)


def find_pgbouncer() -> PgBouncerInfo | None:
    path = shutil.which("pgbouncer") or next(
        (p for p in ("/usr/sbin/pgbouncer", "/usr/local/sbin/pgbouncer") if os.access(p, os.X_OK)),
        None)
    if path is None:
        return None
    out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30,
                         check=False).stdout
    match = re.search(r"PgBouncer\s+(\d+(?:\.\d+)*)", out)
    version = match.group(1) if match else "unknown"
    parts = tuple(int(p) for p in version.split(".")) if match else (0,)
    return PgBouncerInfo(path, version, parts)


def start_pgbouncer(info: PgBouncerInfo, workdir: Path, *, pg_port: int, pool_size: int,
                    max_clients: int) -> tuple[Managed, int]:
    """Start PgBouncer (as the postgres user when we are root: it refuses to run as root)."""
    workdir.mkdir(parents=True, exist_ok=True)
    acct = account()
    port = free_port()
    userlist = workdir / "userlist.txt"
    userlist.write_text('"postgres" ""\n')
    lines = [
        "[databases]",
        f"app = host=127.0.0.1 port={pg_port} dbname=app user=postgres",
        "",
        "[pgbouncer]",
        "listen_addr = 127.0.0.1",
        f"listen_port = {port}",
        "unix_socket_dir =",
        # Same client auth as shardwire's `auth.method: trust`; Postgres trusts 127.0.0.1.
        "auth_type = trust",
        f"auth_file = {userlist}",
        "pool_mode = transaction",
        f"default_pool_size = {pool_size}",
        "min_pool_size = 0",
        "reserve_pool_size = 0",
        f"max_client_conn = {max_clients}",
        "ignore_startup_parameters = extra_float_digits",
        f"logfile = {workdir / 'pgbouncer.log'}",
        f"pidfile = {workdir / 'pgbouncer.pid'}",
        "log_connections = 0",
        "log_disconnections = 0",
        "admin_users = postgres",
    ]
    if info.supports_prepared:
        lines.append("max_prepared_statements = 200")
    ini = workdir / "pgbouncer.ini"
    ini.write_text("\n".join(lines) + "\n")
    chown_tree(workdir, acct)
    proc = Managed("pgbouncer", [info.path, str(ini)], log_path=workdir / "stdout.log",
                   acct=acct, cwd=workdir, stop_signal=signal.SIGINT).start()
    wait_for_port("127.0.0.1", port, proc)
    return proc, port


# --------------------------------------------------------------------------- shardwire


def snapshot_source(dest: Path, rev: str | None = None) -> str:
    """Copy the `proxy` package to `dest/proxy` and return a short hash of its sources.

    Every shardwire this run starts imports the copy, so they all run the same code even
    while someone edits the work tree. `rev` takes it from git (`git archive`, read-only)
    instead of the work tree.
    """
    dest.mkdir(parents=True, exist_ok=True)
    if rev is None:
        shutil.copytree(REPO / "proxy", dest / "proxy",
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    else:
        out = subprocess.run(["git", "--no-optional-locks", "-C", str(REPO), "archive",
                              "--format=tar", rev, "proxy"],
                             capture_output=True, check=False, timeout=120)
        if out.returncode != 0:
            raise BenchError(f"git archive {rev} proxy failed: "
                             f"{out.stderr.decode(errors='replace').strip()}")
        with tarfile.open(fileobj=io.BytesIO(out.stdout)) as tar:
            tar.extractall(dest, filter="data")
    digest = hashlib.sha256()
    for path in sorted((dest / "proxy").rglob("*.py")):
        digest.update(str(path.relative_to(dest)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def start_shardwire(workdir: Path, *, src: Path, pg_ports: Sequence[int], pool_size: int,
                    name: str = "shardwire", sharded: bool = False,
                    cprofile_out: Path | None = None) -> tuple[Managed, int]:
    """A shardwire with one shard per port in `pg_ports` (`sharded`: the pgbench tables
    sharded by key; see swbench.topology), started by serve_shardwire."""
    port = free_port()
    data = topology.topology(shard_ports=pg_ports, listen_port=port, pool_size=pool_size,
                             sharded=sharded)
    return serve_shardwire(workdir, data, port, src=src, name=name,
                           cprofile_out=cprofile_out), port


def serve_shardwire(workdir: Path, data: dict[str, Any], port: int, *, src: Path,
                    name: str = "shardwire", cprofile_out: Path | None = None) -> Managed:
    """Start `python -m proxy serve` (optionally under cProfile) from the snapshot in `src`
    on the topology `data` (listening on `port`), and wait until it listens.

    It stops on SIGINT (graceful shutdown), which also lets cProfile write its output.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / f"{name}.yaml"
    config.write_text(topology.to_yaml(data))
    args = [sys.executable]
    if cprofile_out is not None:
        args += ["-m", "cProfile", "-o", str(cprofile_out)]
    args += ["-m", "proxy", "--log-level", "warning", "serve", "--config", str(config)]
    env = clean_env()
    env["PYTHONPATH"] = str(src)  # the snapshot's proxy, whatever is installed
    proc = Managed(name, args, log_path=workdir / f"{name}.log", cwd=src, env=env,
                   stop_signal=signal.SIGINT).start()
    wait_for_port("127.0.0.1", port, proc)
    return proc


def connect(port: int) -> psycopg.Connection[Any]:
    """An autocommit psycopg connection to the bench database on `port` (direct or through
    a proxy), without client-side prepared statements."""
    return psycopg.connect(host="127.0.0.1", port=port, dbname=topology.DATABASE,
                           user="postgres", autocommit=True, prepare_threshold=None,
                           connect_timeout=30)
