"""Compiled decode steps at static shapes, each captured as a CUDA graph on GPU.

A CUDA graph replays fixed kernel launches on fixed addresses, so a step
can only replay on the shape it was captured at. The batch is already
padded to a power-of-two bucket (:func:`agentrt.engine.compiled.batch_bucket`);
here the block-table width is padded too, to :func:`width_bucket`: powers of
two from 2 blocks, capped at the widest table the runner plans for. The
graphs are then (batch buckets) x (width buckets), e.g. 7 x 10 for 64
sequences of up to 8,192 tokens in 16-token blocks. The compiled graph
keeps the width a dynamic dimension, so each batch bucket compiles once and
each width is only a capture of it, no compile.

The capture is hand-written (``torch.cuda.CUDAGraph`` over preallocated
buffers, as vLLM does) rather than inductor's cudagraph trees
(``mode="reduce-overhead"``):

- a replay is ``graph.replay()``: no dynamo guard evaluation, none of the
  trees' per-call checks of every static input's address, and no copy of
  inputs into the trees' own buffers (which weights and the KV pool would
  need ``mark_static_address`` to avoid);
- the step's only changing input, its rows and KV slots, is one
  preallocated int64 buffer per shape, filled by one host-to-device copy;
- inside the graph the logits and new keys/values are copied into buffers
  of their batch bucket allocated outside the graph pool, so the graph's
  own memory is all scratch: every graph shares one pool (captured largest
  first), replays may come in any order, and a width adds no output memory;
- everything but the capture and the replay (bucketing, buffers, copying
  the results out, the KV write) is the same code on CPU, where
  :class:`StaticDecode` runs the compiled function directly.

After each step the new keys and values are written into the cache with
one ``index_copy_`` over the real rows (padding rows have no slot), and the
logits are copied out, since the next replay of the bucket overwrites them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from agentrt.log import get_logger

log = get_logger(__name__)

StepFunction = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]

# Dynamo specializes a dimension of size one, which would give the narrowest width a graph
# of its own: the narrowest block table has two columns (the padding is masked by position).
MIN_WIDTH = 2


def width_buckets(max_blocks: int) -> list[int]:
    """Every block-table width a static step runs at: powers of two from 2, then ``max_blocks``."""
    top = max(MIN_WIDTH, max_blocks)
    widths: list[int] = []
    width = MIN_WIDTH
    while width < top:
        widths.append(width)
        width *= 2
    widths.append(top)
    return widths


def width_bucket(blocks: int, max_blocks: int) -> int:
    """The width a step whose longest context spans ``blocks`` blocks runs at."""
    if blocks < 1:
        raise ValueError(f"a decode step reads at least one block, got {blocks}")
    top = max(MIN_WIDTH, max_blocks)
    if blocks > top:
        raise ValueError(f"{blocks} blocks is wider than the widest static table ({top})")
    return min(max(MIN_WIDTH, 1 << (blocks - 1).bit_length()), top)


@dataclass
class _Shape:
    """The input of one (batch, width) shape, and its graph once captured."""

    io: torch.Tensor  # [batch * (2 + width) + batch] int64: the step rows, then each row's slot
    step: torch.Tensor  # [batch, 2 + width] view of io: token, position, block table
    slots: torch.Tensor  # [batch] view of io: the KV slot of each row's new token
    graph: torch.cuda.CUDAGraph | None = None


@dataclass
class _Outputs:
    """Where every step of one batch bucket leaves its results, whatever its width."""

    logits: torch.Tensor  # [batch, vocab] float32
    new_kv: torch.Tensor  # [layers, 2, batch, kv_heads, head_dim]


class StaticDecode:
    """Runs ``step`` (the compiled decode function) at bucketed shapes, captured on CUDA.

    ``kv`` is the paged cache the step reads, ``kv_slots`` its
    ``[layers, 2, slots, kv_heads, head_dim]`` view the new keys and values
    are written into, ``vocab_size`` the logits' width and ``max_blocks``
    the widest block table a static step runs at (wider contexts are the
    caller's to run another way).
    """

    def __init__(
        self,
        step: StepFunction,
        kv: torch.Tensor,
        kv_slots: torch.Tensor,
        vocab_size: int,
        max_blocks: int,
    ) -> None:
        self._step = step
        self._kv = kv
        self._kv_slots = kv_slots
        self.vocab_size = vocab_size
        self.widths = width_buckets(max_blocks)
        self.max_width = self.widths[-1]
        self.device = kv.device
        self.cuda_graphs = self.device.type == "cuda"
        self.steps = 0  # steps run at a static shape
        self.graph_replays = 0  # of those, served by a CUDA graph
        self._shapes: dict[tuple[int, int], _Shape] = {}
        self._outputs: dict[int, _Outputs] = {}
        # One memory pool and one capture stream for every graph (the pool needs the same stream).
        self._pool = torch.cuda.graph_pool_handle() if self.cuda_graphs else None
        self._stream = (
            torch.cuda.Stream(self.device)  # type: ignore[no-untyped-call]
            if self.cuda_graphs
            else None
        )

    @property
    def graph_count(self) -> int:
        """CUDA graphs captured so far (0 on CPU)."""
        return sum(shape.graph is not None for shape in self._shapes.values())

    @property
    def shape_count(self) -> int:
        """(batch, width) shapes prepared so far."""
        return len(self._shapes)

    def prepare(self, batch: int, width: int) -> _Shape:
        """The buffers of one shape, made (and on CUDA the graph captured) on first use.

        A shape first met by a step (no warm-up) logs a line: on CUDA its
        step waits for the capture, and for its bucket's compile if it is
        the bucket's first shape.
        """
        shape = self._shapes.get((batch, width))
        if shape is None:
            shape = self._make(batch, width)
            log.info(
                "decode_shape_ready",
                batch=batch,
                width=width,
                cuda_graph=shape.graph is not None,
                shapes=self.shape_count,
            )
        return shape

    def prepare_all(self, batches: Sequence[int]) -> None:
        """Prepare every width of every batch in ``batches``, largest first (they share one pool)."""
        for batch in sorted(batches, reverse=True):
            for width in reversed(self.widths):
                if (batch, width) not in self._shapes:
                    self._make(batch, width)

    def _make(self, batch: int, width: int) -> _Shape:
        if width not in self.widths:
            raise ValueError(f"width {width} is not one of the static widths {self.widths}")
        if batch not in self._outputs:
            kv = self._kv_slots
            self._outputs[batch] = _Outputs(
                logits=torch.empty(batch, self.vocab_size, device=self.device),
                new_kv=kv.new_empty(kv.shape[0], 2, batch, kv.shape[3], kv.shape[4]),
            )
        rows = batch * (2 + width)
        io = torch.zeros(rows + batch, dtype=torch.long, device=self.device)
        step = io[:rows].view(batch, 2 + width)
        torch._dynamo.mark_dynamic(step, 1)  # one compiled graph per batch bucket, for every width
        shape = _Shape(io=io, step=step, slots=io[rows:])
        if self.cuda_graphs:
            self._capture(shape, batch)
        else:
            self._run_into(shape, batch)  # the bucket's compile, if it is the first
        self._shapes[(batch, width)] = shape
        return shape

    def run(
        self,
        batch: int,
        width: int,
        rows: list[int],
        slots: list[int],
        keep: Sequence[int],
    ) -> torch.Tensor:
        """One step: ``rows`` (``len(slots)`` rows of ``2 + width`` ints) padded to ``batch``.

        Writes the real rows' keys and values at ``slots`` and returns the
        float32 logits of the ``keep`` rows, as a tensor of their own.
        """
        n = len(slots)
        shape = self.prepare(batch, width)
        pad = batch - n
        values = rows + [0] * (pad * (2 + width)) + slots + [0] * pad
        shape.io.copy_(torch.tensor(values, dtype=torch.long))
        if shape.graph is not None:
            shape.graph.replay()
            self.graph_replays += 1
        else:
            self._run_into(shape, batch)
        self.steps += 1
        out = self._outputs[batch]
        self._kv_slots.index_copy_(2, shape.slots[:n], out.new_kv[:, :, :n])
        if len(keep) == n:
            return out.logits[:n].clone()
        return out.logits.index_select(0, torch.tensor(list(keep), device=self.device))

    def _run_into(self, shape: _Shape, batch: int) -> None:
        logits, new_kv = self._step(shape.step, self._kv)
        out = self._outputs[batch]
        out.logits.copy_(logits)
        out.new_kv.copy_(new_kv)

    def _capture(self, shape: _Shape, batch: int) -> None:
        """Capture one step of ``shape`` into a CUDA graph in the shared pool.

        One step runs first on the capture stream, outside the capture: it
        compiles the bucket's graph if needed and lets inductor, Triton and
        cuBLAS do their one-time work, none of which may happen while
        capturing. The step reads the cache and writes only the bucket's
        output buffers, so it may run with the cache in use.
        """
        stream = self._stream
        assert stream is not None
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            self._run_into(shape, batch)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        try:
            # thread_local: another thread's CUDA calls (a metrics scrape) must not void it.
            with torch.cuda.graph(
                graph, pool=self._pool, stream=stream, capture_error_mode="thread_local"
            ):
                self._run_into(shape, batch)
        except RuntimeError as e:
            width = shape.step.shape[1] - 2
            raise RuntimeError(
                f"capturing the decode step of batch {batch}, width {width} as a CUDA graph "
                f"failed ({e}); set [engine] cuda_graphs = false (agentrt serve "
                "--no-cuda-graphs) to run the compiled step without graphs"
            ) from e
        shape.graph = graph
