#!/usr/bin/env python3
"""Cross-shard write benchmark (issue 5): pgbench's TPC-B over 2 shards vs one Postgres.

    .venv/bin/python bench/tpcb_bench.py [--scale 10] [--duration 15] [--rounds 3]
                                         [--modes simple,prepared] [--write-results]

1. starts three throwaway Postgres servers with the same settings (fsync off,
   max_prepared_transactions 100): `plain`, and the shards `s0` and `s1`;
2. starts two shardwire proxies over s0/s1 (transaction pooling, 64 buckets, the pgbench
   tables sharded by their own keys: accounts by aid, tellers by tid, branches by bid,
   history by aid; bench/swbench/topology.py), identical except `transactions.mode`:
   `two_phase` and `best_effort`;
3. loads `pgbench -i -s SCALE` through ONE proxy (--load-via; DDL broadcast and the sharded
   COPY) and the same directly into plain; checks the rows per shard (accounts, tellers and
   branches sum to what pgbench makes, nothing is doubled) and point reads through both
   proxies;
4. runs pgbench's default TPC-B script (`pgbench -n -M MODE -c 8 -j 2 -T 15`) against
   plain, shardwire two_phase and shardwire best_effort, interleaved, --rounds rounds per
   mode (after one short warm-up each); requires 0 failed transactions and reports pgbench's
   errors verbatim;
5. checks consistency on the shards directly: sum(abalance) over both shards ==
   sum(bbalance) == sum(tbalance) == sum(history.delta) (TPC-B adds the same delta to each),
   and no row in pg_prepared_xacts on either shard (also on plain, as a control);
6. prints a markdown report; --write-results records it as a dated section of
   bench/RESULTS.md, only if every load check, run and consistency check passed.

Everything it starts is stopped and its temporary directory removed at the end, also on
errors and Ctrl-C. See bench/README.md ("The TPC-B benchmark").
"""

from __future__ import annotations

import argparse
import contextlib
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from swbench import machine, pgbench, procs, report, topology
from swbench.procs import REPO, BenchError, Managed
from swbench.runner import command_line, publish, run_main, say

from proxy.localpg import LocalPostgres, find_bindir, free_port

BENCH_DIR = Path(__file__).resolve().parent
RESULTS = BENCH_DIR / "RESULTS.md"
TXN_MODES = ("two_phase", "best_effort")
TABLES = ("pgbench_accounts", "pgbench_tellers", "pgbench_branches", "pgbench_history")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bench/tpcb_bench.py", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--scale", type=int, default=10, help="pgbench -i -s")
    p.add_argument("--clients", type=int, default=8, help="pgbench -c")
    p.add_argument("--threads", type=int, default=2, help="pgbench -j")
    p.add_argument("--duration", type=int, default=15, help="pgbench -T of each timed run")
    p.add_argument("--warmup", type=int, default=3,
                   help="seconds of -M simple per target before the timed runs (0: none)")
    p.add_argument("--rounds", type=int, default=3, help="timed runs per target and mode")
    p.add_argument("--modes", default="simple,prepared", help="pgbench -M values")
    p.add_argument("--pool-size", type=int, default=20, help="shardwire pool.size per shard")
    p.add_argument("--load-via", choices=TXN_MODES, default="two_phase",
                   help="the proxy `pgbench -i` runs through")
    p.add_argument("--write-results", action="store_true",
                   help=f"write a dated section to {RESULTS.relative_to(REPO)} "
                        "(only when every check passed)")
    p.add_argument("--results-file", type=Path, default=RESULTS, help=argparse.SUPPRESS)
    p.add_argument("--rev", default=None,
                   help="benchmark the proxy/ of this git revision (git archive) instead of "
                        "the work tree")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = p.parse_args(argv)
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [m for m in args.modes if m not in ("simple", "extended", "prepared")]
    if bad or not args.modes:
        p.error(f"--modes: simple, extended and/or prepared, not {bad or args.modes}")
    if args.scale < 1 or args.rounds < 1 or args.duration < 1 or args.clients < 1:
        p.error("--scale, --rounds, --duration and --clients must be >= 1")
    return args



def one_line(text: str) -> str:
    return " ".join(text.split())


