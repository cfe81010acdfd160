"""Helpers for ``bench/run.py``: processes, pgbench, profiles, machine facts, reports.

Not part of the shipped ``proxy`` package; imported by ``bench/run.py`` with ``bench/`` on
``sys.path`` (it is the script's own directory).
"""
