"""One error family for everything a user can get wrong.

The CLI turns a :class:`HarVitError` into one line on stderr and its ``exit_code``;
anything else is a bug and keeps its traceback.
"""
from __future__ import annotations


class HarVitError(Exception):
    """Base of every error a user can act on. The message says what to do."""

    exit_code = 1


class UsageError(HarVitError):
    """A bad option or combination of options (sysexits EX_USAGE-like: 2)."""

    exit_code = 2


class DataError(HarVitError):
    """Input data is missing, empty, corrupt or unusable."""


class ArtefactError(HarVitError):
    """A stage artefact (manifest, windows, checkpoint) is missing or corrupt."""


class DiskError(HarVitError):
    """A write failed: disk full, no permission, read-only filesystem. The message names the path."""


class DownloadError(HarVitError):
    """The dataset could not be downloaded or failed verification."""


class LockedError(HarVitError):
    """Another process holds the registry lock (sysexits EX_TEMPFAIL: 75)."""

    exit_code = 75
