"""One exception type for every error a user can cause and fix.

The CLIs catch `FsacError` and print its message on one line (no traceback): the message
must name the file, folder or setting at fault and, where possible, what to do about it.
"""


class FsacError(Exception):
    """A user-facing error: bad input, bad setting, missing file, tampered model."""


class ImageDecodeError(FsacError):
    """An image file (or frame buffer) that cannot be decoded."""

    def __init__(self, source: str, reason: str):
        self.source = str(source)
        self.reason = reason
        super().__init__(f"cannot read image {self.source}: {reason}")
