"""Exceptions that carry a message meant for a person.

Every error a user can cause (a missing file, a corrupt image, an unknown label, an offline
download) is a :class:`BelkaError`. The CLI prints ``belka: <message>`` and exits with
``exit_code``; it never shows a traceback for these.
"""

from __future__ import annotations


class BelkaError(Exception):
    """Base class for errors caused by input or environment, not by a bug."""

    exit_code = 2

    def __init__(self, message: str, *, path: str | None = None):
        self.message = message
        self.path = path
        super().__init__(f"{path}: {message}" if path else message)


class ImageError(BelkaError):
    """An image could not be read: missing, not an image, corrupt, too large, unsupported."""


class WeightsError(BelkaError):
    """Model weights are missing, unreachable, corrupt or do not fit the architecture."""


class ModelError(BelkaError):
    """Unknown model, layer, label or group name."""


class UsageError(BelkaError):
    """Options that do not make sense together."""


class NotAnImageError(ImageError):
    """The data is not in a supported image format (HTTP 415)."""


class CorruptImageError(ImageError):
    """The data claims to be an image but is empty, truncated or corrupt (HTTP 422)."""


class ImageTooLargeError(ImageError):
    """The image's header declares more pixels than the limit allows."""
