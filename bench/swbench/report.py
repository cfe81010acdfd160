"""Markdown for the terminal and for bench/RESULTS.md."""

from __future__ import annotations

import re
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from swbench.pgbench import Result
from swbench.profiling import CProfileSummary, PerfSummary, SpySummary


def table(header: Sequence[str], rows: Sequence[Sequence[str]],
          align: Sequence[str] | None = None) -> str:
    """A GitHub markdown table; `align` per column is "l" or "r"."""
    align = align or ["l"] * len(header)
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=True)]

    def fmt(cells: Sequence[str]) -> str:
        parts = [str(c).rjust(w) if a == "r" else str(c).ljust(w)
                 for c, w, a in zip(cells, widths, align, strict=True)]
        return "| " + " | ".join(parts) + " |"

    rule = "|" + "|".join(("-" * (w + 1) + ":") if a == "r" else ("-" * (w + 2))
                          for w, a in zip(widths, align, strict=True)) + "|"
    return "\n".join([fmt(header), rule, *(fmt(r) for r in rows)])


@dataclass
class Cell:
    """All runs of one (target, mode); the reported numbers are those of the median run."""

    target: str
    mode: str
    runs: list[Result]

    @property
    def good(self) -> list[Result]:
        return [r for r in self.runs if r.ok]

    @property
    def median(self) -> Result | None:
        good = sorted(self.good, key=lambda r: r.tps or 0.0)
        return good[(len(good) - 1) // 2] if good else None

    @property
    def tps(self) -> float | None:
        good = [r.tps for r in self.good if r.tps is not None]
        return statistics.median(good) if good else None

    @property
    def reliable(self) -> bool:
        """Every run succeeded: only then is the cell a baseline for ratios."""
        return bool(self.runs) and len(self.good) == len(self.runs)


def _num(value: float | None, digits: int = 0, suffix: str = "") -> str:
    if value is None:
        return "—"
    return f"{value:,.{digits}f}{suffix}"


def _ratio(value: float | None, base: float | None) -> str:
    if value is None or not base:
        return "—"
    return f"{value / base:.2f}x"


def _cpu_cell(res: Result | None) -> str:
    if res is None or res.cpu_us_per_txn is None:
        return "—"
    return (f"{res.cpu_us_per_txn:.1f} ({res.per_txn_us(res.proxy_user_s):.1f} + "
            f"{res.per_txn_us(res.proxy_sys_s):.1f})")


def results_table(cells: list[Cell], modes: Sequence[str], notes: dict[tuple[str, str], str]
                  ) -> str:
    by_key = {(c.target, c.mode): c for c in cells}
    rounds = max((len(c.runs) for c in cells), default=1)
    header = ["target", "mode", "TPS", "mean latency ms", "vs direct", "vs PgBouncer",
              "pooler CPU % of a core", "pooler CPU µs/txn (user + sys)"]
    align = ["l", "l", "r", "r", "r", "r", "r", "r"]
    if rounds > 1:
        header.append("TPS of each round")
        align.append("l")
    header.append("notes")
    align.append("l")
    rows = []
    for mode in modes:
        direct = by_key.get(("direct", mode))
        bouncer = by_key.get(("pgbouncer", mode))
        for cell in cells:
            if cell.mode != mode:
                continue
            med = cell.median
            note = notes.get((cell.target, mode), "")
            failed = [r for r in cell.runs if not r.ok]
            if failed:
                err = failed[0].error or "failed"
                note = (note + "; " if note else "") + f"{len(failed)}/{len(cell.runs)} runs " \
                    f"failed: {err}"
            tps = _num(cell.tps)
            if failed and cell.good:
                tps += f" ({len(cell.good)}/{len(cell.runs)} runs)"
            row = [
                cell.target, mode, tps, _num(med.latency_ms if med else None, 3),
                _ratio(cell.tps, direct.tps if direct and direct.reliable else None),
                _ratio(cell.tps, bouncer.tps if bouncer and bouncer.reliable else None),
                _num(med.cpu_percent if med else None, 0, "%"),
                _cpu_cell(med),
            ]
            if rounds > 1:
                row.append(", ".join(_num(r.tps) if r.ok else "failed" for r in cell.runs))
            row.append(note.replace("|", "\\|"))
            rows.append(row)
    return table(header, rows, align)


def machine_table(facts: dict[str, str]) -> str:
    return table(["", ""], [[k, v.replace("|", "\\|")] for k, v in facts.items()])


def _pct(part: float, whole: float) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "—"


def perf_markdown(perf: PerfSummary, res: Result, *, top: int, tps_note: str) -> str:
    cpu_us = res.cpu_us_per_txn
    lines = [
        f"perf, {perf.samples} on-CPU samples of the shardwire process ({tps_note}). perf "
        "samples only while the process runs, from a timer interrupt, so this split is "
        "not skewed by when the profiler itself gets a core.",
    ]
    if cpu_us is not None and res.proxy_user_s is not None and res.proxy_sys_s is not None:
        lines.append("")
        lines.append(f"Over that pgbench run shardwire used {res.cpu_percent:.0f}% of a core: "
                     f"{cpu_us:.1f} µs of CPU per transaction, "
                     f"{res.per_txn_us(res.proxy_user_s):.1f} µs in user space and "
                     f"{res.per_txn_us(res.proxy_sys_s):.1f} µs in the kernel (/proc/PID/stat). "
                     "The µs/txn column below spreads that total by perf's shares.")
    lines.append("")
    lines.append(table(["where (on-CPU)", "share", "µs/txn"],
                       [[b, f"{pct:.1f}%", f"{cpu_us * pct / 100:.1f}" if cpu_us else "—"]
                        for b, pct in perf.shares], ["l", "r", "r"]))
    lines += ["", "By shared object:", ""]
    lines.append(table(["shared object", "share"],
                       [[f"`{d}`", f"{pct:.1f}%"] for d, pct in perf.dsos[:12]], ["l", "r"]))
    lines += ["", f"Top {top} symbols (own time). Python 3.11 shows interpreter functions, "
              "not Python ones: see py-spy / cProfile for those. Without a hardware PMU "
              "(VMs) kernel samples taken with interrupts off are charged to where they are "
              "turned back on, hence `finish_task_switch` / `_raw_spin_unlock_irqrestore`: "
              "read those as context switches and wake-ups.", ""]
    lines.append(table(["#", "shared object", "symbol", "share"],
                       [[str(i), f"`{d}`", f"`{sym}`", f"{pct:.2f}%"]
                        for i, (d, sym, pct) in enumerate(perf.symbols[:top], 1)],
                       ["r", "l", "l", "r"]))
    return "\n".join(lines)


def spy_markdown(spy: SpySummary, *, top: int, tps_note: str) -> str:
    busy = spy.busy or 1
    lines = [f"py-spy, {spy.samples} samples ({tps_note}). Share of all samples, and of the "
             "samples where the proxy was not idle in epoll. Caveat: py-spy samples wall-clock "
             "time, and on a machine where pgbench and Postgres compete for the cores the "
             "proxy is often preempted right inside `write` (the loopback write wakes the "
             "peer, which takes the core): that waiting shows up as time in `write`, so "
             "syscall samples are overstated here; perf's split counts only CPU time. "
             "Read this for which Python functions cost what.", ""]
    lines.append(table(["where", "samples", "% of all", "% of busy"],
                       [[b, str(n), _pct(n, spy.samples),
                         "—" if b.startswith("idle") else _pct(n, busy)]
                        for b, n in spy.shares], ["l", "r", "r", "r"]))
    lines += ["", f"Top {top} by own (self) samples — the frame on top of the stack:", ""]
    lines.append(table(["#", "function (file or library)", "samples", "% of busy"],
                       [[str(i), f"`{n}`", str(c), _pct(c, busy)]
                        for i, (n, c) in enumerate(
                            [x for x in spy.by_self if not x[0].startswith("epoll")][:top], 1)],
                       ["r", "l", "r", "r"]))
    lines += ["", f"Top {top} by cumulative (inclusive) samples, below the event loop's "
              "`uv_run`, over the busy samples:", ""]
    lines.append(table(["#", "function (file or library)", "samples", "% of busy"],
                       [[str(i), f"`{n}`", str(c), _pct(c, busy)]
                        for i, (n, c) in enumerate(spy.by_inclusive[:top], 1)],
                       ["r", "l", "r", "r"]))
    return "\n".join(lines)


def cprofile_markdown(prof: CProfileSummary, *, top: int, tps_note: str) -> str:
    lines = [f"cProfile ({tps_note}); {prof.total:.2f} s of profiled own time. cProfile adds "
             "a fixed cost to every Python call, so Python's share is overstated, and it "
             "measures wall-clock time, so time the proxy spends preempted inside a `write` "
             "counts as that call's; read perf for the split and this for call counts and "
             "for which Python functions are heavy.", ""]
    lines.append(table(["where (by own time)", "seconds", "share"],
                       [[b, f"{s:.2f}", _pct(s, prof.total)] for b, s in prof.shares],
                       ["l", "r", "r"]))
    if prof.total_calls_per_txn is not None and prof.proxy_calls_per_txn is not None:
        lines += ["", f"Per transaction the proxy made {prof.total_calls_per_txn:.0f} function "
                  f"calls that cProfile sees ({prof.proxy_calls_per_txn:.0f} of them to "
                  "functions in proxy/; coroutine resumptions count as calls)."]
    for title, rows in ((f"Top {top} by cumulative time (without the entry chain: exec, "
                         "runpy, cli.main, asyncio.run, which span the whole run)",
                         prof.by_cumulative),
                        (f"Top {top} by total (own) time", prof.by_tottime)):
        lines += ["", f"{title}:", ""]
        lines.append(table(["#", "function", "ncalls", "tottime s", "cumtime s"],
                           [[str(i), f"`{r.name}`", r.calls, f"{r.tottime:.3f}",
                             f"{r.cumtime:.3f}"] for i, r in enumerate(rows[:top], 1)],
                           ["r", "l", "r", "r", "r"]))
    if prof.calls_per_txn:
        lines += ["", "shardwire functions by calls per transaction:", ""]
        lines.append(table(["function", "calls/txn"],
                           [[f"`{n}`", f"{c:.2f}"] for n, c in prof.calls_per_txn],
                           ["l", "r"]))
    return "\n".join(lines)


RESULTS_HEADER = """# shardwire benchmark results

Recorded by `bench/run.py --write-results` (see `bench/README.md`). Each run writes one
section, headed by its date; re-running on the same date replaces that date's section.
Text outside the generated markers is kept as it is.
"""


def write_section(path: Path, date: str, body: str) -> None:
    """Insert or replace the section for `date` between its markers."""
    start = f"<!-- bench:{date}:start -->"
    end = f"<!-- bench:{date}:end -->"
    block = f"{start}\n{body.rstrip()}\n{end}\n"
    text = path.read_text() if path.exists() else RESULTS_HEADER
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end) + r"\n?", re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + block
    path.write_text(text)


