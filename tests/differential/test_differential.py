"""Differential test: every query of queries.yaml runs on one plain Postgres and through
shardwire over four shards holding the same data (see conftest.py and dataset.py), with
psycopg (text results, exact bytes as the server sent them) and asyncpg (binary results),
and the answers must be the same: column names, type OIDs, command tag and values, as an
ordered list when the case's ORDER BY fully determines the order (``order: exact``), else
as a multiset. Cases with ``expect: 0A000`` must be refused by the proxy with SQLSTATE
0A000 (and must run on plain Postgres, so the case means something).

Writes (INSERT/UPDATE/DELETE) run inside a transaction that is rolled back on both sides;
their command tags, RETURNING rows and an optional ``check`` query run in the same
transaction are compared.

The data file's format (tests/differential/queries.yaml), one mapping per case:

  id:     unique, ``<construct>-<what>``; the prefix groups the cases by construct
  sql:    one statement; parameters are written ``$1``, ``$2`` (both drivers send them
          with the extended protocol; psycopg sends statements without parameters with
          the simple protocol)
  params: optional list (ints, strings, lists of ints)
  order:  exact | multiset (exact only when ORDER BY fully determines the row order:
          include tie-breakers)
  expect: same | 0A000
  check:  optional, for writes: a query run afterwards in the same transaction
  settings: optional mapping of session settings (``SET name = 'value'`` before the case,
          ``RESET name`` after it, on both sides: output formats the merge must follow)
  note:   optional (required for 0A000 cases: why no exact answer can be given)

Every bug found later adds its case here. ``test_expected_answers_are_deterministic``
guards the data file itself: each case's answer on plain Postgres must not change when the
rows are stored in the opposite order and the planner may not use hash aggregation or
index scans (a missing tie-breaker, a LIMIT cutting through ties or a group key spelled two
ways shows up there, not as a flaky proxy failure).
"""

from __future__ import annotations

import datetime as dt
import re
from collections import Counter
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

import asyncpg
import psycopg
import pytest
import yaml

from tests.differential.conftest import AsyncpgClients, DiffEnv, PsycopgClients
from tests.integration.conftest import assert_clean_log

QUERY_FILE = Path(__file__).with_name("queries.yaml")
MIN_CASES = 220
_FIELDS = {"id", "sql", "params", "order", "expect", "note", "check", "settings"}
_WRITE = re.compile(r"\s*(?:insert|update|delete)\b", re.IGNORECASE)
_SHOW_ROWS = 12


@dataclass(frozen=True)
class Case:
    id: str
    sql: str
    params: tuple[Any, ...]
    order: Literal["exact", "multiset"]
    expect: Literal["same", "0A000", "0A000-text"]
    note: str
    check: str | None
    settings: tuple[tuple[str, str], ...] = ()

    @property
    def write(self) -> bool:
        return _WRITE.match(self.sql) is not None

    @property
    def construct(self) -> str:
        return self.id.split("-", 1)[0]


def load_cases(path: Path = QUERY_FILE) -> list[Case]:
    """The cases of the data file; a malformed case fails collection with its id."""
    raw = yaml.safe_load(path.read_text())
    assert isinstance(raw, list), f"{path}: expected a list of cases"
    cases = []
    for i, item in enumerate(raw):
        name = item.get("id", "?") if isinstance(item, dict) else "?"
        where = f"{path.name} case #{i + 1} ({name})"
        assert isinstance(item, dict), f"{where}: not a mapping"
        unknown = set(item) - _FIELDS
        assert not unknown, f"{where}: unknown keys {sorted(unknown)}"
        assert isinstance(item.get("id"), str) and isinstance(item.get("sql"), str), \
            f"{where}: id and sql are required strings"
        expect = str(item.get("expect", "same"))
        # 0A000-text: refused when the results are asked in text format (psycopg), answered
        # exactly in binary (asyncpg): e.g. computed dates in a non-ISO DateStyle
        assert expect in ("same", "0A000", "0A000-text"), \
            f"{where}: expect must be same, 0A000 or 0A000-text"
        order = item.get("order", "multiset" if expect == "0A000" else None)
        assert order in ("exact", "multiset"), f"{where}: order must be exact or multiset"
        params = item.get("params") or []
        assert isinstance(params, list), f"{where}: params must be a list"
        settings = item.get("settings") or {}
        assert isinstance(settings, dict) and all(
            re.fullmatch(r"[A-Za-z_]+", k) for k in settings), f"{where}: bad settings"
        cases.append(Case(item["id"], item["sql"].strip(), tuple(params), order, expect,
                          str(item.get("note", "")), item.get("check"),
                          tuple((k, str(v)) for k, v in settings.items())))
    return cases


