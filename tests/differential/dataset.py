"""The differential test's schema, topology and data: a seeded, deterministic generator.

The same rows are loaded into one plain Postgres and, through shardwire, into four shards
(tests/differential/conftest.py). The data is built to catch merge bugs:

* sharded tables co-located on the customer (``customers.id``, ``orders.customer_id``,
  ``order_items.customer_id``, ``refunds.customer_id``), one sharded on its own id
  (``events``), two reference tables (``products``, ``countries``) and one unlisted table
  living on the default shard (``audit_log``); ``refunds`` is empty;
* skew: customer 7 has about a third of all orders and events, customer 42 many more than
  the rest; about 40 customers have no orders at all (empty groups), country ``AQ`` has no
  customers and category ``archive`` is never ordered;
* NULLs in most columns (also NULL group keys and three orders with a NULL shard key, which
  live in bucket 0), duplicate names, payloads, amounts and uuids;
* unicode text (accents, emoji with ZWJ sequences, CJK, Greek, Cyrillic, Arabic, Hebrew,
  combining marks) and text with tabs, newlines and backslashes;
* numerics with many scales. Every *value* of an unconstrained numeric column has one
  spelling (never both ``0.5`` and ``0.50``), so ``min``/``max``/``GROUP BY``/``DISTINCT``
  output does not depend on which row Postgres met first; ``NaN`` in ``events.value``;
* float8 values that are multiples of 1/8 (their sums are exact in any order, so the proxy
  can and must return exactly what Postgres returns), plus ``NaN``, ``±Infinity`` and
  ``-0`` in the ``edge`` events;
* timestamptz values written in many zones, around the 2024 DST changes of New York,
  Berlin and Sydney (nonexistent and ambiguous local times), ``±infinity``, with
  microseconds; the clusters run with ``TimeZone = America/New_York`` so that the text form
  of two instants an hour apart around the autumn change sorts the other way round
  (``01:45:00-04`` is before ``01:15:00-05``).
"""

from __future__ import annotations

import datetime as dt
import random
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

SEED = 20261122
HEAVY_CUSTOMER = 7
BUSY_CUSTOMER = 42
SHARD_COUNT = 4
BUCKETS = 64

SCHEMA: tuple[str, ...] = (
    """CREATE TABLE countries (
        code text PRIMARY KEY, name text NOT NULL, region text, vat numeric(4, 3))""",
    """CREATE TABLE products (
        id integer PRIMARY KEY, sku text NOT NULL, name text NOT NULL, category text,
        price numeric(10, 2) NOT NULL, launched date, tags text[], weight_kg real)""",
    """CREATE TABLE customers (
        id bigint PRIMARY KEY, name text NOT NULL, email text, country text, tier text,
        created_at timestamptz NOT NULL, balance numeric(12, 2) NOT NULL,
        score double precision, active boolean NOT NULL, vip boolean, referrer_id bigint,
        tag uuid)""",
    """CREATE TABLE orders (
        id bigint PRIMARY KEY, customer_id bigint, status text, amount numeric(10, 2) NOT NULL,
        discount numeric, placed_at timestamptz NOT NULL, ship_day date, note text)""",
    """CREATE TABLE order_items (
        customer_id bigint NOT NULL, order_id bigint NOT NULL, line smallint NOT NULL,
        product_id integer, qty smallint NOT NULL, unit_price numeric(8, 3) NOT NULL,
        PRIMARY KEY (customer_id, order_id, line))""",
    """CREATE TABLE events (
        id bigint PRIMARY KEY, customer_id bigint, kind text NOT NULL, payload text,
        happened_at timestamptz, value numeric, weight double precision, ref uuid, day date,
        flag boolean, seq integer)""",
    """CREATE TABLE refunds (
        customer_id bigint NOT NULL, order_id bigint NOT NULL, amount numeric(10, 2) NOT NULL,
        created_at timestamptz NOT NULL)""",
    """CREATE TABLE audit_log (
        id integer PRIMARY KEY, action text NOT NULL, actor bigint, at timestamptz NOT NULL)""",
)

# The proxy's `tables` topology section. audit_log is deliberately not listed.
TOPOLOGY_TABLES: dict[str, dict[str, Any]] = {
    "customers": {"shard_key": "id", "key_type": "bigint"},
    "orders": {"shard_key": "customer_id", "key_type": "bigint"},
    "order_items": {"shard_key": "customer_id", "key_type": "bigint"},
    "refunds": {"shard_key": "customer_id", "key_type": "bigint"},
    "events": {"shard_key": "id", "key_type": "bigint"},
    "products": {"reference": True},
    "countries": {"reference": True},
}
SHARDED = ("customers", "orders", "order_items", "refunds", "events")
REFERENCE = ("products", "countries")
UNLISTED = ("audit_log",)