def scalar(pg: LocalPostgres, sql: str) -> str:
    return pg.psql(sql, dbname=topology.DATABASE).strip()


def pgbench_errors(output: str, limit: int = 8) -> list[str]:
    """pgbench's error lines, verbatim (the first `limit` distinct ones)."""
    seen: list[str] = []
    for line in output.splitlines():
        low = line.lower()
        if ("error" in low or "fatal" in low or "aborted" in low or "failed" in low) \
                and not line.startswith("number of failed transactions: 0") \
                and line.strip() not in seen:
            seen.append(line.strip())
        if len(seen) >= limit:
            break
    return seen


# --------------------------------------------------------------------------- the run


@dataclass
class Consistency:
    """Balance sums and leftovers of one database (plain) or of the shards together."""

    where: str
    abalance: int
    tbalance: int
    bbalance: int
    delta: int
    history: int
    prepared: list[str]  # rows of pg_prepared_xacts, verbatim

    @property
    def ok(self) -> bool:
        return (self.abalance == self.tbalance == self.bbalance == self.delta
                and not self.prepared)

    def describe(self) -> str:
        text = (f"{self.where}: sum(abalance) {self.abalance:,}, sum(bbalance) "
                f"{self.bbalance:,}, sum(tbalance) {self.tbalance:,}, sum(history.delta) "
                f"{self.delta:,}; {self.history:,} history rows; pg_prepared_xacts: "
                f"{len(self.prepared)} rows")
        if self.prepared:
            text += " (" + "; ".join(self.prepared[:5]) + ")"
        return text + (" — consistent" if self.ok else " — **INCONSISTENT**")


