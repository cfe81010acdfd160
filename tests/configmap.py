"""A Kubernetes-style ConfigMap directory for the topology watcher tests."""

from __future__ import annotations

import os
from pathlib import Path


class ConfigMapDir:
    """A directory laid out like a mounted Kubernetes ConfigMap: `topology.yaml` is a
    symlink to `..data/topology.yaml`, and `..data` a symlink to a timestamped directory
    that each update replaces with one atomic rename."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.count = 0
        root.mkdir(parents=True, exist_ok=True)

    @property
    def path(self) -> Path:
        return self.root / "topology.yaml"

    def publish(self, text: str) -> None:
        self.count += 1
        version = self.root / f"..2026_11_22_{self.count:04d}"
        version.mkdir()
        (version / "topology.yaml").write_text(text)
        tmp = self.root / "..data_tmp"
        tmp.symlink_to(version.name)
        old = (self.root / "..data").resolve() if (self.root / "..data").exists() else None
        os.replace(tmp, self.root / "..data")
        if not self.path.is_symlink():
            self.path.symlink_to("..data/topology.yaml")
        if old is not None:  # kubelet removes the previous version after the swap
            for f in old.iterdir():
                f.unlink()
            old.rmdir()