# The server settings of every cluster (shards and plain alike).
CLUSTER_SETTINGS = {"timezone": "America/New_York", "datestyle": "ISO, MDY",
                    "extra_float_digits": "1"}


@dataclass(frozen=True)
class Table:
    name: str
    columns: tuple[str, ...]
    rows: list[tuple[Any, ...]]

    @property
    def copy_sql(self) -> str:
        return f"COPY {self.name} ({', '.join(self.columns)}) FROM STDIN"


FIRST_NAMES = (
    "Ana", "Ana", "Zoë", "José", "Ñandú", "Søren", "Łukasz", "Ærin", "François", "Jürgen",
    "İsmail", "Straße", "東京太郎", "王芳", "김민준", "Αλέξης", "Дмитрий", "محمد", "שרה",
    "Renée", "Ren\u0065\u0301e", "😀 Smiley", "👩\u200d💻 Dev", "O'Brien", "Back\\slash",
    "Tab\tName", "Bob", "Bob", "bob", "Émile", "Zoe", "ángel", "Ängel",
)
LAST_NAMES = ("Smith", "Müller", "García", "Nguyễn", "山田", "Ivanov", "", "Ó Briain", "Li")
NOTES = (
    "fragile ⚠️", "leave at door", "東京都渋谷区", "naïve café", "emoji 🎉🎉", "line1\nline2",
    "tab\there", "back\\slash", "", "  spaced  ", "family 👨\u200d👩\u200d👧", "combining e\u0301",
    "RTL שלום", "Ελληνικά", "\\N is not null", "quote \" and , comma", "gift",
)
PAYLOADS = (
    "click on 🚀 button", "view /home", "view /home", "ünïcødé ☃", "検索: 東京", "中文内容",
    "한국어", "a\tb", "multi\nline", "back\\slash\\", "", "  ", "Zürich", "zurich", "ZÜRICH",
    "price €5",
    "\U0001d518\U0001d52b\U0001d526\U0001d520\U0001d52c\U0001d521\U0001d522",  # Fraktur "Unicode"
    "emoji 👍🏽", "x" * 300,
)
PRODUCT_NAMES = (
    "Widget", "Gadget", "Gizmo", "Café Crème", "Smörgåsbord", "Teapot 茶壶", "Widget",
    "Ramen ラーメン", "Crêpe", "Piñata", "Doohickey", "Thingamajig", "Ōkonomiyaki", "Bagel",
)
CATEGORIES = ("books", "games", "tools", "food", "Ümlaut", None)
DISCOUNTS = ("0.5", "0.125", "1.000", "2.50", "0", "0.0001", "10", "3.3333", "-1.25",
             "99.999")
STATUSES = ("new", "paid", "shipped", "cancelled", "refunded", None)
STATUS_WEIGHTS = (10, 30, 40, 8, 4, 3)
COUNTRIES = ("DE", "FR", "US", "JP", "BR", "NG", "IN", "IS", "CN", "XX", None)
TIERS = ("gold", "silver", "bronze", None)
KINDS = ("click", "view", "purchase", "signup", "ünïcode")
KIND_WEIGHTS = (50, 25, 10, 5, 5)

# Local times around DST changes and in unusual offsets, parsed by Postgres itself.
ODD_TIMES = (
    "2024-03-10 01:59:59.999999 America/New_York",
    "2024-03-10 02:30:00 America/New_York",  # does not exist: 03:30 EDT
    "2024-03-10 03:00:00 America/New_York",
    "2024-11-03 01:30:00 America/New_York",  # ambiguous
    "2024-11-03 01:45:00-04",  # 05:45Z, shown as 01:45:00-04 ...
    "2024-11-03 01:15:00-05",  # ... and 06:15Z as 01:15:00-05: text order is wrong
    "2024-11-03 01:59:59.5-05",
    "2024-03-31 02:30:00 Europe/Berlin",
    "2024-10-27 02:30:00+02",
    "2024-10-27 02:30:00+01",
    "2024-10-27 02:30:00 Europe/Berlin",
    "2024-04-07 02:30:00 Australia/Sydney",
    "2024-10-06 02:30:00 Australia/Sydney",
    "2023-12-31 23:59:59.999999+14",
    "2024-01-01 00:00:00-12",
    "2024-02-29 12:00:00+05:30",
    "1999-12-31 23:59:59 Asia/Kathmandu",
    "2024-07-01 12:00:00 America/St_Johns",
    "2000-01-01 00:00:00+00",
)

_UTC = dt.UTC
_START = dt.datetime(2023, 1, 1, tzinfo=_UTC)
_SPAN = int(dt.timedelta(days=900).total_seconds())


