"""Session settings that must follow a client across pooled server connections.

Two kinds (see README "Session state in transaction mode"):
  * GUC_REPORT parameters (client_encoding, DateStyle, TimeZone, application_name, ...):
    the server itself reports every change with ParameterStatus, so they are tracked from
    those messages, exactly, including reverts on ROLLBACK.
  * Everything else (search_path, statement_timeout, work_mem, role, ...): tracked from the
    SET / RESET statements the client runs, applied when they commit.
Pure functions; no I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Reported parameters a client may set and that shardwire re-applies on checkout.
SETTABLE_REPORTED = frozenset({
    "application_name", "client_encoding", "DateStyle", "IntervalStyle", "TimeZone",
    "standard_conforming_strings", "default_transaction_read_only",
})
# Postgres folds GUC names to lower case; reported names keep their canonical spelling.
CANONICAL = {name.lower(): name for name in SETTABLE_REPORTED}
# Startup-packet keys that are not settings.
STARTUP_NON_SETTINGS = frozenset({"user", "database", "replication", "options"})


@dataclass(frozen=True, slots=True)
class SettingChange:
    """One tracked SET/RESET: name (lower case), value SQL text, or None to reset.

    ``reset_all`` stands for RESET ALL / DISCARD ALL.
    """

    name: str
    value: str | None
    reset_all: bool = False


_SET_RE = re.compile(
    r"""^\s*set\s+(?:session\s+)?(?!local\b)
        (?:(?P<tz>time\s+zone)\s+(?P<tzval>.+?)
          |(?P<role>role|session\s+authorization)\s+(?P<roleval>.+?)
          |(?P<name>[a-z_][a-z0-9_$]*(?:\.[a-z_][a-z0-9_$]*)?)\s*(?:=|\s+to\s+)\s*(?P<value>.+?)
        )\s*;?\s*$""",
    re.IGNORECASE | re.DOTALL | re.VERBOSE,
)
_RESET_RE = re.compile(
    r"^\s*reset\s+(?:(?P<all>all)|(?P<name>[a-z_][a-z0-9_$]*(?:\.[a-z_][a-z0-9_$]*)?))\s*;?\s*$",
    re.IGNORECASE,
)
_DISCARD_RE = re.compile(r"^\s*discard\s+all\s*;?\s*$", re.IGNORECASE)


def parse_setting(sql: str) -> SettingChange | None:
    """The tracked change a single statement makes, or None (not a session SET/RESET).

    SET LOCAL is transaction-scoped and needs no tracking. Reported parameters return None
    too: their ParameterStatus messages track them.
    """
    head = sql.lstrip()[:8].lower()
    if head.startswith("set"):
        match = _SET_RE.match(sql)
        if match is None:
            return None
        if match["tz"]:
            return None  # TimeZone is reported
        if match["role"]:
            kind = "role" if match["role"].lower() == "role" else "session_authorization"
            if kind == "session_authorization":
                return None  # reported
            return _change(kind, match["roleval"])
        name = match["name"].lower()
        if name in CANONICAL:
            return None
        return _change(name, match["value"])
    if head.startswith("reset"):
        match = _RESET_RE.match(sql)
        if match is None:
            return None
        if match["all"]:
            return SettingChange("", None, reset_all=True)
        name = match["name"].lower()
        return None if name in CANONICAL else SettingChange(name, None)
    if head.startswith("discard") and _DISCARD_RE.match(sql):
        return SettingChange("", None, reset_all=True)
    return None


def _change(name: str, value: str) -> SettingChange:
    value = value.strip()
    if value.lower() == "default":
        return SettingChange(name, None)
    return SettingChange(name, value)


def quote_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def apply_change(settings: dict[str, str], change: SettingChange) -> None:
    if change.reset_all:
        settings.clear()
    elif change.value is None:
        settings.pop(change.name, None)
    else:
        settings[change.name] = change.value


def sync_sql(want_params: dict[str, str], have_params: dict[str, str],
             want: dict[str, str], have: dict[str, str]) -> str:
    """SQL that brings a server connection's session state to what the client expects."""
    parts: list[str] = []
    for name in SETTABLE_REPORTED:
        value = want_params.get(name)
        if value is not None and have_params.get(name) != value:
            parts.append(f"SET {name} TO {quote_literal(value)}")
    for name, value in want.items():
        if have.get(name) != value:
            parts.append(f"SET {name} TO {value}")
    for name in have:
        if name not in want:
            parts.append(f"RESET {name}")
    return ";".join(parts)


def startup_settings(params: dict[str, str]) -> dict[str, str]:
    """Settings requested in the startup packet, `options` (-c name=value) included."""
    out: dict[str, str] = {}
    for key, value in params.items():
        if key not in STARTUP_NON_SETTINGS:
            out[key] = value
    options = params.get("options", "")
    tokens = options.split()
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if token == "-c" and i + 1 < len(tokens):
            token = "--" + tokens[i + 1]
            i += 1
        elif token.startswith("-c"):
            token = "--" + token[2:]
        if token.startswith("--") and "=" in token:
            name, _, value = token[2:].partition("=")
            out[name.replace("-", "_")] = value.replace("\\ ", " ")
        i += 1
    return out


# Statements whose effect outlives a transaction and so cannot be shared in transaction mode.
_SESSION_ONLY = re.compile(
    r"^\s*(?:listen\b|prepare\s|declare\s[^;]*\bwith\s+hold\b|"
    r"create\s+(?:(?:global|local)\s+)?(?:temp|temporary)\s+table\b)",
    re.IGNORECASE,
)
_ADVISORY = re.compile(r"\bpg_(?:try_)?advisory_lock(?:_shared)?\s*\(", re.IGNORECASE)


def session_only_feature(sql: str) -> str | None:
    """Name the session-scoped feature `sql` uses, or None. Cheap prefilter first."""
    head = sql.lstrip()[:10].lower()
    if head[:1] in ("l", "p", "d", "c"):
        match = _SESSION_ONLY.match(sql)
        if match is not None:
            return " ".join(match.group(0).split()[:2]).upper()
    if "advisory_lock" in sql and _ADVISORY.search(sql):
        return "session-level advisory locks (pg_advisory_lock)"
    return None
