"""Where a VM restarted on another host after its host failed gets its data disks from.

`restore_data_disks` is the one place that decides it, so that backups through libvirt (a later
step: the backup API or an external snapshot and a volume download, kept in generations) only
replace this function. What it does today, honestly:

- the data disk files live in the CVL file's directory on the cluster manager's file system
  (the layout every host shares now), so the copy the utility holds is the very file the VM
  wrote until its host failed: crash-consistent, as of the failure (said with its age);
- if only the copy kept before an update (`*.pre-update`) is there, that copy is put back;
- with neither, the VM gets a fresh empty data disk, which the appliance initialises at its
  first boot (its data is lost, and status says so).
"""

from __future__ import annotations

import os
from pathlib import Path

from utility.adapters import disks
from utility.core.desired_state import Vm


def restore_data_disks(vm: Vm, now: float) -> str:
    """Put each data disk of `vm` in place for a boot elsewhere; one line saying from what."""
    said = []
    for disk in vm.disks:
        if disk.role != "data":
            continue
        path = Path(disk.path)
        kept = Path(disk.path + disks.BACKUP_SUFFIX)
        if path.exists():
            age = max(0.0, now - path.stat().st_mtime)
            said.append(f"{disk.target}: the utility's copy, last written {age:.0f} s before")
        elif kept.exists():
            os.replace(kept, path)
            age = max(0.0, now - path.stat().st_mtime)
            said.append(f"{disk.target}: the copy kept before the last update ({age:.0f} s old)")
        else:
            said.append(f"{disk.target}: a fresh empty disk (no copy held; its data is lost)")
    return "; ".join(said) or "no data disks"
