"""Owns the topology file: loads shardwire's YAML config and validates it into frozen dataclasses.

Everything the proxy knows about its deployment (listen address, auth users, pool sizing,
shards and their DSNs, the bucket -> shard table and the per-table sharding rules) comes
from here. Every problem is reported as one :class:`~proxy.errors.ConfigError` whose
``key_path`` points at the offending key (``shards[1].primary``,
``sharding.assignment.s1``, ``tables.events.values.eu``) and whose ``problem`` says what
was expected and what was found. The only I/O is reading the file in :func:`load_config`.

Identifier rules (as in Postgres): table names and shard keys are folded to lower case
unless written in double quotes, and unqualified table names live in schema ``public``,
so ``Users`` and ``public.users`` name the same table.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import difflib
import itertools
import math
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, Literal, NoReturn, cast
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

import yaml

from proxy.errors import ConfigError
from proxy.topology.hashing import normalize_type_name

__all__ = [
    "Admin",
    "Auth",
    "AuthMethod",
    "Config",
    "Dsn",
    "HealthConfig",
    "KeyType",
    "Listen",
    "Metrics",
    "PoolConfig",
    "PoolMode",
    "RangeKind",
    "RangeSpec",
    "ReadsConfig",
    "Shard",
    "Sharding",
    "Strategy",
    "Table",
    "Tls",
    "Unparsed",
    "User",
    "format_ranges",
    "load_config",
    "parse_config",
    "parse_dsn",
    "qualify_table_name",
    "range_bound_key",
    "summarize",
]

AuthMethod = Literal["scram-sha-256", "md5", "trust"]
PoolMode = Literal["transaction", "session"]
Strategy = Literal["hash", "list", "range", "reference"]
Unparsed = Literal["default", "error"]
RangeKind = Literal["integer", "numeric", "timestamp", "text"]
KeyType = Literal["smallint", "integer", "bigint", "text", "uuid"]

AUTH_METHODS: Final = ("scram-sha-256", "md5", "trust")
POOL_MODES: Final = ("transaction", "session")
STRATEGIES: Final = ("hash", "list", "range", "reference")
UNPARSED_MODES: Final = ("default", "error")
KEY_TYPES: Final = ("smallint", "integer", "bigint", "text", "uuid")
INTEGER_KEY_TYPES: Final = ("smallint", "integer", "bigint")
# proxy.topology.hashing's canonical names -> the names a Table carries
_KEY_TYPE_OF: Final = {"int2": "smallint", "int4": "integer", "int8": "bigint",
                       "text": "text", "uuid": "uuid"}
_INT_LIMITS: Final = {"smallint": 1 << 15, "integer": 1 << 31, "bigint": 1 << 63}
MAX_BUCKETS: Final = 65536
SCRAM_PREFIX: Final = "SCRAM-SHA-256$"

# --------------------------------------------------------------------------- dataclasses


@dataclass(frozen=True, slots=True)
class Listen:
    """Where clients connect."""

    host: str = "127.0.0.1"
    port: int = 6432


@dataclass(frozen=True, slots=True)
class Admin:
    """The virtual admin database and the users allowed to use it."""

    database: str = "shardwire"
    users: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Metrics:
    """The Prometheus endpoint; ``enabled=False`` means do not listen at all."""

    host: str = "127.0.0.1"
    port: int = 9930
    enabled: bool = True


@dataclass(frozen=True, slots=True)
class User:
    """A client user. ``password`` is a plain password or a SCRAM-SHA-256 verifier.

    ``server_user``/``server_password`` are what the proxy logs in to shards with for this
    client; ``None`` means "use the credentials of the shard's DSN".
    """

    name: str
    password: str | None = field(default=None, repr=False)
    server_user: str | None = None
    server_password: str | None = field(default=None, repr=False)

    @property
    def password_is_verifier(self) -> bool:
        """True when ``password`` is a stored ``SCRAM-SHA-256$...`` verifier, not plain text."""
        return self.password is not None and self.password.startswith(SCRAM_PREFIX)


@dataclass(frozen=True, slots=True)
class Auth:
    """Client authentication: method and users by name (empty only for ``trust``)."""

    method: AuthMethod = "scram-sha-256"
    users: Mapping[str, User] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True, slots=True)
class Tls:
    """Server certificate and key (already resolved against the YAML file's directory)."""

    cert: Path
    key: Path


@dataclass(frozen=True, slots=True)
class PoolConfig:
    """Server connection pool settings; all timeouts are in seconds."""

    mode: PoolMode = "transaction"
    size: int = 20
    connect_timeout: float = 5.0
    checkout_timeout: float = 10.0
    idle_timeout: float = 600.0  # close server connections idle this long; 0 = never
    shutdown_timeout: float = 30.0  # graceful shutdown waits this long for clients
    server_lifetime: float = 3600.0  # recycle server connections this old; 0 = never


@dataclass(frozen=True, slots=True)
class TransactionsConfig:
    """How a transaction that wrote on several shards commits: ``two_phase`` (PREPARE
    TRANSACTION everywhere, a durable decision, COMMIT PREPARED; recovered after a crash) or
    ``best_effort`` (COMMIT shard by shard). ``instance`` names this proxy in the prepared
    transactions it owns (default: from the listen address), so several proxies on the same
    shards never resolve each other's."""

    mode: str = "two_phase"
    instance: str | None = None


@dataclass(frozen=True, slots=True)
class MergeConfig:
    """Cross-shard SELECT merging: ``max_groups`` caps the groups (and DISTINCT rows) one
    merge may hold in memory; beyond it the query fails with 53200."""

    max_groups: int = 1_000_000


@dataclass(frozen=True, slots=True)
class HealthConfig:
    """Health checks: every shard host (primaries and replicas) is asked
    ``pg_is_in_recovery()`` and its WAL position every ``check_interval`` seconds; a host
    that fails is skipped (fast 08006) until a check succeeds again."""

    check_interval: float = 1.0


@dataclass(frozen=True, slots=True)
class ReadsConfig:
    """Replica reads: a read goes to a replica whose replay lag (measured by the proxy) is
    at most ``max_replica_lag`` seconds; a client that wrote reads from the primary for
    ``read_your_writes`` seconds afterwards (0 = off)."""

    max_replica_lag: float = 1.0
    read_your_writes: float = 0.0


@dataclass(frozen=True, slots=True)
class Dsn:
    """A parsed ``postgresql://`` URL. ``params`` are the remaining query parameters."""

    host: str
    port: int
    user: str
    password: str | None = field(repr=False)
    database: str
    params: tuple[tuple[str, str], ...] = ()

    def param(self, key: str) -> str | None:
        """The last value given for query parameter ``key``, or None."""
        found = None
        for k, v in self.params:
            if k == key:
                found = v
        return found

    def redacted(self) -> str:
        """The DSN as a URL without the password (safe for logs and ``shardwire check``)."""
        return self._url(with_password=False)

    def url(self) -> str:
        """The DSN as a URL including the password (never log this)."""
        return self._url(with_password=True)

    def _url(self, *, with_password: bool) -> str:
        userinfo = quote(self.user, safe="")
        if with_password and self.password is not None:
            userinfo += ":" + quote(self.password, safe="")
        if ":" in self.host:
            host = f"[{self.host}]"
        else:
            host = quote(self.host, safe="")
        url = f"postgresql://{userinfo}@{host}:{self.port}/{quote(self.database, safe='')}"
        if self.params:
            url += "?" + urlencode(self.params)
        return url

    def __str__(self) -> str:
        return self.redacted()


@dataclass(frozen=True, slots=True)
class Shard:
    """One shard: a primary and optional read replicas."""

    name: str
    primary: Dsn
    replicas: tuple[Dsn, ...] = ()


@dataclass(frozen=True, slots=True)
class Sharding:
    """The bucket table: ``assignment[b]`` is the name of the shard owning bucket ``b``."""

    buckets: int
    assignment: tuple[str, ...]

    def buckets_of(self, shard: str) -> tuple[int, ...]:
        """The buckets owned by ``shard`` in ascending order."""
        return tuple(b for b, name in enumerate(self.assignment) if name == shard)

    def ranges_of(self, shard: str) -> str:
        """The buckets owned by ``shard`` as compact ranges, e.g. ``"0-15,40"``."""
        return format_ranges(self.buckets_of(shard))


@dataclass(frozen=True, slots=True)
class RangeSpec:
    """One partition of a range table: values ``lo <= v < hi`` go to ``shard``.

    ``None`` bounds are unbounded. Bounds are compared with :func:`range_bound_key` using
    the table's ``range_kind``.
    """

    lo: str | None
    hi: str | None
    shard: str


@dataclass(frozen=True, slots=True)
class Table:
    """How one table is distributed. ``name`` is always ``schema.table``.

    ``key_type`` is the SQL type of the shard key when the topology declares it
    (``smallint``, ``integer``, ``bigint``, ``text`` or ``uuid``; aliases such as ``int8``
    or ``varchar`` are normalised): key values are converted to it before routing, as
    Postgres converts an untyped literal to the column's type. ``None`` means "infer from
    each value" (see :mod:`proxy.topology.router`).
    """

    name: str
    strategy: Strategy
    shard_key: str | None = None
    values: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    default: str | None = None
    ranges: tuple[RangeSpec, ...] = ()
    range_kind: RangeKind | None = None
    key_type: KeyType | None = None

    @property
    def is_reference(self) -> bool:
        return self.strategy == "reference"


@dataclass(frozen=True, slots=True)
class Config:
    """The whole validated topology."""

    source: str
    listen: Listen
    database: str
    admin: Admin
    metrics: Metrics
    auth: Auth
    tls: Tls | None
    pool: PoolConfig
    shards: tuple[Shard, ...]
    default_shard: str
    sharding: Sharding
    tables: Mapping[str, Table]
    unparsed: Unparsed
    merge: MergeConfig = MergeConfig()
    transactions: TransactionsConfig = TransactionsConfig()
    health: HealthConfig = HealthConfig()
    reads: ReadsConfig = ReadsConfig()

    @property
    def shard_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.shards)

    def shard(self, name: str) -> Shard:
        """The shard called ``name``; raises KeyError if there is none."""
        for s in self.shards:
            if s.name == name:
                return s
        raise KeyError(f"unknown shard {name!r}")

    def table(self, name: str) -> Table | None:
        """The rule for table ``name`` (config spelling: folded, ``public`` by default)."""
        try:
            return self.tables.get(qualify_table_name(name))
        except ValueError:
            return None


