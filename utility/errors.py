"""The utility's exception hierarchy. A leaf module: it imports nothing of the project.

Errors become HTTP statuses in `utility.web.api` and exit codes in `cui.main`, nowhere else.
"""

from __future__ import annotations


class UtilityError(Exception):
    """Base of every error the Collective Utility reports to a user or administrator."""

    http_status = 400
    unreachable = False


class NotFound(UtilityError):
    """A VAP, host or other named thing does not exist (or is not visible to the caller)."""

    http_status = 404


class Unauthorized(UtilityError):
    """No or an invalid credential."""

    http_status = 401


class Forbidden(UtilityError):
    """A valid credential that may not do this."""

    http_status = 403


class Conflict(UtilityError):
    """The request contradicts current state (already running, host busy, pool exhausted)."""

    http_status = 409


class HostUnreachable(UtilityError):
    """A host manager (libvirt connection) or the cluster manager cannot be reached."""

    http_status = 503
    unreachable = True


class GuestChannelError(UtilityError):
    """The guest channel failed: no HELLO or READY in time, or the appliance said FAILED."""

    http_status = 504


class CheckFailed(UtilityError):
    """One or more pre-start checks failed; every problem is listed, nothing was started.

    Attributes:
        problems: one human-readable line per failed check, each naming what and where.
    """

    http_status = 422

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__(
            "refused before anything started:\n" + "\n".join(f"  - {p}" for p in self.problems)
        )


class PlacementError(UtilityError):
    """No host has room (memory or VM count) for a VM; names the VM and what it needs."""

    http_status = 409


class PoolExhausted(Conflict):
    """A VLAN, public IP or subnet address pool has no free entry left."""


class ApplianceError(UtilityError):
    """An appliance's files (domain XML, disks) are missing or malformed; names the file."""

    http_status = 422


class DiskError(UtilityError):
    """qemu-img failed or a disk file is unusable; names the file and qemu-img's message."""

    http_status = 500


class StartFailed(UtilityError):
    """A start failed part-way; the VAP was rolled back to stopped and the error says where."""

    http_status = 500


class SecretCacheError(UtilityError):
    """The user's secret cache could not open, decrypt or update its encrypted cache."""


class TrustRefused(UtilityError):
    """Trust policy refuses a version, or a file does not match the version's signed tag."""

    http_status = 422


class DaemonRunning(UtilityError):
    """Another daemon holds this state directory's lock."""

    http_status = 409


class DatabaseRefused(UtilityError):
    """The state database is missing, corrupt or too new where VAPs existed: no silent start."""

    http_status = 500


class PayloadTooLarge(UtilityError):
    """A request body over its route's limit (read no further)."""

    http_status = 413


class EventRefused(UtilityError):
    """A correctly signed publish event that is replayed, stale, from the future or names a
    version the repository does not have."""

    http_status = 409
