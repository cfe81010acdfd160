"""shardwire: an SQL-aware sharding proxy for PostgreSQL."""

__version__ = "0.1.0"
