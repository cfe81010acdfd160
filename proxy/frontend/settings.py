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


# ------------------------------------------------------------------ lexical helpers
# Postgres' lexer rules (scan.l) for what the parsers here must step over: white space,
# comments (`--` to the end of the line; `/* */`, which nest), quoted text ('...' with ''
# for a quote, E'...' with backslash escapes too, "identifiers", $tag$ dollar quotes $tag$).

_BLANKS = re.compile(r"(?:\s|--[^\n\r]*)*")
_EOL = re.compile(r"[\n\r]")
_ESCAPE_STRING_END = re.compile(r"[\\']")
_DOLLAR_TAG = re.compile(r"\$(?:[^\W\d]\w*)?\$")
# Where quoted text or a comment may start (`$` only sometimes: see skip_token).
_SPECIAL = re.compile(r"""['"$]|--|/\*""")


def _ident_char(ch: str) -> bool:
    """Whether `ch` continues an identifier or keyword (so E' or $ after it start nothing)."""
    return ch.isalnum() or ch == "_" or ch == "$" or ch >= "\x80"


def _block_comment_end(sql: str, i: int) -> int:
    """Index just past the (nested) block comment opening at `i`; len(sql) if unterminated."""
    depth = 1
    j = i + 2
    while True:
        close = sql.find("*/", j)
        if close == -1:
            return len(sql)
        opening = sql.find("/*", j, close + 1)  # "/*/" opens: the lexer takes "/*" first
        if opening != -1:
            depth += 1
            j = opening + 2
            continue
        depth -= 1
        j = close + 2
        if depth == 0:
            return j


def skip_token(sql: str, i: int) -> int:
    """Index just past the quoted text or comment starting at `i` (len(sql) when it is
    unterminated), or i + 1 when nothing starts there (a `$` that opens no dollar quote)."""
    ch = sql[i]
    n = len(sql)
    if ch == "'":
        if i and sql[i - 1] in "eE" and (i == 1 or not _ident_char(sql[i - 2])):
            j = i + 1  # E'...': a backslash escapes the next character
            while True:
                match = _ESCAPE_STRING_END.search(sql, j)
                if match is None:
                    return n
                j = match.start()
                if sql[j] == "\\" or sql.startswith("''", j):
                    j += 2
                    continue
                return j + 1
        ch = "'"
    if ch == "'" or ch == '"':
        end = sql.find(ch, i + 1)
        while end != -1 and end + 1 < n and sql[end + 1] == ch:
            end = sql.find(ch, end + 2)
        return n if end == -1 else end + 1
    if ch == "-":  # "--"
        match = _EOL.search(sql, i + 2)
        return n if match is None else match.start()
    if ch == "/":  # "/*"
        return _block_comment_end(sql, i)
    if ch == "$" and not (i and _ident_char(sql[i - 1])):
        match = _DOLLAR_TAG.match(sql, i)
        if match is not None:
            tag = match.group()
            end = sql.find(tag, match.end())
            return n if end == -1 else end + len(tag)
    return i + 1


def _start(sql: str) -> int:
    """Index of the first character of `sql` that is neither white space nor in a comment."""
    ch = sql[:1]
    if ch.isspace():
        i = len(sql) - len(sql.lstrip())
        ch = sql[i:i + 1]
    else:
        i = 0
    if ch != "-" and ch != "/":
        return i  # the usual case: no comment
    while True:
        i = _BLANKS.match(sql, i).end()  # type: ignore[union-attr]
        if not sql.startswith("/*", i):
            return i
        i = _block_comment_end(sql, i)


def _strip_comments(sql: str) -> str:
    """`sql` with each comment outside quoted text replaced by a space, as the lexer sees it."""
    parts: list[str] = []
    last = pos = 0
    search = _SPECIAL.search
    while (match := search(sql, pos)) is not None:
        i = match.start()
        pos = skip_token(sql, i)
        if sql[i] == "-" or sql[i] == "/":
            parts.append(sql[last:i])
            parts.append(" ")
            last = pos
    if not parts:
        return sql
    parts.append(sql[last:])
    return "".join(parts)


def _body(sql: str, i: int) -> str:
    """The statement from its first significant character `i` on, comments as spaces."""
    body = sql[i:] if i else sql
    if "--" in body or "/*" in body:
        body = _strip_comments(body)
    return body


# --------------------------------------------------------------------------- SET / RESET