# --------------------------------------------------------------------------- public helpers


def format_ranges(numbers: Iterable[int]) -> str:
    """Compact ascending integers as ranges: ``[0, 1, 2, 5, 7, 8]`` -> ``"0-2,5,7-8"``."""
    parts: list[str] = []
    run: list[int] = []
    for n in sorted(set(numbers)):
        if run and n == run[-1] + 1:
            run.append(n)
            continue
        if run:
            parts.append(_run_text(run))
        run = [n]
    if run:
        parts.append(_run_text(run))
    return ",".join(parts)


def _run_text(run: list[int]) -> str:
    return str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}"


_IDENT_PART = re.compile(r'"((?:[^"]|"")+)"|([^".\s]+)')


def qualify_table_name(name: str) -> str:
    """``users`` -> ``public.users``; ``Sales."Orders"`` -> ``sales.Orders``.

    Unquoted parts are folded to lower case, as Postgres does. Raises ValueError when
    ``name`` is not ``table`` or ``schema.table``.
    """
    parts = _identifier_parts(name)
    if len(parts) == 1:
        parts.insert(0, "public")
    if len(parts) != 2:
        raise ValueError(f"expected 'table' or 'schema.table', got {name!r}")
    return ".".join(parts)


def _identifier_parts(name: str) -> list[str]:
    text = name.strip()
    parts: list[str] = []
    pos = 0
    while True:
        m = _IDENT_PART.match(text, pos)
        if m is None:
            raise ValueError(f"expected an identifier, got {name!r}")
        quoted, bare = m.group(1), m.group(2)
        parts.append(quoted.replace('""', '"') if quoted is not None else bare.lower())
        pos = m.end()
        if pos == len(text):
            return parts
        if text[pos] != ".":
            raise ValueError(f"expected an identifier, got {name!r}")
        pos += 1


def _normalize_column(name: str) -> str:
    parts = _identifier_parts(name)
    if len(parts) != 1:
        raise ValueError(f"expected a column name, got {name!r}")
    return parts[0]


