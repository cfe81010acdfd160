"""What a live topology reload costs: the switch itself, and how long the watcher takes
to notice a ConfigMap-style swap. No database is needed (pools are created lazily).

    .venv/bin/python bench/reload_cost.py [--tables 50] [--shards 4] [--runs 50]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.configmap

from proxy.config import load_config
from proxy.server import Proxy
from proxy.topology.watcher import TopologyWatcher
from tests.configmap import ConfigMapDir


def topology(shards: int, tables: int, size: int) -> dict[str, Any]:
    return {
        "database": "app",
        "auth": {"method": "trust"},
        "metrics": {"enabled": False},
        "pool": {"size": size},
        "transactions": {"mode": "best_effort"},
        "shards": [{"name": f"s{i}", "primary": f"postgresql://u@127.0.0.1:{20000 + i}/app"}
                   for i in range(shards)],
        "sharding": {"buckets": 1024},
        "tables": {f"t{i}": {"shard_key": "id"} for i in range(tables)},
    }


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cm = ConfigMapDir(Path(tmp))
        cm.publish(yaml.safe_dump(topology(args.shards, args.tables, 10)))
        path = cm.path
        proxy = Proxy(load_config(path), str(path))
        switch: list[float] = []
        for run in range(args.runs):
            path.resolve().write_text(yaml.safe_dump(
                topology(args.shards, args.tables, 11 + run % 2)))
            start = time.perf_counter()
            ok, message = proxy.reload("bench")
            switch.append(time.perf_counter() - start)
            assert ok and "pool settings" in message, message
        noticed: list[float] = []
        changed = asyncio.Event()
        watcher = TopologyWatcher(path, changed.set, debounce=0.05)
        watcher.start()
        await asyncio.sleep(0.5)
        for run in range(args.runs):
            changed.clear()
            start = time.perf_counter()
            cm.publish(yaml.safe_dump(topology(args.shards, args.tables, 20 + run)))
            await asyncio.wait_for(changed.wait(), 10)
            noticed.append(time.perf_counter() - start)
        mode = watcher.mode
        await watcher.close()
        await proxy.health.close()
    print(f"topology: {args.shards} shards, 1024 buckets, {args.tables} hash tables; "
          f"{args.runs} runs each")
    print(f"reload (read, validate, new planner, switch): median "
          f"{statistics.median(switch) * 1000:.2f} ms, max {max(switch) * 1000:.2f} ms")
    print(f"watcher ({mode}, debounce 50 ms): swap noticed after median "
          f"{statistics.median(noticed) * 1000:.0f} ms, max {max(noticed) * 1000:.0f} ms")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tables", type=int, default=50)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--runs", type=int, default=50)
    asyncio.run(main(parser.parse_args()))
