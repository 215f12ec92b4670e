"""Every chain's minibatch rows idx (C, B) of the data (x, y), in as few memory passes as it takes.

A step of a small model on CPU is bound by the minibatch gather's memory latency,
not by its bandwidth: each row of x and each row of y is its own cache miss, and a
row that straddles two cache lines costs two. When one row of x and one row of y fit
in one 64-byte cache line together, :class:`Minibatches` keeps a copy of the data
with the two side by side, one aligned line per data point, and gathers that once:
one miss per data point instead of two or three (the 165-parameter DLN's step got
about a fifth faster; docs/llc.md, "Speed"). The gathered values are the data's own
bytes, so every result is bit-identical to gathering x and y separately.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

LINE_BYTES = 64  # one cache line on x86-64 and most ARM cores
MAX_PACKED_BYTES = 256 << 20  # the packed copy's memory cap (4M data points)


def gather_rows(data: Tensor, idx: Tensor) -> Tensor:
    """Rows idx (C, B) of data (n, ...) as (C, B, ...), one gather for every chain.

    index_select on the flat indices is several times faster on CPU than advanced
    indexing with a 2-D index.
    """
    return data.index_select(0, idx.reshape(-1)).view(*idx.shape, *data.shape[1:])


def _row_bytes(t: Tensor) -> int:
    return math.prod(t.shape[1:]) * t.element_size()


def packed_layout(x: Tensor, y: Tensor) -> int | None:
    """Byte offset of y's row in a packed line, or None where packing does not apply.

    Applies on CPU to contiguous data of equal length whose two rows fit in one
    LINE_BYTES line (y aligned to its element size), within MAX_PACKED_BYTES.
    """
    if x is None or y is None or x.device.type != "cpu" or y.device != x.device or x.dim() == 0 or y.dim() == 0:
        return None
    if x.shape[0] != y.shape[0] or not (x.is_contiguous() and y.is_contiguous()):
        return None
    if x.requires_grad or y.requires_grad or x.shape[0] * LINE_BYTES > MAX_PACKED_BYTES:
        return None
    at = -(-_row_bytes(x) // y.element_size()) * y.element_size()  # y's offset, aligned for its dtype
    return at if at + _row_bytes(y) <= LINE_BYTES else None


def pack(x: Tensor, y: Tensor, y_at: int) -> Tensor:
    """(n, LINE_BYTES) uint8 table: row i holds x[i]'s bytes at 0 and y[i]'s at y_at (zero padding)."""
    n = x.shape[0]
    table = torch.zeros(n, LINE_BYTES, dtype=torch.uint8)
    table[:, :_row_bytes(x)] = x.reshape(n, math.prod(x.shape[1:])).view(torch.uint8)
    table[:, y_at:y_at + _row_bytes(y)] = y.reshape(n, math.prod(y.shape[1:])).view(torch.uint8)
    return table


def unpack(rows: Tensor, like: Tensor, at: int, shape: tuple[int, ...], copy: bool = True) -> Tensor:
    """The bytes rows[..., at:at + row] (m, LINE_BYTES) read as ``like``'s rows, shaped (*shape, *like.shape[1:]).

    copy: a contiguous copy, so a model sees the layout a separate gather gives it (and
    BLAS the same strides); else a view with a row stride of LINE_BYTES, for a consumer
    that lays the rows out itself (llc.fused_grad). The copy costs most of the
    packed gather's saving on the 165-parameter DLN.
    """
    rows = rows[:, at:at + _row_bytes(like)].view(like.dtype).view(*shape, *like.shape[1:])
    return rows.contiguous() if copy else rows


class Minibatches:
    """``batches(x, y, idx)`` -> (x rows, y rows), each (C, B, ...), for index idx (C, B).

    Packs the x and y it was built with into one table where :func:`packed_layout`
    allows, else gathers each separately; so does any other x or y it is called with
    (llc.streaming swaps in each step's rows). An in-place change to x or y is seen:
    the table is rebuilt.
    """

    def __init__(self, x: Tensor, y: Tensor):
        self.x, self.y = x, y
        self.y_at = packed_layout(x, y)
        self.table, self._versions = None, None

    @property
    def packed(self) -> bool:
        return self.y_at is not None

    def __call__(self, x: Tensor, y: Tensor, idx: Tensor, copy: bool = True) -> tuple[Tensor, Tensor]:
        """copy=False may return strided views of the packed rows (see :func:`unpack`)."""
        if self.y_at is None or x is not self.x or y is not self.y:
            return gather_rows(x, idx), gather_rows(y, idx)
        if self._versions != (x._version, y._version):
            self.table, self._versions = pack(x, y, self.y_at), (x._version, y._version)
        # Gathered as 8-byte words: index_select copies a row of 64 uint8 about twice as slowly.
        rows = self.table.view(torch.int64).index_select(0, idx.reshape(-1)).view(torch.uint8)  # (C·B, LINE_BYTES)
        return unpack(rows, x, 0, idx.shape, copy), unpack(rows, y, self.y_at, idx.shape, copy)


__all__ = ["LINE_BYTES", "MAX_PACKED_BYTES", "Minibatches", "gather_rows", "pack", "packed_layout", "unpack"]