_INT_RE = re.compile(r"[+-]?\d+")
_NUM_RE = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")


def _range_kind(bounds: Sequence[str]) -> RangeKind:
    """Integers if every bound is one, else numbers, else ISO timestamps, else text."""
    if all(_INT_RE.fullmatch(b) for b in bounds):
        return "integer"
    if all(_NUM_RE.fullmatch(b) for b in bounds):
        return "numeric"
    try:
        for b in bounds:
            dt.datetime.fromisoformat(b)
    except ValueError:
        return "text"
    return "timestamp"


def range_bound_key(kind: RangeKind, text: str) -> Any:
    """The comparable form of a range bound or value: int, Decimal, datetime or str.

    Raises ValueError if ``text`` does not fit ``kind``.
    """
    if kind == "integer":
        if not _INT_RE.fullmatch(text.strip()):
            raise ValueError(f"not an integer: {text!r}")
        return int(text)
    if kind == "numeric":
        try:
            return Decimal(text.strip())
        except InvalidOperation:
            raise ValueError(f"not a number: {text!r}") from None
    if kind == "timestamp":
        return dt.datetime.fromisoformat(text.strip())
    return text


# --------------------------------------------------------------------------- DSN parsing


def _mask_secrets(text: str) -> str:
    """Hide a password in a URL or libpq keyword string before echoing it in an error."""
    m = re.match(r"([^:/?#\s]+://)(.*)@", text, re.S)
    if m:
        user, sep, _ = m.group(2).partition(":")
        text = f"{m.group(1)}{user}{':***' if sep else ''}@{text[m.end() :]}"
    return re.sub(r"(password\s*=\s*)\S+", r"\1***", text)


def _dsn_port(raw: str) -> int:
    if not raw.isdigit() or not 1 <= int(raw) <= 65535:
        raise ValueError(f"expected a port 1-65535 in the DSN, got {raw!r}")
    return int(raw)


def parse_dsn(text: str) -> Dsn:
    """Parse a ``postgresql://`` or ``postgres://`` URL into a :class:`Dsn`.

    User, password and database are percent-decoded. Defaults: port 5432, user
    ``postgres``, database = user, host ``localhost``. The libpq query parameters
    ``host``, ``port``, ``user``, ``password`` and ``dbname`` override the URL parts; all
    other query parameters stay in ``params``. Raises ValueError with a message that never
    contains the password.
    """
    if not isinstance(text, str):
        raise ValueError(f"expected a postgresql:// or postgres:// URL, got {_describe(text)}")
    stripped = text.strip()
    scheme, sep, rest = stripped.partition("://")
    if not sep or scheme.lower() not in ("postgresql", "postgres"):
        raise ValueError(
            f"expected a postgresql:// or postgres:// URL, got {_mask_secrets(stripped)!r}"
        )
    try:
        parts = urlsplit("postgresql://" + rest)
    except ValueError as e:
        raise ValueError(f"malformed URL {_mask_secrets(stripped)!r}: {e}") from None
    if parts.fragment:
        raise ValueError("a DSN cannot have a '#fragment'")
    userinfo, at, hostport = parts.netloc.rpartition("@")
    user_raw, colon, password_raw = userinfo.partition(":")
    user = unquote(user_raw) if at else ""
    password: str | None = unquote(password_raw) if at and colon else None

    port = 5432
    if hostport.startswith("["):
        end = hostport.find("]")
        if end < 0:
            raise ValueError("unterminated '[' in the DSN host")
        host = unquote(hostport[1:end])
        after = hostport[end + 1 :]
        if after:
            if not after.startswith(":"):
                raise ValueError(f"unexpected {after!r} after the IPv6 host")
            port = _dsn_port(after[1:])
    else:
        if "," in hostport:
            raise ValueError("multiple hosts in one DSN are not supported; list replicas instead")
        host, colon, port_raw = hostport.partition(":")
        host = unquote(host)
        if colon:
            port = _dsn_port(port_raw)

    path = parts.path[1:] if parts.path.startswith("/") else parts.path
    database = unquote(path)

    params: list[tuple[str, str]] = []
    if parts.query:
        try:
            query = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=True)
        except ValueError:
            raise ValueError(f"malformed query string {parts.query!r}") from None
        for key, value in query:
            if key == "host":
                host = value
            elif key == "port":
                port = _dsn_port(value)
            elif key == "user":
                user = value
            elif key == "password":
                password = value
            elif key == "dbname":
                database = value
            else:
                params.append((key, value))

    user = user or "postgres"
    return Dsn(
        host=host or "localhost",
        port=port,
        user=user,
        password=password,
        database=database or user,
        params=tuple(params),
    )


# --------------------------------------------------------------------------- validation


_SIMPLE_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
_SHARD_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
_SCRAM_RE = re.compile(
    r"SCRAM-SHA-256\$(\d+):([A-Za-z0-9+/=]+)\$([A-Za-z0-9+/=]+):([A-Za-z0-9+/=]+)"
)
_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m)?")
_DURATION_UNITS: Final = {"ms": 0.001, "s": 1.0, "m": 60.0}
_WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::", "*"})

_TOP_KEYS: Final = (
    "listen",
    "database",
    "admin",
    "metrics",
    "auth",
    "tls",
    "pool",
    "shards",
    "default_shard",
    "sharding",
    "unparsed",
    "tables",
    "merge",
    "transactions",
    "health",
    "reads",
)


def _key(path: str, key: str) -> str:
    if _SIMPLE_KEY.fullmatch(key):
        return f"{path}.{key}" if path else key
    return f"{path}[{key!r}]"


def _index(path: str, i: int) -> str:
    return f"{path}[{i}]"


def _describe(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return repr(value if len(value) <= 60 else value[:57] + "...")
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dt.date):
        return f"the date {value.isoformat()}"
    return f"a {type(value).__name__}"