@dataclass
class TpcbBench:
    args: argparse.Namespace
    workdir: Path
    stack: contextlib.ExitStack
    plain: LocalPostgres | None = None
    shards: list[LocalPostgres] = field(default_factory=list)
    proxies: dict[str, tuple[Managed, int]] = field(default_factory=dict)
    src: Path = Path()
    src_hash: str = ""
    load_notes: list[str] = field(default_factory=list)
    placement: dict[str, list[int]] = field(default_factory=dict)  # table -> rows per shard
    notes: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    consistency: list[Consistency] = field(default_factory=list)
    warm_txns_plain: int = 0
    warm_txns_proxy: int = 0

    @property
    def bindir(self) -> Path:
        assert self.plain is not None
        return self.plain.bindir

    def snapshot(self) -> None:
        self.src = self.workdir / "src"
        self.src_hash = procs.announce_snapshot(self.src, self.args.rev)

    # ------------------------------------------------------------------ servers
    def _postgres(self, name: str) -> LocalPostgres:
        pg = procs.bench_postgres(self.workdir, name, self.stack, max_prepared=100)
        return pg

    def start_postgres(self) -> None:
        say(f"starting 3 Postgres servers ({find_bindir()}): plain, s0, s1")
        with ThreadPoolExecutor(3) as pool:
            futures = [pool.submit(self._postgres, name) for name in ("plain", "s0", "s1")]
            servers = [f.result() for f in futures]
        self.plain, self.shards = servers[0], servers[1:]

    def config(self, port: int, txn_mode: str) -> dict[str, Any]:
        data = topology.topology(shard_ports=[s.port for s in self.shards], listen_port=port,
                                 pool_size=self.args.pool_size, sharded=True)
        data["transactions"] = {"mode": txn_mode}
        return data

    def start_proxy(self, txn_mode: str) -> None:
        name = f"shardwire-{txn_mode}"
        workdir = self.workdir / name
        workdir.mkdir(parents=True, exist_ok=True)
        port = free_port()
        proc = procs.serve_shardwire(workdir, self.config(port, txn_mode), port, src=self.src)
        self.stack.callback(proc.stop)
        self.proxies[txn_mode] = (proc, port)
        say(f"shardwire ({txn_mode}) listening on 127.0.0.1:{port} (pid {proc.pid})")

    # ------------------------------------------------------------------ loading
    def _init(self, port: int) -> tuple[float, str]:
        started = time.monotonic()
        proc = subprocess.run(
            [str(self.bindir / "pgbench"), "-i", "-s", str(self.args.scale), "-h", "127.0.0.1",
             "-p", str(port), "-U", "postgres", topology.DATABASE],
            capture_output=True, text=True, env=procs.clean_env(), check=False, timeout=1800)
        took = time.monotonic() - started
        if proc.returncode != 0:
            raise BenchError(f"pgbench -i -s {self.args.scale} on port {port} failed "
                             f"(exit {proc.returncode}):\n{proc.stderr.strip()}")
        return took, proc.stderr

    def load(self) -> None:
        assert self.plain is not None
        via, port = self.args.load_via, self.proxies[self.args.load_via][1]
        say(f"pgbench -i -s {self.args.scale}: through shardwire ({via}) and directly on plain")
        with ThreadPoolExecutor(2) as pool:
            through = pool.submit(self._init, port)
            direct = pool.submit(self._init, self.plain.port)
            proxy_s, proxy_log = through.result()
            plain_s, _ = direct.result()
        last = [line for line in proxy_log.splitlines() if line.strip()][-1:]
        say(f"  through shardwire {proxy_s:.1f}s, plain {plain_s:.1f}s"
            + (f" (pgbench: {last[0].strip()})" if last else ""))
        self.check_load()
        self.load_notes.insert(0,
            f"Load: `pgbench -i -s {self.args.scale}` through shardwire ({via}) took "
            f"{proxy_s:.1f} s (DDL broadcast to both shards, COPY split by aid), directly on "
            f"plain {plain_s:.1f} s (run at the same time).")

    def check_load(self) -> None:
        assert self.plain is not None
        n = self.args.scale
        expected = {"pgbench_accounts": 100_000 * n, "pgbench_tellers": 10 * n,
                    "pgbench_branches": n, "pgbench_history": 0}
        key = dict(topology.PGBENCH_TABLES)
        problems = []
        for table, want in expected.items():
            col = key[table] if table != "pgbench_history" else "aid"
            per = []
            sums = []
            for shard in self.shards:
                count, total = scalar(shard, f"SELECT count(*), coalesce(sum({col}), 0) "
                                             f"FROM {table};").split("|")
                per.append(int(count))
                sums.append(int(total))
            self.placement[table] = per
            plain = int(scalar(self.plain, f"SELECT count(*) FROM {table};"))
            # every key 1..want exactly once: the count and the sum of the keys both match
            want_sum = want * (want + 1) // 2 if table != "pgbench_history" else 0
            if sum(per) != want or sum(sums) != want_sum or plain != want:
                problems.append(f"{table}: shards {per} (sum {sum(per):,}, key sum "
                                f"{sum(sums):,}), plain {plain:,}; expected {want:,} "
                                f"(key sum {want_sum:,})")
        say("  rows per shard: " + "; ".join(
            f"{t} {'/'.join(f'{c:,}' for c in per)}" for t, per in self.placement.items()))
        if problems:
            raise BenchError("load check failed: " + "; ".join(problems))
        acc = self.placement["pgbench_accounts"]
        self.load_notes.append(
            "Rows per shard (s0 / s1): " + "; ".join(
                f"{t} {' / '.join(f'{c:,}' for c in per)}" for t, per in self.placement.items())
            + f" (accounts sum {sum(acc):,}, every aid once; plain has the same counts).")
        self.check_routing()

    def check_routing(self) -> None:
        """Point reads through both proxies: the rows are where the proxies route to."""
        n = 100_000 * self.args.scale
        rng = random.Random(5)
        aids = [1, n, *rng.sample(range(2, n), 98)]
        tids = list(range(1, 10 * self.args.scale + 1))
        bids = list(range(1, self.args.scale + 1))
        missing = []
        for mode, (_, port) in self.proxies.items():
            with procs.connect(port) as conn:
                for table, col, ids in (("pgbench_accounts", "aid", aids),
                                        ("pgbench_tellers", "tid", tids),
                                        ("pgbench_branches", "bid", bids)):
                    for k, i in enumerate(ids):
                        if k % 2:
                            got = conn.execute(f"SELECT {col} FROM {table} WHERE {col} = %s",
                                               (i,)).fetchall()
                        else:
                            got = conn.execute(
                                f"SELECT {col} FROM {table} WHERE {col} = {i}".encode()
                            ).fetchall()
                        if got != [(i,)]:
                            missing.append(f"{mode} {table}.{col}={i}: {got}")
        if missing:
            raise BenchError(f"point reads through shardwire missed {len(missing)} rows: "
                             + "; ".join(missing[:5]))
        total = 2 * (len(aids) + len(tids) + len(bids))
        say(f"  routing check: {total} point reads through the two proxies found their rows")

    def cross_shard_share(self) -> float | None:
        """The expected share of TPC-B transactions that touch both shards: aid (account and
        history), tid and bid are drawn uniformly and independently, so a transaction stays
        on shard s with probability acc_s/A * tel_s/T * br_s/B."""
        try:
            acc, tel, br = (self.placement[t] for t in TABLES[:3])
        except KeyError:
            return None
        one = sum((a / sum(acc)) * (t / sum(tel)) * (b / sum(br))
                  for a, t, b in zip(acc, tel, br, strict=True))
        return 1 - one

    # ------------------------------------------------------------------ measuring
    def targets(self) -> list[tuple[str, pgbench.Target]]:
        assert self.plain is not None
        out = [("plain", pgbench.Target("plain Postgres", self.plain.port))]
        for mode in TXN_MODES:
            proc, port = self.proxies[mode]
            out.append((mode, pgbench.Target(f"shardwire {mode}", port, proc.pid)))
        return out

    def _run(self, target: pgbench.Target, mode: str, duration: int) -> pgbench.Result:
        args = self.args
        return pgbench.run(self.bindir / "pgbench", target, mode=mode, clients=args.clients,
                           threads=args.threads, duration=duration, select_only=False,
                           workdir=self.workdir)

    def check_result(self, res: pgbench.Result, what: str) -> None:
        """A run is good only with pgbench's exit 0, 0 failed transactions and the right
        scale (pgbench reads it with `select count(*) from pgbench_branches`, a cross-shard
        aggregate through the proxy)."""
        problems = []
        if not res.ok:
            problems.append(f"pgbench exited {res.returncode}")
        if res.failed:
            problems.append(f"{res.failed} failed transactions")
        scale = next((line.split(":", 1)[1].strip() for line in res.output.splitlines()
                      if line.startswith("scaling factor:")), None)
        if scale is not None and scale != str(self.args.scale):
            problems.append(f"pgbench read scaling factor {scale}, not {self.args.scale}")
        if problems:
            errors = pgbench_errors(res.output)
            res.error = "; ".join(problems) + (": " + " / ".join(errors) if errors else "")
            self.failures.append(f"{what}: {res.error}")
            say(f"  FAILED: {res.error}")

    def warm_up(self) -> None:
        """One short -M simple run per target (not reported; its transactions are counted
        for the history-rows note)."""
        if self.args.warmup <= 0:
            return
        for _, target in self.targets():
            res = self._run(target, "simple", self.args.warmup)
            self.check_result(res, f"warm-up of {target.name}")
            if target.name == "plain Postgres":
                self.warm_txns_plain += res.transactions
            else:
                self.warm_txns_proxy += res.transactions
            say(f"  warm-up {target.name}: {res.tps or 0:,.0f} tps, {res.failed} failed")

    def timed(self) -> list[report.Cell]:
        cells = {(t.name, m): report.Cell(t.name, m, [])
                 for m in self.args.modes for _, t in self.targets()}
        for rnd in range(1, self.args.rounds + 1):
            for mode in self.args.modes:
                for _, target in self.targets():
                    res = self._run(target, mode, self.args.duration)
                    self.check_result(res, f"round {rnd}, -M {mode}, {target.name}")
                    cells[(target.name, mode)].runs.append(res)
                    lat = f"{res.latency_ms:.2f} ms" if res.latency_ms is not None else "—"
                    say(f"round {rnd} -M {mode:8} {target.name:22} {res.tps or 0:8,.0f} tps "
                        f"{lat}, {res.transactions:,} txns, {res.failed} failed")
        return list(cells.values())

    # ------------------------------------------------------------------ consistency
    def _sums(self, dbs: list[LocalPostgres], where: str) -> Consistency:
        totals = [0, 0, 0, 0, 0]
        prepared: list[str] = []
        for pg in dbs:
            row = scalar(pg, "SELECT (SELECT coalesce(sum(abalance), 0) FROM pgbench_accounts),"
                             " (SELECT coalesce(sum(tbalance), 0) FROM pgbench_tellers),"
                             " (SELECT coalesce(sum(bbalance), 0) FROM pgbench_branches),"
                             " (SELECT coalesce(sum(delta), 0) FROM pgbench_history),"
                             " (SELECT count(*) FROM pgbench_history);")
            for i, v in enumerate(row.split("|")):
                totals[i] += int(v)
            rows = scalar(pg, "SELECT gid, database, owner, prepared FROM pg_prepared_xacts;")
            prepared += [f"{pg.name}: {line}" for line in rows.splitlines() if line.strip()]
        return Consistency(where, *totals, prepared)

    def check_consistency(self, cells: list[report.Cell]) -> None:
        assert self.plain is not None
        shards = self._sums(self.shards, "shards s0 + s1 (read on the shards directly)")
        plain = self._sums([self.plain], "plain")
        self.consistency = [shards, plain]
        for c in self.consistency:
            say("  " + c.describe())
            if not c.ok:
                self.failures.append("consistency: " + c.describe())
        # Every committed TPC-B transaction inserts one history row: compare with what
        # pgbench reported (warm-ups included). Informational: a run cut off by -T may
        # commit a transaction it does not count.
        def processed(names: set[str]) -> int:
            return sum(r.transactions for c in cells if c.target in names for r in c.runs)

        proxied = processed({f"shardwire {m}" for m in TXN_MODES}) + self.warm_txns_proxy
        direct = processed({"plain Postgres"}) + self.warm_txns_plain
        self.notes.append(
            f"History rows vs transactions pgbench counted (warm-ups included): shards "
            f"{shards.history:,} vs {proxied:,} through the two proxies; plain "
            f"{plain.history:,} vs {direct:,}.")

    def proxy_logs(self) -> None:
        for mode, (proc, _) in self.proxies.items():
            lines = [line for line in proc.log_tail(200).splitlines() if line.strip()]
            if not proc.alive:
                self.failures.append(f"shardwire {mode} died: " + " / ".join(lines[-5:]))
            elif lines:
                self.notes.append(f"shardwire {mode} log ({len(lines)} lines, last 5): "
                                  + " / ".join(one_line(x) for x in lines[-5:]))


