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


@dataclass(frozen=True, slots=True)
class Savepoint:
    """SAVEPOINT / RELEASE / ROLLBACK TO: how a transaction's pending SETs move.

    ``op`` is "savepoint", "release" or "rollback"; ``name`` as Postgres folds it."""

    op: str
    name: str


_SAVEPOINT_RE = re.compile(
    r"""^\s*(?:(?P<sp>savepoint)|release(?:\s+savepoint)?
        |rollback(?:\s+(?:work|transaction))?\s+to(?:\s+savepoint)?)
        \s+(?P<name>"(?:[^"]|"")+"|[a-z_][a-z0-9_$]*)\s*;?\s*$""",
    re.IGNORECASE | re.VERBOSE,
)


def parse_savepoint(sql: str) -> Savepoint | None:
    """The savepoint a statement creates, releases or rolls back to, or None."""
    head = sql.lstrip()[:3].lower()
    if head != "sav" and head != "rel" and head != "rol":  # cheap: most are SELECT/SET
        return None
    match = _SAVEPOINT_RE.match(sql)
    if match is None:
        return None
    name = match["name"]
    name = name[1:-1].replace('""', '"') if name.startswith('"') else name.lower()
    word = match.group(0).lstrip()[:3].lower()
    return Savepoint("savepoint" if word == "sav" else "release" if word == "rel" else "rollback",
                     name)


def parse_tracked(sql: str) -> SettingChange | Savepoint | None:
    """What the session tracks from one statement: a setting change or a savepoint move."""
    return parse_setting(sql) or parse_savepoint(sql)


_RESET_TARGET_RE = re.compile(
    r"""^\s*(?:reset\s+(?P<reset>[a-z_][a-z0-9_$]*(?:\.[a-z_][a-z0-9_$]*)?)
        |(?P<discard>discard\s+all)
        |set\s+(?:session\s+)?(?:(?P<tz>time\s+zone)\s+(?:default|local)
          |(?P<set>[a-z_][a-z0-9_$]*(?:\.[a-z_][a-z0-9_$]*)?)\s*(?:=|\s+to\s+)\s*default))
        \s*;?\s*$""",
    re.IGNORECASE | re.VERBOSE,
)


def reset_target(sql: str) -> str | None:
    """The setting a statement returns to its session default (lower case; "" for all of
    them: RESET ALL, DISCARD ALL), or None. Unlike parse_setting, reported parameters
    count too: Postgres resets them to the client's startup value, not the server's."""
    head = sql.lstrip()[:1]
    if head not in ("r", "R", "d", "D", "s", "S"):
        return None
    match = _RESET_TARGET_RE.match(sql)
    if match is None:
        return None
    if match["discard"]:
        return ""
    if match["tz"]:
        return "timezone"
    name = (match["reset"] or match["set"]).lower()
    return "" if name == "all" else name


# Settings whose SET arguments are list elements quoted as identifiers (GUC_LIST_QUOTE):
# `SET search_path TO 'a,b'` names one schema "a,b", but `-c search_path=a,b` two.
LIST_QUOTE = frozenset({"search_path", "temp_tablespaces", "session_preload_libraries",
                        "local_preload_libraries"})


def startup_value_sql(name: str, raw: str) -> str:
    """The SET argument (SQL text) meaning what `raw` means in the startup packet.

    A startup value is parsed like postgresql.conf text; for list settings that is
    SplitIdentifierString (unquoted names folded to lower case, "quoted" kept), so it
    becomes a list of literals, which SET takes as those exact elements."""
    if name.lower() in LIST_QUOTE:
        items = _split_identifier_list(raw)
        if items:
            return ", ".join(quote_literal(item) for item in items)
    return quote_literal(raw)


def _split_identifier_list(raw: str) -> list[str] | None:
    """Postgres' SplitIdentifierString(raw, ','); None where Postgres would reject it."""
    items: list[str] = []
    i, n = 0, len(raw)
    while True:
        while i < n and raw[i].isspace():
            i += 1
        if i < n and raw[i] == '"':
            j = i + 1
            item = []
            while True:
                end = raw.find('"', j)
                if end == -1:
                    return None
                item.append(raw[j:end])
                if end + 1 < n and raw[end + 1] == '"':
                    item.append('"')
                    j = end + 2
                    continue
                i = end + 1
                break
            items.append("".join(item))
        else:
            j = i
            while j < n and raw[j] != "," and not raw[j].isspace():
                j += 1
            if j == i:
                return None  # empty element
            items.append(raw[i:j].lower())
            i = j
        while i < n and raw[i].isspace():
            i += 1
        if i == n:
            return items
        if raw[i] != ",":
            return None
        i += 1


def _change(name: str, value: str) -> SettingChange:
    value = value.strip()
    if value.lower() == "default":
        return SettingChange(name, None)
    return SettingChange(name, value)


def quote_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def apply_change(settings: dict[str, str], change: SettingChange,
                 defaults: dict[str, str] | None = None) -> None:
    """Apply a committed change. `defaults` are the session's startup settings, which
    RESET / RESET ALL / DISCARD ALL return to (None: the server's own defaults)."""
    if change.reset_all:
        settings.clear()
        if defaults:
            settings.update(defaults)
    elif change.value is None:
        if defaults and change.name in defaults:
            settings[change.name] = defaults[change.name]
        else:
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
            words = match.group(0).split()
            if words[0].lower() == "declare":  # not the cursor's name: what is refused
                return "DECLARE ... WITH HOLD"
            return " ".join(words[:2]).upper()
    if "advisory_lock" in sql and _ADVISORY.search(sql):
        return "session-level advisory locks (pg_advisory_lock)"
    return None
