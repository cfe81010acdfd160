#!/usr/bin/env python3
"""Benchmark shardwire against PgBouncer and Postgres itself with pgbench, in one run.

    .venv/bin/python bench/run.py [--duration 10] [--clients 8] [--profile] [--write-results]

1. starts a throwaway Postgres (proxy.localpg.LocalPostgres), creates `app`, runs
   `pgbench -i -s 10` against it directly; for the 2-shard target a second one, loaded the
   same way (each shard holds the whole data set);
2. starts PgBouncer (if installed) and shardwire in front of the first, both in transaction
   pooling mode with 20 server connections and trust authentication, and a second
   shardwire with a 2-shard topology (pgbench's tables sharded by key) over both servers;
3. runs pgbench's select-only transaction (`-S`, as an equivalent `-f` script by default),
   `-c 8 -j 2 -T 10 -n`, for each query mode (simple, prepared, extended) and each target
   (direct, pgbouncer, shardwire, shardwire-2shards), interleaved;
4. prints a markdown table (TPS, mean latency, ratios, the pooler's CPU use), the routing
   cost (2 shards vs 1 shard, against the 5% budget) and the planner's cost per statement
   (bench/planner_cost.py);
5. --profile: profiles shardwire (perf, py-spy, cProfile: one `-S -M simple` run each);
6. --write-results: records the run as a dated section of bench/RESULTS.md.

Everything it starts (Postgres, PgBouncer, shardwire, pgbench, profilers) and its temporary
directory are removed at the end, also on errors and Ctrl-C. See bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from swbench import machine, pgbench, procs, profiling, report
from swbench.pgbench import Result, Target
from swbench.procs import REPO, BenchError, Managed, PgBouncerInfo
from swbench.runner import command_line, run_main, say

from proxy.localpg import LocalPostgres, find_bindir

BENCH_DIR = Path(__file__).resolve().parent
RESULTS = BENCH_DIR / "RESULTS.md"
SHARDWIRE = "shardwire"  # one shard, nothing sharded: the baseline of the routing cost
SHARDWIRE2 = "shardwire-2shards"  # two shards, pgbench's tables sharded by key
# one shard, pgbench's tables listed as sharded: every statement is planned and routed
# (to the only shard), with no second Postgres competing for the cores
SHARDWIRE_ROUTED = "shardwire-routed"
TARGETS = ("direct", "pgbouncer", SHARDWIRE, SHARDWIRE_ROUTED, SHARDWIRE2)
ROUTING_BUDGET = 0.05  # routing may cost at most 5% of the 1-shard TPS
MODES = ("simple", "prepared", "extended")
PROFILERS = ("perf", "py-spy", "cprofile")
PGBOUNCER_INSTALL = "apt-get install pgbouncer  (Debian/Ubuntu; macOS: brew install pgbouncer)"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bench/run.py", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--duration", type=int, default=10, help="seconds per pgbench run (-T)")
    p.add_argument("--clients", type=int, default=8, help="pgbench clients (-c)")
    p.add_argument("--threads", type=int, default=2, help="pgbench threads (-j)")
    p.add_argument("--scale", type=int, default=10, help="pgbench -i scale factor (-s)")
    p.add_argument("--pool-size", type=int, default=20,
                   help="server connections per pooler (PgBouncer default_pool_size, "
                        "shardwire pool.size)")
    p.add_argument("--modes", default=",".join(MODES),
                   help="comma-separated pgbench query modes (-M)")
    p.add_argument("--targets", default=",".join(TARGETS),
                   help="comma-separated targets among " + ", ".join(TARGETS))
    p.add_argument("--rounds", type=int, default=1,
                   help="repeat the interleaved sweep; the table shows the median")
    p.add_argument("--warmup", type=int, default=3,
                   help="seconds of -S -M simple per target before measuring (0: none)")
    p.add_argument("--profile", action="store_true",
                   help="profile shardwire during an extra -S -M simple run")
    p.add_argument("--profilers", default=",".join(PROFILERS),
                   help="comma-separated, each its own -S -M simple run: perf (on-CPU split "
                        "by shared object), py-spy (sampling, Python + native stacks), "
                        "cprofile (deterministic, a second shardwire under cProfile); "
                        "unavailable ones are skipped, and cprofile stands in for a failed "
                        "py-spy")
    p.add_argument("--top", type=int, default=25, help="functions listed per profile table")
    p.add_argument("--builtin-script", action="store_true",
                   help="run pgbench's built-in -S instead of the equivalent -f script; "
                        "pgbench then starts with `select count(*) from pgbench_branches`, "
                        "a cross-shard aggregate through the 2-shard target (see README)")
    p.add_argument("--planner-iterations", type=int, default=20000,
                   help="statements per timed batch in the planner microbenchmark "
                        "(bench/planner_cost.py; 0: skip it)")
    p.add_argument("--write-results", action="store_true",
                   help=f"write a dated section to {RESULTS.relative_to(REPO)}")
    p.add_argument("--results-file", type=Path, default=RESULTS, help=argparse.SUPPRESS)
    p.add_argument("--rev", default=None,
                   help="benchmark the proxy/ of this git revision (read with git archive) "
                        "instead of the work tree")
    p.add_argument("--keep", action="store_true",
                   help="keep the temporary directory (logs, configs, profiles) for inspection")
    args = p.parse_args(argv)
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    args.targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    args.profilers = [t.strip() for t in args.profilers.split(",") if t.strip()]
    for prof in args.profilers:
        if prof not in PROFILERS:
            p.error(f"unknown profiler {prof!r}; choose from {', '.join(PROFILERS)}")
    for mode in args.modes:
        if mode not in MODES:
            p.error(f"unknown mode {mode!r}; choose from {', '.join(MODES)}")
    for target in args.targets:
        if target not in TARGETS:
            p.error(f"unknown target {target!r}; choose from {', '.join(TARGETS)}")
    if args.duration < 1 or args.clients < 1 or args.threads < 1 or args.rounds < 1:
        p.error("--duration, --clients, --threads and --rounds must be >= 1")
    if args.clients % args.threads:
        p.error("--clients must be a multiple of --threads (pgbench requires it)")
    return args



@dataclass
class Bench:
    args: argparse.Namespace
    workdir: Path
    pg: LocalPostgres | None = None
    pg2: LocalPostgres | None = None  # the second shard of the 2-shard target
    pgbench_bin: Path = Path("pgbench")
    psql_bin: Path = Path("psql")
    bouncer: PgBouncerInfo | None = None
    targets: list[Target] = field(default_factory=list)
    shardwire: Managed | None = None
    shardwire2: Managed | None = None
    notes: dict[tuple[str, str], str] = field(default_factory=dict)
    general_notes: list[str] = field(default_factory=list)
    profile_md: list[str] = field(default_factory=list)
    planner_md: str = ""
    shard_split: str = ""
    script: Path | None = None  # the -f script standing in for -S (None: built-in -S)
    # pgbench transactions each target ran (warm-up included), for the shard split
    sent: dict[str, int] = field(default_factory=dict)
    src: Path = Path()  # the snapshot of proxy/ every shardwire of this run imports
    src_hash: str = ""

    def snapshot(self) -> None:
        self.src = self.workdir / "src"
        self.src_hash = procs.snapshot_source(self.src, self.args.rev)
        what = f"git {self.args.rev}" if self.args.rev else "the work tree"
        say(f"shardwire code: proxy/ from {what} (sha256 {self.src_hash}) copied to {self.src}")

    # ------------------------------------------------------------------ setup
    def _postgres(self, stack: contextlib.ExitStack, name: str) -> LocalPostgres:
        """Start one throwaway Postgres with database `app` loaded by `pgbench -i`."""
        pg = LocalPostgres(
            self.workdir, name, auth="trust",
            settings={
                # All paths share these settings, so durability settings cancel out;
                # the data set (scale 10, ~160 MB) fits in shared_buffers.
                "fsync": "off",
                "synchronous_commit": "off",
                "max_connections": "200",
                "shared_buffers": "256MB",
                "max_prepared_transactions": "0",
                "log_min_messages": "warning",
            })
        stack.callback(pg.destroy)
        say(f"starting Postgres {name} ({pg.bindir}) in {pg.cluster_dir}")
        pg.start()
        pg.create_database("app")
        say(f"pgbench -i -s {self.args.scale} (directly against Postgres {name} on port "
            f"{pg.port})")
        started = time.monotonic()
        pgbench.initialize(self.pgbench_bin, pg.port, self.args.scale)
        pg.psql("VACUUM ANALYZE; CHECKPOINT;", dbname="app")
        say(f"  initialized in {time.monotonic() - started:.0f}s")
        return pg

    def start_postgres(self, stack: contextlib.ExitStack) -> None:
        bindir = find_bindir()
        pgbench_bin = bindir / "pgbench"
        if not os.access(pgbench_bin, os.X_OK):
            found = shutil.which("pgbench")
            if found is None:
                raise BenchError("pgbench not found (it ships with the PostgreSQL server "
                                 "packages, e.g. `apt-get install postgresql`)")
            pgbench_bin = Path(found)
        self.pgbench_bin = pgbench_bin
        self.psql_bin = bindir / "psql"
        if not self.args.builtin_script:
            self.script = pgbench.write_select_only(self.workdir)
        self.pg = self._postgres(stack, "pg")
        self.targets.append(Target("direct", self.pg.port))

    def start_second_shard(self, stack: contextlib.ExitStack) -> None:
        """The second shard of the 2-shard target: its own server with the whole data set
        (loaded directly, not through the proxy), so a read routed to either shard finds
        its row. Its statistics are reset so the shard split counts only the benchmark."""
        self.pg2 = self._postgres(stack, "pg-s1")
        self.pg2.psql("SELECT pg_stat_reset();", dbname="app")

    def start_pgbouncer(self, stack: contextlib.ExitStack) -> None:
        assert self.pg is not None
        info = procs.find_pgbouncer()
        if info is None:
            msg = f"PgBouncer is not installed; install it with: {PGBOUNCER_INSTALL}"
            say(msg + " — continuing without it")
            self.general_notes.append(msg + ". This run has no PgBouncer numbers.")
            return
        self.bouncer = info
        if not info.supports_prepared and "prepared" in self.args.modes:
            note = (f"PgBouncer {info.version} predates 1.21 (no `max_prepared_statements`): "
                    "protocol-level prepared statements are not supported in transaction "
                    "pooling, so `-M prepared` through it is expected to fail (\"prepared "
                    "statement already exists / does not exist\"). A run that gets through "
                    "does so by luck (every pgbench client prepares the same name for the "
                    "same SQL, so a server that holds it serves anyone) and is no baseline: "
                    "the ratios leave out a PgBouncer cell with any failed run")
            self.notes[("pgbouncer", "prepared")] = f"unsupported by PgBouncer {info.version}"
            self.general_notes.append(note + ".")
            say(note)
        proc, port = procs.start_pgbouncer(info, self.workdir / "pgbouncer", pg_port=self.pg.port,
                                           pool_size=self.args.pool_size,
                                           max_clients=200)
        stack.callback(proc.stop)
        say(f"PgBouncer {info.version} listening on 127.0.0.1:{port} (pid {proc.pid})")
        self.targets.append(Target("pgbouncer", port, proc.pid))

    def start_shardwire(self, stack: contextlib.ExitStack) -> None:
        assert self.pg is not None
        proc, port = procs.start_shardwire(self.workdir / SHARDWIRE, src=self.src,
                                           pg_ports=[self.pg.port],
                                           pool_size=self.args.pool_size)
        stack.callback(proc.stop)
        self.shardwire = proc
        say(f"shardwire (1 shard) listening on 127.0.0.1:{port} (pid {proc.pid})")
        self.targets.append(Target(SHARDWIRE, port, proc.pid))

    def start_shardwire_routed(self, stack: contextlib.ExitStack) -> None:
        assert self.pg is not None
        proc, port = procs.start_shardwire(self.workdir / SHARDWIRE_ROUTED, src=self.src,
                                           pg_ports=[self.pg.port],
                                           pool_size=self.args.pool_size,
                                           name=SHARDWIRE_ROUTED, sharded=True)
        stack.callback(proc.stop)
        say(f"shardwire (1 shard, tables routed) listening on 127.0.0.1:{port} "
            f"(pid {proc.pid})")
        self.targets.append(Target(SHARDWIRE_ROUTED, port, proc.pid))

    def start_shardwire2(self, stack: contextlib.ExitStack) -> None:
        assert self.pg is not None and self.pg2 is not None
        proc, port = procs.start_shardwire(self.workdir / SHARDWIRE2, src=self.src,
                                           pg_ports=[self.pg.port, self.pg2.port],
                                           pool_size=self.args.pool_size, name=SHARDWIRE2,
                                           sharded=True)
        stack.callback(proc.stop)
        self.shardwire2 = proc
        say(f"shardwire (2 shards: s0 = port {self.pg.port}, s1 = port {self.pg2.port}) "
            f"listening on 127.0.0.1:{port} (pid {proc.pid})")
        self.targets.append(Target(SHARDWIRE2, port, proc.pid))

    def check_aids(self) -> list[int]:
        """Accounts the sanity check reads: the first, one in the middle and the last."""
        last = 100000 * self.args.scale
        return [1, last // 2 + 1, last]

    def check_target(self, target: Target) -> None:
        """A few single-row reads through the target (each its own Query, so a routed
        target sends each to one shard), so a broken setup fails before measuring."""
        aids = self.check_aids()
        argv = [str(self.psql_bin), "-X", "-A", "-t", "-h", "127.0.0.1", "-p",
                str(target.port), "-U", "postgres", "-d", "app"]
        for aid in aids:
            argv += ["-c", f"SELECT aid FROM pgbench_accounts WHERE aid = {aid}"]
        out = subprocess.run(argv, capture_output=True, text=True, env=procs.clean_env(),
                             timeout=60, check=False)
        if out.returncode != 0 or out.stdout.split() != [str(a) for a in aids]:
            raise BenchError(f"sanity query through {target.name} (port {target.port}) failed:"
                             f"\n{out.stdout}{out.stderr}")
        self.sent[target.name] = self.sent.get(target.name, 0) + len(aids)

    # ------------------------------------------------------------------ measuring
    @property
    def workload_flag(self) -> str:
        return "-S" if self.script is None else f"-f {self.script.name}"

    def pgbench_run(self, target: Target, mode: str, duration: int) -> pgbench.Run:
        return pgbench.Run(self.pgbench_bin, target, mode=mode, clients=self.args.clients,
                           threads=self.args.threads, duration=duration,
                           script=self.script, scale=self.args.scale, workdir=self.workdir)

    def pgbench(self, target: Target, mode: str, duration: int) -> Result:
        res = self.pgbench_run(target, mode, duration).start().finish()
        self.sent[target.name] = self.sent.get(target.name, 0) + res.transactions
        return res

    # ------------------------------------------------------------------ shard split
    def measure_shard_split(self) -> None:
        """How many of the 2-shard target's account reads reached shard s1.

        s1's server serves only that target, so its `pg_stat_user_tables.idx_scan` on
        pgbench_accounts (reset after loading) counts them. A backend flushes its counters
        only every so often while busy (up to 10 s later when idle), but always when it
        exits: so the 2-shard shardwire is stopped first (closing its server connections).
        Call it after everything that uses that target.
        """
        if self.pg2 is None or self.shardwire2 is None:
            return
        self.shardwire2.stop()
        count = "SELECT count(*) FROM pg_stat_activity WHERE datname = 'app' AND pid <> " \
                "pg_backend_pid();"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and self.pg2.psql(count, dbname="app").strip() != "0":
            time.sleep(0.1)
        scans = int(self.pg2.psql(
            "SELECT coalesce(sum(idx_scan), 0) FROM pg_stat_user_tables "
            "WHERE relname = 'pgbench_accounts';", dbname="app").strip() or 0)
        total = self.sent.get(SHARDWIRE2, 0)
        share = f"{100 * scans / total:.1f}%" if total else "—"
        self.shard_split = (
            f"Shard split of `{SHARDWIRE2}`: shard s1 served {scans:,} of the {total:,} "
            f"account reads pgbench and the sanity check sent through it ({share}); the rest "
            "went to s0. With routing on `aid` (64 hash buckets, s1 = 32-63) expect about "
            "50%; 0% means every statement went to the default shard s0, i.e. the session "
            "does not route yet and the 2-shard numbers do not include routing.")
        say(self.shard_split)

    # ------------------------------------------------------------------ planner
    def planner_cost(self) -> None:
        """bench/planner_cost.py on the snapshot's code, while the machine is quiet."""
        n = self.args.planner_iterations
        if n <= 0:
            return
        say(f"planner microbenchmark (bench/planner_cost.py, {n:,} statements per batch)")
        env = procs.clean_env()
        env["PYTHONPATH"] = str(self.src)  # the same proxy/ the shardwires run
        out = subprocess.run(
            [sys.executable, str(BENCH_DIR / "planner_cost.py"), "--iterations", str(n)],
            capture_output=True, text=True, env=env, cwd=self.src, timeout=1800, check=False)
        if out.returncode != 0:
            msg = f"planner microbenchmark failed (exit {out.returncode}): " \
                  f"{(out.stderr or out.stdout).strip()[-800:]}"
            say(msg)
            self.general_notes.append(msg)
            return
        self.planner_md = out.stdout.strip()

    def sweep(self) -> list[report.Cell]:
        args = self.args
        targets = [t for t in self.targets if t.name in args.targets]
        if args.warmup:
            for target in targets:
                say(f"warm-up: {target.name} {self.workload_flag} -M simple for "
                    f"{args.warmup}s")
                res = self.pgbench(target, "simple", args.warmup)
                if not res.ok:
                    raise BenchError(f"warm-up through {target.name} failed: {res.error}\n"
                                     f"{res.output}")
        cells = {(t.name, m): report.Cell(t.name, m, []) for m in args.modes for t in targets}
        for rnd in range(args.rounds):
            for mode in args.modes:
                for target in targets:
                    label = f"round {rnd + 1}/{args.rounds}: " if args.rounds > 1 else ""
                    say(f"{label}{target.name:<17} {self.workload_flag} -M {mode:<8} "
                        f"-c {args.clients} "
                        f"-j {args.threads} -T {args.duration}")
                    res = self.pgbench(target, mode, args.duration)
                    cells[(target.name, mode)].runs.append(res)
                    if res.ok:
                        say(f"  {res.tps:,.0f} tps, {res.latency_ms} ms"
                            + (f", pooler CPU {res.cpu_percent:.0f}%"
                               if res.cpu_percent is not None else ""))
                    else:
                        say(f"  FAILED: {res.error}")
        return list(cells.values())

    # ------------------------------------------------------------------ profiling
    def profile(self) -> None:
        wanted = self.args.profilers
        if "perf" in wanted:
            self.profile_perf()
        spy_ok = "py-spy" in wanted and self.profile_pyspy()
        if "cprofile" in wanted or ("py-spy" in wanted and not spy_ok):
            if "cprofile" not in wanted:
                say("py-spy did not work; falling back to cProfile")
            self.profile_cprofile()

    def _attached(self, what: str, record: int, argv: list[str]
                  ) -> tuple[subprocess.CompletedProcess[str], Result]:
        """Run `argv` (a profiler attached to shardwire for `record` seconds) during a
        `-S -M simple` pgbench run of --duration seconds; return both outcomes."""
        target = next(t for t in self.targets if t.name == SHARDWIRE)
        duration = self.args.duration
        say(f"profiling shardwire with {what} ({record}s of a {duration}s -S -M simple run)")
        run = self.pgbench_run(target, "simple", duration).start()
        try:
            time.sleep(1 if duration > 2 else 0)  # let the clients connect first
            proc = subprocess.run(argv, capture_output=True, text=True, check=False,
                                  timeout=record + 300, env=procs.clean_env())
        except BaseException:
            run.kill()
            raise
        return proc, run.finish()

    def profile_perf(self) -> None:
        perf = shutil.which("perf")
        if perf is None:
            say("perf not found (Debian: apt-get install linux-perf); skipping it")
            return
        assert self.shardwire is not None
        record = max(1, self.args.duration - 2)
        data = self.workdir / "perf.data"
        proc, res = self._attached("perf", record, [
            perf, "record", "-e", "cpu-clock", "-F", "999", "-p", str(self.shardwire.pid),
            "-o", str(data), "--", "sleep", str(record)])
        if proc.returncode != 0 or not data.exists():
            say(f"  perf failed (exit {proc.returncode}; perf_event_open may be forbidden "
                f"here): {(proc.stderr or proc.stdout).strip()[-400:]}")
            return
        summary = profiling.summarize_perf(perf, data, top=self.args.top)
        note = _tps_note(res, "perf record -e cpu-clock -F 999, on-CPU samples only")
        md = report.perf_markdown(summary, res, top=self.args.top, tps_note=note)
        self.profile_md.append("### Where the time goes: perf (on-CPU, by shared object)\n\n"
                               + md)
        print("\n" + md + "\n")

    def _pyspy_bin(self) -> str | None:
        candidate = Path(sys.executable).parent / "py-spy"
        if os.access(candidate, os.X_OK):
            return str(candidate)
        found = shutil.which("py-spy")
        if found:
            return found
        say("py-spy not found; trying `pip install py-spy` into this environment")
        res = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "py-spy"],
                             capture_output=True, text=True, check=False, timeout=600)
        if res.returncode == 0 and os.access(candidate, os.X_OK):
            return str(candidate)
        say(f"  could not install py-spy: {(res.stderr or res.stdout).strip()[-300:]}")
        return None

    def profile_pyspy(self) -> bool:
        spy_bin = self._pyspy_bin()
        if spy_bin is None:
            return False
        assert self.shardwire is not None
        record = max(1, self.args.duration - 2)
        out = self.workdir / "pyspy.txt"
        spy, res = self._attached("py-spy", record, [
            spy_bin, "record", "--pid", str(self.shardwire.pid), "--duration", str(record),
            "--rate", "200", "--native", "--idle", "--format", "raw", "--output", str(out)])
        if spy.returncode != 0 or not out.exists():
            say(f"  py-spy failed (exit {spy.returncode}; it needs ptrace, which some "
                f"containers forbid): {(spy.stderr or spy.stdout).strip()[-400:]}")
            return False
        summary = profiling.summarize_pyspy(out, top=self.args.top)
        note = _tps_note(res, "py-spy attached, 200 Hz, native stacks")
        md = report.spy_markdown(summary, top=self.args.top, tps_note=note)
        self.profile_md.append("### Where the time goes: py-spy (sampling)\n\n" + md)
        print("\n" + md + "\n")
        return True

    def profile_cprofile(self) -> None:
        assert self.pg is not None
        prof_out = self.workdir / "shardwire.prof"
        say("profiling shardwire under cProfile (a second instance, started for this)")
        proc, port = procs.start_shardwire(self.workdir / "shardwire-cprofile", src=self.src,
                                           pg_ports=[self.pg.port],
                                           pool_size=self.args.pool_size,
                                           name="shardwire-cprofile", cprofile_out=prof_out)
        try:
            target = Target("shardwire (cProfile)", port, proc.pid)
            self.check_target(target)
            served = 0
            if self.args.warmup:
                served += self.pgbench(target, "simple", min(self.args.warmup, 2)).transactions
            res = self.pgbench(target, "simple", self.args.duration)
            served += res.transactions
        finally:
            status = proc.stop(timeout=30)  # SIGINT: graceful shutdown, then cProfile writes
        if not prof_out.exists():
            say(f"  cProfile wrote no profile (shardwire exit {status}):\n{proc.log_tail()}")
            return
        summary = profiling.summarize_cprofile(prof_out, self.src, top=self.args.top,
                                               transactions=served or None)
        note = _tps_note(res, "deterministic profiler; includes warm-up and shutdown")
        md = report.cprofile_markdown(summary, top=self.args.top, tps_note=note)
        self.profile_md.append("### Where the time goes: cProfile (deterministic)\n\n" + md)
        print("\n" + md + "\n")


