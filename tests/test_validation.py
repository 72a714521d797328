"""Tests for the shared input checks in tcm._validation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tcm._validation import as_embeddings, check_same_length, encode_labels, l2_normalize


def test_as_embeddings_accepts_numpy_and_torch_and_promotes_half() -> None:
    x = np.arange(6, dtype=np.float64).reshape(3, 2)
    t = as_embeddings(x)
    assert t.dtype == torch.float64 and t.shape == (3, 2)
    h = as_embeddings(torch.ones(2, 4, dtype=torch.float16))
    assert h.dtype == torch.float32
    b = as_embeddings(torch.ones(2, 4, dtype=torch.bfloat16))
    assert b.dtype == torch.float32
    i = as_embeddings(np.ones((2, 3), dtype=np.int32))
    assert i.dtype == torch.float32


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_as_embeddings_rejects_non_finite_and_names_row(bad: float) -> None:
    x = np.ones((5, 3))
    x[3, 1] = bad
    with pytest.raises(ValueError, match=r"NaN or inf .* 1 row.*row index 3"):
        as_embeddings(x)


def test_as_embeddings_rejects_wrong_shapes() -> None:
    with pytest.raises(ValueError, match="2-D"):
        as_embeddings(np.ones(4))
    with pytest.raises(ValueError, match="empty"):
        as_embeddings(np.ones((0, 4)))
    with pytest.raises(ValueError, match="numeric"):
        as_embeddings(object())


def test_l2_normalize_unit_rows_and_zero_row_error() -> None:
    x = torch.tensor([[3.0, 4.0], [0.0, 2.0]])
    y = l2_normalize(x)
    # float32: D = 2 squares and a sqrt to normalise, again to measure, one division
    eps32 = float(torch.finfo(torch.float32).eps)
    torch.testing.assert_close(y.norm(dim=1), torch.ones(2), rtol=0, atol=(2 + 3) * eps32)
    with pytest.raises(ValueError, match=r"all-zero row.*row 1"):
        l2_normalize(torch.tensor([[1.0, 0.0], [0.0, 0.0]]))


def test_encode_labels_strings_and_large_ids_do_not_collide() -> None:
    codes, classes = encode_labels(["b", "a", "b", "c"])
    assert codes.tolist() == [1, 0, 1, 2]
    assert classes.tolist() == ["a", "b", "c"]
    big = np.array([2**24, 2**24 + 1, 2**24, 2**40 + 3], dtype=np.int64)
    codes, classes = encode_labels(big)
    assert len(classes) == 3
    assert np.array_equal(classes[codes], big)
    codes, _ = encode_labels(torch.tensor([5, 7, 5]))
    assert codes.tolist() == [0, 1, 0]


def test_encode_labels_errors() -> None:
    with pytest.raises(ValueError, match="length 2 but there are 3"):
        encode_labels([1, 2], n=3)
    with pytest.raises(ValueError, match="1-D"):
        encode_labels(np.ones((2, 2)))
    with pytest.raises(ValueError, match="fractional"):
        encode_labels(np.array([1.5, 2.0]))
    with pytest.raises(ValueError, match="NaN"):
        encode_labels(np.array([1.0, np.nan]))
    with pytest.raises(ValueError, match="length 3 but b has length 4"):
        check_same_length(3, 4, "a", "b")