CASES = load_cases()
CASE_IDS = [c.id for c in CASES]


# ---------------------------------------------------------------------------- running


@dataclass
class Outcome:
    columns: tuple[tuple[str, int], ...] = ()
    rows: list[tuple[Hashable, ...]] = field(default_factory=list)
    tag: str | None = None
    check: list[tuple[Hashable, ...]] | None = None
    error: tuple[str, str] | None = None  # (SQLSTATE, message)


def _raw(res: Any) -> list[tuple[Hashable, ...]]:
    if res is None:
        return []
    return [tuple(None if (v := res.get_value(r, c)) is None else v.decode()
                  for c in range(res.nfields)) for r in range(res.ntuples)]


def _psycopg_statement(conn: psycopg.Connection[Any], case: Case, out: Outcome) -> None:
    with conn.cursor() as cur:
        cur.execute(case.sql, list(case.params) if case.params else None)
        out.columns = tuple((d.name, d.type_code) for d in cur.description or ())
        out.rows = _raw(cur.pgresult)
        out.tag = cur.statusmessage
        if case.check:
            cur.execute(case.check)
            out.check = _raw(cur.pgresult)


def set_sql(name: str, value: str) -> str:
    return f"SET {name} = '{value.replace(chr(39), chr(39) * 2)}'"


def run_psycopg(conn: psycopg.Connection[Any], case: Case) -> Outcome:
    """The case on a psycopg connection: text results, the server's exact bytes."""
    out = Outcome()
    for name, value in case.settings:
        conn.execute(set_sql(name, value))
    try:
        if case.write:
            with conn.transaction(force_rollback=True):
                _psycopg_statement(conn, case, out)
        else:
            _psycopg_statement(conn, case, out)
    except psycopg.Error as exc:
        if exc.sqlstate is None:  # not an answer from a server: the connection failed
            raise
        out.error = (exc.sqlstate, str(exc).strip())
    finally:
        for name, _ in case.settings:
            if not conn.broken:
                conn.execute(f"RESET {name}")
    return out


def canon(value: Any) -> Hashable:
    """A binary-decoded value in a form whose equality is exact: numerics keep their
    scale, floats compare by their repr (NaN, -0), timestamps by their ISO text."""
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, dt.datetime | dt.time):
        return value.isoformat()
    if isinstance(value, list | tuple):
        return tuple(canon(v) for v in value)
    return value


async def run_asyncpg(conn: asyncpg.Connection, case: Case) -> Outcome:
    """The case on an asyncpg connection: binary results, prepared and described first."""
    out = Outcome()
    tx = conn.transaction() if case.write else None
    for name, value in case.settings:
        await conn.execute(set_sql(name, value))
    try:
        if tx is not None:
            await tx.start()
        stmt = await conn.prepare(case.sql)
        out.columns = tuple((a.name, a.type.oid) for a in stmt.get_attributes())
        records = await stmt.fetch(*case.params)
        out.rows = [tuple(canon(v) for v in record) for record in records]
        out.tag = stmt.get_statusmsg()
        if case.check:
            out.check = [tuple(canon(v) for v in r) for r in await conn.fetch(case.check)]
    except asyncpg.PostgresError as exc:
        out.error = (str(exc.sqlstate), str(exc))
    finally:
        if tx is not None and not conn.is_closed():
            await tx.rollback()
        for name, _ in case.settings:
            if not conn.is_closed():
                await conn.execute(f"RESET {name}")
    return out


