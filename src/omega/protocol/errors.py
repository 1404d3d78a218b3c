"""Typed errors of the wire protocol."""


class ProtocolError(ValueError):
    """A frame that cannot be accepted. `code` is the machine-readable reason sent in error replies."""

    code: str = "malformed"

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