def _scalar_text(value: object) -> str | None:
    """YAML scalars usable as a value/bound: strings, numbers and (unquoted) dates."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and math.isfinite(value):
        return repr(value)
    if isinstance(value, dt.datetime):
        return value.isoformat(sep=" ")
    if isinstance(value, dt.date):
        return value.isoformat()
    return None


def _one_of(choices: Iterable[str]) -> str:
    return ", ".join(choices)


class _Parser:
    def __init__(self, source: str, base_dir: Path | None) -> None:
        self.source = source
        self.base_dir = base_dir

    def fail(self, path: str, problem: str) -> NoReturn:
        raise ConfigError(self.source, path, problem)

    # -- primitive checks

    def mapping(self, value: object, path: str, keys: Sequence[str]) -> dict[str, Any]:
        if not isinstance(value, dict):
            self.fail(path, f"expected a mapping with keys {_one_of(keys)}, got {_describe(value)}")
        for k in value:
            if not isinstance(k, str):
                self.fail(path, f"expected string keys, got the key {_describe(k)}")
            if k not in keys:
                problem = f"unknown key; expected one of {_one_of(keys)}"
                close = difflib.get_close_matches(k, keys, n=1)
                if close:
                    problem += f" (did you mean {close[0]!r}?)"
                self.fail(_key(path, k), problem)
        return value

    def optional_mapping(self, value: object, path: str, keys: Sequence[str]) -> dict[str, Any]:
        return {} if value is None else self.mapping(value, path, keys)

    def string(self, value: object, path: str, what: str = "a non-empty string") -> str:
        if not isinstance(value, str) or not value:
            hint = " (quote it in YAML)" if isinstance(value, int | float) else ""
            self.fail(path, f"expected {what}{hint}, got {_describe(value)}")
        return value

    def integer(self, value: object, path: str, lo: int, hi: int | None, what: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < lo:
            self.fail(path, f"expected {what}, got {_describe(value)}")
        if hi is not None and value > hi:
            self.fail(path, f"expected {what}, got {_describe(value)}")
        return value

    def port(self, value: object, path: str) -> int:
        return self.integer(value, path, 1, 65535, "an integer port 1-65535")

    def seconds(self, value: object, path: str, *, allow_zero: bool) -> float:
        if isinstance(value, str):  # "500ms", "2s", "1.5m"
            unit = _DURATION.fullmatch(value.strip())
            if unit is not None:
                value = float(unit.group(1)) * _DURATION_UNITS[unit.group(2) or "s"]
        ok = (
            isinstance(value, int | float)
            and not isinstance(value, bool)
            and math.isfinite(value)
            and (value >= 0 if allow_zero else value > 0)
        )
        if not ok:
            bound = ">= 0" if allow_zero else "> 0"
            self.fail(path, f"expected a number of seconds {bound} (or a duration such as "
                           f"'500ms', '2s', '1m'), got {_describe(value)}")
        return float(cast(float, value))

    def boolean(self, value: object, path: str) -> bool:
        if not isinstance(value, bool):
            self.fail(path, f"expected true or false, got {_describe(value)}")
        return value

    def choice(self, value: object, path: str, choices: Sequence[str]) -> str:
        if not isinstance(value, str) or value not in choices:
            self.fail(path, f"expected one of {_one_of(choices)}, got {_describe(value)}")
        return value

    def list_of(self, value: object, path: str, what: str) -> list[Any]:
        if value is None:
            return []
        if not isinstance(value, list):
            self.fail(path, f"expected a list of {what}, got {_describe(value)}")
        return value

    def shard_ref(self, value: object, path: str, shards: Sequence[str]) -> str:
        name = self.string(value, path, "a shard name")
        if name not in shards:
            self.fail(path, f"unknown shard {name!r}; expected one of {_one_of(shards)}")
        return name

    # -- sections

    def listen(self, value: object) -> Listen:
        m = self.optional_mapping(value, "listen", ("host", "port"))
        return Listen(
            host=self.string(m.get("host", "127.0.0.1"), "listen.host", "a host name or address"),
            port=self.port(m.get("port", 6432), "listen.port"),
        )

    def admin(self, value: object, database: str) -> Admin:
        m = self.optional_mapping(value, "admin", ("database", "users"))
        name = self.string(m.get("database", "shardwire"), "admin.database", "a database name")
        if name == database:
            self.fail(
                "admin.database",
                f"must differ from the sharded database {database!r}, got {name!r}",
            )
        users = self.list_of(m.get("users"), "admin.users", "user names")
        return Admin(
            database=name,
            users=tuple(
                self.string(u, _index("admin.users", i), "a user name") for i, u in enumerate(users)
            ),
        )

    def metrics(self, value: object, listen: Listen) -> Metrics:
        if value is None or value is False:
            return Metrics(enabled=False)
        if value is True:
            value = {}
        m = self.mapping(value, "metrics", ("host", "port", "enabled"))
        metrics = Metrics(
            host=self.string(m.get("host", "127.0.0.1"), "metrics.host", "a host name or address"),
            port=self.port(m.get("port", 9930), "metrics.port"),
            enabled=self.boolean(m.get("enabled", True), "metrics.enabled"),
        )
        if (
            metrics.enabled
            and metrics.port == listen.port
            and (
                metrics.host == listen.host
                or metrics.host in _WILDCARD_HOSTS
                or listen.host in _WILDCARD_HOSTS
            )
        ):
            self.fail(
                "metrics.port",
                f"expected a port different from listen.port, got {metrics.port} for both",
            )
        return metrics

    def auth(self, value: object) -> Auth:
        m = self.optional_mapping(value, "auth", ("method", "users"))
        method = cast(
            AuthMethod, self.choice(m.get("method", "scram-sha-256"), "auth.method", AUTH_METHODS)
        )
        raw_users = self.list_of(m.get("users"), "auth.users", "users")
        if not raw_users and method != "trust":
            self.fail(
                "auth.users",
                f"expected at least one user for method {method}, got "
                f"{'none' if m.get('users') is None else 'an empty list'}",
            )
        users: dict[str, User] = {}
        for i, raw in enumerate(raw_users):
            path = _index("auth.users", i)
            u = self.mapping(raw, path, ("name", "password", "server_user", "server_password"))
            name = self.string(u.get("name"), _key(path, "name"), "a user name")
            if name in users:
                self.fail(_key(path, "name"), f"duplicate user {name!r}")
            password = u.get("password")
            if password is None:
                if method != "trust":
                    self.fail(
                        _key(path, "password"),
                        f"expected a password (auth method is {method}), got none",
                    )
            else:
                password = self.string(
                    password, _key(path, "password"), "a password or SCRAM-SHA-256 verifier"
                )
                if password.startswith(SCRAM_PREFIX):
                    self.check_verifier(password, _key(path, "password"))
                    if method == "md5":
                        self.fail(
                            _key(path, "password"),
                            "expected a plain password for md5 authentication, got a "
                            "SCRAM-SHA-256 verifier (md5 cannot be checked against it)",
                        )
            server_user = u.get("server_user")
            if server_user is not None:
                server_user = self.string(server_user, _key(path, "server_user"), "a user name")
            server_password = u.get("server_password")
            if server_password is not None:
                server_password = self.string(
                    server_password, _key(path, "server_password"), "a password"
                )
                if server_password.startswith(SCRAM_PREFIX):
                    self.fail(
                        _key(path, "server_password"),
                        "expected a plain password (the proxy logs in to shards with it), "
                        "got a SCRAM-SHA-256 verifier",
                    )
            users[name] = User(name, password, server_user, server_password)
        return Auth(method=method, users=MappingProxyType(users))

    def check_verifier(self, verifier: str, path: str) -> None:
        shape = "'SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>'"
        m = _SCRAM_RE.fullmatch(verifier)
        if m is None:
            self.fail(
                path, f"expected a SCRAM-SHA-256 verifier shaped {shape}, got a malformed one"
            )
        try:
            salt, stored, server = (base64.b64decode(g, validate=True) for g in m.group(2, 3, 4))
        except (binascii.Error, ValueError):
            self.fail(path, f"expected a SCRAM-SHA-256 verifier {shape} in base64, got bad base64")
        if int(m.group(1)) < 1 or not salt or len(stored) != 32 or len(server) != 32:
            self.fail(
                path,
                "expected a SCRAM-SHA-256 verifier with iterations >= 1, a salt and 32-byte "
                "keys, got a malformed one",
            )

    def admin_users(self, admin: Admin, auth: Auth) -> None:
        if not auth.users and auth.method == "trust":
            return  # trust without a user list admits any user name
        for i, name in enumerate(admin.users):
            if name not in auth.users:
                self.fail(
                    _index("admin.users", i),
                    f"unknown user {name!r}; expected one of auth.users: {_one_of(auth.users)}",
                )

    def tls(self, value: object) -> Tls | None:
        if value is None:
            return None
        m = self.mapping(value, "tls", ("cert", "key"))
        files: list[Path] = []
        for k in ("cert", "key"):
            p = Path(self.string(m.get(k), f"tls.{k}", "a file path"))
            if not p.is_absolute() and self.base_dir is not None:
                p = self.base_dir / p
            files.append(p)
        return Tls(cert=files[0], key=files[1])

    def pool(self, value: object) -> PoolConfig:
        keys = (
            "mode",
            "size",
            "connect_timeout",
            "checkout_timeout",
            "idle_timeout",
            "shutdown_timeout",
            "server_lifetime",
        )
        m = self.optional_mapping(value, "pool", keys)
        d = PoolConfig()
        return PoolConfig(
            mode=cast(PoolMode, self.choice(m.get("mode", d.mode), "pool.mode", POOL_MODES)),
            size=self.integer(m.get("size", d.size), "pool.size", 1, None, "an integer >= 1"),
            connect_timeout=self.seconds(
                m.get("connect_timeout", d.connect_timeout),
                "pool.connect_timeout",
                allow_zero=False,
            ),
            checkout_timeout=self.seconds(
                m.get("checkout_timeout", d.checkout_timeout),
                "pool.checkout_timeout",
                allow_zero=False,
            ),
            idle_timeout=self.seconds(
                m.get("idle_timeout", d.idle_timeout), "pool.idle_timeout", allow_zero=True
            ),
            shutdown_timeout=self.seconds(
                m.get("shutdown_timeout", d.shutdown_timeout),
                "pool.shutdown_timeout",
                allow_zero=True,
            ),
            server_lifetime=self.seconds(
                m.get("server_lifetime", d.server_lifetime),
                "pool.server_lifetime",
                allow_zero=True,
            ),
        )

    def dsn(self, value: object, path: str) -> Dsn:
        try:
            return parse_dsn(cast(str, value))
        except ValueError as e:
            self.fail(path, str(e))

    def shards(self, value: object) -> tuple[Shard, ...]:
        if value is None:
            self.fail("shards", "required; expected a list of shards, got none")
        if not isinstance(value, list) or not value:
            self.fail("shards", f"expected a non-empty list of shards, got {_describe(value)}")
        shards: list[Shard] = []
        seen: dict[str, int] = {}
        for i, raw in enumerate(value):
            path = _index("shards", i)
            m = self.mapping(raw, path, ("name", "primary", "replicas"))
            name = self.string(m.get("name"), _key(path, "name"), "a shard name")
            if not _SHARD_NAME.fullmatch(name):
                self.fail(
                    _key(path, "name"),
                    f"expected letters, digits, '_', '-' or '.', got {name!r}",
                )
            if name in seen:
                self.fail(
                    _key(path, "name"),
                    f"duplicate shard name {name!r} (already used by shards[{seen[name]}])",
                )
            seen[name] = i
            if "primary" not in m:
                self.fail(_key(path, "primary"), "required; expected a postgresql:// URL, got none")
            primary = self.dsn(m["primary"], _key(path, "primary"))
            rpath = _key(path, "replicas")
            replicas = tuple(
                self.dsn(r, _index(rpath, j))
                for j, r in enumerate(self.list_of(m.get("replicas"), rpath, "postgresql:// URLs"))
            )
            shards.append(Shard(name, primary, replicas))
        return tuple(shards)

    def sharding(self, value: object, shard_names: Sequence[str]) -> Sharding:
        m = self.optional_mapping(value, "sharding", ("buckets", "assignment"))
        buckets = self.integer(
            m.get("buckets", 64),
            "sharding.buckets",
            1,
            MAX_BUCKETS,
            f"an integer number of buckets 1-{MAX_BUCKETS}",
        )
        raw = m.get("assignment")
        if raw is None:
            n = len(shard_names)
            table = [""] * buckets
            for i, name in enumerate(shard_names):
                for b in range(i * buckets // n, (i + 1) * buckets // n):
                    table[b] = name
            return Sharding(buckets, tuple(table))
        if not isinstance(raw, dict):
            self.fail(
                "sharding.assignment",
                f"expected a mapping of shard name to bucket ranges, got {_describe(raw)}",
            )
        owner: list[str | None] = [None] * buckets
        for shard, spec in raw.items():
            path = _key("sharding.assignment", str(shard))
            if not isinstance(shard, str) or shard not in shard_names:
                self.fail(path, f"unknown shard {shard!r}; expected one of {_one_of(shard_names)}")
            mine = self.bucket_spec(spec, path, buckets)
            clashes: dict[str, list[int]] = {}
            for b in mine:
                other = owner[b]
                if other is not None and other != shard:
                    clashes.setdefault(other, []).append(b)
                owner[b] = shard
            for other, nums in clashes.items():
                word = "bucket" if len(nums) == 1 else "buckets"
                self.fail(
                    path,
                    f"{word} {format_ranges(nums)} assigned to both {other} and {shard}",
                )
        missing = [b for b, o in enumerate(owner) if o is None]
        if missing:
            word = "bucket" if len(missing) == 1 else "buckets"
            self.fail(
                "sharding.assignment",
                f"expected every bucket 0-{buckets - 1} to be assigned, "
                f"{word} {format_ranges(missing)} not assigned to any shard",
            )
        return Sharding(buckets, tuple(cast(str, o) for o in owner))

    def bucket_spec(self, spec: object, path: str, buckets: int) -> list[int]:
        if isinstance(spec, int) and not isinstance(spec, bool):
            spec = str(spec)
        if not isinstance(spec, str):
            self.fail(path, f"expected bucket ranges like '0-15,40', got {_describe(spec)}")
        result: list[int] = []
        for part in spec.split(","):
            part = part.strip()
            m = re.fullmatch(r"(\d+)(?:\s*-\s*(\d+))?", part)
            if m is None:
                self.fail(
                    path,
                    f"expected comma-separated bucket numbers or ranges like '0-15,40', "
                    f"got {spec!r}",
                )
            lo = int(m.group(1))
            hi = int(m.group(2)) if m.group(2) is not None else lo
            if hi < lo:
                self.fail(path, f"expected ranges low-high, got the reversed range {part!r}")
            if hi >= buckets:
                self.fail(
                    path,
                    f"bucket {hi} out of range; expected buckets 0-{buckets - 1} "
                    f"(sharding.buckets is {buckets})",
                )
            result.extend(range(lo, hi + 1))
        return result

    def tables(self, value: object, shard_names: Sequence[str]) -> dict[str, Table]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.fail("tables", f"expected a mapping of table name to rule, got {_describe(value)}")
        tables: dict[str, Table] = {}
        spelled: dict[str, str] = {}
        for name, spec in value.items():
            path = _key("tables", str(name))
            if not isinstance(name, str):
                self.fail(path, f"expected a table name, got {_describe(name)}")
            try:
                qualified = qualify_table_name(name)
            except ValueError:
                self.fail(path, f"expected a table name 'table' or 'schema.table', got {name!r}")
            if qualified in spelled:
                self.fail(
                    path,
                    f"duplicate table {qualified!r} (also defined as {spelled[qualified]!r})",
                )
            spelled[qualified] = name
            tables[qualified] = self.table(qualified, spec, path, shard_names)
        return tables

    def table(self, name: str, spec: object, path: str, shard_names: Sequence[str]) -> Table:
        keys = ("shard_key", "key_type", "strategy", "reference", "values", "default", "ranges")
        if spec is None:
            self.fail(
                path, "expected either shard_key (a sharded table) or reference: true, got null"
            )
        m = self.mapping(spec, path, keys)
        reference = self.boolean(m.get("reference", False), _key(path, "reference"))
        strategy: str | None = None
        if "strategy" in m:
            strategy = self.choice(m["strategy"], _key(path, "strategy"), STRATEGIES)
        if reference:
            if strategy not in (None, "reference"):
                self.fail(
                    _key(path, "strategy"),
                    f"expected no strategy for a reference table, got {strategy!r}",
                )
            strategy = "reference"
        if strategy == "reference":
            for k in ("shard_key", "key_type", "values", "default", "ranges"):
                if k in m:
                    why = "it has no shard key: " if k == "key_type" else ""
                    self.fail(
                        _key(path, k),
                        f"not allowed on a reference table ({why}it is copied to every shard)",
                    )
            return Table(name=name, strategy="reference")
        if "shard_key" not in m:
            if strategy is None:
                self.fail(
                    path,
                    "expected either shard_key (a sharded table) or reference: true, found neither",
                )
            self.fail(_key(path, "shard_key"), f"required for strategy {strategy}, got none")
        raw_key = self.string(m["shard_key"], _key(path, "shard_key"), "a column name")
        try:
            shard_key = _normalize_column(raw_key)
        except ValueError:
            self.fail(_key(path, "shard_key"), f"expected a column name, got {raw_key!r}")
        strategy = strategy or "hash"
        key_type = None
        if m.get("key_type") is not None:
            key_type = self.key_type(m["key_type"], _key(path, "key_type"), strategy)
        allowed = {"hash": (), "list": ("values", "default"), "range": ("ranges", "default")}
        for k in ("values", "default", "ranges"):
            if k in m and k not in allowed[strategy]:
                users = [s for s, ks in allowed.items() if k in ks]
                self.fail(
                    _key(path, k),
                    f"only valid with strategy {' or '.join(users)}, got strategy {strategy}",
                )
        default = None
        if m.get("default") is not None:
            default = self.shard_ref(m["default"], _key(path, "default"), shard_names)
        if strategy == "hash":
            return Table(name=name, strategy="hash", shard_key=shard_key, key_type=key_type)
        if strategy == "list":
            values = self.list_values(
                m.get("values"), _key(path, "values"), shard_names, key_type
            )
            return Table(
                name=name,
                strategy="list",
                shard_key=shard_key,
                values=MappingProxyType(values),
                default=default,
                key_type=key_type,
            )
        ranges, kind = self.ranges(m.get("ranges"), _key(path, "ranges"), shard_names, key_type)
        return Table(
            name=name,
            strategy="range",
            shard_key=shard_key,
            default=default,
            ranges=ranges,
            range_kind=kind,
            key_type=key_type,
        )

    def key_type(self, value: object, path: str, strategy: str) -> KeyType:
        """A shard key's SQL type, aliases normalised (``int8`` -> ``bigint``)."""
        expected = (
            f"expected one of {_one_of(KEY_TYPES)} (or an alias such as int, int4, int8, "
            "varchar)"
        )
        if not isinstance(value, str) or not value.strip():
            self.fail(path, f"{expected}, got {_describe(value)}")
        try:
            key_type = cast(KeyType, _KEY_TYPE_OF[normalize_type_name(value)])
        except ValueError:
            self.fail(path, f"{expected}, got {value!r}")
        if key_type == "uuid" and strategy == "range":
            self.fail(
                path,
                "uuid is not supported for strategy range; expected one of "
                f"{_one_of(k for k in KEY_TYPES if k != 'uuid')}",
            )
        return key_type

    def typed_value(self, text: str, path: str, key_type: KeyType | None, what: str) -> str:
        """A list value or range bound converted to the key's type (canonical text)."""
        if key_type in INTEGER_KEY_TYPES:
            limit = _INT_LIMITS[key_type]
            if not _INT_RE.fullmatch(text.strip()) or not -limit <= int(text) < limit:
                self.fail(path, f"expected {what} that fits key_type {key_type}, got {text!r}")
            return str(int(text))
        if key_type == "uuid":
            try:
                return str(uuid.UUID(text.strip()))
            except ValueError:
                self.fail(path, f"expected {what} that fits key_type uuid, got {text!r}")
        return text

    def list_values(
        self, raw: object, path: str, shard_names: Sequence[str], key_type: KeyType | None = None
    ) -> dict[str, str]:
        if not isinstance(raw, dict) or not raw:
            self.fail(
                path,
                f"expected a non-empty mapping of value to shard name, got {_describe(raw)}",
            )
        values: dict[str, str] = {}
        spelled: dict[str, str] = {}
        for key, shard in raw.items():
            text = _scalar_text(key)
            if text is None:
                self.fail(
                    path,
                    f"expected string or number values, got the key {_describe(key)} "
                    "(quote it in YAML)",
                )
            vpath = _key(path, text)
            what = "an integer" if key_type in INTEGER_KEY_TYPES else "a uuid"
            typed = self.typed_value(text, vpath, key_type, what)
            if typed in values:
                first = spelled[typed]
                also = "" if first == text else f" (same {key_type} value as {first!r})"
                self.fail(vpath, f"duplicate value {text!r}{also}")
            spelled[typed] = text
            text = typed
            values[text] = self.shard_ref(shard, vpath, shard_names)
        return values

    def ranges(
        self, raw: object, path: str, shard_names: Sequence[str], key_type: KeyType | None = None
    ) -> tuple[tuple[RangeSpec, ...], RangeKind]:
        if not isinstance(raw, list) or not raw:
            self.fail(
                path,
                f"expected a non-empty list of {{from, to, shard}} ranges, got {_describe(raw)}",
            )
        specs: list[RangeSpec] = []
        for i, item in enumerate(raw):
            ipath = _index(path, i)
            m = self.mapping(item, ipath, ("from", "to", "shard"))
            bounds: list[str | None] = []
            for k in ("from", "to"):
                if m.get(k) is None:
                    bounds.append(None)
                    continue
                text = _scalar_text(m[k])
                if text is None:
                    self.fail(
                        _key(ipath, k),
                        f"expected a string, number or date bound, got {_describe(m[k])}",
                    )
                if key_type in INTEGER_KEY_TYPES:
                    text = self.typed_value(text, _key(ipath, k), key_type, "an integer bound")
                bounds.append(text)
            if "shard" not in m:
                self.fail(_key(ipath, "shard"), "required; expected a shard name, got none")
            shard = self.shard_ref(m["shard"], _key(ipath, "shard"), shard_names)
            specs.append(RangeSpec(lo=bounds[0], hi=bounds[1], shard=shard))

        all_bounds = [b for s in specs for b in (s.lo, s.hi) if b is not None]
        # a text key compares as text whatever its bounds look like
        kind: RangeKind = "text" if key_type == "text" else _range_kind(all_bounds)
        if kind == "timestamp":
            aware = {range_bound_key(kind, b).tzinfo is not None for b in all_bounds}
            if len(aware) > 1:
                self.fail(path, "expected bounds all with or all without a time zone, got a mix")

        def key(bound: str | None, low: bool) -> tuple[int, Any]:
            if bound is None:
                return (-1, 0) if low else (1, 0)
            return (0, range_bound_key(kind, bound))

        for i, s in enumerate(specs):
            if s.lo is not None and s.hi is not None and key(s.lo, True) >= key(s.hi, False):
                self.fail(
                    _index(path, i),
                    f"expected from < to, got the empty range {_range_text(s)}",
                )
        order = sorted(range(len(specs)), key=lambda i: key(specs[i].lo, True))
        for a, b in itertools.pairwise(order):
            if key(specs[b].lo, True) < key(specs[a].hi, False):
                first, second = sorted((a, b))
                self.fail(
                    _index(path, second),
                    f"range {_range_text(specs[second])} overlaps ranges[{first}] "
                    f"{_range_text(specs[first])} (compared as {kind})",
                )
        return tuple(specs), kind