# ---------------------------------------------------------------------------- comparing


def _show(rows: Sequence[tuple[Hashable, ...]], limit: int = _SHOW_ROWS) -> str:
    lines = [f"    {_clip(repr(r))}" for r in rows[:limit]]
    if len(rows) > limit:
        lines.append(f"    ... ({len(rows) - limit} more)")
    return "\n".join(lines) if lines else "    (no rows)"


def _clip(text: str, width: int = 220) -> str:
    return text if len(text) <= width else text[:width] + "..."


def _sort_key(row: tuple[Hashable, ...]) -> str:
    return repr(row)


def row_differences(want: list[tuple[Hashable, ...]], got: list[tuple[Hashable, ...]],
                    ordered: bool, labels: tuple[str, str] = ("plain Postgres", "the proxy"),
                    ) -> str | None:
    """How `got` (from labels[1]) differs from `want` (from labels[0]), or None if equal."""
    a, b = labels
    if ordered:
        if want == got:
            return None
        first = next((i for i, (w, g) in enumerate(zip(want, got, strict=False)) if w != g),
                     min(len(want), len(got)))
        same = ("the same multiset in another order" if Counter(want) == Counter(got)
                else "not the same multiset")
        return (f"rows differ (ordered comparison; {len(got)} rows from {b}, {len(want)} from "
                f"{a}; {same}); first difference at row {first}:\n"
                f"  {a}, rows {first}..:\n{_show(want[first:])}\n"
                f"  {b}, rows {first}..:\n{_show(got[first:])}")
    w, g = Counter(want), Counter(got)
    if w == g:
        return None
    missing = sorted((w - g).elements(), key=_sort_key)
    extra = sorted((g - w).elements(), key=_sort_key)
    return (f"rows differ (multiset comparison; {len(got)} rows from {b}, {len(want)} from "
            f"{a}):\n"
            f"  only from {a} ({len(missing)}):\n{_show(missing)}\n"
            f"  only from {b} ({len(extra)}):\n{_show(extra)}")


def answer_differences(case: Case, want: Outcome, got: Outcome,
                       labels: tuple[str, str] = ("plain Postgres", "the proxy")) -> list[str]:
    a, b = labels
    problems = []
    if want.columns != got.columns:
        problems.append(f"columns (name, type OID) differ:\n  {a}: {want.columns}"
                        f"\n  {b}: {got.columns}")
    if want.tag != got.tag:
        problems.append(f"command tags differ: {a} {want.tag!r}, {b} {got.tag!r}")
    diff = row_differences(want.rows, got.rows, case.order == "exact", labels)
    if diff:
        problems.append(diff)
    if case.check and want.check is not None and got.check is not None:
        diff = row_differences(want.check, got.check, False, labels)
        if diff:
            problems.append(f"the check query ({case.check}) differs after the write: {diff}")
    return problems


def _context(case: Case, driver: str) -> str:
    params = f"\nparams: {list(case.params)}" if case.params else ""
    if case.settings:
        params += f"\nsettings: {dict(case.settings)}"
    note = f"\nnote: {case.note}" if case.note else ""
    return (f"[{case.id}] via {driver}, expect {case.expect}, order {case.order}\n"
            f"sql: {case.sql}{params}{note}")


