"""Reading shardwire's profiles: cProfile (deterministic) and py-spy (sampling, native frames).

Both answer "where does the proxy's time go": the top functions by cumulative and by own
("total"/self) time, and a split of the process's time into the event loop and syscalls
versus shardwire's own Python code.

* cProfile traces every Python call, so it inflates the cost of Python function calls
  (often 2x or more) and cannot see inside C (uvloop's loop, the socket syscalls it makes
  before calling `data_received`); its numbers are best read as call counts and relative
  Python cost.
* py-spy samples the real process (``--native`` unwinds through uvloop/libuv and libc, and
  ``--idle`` keeps the samples where the loop waits in epoll), so its split is the faithful
  one; it needs ptrace, which containers do not always permit.
"""

from __future__ import annotations

import pstats
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

# ---------------------------------------------------------------------------- cProfile


@dataclass
class FuncRow:
    name: str
    calls: str  # "ncalls" or "ncalls/primitive" like pstats
    tottime: float
    cumtime: float


@dataclass
class CProfileSummary:
    total: float  # seconds of profiled time (sum of own times)
    by_cumulative: list[FuncRow]
    by_tottime: list[FuncRow]
    shares: list[tuple[str, float]]  # (bucket, seconds)
    calls_per_txn: list[tuple[str, float]] = field(default_factory=list)
    # Function calls (Python and C, as cProfile counts them) per transaction, all / in proxy/.
    total_calls_per_txn: float | None = None
    proxy_calls_per_txn: float | None = None


def _short_path(path: str, repo: Path) -> str:
    if path.startswith(str(repo) + "/"):
        return path[len(str(repo)) + 1:]
    for marker in ("site-packages/", "/lib/python3.", "<frozen "):
        idx = path.find(marker)
        if idx != -1:
            rest = path[idx + len(marker):]
            if marker == "/lib/python3.":
                rest = rest.split("/", 1)[1] if "/" in rest else rest
            return rest.rstrip(">") if marker == "<frozen " else rest
    return path


def func_name(key: tuple[str, int, str], repo: Path) -> str:
    path, line, name = key
    if path == "~":
        return name  # a C function: "<method 'write' of 'uvloop.loop.UVStream' objects>"
    return f"{_short_path(path, repo)}:{line}({name})"


_WRITE_METHODS = re.compile(r"<method '(write|writelines|sendall|send)' of 'uvloop")


# Functions that are thin wrappers around uvloop's `transport.write` (a Cython method, which
# cProfile cannot see: its cost, the send syscall included, is counted as their own time).
_WRITE_WRAPPERS = {("proxy/backend/connection.py", "send"), ("proxy/frontend/session.py", "write")}


def _bucket(key: tuple[str, int, str], repo: Path) -> str:
    path, _, name = key
    short = _short_path(path, repo)
    if (short, name) in _WRITE_WRAPPERS:
        return "transport.write: uvloop + send syscall (own time of ServerConnection.send, " \
            "ClientSession.write)"
    if short == "asyncio/runners.py" and name == "run":
        return "event loop: uvloop's C loop (epoll, socket reads, dispatch), which cProfile " \
            "counts as asyncio.Runner.run's own time"
    if path == "~":
        if ("run_forever" in name and "uvloop" in name) or "select.epoll" in name:
            return "event loop: uvloop's C loop (epoll, socket reads, dispatch), which " \
                "cProfile counts as asyncio.Runner.run's own time"
        if _WRITE_METHODS.search(name):
            return "transport.write: uvloop + send syscall (own time of " \
                "ServerConnection.send, ClientSession.write)"
        if "_asyncio" in name or "uvloop" in name:
            return "asyncio/uvloop C methods (futures, tasks, handles)"
        return "C builtins called from Python (bytes, struct, dict, ...)"
    if path.startswith(str(repo / "proxy")):
        return "shardwire Python code (proxy/)"
    if "/asyncio/" in path:
        return "asyncio Python (streams, tasks, locks, timeouts)"
    return "other Python (stdlib, site-packages)"