# --------------------------------------------------------------------------- routing cost


@dataclass(frozen=True)
class RoutingRow:
    """2 shards vs 1 shard in one mode: what routing costs the same proxy."""

    mode: str
    tps1: float | None
    tps2: float | None
    round_ratios: list[float | None]  # TPS(2) / TPS(1) of each round (back to back runs)
    cpu1: Result | None  # the median runs, for CPU µs/txn
    cpu2: Result | None

    @property
    def ratio(self) -> float | None:
        """The headline TPS(2 shards) / TPS(1 shard): the median of the per-round ratios
        when every round has both (the two ran back to back, so drift cancels), else the
        ratio of the median TPS."""
        paired = [r for r in self.round_ratios if r is not None]
        if paired and len(paired) == len(self.round_ratios):
            return statistics.median(paired)
        if self.tps1 and self.tps2 is not None:
            return self.tps2 / self.tps1
        return None

    @property
    def cost(self) -> float | None:
        """The share of the 1-shard TPS lost to routing (negative: 2 shards were faster)."""
        ratio = self.ratio
        return None if ratio is None else 1 - ratio

    def verdict(self, budget: float) -> str:
        """Whether routing costs less than `budget` (a share of the 1-shard TPS)."""
        cost = self.cost
        if cost is None:
            return "no data"
        return "meets" if cost < budget else "misses"


