"""Where a VM restarted on another host after its host failed gets its data disks from.

`restore_data_disks` is the one place that decides it. For each data disk, the newest of:

- its latest valid backup (`utility.adapters.backups`: taken through libvirt while the VM ran,
  at every update and every `--backup-interval`; a corrupt or truncated one is skipped for the
  next older), copied into place as the disk's file in the VM directory, and
- the copy the utility already holds in the VM directory (written when the VM last stopped, or
  put back before an update: `*.pre-update`).

The data written on the failed host since then is lost; status says which backup (or copy)
the disk came from and how old it was. With neither, the VM gets a fresh empty data disk, which
the appliance initialises at its first boot (its data is lost, and status says so).
"""

from __future__ import annotations

import os
from pathlib import Path

from utility.adapters import backups, disks
from utility.core.desired_state import Vm


def restore_data_disks(vm: Vm, now: float) -> str:
    """Put each data disk of `vm` in place for a boot elsewhere; one line saying from what."""
    said = []
    for disk in vm.disks:
        if disk.role != "data":
            continue
        path = Path(disk.path)
        kept = Path(disk.path + disks.BACKUP_SUFFIX)
        copy = "the utility's copy, last written {age:.0f} s before"
        if not path.exists() and kept.exists():
            os.replace(kept, path)
            copy = "the copy kept before the last update ({age:.0f} s old)"
        backup = backups.latest(disk)
        copy_time = path.stat().st_mtime if path.exists() else None
        if backup is not None and (copy_time is None or backup[0].taken >= copy_time):
            backups.restore(disk, backup[1])
            age = max(0.0, now - backup[0].taken)
            said.append(f"{disk.target}: backup {backup[1].name} ({age:.0f} s old)")
        elif copy_time is not None:
            age = max(0.0, now - copy_time)
            said.append(f"{disk.target}: " + copy.format(age=age))
        else:
            said.append(f"{disk.target}: a fresh empty disk (no backup or copy held; data lost)")
    return "; ".join(said) or "no data disks"
