"""Throwaway local PostgreSQL clusters: finding the binaries, initdb, start/stop/kill, psql.

Used by the test suite and by ``shardwire demo``.  Everything here is synchronous and
drives the stock PostgreSQL binaries (``initdb``, ``pg_ctl``, ``psql``) via ``subprocess``.

PostgreSQL refuses to run as root.  When this process is root, every server-side binary
(and ``psql``) is run as the ``postgres`` system user (created with ``useradd`` if missing),
and the cluster's directory is chowned to that user.
"""

from __future__ import annotations

import enum
import glob
import os
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Literal
from urllib.parse import quote

__all__ = [
    "LocalPostgres",
    "PostgresNotFound",
    "PsqlError",
    "find_bindir",
    "free_port",
]

_REQUIRED_BINARIES = ("initdb", "pg_ctl", "postgres", "psql")
_AUTH_METHODS = ("trust", "scram-sha-256", "md5", "password")
_PG_USER = "postgres"
# Longest path a unix socket may have (sun_path is 108 bytes including the NUL).
_MAX_SOCKET_PATH = 107


class PostgresNotFound(RuntimeError):
    """No usable PostgreSQL server installation was found."""

    def __init__(self, detail: str = "") -> None:
        message = (
            "PostgreSQL server binaries (initdb, pg_ctl, postgres, psql) were not found. "
            "Searched: `pg_config --bindir`, the PATH (initdb), and /usr/lib/postgresql/*/bin. "
            "Install PostgreSQL, e.g. on Debian/Ubuntu: `apt-get install postgresql` "
            "(on macOS: `brew install postgresql`), or put its bin directory on PATH."
        )
        if detail:
            message = f"{message} ({detail})"
        super().__init__(message)


class PsqlError(subprocess.CalledProcessError):
    """A ``psql`` invocation failed; ``str()`` includes its stderr."""

    def __str__(self) -> str:
        stderr = self.stderr.strip() if isinstance(self.stderr, str) else self.stderr
        return f"{super().__str__()}\n{stderr}"


# --------------------------------------------------------------------------- discovery


def _is_bindir(path: Path) -> bool:
    return all(os.access(path / exe, os.X_OK) for exe in _REQUIRED_BINARIES)


def _version_key(path: str) -> tuple[int, ...]:
    # /usr/lib/postgresql/<version>/bin
    version = Path(path).parent.name
    return tuple(int(part) for part in re.findall(r"\d+", version)) or (0,)


def find_bindir() -> Path:
    """Locate the directory holding initdb/pg_ctl/postgres/psql.

    Order: ``pg_config --bindir``; ``initdb`` on PATH (symlinks resolved); the newest
    ``/usr/lib/postgresql/*/bin``.  Raises :class:`PostgresNotFound`.
    """
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, check=True, timeout=30
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            out = ""
        if out and _is_bindir(Path(out)):
            return Path(out)

    initdb = shutil.which("initdb")
    if initdb:
        for candidate in (Path(initdb).parent, Path(initdb).resolve().parent):
            if _is_bindir(candidate):
                return candidate

    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version_key, reverse=True):
        if _is_bindir(Path(candidate)):
            return Path(candidate)

    raise PostgresNotFound()


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port on ``host`` that is currently free (racy by nature)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _utf8_c_locale_available() -> bool:
    try:
        out = subprocess.run(
            ["locale", "-a"], capture_output=True, text=True, check=False, timeout=30
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    names = {line.strip().lower().replace("-", "") for line in out.splitlines()}
    return "c.utf8" in names


# --------------------------------------------------------------------------- root handling


def _running_as_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def _postgres_account() -> pwd.struct_passwd:
    """The ``postgres`` system user, created when missing (root only)."""
    try:
        return pwd.getpwnam(_PG_USER)
    except KeyError:
        pass
    try:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/bin/sh", _PG_USER],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", "") or str(exc)
        raise RuntimeError(
            "running as root, and PostgreSQL refuses to run as root; the system user "
            f"'{_PG_USER}' does not exist and `useradd --system --no-create-home {_PG_USER}` "
            f"failed: {detail.strip()}"
        ) from exc
    return pwd.getpwnam(_PG_USER)