def _tps_note(res: Result | None, what: str) -> str:
    if res is None or not res.ok:
        return f"{what}; the pgbench run under the profiler failed"
    return (f"{what}; pgbench -S -M simple under the profiler: {res.tps:,.0f} tps, "
            f"{res.transactions:,} transactions")


# ---------------------------------------------------------------------- output


def workload(bench: Bench) -> str:
    """One paragraph: what each row ran, on which topologies."""
    args = bench.args
    how = ("pgbench's built-in `-S`" if bench.script is None else
           f"`-f select-only.sql -s {args.scale}`, the text of pgbench's built-in `-S` "
           "script as a custom script (so pgbench skips its startup `select count(*) from "
           "pgbench_branches`, a cross-shard aggregate through the 2-shard target)")
    order = ", ".join(t for t in TARGETS if t in args.targets)
    return (
        f"Each row: `pgbench -n -M <mode> -c {args.clients} -j {args.threads} "
        f"-T {args.duration}` running {how} against a scale-{args.scale} database; targets "
        f"run interleaved ({order} for each mode) "
        + (f"for {args.rounds} rounds (median shown)" if args.rounds > 1 else "once")
        + f" after a {args.warmup} s warm-up each. Poolers: transaction mode, "
        f"{args.pool_size} server connections (per shard), trust auth on 127.0.0.1; Postgres "
        "with fsync off, max_connections 200. `shardwire`: one shard, no sharded tables. "
        f"`{SHARDWIRE2}`: the same proxy with two shards, s0 the server the other targets "
        "use and s1 a second one, pgbench_accounts/tellers/branches/history hash-sharded "
        "on aid/tid/bid/aid (64 buckets); both servers hold the whole data set (`pgbench -i` "
        "on each, not through the proxy), so a read routed to either shard finds its row. "
        "pgbench, the Postgres servers and the poolers share the machine's cores.")


