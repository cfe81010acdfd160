"""Owns what every benchmark script does around its work: log lines, a throwaway work
directory, and a cleanup that runs whatever happens (Ctrl-C, SIGTERM, SIGHUP, errors)."""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType

from swbench import report
from swbench.procs import BenchError


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def command_line(script: str, argv: Sequence[str] | None) -> str:
    """How the script was run, for the report."""
    return f"python {script} " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))


def publish(text: str, failures: Sequence[str], *, write: bool, results_file: Path,
            section: str) -> int:
    """Print the report; with `write`, record it as `section` of `results_file` unless
    something failed. Returns the exit status: 1 if anything failed, else 0."""
    print()
    print(text)
    if write:
        if failures:
            say(f"not writing {results_file}: {len(failures)} failure(s) above")
        else:
            report.write_section(results_file, section, text)
            say(f"wrote the {section} section of {results_file}")
    if failures:
        say(f"{len(failures)} failure(s): " + "; ".join(failures))
        return 1
    return 0


def run_main(prefix: str, keep: bool,
             body: Callable[[Path, contextlib.ExitStack], int]) -> int:
    """Run `body(workdir, stack)`; everything registered on `stack` (servers, the work
    directory unless `keep`) is cleaned up at the end, even on a signal. Returns the exit
    status: body's, 130 after an interrupt, 1 after a BenchError."""
    started = time.monotonic()

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    # SIGTERM/SIGHUP behave like Ctrl-C, so the cleanup in `finally` always runs.
    handled = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {sig: signal.signal(sig, interrupt) for sig in handled}
    stack = contextlib.ExitStack()
    status = 0
    try:
        workdir = Path(tempfile.mkdtemp(prefix=prefix))
        os.chmod(workdir, 0o755)  # Postgres/PgBouncer run as `postgres` when we are root
        if keep:
            stack.callback(say, f"kept {workdir}")
        else:
            stack.callback(shutil.rmtree, workdir, ignore_errors=True)
        status = body(workdir, stack)
    except KeyboardInterrupt:
        say("interrupted; cleaning up")
        return 130
    except BenchError as exc:
        say(f"benchmark failed: {exc}")
        return 1
    finally:
        # A second Ctrl-C must not cut the cleanup short (it would leave servers running).
        for sig in handled:
            signal.signal(sig, signal.SIG_IGN)
        try:
            stack.close()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    say(f"done in {time.monotonic() - started:.0f}s")
    return status
