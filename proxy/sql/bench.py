"""Owns the planner micro-benchmark: microseconds per ``plan()`` on cache hits and misses.

Run ``python -m proxy.sql.bench`` (no database needed). Measures, for a few statement
shapes on a 2-shard pgbench topology:

* ``hit``: the same text again (a plan-cache hit; literal-only routes are memoised);
* ``bind``: ``PreparedPlan.route(params)`` of a prepared statement (extended protocol);
* ``literal``: a new text differing only in literals (regex normalisation + template hit);
* ``miss``: a statement never seen (sqlglot parse + analysis).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from proxy.config import parse_config
from proxy.sql.planner import Planner

__all__ = ["main", "measure"]

SELECT = "SELECT abalance FROM pgbench_accounts WHERE aid = {k};"
UPDATE = "UPDATE pgbench_accounts SET abalance = abalance + {d} WHERE aid = {k};"
INSERT = ("INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) "
          "VALUES ({t}, 1, {k}, {d}, CURRENT_TIMESTAMP);")
JOIN = ("SELECT a.abalance, h.delta FROM pgbench_accounts a JOIN pgbench_history h "
        "ON h.aid = a.aid WHERE a.aid = {k} AND h.delta > {d} ORDER BY h.mtime DESC LIMIT 10")
# the same shapes with a new identifier each time: a statement the planner never saw
MISS = {
    "select": "SELECT abalance AS c{i} FROM pgbench_accounts WHERE aid = {k};",
    "update": "UPDATE pgbench_accounts SET abalance = abalance + {d}, c{i} = 0 WHERE aid = {k};",
    "insert": ("INSERT INTO pgbench_history (tid, bid, aid, delta, mtime, c{i}) "
               "VALUES ({t}, 1, {k}, {d}, CURRENT_TIMESTAMP, 0);"),
    "join": ("SELECT a.abalance, h.delta AS c{i} FROM pgbench_accounts a JOIN pgbench_history h "
             "ON h.aid = a.aid WHERE a.aid = {k} AND h.delta > {d} ORDER BY h.mtime DESC LIMIT 10"),
}


def _planner() -> Planner:
    cfg = parse_config({
        "database": "app",
        "auth": {"method": "trust"},
        "shards": [{"name": "s0", "primary": "postgresql://u@h:5433/app"},
                   {"name": "s1", "primary": "postgresql://u@h:5434/app"}],
        "tables": {"pgbench_accounts": {"shard_key": "aid"},
                   "pgbench_tellers": {"shard_key": "tid"},
                   "pgbench_branches": {"shard_key": "bid"},
                   "pgbench_history": {"shard_key": "aid"}},
    })
    return Planner(cfg, capacity=1 << 20, template_capacity=1 << 20)


def measure(fn: Callable[[int], object], n: int) -> float:
    """Best-of-3 mean CPU microseconds per call of ``fn(i)`` (distinct ``i`` for every
    call). CPU time, not wall time: the planner's cost, not other processes' load."""
    best = float("inf")
    for r in range(3):
        start = time.process_time()
        for i in range(r * n, (r + 1) * n):  # never the same i twice: no accidental hits
            fn(i)
        best = min(best, (time.process_time() - start) / n * 1e6)
    return best


def main(n: int = 20000) -> dict[str, dict[str, float]]:
    results: dict[str, dict[str, float]] = {}
    for name, shape in (("select", SELECT), ("update", UPDATE), ("insert", INSERT),
                        ("join", JOIN)):
        row: dict[str, float] = {}
        p = _planner()
        text = shape.format(k=12345, d=-7, t=3)
        p.plan(text)
        row["hit"] = measure(lambda i, p=p, text=text: p.plan(text), n)
        param_text = shape.format(k="$1", d="$2", t="$3")
        prepared = p.prepare(param_text)
        row["bind"] = measure(lambda i, pr=prepared: pr.route([str(i + 1), "-7", "3"]), n)
        p = _planner()
        p.plan(shape.format(k=1, d=1, t=1))
        row["literal"] = measure(
            lambda i, p=p, shape=shape: p.plan(shape.format(k=i + 100, d=i % 500, t=i % 10)), n)
        p = _planner()
        miss = MISS[name]
        row["miss"] = measure(
            lambda i, p=p, miss=miss: p.plan(miss.format(i=i, k=i, d=1, t=1)), max(n // 10, 200))
        results[name] = row
    return results


if __name__ == "__main__":
    import platform

    import sqlglot

    print(f"python {platform.python_version()}, sqlglot {sqlglot.__version__}; "
          "CPU microseconds per plan() (best of 3)")
    print(f"{'statement':10} {'hit':>8} {'bind':>8} {'literal':>8} {'miss':>8}")
    for name, row in main().items():
        print(f"{name:10} {row['hit']:8.1f} {row['bind']:8.1f} {row['literal']:8.1f} "
              f"{row['miss']:8.1f}")