class _Numerics:
    """One spelling per numeric value (see the module docstring)."""

    def __init__(self) -> None:
        self._seen: dict[Decimal, Decimal] = {}

    def __call__(self, value: Decimal | None) -> Decimal | None:
        if value is None or value.is_nan():
            return value
        return self._seen.setdefault(value.normalize(), value)


def _moment(rng: random.Random, odd: float = 0.03) -> dt.datetime | str:
    if rng.random() < odd:
        return rng.choice(ODD_TIMES)
    moment = _START + dt.timedelta(seconds=rng.randrange(_SPAN))
    if rng.random() < 0.3:
        moment = moment.replace(microsecond=rng.randrange(1_000_000))
    return moment


def _uuid(rng: random.Random) -> uuid.UUID:
    return uuid.UUID(int=rng.getrandbits(128), version=4)


def _maybe(rng: random.Random, p_null: float, make: Callable[[], Any]) -> Any:
    return None if rng.random() < p_null else make()


def generate(seed: int = SEED) -> list[Table]:
    """Every table's rows, in load order (the generator is deterministic for a seed)."""
    rng = random.Random(seed)
    numerics = _Numerics()

    countries = Table("countries", ("code", "name", "region", "vat"), [
        ("DE", "Deutschland", "Europe", Decimal("0.190")),
        ("FR", "France", "Europe", Decimal("0.200")),
        ("US", "United States", "Americas", None),
        ("JP", "日本", "Asia", Decimal("0.100")),
        ("BR", "Brasil", "Americas", Decimal("0.170")),
        ("NG", "Nigeria", "Africa", Decimal("0.075")),
        ("IN", "India", "Asia", Decimal("0.180")),
        ("IS", "Ísland", "Europe", Decimal("0.240")),
        ("CN", "中国", "Asia", Decimal("0.130")),
        ("AQ", "Antarctica", None, None),  # no customers: an empty group
    ])

    product_rows = []
    for pid in range(1, 61):
        category = "archive" if pid > 56 else rng.choice(CATEGORIES)
        tags = rng.choice([None, [], ["new"], ["sale", "new"], ["ü", None], ["a b", "c,d"]])
        product_rows.append((
            pid, f"SKU-{pid:04d}", rng.choice(PRODUCT_NAMES), category,
            Decimal(rng.randint(50, 99999)).scaleb(-2),
            _maybe(rng, 0.1, lambda: dt.date(2015, 1, 1) + dt.timedelta(days=rng.randrange(3650))),
            tags, _maybe(rng, 0.1, lambda: rng.randint(1, 400) / 4)))
    products = Table("products", ("id", "sku", "name", "category", "price", "launched", "tags",
                                  "weight_kg"), product_rows)

    special_ids = [0, -1, -7, 2**31, 2**40, 2**53 + 1, 2**63 - 1, -(2**63)]
    customer_ids = [*range(1, 393), *special_ids]
    tags_seen: list[uuid.UUID] = []
    customer_rows = []
    for cid in customer_ids:
        first = rng.choice(FIRST_NAMES)
        name = f"{first} {rng.choice(LAST_NAMES)}".strip() if rng.random() < 0.7 else first
        if tags_seen and rng.random() < 0.1:
            tag: uuid.UUID | None = rng.choice(tags_seen)
        else:
            tag = _maybe(rng, 0.05, lambda: _uuid(rng))
            if tag is not None:
                tags_seen.append(tag)
        customer_rows.append((
            cid, name, _maybe(rng, 0.1, lambda c=cid: f"user{abs(c) % 1000}@example.com"),
            rng.choice(COUNTRIES), rng.choices(TIERS, weights=(15, 30, 35, 20))[0],
            _moment(rng), Decimal(rng.randint(-50_000, 900_000)).scaleb(-2),
            _maybe(rng, 0.1, lambda: rng.randint(-8000, 8000) / 8), rng.random() < 0.8,
            rng.choice([True, False, None]),
            _maybe(rng, 0.6, lambda: rng.choice(customer_ids)), tag))
    customers = Table("customers", ("id", "name", "email", "country", "tier", "created_at",
                                    "balance", "score", "active", "vip", "referrer_id", "tag"),
                      customer_rows)

    no_orders = {cid for cid in customer_ids if 100 <= cid <= 500 and cid % 10 == 0}
    order_rows: list[tuple[Any, ...]] = []
    item_rows: list[tuple[Any, ...]] = []
    order_id = 1000
    owners: list[int | None] = []
    for cid in customer_ids:
        if cid in no_orders:
            continue
        count = {HEAVY_CUSTOMER: 520, BUSY_CUSTOMER: 120}.get(cid, rng.randint(0, 6))
        owners += [cid] * count
    owners += [None, None, None]  # a NULL shard key: bucket 0
    rng.shuffle(owners)
    for owner in owners:
        order_id += rng.randint(1, 3)
        if owner == HEAVY_CUSTOMER:  # many ties on amount
            amount = Decimal(rng.choice(["9.99", "19.99", "100.00", "0.00"]))
        else:
            amount = Decimal(rng.randint(0, 200_000)).scaleb(-2)
        placed = _moment(rng)
        ship = _maybe(rng, 0.25,
                      lambda: dt.date(2023, 1, 1) + dt.timedelta(days=rng.randrange(900)))
        discount = _maybe(rng, 0.4, lambda: numerics(Decimal(rng.choice(DISCOUNTS))))
        order_rows.append((
            order_id, owner, rng.choices(STATUSES, weights=STATUS_WEIGHTS)[0], amount, discount,
            placed, ship, _maybe(rng, 0.5, lambda: rng.choice(NOTES))))
        if owner is None:
            continue
        for line in range(1, rng.randint(1, 2 if owner == HEAVY_CUSTOMER else 3) + 1):
            product: int | None = rng.randint(1, 56)
            if rng.random() < 0.02:
                product = rng.choice([999, None])  # dangling or unknown product
            item_rows.append((owner, order_id, line, product, rng.randint(1, 20),
                              Decimal(rng.randint(1, 99_999)).scaleb(-3)))
    orders = Table("orders", ("id", "customer_id", "status", "amount", "discount", "placed_at",
                              "ship_day", "note"), order_rows)
    order_items = Table("order_items", ("customer_id", "order_id", "line", "product_id", "qty",
                                        "unit_price"), item_rows)

    refs: list[uuid.UUID] = []
    event_rows: list[tuple[Any, ...]] = []
    for eid in range(1, 1501):
        cid = None if rng.random() < 0.15 else (
            HEAVY_CUSTOMER if rng.random() < 0.3 else rng.choice(customer_ids))
        if refs and rng.random() < 0.15:
            ref: uuid.UUID | None = rng.choice(refs)
        else:
            ref = _maybe(rng, 0.05, lambda: _uuid(rng))
            if ref is not None:
                refs.append(ref)
        if eid % 97 == 0 and event_rows:  # an exact duplicate of an earlier event but its id
            event_rows.append((eid, *event_rows[-1][1:]))
            continue
        value = _maybe(rng, 0.1, lambda: numerics(
            Decimal(rng.randint(-10**7, 10**7)).scaleb(-rng.randint(0, 6))))
        event_rows.append((
            eid, cid, rng.choices(KINDS, weights=KIND_WEIGHTS)[0],
            _maybe(rng, 0.08, lambda: rng.choice(PAYLOADS)),
            _maybe(rng, 0.03, lambda: _moment(rng, 0.08)),
            value, _maybe(rng, 0.05, lambda: rng.randint(-80_000, 80_000) / 8), ref,
            _maybe(rng, 0.1, lambda: dt.date(2024, 1, 1) + dt.timedelta(days=rng.randrange(120))),
            rng.choice([True, False, None]), rng.randint(-1000, 1000)))
    edge: list[tuple[Any, Any, Any]] = [  # (happened_at, value, weight)
        ("infinity", Decimal("NaN"), float("nan")),
        ("-infinity", Decimal("1e-20"), float("inf")),
        (ODD_TIMES[4], Decimal("-99999999999999999999.5"), float("-inf")),
        (ODD_TIMES[5], Decimal("123456789012345678901234567890.123456789"), -0.0),
        (None, Decimal("0.000000000000000000000000000001"), 0.0),
        (ODD_TIMES[1], None, None),
    ]
    for i, (moment, value, weight) in enumerate(edge):
        event_rows.append((10_000 + i, [None, HEAVY_CUSTOMER, 2**63 - 1][i % 3], "edge",
                           PAYLOADS[i], moment, numerics(value), weight, None, None, None, i))
    events = Table("events", ("id", "customer_id", "kind", "payload", "happened_at", "value",
                              "weight", "ref", "day", "flag", "seq"), event_rows)

    refunds = Table("refunds", ("customer_id", "order_id", "amount", "created_at"), [])

    audit_log = Table("audit_log", ("id", "action", "actor", "at"), [
        (i, rng.choice(["login", "logout", "export", "délétion 🗑️"]),
         _maybe(rng, 0.2, lambda: rng.choice(customer_ids)), _moment(rng))
        for i in range(1, 41)])

    return [countries, products, customers, orders, order_items, events, refunds, audit_log]


def reversed_tables(tables: Sequence[Table]) -> list[Table]:
    """The same data in the opposite physical order (for the determinism check)."""
    return [Table(t.name, t.columns, list(reversed(t.rows))) for t in tables]
