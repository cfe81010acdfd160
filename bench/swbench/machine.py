"""What the benchmark ran on: hardware, kernel and the versions of everything measured."""

from __future__ import annotations

import datetime as dt
import os
import platform
import re
import subprocess
from pathlib import Path

from swbench.procs import REPO, PgBouncerInfo
from swbench.runner import say


def _first_line(args: list[str]) -> str:
    try:
        out = subprocess.run(args, capture_output=True, text=True, timeout=30, check=False)
    except OSError:
        return "unknown"
    text = (out.stdout or out.stderr).strip()
    return text.splitlines()[0] if text else "unknown"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                kib = int(line.split()[1])
                return f"{kib / 1024 / 1024:.1f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    return "unknown"


def _git_revision(rev: str | None) -> str:
    # Read-only git: never anything that writes the index or refs.
    short = _first_line(["git", "--no-optional-locks", "-C", str(REPO), "rev-parse", "--short",
                         f"{rev or 'HEAD'}^{{commit}}"])
    if short == "unknown" or short.startswith("fatal"):
        return "no git"
    if rev is not None:
        return f"git {rev} = {short}"
    dirty = subprocess.run(["git", "--no-optional-locks", "-C", str(REPO), "diff", "--quiet",
                            "HEAD", "--", "proxy"], capture_output=True, check=False).returncode
    return "work tree at " + short + (" + uncommitted changes in proxy/" if dirty else "")


def _snapshot_version(src: Path) -> str:
    match = re.search(r'__version__\s*=\s*"([^"]+)"',
                      (src / "proxy" / "__init__.py").read_text(errors="replace"))
    return match.group(1) if match else "unknown"


def _package_version(name: str) -> str:
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:
        return "not installed"


def describe(*, bindir: Path, pgbench: Path, pgbouncer: PgBouncerInfo | None, src: Path,
             src_hash: str, rev: str | None) -> dict[str, str]:
    """Ordered facts for the results file."""
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": str(affinity or os.cpu_count()),
        "cpu": _cpu_model(),
        "memory": _memory(),
        "kernel": f"{platform.system()} {platform.release()}",
        "os": _os_release(),
        "python": f"{platform.python_version()} ({platform.python_implementation()})",
        "uvloop": _package_version("uvloop"),
        "postgres": _first_line([str(bindir / "postgres"), "--version"]),
        "pgbench": _first_line([str(pgbench), "--version"]),
        "pgbouncer": pgbouncer.version if pgbouncer else "not installed",
        "shardwire": f"{_snapshot_version(src)} ({_git_revision(rev)}; "
                     f"sha256 of proxy/*.py {src_hash})",
        # Before anything is measured (pgbench -i just ran): other work on the machine.
        "load average before (1/5/15 min)": load_average(),
    }


def load_average() -> str:
    """The 1/5/15-minute load averages: other work on the machine skews the numbers."""
    try:
        return " / ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def load_1min() -> float:
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0.0


def warn_if_busy(consequence: str = "") -> None:
    """Say so when other work loads the machine (a 1-minute load above half its CPUs)."""
    busy = load_1min()
    if busy > 0.5 * (os.cpu_count() or 1):
        say(f"warning: the machine is busy (load average {busy:.1f} on {os.cpu_count()} "
            f"CPUs){consequence}")


def _os_release() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    return platform.platform()