# --------------------------------------------------------------------------- report


def _f(value: float | None, digits: int = 0) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def results_table(cells: list[report.Cell], modes: list[str]) -> str:
    header = ["target", "mode", "TPS (median)", "latency ms (mean)", "vs plain",
              "TPS per round", "proxy CPU µs/txn", "failed txns", "result"]
    out = []
    for mode in modes:
        base = next((c.tps for c in cells if c.mode == mode and c.target == "plain Postgres"
                     and c.reliable), None)
        for c in (c for c in cells if c.mode == mode):
            lats = [r.latency_ms for r in c.good if r.latency_ms is not None]
            lat = statistics.mean(lats) if lats else None
            ratio = f"{c.tps / base:.2f}x" if c.tps is not None and base else "—"
            med = c.median
            cpu = f"{med.cpu_us_per_txn:.0f}" if med and med.cpu_us_per_txn else "—"
            bad = [r for r in c.runs if not r.ok or r.failed]
            result = "ok" if not bad else "FAILED: " + "; ".join(
                (r.error or f"{r.failed} failed") for r in bad[:2])
            out.append([c.target, mode, _f(c.tps), _f(lat, 2), ratio,
                        " / ".join(_f(r.tps) for r in c.runs), cpu,
                        str(sum(r.failed for r in c.runs)), result.replace("|", "\\|")])
    return report.table(header, out, ["l", "l", "r", "r", "r", "r", "r", "r", "l"])


