"""Phases 2 and 3 without processes: ordering checks, cheapest paths, and what the shipped plans decide."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch.distributed.tensor import Partial, Replicate, Shard

from agentrt.parallelism import (
    CostModel,
    Plan,
    PlanError,
    ScheduleError,
    cheapest_path,
    data_parallel,
    lower,
    tensor_parallel,
)
from agentrt.parallelism.tensor import PTensor

aten = torch.ops.aten


def _t(shape: tuple[int, ...] = (8, 64)) -> PTensor:
    return PTensor("x", shape, torch.float32, "activation")


@pytest.mark.parametrize(
    ("src", "dst", "prims"),
    [
        (Partial(), Replicate(), ["all-reduce"]),
        (Partial(), Shard(0), ["reduce-scatter"]),
        (Shard(0), Replicate(), ["all-gather"]),
        (Shard(0), Shard(1), ["all-to-all"]),
        (Replicate(), Shard(1), ["local-chunk"]),
        (Replicate(), Partial(), ["local-vchunk"]),
        (Shard(1), Partial(), ["all-gather", "local-vchunk"]),
    ],
)
def test_cheapest_path_is_the_one_collective_each_layout_change_needs(
    src: Any, dst: Any, prims: list[str]
) -> None:
    path, seconds = cheapest_path(src, dst, _t(), 2, CostModel())
    assert [s.prim for s in path] == prims
    assert path[0].src == src and path[-1].dst == dst
    assert seconds > 0


def test_path_cost_follows_the_alpha_beta_model() -> None:
    cost = CostModel(alpha=1e-3, beta=1e6)
    t = _t((1000,))  # 4000 bytes
    _, gather = cheapest_path(Shard(0), Replicate(), t, 4, cost)
    _, reduce = cheapest_path(Partial(), Replicate(), t, 4, cost)
    assert gather == pytest.approx(3e-3 + 0.75 * 4000 / 1e6)
    assert reduce == pytest.approx(6e-3 + 1.5 * 4000 / 1e6)
    # all-to-all moves a quarter of a shard per peer: cheaper than gathering and slicing again
    path, _ = cheapest_path(Shard(0), Shard(0), _t((8, 8)), 4, cost)
    assert path == []


def test_no_path_to_a_shard_that_does_not_divide() -> None:
    with pytest.raises(PlanError, match="no communication"):
        cheapest_path(Replicate(), Shard(0), _t((3, 4)), 2, CostModel())


def test_order_refuses_a_consumer_before_its_producer(gpt_logits_graph: Any) -> None:
    g = gpt_logits_graph
    plan = Plan(g, 2)
    linears = [op for op in g.ops if op.target is aten.linear.default]
    with pytest.raises(ScheduleError, match="consumes what"):
        plan.order(linears[-1], before=linears[0])
    plan.order(linears[1], before=linears[0])  # q, k and v are independent: k may go first
    sched = plan.schedule()
    assert sched.index(linears[1]) < sched.index(linears[0])
    plan.check_order(sched)
    with pytest.raises(ScheduleError, match="runs before"):
        plan.check_order(list(reversed(sched)))


def test_order_constraints_that_form_a_cycle_are_refused(gpt_logits_graph: Any) -> None:
    g = gpt_logits_graph
    plan = Plan(g, 2)
    q, k = [op for op in g.ops if op.target is aten.linear.default][:2]
    plan.order(q, before=k)
    with pytest.raises(ScheduleError, match="cycle"):
        plan.order(k, before=q)


def test_assign_must_stay_on_the_mesh(gpt_logits_graph: Any) -> None:
    g = gpt_logits_graph
    plan = Plan(g, 2)
    subs = plan.partition(g.ops[0], 0, 2)
    with pytest.raises(PlanError, match="outside"):
        plan.assign(subs[0], 2)
    plan.assign(subs[0], 1)
    plan.assign(subs[1], 0)
    with pytest.raises(PlanError, match="runs every operator on all 2 devices"):
        lower(plan)


def test_data_parallel_splits_the_batch_and_all_reduces_each_weight_gradient_once(
    llama_loss_graph: Any,
) -> None:
    g = llama_loss_graph
    program = lower(data_parallel(g, 2))
    linears = [op for op in g.ops if op.target is aten.linear.default]
    assert all(program.plan.transform_of(op).label == op.anno.inputs[0][0] for op in linears)
    params = [t for t in g.tensors.values() if t.kind == "param"]
    assert all(program.storage[t.name] == Replicate() for t in params)
    forward = program.collectives()
    assert forward == {"all-reduce": 1}  # the loss's partial sum
    weight_reductions = [
        a
        for a in program.adapters
        if a.tensor.kind == "param" and [s.prim for s in a.backward] == ["all-reduce"]
    ]
    assert {a.tensor.name for a in weight_reductions} == {t.name for t in params}


def test_tensor_parallel_is_megatron_column_then_row(llama_loss_graph: Any) -> None:
    g = llama_loss_graph
    program = lower(tensor_parallel(g, 2))
    split = {
        g.fqn[op.inputs[1].name].split("model.model.")[-1]: program.plan.transform_of(op).label
        for op in g.ops
        if op.target is aten.linear.default
    }
    layer0 = {k.split(".")[-2]: v for k, v in split.items() if k.startswith("layers.0.")}
    assert layer0 == {
        "q_proj": "n",
        "k_proj": "n",
        "v_proj": "n",
        "o_proj": "k",
        "gate_proj": "n",
        "up_proj": "n",
        "down_proj": "k",
    }
    sdpa = [op for op in g.ops if op.target is aten.scaled_dot_product_attention.default]
    assert all(
        program.plan.transform_of(op) is not None for op in sdpa
    )  # heads stay split through attention
    embedding = next(op for op in g.ops if op.target is aten.embedding.default)
    assert program.plan.transform_of(embedding).label == "V"  # vocabulary-parallel
    # one all-reduce after the embedding, two per layer (after attention and after the MLP),
    # one gather of the logits
    assert program.collectives() == {"all-reduce": 5, "all-gather": 1}
    assert program.param_bytes() < lower(data_parallel(g, 2)).param_bytes()


def test_data_parallel_refuses_a_batch_the_devices_do_not_divide(llama_loss_graph: Any) -> None:
    with pytest.raises(PlanError, match="batch size 4, which 3 devices do not divide"):
        data_parallel(llama_loss_graph, 3)


def test_tensor_parallel_falls_back_to_gathering_where_heads_do_not_divide(
    llama_loss_graph: Any,
) -> None:
    # 2 key/value heads over 4 devices: the view into heads cannot split, so k is gathered there.
    program = lower(tensor_parallel(llama_loss_graph, 4))
    g = llama_loss_graph
    k_proj = next(
        op
        for op in g.ops
        if op.target is aten.linear.default
        and g.fqn[op.inputs[1].name].endswith("layers.0.self_attn.k_proj.weight")
    )
    to_heads = g.consumers[k_proj.outputs[0].name][0]
    assert program.plan.transform_of(k_proj).label == "n"
    assert program.plan.transform_of(to_heads) is None
    gather = next(a for op, ads in program.steps if op is to_heads for a in ads)
    assert [s.prim for s in gather.forward] == ["all-gather"]
    q_sdpa = next(op for op in g.ops if op.target is aten.scaled_dot_product_attention.default)
    assert program.plan.transform_of(q_sdpa) is not None


def test_hand_written_megatron_mlp_gets_its_collectives_from_phase_3(llama_loss_graph: Any) -> None:
    """The README's worked example."""
    g = llama_loss_graph

    def linear(suffix: str) -> Any:
        return next(
            op
            for op in g.ops
            if op.target is aten.linear.default and g.fqn[op.inputs[1].name].endswith(suffix)
        )

    plan = Plan(g, 2)
    gate = linear("layers.0.mlp.gate_proj.weight")
    plan.partition(gate, "n", 2)
    plan.partition(linear("layers.0.mlp.up_proj.weight"), "n", 2)
    silu = g.consumers[gate.outputs[0].name][0]
    plan.partition(silu, 2, 2)
    mul = g.consumers[silu.outputs[0].name][0]
    plan.partition(mul, 2, 2)
    down = linear("layers.0.mlp.down_proj.weight")
    plan.partition(down, "k", 2)
    program = lower(plan)
    moved = {
        (op.name, a.tensor.name): a
        for op, ads in program.steps
        for a in ads
        if a.forward or a.backward
    }
    norm_out = gate.inputs[0].name
    assert [s.prim for s in moved[(gate.name, norm_out)].backward] == ["all-reduce"]
    residual = g.consumers[down.outputs[0].name][0]
    assert [s.prim for s in moved[(residual.name, down.outputs[0].name)].forward] == ["all-reduce"]
    # nothing moves between the column split and the row split, weights included
    for op in (silu, mul, down):
        adapters = next(ads for o, ads in program.steps if o is op)
        assert all(not a.forward and not a.backward for a in adapters)
    # the two column splits share one backward all-reduce of the norm's output
    shared = [a for a in program.adapters if a.tensor.name == norm_out and a.backward]
    assert len(shared) == 1


def test_coshard_runs_two_consecutive_attention_parts_per_device(llama_loss_graph: Any) -> None:
    from agentrt.parallelism.plans import coshard

    plan = coshard(llama_loss_graph, 2)
    sdpa = [
        op
        for op in llama_loss_graph.ops
        if plan.transform_of(op) is not None and len(plan.subops[op.name]) == 4
    ]
    assert sdpa and all(op.target is aten.scaled_dot_product_attention.default for op in sdpa)
    for op in sdpa:
        assert [plan.device[s] for s in plan.subops[op.name]] == [0, 0, 1, 1]
    tp = lower(tensor_parallel(llama_loss_graph, 2))
    co = lower(plan)
    assert co.collectives(train=True) == tp.collectives(train=True)  # tensor parallel's layouts
    with pytest.raises(PlanError, match="no attention of this model splits in 2 x 64 head groups"):
        coshard(llama_loss_graph, 2, colocate=64)
    fresh = Plan(llama_loss_graph, 2)
    with pytest.raises(PlanError, match="3 sub-operators are not a multiple of 2 devices"):
        fresh.replicate(llama_loss_graph.ops[0], 3)
