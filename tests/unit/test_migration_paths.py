"""The pure parts of a storage-copying migration: the disks read from a running domain's XML,
and the domain XML for a target whose pool paths differ (`VIR_MIGRATE_PARAM_DEST_XML`)."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from utility.adapters.migration import _dest_xml, _larger, _source_disks

XML = """<domain type='qemu'><name>col-1-d</name><devices>
<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>
<source file='/a/volumes/col-1-d-vda.qcow2'/>
<backingStore type='file'><format type='qcow2'/><source file='/a/objects/ab/cd/abcd'/>
<backingStore/></backingStore><target dev='vda' bus='virtio'/></disk>
<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>
<source file='/a/volumes/col-1-d-data-vdb.qcow2'/><target dev='vdb' bus='virtio'/></disk>
<disk type='file' device='cdrom'><target dev='hdc' bus='ide'/></disk>
<interface type='network'><mac address='52:54:00:00:00:01'/></interface>
</devices></domain>"""


def test_the_disks_of_a_domain_are_its_files_with_their_formats() -> None:
    disks = _source_disks(XML)
    assert sorted(disks) == ["vda", "vdb"]  # a sourceless cdrom is no disk to copy
    assert disks["vda"].path == "/a/volumes/col-1-d-vda.qcow2" and disks["vda"].format == "qcow2"
    assert disks["vdb"].path == "/a/volumes/col-1-d-data-vdb.qcow2"


def test_the_target_xml_names_the_target_paths_and_leaves_the_rest() -> None:
    paths = {"vda": "/b/volumes/col-1-d-vda.qcow2", "vdb": "/b/volumes/col-1-d-data-vdb.qcow2"}
    moved = ET.fromstring(_dest_xml(XML, paths))
    sources = {
        d.find("target").get("dev"): d.find("source")  # type: ignore[union-attr]
        for d in moved.iterfind("devices/disk")
    }
    assert sources["vda"].get("file") == paths["vda"]  # type: ignore[union-attr]
    assert sources["vdb"].get("file") == paths["vdb"]  # type: ignore[union-attr]
    assert sources["hdc"] is None
    assert moved.find("devices/disk/backingStore") is None  # read again from the new overlay
    assert moved.find("devices/interface/mac").get("address") == "52:54:00:00:00:01"  # type: ignore[union-attr]
    assert moved.findtext("name") == "col-1-d"


def test_the_larger_of_two_counts_either_unknown() -> None:
    assert _larger(None, None) is None
    assert _larger(3, None) == 3 and _larger(None, 4) == 4 and _larger(5, 2) == 5


def test_job_progress_counts_memory_and_disks_and_falls_back_to_data_totals() -> None:
    from utility.adapters.migration import job_progress

    both = {"memory_processed": 30, "memory_total": 100, "disk_processed": 5, "disk_total": 20}
    assert job_progress(both) == (35, 120)
    assert job_progress({"data_processed": 7, "data_total": 9}) == (7, 9)
    # memory's total can lag what was sent (dirtied pages are sent again): never below done
    assert job_progress({"memory_processed": 150, "memory_total": 100}) == (150, 150)
    assert job_progress({}) == (0, 0)


def test_the_job_watch_reports_progress_while_a_job_runs_and_nothing_without_one() -> None:
    import threading

    import libvirt

    from utility.adapters.migration import _JobWatch

    class Dom:
        def __init__(self) -> None:
            self.calls = 0

        def jobStats(self, _flags: int) -> dict[str, int]:  # noqa: N802 - libvirt's name
            self.calls += 1
            if self.calls < 3:
                return {"type": libvirt.VIR_DOMAIN_JOB_NONE}
            return {
                "type": libvirt.VIR_DOMAIN_JOB_UNBOUNDED,
                "memory_processed": self.calls,
                "memory_total": 10,
            }

    seen: list[tuple[int, int]] = []
    enough = threading.Event()

    def progress(done: int, total: int) -> None:
        seen.append((done, total))
        if len(seen) >= 2:
            enough.set()

    dom = Dom()
    with _JobWatch(dom, 0.01, progress):
        assert enough.wait(5)
    assert seen[0] == (3, 10) and seen[1] == (4, 10)  # none while no job ran
