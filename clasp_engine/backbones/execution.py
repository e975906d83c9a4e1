"""How a backbone forward runs on its device: precision, host-to-device copies, out-of-memory splits.

One set of functions for CPU and CUDA, so that the CPU tests exercise the
code paths a GPU worker takes:
  - `autocast_for(device)`: bf16 autocast on CUDA (fp16 where bf16 is not
    supported), none (fp32) on CPU;
  - `to_device(batch, device)`: pinned host memory and a non-blocking copy
    when the target is CUDA, a plain tensor on CPU;
  - `forward_split_on_oom(fn, x)`: runs `fn` on the batch and, on
    torch.OutOfMemoryError, on each half (recursively) and concatenates, so a
    batch that does not fit is slower instead of failed.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Callable

import numpy as np
import torch

log = logging.getLogger(__name__)


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """The autocast dtype for `device`: bfloat16 on CUDA (float16 without bf16 support), None on CPU."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def autocast_for(device: torch.device) -> contextlib.AbstractContextManager:
    """A context running the forward in reduced precision on CUDA and in float32 elsewhere."""
    dtype = autocast_dtype(device)
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def to_device(batch: np.ndarray, device: torch.device) -> torch.Tensor:
    """A host array as a tensor on `device`; CUDA copies go through pinned memory, non-blocking.

    The copy is ordered on the current stream before any kernel that reads it,
    so no explicit synchronisation is needed.
    """
    tensor = torch.from_numpy(np.ascontiguousarray(batch))
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def forward_split_on_oom(
    fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, on_split: Callable[[int], None] | None = None
) -> torch.Tensor:
    """`fn(x)` for a batch `x` (first dimension), retried on halves when it runs out of memory.

    Parameters
    ----------
    fn : callable
        Maps a batch to a batch of results (first dimension = batch), each
        sample's result independent of the others in the batch.
    x : torch.Tensor
        The batch.
    on_split : callable, optional
        Called with the size of each batch that ran out of memory (for logging or
        for remembering a smaller batch size).

    Returns
    -------
    torch.Tensor
        The results for the whole batch, in order.

    Raises
    ------
    torch.OutOfMemoryError
        When even a batch of one does not fit.
    """
    try:
        return fn(x)
    except torch.OutOfMemoryError:
        n = x.shape[0]
        if n <= 1:
            raise
    # Out of the except block: the exception (and the frames holding its tensors) is released.
    if on_split is not None:
        on_split(n)
    log.warning("backbone forward ran out of memory on a batch of %d; retrying as %d + %d", n, n // 2, n - n // 2)
    if x.is_cuda:
        torch.cuda.empty_cache()
    half = n // 2
    first = forward_split_on_oom(fn, x[:half], on_split)
    second = forward_split_on_oom(fn, x[half:], on_split)
    return torch.cat([first, second], dim=0)
