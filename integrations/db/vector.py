"""A portable vector column: float32 bytes in LargeBinary, with a dimension check.

pgvector is not available for the PostgreSQL this project runs against, so
vectors are stored as raw little-endian float32 bytes (BYTEA on PostgreSQL,
BLOB on SQLite): the same column type and migration on both. Search never
happens in SQL; `integrations.review.exemplar_index` loads the vectors into a
vector-search library.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sqlalchemy import LargeBinary
from sqlalchemy.types import TypeDecorator

FLOAT32 = np.dtype("<f4")


class VectorDimensionError(ValueError):
    """A vector whose length differs from its column's dimension."""


def vector_bytes(value: Any, dim: int | None = None, *, what: str = "vector") -> bytes:
    """``value`` as little-endian float32 bytes, checking its length against ``dim``.

    Raises
    ------
    VectorDimensionError
        When ``value`` is not one-dimensional, its length differs from ``dim``, or it
        holds NaN or infinity.
    """
    arr = np.asarray(value, dtype=FLOAT32)
    if arr.ndim != 1:
        raise VectorDimensionError(f"{what}: expected a 1-D vector, got shape {arr.shape}")
    if dim is not None and arr.shape[0] != dim:
        raise VectorDimensionError(
            f"{what}: {arr.shape[0]} values for a column of dimension {dim}; "
            "embeddings of another backbone need their own column or table"
        )
    if not np.isfinite(arr).all():
        raise VectorDimensionError(f"{what}: holds NaN or infinity")
    return arr.tobytes()


def stack_vectors(values: list[Any], dim: int) -> np.ndarray:
    """Stack stored vectors (column bytes, or the arrays the `Vector` column reads back) into an
    (n, dim) float32 array, in one copy.

    Raises
    ------
    VectorDimensionError
        When the vectors are not all of dimension ``dim``.
    """
    if not values:
        return np.zeros((0, dim), dtype=FLOAT32)
    arr = np.frombuffer(b"".join(v.astype(FLOAT32).tobytes() if isinstance(v, np.ndarray) else bytes(v)
                                 for v in values), dtype=FLOAT32)
    if arr.size != len(values) * dim:
        raise VectorDimensionError(f"stored vectors are not all of dimension {dim}")
    return arr.reshape(len(values), dim)


class Vector(TypeDecorator):
    """A float32 vector column; ``Vector(384)`` checks the length, ``Vector()`` any length.

    Binds a sequence or ndarray (checked: 1-D, finite, right length) and reads back
    a float32 ndarray. Bytes are passed through unchanged (bulk inserts that were
    checked with :func:`vector_bytes`).
    """

    impl = LargeBinary
    cache_ok = True

    def __init__(self, dim: int | None = None):
        super().__init__()
        self.dim = dim

    def process_bind_param(self, value: Any, dialect: Any) -> bytes | None:
        if value is None:
            return None
        if isinstance(value, (bytes, bytearray, memoryview)):
            data = bytes(value)
            if len(data) % 4 or (self.dim is not None and len(data) != 4 * self.dim):
                raise VectorDimensionError(
                    f"vector: {len(data)} bytes do not hold {self.dim or 'whole'} float32 values")
            return data
        return vector_bytes(value, self.dim)

    def process_result_value(self, value: Any, dialect: Any) -> np.ndarray | None:
        if value is None:
            return None
        return np.frombuffer(bytes(value), dtype=FLOAT32).copy()
