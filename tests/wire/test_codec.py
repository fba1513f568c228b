"""Codec: round trips (exact or within the dtype's bound) and strict rejection of malformed arrays."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from wire.codec import (CODECS, MalformedUpdateError, decode_values, encode_values, expected_keys,
                          relative_error, wire_bytes)

DTYPES = sorted(CODECS)
BYTES_PER_VALUE = {"float32": 4, "float16": 2, "bfloat16": 2, "int8": 1}


def _vec(k: int, seed: int = 0, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(k, generator=torch.Generator().manual_seed(seed)) * scale


def _roundtrip(x: torch.Tensor, dtype: str, block: int = 256) -> torch.Tensor:
    return decode_values(encode_values(x, dtype, "values", block), dtype, x.numel(), "values", block)


# ---- round trips ----------------------------------------------------------------------------------
def test_float32_roundtrip_is_exact():
    x = _vec(1000)
    assert torch.equal(_roundtrip(x, "float32"), x)


@pytest.mark.parametrize("dtype,torch_dtype", [("float16", torch.float16), ("bfloat16", torch.bfloat16)])
def test_half_precision_roundtrip_equals_torch_cast(dtype, torch_dtype):
    x = _vec(1000, seed=1)
    # Bit-exact with torch's own round-to-nearest cast: the codec adds no error of its own.
    assert torch.equal(_roundtrip(x, dtype), x.to(torch_dtype).float())


@pytest.mark.parametrize("dtype,eps", [("float16", 2.0**-11), ("bfloat16", 2.0**-8)])
def test_half_precision_relative_error_bound(dtype, eps):
    x = _vec(5000, seed=2) + 0.5  # keep entries in the normal range
    back = _roundtrip(x, dtype)
    assert ((back - x).abs() <= eps * x.abs() + 1e-7).all()


@pytest.mark.parametrize("block", [1, 7, 64, 256, 10_000])
def test_int8_error_is_at_most_half_a_step_per_block(block):
    x = _vec(1234, seed=3, scale=0.01)
    arrays = encode_values(x, "int8", "values", block)
    scales = torch.from_numpy(arrays["values.scales"])
    assert scales.numel() == math.ceil(1234 / block)
    back = _roundtrip(x, "int8", block)
    step = scales.repeat_interleave(block)[:1234]
    assert ((back - x).abs() <= step / 2 + 1e-9).all()
    # The largest entry of each block is represented exactly as +-127 steps.
    assert int(np.abs(arrays["values"]).max()) == 127


def test_int8_all_zero_block_has_zero_scale_and_decodes_to_zero():
    x = torch.cat([torch.zeros(256), _vec(10, seed=4)])
    arrays = encode_values(x, "int8", "values", 256)
    assert arrays["values.scales"][0] == 0.0
    assert torch.equal(_roundtrip(x, "int8")[:256], torch.zeros(256))


@pytest.mark.parametrize("dtype", DTYPES)
def test_empty_vector_roundtrips(dtype):
    assert _roundtrip(torch.zeros(0), dtype).shape == (0,)


@pytest.mark.parametrize("dtype", DTYPES)
def test_wire_dtype_keys_and_size(dtype):
    arrays = encode_values(_vec(1000), dtype, "delta", 100)
    assert set(arrays) == expected_keys(dtype, "delta")
    scales = 10 * 4 if dtype == "int8" else 0
    assert wire_bytes(arrays) == 1000 * BYTES_PER_VALUE[dtype] + scales


@settings(max_examples=60, deadline=None)
@given(values=st.lists(st.floats(-1e4, 1e4, allow_nan=False, width=32), min_size=0, max_size=300),
       block=st.integers(1, 300), dtype=st.sampled_from(DTYPES))
def test_roundtrip_property(values, block, dtype):
    x = torch.tensor(values, dtype=torch.float32)
    back = _roundtrip(x, dtype, block)
    assert back.shape == x.shape and back.dtype == torch.float32 and torch.isfinite(back).all()
    bound = {"float32": 0.0, "float16": 2.0**-11, "bfloat16": 2.0**-8}.get(dtype)
    if bound is not None:  # per-entry relative bound (float16 subnormals: absolute 2^-24)
        assert ((back - x).abs() <= bound * x.abs() + 2.0**-24).all()
    elif x.numel():
        assert float((back - x).abs().max()) <= float(x.abs().max()) / 127 / 2 * (1 + 1e-6) + 1e-30


@pytest.mark.parametrize("dtype", DTYPES)
def test_relative_error_matches_dtype(dtype):
    err = relative_error(_vec(4096, seed=5), dtype, 256)
    limit = {"float32": 0.0, "float16": 1e-3, "bfloat16": 5e-3, "int8": 2e-2}[dtype]
    assert 0.0 <= err <= limit
    assert relative_error(torch.zeros(8), dtype) == 0.0


# ---- encode refuses what could not decode -----------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
def test_encode_rejects_non_finite_and_2d(dtype):
    with pytest.raises(MalformedUpdateError, match="non-finite"):
        encode_values(torch.tensor([1.0, float("nan")]), dtype)
    with pytest.raises(MalformedUpdateError, match="1-D"):
        encode_values(torch.zeros(2, 2), dtype)


@pytest.mark.parametrize("dtype,big", [("float16", 1e5), ("bfloat16", 3.4e38)])
def test_encode_rejects_overflow_of_narrow_float(dtype, big):
    with pytest.raises(MalformedUpdateError, match=f"beyond the {dtype} range"):
        encode_values(torch.tensor([1.0, big]), dtype)


def test_unknown_dtype_is_rejected():
    with pytest.raises(MalformedUpdateError, match="unknown value dtype"):
        encode_values(torch.zeros(3), "int4")
    with pytest.raises(MalformedUpdateError, match="unknown value dtype"):
        decode_values({"values": np.zeros(3, np.float32)}, "int4", 3)


# ---- strict decoding ----------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
def test_decode_rejects_wrong_length(dtype):
    arrays = encode_values(_vec(100), dtype, "values", 10)
    with pytest.raises(MalformedUpdateError, match="shape"):
        decode_values(arrays, dtype, 101, "values", 10)
    short = dict(arrays, values=arrays["values"][:99])
    with pytest.raises(MalformedUpdateError, match="shape"):
        decode_values(short, dtype, 100, "values", 10)


@pytest.mark.parametrize("dtype", DTYPES)
def test_decode_rejects_2d_array(dtype):
    arrays = encode_values(_vec(100), dtype, "values", 10)
    arrays["values"] = arrays["values"].reshape(10, 10)
    with pytest.raises(MalformedUpdateError, match="shape"):
        decode_values(arrays, dtype, 100, "values", 10)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("wrong", [np.float64, np.float32, np.float16, np.uint16, np.int8, np.int16])
def test_decode_rejects_wrong_dtype(dtype, wrong):
    arrays = encode_values(_vec(50), dtype, "values", 10)
    if arrays["values"].dtype == np.dtype(wrong):
        pytest.skip("that is the right dtype")
    arrays["values"] = arrays["values"].astype(wrong)
    with pytest.raises(MalformedUpdateError, match="dtype"):
        decode_values(arrays, dtype, 50, "values", 10)


def test_decode_rejects_big_endian_float32():
    arrays = {"values": np.arange(4, dtype=">f4")}
    with pytest.raises(MalformedUpdateError, match="dtype"):
        decode_values(arrays, "float32", 4)


@pytest.mark.parametrize("dtype", DTYPES)
def test_decode_rejects_missing_and_extra_keys(dtype):
    arrays = encode_values(_vec(20), dtype, "values", 8)
    with pytest.raises(MalformedUpdateError, match="needs exactly"):
        decode_values({}, dtype, 20, "values", 8)
    with pytest.raises(MalformedUpdateError, match="needs exactly"):
        decode_values(dict(arrays, **{"values.extra": np.zeros(1, np.float32)}), dtype, 20, "values", 8)
    if dtype == "int8":
        with pytest.raises(MalformedUpdateError, match="needs exactly"):
            decode_values({"values": arrays["values"]}, dtype, 20, "values", 8)
    else:
        with pytest.raises(MalformedUpdateError, match="needs exactly"):
            decode_values(dict(arrays, **{"values.scales": np.ones(3, np.float32)}), dtype, 20, "values", 8)


def test_decode_ignores_other_prefixes():
    arrays = encode_values(_vec(20), "int8", "delta", 8)
    arrays.update(encode_values(_vec(4), "int8", "head-delta", 8))
    assert decode_values(arrays, "int8", 20, "delta", 8).shape == (20,)
    assert decode_values(arrays, "int8", 4, "head-delta", 8).shape == (4,)


@pytest.mark.parametrize("nscales", [0, 2, 4])
def test_int8_rejects_wrong_scale_count(nscales):
    arrays = encode_values(_vec(20), "int8", "values", 8)  # needs 3 scales
    arrays["values.scales"] = np.ones(nscales, np.float32)
    with pytest.raises(MalformedUpdateError, match="scales"):
        decode_values(arrays, "int8", 20, "values", 8)


def test_int8_rejects_scales_of_wrong_dtype():
    arrays = encode_values(_vec(20), "int8", "values", 8)
    arrays["values.scales"] = arrays["values.scales"].astype(np.float64)
    with pytest.raises(MalformedUpdateError, match="dtype"):
        decode_values(arrays, "int8", 20, "values", 8)


def test_int8_block_size_mismatch_is_a_scale_count_error():
    arrays = encode_values(_vec(20), "int8", "values", 8)
    with pytest.raises(MalformedUpdateError, match="scales"):
        decode_values(arrays, "int8", 20, "values", 4)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -1.0])
def test_int8_rejects_bad_scales(bad):
    arrays = encode_values(_vec(20), "int8", "values", 8)
    arrays["values.scales"][1] = bad
    with pytest.raises(MalformedUpdateError, match="negative or non-finite"):
        decode_values(arrays, "int8", 20, "values", 8)


def test_int8_rejects_minus_128():
    arrays = encode_values(_vec(20), "int8", "values", 8)
    arrays["values"][5] = -128
    with pytest.raises(MalformedUpdateError, match="-128"):
        decode_values(arrays, "int8", 20, "values", 8)


def test_int8_rejects_overflowing_product():
    arrays = {"values": np.full(4, 127, np.int8), "values.scales": np.array([3e38], np.float32)}
    with pytest.raises(MalformedUpdateError, match="non-finite"):
        decode_values(arrays, "int8", 4, "values", 4)


@pytest.mark.parametrize("dtype,bad", [("float32", np.float32(np.nan)), ("float16", np.float16(np.inf)),
                                       ("bfloat16", np.uint16(0x7F80))])  # 0x7F80 = bfloat16 +inf
def test_decode_rejects_non_finite_values(dtype, bad):
    arrays = encode_values(_vec(10), dtype, "values", 4)
    arrays["values"][3] = bad
    with pytest.raises(MalformedUpdateError, match="non-finite"):
        decode_values(arrays, dtype, 10, "values", 4)


def test_decode_rejects_non_array():
    with pytest.raises(MalformedUpdateError, match="numpy array"):
        decode_values({"values": [1.0, 2.0]}, "float32", 2)


def test_decode_does_not_alias_the_wire_buffer():
    arrays = encode_values(_vec(10), "float32", "values")
    out = decode_values(arrays, "float32", 10)
    arrays["values"][:] = 0
    assert out.abs().sum() > 0
