"""Input validation shared by the reference modules: every failure is a ValueError naming the argument."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

from reference.tolerances import PROB_SUM_ATOL


def as_float(name: str, x: ArrayLike, ndim: int) -> NDArray[np.float64]:
    """Convert ``x`` to a finite float64 array of rank ``ndim``.

    Args:
        name: The argument's name, quoted in the error message.
        x: The value to convert.
        ndim: The required number of dimensions.

    Returns:
        ``x`` as a float64 ndarray.

    Raises:
        ValueError: If ``x`` has the wrong rank or non-finite entries.
    """
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimension(s), got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite (shape {arr.shape})")
    return arr


def as_probs(name: str, x: ArrayLike, ndim: int) -> NDArray[np.float64]:
    """Convert ``x`` to float64 probability vectors along its last axis.

    Args:
        name: The argument's name, quoted in the error message.
        x: Probabilities, shape [K] (``ndim=1``) or [N, K] (``ndim=2``).
        ndim: The required number of dimensions.

    Returns:
        ``x`` as a float64 ndarray.

    Raises:
        ValueError: If a row has a negative entry or does not sum to one within ``PROB_SUM_ATOL``.
    """
    arr = as_float(name, x, ndim)
    if arr.shape[-1] == 0:
        raise ValueError(f"{name} must have at least one action, got shape {arr.shape}")
    if np.any(arr < 0.0):
        raise ValueError(f"{name} must be non-negative (shape {arr.shape})")
    if np.any(np.abs(arr.sum(axis=-1) - 1.0) > PROB_SUM_ATOL):
        raise ValueError(f"{name} rows must sum to 1 within {PROB_SUM_ATOL} (shape {arr.shape})")
    return arr


def as_actions(name: str, x: ArrayLike, n: int, num_actions: int) -> NDArray[np.int64]:
    """Convert ``x`` to an int64 vector of ``n`` action ids in ``[0, num_actions)``.

    Args:
        name: The argument's name, quoted in the error message.
        x: Action ids, shape [N].
        n: The required length N.
        num_actions: The number of actions K.

    Returns:
        ``x`` as an int64 ndarray.

    Raises:
        ValueError: If ``x`` is not an integer vector of length ``n`` with ids in range.
    """
    arr = np.asarray(x)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise ValueError(f"{name} must have shape [{n}], got {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name} must hold integers, got dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    if np.any((arr < 0) | (arr >= num_actions)):
        raise ValueError(f"{name} must lie in [0, {num_actions}) (shape {arr.shape})")
    return arr


def check_rows(name: str, arr: NDArray[np.float64], n: int, other: str) -> None:
    """Require ``arr`` to have ``n`` rows, like ``other``.

    Args:
        name: The argument's name, quoted in the error message.
        arr: The array whose first dimension is checked.
        n: The required first dimension.
        other: The name of the argument that fixed ``n``.

    Raises:
        ValueError: If ``arr.shape[0] != n``.
    """
    if arr.shape[0] != n:
        raise ValueError(f"{name} has shape {arr.shape}, expected {n} rows like {other}")