# A setting name: Postgres' var_name (ColId [. ColId ...]), unquoted.
_NAME = r"[a-z_][a-z0-9_$]*(?:\.[a-z_][a-z0-9_$]*)*"
_SET_RE = re.compile(
    rf"""set\s+(?:session\s+)?(?!local\b)
        (?:(?P<tz>time\s+zone)\s+(?P<tzval>.+?)
          |(?P<role>role|session\s+authorization)(?:\s*=\s*|\s+to\s+|\s+)(?P<roleval>.+?)
          |schema(?=[\s'])\s*(?P<schemaval>(?:[eE]|[uU]&)?'.+?|\$.+?)
          |xml\s+option\s+(?P<xmlval>document|content)
          |(?P<name>{_NAME})\s*(?:=|\s+to\s+)\s*(?P<value>.+?)
        )\s*;?\s*$""",
    re.IGNORECASE | re.DOTALL | re.VERBOSE,
)
_RESET_RE = re.compile(
    rf"reset\s+(?:(?P<all>all)|(?P<name>{_NAME}))\s*;?\s*$",
    re.IGNORECASE,
)
_DISCARD_RE = re.compile(r"discard\s+all\s*;?\s*$", re.IGNORECASE)


def parse_setting(sql: str) -> SettingChange | None:
    """The tracked change a single statement makes, or None (not a session SET/RESET).

    SET LOCAL is transaction-scoped and needs no tracking. Reported parameters return None
    too: their ParameterStatus messages track them. Comments count as white space; the
    value is SQL text without them.
    """
    i = 0 if sql[:1].isalpha() else _start(sql)
    return _parse_setting(sql, i, sql[i:i + 3].lower())


def _parse_setting(sql: str, i: int, word: str) -> SettingChange | None:
    """parse_setting for the statement starting at `i` with `word` (lower case, 3 chars)."""
    if word == "set":
        match = _SET_RE.match(_body(sql, i))
        if match is None:
            return None
        if match["tz"]:
            return None  # TimeZone is reported
        if match["role"]:
            if match["role"].lower() != "role":
                return None  # session_authorization is reported
            return _change("role", match["roleval"])
        if match["schemaval"]:
            return _change("search_path", match["schemaval"])
        if match["xmlval"]:
            return SettingChange("xmloption", match["xmlval"])
        name = match["name"].lower()
        if name in CANONICAL:
            return None
        return _change(name, match["value"])
    if word == "res":
        match = _RESET_RE.match(_body(sql, i))
        if match is None:
            return None
        if match["all"]:
            return SettingChange("", None, reset_all=True)
        name = match["name"].lower()
        return None if name in CANONICAL else SettingChange(name, None)
    if word == "dis" and _DISCARD_RE.match(_body(sql, i)):
        return SettingChange("", None, reset_all=True)
    return None


@dataclass(frozen=True, slots=True)
class Savepoint:
    """SAVEPOINT / RELEASE / ROLLBACK TO: how a transaction's pending SETs move.

    ``op`` is "savepoint", "release" or "rollback"; ``name`` as Postgres folds it."""

    op: str
    name: str


_SAVEPOINT_RE = re.compile(
    r"""(?:(?P<sp>savepoint)|release(?:\s+savepoint)?
        |rollback(?:\s+(?:work|transaction))?\s+to(?:\s+savepoint)?)
        \s+(?P<name>"(?:[^"]|"")+"|[a-z_][a-z0-9_$]*)\s*;?\s*$""",
    re.IGNORECASE | re.VERBOSE,
)


def parse_savepoint(sql: str) -> Savepoint | None:
    """The savepoint a statement creates, releases or rolls back to, or None."""
    i = 0 if sql[:1].isalpha() else _start(sql)
    word = sql[i:i + 3].lower()
    if word != "sav" and word != "rel" and word != "rol":  # cheap: most are SELECT/SET
        return None
    return _parse_savepoint(sql, i, word)


def _parse_savepoint(sql: str, i: int, word: str) -> Savepoint | None:
    match = _SAVEPOINT_RE.match(_body(sql, i))
    if match is None:
        return None
    name = match["name"]
    name = name[1:-1].replace('""', '"') if name.startswith('"') else name.lower()
    return Savepoint("savepoint" if word == "sav" else "release" if word == "rel" else "rollback",
                     name)


def parse_tracked(sql: str) -> SettingChange | Savepoint | None:
    """What the session tracks from one statement: a setting change or a savepoint move."""
    i = 0 if sql[:1].isalpha() else _start(sql)
    word = sql[i:i + 3].lower()
    if word == "set" or word == "res" or word == "dis":
        return _parse_setting(sql, i, word)
    if word == "sav" or word == "rel" or word == "rol":
        return _parse_savepoint(sql, i, word)
    return None  # cheap: most statements are SELECT, INSERT, ...


_RESET_TARGET_RE = re.compile(
    rf"""(?:reset\s+(?P<reset>{_NAME})
        |(?P<discard>discard\s+all)
        |set\s+(?:session\s+)?(?:(?P<tz>time\s+zone)\s+(?:default|local)
          |(?P<set>{_NAME})\s*(?:=|\s+to\s+)\s*default))
        \s*;?\s*$""",
    re.IGNORECASE | re.VERBOSE,
)