def routing_rows(cells: list[Cell], modes: Sequence[str], base: str, routed: str
                 ) -> list[RoutingRow]:
    by_key = {(c.target, c.mode): c for c in cells}
    rows = []
    for mode in modes:
        one, two = by_key.get((base, mode)), by_key.get((routed, mode))
        if one is None or two is None:
            continue
        ratios: list[float | None] = []
        for r1, r2 in zip(one.runs, two.runs, strict=False):
            if r1.ok and r2.ok and r1.tps and r2.tps is not None:
                ratios.append(r2.tps / r1.tps)
            else:
                ratios.append(None)
        rows.append(RoutingRow(mode, one.tps, two.tps, ratios, one.median, two.median))
    return rows


def routing_table(rows: Sequence[RoutingRow], budget: float,
                  labels: tuple[str, str] = ("1 shard", "2 shards")) -> str:
    one, two = labels
    header = ["mode", f"TPS {one}", f"TPS {two}", "ratio", "routing cost",
              f"vs {budget:.0%} budget", f"CPU µs/txn {one}", f"CPU µs/txn {two}",
              "Δ CPU µs/txn"]
    align = ["l", "r", "r", "r", "r", "l", "r", "r", "r"]
    rounds = max((len(r.round_ratios) for r in rows), default=1)
    if rounds > 1:
        header.append("ratio of each round")
        align.append("l")
    out = []
    for r in rows:
        c1 = r.cpu1.cpu_us_per_txn if r.cpu1 else None
        c2 = r.cpu2.cpu_us_per_txn if r.cpu2 else None
        delta = "—"
        if c1 is not None and c2 is not None:
            delta = f"{c2 - c1:+.1f} ({(c2 - c1) / c1:+.0%})" if c1 else f"{c2 - c1:+.1f}"
        row = [r.mode, _num(r.tps1), _num(r.tps2),
               "—" if r.ratio is None else f"{r.ratio:.3f}x",
               "—" if r.cost is None else f"{r.cost:+.1%}",
               r.verdict(budget), _cpu_cell(r.cpu1), _cpu_cell(r.cpu2), delta]
        if rounds > 1:
            row.append(", ".join("failed" if x is None else f"{x:.3f}" for x in r.round_ratios))
        out.append(row)
    return table(header, out, align)
