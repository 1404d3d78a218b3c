"""8/4-bit quantisation: the documented error bound, cosine floors, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from omega.protocol import InvalidPattern, QuantizedEmbedding, dequantize, quantize

#: Measured on 2,000 random unit 384-d vectors: min cosine 0.99996 (8-bit), 0.9858 (4-bit).
COSINE_FLOOR = {8: 0.9995, 4: 0.98}

vectors = hnp.arrays(
    np.float32,
    st.integers(1, 64).map(lambda n: 2 * n),
    elements=st.floats(allow_nan=False, allow_infinity=False, width=32),
)


@settings(max_examples=300, deadline=None)
@given(vector=vectors, bits=st.sampled_from([8, 4]))
def test_max_abs_error_is_at_most_half_a_step(vector: np.ndarray, bits: int) -> None:
    q = quantize(vector, bits)
    back = dequantize(q)
    assert back.dtype == np.float32 and back.shape == vector.shape
    assert q.dim == vector.size and len(q.q) == vector.size * bits // 8
    err = np.abs(back.astype(np.float64) - vector.astype(np.float64))
    # scale/2, plus float32 rounding of the dequantised value itself.
    bound = q.scale / 2 + np.abs(vector.astype(np.float64)) * 2**-23 + 1e-45
    assert np.all(err <= bound * (1 + 1e-9))


@pytest.mark.parametrize("bits", [8, 4])
def test_cosine_floor_on_random_unit_vectors(bits: int) -> None:
    rng = np.random.default_rng(42)
    v = rng.standard_normal((500, 384))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    cos = []
    for row in v:
        back = dequantize(quantize(row, bits)).astype(np.float64)
        cos.append(float(back @ row / np.linalg.norm(back)))
    assert min(cos) >= COSINE_FLOOR[bits]


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, 1e39])
def test_non_finite_input_is_rejected(bad: float) -> None:
    v = np.zeros(384)
    v[7] = bad
    with pytest.raises(InvalidPattern):
        quantize(v)


@pytest.mark.parametrize("shape", [(0,), (2, 2), ()])
def test_shape_must_be_a_non_empty_vector(shape: tuple[int, ...]) -> None:
    with pytest.raises(InvalidPattern):
        quantize(np.zeros(shape))


def test_four_bits_needs_an_even_dimension_and_bits_are_8_or_4() -> None:
    with pytest.raises(InvalidPattern):
        quantize(np.zeros(3), bits=4)
    with pytest.raises(InvalidPattern):
        quantize(np.zeros(4), bits=2)
    with pytest.raises(InvalidPattern):
        quantize(["a", "b"])  # type: ignore[arg-type]


def test_constant_vector_is_exact() -> None:
    q = quantize(np.full(384, 0.25), 4)
    assert q.scale == 0.0
    assert np.all(dequantize(q) == np.float32(0.25))


def test_four_bit_nibble_order_low_first() -> None:
    q = quantize(np.array([0.0, 15.0, 15.0, 0.0]), 4)
    assert q.scale == 1.0 and q.offset == 0.0
    assert q.q == bytes([0xF0, 0x0F])
    assert list(q.codes()) == [0, 15, 15, 0]


def test_eight_bit_codes_span_the_range() -> None:
    q = quantize(np.linspace(-1, 1, 256), 8)
    assert q.codes()[0] == 0 and q.codes()[-1] == 255
    assert np.allclose(dequantize(q), np.linspace(-1, 1, 256), atol=q.scale / 2 + 1e-7)


def test_quantized_embedding_validates_its_fields() -> None:
    for bad in [dict(bits=5), dict(scale=-1.0), dict(scale=math.nan), dict(offset=math.inf), dict(q=b"")]:
        fields = dict(q=bytes(4), bits=8, scale=1.0, offset=0.0) | bad
        with pytest.raises(InvalidPattern):
            QuantizedEmbedding(**fields)  # type: ignore[arg-type]


def test_float32_extremes_dequantize_to_finite_values() -> None:
    # Found by hypothesis: offset + scale·255 rounded past float32's maximum and came back as inf.
    vector = np.array([-1.8889468e22, 3.4028235e38], np.float32)
    back = dequantize(quantize(vector, 8))
    assert np.isfinite(back).all() and back[1] == np.float32(3.4028235e38)


def _dequantize_per_dimension(q: QuantizedEmbedding) -> np.ndarray:
    """The definition, on the whole vector: offset + scale·code in float64, clipped to float32, as float32."""
    raw = np.frombuffer(q.q, dtype=np.uint8)
    codes = raw if q.bits == 8 else np.stack([raw & 0x0F, raw >> 4], axis=1).reshape(-1)
    f32 = float(np.finfo(np.float32).max)
    return np.clip(q.offset + q.scale * codes.astype(np.float64), -f32, f32).astype(np.float32)


@settings(max_examples=400, deadline=None)
@given(
    q=st.binary(min_size=1, max_size=64),
    bits=st.sampled_from([8, 4]),
    scale=st.floats(0, allow_infinity=False, width=32),
    offset=st.floats(allow_nan=False, allow_infinity=False, width=32),
)
def test_dequantize_is_the_per_dimension_formula(q: bytes, bits: int, scale: float, offset: float) -> None:
    """dequantize maps each code through a table of the 2**bits values: the same float32s, extremes included."""
    emb = QuantizedEmbedding(q, bits, scale, offset)
    want = _dequantize_per_dimension(emb)
    got = emb.dequantize()
    assert got.dtype == np.float32 and got.shape == want.shape == (emb.dim,)
    assert np.array_equal(got, want)
    raw = np.frombuffer(q, dtype=np.uint8)
    assert np.array_equal(emb.codes(), raw if bits == 8 else np.stack([raw & 0x0F, raw >> 4], axis=1).reshape(-1))