def _range_text(s: RangeSpec) -> str:
    lo = "-inf" if s.lo is None else s.lo
    hi = "+inf" if s.hi is None else s.hi
    return f"[{lo}, {hi})"


def parse_config(data: object, source: str = "<config>", base_dir: Path | None = None) -> Config:
    """Validate already-loaded YAML data (``source`` names it in errors).

    Relative TLS paths resolve against ``base_dir`` (left relative when it is None).
    Raises :class:`ConfigError` on the first problem found.
    """
    p = _Parser(source, base_dir)
    if data is None:
        p.fail("", "expected a mapping of settings at the top level, got an empty document")
    top = p.mapping(data, "", _TOP_KEYS)
    listen = p.listen(top.get("listen"))
    if "database" not in top:
        p.fail("database", "required; expected the logical database name clients connect to")
    database = p.string(top["database"], "database", "a database name")
    admin = p.admin(top.get("admin"), database)
    metrics = p.metrics(top.get("metrics", {}), listen)
    auth = p.auth(top.get("auth"))
    p.admin_users(admin, auth)
    tls = p.tls(top.get("tls"))
    pool = p.pool(top.get("pool"))
    shards = p.shards(top.get("shards"))
    names = tuple(s.name for s in shards)
    default_shard = names[0]
    if top.get("default_shard") is not None:
        default_shard = p.shard_ref(top["default_shard"], "default_shard", names)
    sharding = p.sharding(top.get("sharding"), names)
    unparsed = cast(Unparsed, p.choice(top.get("unparsed", "default"), "unparsed", UNPARSED_MODES))
    tables = p.tables(top.get("tables"), names)
    merge_map = p.optional_mapping(top.get("merge"), "merge", ("max_groups",))
    merge = MergeConfig(max_groups=p.integer(
        merge_map.get("max_groups", MergeConfig().max_groups), "merge.max_groups", 1, None,
        "an integer >= 1"))
    txn_map = p.optional_mapping(top.get("transactions"), "transactions", ("mode", "instance"))
    txn_mode = p.choice(txn_map.get("mode", "two_phase"), "transactions.mode",
                        ("two_phase", "best_effort"))
    instance = txn_map.get("instance")
    if instance is not None and (not isinstance(instance, str) or not re.fullmatch(
            r"[A-Za-z0-9_.-]{1,40}", instance)):
        p.fail("transactions.instance", "expected 1-40 letters, digits, '_', '.' or '-'")
    transactions = TransactionsConfig(mode=str(txn_mode), instance=instance)
    health_map = p.optional_mapping(top.get("health"), "health", ("check_interval",))
    health = HealthConfig(check_interval=p.seconds(
        health_map.get("check_interval", HealthConfig().check_interval),
        "health.check_interval", allow_zero=False))
    reads_map = p.optional_mapping(top.get("reads"), "reads",
                                   ("max_replica_lag", "read_your_writes"))
    reads = ReadsConfig(
        max_replica_lag=p.seconds(reads_map.get("max_replica_lag", 1.0),
                                  "reads.max_replica_lag", allow_zero=True),
        read_your_writes=p.seconds(reads_map.get("read_your_writes", 0.0),
                                   "reads.read_your_writes", allow_zero=True))
    return Config(
        source=source,
        listen=listen,
        database=database,
        admin=admin,
        metrics=metrics,
        auth=auth,
        tls=tls,
        pool=pool,
        shards=shards,
        default_shard=default_shard,
        sharding=sharding,
        tables=MappingProxyType(tables),
        unparsed=unparsed,
        merge=merge,
        transactions=transactions,
        health=health,
        reads=reads,
    )


