"""The SQL planner: statement text + parameters + topology -> :class:`Route` (pure, cached).

Entry points: :class:`Planner` (``plan``, ``prepare``, ``cache_stats``), :func:`explain`,
and :class:`CopySplitter` / :func:`split_copy_rows` for COPY FROM STDIN into sharded tables.
"""

from proxy.sql.copy import CopySplitter, split_copy_rows
from proxy.sql.planner import Planner, PreparedPlan
from proxy.sql.route import CopyOptions, CopySplit, Route, Setting, explain

__all__ = [
    "CopyOptions",
    "CopySplit",
    "CopySplitter",
    "Planner",
    "PreparedPlan",
    "Route",
    "Setting",
    "explain",
    "split_copy_rows",
]