def summarize_cprofile(path: Path, repo: Path, *, top: int = 25,
                       transactions: int | None = None) -> CProfileSummary:
    stats = pstats.Stats(str(path))
    raw: dict[tuple[str, int, str], tuple[int, int, float, float, object]] = stats.stats  # type: ignore[attr-defined]
    rows = []
    for key, (cc, nc, tt, ct, _callers) in raw.items():
        calls = str(nc) if nc == cc else f"{nc}/{cc}"
        rows.append((key, FuncRow(func_name(key, repo), calls, tt, ct), nc))
    rows = [r for r in rows if "<method 'disable' of '_lsprof" not in r[1].name]
    total_time = max((r[1].cumtime for r in rows), default=0.0)
    # The entry chain (exec, runpy, cli.main, asyncio.run ...) spans the whole run: it
    # would fill the top of the cumulative list and says nothing.
    by_cum = sorted((r for r in rows if r[1].cumtime < 0.95 * total_time),
                    key=lambda r: r[1].cumtime, reverse=True)
    by_tot = sorted(rows, key=lambda r: r[1].tottime, reverse=True)
    buckets: defaultdict[str, float] = defaultdict(float)  # seconds of own time
    for key, row, _ in rows:
        buckets[_bucket(key, repo)] += row.tottime
    total = sum(buckets.values())
    per_txn: list[tuple[str, float]] = []
    all_calls = proxy_calls = None
    if transactions:
        proxy_rows = [r for r in by_tot if r[1].name.startswith("proxy/")]
        for _key, row, ncalls in sorted(proxy_rows, key=lambda r: r[2], reverse=True)[:top]:
            per_txn.append((row.name, ncalls / transactions))
        all_calls = sum(r[2] for r in rows) / transactions
        proxy_calls = sum(r[2] for r in proxy_rows) / transactions
    return CProfileSummary(total, [r[1] for r in by_cum[:top]], [r[1] for r in by_tot[:top]],
                           sorted(buckets.items(), key=lambda kv: -kv[1]), per_txn, all_calls,
                           proxy_calls)


# ---------------------------------------------------------------------------- py-spy

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<where>[^()]*)\)$")
_PY_FILE = re.compile(r"\.py:\d+$|^<frozen ")
_LOOP_ENTRY = ("uv_run", "Loop__run", "Loop__Loop__run")
_IDLE = ("epoll_pwait", "epoll_wait", "epoll_pwait2")
_SYSCALLS_WRITE = {"write", "writev", "send", "sendmsg", "sendto", "__libc_write",
                   "__write", "__libc_send"}
_SYSCALLS_READ = {"read", "readv", "recv", "recvmsg", "recvfrom", "__libc_read", "__read",
                  "__libc_recv"}


@dataclass
class SpySummary:
    samples: int
    by_self: list[tuple[str, int]]
    by_inclusive: list[tuple[str, int]]
    shares: list[tuple[str, int]]  # (bucket, samples)
    busy: int  # samples not waiting in epoll


def _is_noise(frame: str) -> bool:
    """Hex addresses and inlined header helpers (Py_DECREF (object.h)) name no function."""
    return frame.startswith("0x") or bool(re.search(r"\.h(:\d+)?\)$", frame))


def _frame_key(frame: str) -> tuple[str, str, bool]:
    """(display name, file or library, is_python) with line numbers dropped."""
    match = _FRAME.match(frame)
    if match is None:
        return frame, "", False
    func, where = match.group("func"), match.group("where")
    is_py = bool(_PY_FILE.search(where))
    file = where.rsplit(":", 1)[0] if ":" in where else where
    return f"{func} ({file})", file, is_py


def _spy_bucket(frames: list[str]) -> str:
    names = [_FRAME.match(f).group("func") if _FRAME.match(f) else f for f in frames]  # type: ignore[union-attr]
    if any(n in _IDLE for n in names):
        return "idle: waiting in epoll (nothing to do)"
    leaf = next((n for n in reversed(names) if not n.startswith("0x")), "")
    if leaf in _SYSCALLS_WRITE:
        return "syscalls: socket writes (send to client/server)"
    if leaf in _SYSCALLS_READ:
        return "syscalls: socket reads"
    start = max((i for i, n in enumerate(names) if n in _LOOP_ENTRY), default=-1)
    inner_py = None
    for frame in frames[start + 1:]:
        _, file, is_py = _frame_key(frame)
        if is_py:
            inner_py = file
    if inner_py is None:
        return "event loop & asyncio internals in C (uvloop/libuv, task steps, handles)"
    if inner_py.startswith("proxy/"):
        return "shardwire Python code (proxy/, incl. the C builtins it calls)"
    if inner_py.startswith("asyncio/"):
        return "asyncio Python (streams, tasks, timeouts)"
    return f"other Python ({inner_py.split('/', 1)[0]})"


