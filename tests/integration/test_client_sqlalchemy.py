"""SQLAlchemy 2 ORM, unchanged, through a transaction-pooling shardwire.

The same unit of work runs with the psycopg driver (sync) and the asyncpg driver (async),
each with SQLAlchemy's own connection pool on top of shardwire's (pool of 2 servers).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import (
    JSON,
    ForeignKey,
    MetaData,
    Numeric,
    String,
    create_engine,
    event,
    func,
    select,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    mapped_column,
    relationship,
    selectinload,
    sessionmaker,
)

from tests.integration.conftest import ProxyFactory, RunningProxy, pooled_proxy

PREFIX = "client_sa"


@pytest.fixture(scope="module")
def small(proxy_factory: ProxyFactory) -> Iterator[RunningProxy]:
    with pooled_proxy(proxy_factory) as running:
        yield running


def make_models(tag: str) -> tuple[type[Any], type[Any], type[Any], MetaData]:
    """A fresh declarative model with table names unique to `tag`."""

    class Base(DeclarativeBase):
        metadata = MetaData()

    class Author(Base):
        __tablename__ = f"{PREFIX}_{tag}_author"
        id: Mapped[int] = mapped_column(primary_key=True)
        name: Mapped[str] = mapped_column(String(100), unique=True)
        born: Mapped[dt.date | None]
        key: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), default=uuid.uuid4)
        books: Mapped[list[Book]] = relationship(back_populates="author",
                                                 cascade="all, delete-orphan",
                                                 order_by="Book.id")

    class Book(Base):
        __tablename__ = f"{PREFIX}_{tag}_book"
        id: Mapped[int] = mapped_column(primary_key=True)
        title: Mapped[str]
        price: Mapped[Decimal] = mapped_column(Numeric(10, 2))
        meta: Mapped[dict[str, Any]] = mapped_column(JSONB().with_variant(JSON(), "sqlite"),
                                                     default=dict)
        published: Mapped[dt.datetime | None]
        author_id: Mapped[int] = mapped_column(ForeignKey(Author.id))
        author: Mapped[Author] = relationship(back_populates="books")

    return Author, Book, Base, Base.metadata


def unit_of_work(session_factory: Any, Author: Any, Book: Any) -> None:
    when = dt.datetime(2024, 6, 1, 12, 30)
    with session_factory() as session, session.begin():
        for i in range(10):
            author = Author(name=f"author {i}", born=dt.date(1950 + i, 1, 1))
            author.books = [Book(title=f"book {i}.{j}", price=Decimal(f"{i}.{j}5"),
                                 meta={"i": i, "tags": ["a", "b"][: j + 1]}, published=when)
                            for j in range(3)]
            session.add(author)
    with session_factory() as session:
        authors = session.scalars(select(Author).options(selectinload(Author.books))
                                  .order_by(Author.id)).all()
        assert [a.name for a in authors] == [f"author {i}" for i in range(10)]
        assert [b.title for b in authors[3].books] == ["book 3.0", "book 3.1", "book 3.2"]
        assert authors[3].books[2].price == Decimal("3.25")
        assert authors[3].books[1].meta == {"i": 3, "tags": ["a", "b"]}
        assert isinstance(authors[0].key, uuid.UUID)
        total = session.scalar(select(func.sum(Book.price)))
        assert total == sum(Decimal(f"{i}.{j}5") for i in range(10) for j in range(3))
        # lazy load through the relationship, in a later transaction
        book = session.scalars(select(Book).where(Book.title == "book 7.1")).one()
        session.commit()
        assert book.author.name == "author 7"
        # update
        book.price = Decimal("99.99")
        session.execute(Book.__table__.update().where(Book.author_id == book.author_id)
                        .values(published=None))
        session.commit()
        assert session.scalar(select(Book.price).where(Book.id == book.id)) == Decimal("99.99")
        assert session.scalar(select(func.count()).select_from(Book)
                              .where(Book.published.is_(None))) == 3
        # rollback: a unique violation, then the session is usable again
        session.add(Author(name="author 1"))
        with pytest.raises(IntegrityError):
            session.commit()
        session.rollback()
        assert session.scalar(select(func.count()).select_from(Author)) == 10
        # explicit rollback of pending work
        session.add(Author(name="temporary"))
        session.flush()
        assert session.scalar(select(func.count()).select_from(Author)) == 11
        session.rollback()
        assert session.scalar(select(func.count()).select_from(Author)) == 10
        # savepoint
        with session.begin_nested():
            session.add(Author(name="nested"))
        try:
            with session.begin_nested():
                session.add(Author(name="author 2"))
                session.flush()
        except IntegrityError:
            pass
        session.commit()
        assert session.scalar(select(func.count()).select_from(Author)) == 11
        # delete with cascade
        victim = session.scalars(select(Author).where(Author.name == "author 5")).one()
        session.delete(victim)
        session.commit()
        assert session.scalar(select(func.count()).select_from(Book)) == 27
        assert session.scalars(select(Author.name).where(Author.name.like("author 5%"))) \
            .all() == []
        # raw SQL with bound parameters
        rows = session.execute(text(f"SELECT name FROM {Author.__tablename__} "
                                    "WHERE born > :d ORDER BY born LIMIT 2"),
                               {"d": dt.date(1955, 6, 1)}).all()
        assert rows == [("author 6",), ("author 7",)]


def test_sync_orm_with_psycopg(small: RunningProxy) -> None:
    Author, Book, _, metadata = make_models("pg3")
    for prepare_threshold in (None, 0):
        kw = {} if prepare_threshold is None else {"prepare_threshold": prepare_threshold}
        engine = create_engine(f"postgresql+psycopg://app:secret@{small.host}:{small.port}/app",
                               pool_size=4, max_overflow=0, connect_args=kw)
        try:
            metadata.drop_all(engine)
            metadata.create_all(engine)
            unit_of_work(sessionmaker(engine), Author, Book)
            # 4 engine connections open at once take turns on 2 server connections (each
            # holds one only while in a transaction: SQLAlchemy begins one implicitly)
            conns = [engine.connect() for _ in range(4)]
            try:
                for _ in range(3):
                    for n, conn in enumerate(conns):
                        assert conn.scalar(text("SELECT CAST(:n AS int)"), {"n": n}) == n
                        conn.commit()
            finally:
                for conn in conns:
                    conn.close()
            metadata.drop_all(engine)
        finally:
            engine.dispose()


async def test_async_orm_with_asyncpg(small: RunningProxy) -> None:
    Author, Book, _, metadata = make_models("apg")
    engine = create_async_engine(
        f"postgresql+asyncpg://app:secret@{small.host}:{small.port}/app",
        pool_size=4, max_overflow=0)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(metadata.drop_all)
            await conn.run_sync(metadata.create_all)
        factory = async_sessionmaker(engine, expire_on_commit=False)

        async with factory() as session, session.begin():
            for i in range(5):
                session.add(Author(name=f"async {i}", born=dt.date(2000, 1, i + 1),
                                   books=[Book(title=f"t{i}", price=Decimal(i),
                                               meta={"n": i})]))
        async with factory() as session:
            result = await session.scalars(select(Author).options(selectinload(Author.books))
                                           .order_by(Author.id))
            authors = result.all()
            assert [(a.name, [b.title for b in a.books]) for a in authors] == [
                (f"async {i}", [f"t{i}"]) for i in range(5)]
            authors[0].books[0].price = Decimal("12.50")
            await session.commit()
            assert await session.scalar(select(Book.price).where(Book.title == "t0")) \
                == Decimal("12.50")
            session.add(Author(name="async 1"))
            with pytest.raises(IntegrityError):
                await session.commit()
            await session.rollback()
            await session.delete(authors[4])
            await session.commit()
            assert await session.scalar(select(func.count()).select_from(Book)) == 4
            async with session.begin_nested():
                session.add(Author(name="nested"))
            await session.commit()
            assert await session.scalar(select(func.count()).select_from(Author)) == 5
        # concurrent sessions over the 2 server connections
        async def reader(i: int) -> str | None:
            async with factory() as s:
                return await s.scalar(select(Author.name).where(Author.name == f"async {i}"))

        assert await asyncio.gather(*(reader(i % 4) for i in range(12))) \
            == [f"async {i % 4}" for i in range(12)]
        async with engine.begin() as conn:
            await conn.run_sync(metadata.drop_all)
    finally:
        await engine.dispose()


def test_engine_events_and_isolation(small: RunningProxy) -> None:
    """SQLAlchemy's per-connection setup (isolation level, connect events) through the
    proxy: settings it makes on connect follow each connection."""
    engine = create_engine(f"postgresql+psycopg://app:secret@{small.host}:{small.port}/app",
                           pool_size=3, max_overflow=0)
    events: list[str] = []

    @event.listens_for(engine, "connect")
    def on_connect(dbapi_conn: Any, _record: Any) -> None:
        events.append("connect")
        with dbapi_conn.cursor() as cur:
            cur.execute("SET application_name TO 'sa-engine'")
            cur.execute("SET search_path TO pg_catalog, public")
        dbapi_conn.commit()

    try:
        for level in ("SERIALIZABLE", "REPEATABLE READ", "READ COMMITTED", "AUTOCOMMIT"):
            with engine.connect().execution_options(isolation_level=level) as conn:
                shown = conn.scalar(text("SHOW transaction_isolation"))
                assert shown == ("read committed" if level == "AUTOCOMMIT" else level.lower())
                assert conn.scalar(text("SELECT current_setting('application_name')")) \
                    == "sa-engine"
                assert conn.scalar(text("SHOW search_path")) == "pg_catalog, public"
        assert events and set(events) == {"connect"}
    finally:
        engine.dispose()
