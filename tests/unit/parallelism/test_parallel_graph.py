"""Capture: torch.export of transformers and hand-written models into annotated operators."""

from __future__ import annotations

from typing import Any

import pytest
import structlog
import torch
import torch.nn.functional as F
from torch.distributed.tensor import Partial, Replicate, Shard

from agentrt.parallelism import CaptureError, Plan, PlanError, capture, register_op
from agentrt.parallelism.tensor import PTensor, VTensor, covers, vtensors


def test_llama_captures_with_every_operator_annotated(llama_loss_graph: Any) -> None:
    g = llama_loss_graph
    assert g.unknown == []
    targets = {str(op.target) for op in g.ops}
    assert {
        "aten.linear.default",
        "aten.scaled_dot_product_attention.default",
        "aten.embedding.default",
        "aten.cross_entropy_loss.default",
    } <= targets
    assert [t.kind for t in g.inputs] == ["input", "input"]
    assert g.outputs[0].shape == ()
    q_proj = next(
        op
        for op in g.ops
        if op.inputs[1:]
        and g.fqn.get(op.inputs[1].name, "").endswith("layers.0.self_attn.q_proj.weight")
    )
    assert q_proj.anno.reduce == {"k"}


class _Odd(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.special.erfcx(x).relu()


def test_unknown_operator_is_replicated_and_named_in_a_warning() -> None:
    with structlog.testing.capture_logs() as logs:
        g = capture(_Odd(), (torch.randn(4, 3),))
    assert g.unknown == ["aten.special_erfcx.default"]
    warning = next(e for e in logs if e["event"] == "parallel.unknown_ops_replicated")
    assert warning["ops"] == ["aten.special_erfcx.default"]
    plan = Plan(g, 2)
    with pytest.raises(PlanError, match=r"special_erfcx.*register_op"):
        plan.partition(g.ops[0], 0, 2)
    plan.replicate(g.ops[0])


def test_registering_an_annotation_makes_the_operator_splittable() -> None:
    target = torch.ops.aten.special_erfcx.default
    try:
        register_op(target, "a b -> a b")
        g = capture(_Odd(), (torch.randn(4, 3),))
        assert g.unknown == []
        Plan(g, 2).partition(g.ops[0], "a", 2)
    finally:
        from agentrt.parallelism.ops import _REGISTRY

        _REGISTRY.pop(target, None)


def test_a_model_export_refuses_is_a_capture_error_naming_it() -> None:
    class Dynamic(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x[: int(x.sum().item())]

    with pytest.raises(CaptureError, match="Dynamic"):
        capture(Dynamic(), (torch.ones(3, dtype=torch.int64),))


def test_vtensors_of_each_layout_rebuild_the_ptensor() -> None:
    t = PTensor("w", (4, 6), torch.float32, "param")
    shards = vtensors(t, Shard(1), 2)
    assert [v.ranges for v in shards] == [((0, 4), (0, 3)), ((0, 4), (3, 6))]
    assert (
        covers(shards) and covers(vtensors(t, Replicate(), 2)) and covers(vtensors(t, Partial(), 3))
    )
    assert not covers(shards[:1])
    assert not covers([VTensor(t, ((0, 4), (0, 6)), (0, 2))])  # half of a partial sum
    with pytest.raises(ValueError, match="does not divide"):
        vtensors(t, Shard(0), 3)


def test_reduction_split_leaves_a_partial_and_a_spatial_split_a_shard(
    gpt_logits_graph: Any,
) -> None:
    from agentrt.parallelism.comm import output_layout

    g = gpt_logits_graph
    linear = next(op for op in g.ops if op.target is torch.ops.aten.linear.default)
    plan = Plan(g, 2)
    plan.partition(linear, "k", 2)
    assert output_layout(linear, 0, plan.transform_of(linear)) == Partial()
    other = next(
        op for op in g.ops if op.target is torch.ops.aten.linear.default and op is not linear
    )
    plan.partition(other, "n", 2)
    assert output_layout(other, 0, plan.transform_of(other)) == Shard(2)


def test_partition_errors_name_the_operator_and_the_dimension(gpt_logits_graph: Any) -> None:
    g = gpt_logits_graph
    plan = Plan(g, 3)
    softmax_like = next(op for op in g.ops if op.target is torch.ops.aten.layer_norm.default)
    with pytest.raises(PlanError, match=r"layer_norm.*cannot be split along 'd2'"):
        plan.partition(softmax_like, 2, 3)
    linear = next(op for op in g.ops if op.target is torch.ops.aten.linear.default)
    with pytest.raises(PlanError, match=r"size 64, which 3 devices do not divide"):
        plan.partition(linear, "n", 3)
    with pytest.raises(PlanError, match="no dimension 'zz'"):
        plan.partition(linear, "zz", 3)
    plan.replicate(linear)
    with pytest.raises(PlanError, match="already transformed"):
        plan.replicate(linear)


def test_cross_entropy_graph_in_f_sum_form() -> None:
    class Loss(torch.nn.Module):
        def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return F.cross_entropy(x, y, reduction="sum")

    g = capture(Loss(), (torch.randn(8, 5), torch.randint(0, 5, (8,))))
    ce = g.ops[-1]
    assert ce.anno.reduce == {"N"}
