"""The one exception hierarchy of `reposerver` (a leaf module: imports nothing of the project).

Each class says what kind of failure happened; the HTTP edge (`reposerver.web`) and the CLI edge
(`cui.main`) turn them into status codes and exit codes. Messages say what and where.
"""

from __future__ import annotations


class RepositoryError(Exception):
    """Base of every error raised by `reposerver`."""

    unreachable = False


class NotFound(RepositoryError):
    """A repository, version, file or object that does not exist."""


class BadRequest(RepositoryError):
    """Malformed input: a bad name, path, version number, range or request body."""


class PayloadTooLarge(BadRequest):
    """An upload larger than the server accepts."""


class RangeNotSatisfiable(BadRequest):
    """A well-formed Range that lies outside the object."""


class IntegrityError(RepositoryError):
    """Stored or uploaded bytes do not match their hash or size, or an image is unsafe."""


class UnsafeImage(IntegrityError):
    """A disk image that is not a qcow2 object our policy accepts (see `reposerver.qcow2`)."""


class PushRefused(RepositoryError):
    """A ref update (push, publish) refused by the repository's rules."""


class ImmutableVersion(PushRefused):
    """An attempt to move, delete or re-create an existing version tag."""


class SignatureRefused(PushRefused):
    """A version tag whose signature is missing, bad or from an untrusted key."""


class InvalidAppliance(PushRefused):
    """The version's CVL file or domain XML does not check."""


class BadGitObject(PushRefused):
    """A pushed git object that `git fsck --strict` would flag (see `reposerver.fsck`)."""


class Unauthorized(RepositoryError):
    """A request that needs credentials came without valid ones."""


class Forbidden(RepositoryError):
    """Valid credentials, but not for this (e.g. another publisher's LFS lock)."""


class ToolFailed(RepositoryError):
    """An external tool (qemu-img, gpg, ssh-keygen, git) failed."""


class Unreachable(RepositoryError):
    """A remote repository could not be reached."""

    unreachable = True
