"""The error every layer above the protocol raises for bad input or bad state.

The CLI turns an `OmegaError` into one line on stderr and exit code 2. The
protocol package keeps its own `ProtocolError` (it depends on nothing of ours).
"""


class OmegaError(Exception):
    """A failure the user can act on: bad input, missing file, corrupt store."""
