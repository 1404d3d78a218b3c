"""Per-vector affine quantisation of embeddings to 8 or 4 bits for the wire.

`value ≈ offset + scale * code` with `code` in [0, 2**bits - 1]; offset is the
vector's minimum and `offset + scale * (2**bits - 1)` covers its maximum, so
every dimension comes back within `scale / 2` of the original (plus float32
rounding of the result). At 4 bits two codes share a byte: code 2i in the low
nibble, code 2i+1 in the high nibble.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from omega.protocol.errors import InvalidPattern

_F32_MAX = float(np.finfo(np.float32).max)

#: Bit widths the protocol carries.
SUPPORTED_BITS: tuple[int, ...] = (8, 4)
#: Each code as a float64, by bit width.
_CODE_VALUES = {bits: np.arange(1 << bits, dtype=np.float64) for bits in SUPPORTED_BITS}
#: A byte's two 4-bit codes (low nibble first), by byte value.
_NIBBLES = np.array([[b & 0x0F, b >> 4] for b in range(256)], dtype=np.uint8)


def _float32(name: str, value: float) -> float:
    """`value` rounded to float32 (what the wire holds), rejecting NaN/inf."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise InvalidPattern(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value) or abs(value) > _F32_MAX:
        raise InvalidPattern(f"{name} must be a finite float32, got {value!r}")
    return float(np.float32(value))


@dataclass(frozen=True, slots=True)
class QuantizedEmbedding:
    """An embedding as it travels: codes `q` plus the affine map back to floats."""

    q: bytes
    bits: int
    scale: float
    offset: float

    def __post_init__(self) -> None:
        if self.bits not in SUPPORTED_BITS:
            raise InvalidPattern(f"embedding bits must be 8 or 4, got {self.bits!r}")
        if not isinstance(self.q, bytes):
            raise InvalidPattern(f"embedding codes must be bytes, got {type(self.q).__name__}")
        if not self.q:
            raise InvalidPattern("embedding codes are empty")
        object.__setattr__(self, "scale", _float32("embedding scale", self.scale))
        object.__setattr__(self, "offset", _float32("embedding offset", self.offset))
        if self.scale < 0:
            raise InvalidPattern(f"embedding scale must be >= 0, got {self.scale}")

    @property
    def dim(self) -> int:
        """Number of dimensions the codes describe."""
        return len(self.q) * 8 // self.bits

    def codes(self) -> np.ndarray:
        """The integer codes, one uint8 per dimension."""
        raw = np.frombuffer(self.q, dtype=np.uint8)
        if self.bits == 8:
            return raw.copy()
        return _NIBBLES.take(raw, axis=0).reshape(-1)

    def dequantize(self) -> np.ndarray:
        """The float32 vector these codes stand for."""
        # offset + scale·code for each of the 2**bits codes once, then looked up per dimension: the same
        # float64 operation per element as on the whole vector (so the same float32s), on 16 or 256 values
        # instead of 384, and no np.clip (the server dequantises every pushed pattern).
        values = self.offset + self.scale * _CODE_VALUES[self.bits]
        if values[-1] > _F32_MAX:  # offset + scale·code can round just past float32's range at its extremes
            values = np.minimum(values, _F32_MAX)  # (scale >= 0 and offset is a float32: only the top end)
        return values.astype(np.float32).take(self.codes())


def quantize(vector: np.ndarray, bits: int = 8) -> QuantizedEmbedding:
    """Quantise a 1-d float vector to `bits` (8 or 4) per dimension.

    Raises InvalidPattern for NaN/inf, an empty or non-1-d vector, or an odd
    length at 4 bits.
    """
    if bits not in SUPPORTED_BITS:
        raise InvalidPattern(f"bits must be 8 or 4, got {bits!r}")
    try:
        x = np.asarray(vector, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InvalidPattern(f"embedding is not a numeric vector: {exc}") from None
    if x.ndim != 1 or x.size == 0:
        raise InvalidPattern(f"embedding must be a non-empty 1-d vector, got shape {x.shape}")
    if not np.all(np.isfinite(x)) or np.max(np.abs(x)) > float(np.finfo(np.float32).max):
        raise InvalidPattern("embedding contains NaN, inf or values beyond float32")
    if bits == 4 and x.size % 2:
        raise InvalidPattern(f"a 4-bit embedding needs an even dimension, got {x.size}")

    levels = (1 << bits) - 1
    lo, hi = float(x.min()), float(x.max())
    # The wire holds float32: round the offset down and the scale up so that
    # [offset, offset + levels*scale] still covers [lo, hi] exactly.
    offset = np.float32(lo)
    if float(offset) > lo:
        offset = np.nextafter(offset, np.float32(-np.inf))
    scale = np.float32((hi - float(offset)) / levels)
    while float(offset) + float(scale) * levels < hi:
        scale = np.nextafter(scale, np.float32(np.inf))
    if scale > 0:
        codes = np.rint((x - float(offset)) / float(scale))
    else:
        codes = np.zeros_like(x)
    codes = np.clip(codes, 0, levels).astype(np.uint8)
    if bits == 4:
        codes = codes[0::2] | (codes[1::2] << 4)
    return QuantizedEmbedding(q=codes.tobytes(), bits=bits, scale=float(scale), offset=float(offset))


def dequantize(embedding: QuantizedEmbedding) -> np.ndarray:
    """The float32 vector a QuantizedEmbedding stands for."""
    return embedding.dequantize()