def routing_section(bench: Bench, cells: list[report.Cell]) -> str:
    """The routing headline: shardwire routing on one shard, and with 2 shards, vs the
    same proxy on one shard with nothing to route, per mode."""
    parts: list[str] = []
    routed = report.routing_rows(cells, bench.args.modes, SHARDWIRE, SHARDWIRE_ROUTED)
    if routed:
        parts += [
            f"Planning and routing cost: `{SHARDWIRE_ROUTED}` (one shard, the pgbench tables "
            f"listed as sharded: every statement planned) vs `{SHARDWIRE}` (one shard, "
            "nothing to route), same Postgres; target: under "
            f"{ROUTING_BUDGET:.0%} of the TPS. Ratio: median of the per-round ratios.",
            "",
            report.routing_table(routed, ROUTING_BUDGET, ("plain", "routed")),
            "",
        ]
    rows = report.routing_rows(cells, bench.args.modes, SHARDWIRE, SHARDWIRE2)
    if not rows:
        return "\n".join(parts)
    parts += [
        f"Routing cost: `{SHARDWIRE2}` vs `{SHARDWIRE}` (1 shard), target: routing costs "
        f"under {ROUTING_BUDGET:.0%} of the 1-shard TPS. 2/1 TPS is the median of the "
        "per-round ratios (the two run back to back); routing cost = 1 - 2/1 TPS. CPU "
        "µs/txn: the proxy's CPU per transaction (user + sys), of the median run.",
        "",
        report.routing_table(rows, ROUTING_BUDGET),
    ]
    if bench.shard_split:
        parts += ["", bench.shard_split]
    return "\n".join(parts)


