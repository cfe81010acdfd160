"""Running pgbench against one target and reading its summary."""

from __future__ import annotations

import os
import re
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from swbench.procs import BenchError, clean_env, cpu_times

_TPS = re.compile(r"^tps = ([0-9.]+)(.*)$", re.MULTILINE)
_LATENCY = re.compile(r"^latency average = ([0-9.]+) ms", re.MULTILINE)
_PROCESSED = re.compile(r"^number of transactions actually processed: (\d+)", re.MULTILINE)
_FAILED = re.compile(r"^number of failed transactions: (\d+)", re.MULTILINE)

# pgbench's built-in "select-only" script (-S), word for word (PG 15 pgbench.c). Run as a
# custom script (-f) with -s SCALE, pgbench skips its startup `select count(*) from
# pgbench_branches` (it runs it only for built-in scripts, to find the scale): through the
# 2-shard topology that count is a cross-shard aggregate, and since each shard holds the
# whole data set even a correctly summed count would be twice the scale.
SELECT_ONLY = """\\set aid random(1, 100000 * :scale)
SELECT abalance FROM pgbench_accounts WHERE aid = :aid;
"""


def write_select_only(directory: Path) -> Path:
    """The -S script as a file for `pgbench -f`."""
    path = directory / "select-only.sql"
    path.write_text(SELECT_ONLY)
    return path


@dataclass(frozen=True)
class Target:
    """Somewhere pgbench connects: Postgres itself or a pooler in front of it."""

    name: str
    port: int
    pid: int | None = None  # the pooler's process, for its CPU time (None for direct)


@dataclass
class Result:
    target: str
    mode: str
    tps: float | None
    latency_ms: float | None
    transactions: int
    failed: int
    duration: float
    returncode: int
    error: str | None = None
    # CPU seconds the pooler process used during the run, in user space and in the kernel.
    proxy_user_s: float | None = None
    proxy_sys_s: float | None = None
    output: str = field(default="", repr=False)

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and self.tps is not None and self.error is None

    @property
    def proxy_cpu_s(self) -> float | None:
        if self.proxy_user_s is None or self.proxy_sys_s is None:
            return None
        return self.proxy_user_s + self.proxy_sys_s

    def per_txn_us(self, seconds: float | None) -> float | None:
        if seconds is None or not self.transactions:
            return None
        return seconds / self.transactions * 1e6

    @property
    def cpu_us_per_txn(self) -> float | None:
        return self.per_txn_us(self.proxy_cpu_s)

    @property
    def cpu_percent(self) -> float | None:
        if self.proxy_cpu_s is None or not self.duration:
            return None
        return self.proxy_cpu_s / self.duration * 100


def parse(output: str) -> tuple[float | None, float | None, int, int]:
    """(tps, mean latency ms, transactions processed, failed transactions) from pgbench."""
    tps = None
    for match in _TPS.finditer(output):
        # Old pgbench prints "including connections establishing" then "excluding ...":
        # keep the one that excludes connection time (the last one), like PG >= 14 prints.
        tps = float(match.group(1))
    latency = _LATENCY.search(output)
    processed = _PROCESSED.search(output)
    failed = _FAILED.search(output)
    return (tps, float(latency.group(1)) if latency else None,
            int(processed.group(1)) if processed else 0, int(failed.group(1)) if failed else 0)


def first_error(text: str) -> str | None:
    for line in text.splitlines():
        if "ERROR" in line or "FATAL" in line or "aborted" in line or "error" in line:
            return line.strip()
    return None


class Run:
    """One pgbench run in the background: `start`, do something else, then `finish`."""

    def __init__(self, pgbench: Path, target: Target, *, mode: str, clients: int,
                 threads: int, duration: int, select_only: bool = True,
                 script: Path | None = None, scale: int | None = None,
                 workdir: Path | None = None) -> None:
        """`script` (with `scale`, which sets `:scale`) replaces the built-in -S script."""
        self.target = target
        self.mode = mode
        self.duration = duration
        self.args = [str(pgbench), "-h", "127.0.0.1", "-p", str(target.port), "-U", "postgres",
                     "-n", "-M", mode, "-c", str(clients), "-j", str(threads),
                     "-T", str(duration)]
        if script is not None:
            if scale is None:
                raise ValueError("a custom script needs the scale (-s) it should use")
            self.args += ["-f", str(script), "-s", str(scale)]
        elif select_only:
            self.args.append("-S")
        self.args.append("app")
        self.workdir = workdir
        self.proc: subprocess.Popen[str] | None = None
        self.cpu_before: tuple[float, float] | None = None

    def start(self) -> Run:
        self.cpu_before = cpu_times(self.target.pid) if self.target.pid else None
        # Its own session: a Ctrl-C reaches only us, and we kill pgbench ourselves.
        self.proc = subprocess.Popen(self.args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, env=clean_env(), cwd=self.workdir,
                                     start_new_session=True)
        return self

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()

    def finish(self) -> Result:
        """Wait for pgbench and read its summary; never raises for a failed run."""
        proc = self.proc
        assert proc is not None
        try:
            out, err = proc.communicate(timeout=self.duration + 120)
        except BaseException:
            self.kill()  # timeout, Ctrl-C, ...: never leave pgbench behind
            raise
        pid = self.target.pid
        after = cpu_times(pid) if pid else None
        tps, latency, processed, failed = parse(out)
        error = None
        if proc.returncode != 0 or tps is None:
            error = first_error(err) or first_error(out) or f"pgbench exited {proc.returncode}"
        before = self.cpu_before
        user = system = None
        if before is not None and after is not None:
            user, system = after[0] - before[0], after[1] - before[1]
        return Result(self.target.name, self.mode, tps, latency, processed, failed,
                      float(self.duration), proc.returncode, error, user, system, out + err)


def run(pgbench: Path, target: Target, *, mode: str, clients: int, threads: int,
        duration: int, select_only: bool = True, script: Path | None = None,
        scale: int | None = None, workdir: Path | None = None) -> Result:
    """One pgbench run, start to end."""
    return Run(pgbench, target, mode=mode, clients=clients, threads=threads, duration=duration,
               select_only=select_only, script=script, scale=scale,
               workdir=workdir).start().finish()


def initialize(pgbench: Path, port: int, scale: int) -> None:
    """`pgbench -i -s scale app`, straight against Postgres."""
    proc = subprocess.run([str(pgbench), "-i", "-q", "-s", str(scale), "-h", "127.0.0.1",
                           "-p", str(port), "-U", "postgres", "app"],
                          capture_output=True, text=True, env=clean_env(), check=False,
                          timeout=1800)
    if proc.returncode != 0:
        raise BenchError(f"pgbench -i failed (exit {proc.returncode}):\n{proc.stderr}")
