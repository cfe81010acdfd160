"""`shardwire demo` end to end: a real subprocess, real shards, psql and psycopg as clients."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest
import yaml

from proxy.config import parse_dsn
from proxy.demo import SAMPLE_COUNTS, sample_data
from proxy.localpg import free_port

ROOT = Path(__file__).resolve().parents[2]
READY = "shardwire demo: ready"


def _start_demo(tmp_path: Path, port: int) -> tuple[subprocess.Popen[bytes], Path, Path]:
    out_path, err_path = tmp_path / "demo.out", tmp_path / "demo.err"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with out_path.open("wb") as out, err_path.open("wb") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "proxy", "demo", "--port", str(port)],
            stdout=out, stderr=err, cwd=ROOT, env=env)
    return process, out_path, err_path


def _output(out_path: Path, err_path: Path) -> str:
    return (f"--- stdout\n{out_path.read_text(errors='replace')}"
            f"--- stderr\n{err_path.read_text(errors='replace')}")


def _wait_ready(process: subprocess.Popen[bytes], out_path: Path, err_path: Path,
                timeout: float = 40) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = out_path.read_text(errors="replace")
        if READY in text and "Stop:" in text:
            return text
        if process.poll() is not None:
            pytest.fail(f"shardwire demo exited with {process.returncode} before it was "
                        f"ready:\n{_output(out_path, err_path)}")
        time.sleep(0.1)
    pytest.fail(f"shardwire demo was not ready within {timeout}s:\n{_output(out_path, err_path)}")


def _alive(pid: int) -> bool:
    """True while `pid` runs (a zombie nobody reaped counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


@pytest.mark.timeout(60)
def test_demo_serves_sample_data_then_cleans_up(tmp_path: Path, pg_bindir: Path) -> None:
    port = free_port()
    process, out_path, err_path = _start_demo(tmp_path, port)
    try:
        text = _wait_ready(process, out_path, err_path)
        url = re.search(r'psql "(postgresql://[^"]+)"', text)
        assert url is not None, text
        assert url[1] == f"postgresql://app:secret@127.0.0.1:{port}/app"
        found = re.search(r"^\s*Topology:\s+(\S+)\s*$", text, re.MULTILINE)
        assert found is not None, text
        topology_path = Path(found[1])
        base_dir = topology_path.parent
        assert base_dir.name.startswith("shardwire-demo-"), base_dir

        topology = yaml.safe_load(topology_path.read_text())
        assert [s["name"] for s in topology["shards"]] == ["s0", "s1"]
        assert topology["listen"] == {"host": "127.0.0.1", "port": port}
        shard_ports = [parse_dsn(s["primary"]).port for s in topology["shards"]]
        postmasters = [int((base_dir / name / "data" / "postmaster.pid").read_text().split()[0])
                       for name in ("s0", "s1")]
        assert all(_alive(pid) for pid in postmasters)

        # psql, as the banner tells a user to connect (password from the environment).
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["PGPASSWORD"] = "secret"
        result = subprocess.run(
            [str(pg_bindir / "psql"), "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1",
             "-c", "SELECT count(*) FROM users",
             f"postgresql://app@127.0.0.1:{port}/app"],
            capture_output=True, text=True, env=env, timeout=20, check=False)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == str(SAMPLE_COUNTS["users"])

        data = sample_data()
        with psycopg.connect(f"host=127.0.0.1 port={port} user=app password=secret "
                             f"dbname=app connect_timeout=10") as conn:
            for table, expected in SAMPLE_COUNTS.items():
                row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
                assert row == (expected,), table
            # Single-shard statements: one user's orders, joined with the reference table.
            user_id = data["orders"][0][1]
            mine = [order for order in data["orders"] if order[1] == user_id]
            row = conn.execute(
                "SELECT count(*), sum(o.amount) FROM orders o JOIN users u ON u.id = o.user_id "
                "JOIN countries c ON c.code = u.country_code WHERE o.user_id = %s",
                (user_id,)).fetchone()
            assert row == (len(mine), sum(order[2] for order in mine))
            # The sample data really is spread over both shards.
            for name in ("s0", "s1"):
                dsn = next(s["primary"] for s in topology["shards"] if s["name"] == name)
                with psycopg.connect(dsn, connect_timeout=10) as shard:
                    on_shard = shard.execute("SELECT count(*) FROM users").fetchone()
                assert on_shard is not None and 0 < on_shard[0] < SAMPLE_COUNTS["users"], name

        process.send_signal(signal.SIGINT)
        code = process.wait(timeout=30)
        assert code == 0, _output(out_path, err_path)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    assert "stopped; the shards and" in out_path.read_text()
    assert not base_dir.exists(), f"{base_dir} was left behind"
    deadline = time.monotonic() + 5
    while any(_alive(pid) for pid in postmasters) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(pid) for pid in postmasters), "a shard's postmaster still runs"
    for p in [port, *shard_ports]:
        assert not _port_open(p), f"port {p} still accepts connections"


@pytest.mark.timeout(30)
def test_demo_refuses_a_busy_port(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        process, out_path, err_path = _start_demo(tmp_path, port)
        try:
            code = process.wait(timeout=20)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    assert code == 1, _output(out_path, err_path)
    stderr = err_path.read_text()
    assert f"port {port} on 127.0.0.1 is already in use" in stderr
    assert "--port" in stderr
    assert "starting two local PostgreSQL shards" not in out_path.read_text()
