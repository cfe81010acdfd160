"""Cheap hot-path statistics: latency histograms and heavy hitters of shard-key values.

Updated from the event loop per client statement with plain ints, lists and dicts (no locks,
no prometheus-client objects); read by copying, from the event loop (admin console) or from
the Prometheus scrape thread.
"""
