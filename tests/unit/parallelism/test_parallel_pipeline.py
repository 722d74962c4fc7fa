"""Pipeline plans: schedules checked and simulated, stages cut and lowered, and run on gloo against one device."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
import torch

from agentrt.parallelism import PlanError, ScheduleError, capture, lower
from agentrt.parallelism.launch import verify
from agentrt.parallelism.models import Logits, tiny_gpt, tiny_llama
from agentrt.parallelism.pipeline import StageModule, free_ops, pipeline, stages
from agentrt.parallelism.schedule import Block, PipeSchedule, make


def _kinds(schedule: PipeSchedule) -> list[str]:
    return ["".join(f"{b.kind}{b.micro}" for b in seq) for seq in schedule.sequences]


def test_the_schedules_follow_torch_orders() -> None:
    assert _kinds(make("gpipe", 2, 3)) == ["F0F1F2B0B1B2"] * 2
    assert _kinds(make("1f1b", 2, 4)) == ["F0F1B0F2B1F3B2B3", "F0B0F1B1F2B2F3B3"]
    assert _kinds(make("infer", 3, 2)) == ["F0F1"] * 3
    for kind in ("gpipe", "1f1b", "infer"):
        make(kind, 4, 6).check()


def test_makespans_of_balanced_stages() -> None:
    # (stages + micro-batches - 1) slots of forward and backward when every stage takes the same time
    assert make("gpipe", 2, 4).simulate([1.0, 1.0], [2.0, 2.0], 0.0) == pytest.approx(15.0)
    assert make("1f1b", 2, 4).simulate([1.0, 1.0], [2.0, 2.0], 0.0) == pytest.approx(15.0)
    assert make("infer", 2, 4).simulate([1.0, 1.0], [0.0, 0.0], 0.5) == pytest.approx(5.5)
    # a slow stage sets the pace
    assert make("infer", 2, 4).simulate([1.0, 3.0], [0.0, 0.0], 0.0) == pytest.approx(13.0)
    # the hop back up the stages (gradients) is priced apart from the hop down: F0 1, hop 0.5,
    # F1 1, B1 2, hop back 2, B0 2
    assert make("gpipe", 2, 1).simulate([1.0, 1.0], [2.0, 2.0], 0.5, 2.0) == pytest.approx(8.5)
    assert make("gpipe", 2, 1).simulate([1.0, 1.0], [2.0, 2.0], 0.5) == pytest.approx(7.0)


def test_a_consumer_ordered_before_its_producer_is_refused() -> None:
    F, B = "F", "B"
    same_device = PipeSchedule(
        "gpipe", 2, 1, [[Block(B, 0, 0), Block(F, 0, 0)], [Block(F, 1, 0), Block(B, 1, 0)]]
    )
    with pytest.raises(
        ScheduleError,
        match=r"device 0 runs B\(stage 0, micro-batch 0\) before F\(stage 0, micro-batch 0\)",
    ):
        same_device.check()
    crossed = PipeSchedule(
        "gpipe",
        2,
        2,
        [
            [Block(F, 0, 0), Block(B, 0, 0), Block(F, 0, 1), Block(B, 0, 1)],
            [Block(F, 1, 1), Block(F, 1, 0), Block(B, 1, 0), Block(B, 1, 1)],
        ],
    )
    with pytest.raises(
        ScheduleError,
        match=r"device 0 waits in B\(stage 0, micro-batch 0\) for B\(stage 1, micro-batch 0\), which device 1 only runs after F\(stage 1, micro-batch 1\)",
    ):
        crossed.check()
    with pytest.raises(ScheduleError, match="missing"):
        PipeSchedule("infer", 2, 2, [[Block(F, 0, 0)], [Block(F, 1, 0), Block(F, 1, 1)]]).check()
    with pytest.raises(ScheduleError, match="unknown pipeline schedule"):
        make("zigzag", 2, 2)


@pytest.fixture(scope="module")
def llama_micro() -> Any:
    model = tiny_llama()
    ids = torch.randint(0, 256, (1, 8), generator=torch.Generator().manual_seed(3))
    return model, ids, capture(Logits(model), (ids,))


@pytest.mark.parametrize("nstages", [2, 3, 4])
def test_stages_chained_in_one_process_give_the_model_output(
    llama_micro: Any, nstages: int
) -> None:
    model, ids, graph = llama_micro
    plan = pipeline(graph, nstages, nmicro=2)
    specs = stages(plan)
    assert [s.index for s in specs] == list(range(nstages))
    assert specs[0].inputs == [t.name for t in graph.inputs]
    assert specs[-1].outputs == [t.name for t in graph.outputs]
    for a, b in itertools.pairwise(specs):
        assert a.outputs == b.inputs
    # every weight lives on exactly one stage
    held = [name for s in specs for name in s.state if graph.tensors[name].kind == "param"]
    assert sorted(held) == sorted(n for n, t in graph.tensors.items() if t.kind == "param")
    x: tuple[torch.Tensor, ...] = (ids,)
    for spec in specs:
        y = StageModule(spec, graph, train=False)(*x)
        x = y if isinstance(y, tuple) else (y,)
    with torch.no_grad():
        assert torch.equal(x[0], Logits(model)(ids))


def test_operators_without_inputs_or_weights_are_recomputed_on_each_stage(llama_micro: Any) -> None:
    _, _, graph = llama_micro
    # stage 1 from layer 1's query projection: both stages apply the rotary tables
    q1 = next(
        op
        for op in graph.ops
        if op.target is torch.ops.aten.linear.default
        and graph.fqn[op.inputs[1].name].endswith("layers.1.self_attn.q_proj.weight")
    )
    plan = pipeline(graph, 2, nmicro=2, cuts=[q1.name])
    free = free_ops(graph)
    assert free
    copies = {name: len(plan.subops[name]) for name in free}
    assert max(copies.values()) == 2  # read on both stages, so placed on both
    for name in free:
        devices = sorted(plan.device[s] for s in plan.subops[name])
        assert devices == sorted(set(devices))


def test_pipeline_plan_errors_are_clear(llama_micro: Any) -> None:
    _, _, graph = llama_micro
    with pytest.raises(PlanError, match="at least 2 devices"):
        pipeline(graph, 1, nmicro=2)
    with pytest.raises(PlanError, match="give 1 cut operators"):
        pipeline(graph, 2, nmicro=2, cuts=["nonexistent"])
    with pytest.raises(PlanError, match="lowered stage by stage"):
        lower(pipeline(graph, 2, nmicro=2))
    plan = pipeline(graph, 2, nmicro=2)
    first = next(op for op in graph.ops if op.name not in free_ops(graph))
    plan.device[plan.subops[first.name][0]] = 1  # the embedding moves after its readers
    with pytest.raises(PlanError, match="produced on a later stage 1"):
        stages(plan)


def test_a_weight_tied_across_stages_is_held_by_both() -> None:
    model = tiny_gpt()
    model.head.weight = model.tok.weight
    graph = capture(Logits(model), (torch.randint(0, 256, (1, 8)),))
    specs = stages(pipeline(graph, 2, nmicro=2))
    (tied,) = specs[0].tied
    assert graph.fqn[tied] in ("model.tok.weight", "model.head.weight")
    assert specs[0].tied == {tied: [0, 1]} and all(tied in s.state for s in specs)


@pytest.mark.parametrize(
    ("model", "plan", "train"),
    [("tiny-llama-tied", "1f1b", True), ("tiny-gpt", "gpipe", True), ("tiny-llama", "pp", False)],
)
def test_pipeline_on_two_processes_matches_one_device(model: str, plan: str, train: bool) -> None:
    result = verify(model, plan, 2, train=train)
    assert result.as_scheduled, "the stages ran their blocks out of the schedule's order"
    assert result.ok, result.as_dict()


@pytest.mark.slow
@pytest.mark.parametrize("plan", ["1f1b", "gpipe"])
def test_pipeline_on_four_processes_matches_one_device(plan: str) -> None:
    result = verify("tiny-llama", plan, 4, train=True, batch=8)
    assert result.ok, result.as_dict()


def test_three_d_is_tensor_parallel_inside_each_pipeline_stage(llama_micro: Any) -> None:
    from agentrt.parallelism.pipeline import three_d

    _, _, graph = llama_micro
    built = three_d(graph, 4, tp=2, nmicro=2, schedule="1f1b")
    assert built.width == 2 and len(built.specs) == 2 and built.ndevices == 4
    assert [built.place(r) for r in range(4)] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert built.inner is not None
    for spec, inner in zip(built.specs, built.inner, strict=True):
        program = lower(inner)
        assert [t.name for t in inner.graph.inputs] == spec.inputs
        # every stage's MLP is split: its weights are stored as shards
        assert any(type(p).__name__ == "Shard" for p in program.storage.values())
    with pytest.raises(PlanError, match="3 devices do not make at least 2 pipeline stages"):
        three_d(graph, 3, tp=2, nmicro=2, schedule="1f1b")
    with pytest.raises(PlanError, match="2 devices do not make"):
        three_d(graph, 2, tp=2, nmicro=2, schedule="1f1b")


@pytest.mark.slow
def test_three_d_on_four_processes_matches_one_device() -> None:
    # tp 2 x pp 2 with the LM head tied to the embedding across the two stages
    result = verify("tiny-llama-tied", "3d", 4, train=True)
    assert result.ok, result.as_dict()


def test_interlaced_splits_embedding_and_head_over_all_devices(llama_micro: Any) -> None:
    from agentrt.parallelism.interlaced import interlaced, interlaced_for

    _, _, graph = llama_micro
    built = interlaced(graph, 2, nmicro=2)
    assert len(built.body) == 2 and built.body[0].inputs == ["embedding"]
    assert built.embed.collectives() == {
        "all-reduce": 1
    }  # the vocabulary-split lookup's partial sums
    assert built.head.collectives() == {"all-gather": 1}  # the vocabulary-split logits, gathered
    assert built.head.collectives(train=True) == {"all-gather": 1, "all-reduce": 1}
    # a training step takes its loss on the vocabulary slices: the logits are never gathered
    split = interlaced_for(graph, 2, nmicro=2, train=True)
    assert split.vocab_loss and split.head.collectives(train=True) == {"all-reduce": 1}
    assert not interlaced_for(graph, 2, nmicro=2, train=False).vocab_loss


def test_a_hop_costs_one_call_per_tensor_crossing_and_back_per_gradient(llama_micro: Any) -> None:
    """The interlaced body's first stage hands the attention mask (bool), the two rotary tables
    and the hidden state to the next: under torch's schedules each with a send of its own, the
    way back carrying the three floating tensors' gradients; packed (the interlaced executor),
    one message of all their bytes each way."""
    from agentrt.parallelism import CostModel
    from agentrt.parallelism.cost import hop_seconds
    from agentrt.parallelism.interlaced import interlaced

    _, _, graph = llama_micro
    built = interlaced(graph, 2, nmicro=2)
    (crossing,) = [spec.outputs for spec in built.body[:-1]]
    floating = [t for t in crossing if graph.tensors[t].dtype.is_floating_point]
    assert (len(crossing), len(floating)) == (4, 3)
    per_call = CostModel(measured=(("send/recv", 1e-3, 0.0),), measured_n=2)
    down, up = hop_seconds(graph, [crossing], per_call)
    assert down == pytest.approx(len(crossing) * 1e-3)
    assert up == pytest.approx(len(floating) * 1e-3)
    assert hop_seconds(graph, [], per_call) == (0.0, 0.0)
    by_byte = CostModel(measured=(("send/recv", 1e-3, 1e-9),), measured_n=2)
    down, up = hop_seconds(graph, [crossing], by_byte, packed=True)
    assert down == pytest.approx(1e-3 + 1e-9 * sum(graph.tensors[t].nbytes for t in crossing))
    assert up == pytest.approx(1e-3 + 1e-9 * sum(graph.tensors[t].nbytes for t in floating))
    held = {graph.fqn[k] for s in built.body for k in s.state}
    assert not any(
        "embed_tokens" in k or "lm_head" in k for k in held
    )  # only the layers are staged
    with pytest.raises(PlanError, match="at least 2 devices"):
        interlaced(graph, 1, nmicro=2)


def test_interlaced_holds_a_tied_head_once_and_trains_it_as_one_device() -> None:
    from agentrt.parallelism.interlaced import interlaced

    graph = capture(Logits(tiny_llama(tied=True)), (torch.randint(0, 256, (1, 8)),))
    built = interlaced(graph, 2, nmicro=2)
    assert [graph.fqn[k] for k in built.tied] == ["model.lm_head.weight"]  # export keeps one name
    result = verify("tiny-llama-tied", "interlaced", 2, train=True)
    assert result.ok, result.as_dict()


def test_interlaced_on_two_processes_matches_one_device() -> None:
    result = verify("tiny-gpt", "interlaced", 2, train=True)
    assert result.ok, result.as_dict()


@pytest.mark.slow
def test_interlaced_training_on_four_processes_takes_its_loss_on_four_slices() -> None:
    # the tied table in 4 vocabulary shards, read by the embedding and the head, and the loss
    # taken on 4 slices of the logits
    result = verify("tiny-llama-tied", "interlaced", 4, train=True, batch=8)
    assert result.ok, result.as_dict()


@pytest.mark.slow
def test_interlaced_forward_on_four_processes_matches_one_device() -> None:
    result = verify("tiny-llama", "interlaced", 4, batch=8)
    assert result.ok, result.as_dict()


def test_a_hand_over_packs_its_tensors_into_one_buffer_and_back() -> None:
    """The interlaced executor sends a hop's mask, tables and hidden state as one message."""
    from agentrt.parallelism.interlaced import _pack, _unpack

    values = [
        torch.tensor([[True, False, True]]),
        torch.randn(2, 3),
        torch.arange(5, dtype=torch.int64),
        torch.randn(4, dtype=torch.float64).reshape(2, 2).t(),  # not contiguous
    ]
    buf = _pack(values)
    assert buf.dtype is torch.uint8 and buf.numel() == sum(v.nbytes for v in values)
    back = _unpack(buf, values)
    for got, want in zip(back, values, strict=True):
        assert got.dtype is want.dtype and got.shape == want.shape
        assert torch.equal(got, want)