def _can_traverse(path: Path, account: pwd.struct_passwd) -> bool:
    st = path.stat()
    if st.st_uid == account.pw_uid:
        return bool(st.st_mode & stat.S_IXUSR)
    if st.st_gid == account.pw_gid:
        return bool(st.st_mode & stat.S_IXGRP)
    return bool(st.st_mode & stat.S_IXOTH)


# --------------------------------------------------------------------------- clusters


class _Default(enum.Enum):
    SUPERUSER_PASSWORD = enum.auto()


class LocalPostgres:
    """One throwaway PostgreSQL cluster under ``base_dir/name``.

    ``auth`` is the pg_hba method for TCP connections (local socket connections are always
    ``trust``).  The superuser is ``postgres`` with ``superuser_password``.  ``settings`` are
    extra ``postgresql.conf`` entries applied on every :meth:`start`.
    """

    host = "127.0.0.1"

    def __init__(
        self,
        base_dir: Path,
        name: str,
        *,
        port: int | None = None,
        auth: str = "scram-sha-256",
        superuser_password: str = "postgres",
        settings: Mapping[str, str] | None = None,
        bindir: Path | None = None,
    ) -> None:
        if auth not in _AUTH_METHODS:
            raise ValueError(f"auth must be one of {', '.join(_AUTH_METHODS)}, not {auth!r}")
        if not name or "/" in name or name in (".", ".."):
            raise ValueError(f"invalid cluster name {name!r}")
        self.base_dir = Path(base_dir).absolute()
        self.name = name
        self.auth = auth
        self.superuser_password = superuser_password
        self.settings: dict[str, str] = dict(settings or {})
        self.bindir = Path(bindir) if bindir is not None else find_bindir()
        self._auto_port = port is None
        self.port: int = port if port is not None else free_port(self.host)
        self.cluster_dir = self.base_dir / name
        self.datadir = self.cluster_dir / "data"
        self.logfile = self.datadir / "postgres.log"
        self._account = _postgres_account() if _running_as_root() else None

    def __repr__(self) -> str:
        return f"LocalPostgres(name={self.name!r}, port={self.port}, datadir={str(self.datadir)!r})"

    # ----------------------------------------------------------------- subprocess helpers

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_MESSAGES"] = "C"
        if self._account is not None:
            env["HOME"] = str(self.cluster_dir)
            env["USER"] = env["LOGNAME"] = self._account.pw_name
        return env

    def _run(
        self,
        args: Sequence[str | os.PathLike[str]],
        *,
        input: str | None = None,
        check: bool = True,
        timeout: float = 120,
        extra_env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        kwargs: dict[str, Any] = {}
        if self._account is not None:
            kwargs.update(user=self._account.pw_uid, group=self._account.pw_gid, extra_groups=[])
        return subprocess.run(
            [str(a) for a in args],
            input=input,
            capture_output=True,
            text=True,
            check=check,
            timeout=timeout,
            cwd=self.cluster_dir,
            env={**self._env(), **(extra_env or {})},
            **kwargs,
        )

    def _bin(self, name: str) -> str:
        return str(self.bindir / name)

    # ----------------------------------------------------------------- lifecycle

    def _prepare_dirs(self) -> None:
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.cluster_dir.mkdir(exist_ok=True)
        if self._account is None:
            return
        account = self._account
        # base_dir is ours: make it traversable by the postgres user.
        st = self.base_dir.stat()
        if not _can_traverse(self.base_dir, account):
            os.chmod(self.base_dir, stat.S_IMODE(st.st_mode) | 0o711)
        for parent in self.base_dir.parents:
            if not _can_traverse(parent, account):
                raise RuntimeError(
                    f"directory {parent} is not traversable by the '{account.pw_name}' user, "
                    f"which runs PostgreSQL (we are root); use a base_dir under a directory "
                    f"with mode 0o755, e.g. tempfile.mkdtemp() + chmod 0o755"
                )
        os.chown(self.cluster_dir, account.pw_uid, account.pw_gid)
        os.chmod(self.cluster_dir, 0o700)

    @property
    def initialized(self) -> bool:
        return (self.datadir / "PG_VERSION").exists()

    def _initdb(self) -> None:
        pwfile = self.cluster_dir / "pwfile"
        pwfile.write_text(self.superuser_password + "\n")
        try:
            os.chmod(pwfile, 0o600)
            if self._account is not None:
                os.chown(pwfile, self._account.pw_uid, self._account.pw_gid)
            locale_name = "C.UTF-8" if _utf8_c_locale_available() else "C"
            result = self._run(
                [
                    self._bin("initdb"),
                    "-D",
                    self.datadir,
                    "-U",
                    _PG_USER,
                    "--auth-local=trust",
                    f"--auth-host={self.auth}",
                    "-E",
                    "UTF8",
                    f"--locale={locale_name}",
                    f"--pwfile={pwfile}",
                    "--no-sync",
                ],
                check=False,
            )
        finally:
            pwfile.unlink(missing_ok=True)
        if result.returncode != 0:
            raise RuntimeError(
                f"initdb failed for cluster {self.name!r} (exit {result.returncode}):\n"
                f"{result.stdout}\n{result.stderr}"
            )
        with (self.datadir / "postgresql.conf").open("a") as conf:
            conf.write("\n# shardwire.localpg settings (rewritten on every start)\n")
            conf.write("include 'shardwire.conf'\n")
        self._ensure_replication_hba()

    def _ensure_replication_hba(self) -> bool:
        """Make sure pg_hba.conf lets 127.0.0.1 open replication connections (initdb's
        sample has that line; add it when missing).  Returns True if the file changed."""
        hba = self.datadir / "pg_hba.conf"
        text = hba.read_text()
        for line in text.splitlines():
            fields = line.split("#", 1)[0].split()
            if fields[:4] == ["host", "replication", "all", "127.0.0.1/32"]:
                return False
        if text and not text.endswith("\n"):
            text += "\n"
        hba.write_text(text + f"host replication all 127.0.0.1/32 {self.auth}\n")
        return True

    def _config(self) -> dict[str, str]:
        conf = {
            "listen_addresses": self.host,
            "port": str(self.port),
            "unix_socket_directories": str(self.datadir),
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "max_connections": "200",
            "max_prepared_transactions": "50",
            "shared_buffers": "64MB",
            "logging_collector": "off",
            "wal_level": "replica",
            # Any cluster can be the primary of streaming replicas (make_replica) and,
            # when it is a standby, answers read-only queries.
            "max_wal_senders": "10",
            "hot_standby": "on",
        }
        if self.auth == "md5":
            conf["password_encryption"] = "md5"
        conf.update(self.settings)
        return conf

    def _write_config(self) -> None:
        lines = []
        for key, value in self._config().items():
            escaped = str(value).replace("\\", "\\\\").replace("'", "''")
            lines.append(f"{key} = '{escaped}'\n")
        path = self.datadir / "shardwire.conf"
        path.write_text("".join(lines))
        if self._account is not None:
            os.chown(path, self._account.pw_uid, self._account.pw_gid)

    def is_running(self) -> bool:
        if not self.initialized:
            return False
        result = self._run([self._bin("pg_ctl"), "status", "-D", self.datadir], check=False)
        return result.returncode == 0

    def start(self) -> None:
        """initdb (first time only), write the configuration, and start the server."""
        if self.initialized and self.is_running():
            return
        self._prepare_dirs()
        socket_path = self.datadir / f".s.PGSQL.{self.port}"
        if len(str(socket_path)) > _MAX_SOCKET_PATH:
            raise RuntimeError(
                f"unix socket path {socket_path} is too long ({len(str(socket_path))} > "
                f"{_MAX_SOCKET_PATH}); use a shorter base_dir"
            )
        first_time = not self.initialized
        if first_time:
            self._initdb()

        attempts = 3 if self._auto_port else 1
        for attempt in range(attempts):
            self._write_config()
            result = self._run(
                [
                    self._bin("pg_ctl"),
                    "start",
                    "-D",
                    self.datadir,
                    "-l",
                    self.logfile,
                    "-w",
                    "-t",
                    "60",
                ],
                check=False,
                timeout=90,
            )
            if result.returncode == 0:
                break
            log = self.log_tail()
            port_clash = "could not bind" in log or "already in use" in log
            if port_clash and attempt + 1 < attempts:
                self.port = free_port(self.host)
                continue
            raise RuntimeError(
                f"pg_ctl start failed for cluster {self.name!r} on port {self.port} "
                f"(exit {result.returncode}):\n{result.stdout}\n{result.stderr}\n"
                f"--- {self.logfile} (tail) ---\n{log}"
            )

        if first_time and self.auth == "md5":
            # initdb hashed the --pwfile password with the default (scram); re-hash as md5.
            password = self.superuser_password.replace("'", "''")
            self.psql(
                f"SET password_encryption = 'md5';\nALTER USER {_PG_USER} PASSWORD '{password}';\n"
            )

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``mode``: smart | fast | immediate); no-op if it is not running."""
        if not self.is_running():
            return
        result = self._run(
            [self._bin("pg_ctl"), "stop", "-D", self.datadir, "-m", mode, "-w", "-t", "60"],
            check=False,
            timeout=90,
        )
        if result.returncode != 0 and self.is_running():
            raise RuntimeError(
                f"pg_ctl stop failed for cluster {self.name!r} (exit {result.returncode}):\n"
                f"{result.stdout}\n{result.stderr}"
            )

    def destroy(self) -> None:
        """Stop the server if running (killing it if a clean stop fails) and delete its files."""
        try:
            self.stop("immediate")
        except Exception:
            self.kill()
        shutil.rmtree(self.cluster_dir, ignore_errors=True)

    def postmaster_pid(self) -> int | None:
        try:
            first = (self.datadir / "postmaster.pid").read_text().splitlines()[0]
            return int(first.strip())
        except (OSError, IndexError, ValueError):
            return None

    def kill(self) -> None:
        """SIGKILL the postmaster (a hard crash, for fault tests) and wait until it is gone.

        Its child processes exit on their own once they notice the postmaster died; any
        that linger for more than a few seconds are SIGKILLed too, so :meth:`start` can
        bring the cluster back up (with crash recovery).
        """
        pid = self.postmaster_pid()
        if pid is None or not _alive(pid):
            return
        children = _children_of(pid)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        _wait_gone([pid], timeout=10)
        if not _wait_gone(children, timeout=5):
            for child in children:
                try:
                    os.kill(child, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            _wait_gone(children, timeout=10)
        if _is_zombie(pid):
            # Nobody reaps it (e.g. no real init in a container); a zombie holding the pid
            # would make the next postmaster believe the cluster is still running.
            (self.datadir / "postmaster.pid").unlink(missing_ok=True)
            for lock in self.datadir.glob(".s.PGSQL.*.lock"):
                lock.unlink(missing_ok=True)

    # ----------------------------------------------------------------- replication

    def _reload(self) -> None:
        self._run([self._bin("pg_ctl"), "reload", "-D", self.datadir, "-s"], timeout=60)

    def _set_auto_conf(self, values: Mapping[str, str]) -> None:
        """Set ``values`` in postgresql.auto.conf (what ``ALTER SYSTEM`` writes; it overrides
        postgresql.conf and shardwire.conf), replacing earlier entries of the same names.
        Only for a stopped server, or reload it afterwards."""
        path = self.datadir / "postgresql.auto.conf"
        try:
            lines = path.read_text().splitlines(keepends=True)
        except FileNotFoundError:
            lines = []
        names = {name.lower() for name in values}
        kept = [
            line
            for line in lines
            if line.split("=", 1)[0].strip().lower() not in names
        ]
        if kept and not kept[-1].endswith("\n"):
            kept[-1] += "\n"
        for name, value in values.items():
            escaped = value.replace("\\", "\\\\").replace("'", "''")
            kept.append(f"{name} = '{escaped}'\n")
        path.write_text("".join(kept))
        if self._account is not None:
            os.chown(path, self._account.pw_uid, self._account.pw_gid)

    def primary_conninfo(self, application_name: str | None = None) -> str:
        """A libpq connection string a standby uses to stream from this cluster (TCP,
        superuser ``postgres`` with its password)."""
        parts = {
            "host": self.host,
            "port": str(self.port),
            "user": _PG_USER,
            "password": self.superuser_password,
        }
        if application_name:
            parts["application_name"] = application_name
        return " ".join(f"{key}={_conninfo_quote(value)}" for key, value in parts.items())

    def make_replica(self, name: str) -> LocalPostgres:
        """Build a streaming replica of this (running) cluster with ``pg_basebackup -R`` and
        start it as a hot standby.

        The replica lives next to this cluster (same ``base_dir``) under ``name``, gets its
        own free port, and has the same auth method, superuser password and ``settings``.
        It is not tracked by anyone: the caller destroys it.
        """
        if not self.is_running():
            raise RuntimeError(f"cluster {self.name!r} must be running to make a replica of it")
        basebackup = self.bindir / "pg_basebackup"
        if not os.access(basebackup, os.X_OK):
            raise PostgresNotFound(f"{basebackup} is missing")
        if self._ensure_replication_hba():
            self._reload()
        replica = LocalPostgres(
            self.base_dir,
            name,
            auth=self.auth,
            superuser_password=self.superuser_password,
            settings=self.settings,
            bindir=self.bindir,
        )
        if replica.cluster_dir == self.cluster_dir:
            raise ValueError(f"a replica cannot have its primary's name {name!r}")
        if replica.datadir.exists():
            raise RuntimeError(f"cannot make replica {name!r}: {replica.datadir} already exists")
        replica._prepare_dirs()
        result = replica._run(
            [
                str(basebackup),
                "-D",
                replica.datadir,
                "-R",
                "-X",
                "stream",
                "--checkpoint=fast",
                "--no-sync",
                "-w",
                "-h",
                self.host,
                "-p",
                str(self.port),
                "-U",
                _PG_USER,
            ],
            check=False,
            timeout=300,
            # _env() drops every PG* variable; this one is meant for pg_basebackup.
            extra_env={"PGPASSWORD": self.superuser_password},
        )
        if result.returncode != 0:
            shutil.rmtree(replica.datadir, ignore_errors=True)
            raise RuntimeError(
                f"pg_basebackup of cluster {self.name!r} into {name!r} failed "
                f"(exit {result.returncode}):\n{result.stdout}\n{result.stderr}"
            )
        # Files copied from the primary that belong to it, not to the replica.
        replica.logfile.unlink(missing_ok=True)
        for stale in replica.datadir.glob(".s.PGSQL.*"):
            stale.unlink(missing_ok=True)
        # -R wrote primary_conninfo with the password it was given; write our own anyway
        # so it names the replica (application_name shows in pg_stat_replication).
        replica._set_auto_conf({"primary_conninfo": self.primary_conninfo(name)})
        replica._write_config()  # its own port and socket directory, not the primary's
        try:
            replica.start()
        except Exception:
            replica.destroy()
            raise
        return replica

    def is_in_recovery(self) -> bool:
        """``pg_is_in_recovery()`` of the running server (via psql)."""
        return self.psql("SELECT pg_is_in_recovery()").strip() == "t"

    def promote(self, timeout: float = 60) -> None:
        """Promote this standby (``pg_ctl promote``) and wait until it accepts writes."""
        result = self._run(
            [self._bin("pg_ctl"), "promote", "-D", self.datadir, "-w", "-t", str(int(timeout))],
            check=False,
            timeout=timeout + 30,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"pg_ctl promote failed for cluster {self.name!r} (exit {result.returncode}):\n"
                f"{result.stdout}\n{result.stderr}\n--- {self.logfile} (tail) ---\n"
                f"{self.log_tail()}"
            )
        deadline = time.monotonic() + timeout
        while self.is_in_recovery():
            if time.monotonic() >= deadline:
                raise RuntimeError(f"cluster {self.name!r} is still in recovery after promote")
            time.sleep(0.05)

    def demote_to_standby_of(self, primary: LocalPostgres) -> None:
        """Restart this cluster as a standby of ``primary`` (standby.signal and
        primary_conninfo).

        After a failover the old primary may have WAL the new one never saw (a timeline
        fork); then it cannot stream, but it still runs as a hot standby and reports
        ``pg_is_in_recovery() = true``.  No ``pg_rewind`` is attempted.
        """
        self.stop()
        signal_file = self.datadir / "standby.signal"
        signal_file.touch()
        if self._account is not None:
            os.chown(signal_file, self._account.pw_uid, self._account.pw_gid)
        self._set_auto_conf({"primary_conninfo": primary.primary_conninfo(self.name)})
        self.start()

    # ----------------------------------------------------------------- clients

    def dsn(
        self,
        dbname: str = "postgres",
        user: str = "postgres",
        password: str | Literal[_Default.SUPERUSER_PASSWORD] | None = (_Default.SUPERUSER_PASSWORD),
    ) -> str:
        """``postgresql://user:password@127.0.0.1:port/dbname`` (TCP).

        ``password`` defaults to the superuser password; pass ``None`` for none.
        """
        if password is _Default.SUPERUSER_PASSWORD:
            password = self.superuser_password
        userinfo = quote(user, safe="")
        if password is not None:
            userinfo += ":" + quote(password, safe="")
        return f"postgresql://{userinfo}@{self.host}:{self.port}/{quote(dbname, safe='')}"

    def psql(self, sql: str, dbname: str = "postgres") -> str:
        """Run ``sql`` (a script; statements run one by one) with psql as ``postgres`` over
        the unix socket.  Returns stdout (unaligned, tuples only); raises :class:`PsqlError`
        (a ``CalledProcessError``) carrying stderr on failure."""
        args = [
            self._bin("psql"),
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            str(self.datadir),
            "-p",
            str(self.port),
            "-U",
            _PG_USER,
            "-d",
            dbname,
            "-f",
            "-",
        ]
        result = self._run(args, input=sql, check=False)
        if result.returncode != 0:
            raise PsqlError(result.returncode, args, output=result.stdout, stderr=result.stderr)
        return result.stdout

    def create_database(self, name: str) -> None:
        ident = '"' + name.replace('"', '""') + '"'
        self.psql(f"CREATE DATABASE {ident};")

    def log_tail(self, lines: int = 50) -> str:
        try:
            return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    # ----------------------------------------------------------------- context manager

    def __enter__(self) -> LocalPostgres:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.destroy()


def _conninfo_quote(value: str) -> str:
    """A value for a libpq ``key=value`` connection string."""
    if value and not any(c in value for c in " '\\\t\n"):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


# --------------------------------------------------------------------------- process helpers


def _proc_state(pid: int) -> str | None:
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # "pid (comm) S ppid ..." - comm may contain spaces/parens.
    return data.rsplit(")", 1)[1].split()[0]


def _is_zombie(pid: int) -> bool:
    return _proc_state(pid) in ("Z", "X")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not _is_zombie(pid)


def _children_of(pid: int) -> list[int]:
    children = []
    for entry in glob.glob("/proc/[0-9]*/stat"):
        try:
            fields = Path(entry).read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if len(fields) > 1 and fields[1] == str(pid):
            children.append(int(Path(entry).parent.name))
    return children


def _wait_gone(pids: Sequence[int], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if not any(_alive(p) for p in pids):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
