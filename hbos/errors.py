"""Every error the tool raises on purpose.

Each carries a one-line message for the user and, where it helps, a hint on
how to fix it. Only the command line (hbos.cli) and the doit adapter
(hbos.tasks.adapter, for dodo.py) turn these into output and exit codes;
everything else raises, or reports one as part of a verdict.
"""

from __future__ import annotations


class HbosError(Exception):
    """Base of all expected failures: bad input, missing tools, failed checks."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message}\n  hint: {self.hint}"
        return self.message


class ConfigError(HbosError):
    """config.yaml (or an overlay) is malformed or holds an invalid value."""


class ToolMissing(HbosError):
    """A host program is not installed."""


class CommandFailed(HbosError):
    """A command exited non-zero. `output` holds its full combined output."""

    def __init__(self, message: str, output: str = "", hint: str | None = None,
                 returncode: int | None = None) -> None:
        super().__init__(message, hint)
        self.output = output
        self.returncode = returncode


class DownloadError(HbosError):
    """A URL could not be fetched (network error, HTTP status, truncated body)."""


class HashMismatch(HbosError):
    """A file's sha256 differs from the pinned one."""


class UnsafeArchive(HbosError):
    """An archive member would escape its destination or is a device/fifo."""


class BuildError(HbosError):
    """A build stage could not produce its artifact."""


class MeasurementError(HbosError):
    """The launch measurement cannot be computed from the given inputs."""


class LaunchError(HbosError):
    """The VM cannot be started, stopped or queried."""


class ReleaseError(HbosError):
    """A release is incomplete, tampered with, or inconsistent."""


class HostError(HbosError):
    """The host cannot be checked or set up."""


class AttestationError(HbosError):
    """An attestation report cannot be parsed or verified."""


class IdentityError(HbosError):
    """Launch identity: a key, an ID block or a release signature is missing or wrong."""


class Busy(HbosError):
    """Another run holds a lock this one needs (hbos.util.lock)."""