def planner_section(bench: Bench) -> str:
    if not bench.planner_md:
        return ""
    return ("Planner cost per statement (`bench/planner_cost.py`, no I/O: "
            "`proxy.sql.planner.Planner` alone, on the same proxy/ snapshot):\n\n"
            + bench.planner_md)


def render(bench: Bench, cells: list[report.Cell], facts: dict[str, str],
           command: str) -> str:
    args = bench.args
    parts = [
        f"## {facts['date'][:10]}: pgbench -S, {args.clients} clients, {args.duration} s "
        "per run",
        "",
        f"Command: `{command}`",
        "",
        workload(bench),
        "",
        report.results_table(cells, args.modes, bench.notes),
    ]
    if bench.general_notes:
        parts += ["", *(f"- {n}" for n in bench.general_notes)]
    routing = routing_section(bench, cells)
    if routing:
        parts += ["", "### Routing cost: 2 shards vs 1 shard", "", routing]
    planner = planner_section(bench)
    if planner:
        parts += ["", "### Planner cost per statement", "", planner]
    parts += ["", "### Machine", "", report.machine_table(facts)]
    for section in bench.profile_md:
        parts += ["", section]
    return "\n".join(parts) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    command = command_line("bench/run.py", argv)

    def body(workdir: Path, stack: contextlib.ExitStack) -> int:
        run(Bench(args, workdir), stack, command)
        return 0

    return run_main("swbench-", args.keep, body)