def describe_run(bench: TpcbBench) -> str:
    a = bench.args
    share = bench.cross_shard_share()
    share_text = (f" With this placement about {share:.0%} of the transactions touch both "
                  "shards (the chance that the account, teller and branch, each drawn "
                  "uniformly, are not all on one shard, from the rows per shard)."
                  if share is not None else "")
    return (
        f"pgbench's built-in TPC-B script (`pgbench -n -M MODE -c {a.clients} -j {a.threads} "
        f"-T {a.duration}`, scale {a.scale}: {100_000 * a.scale:,} accounts): BEGIN; UPDATE "
        "pgbench_accounts; SELECT abalance; UPDATE pgbench_tellers; UPDATE pgbench_branches; "
        "INSERT INTO pgbench_history; END. Targets: one plain Postgres, and two shardwire "
        f"proxies (transaction pooling, pool size {a.pool_size} per shard) over the same 2 "
        "shards s0/s1, identical except `transactions.mode` (`two_phase`: PREPARE "
        "TRANSACTION on every shard written, a decision record, COMMIT PREPARED; "
        "`best_effort`: COMMIT shard by shard). Tables sharded by their own keys over 64 "
        "buckets (s0 = 0-31, s1 = 32-63): accounts by aid, tellers by tid, branches by bid, "
        f"history by aid.{share_text} Three Postgres 'servers' with the same settings "
        "(fsync off, synchronous_commit off, shared_buffers 256MB, max_prepared_transactions "
        "100) on the same machine as the proxies and pgbench. "
        f"{'One ' + str(a.warmup) + ' s -M simple warm-up per target, then ' if a.warmup else ''}"
        f"{a.rounds} rounds, each running every mode against plain, two_phase and best_effort "
        "in turn (interleaved). TPS: median of the rounds (pgbench's tps, excluding "
        "connection time); latency: mean of pgbench's 'latency average' over the rounds; vs "
        "plain: TPS / plain's TPS in the same mode; proxy CPU: user + system CPU of the proxy "
        "process per transaction, of the median run. Every run must end with exit 0 and "
        "0 failed transactions.")


