#!/usr/bin/env python3
"""The planner's cost per statement in microseconds: cache hit, template hit, miss, Bind.

    .venv/bin/python bench/planner_cost.py [--iterations 20000] [--repeats 5] [--config PATH]

Builds `proxy.sql.planner.Planner` from a topology (by default the two the benchmark runs,
from bench/swbench/topology.py: `2 shards`, pgbench's tables hash-sharded by key, and
`1 shard`, nothing sharded; or `--config` a shardwire YAML, as `shardwire serve` loads it)
and times it with `time.perf_counter_ns` over batches of statements, without any I/O:

* plan cache hit: the same text again (`Planner.plan`; a route that depends only on the
  text's literals is memoised too);
* template hit: `SELECT abalance FROM pgbench_accounts WHERE aid = <n>` with a new n each
  time, what `pgbench -S -M simple` sends: a plan-cache miss (new text) whose
  literal-normalised shape is known, so a regex pass and no sqlglot parse;
* full miss: a statement shape never seen (a new column alias and table alias each time):
  a sqlglot parse and analysis;
* Bind: `prepare(text)` once, then `.route(params=[str(n)])` per Bind, what
  `pgbench -S -M prepared` costs per execution;
* Parse + Bind: `prepare(text)` (a plan-cache hit by text) and `.route([str(n)])` at every
  execution, what `pgbench -S -M extended` (unnamed statements) costs.

Every timed batch uses inputs prepared beforehand (the string formatting is not timed) and
different from all other batches (no accidental hits). The table shows the median batch
(and the fastest) in µs per statement, wall clock, with the loop's own overhead as a row of
its own (not subtracted), and the planner's cache counters per statement, which show that
each case is what it claims. The number to hold against the proxy's CPU µs/txn in
bench/run.py is the row of the pgbench mode in question.

Run standalone, or by bench/run.py (on its snapshot of proxy/, via PYTHONPATH), which puts
the table in its report.
"""

from __future__ import annotations

import argparse
import gc
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# swbench/ next to this file; the repository's proxy/ when it is not importable otherwise
# (PYTHONPATH, e.g. bench/run.py's snapshot, and an installed package come first).
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.append(str(Path(__file__).resolve().parents[1]))

from swbench.report import table
from swbench.topology import topology

from proxy.config import Config, load_config, parse_config
from proxy.sql.planner import Planner, PreparedPlan
from proxy.sql.route import Route

SELECT = "SELECT abalance FROM pgbench_accounts WHERE aid = {aid};"
SELECT_PARAM = "SELECT abalance FROM pgbench_accounts WHERE aid = $1;"
# A new shape each time (the alias and the column name change, so the normalised text is
# new and the template cache misses): what a statement seen for the first time costs.
MISS = "SELECT t{i}.abalance AS c{i} FROM pgbench_accounts t{i} WHERE t{i}.aid = {aid};"
MISS_DIVISOR = 20  # full misses are ~10x dearer: time fewer of them


@dataclass
class Case:
    name: str
    pays: str  # which pgbench mode pays this per statement
    # (planner, batch number, batch size) -> (the function to time, its inputs)
    setup: Callable[[Planner, int, int], tuple[Callable[[Any], object], list[Any]]]
    divisor: int = 1


@dataclass
class Measured:
    wall_us: list[float] = field(default_factory=list)  # one per batch, µs per statement
    statements: int = 0
    plan_hits: int = 0
    template_hits: int = 0
    parses: int = 0

    @property
    def median(self) -> float:
        return statistics.median(self.wall_us)

    @property
    def best(self) -> float:
        return min(self.wall_us)

    def per_stmt(self, count: int) -> str:
        return f"{count / self.statements:.2f}" if self.statements else "—"


def _noop(_: object) -> None:
    return None


def _case_overhead(planner: Planner, batch: int, n: int
                   ) -> tuple[Callable[[Any], object], list[Any]]:
    return _noop, list(range(n))


def _case_hit(planner: Planner, batch: int, n: int
              ) -> tuple[Callable[[Any], object], list[Any]]:
    text = SELECT.format(aid=12345)
    planner.plan(text)
    return planner.plan, [text] * n


def _case_template(planner: Planner, batch: int, n: int
                   ) -> tuple[Callable[[Any], object], list[Any]]:
    planner.plan(SELECT.format(aid=0))  # the shape is known
    first = 1 + batch * n
    return planner.plan, [SELECT.format(aid=k) for k in range(first, first + n)]


def _case_miss(planner: Planner, batch: int, n: int
               ) -> tuple[Callable[[Any], object], list[Any]]:
    first = 1 + batch * n
    return planner.plan, [MISS.format(i=k, aid=k) for k in range(first, first + n)]


def _case_bind(planner: Planner, batch: int, n: int
               ) -> tuple[Callable[[Any], object], list[Any]]:
    prepared: PreparedPlan = planner.prepare(SELECT_PARAM)

    def bind(value: str) -> Route:
        return prepared.route(params=[value])

    first = 1 + batch * n
    return bind, [str(k) for k in range(first, first + n)]


def _case_parse_bind(planner: Planner, batch: int, n: int
                     ) -> tuple[Callable[[Any], object], list[Any]]:
    planner.prepare(SELECT_PARAM)
    prepare = planner.prepare

    def parse_bind(value: str) -> Route:
        return prepare(SELECT_PARAM).route(params=[value])

    first = 1 + batch * n
    return parse_bind, [str(k) for k in range(first, first + n)]


