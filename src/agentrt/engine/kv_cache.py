"""The paged KV tensors and the host pool that swapped-out KV waits in.

Device layout: one tensor ``[layers, 2 (k, v), blocks, block_size, kv_heads,
head_dim]``, so a layer's keys are one contiguous ``[slots, kv_heads,
head_dim]`` view that the attention function writes with ``index_copy_``.

The host pool gives each swapped sequence one contiguous range of host
memory, laid out ``[layers * 2, blocks, block_size * kv_heads * head_dim]``
inside the range, so a swap moves the victim's blocks of every layer in one
batched copy (Autellix's batched swap) rather than one copy per block.

On CPU a swap must be one 2-D row op to run at memcpy speed: the cache is
viewed as ``[layers * 2 * blocks, block elements]`` rows and the victim's rows
of every layer are gathered with one ``index_select`` over a flat row index
(a 3-D ``index_select`` over the block dimension runs one strided copy per
block instead); swap-in scatters with one ``index_copy_`` over the same rows.
On CUDA the gather runs on the device into a pinned pool: one DMA.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

import torch


class PagedKVCache:
    def __init__(
        self,
        num_layers: int,
        num_blocks: int,
        block_size: int,
        num_kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device | str,
    ) -> None:
        self.num_layers = num_layers
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.dtype = dtype
        self.device = torch.device(device)
        self.kv = torch.zeros(
            num_layers,
            2,
            num_blocks,
            block_size,
            num_kv_heads,
            head_dim,
            dtype=dtype,
            device=self.device,
        )
        slots = num_blocks * block_size
        self._keys = [
            self.kv[layer, 0].view(slots, num_kv_heads, head_dim) for layer in range(num_layers)
        ]
        self._values = [
            self.kv[layer, 1].view(slots, num_kv_heads, head_dim) for layer in range(num_layers)
        ]
        # 2-D block rows: index_select over whole rows runs at memcpy speed.
        self._key_blocks = [self.kv[layer, 0].view(num_blocks, -1) for layer in range(num_layers)]
        self._value_blocks = [self.kv[layer, 1].view(num_blocks, -1) for layer in range(num_layers)]
        # [layers * 2, blocks, block elements]: whole-block rows of every layer, for swaps.
        self.rows = self.kv.view(num_layers * 2, num_blocks, -1)
        # The same rows flattened to 2-D, so one index_select gathers them at memcpy speed.
        self.flat_rows = self.kv.view(num_layers * 2 * num_blocks, -1)

    @staticmethod
    def bytes_per_block(
        num_layers: int, block_size: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype
    ) -> int:
        itemsize = torch.empty((), dtype=dtype).element_size()
        return num_layers * 2 * block_size * num_kv_heads * head_dim * itemsize

    @property
    def block_bytes(self) -> int:
        return self.bytes_per_block(
            self.num_layers, self.block_size, self.num_kv_heads, self.head_dim, self.dtype
        )

    def layer(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``[slots, kv_heads, head_dim]`` key and value views of one layer."""
        return self._keys[index], self._values[index]

    def layer_blocks(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The same memory as ``[blocks, block_size * kv_heads * head_dim]`` (for block gathers)."""
        return self._key_blocks[index], self._value_blocks[index]


@dataclass(frozen=True)
class HostRange:
    """Where one swapped-out sequence's blocks sit in the host pool."""

    start: int
    num_blocks: int


class HostSwapPool:
    """Host memory for swapped-out KV: contiguous ranges of host blocks, first fit."""

    def __init__(
        self, cache: PagedKVCache, capacity_bytes: int, num_blocks: int | None = None
    ) -> None:
        """``capacity_bytes`` of host blocks, or exactly ``num_blocks`` of them when given
        (tensor-parallel ranks hold the same blocks, each of its own share of the heads)."""
        self.cache = cache
        self.num_blocks = capacity_bytes // cache.block_bytes if num_blocks is None else num_blocks
        self.pinned = cache.device.type == "cuda"
        self.block_elements = cache.rows.shape[0] * cache.rows.shape[2]
        # torch.empty does not touch the pages on CPU; only swapped-out KV costs memory.
        self.buffer = torch.empty(
            self.num_blocks * self.block_elements, dtype=cache.dtype, pin_memory=self.pinned
        )
        self._free: list[tuple[int, int]] = [(0, self.num_blocks)] if self.num_blocks else []
        # Row of block 0 of each [layer, k/v] in cache.flat_rows, as a column to add block ids to.
        self._row_starts = (
            torch.arange(cache.rows.shape[0], device=cache.device) * cache.num_blocks
        ).unsqueeze(1)

    @property
    def num_free_blocks(self) -> int:
        return sum(length for _, length in self._free)

    def can_hold(self, num_blocks: int) -> bool:
        return any(length >= num_blocks for _, length in self._free)

    def view(self, handle: HostRange) -> torch.Tensor:
        """A range's memory as ``[layers * 2, blocks, block elements]``."""
        size = handle.num_blocks * self.block_elements
        flat = self.buffer[handle.start * self.block_elements :][:size]
        return flat.view(self.cache.rows.shape[0], handle.num_blocks, -1)

    def reserve(self, num_blocks: int) -> HostRange | None:
        """Take a free range of ``num_blocks`` host blocks (first fit) without copying into it."""
        for i, (start, length) in enumerate(self._free):
            if length >= num_blocks:
                if length == num_blocks:
                    del self._free[i]
                else:
                    self._free[i] = (start + num_blocks, length - num_blocks)
                return HostRange(start, num_blocks)
        return None

    def release(self, handle: HostRange) -> None:
        """Give a range back, merging it with free neighbours."""
        i = bisect.bisect_left(self._free, (handle.start, 0))
        start, length = handle.start, handle.num_blocks
        if i < len(self._free) and start + length == self._free[i][0]:
            length += self._free[i][1]
            del self._free[i]
        if i > 0 and self._free[i - 1][0] + self._free[i - 1][1] == start:
            start = self._free[i - 1][0]
            length += self._free[i - 1][1]
            i -= 1
            del self._free[i]
        self._free.insert(i, (start, length))

    def _index(self, block_ids: list[int]) -> torch.Tensor:
        return torch.tensor(block_ids, dtype=torch.long, device=self.cache.device)

    def _flat_index(self, block_ids: list[int]) -> torch.Tensor:
        """The blocks' rows in ``cache.flat_rows`` for every [layer, k/v], in the host range's order."""
        return (self._row_starts + self._index(block_ids)).reshape(-1)

    def swap_out(self, block_ids: list[int]) -> HostRange | None:
        """Copy the blocks to host in one batched copy; ``None`` when no range is large enough."""
        handle = self.reserve(len(block_ids))
        if handle is not None:
            self.copy_out(handle, block_ids)
        return handle

    def copy_out(self, handle: HostRange, block_ids: list[int]) -> None:
        """Copy the blocks into a reserved range (the copy half of :meth:`swap_out`)."""
        dst = self.view(handle)
        if self.pinned:
            staged = self.cache.rows.index_select(1, self._index(block_ids))  # one device gather
            dst.copy_(staged, non_blocking=True)  # one DMA into pinned memory
            torch.cuda.current_stream(self.cache.device).synchronize()
        else:
            flat_dst = dst.view(-1, dst.shape[-1])
            torch.index_select(self.cache.flat_rows, 0, self._flat_index(block_ids), out=flat_dst)

    def swap_in(self, handle: HostRange, block_ids: list[int]) -> None:
        """Copy a swapped range back into ``block_ids`` (one copy) and free the range."""
        self.copy_in(handle, block_ids)
        self.release(handle)

    def copy_in(self, handle: HostRange, block_ids: list[int]) -> None:
        """Copy a range back into ``block_ids`` (the copy half of :meth:`swap_in`), keeping it."""
        assert len(block_ids) == handle.num_blocks
        src = self.view(handle)
        if self.pinned:
            src = src.to(self.cache.device, non_blocking=True)
            self.cache.rows.index_copy_(1, self._index(block_ids), src)
        else:
            flat_src = src.reshape(-1, src.shape[-1])
            self.cache.flat_rows.index_copy_(0, self._flat_index(block_ids), flat_src)
