"""Cross-shard SELECT merge (issue 4): ORDER BY merge, aggregates, DISTINCT, LIMIT.

``values`` decodes, compares, combines and re-encodes column values exactly as PostgreSQL
would.
"""
