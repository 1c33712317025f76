"""Row-sparse gradients of 2-D params (embedding tables): :class:`RowSparseGrad` and the
validated kernels that apply them, touching only the rows they name.

An embedding lookup ``E[ids]`` has a gradient that is zero outside the looked-up rows; it
is given as ``RowSparseGrad(indices, rows)``: the row numbers (repeats allowed: their rows
add up, as torch's ``coalesce()`` sums them) and one row of values per index. This is the
layout of torch's sparse COO grads with one sparse dimension (``nn.Embedding(sparse=True)``).

* :class:`fastlr.SparseAdam` (torch.optim.SparseAdam) takes one per param.
* The validated kernels :func:`sparse_adam`, :func:`sparse_adagrad`, :func:`sparse_sgd` and
  :func:`coalesce` (from :mod:`fastlr._core.sparse`) take the arrays; their pure-NumPy
  twins are in :mod:`fastlr.reference.sparse`.
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np

from fastlr._core.sparse import coalesce, sparse_adagrad, sparse_adam, sparse_sgd

__all__ = ["RowSparseGrad", "coalesce", "sparse_adam", "sparse_adagrad", "sparse_sgd"]

_NAME = "fastlr.RowSparseGrad"


def _indices_arg(indices: Any) -> np.ndarray:
    """1-D int64 indices, each >= 0, from an integer array or a sequence of integers."""
    if isinstance(indices, (str, bytes)) or indices is None:
        raise TypeError(f"{_NAME}: indices must be a 1-D array or sequence of integers, got "
                        f"{type(indices).__name__}")
    if isinstance(indices, np.ndarray):
        arr = indices
    else:
        if hasattr(indices, "__array__") or hasattr(indices, "numpy"):
            raise TypeError(f"{_NAME}: indices must be a numpy.ndarray or a sequence of "
                            f"integers, got {type(indices).__name__} (for a torch tensor, "
                            f"pass t.numpy())")
        items = list(indices)
        if not all(isinstance(k, numbers.Integral) and not isinstance(k, (bool, np.bool_))
                   for k in items):
            bad = next(k for k in items if not isinstance(k, numbers.Integral)
                       or isinstance(k, (bool, np.bool_)))
            raise TypeError(f"{_NAME}: indices must be integers, got {bad!r}")
        try:
            arr = np.array(items, dtype=np.int64).reshape(len(items))
        except OverflowError:
            raise ValueError(f"{_NAME}: an index does not fit in int64: "
                             f"{max(items)!r}") from None
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{_NAME}: indices must have an integer dtype, got {arr.dtype}")
    if arr.ndim != 1:
        raise ValueError(f"{_NAME}: indices must be 1-D, got shape {arr.shape}")
    if arr.dtype.kind == "u" and arr.size and arr.max() > np.iinfo(np.int64).max:
        raise ValueError(f"{_NAME}: an index does not fit in int64: {arr.max()}")
    arr = np.ascontiguousarray(arr, dtype=np.int64)
    if arr.size and arr.min() < 0:
        k = int(np.argmax(arr < 0))
        raise ValueError(f"{_NAME}: indices[{k}] is {arr[k]}; indices must be >= 0")
    return arr


class RowSparseGrad:
    """A row-sparse gradient of a 2-D param: ``(indices, rows)``.

    The dense gradient it stands for is ``G`` with ``G[indices[k]] += rows[k]`` for every
    ``k`` and zero elsewhere (repeated indices add up). The arrays are validated here; the
    indices against the param's row count, and the rows' dtype and width against the
    param's, when an optimizer step uses it.

    Parameters
    ----------
    indices : array_like of int
        1-D integers >= 0 (any integer dtype; kept as a C-contiguous int64 array, copied
        when it is not one already).
    rows : numpy.ndarray
        float32 or float64, shape ``(len(indices), n_cols)`` (gradient units); kept as a
        C-contiguous array (copied when it is not one already; it is only read).

    Attributes
    ----------
    indices : numpy.ndarray
        The int64 row numbers.
    rows : numpy.ndarray
        The values, one row per index.

    Raises
    ------
    TypeError
        If ``indices`` are not integers or ``rows`` is not a float32/float64 array.
    ValueError
        If ``indices`` is not 1-D or holds a negative value, or ``rows`` is not 2-D with one
        row per index.

    Examples
    --------
    >>> g = fastlr.RowSparseGrad([4, 0, 4], np.ones((3, 2), dtype=np.float32))
    >>> g
    RowSparseGrad(nnz=3, n_cols=2, dtype=float32)
    >>> g.to_dense(5)[:, 0]
    array([1., 0., 0., 0., 2.], dtype=float32)
    """

    __slots__ = ("indices", "rows")

    indices: np.ndarray
    rows: np.ndarray

    def __init__(self, indices: Any, rows: np.ndarray) -> None:
        idx = _indices_arg(indices)
        if not isinstance(rows, np.ndarray):
            raise TypeError(f"{_NAME}: rows must be a numpy.ndarray, got "
                            f"{type(rows).__name__}")
        if rows.dtype not in (np.float32, np.float64):
            raise TypeError(f"{_NAME}: rows must be float32 or float64, got {rows.dtype}")
        if rows.ndim != 2 or rows.shape[0] != idx.shape[0]:
            raise ValueError(f"{_NAME}: rows must be 2-D with one row per index, got shape "
                             f"{rows.shape} for {idx.shape[0]} indices; expected "
                             f"({idx.shape[0]}, n_cols)")
        if not (rows.flags.c_contiguous and rows.flags.aligned and
                rows.dtype.isnative):
            rows = np.ascontiguousarray(rows, dtype=rows.dtype.newbyteorder("="))
        object.__setattr__(self, "indices", idx)
        object.__setattr__(self, "rows", rows)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{_NAME} is immutable; build a new one")

    @property
    def nnz(self) -> int:
        """The number of entries (indices, repeats counted)."""
        return int(self.indices.shape[0])

    @property
    def n_cols(self) -> int:
        """The width of each row."""
        return int(self.rows.shape[1])

    @property
    def dtype(self) -> np.dtype:
        """The rows' dtype."""
        return self.rows.dtype

    def to_dense(self, n_rows: int) -> np.ndarray:
        """The dense gradient, ``(n_rows, n_cols)``: the rows added at their indices.

        Parameters
        ----------
        n_rows : int
            The param's row count (every index must be below it).

        Returns
        -------
        numpy.ndarray
            A new array of the rows' dtype.

        Raises
        ------
        ValueError
            If an index is ``>= n_rows``.
        """
        n = int(n_rows)
        if self.nnz and int(self.indices.max()) >= n:
            raise ValueError(f"{_NAME}.to_dense: index {int(self.indices.max())} is out of "
                             f"range for {n} rows")
        out = np.zeros((n, self.n_cols), dtype=self.rows.dtype)
        np.add.at(out, self.indices, self.rows)
        return out

    def __repr__(self) -> str:
        return f"RowSparseGrad(nnz={self.nnz}, n_cols={self.n_cols}, dtype={self.rows.dtype})"