def reset_target(sql: str) -> str | None:
    """The setting a statement returns to its session default (lower case; "" for all of
    them: RESET ALL, DISCARD ALL), or None. Unlike parse_setting, reported parameters
    count too: Postgres resets them to the client's startup value, not the server's."""
    i = 0 if sql[:1].isalpha() else _start(sql)
    head = sql[i:i + 3].lower()
    if head != "res" and head != "set" and head != "dis":  # cheap: SELECT goes no further
        return None
    match = _RESET_TARGET_RE.match(_body(sql, i))
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
    """A string literal, like Postgres' quote_literal: with backslashes it takes the E''
    form (backslashes doubled), which reads the same whatever standard_conforming_strings."""
    if "\\" in value:
        return "E'" + value.replace("\\", "\\\\").replace("'", "''") + "'"
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
    """Settings requested in the startup packet, `options` (-c name=value) included.

    Like Postgres (process_startup_options): `options` first, then the explicit parameters,
    which win. `_pq_.*` keys are protocol options, not settings."""
    out = _startup_options(params["options"]) if params.get("options") else {}
    explicit = {key: value for key, value in params.items()
                if key not in STARTUP_NON_SETTINGS and not key.startswith("_pq_.")}
    if out and explicit:  # GUC names are case-insensitive
        names = {key.lower() for key in explicit}
        out = {key: value for key, value in out.items() if key.lower() not in names}
    out.update(explicit)
    return out


# Postgres' command-line switches (process_postgres_switches) that take an argument.
_SWITCHES_WITH_ARG = frozenset("BCcDdfhkNprStvW-")
_C_SPACE = frozenset(" \t\n\v\f\r")  # C isspace()


def _split_options(options: str) -> list[str]:
    """Postgres' pg_split_opts: words split on white space; a backslash makes the next
    character (white space or a backslash too) part of the word."""
    words: list[str] = []
    word: list[str] = []
    in_word = escaped = False
    for ch in options:
        if escaped:
            word.append(ch)
            escaped = False
        elif ch == "\\":
            in_word = escaped = True
        elif ch in _C_SPACE:
            if in_word:
                words.append("".join(word))
                word.clear()
                in_word = False
        else:
            word.append(ch)
            in_word = True
    if in_word:
        words.append("".join(word))
    return words


def _startup_options(options: str) -> dict[str, str]:
    """The `-c name=value` / `--name=value` settings in a startup `options` string, read the
    way Postgres' getopt does; other switches are skipped. Where Postgres would refuse the
    connection (a switch missing its argument, a stray word), what was read so far."""
    out: dict[str, str] = {}
    args = _split_options(options)
    k = 0
    while k < len(args):
        arg = args[k]
        k += 1
        if len(arg) < 2 or arg[0] != "-" or arg == "--":
            break  # end of the switches
        for j in range(1, len(arg)):
            switch = arg[j]
            if switch not in _SWITCHES_WITH_ARG:
                continue
            if j + 1 < len(arg):
                value = arg[j + 1:]
            elif k < len(args):
                value = args[k]
                k += 1
            else:
                return out
            if switch == "c" or switch == "-":
                name, equals, value = value.partition("=")
                if equals:
                    out[name.replace("-", "_")] = value
            break
    return out


# Statements whose effect outlives a transaction and so cannot be shared in transaction mode.
_SESSION_ONLY = re.compile(
    r"(?:listen\b|prepare\s|declare\s[^;]*\bwith\s+hold\b|"
    r"create\s+(?:(?:global|local)\s+)?(?:temp|temporary)\s+table\b)",
    re.IGNORECASE,
)
_SESSION_ONLY_HEADS = frozenset("lLpPdDcC")
_ADVISORY = re.compile(r"\bpg_(?:try_)?advisory_lock(?:_shared)?\s*\(", re.IGNORECASE)


def session_only_feature(sql: str) -> str | None:
    """Name the session-scoped feature `sql` uses, or None. Cheap prefilter first."""
    i = 0 if sql[:1].isalpha() else _start(sql)
    if sql[i:i + 1] in _SESSION_ONLY_HEADS:
        match = _SESSION_ONLY.match(sql, i)
        if match is not None:
            words = match.group(0).split()
            if words[0].lower() == "declare":  # not the cursor's name: what is refused
                return "DECLARE ... WITH HOLD"
            return " ".join(words[:2]).upper()
    # Function names are case-insensitive; lower() costs about as much as one more `in`.
    if "advisory_lock" in sql.lower() and _ADVISORY.search(sql):
        return "session-level advisory locks (pg_advisory_lock)"
    return None
