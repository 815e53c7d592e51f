"""The utility's exception hierarchy. A leaf module: it imports nothing of the project.

Errors become HTTP statuses in `utility.api` and exit codes in `cui.main`, nowhere else.
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
    """The guest channel failed: the appliance did not say HELLO or READY in time, or said FAILED."""

    http_status = 504