class _Loader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys instead of silently keeping the last one."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:
                continue  # unhashable key: let the base class report it
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    f"found duplicate key {key!r}",
                    key_node.start_mark,
                )
        return super().construct_mapping(node, deep=deep)


def load_config(path: str | Path) -> Config:
    """Read and validate the YAML topology at ``path``; raises :class:`ConfigError`."""
    file = Path(path)
    source = str(path)
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(source, "", f"cannot read the file: {e}") from None
    try:
        data = yaml.load(text, Loader=_Loader)  # _Loader is a SafeLoader subclass
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = e.problem or e.context or "syntax error"
        raise ConfigError(source, "", f"invalid YAML{where}: {problem}") from None
    except yaml.YAMLError as e:
        raise ConfigError(source, "", f"invalid YAML: {e}") from None
    return parse_config(data, source=source, base_dir=file.absolute().parent)


# --------------------------------------------------------------------------- summary


def summarize(cfg: Config) -> str:
    """A human summary for ``shardwire check`` (never shows passwords)."""
    lines = [f"config: {cfg.source}"]
    lines.append(f"listen: {_hostport(cfg.listen.host, cfg.listen.port)}  database: {cfg.database}")
    admins = ", ".join(cfg.admin.users) or "(none)"
    lines.append(f"admin: database {cfg.admin.database}, users {admins}")
    if cfg.metrics.enabled:
        lines.append(f"metrics: {_hostport(cfg.metrics.host, cfg.metrics.port)}")
    else:
        lines.append("metrics: disabled")
    users = []
    for u in cfg.auth.users.values():
        extra = f" (as {u.server_user} on shards)" if u.server_user else ""
        users.append(u.name + extra)
    lines.append(f"auth: {cfg.auth.method}, users: {', '.join(users) or '(any)'}")
    lines.append(f"tls: cert {cfg.tls.cert}, key {cfg.tls.key}" if cfg.tls else "tls: off")
    pl = cfg.pool
    lines.append(
        f"pool: {pl.mode} mode, size {pl.size} per shard; connect_timeout {pl.connect_timeout:g}s,"
        f" checkout_timeout {pl.checkout_timeout:g}s, idle_timeout {pl.idle_timeout:g}s,"
        f" shutdown_timeout {pl.shutdown_timeout:g}s, server_lifetime {pl.server_lifetime:g}s"
    )
    unparsed = (
        f"sent to default shard {cfg.default_shard}"
        if cfg.unparsed == "default"
        else "rejected with an error"
    )
    lines.append(f"unparsed SQL: {unparsed}")
    lines.append(f"shards: {len(cfg.shards)}, buckets: {cfg.sharding.buckets}")
    for s in cfg.shards:
        owned = cfg.sharding.buckets_of(s.name)
        mark = " (default)" if s.name == cfg.default_shard else ""
        ranges = f" [{format_ranges(owned)}]" if owned else ""
        lines.append(f"  {s.name}{mark}: {s.primary.redacted()}")
        lines.append(f"    buckets: {len(owned)}{ranges}")
        for r in s.replicas:
            lines.append(f"    replica: {r.redacted()}")
    lines.append(f"tables: {len(cfg.tables)}" + ("" if cfg.tables else " (all unlisted)"))
    for name in sorted(cfg.tables):
        lines.append(f"  {name}: {_table_text(cfg.tables[name])}")
    return "\n".join(lines)


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _table_text(t: Table) -> str:
    if t.strategy == "reference":
        return "reference (copied to every shard)"
    text = f"{t.strategy} on {t.shard_key}"
    if t.strategy == "list":
        text += " (" + ", ".join(f"{v} -> {s}" for v, s in t.values.items()) + ")"
    elif t.strategy == "range":
        text += (
            f" ({t.range_kind}: "
            + ", ".join(f"{_range_text(r)} -> {r.shard}" for r in t.ranges)
            + ")"
        )
    if t.default is not None:
        text += f", default {t.default}"
    if t.key_type is not None:
        text += f", key_type {t.key_type}"
    return text