def _case_quick_text(planner: Planner, batch: int, n: int
                     ) -> tuple[Callable[[Any], object], list[Any]]:
    planner.quick_text(SELECT.format(aid=0))  # the shape is known
    first = 1 + batch * n
    return planner.quick_text, [SELECT.format(aid=k) for k in range(first, first + n)]


def _case_quick_bind(planner: Planner, batch: int, n: int
                     ) -> tuple[Callable[[Any], object], list[Any]]:
    prepare = planner.prepare
    prepare(SELECT_PARAM)

    def bind(value: str) -> object:
        return prepare(SELECT_PARAM).quick_value(value, 0)

    first = 1 + batch * n
    return bind, [str(k) for k in range(first, first + n)]


CASES = [
    Case("plan cache hit (same text)", "— (a repeated literal-free text)", _case_hit),
    Case("session hot path, simple: quick_text(new literal)", "-M simple (what the "
         "session runs)", _case_quick_text),
    Case("session hot path, Bind: prepare(text).quick_value(n)", "-M prepared / extended "
         "(what the session runs)", _case_quick_bind),
    Case("template hit (new literal, known shape)", "-M simple (full route)", _case_template),
    Case("full miss (new shape: sqlglot parse)", "— (first sight of a statement)", _case_miss,
         MISS_DIVISOR),
    Case("Bind: prepared.route([str(n)])", "-M prepared", _case_bind),
    Case("Parse + Bind: prepare(text).route([str(n)])", "-M extended", _case_parse_bind),
    Case("loop overhead (no planner call)", "", _case_overhead),
]


def measure(config: Config, case: Case, iterations: int, repeats: int) -> Measured:
    """Time `repeats` batches of the case, each on a fresh Planner (so every batch starts
    from the same cache state and the caches never fill up across batches)."""
    n = max(iterations // case.divisor, 100)
    out = Measured()
    for batch in range(repeats):
        planner = Planner(config)
        fn, inputs = case.setup(planner, batch, n)
        before = planner.cache_stats()
        gc.collect()
        start = time.perf_counter_ns()
        for item in inputs:
            fn(item)
        elapsed = time.perf_counter_ns() - start
        after = planner.cache_stats()
        out.wall_us.append(elapsed / len(inputs) / 1000)
        out.statements += len(inputs)
        out.plan_hits += after["plans"]["hits"] - before["plans"]["hits"]
        out.template_hits += after["templates"]["hits"] - before["templates"]["hits"]
        out.parses += after["templates"]["parses"] - before["templates"]["parses"]
    return out


def sample_route(config: Config) -> str:
    """Where the benchmark's statement goes in this topology (a check, not a timing)."""
    route = Planner(config).plan(SELECT.format(aid=12345))
    shards = ", ".join(route.shards) or config.default_shard
    return f"{route.kind} {shards}: {route.reason}"


def topologies(path: Path | None) -> list[tuple[str, Config]]:
    if path is not None:
        return [(path.name, load_config(path))]
    ports = (5432, 5433)  # never connected to: the planner does no I/O
    return [
        ("2 shards", parse_config(topology(shard_ports=ports, sharded=True),
                                  source="bench 2-shard topology")),
        ("1 shard", parse_config(topology(shard_ports=ports[:1], sharded=False),
                                 source="bench 1-shard topology")),
    ]


def report(results: dict[str, dict[str, Measured]], configs: Sequence[tuple[str, Config]],
           iterations: int, repeats: int) -> str:
    import sqlglot

    names = [name for name, _ in configs]
    first = names[0]
    header = ["case", "pgbench mode paying it per statement"]
    header += [f"{name}: µs/stmt median (min)" for name in names]
    header += ["plan-cache hits/stmt", "template hits/stmt", "sqlglot parses/stmt"]
    align = ["l", "l", *("r" for _ in names), "r", "r", "r"]
    rows = []
    for case in CASES:
        row = [case.name, case.pays]
        for name in names:
            m = results[name][case.name]
            row.append(f"{m.median:.2f} ({m.best:.2f})")
        m = results[first][case.name]
        if case.setup is _case_overhead:
            row += ["", "", ""]
        else:
            row += [m.per_stmt(m.plan_hits), m.per_stmt(m.template_hits), m.per_stmt(m.parses)]
        rows.append(row)
    lines = [
        f"python {platform.python_version()}, sqlglot {sqlglot.__version__}; wall clock "
        f"(time.perf_counter_ns) per statement, median (fastest) of {repeats} batches of "
        f"{iterations:,} statements ({max(iterations // MISS_DIVISOR, 100):,} for the full "
        "miss), each batch on a fresh Planner with default cache sizes, GC on. The cache "
        f"counters per statement are those of the {first} topology.",
        "",
        table(header, rows, align),
        "",
    ]
    for name, config in configs:
        lines.append(f"- {name}: `{SELECT.format(aid=12345)}` -> {sample_route(config)}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench/planner_cost.py",
                                description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--iterations", type=int, default=20000,
                   help="statements per timed batch (the full miss times 1/20 as many)")
    p.add_argument("--repeats", type=int, default=5, help="timed batches per case")
    p.add_argument("--config", type=Path, default=None,
                   help="a shardwire topology YAML instead of the benchmark's two topologies")
    args = p.parse_args(argv)
    if args.iterations < 1 or args.repeats < 1:
        p.error("--iterations and --repeats must be >= 1")
    configs = topologies(args.config)
    results: dict[str, dict[str, Measured]] = {}
    for name, config in configs:
        results[name] = {case.name: measure(config, case, args.iterations, args.repeats)
                         for case in CASES}
    print(report(results, configs, args.iterations, args.repeats))
    return 0


if __name__ == "__main__":
    sys.exit(main())