def compare(case: Case, driver: str, plain: Outcome, proxy: Outcome) -> None:
    if case.expect == "0A000-text":
        case = replace(case, expect="0A000" if "text" in driver else "same")
    ctx = _context(case, driver)
    if plain.error is not None:
        pytest.fail(f"{ctx}\nTHE CASE IS INVALID: plain Postgres raised "
                    f"{plain.error[0]}: {plain.error[1]}", pytrace=False)
    if case.expect == "0A000":
        if proxy.error is not None and proxy.error[0] == "0A000":
            return
        if proxy.error is not None:
            pytest.fail(f"{ctx}\nexpected SQLSTATE 0A000 from the proxy, got "
                        f"{proxy.error[0]}: {proxy.error[1]}", pytrace=False)
        problems = answer_differences(case, plain, proxy)
        verdict = ("the same answer as plain Postgres (if the proxy now answers this exactly, "
                   "make the case expect: same)" if not problems else
                   "a WRONG answer:\n" + "\n".join(problems))
        pytest.fail(f"{ctx}\nexpected SQLSTATE 0A000 from the proxy, but it answered "
                    f"({len(proxy.rows)} rows, tag {proxy.tag!r}), {verdict}", pytrace=False)
    if proxy.error is not None:
        pytest.fail(f"{ctx}\nthe proxy raised {proxy.error[0]}: {proxy.error[1]}\n"
                    f"plain Postgres answered ({len(plain.rows)} rows, tag {plain.tag!r}, "
                    f"columns {plain.columns}):\n{_show(plain.rows)}", pytrace=False)
    problems = answer_differences(case, plain, proxy)
    if problems:
        pytest.fail(f"{ctx}\n" + "\n".join(problems), pytrace=False)


# ---------------------------------------------------------------------------- tests


def test_query_file() -> None:
    """The data file is well-formed and covers enough."""
    assert len(CASES) >= MIN_CASES, f"only {len(CASES)} cases in {QUERY_FILE.name}"
    dupes = [k for k, n in Counter(CASE_IDS).items() if n > 1]
    assert dupes == [], f"duplicate case ids: {dupes}"
    unordered = [c.id for c in CASES if c.order == "exact" and "order by" not in
                 re.sub(r"\s+", " ", c.sql.lower())]
    assert unordered == [], f"order: exact without an ORDER BY: {unordered}"
    unexplained = [c.id for c in CASES if c.expect != "same" and not c.note]
    assert unexplained == [], f"0A000 cases need a note saying why: {unexplained}"
    constructs = Counter(c.construct for c in CASES)
    rejections = sum(c.expect == "0A000" for c in CASES)
    assert rejections >= 20 and len(constructs) >= 10, (constructs, rejections)


def test_expected_answers_are_deterministic(psy: PsycopgClients) -> None:
    """Every case runs on plain Postgres, and each ``expect: same`` case's answer is the same
    on a copy of the data stored in the opposite order, planned without hash aggregation and
    index scans. A case that fails here has no single right answer (add a tie-breaker, fix
    the LIMIT or the data)."""
    plain, rev = psy.get("plain"), psy.get("plain_rev")
    rev.execute("SET enable_hashagg = off")
    rev.execute("SET enable_indexscan = off")
    rev.execute("SET enable_bitmapscan = off")
    failures = []
    for case in CASES:
        want, got = run_psycopg(plain, case), run_psycopg(rev, case)
        if want.error is not None or got.error is not None:
            failures.append(f"[{case.id}] fails on plain Postgres: {want.error or got.error}")
            continue
        if case.expect == "0A000":  # only needs to be valid SQL (it may well be ambiguous)
            continue
        problems = answer_differences(case, want, got, ("app", "the reversed copy app_rev"))
        if problems:
            failures.append(f"[{case.id}] {case.sql}\n" + "\n".join(problems))
    assert not failures, (f"{len(failures)} cases have no deterministic answer on Postgres:\n"
                          + "\n\n".join(failures))


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_psycopg_text(case: Case, psy: PsycopgClients) -> None:
    plain = run_psycopg(psy.get("plain"), case)
    proxy = run_psycopg(psy.get("proxy"), case)
    compare(case, "psycopg (text)", plain, proxy)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
async def test_asyncpg_binary(case: Case, apg: AsyncpgClients) -> None:
    plain = await run_asyncpg(await apg.get("plain"), case)
    proxy = await run_asyncpg(await apg.get("proxy"), case)
    compare(case, "asyncpg (binary)", plain, proxy)


def test_proxy_log_is_clean(diff_env: DiffEnv) -> None:
    """Nothing the cases did made the proxy log a traceback or a [BUG] (runs last)."""
    assert_clean_log(diff_env.proxy)