def render(bench: TpcbBench, cells: list[report.Cell], facts: dict[str, str],
           command: str) -> str:
    a = bench.args
    parts = [
        f"## {facts['date'][:10]}: pgbench TPC-B, 2 shards (two_phase, best_effort) vs one "
        f"Postgres, scale {a.scale}, {a.clients} clients, {a.duration} s per run",
        "",
        f"Command: `{command}`",
        "",
        describe_run(bench),
        "",
        *(f"{n}\n" for n in bench.load_notes),
        results_table(cells, a.modes),
        "",
        "Consistency after the runs:",
        "",
        *(f"- {c.describe()}" for c in bench.consistency),
    ]
    if bench.notes:
        parts += ["", *(f"- {n}" for n in bench.notes)]
    if bench.failures:
        parts += ["", "**Failures** (verbatim):", "",
                  *(f"- {f.replace('|', chr(92) + '|')}" for f in bench.failures)]
    parts += ["", "### Machine", "", report.machine_table(facts)]
    return "\n".join(parts) + "\n"


# --------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    command = command_line("bench/tpcb_bench.py", argv)

    def body(workdir: Path, stack: contextlib.ExitStack) -> int:
        return run(TpcbBench(args, workdir, stack), command)

    return run_main("swtpcb-", args.keep, body)


def run(bench: TpcbBench, command: str) -> int:
    args = bench.args
    bench.snapshot()
    load_before = machine.load_average()
    bench.start_postgres()
    for mode in TXN_MODES:
        bench.start_proxy(mode)
    bench.load()
    facts = machine.describe(bindir=bench.bindir, pgbench=bench.bindir / "pgbench",
                             pgbouncer=None, src=bench.src, src_hash=bench.src_hash,
                             rev=args.rev)
    for key in ("pgbouncer", "load average before (1/5/15 min)"):
        facts.pop(key, None)
    facts["load average before loading (1/5/15 min)"] = load_before
    facts["load average before measuring (1/5/15 min)"] = machine.load_average()
    machine.warn_if_busy()

    say("warm-up")
    bench.warm_up()
    cells = bench.timed()
    facts["load average after (1/5/15 min)"] = machine.load_average()
    say("consistency checks on the shards")
    time.sleep(1)  # let a proxy finish any commit a client disconnect left in flight
    bench.check_consistency(cells)
    bench.proxy_logs()

    return publish(render(bench, cells, facts, command), bench.failures,
                   write=args.write_results, results_file=args.results_file,
                   section=f"tpcb-{facts['date'][:10]}")


if __name__ == "__main__":
    sys.exit(main())
