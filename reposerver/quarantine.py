"""A quarantine for pushed objects, as git's receive-pack has: nothing lands before it is accepted.

The pack of a push is received into `objects/incoming-XXXX/` (an object store whose alternate
is the repository's own, so thin-pack deltas resolve). The checks read through an overlay of
both; only an accepted push moves the pack into `objects/pack/` (the `.idx` last, so readers
never see a pack without its index). A refused push leaves no trace in the object store.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from dulwich.object_store import DiskObjectStore, OverlayObjectStore


class Quarantine:
    """A temporary object store inside a repository's `objects/` directory."""

    def __init__(self, objects_dir: Path) -> None:
        self.objects_dir = Path(objects_dir)
        self.path = Path(tempfile.mkdtemp(prefix="incoming-", dir=self.objects_dir))
        (self.path / "pack").mkdir()
        (self.path / "info").mkdir()
        (self.path / "info" / "alternates").write_text(str(self.objects_dir.resolve()) + "\n")
        self.store = DiskObjectStore(str(self.path))

    def overlay(self, main: Any) -> Any:
        """An object store that reads quarantined objects first, then the repository's."""
        return OverlayObjectStore([self.store, main])

    def migrate(self) -> None:
        """Move the received packs into the repository (pack files first, indexes last)."""
        target = self.objects_dir / "pack"
        files = sorted(p for p in (self.path / "pack").iterdir() if p.is_file())
        files.sort(key=lambda p: p.suffix == ".idx")
        for path in files:
            os.replace(path, target / path.name)

    def discard(self) -> None:
        """Remove the quarantine and whatever is still in it."""
        self.store.close()
        shutil.rmtree(self.path, ignore_errors=True)