def summarize_pyspy(path: Path, *, top: int = 25) -> SpySummary:
    self_counts: Counter[str] = Counter()
    incl_counts: Counter[str] = Counter()
    buckets: Counter[str] = Counter()
    samples = busy = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        samples += count
        bucket = _spy_bucket(frames)
        buckets[bucket] += count
        if not bucket.startswith("idle"):
            busy += count
        # Skip the process's entry frames (runpy, main, run_forever...) in the inclusive
        # list: everything is under them.
        start = max((i for i, f in enumerate(frames)
                     if any(f.startswith(e + " ") for e in _LOOP_ENTRY)), default=-1)
        named = [_frame_key(f)[0] for f in frames if not _is_noise(f)] or [frames[-1]]
        self_counts[named[-1]] += count
        if bucket.startswith("idle"):
            continue  # the inclusive list is about the samples where work was done
        inner = [_frame_key(f)[0] for f in frames[start + 1:] if not _is_noise(f)]
        for name in set(inner):
            incl_counts[name] += count
    return SpySummary(samples, self_counts.most_common(top), incl_counts.most_common(top),
                      buckets.most_common(), busy)


# ---------------------------------------------------------------------------- perf

# How each shared object's samples read, for the split of on-CPU time.
_DSO_BUCKETS: tuple[tuple[str, str], ...] = (
    ("[kernel", "kernel: syscalls (socket read/write, epoll), TCP loopback, scheduler"),
    ("libpython", "Python interpreter: shardwire's and asyncio's Python code, objects, GC"),
    ("loop.cpython", "uvloop event loop and transports (Cython + libuv)"),
    ("libuv", "uvloop event loop and transports (Cython + libuv)"),
    ("_asyncio", "asyncio C accelerator (futures, tasks)"),
    ("libc.so", "libc (malloc/free, memcpy, syscall wrappers)"),
    ("python3", "Python interpreter: shardwire's and asyncio's Python code, objects, GC"),
)


@dataclass
class PerfSummary:
    samples: int
    shares: list[tuple[str, float]]  # (bucket, percent of on-CPU samples)
    dsos: list[tuple[str, float]]  # (shared object, percent)
    symbols: list[tuple[str, str, float]]  # (shared object, symbol, percent)


def _perf_report(perf: str, data: Path, sort: str) -> list[list[str]]:
    import subprocess

    out = subprocess.run([perf, "report", "-i", str(data), "--stdio", "--no-children", "-q",
                          "-n", "-t", "\t", "--sort", sort],
                         capture_output=True, text=True, check=False, timeout=300).stdout
    rows = []
    for line in out.splitlines():
        cells = [c.strip() for c in line.split("\t")]
        if len(cells) >= 3 and cells[0].endswith("%"):
            rows.append(cells)
    return rows


def dso_bucket(dso: str) -> str:
    for prefix, bucket in _DSO_BUCKETS:
        if prefix in dso:
            return bucket
    return f"other ({dso})"


def summarize_perf(perf: str, data: Path, *, top: int = 25) -> PerfSummary:
    """On-CPU samples (cpu-clock) by shared object, bucket and symbol."""
    dso_rows = _perf_report(perf, data, "dso")
    samples = sum(int(r[1]) for r in dso_rows if r[1].isdigit())
    dsos = [(r[2], float(r[0].rstrip("%"))) for r in dso_rows]
    buckets: defaultdict[str, float] = defaultdict(float)  # percent of the samples
    for dso, pct in dsos:
        buckets[dso_bucket(dso)] += pct
    symbols = [(r[2], r[3].removeprefix("[.] ").removeprefix("[k] "),
                float(r[0].rstrip("%")))
               for r in _perf_report(perf, data, "dso,sym")[:top] if len(r) >= 4]
    return PerfSummary(samples, sorted(buckets.items(), key=lambda kv: -kv[1]), dsos, symbols)