def run(bench: Bench, stack: contextlib.ExitStack, command: str) -> None:
    args = bench.args
    bench.snapshot()
    bench.start_postgres(stack)
    if SHARDWIRE2 in args.targets:
        bench.start_second_shard(stack)
    if "pgbouncer" in args.targets:
        bench.start_pgbouncer(stack)
    if SHARDWIRE in args.targets or args.profile:
        bench.start_shardwire(stack)
    if SHARDWIRE_ROUTED in args.targets:
        bench.start_shardwire_routed(stack)
    if SHARDWIRE2 in args.targets:
        bench.start_shardwire2(stack)
    for target in bench.targets:
        bench.check_target(target)
    assert bench.pg is not None
    facts = machine.describe(bindir=bench.pg.bindir, pgbench=bench.pgbench_bin,
                             pgbouncer=bench.bouncer, src=bench.src, src_hash=bench.src_hash,
                             rev=args.rev)
    machine.warn_if_busy(": expect noisy TPS; the pooler CPU µs/txn column is the steadier "
                         "one")
    cells = bench.sweep()
    bench.measure_shard_split()  # stops the 2-shard shardwire
    bench.planner_cost()
    print()
    print(workload(bench))
    print()
    print(report.results_table(cells, args.modes, bench.notes))
    for note in bench.general_notes:
        print(f"- {note}")
    for section in (routing_section(bench, cells), planner_section(bench)):
        if section:
            print()
            print(section)
    print()
    print(report.machine_table(facts))
    print()
    if args.profile:
        bench.profile()
    if args.write_results:
        text = render(bench, cells, facts, command)
        report.write_section(args.results_file, facts["date"][:10], text)
        say(f"wrote the {facts['date'][:10]} section of {args.results_file}")
    _summary(cells, args.modes)


def _summary(cells: list[report.Cell], modes: Sequence[str]) -> None:
    by = {(c.target, c.mode): c.tps for c in cells}
    sw, pgb = by.get((SHARDWIRE, "simple")), by.get(("pgbouncer", "simple"))
    if sw and pgb:
        verdict = "meets" if sw >= 0.8 * pgb else "misses"
        say(f"shardwire -S simple: {sw / pgb:.2f}x PgBouncer ({verdict} the 0.8x target)")
    for name, other in (("routed 1 shard", SHARDWIRE_ROUTED), ("2 shards", SHARDWIRE2)):
        for row in report.routing_rows(cells, modes, SHARDWIRE, other):
            if row.ratio is None or row.cost is None:
                say(f"routing cost, -M {row.mode}: no data (a run failed)")
                continue
            say(f"routing cost, -M {row.mode}: {name} = {row.ratio:.3f}x the 1-shard TPS, "
                f"{row.cost:+.1%} of it ({row.verdict(ROUTING_BUDGET)} the "
                f"{ROUTING_BUDGET:.0%} budget)")


if __name__ == "__main__":
    sys.exit(main())
