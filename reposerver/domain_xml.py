"""The disks of a publisher's domain XML, as the repository sees them (`common.publisher_xml`,
the reader the utility uses too), with its errors as `InvalidAppliance`."""

from __future__ import annotations

from common import publisher_xml
from common.publisher_xml import ProgramDisk as DiskRef
from reposerver.errors import InvalidAppliance

__all__ = ["DiskRef", "disks", "program_disks"]


def disks(xml: bytes, where: str) -> list[DiskRef]:
    """Every file-backed `<disk device='disk'>` of the domain, in document order.

    Raises:
        InvalidAppliance: the XML does not parse, is not a domain, or a disk lacks source/target.
    """
    try:
        return publisher_xml.disks(xml, where)
    except publisher_xml.PublisherXmlError as exc:
        raise InvalidAppliance(str(exc)) from None


def program_disks(xml: bytes, data_devices: frozenset[str], where: str) -> list[DiskRef]:
    """The disks not listed as data disks: the ones a repository stores."""
    return [d for d in disks(xml, where) if d.target not in data_devices]
