"""Annotations: the string form, the registry, and the labels built-in operators get from traced shapes."""

from __future__ import annotations

import pytest
import torch

from agentrt.parallelism import parse, register_op
from agentrt.parallelism.anno import OpView, Split
from agentrt.parallelism.ops import annotator_for, reshape_groups

aten = torch.ops.aten


def view(target, args, in_shapes, out_shapes, kwargs=None):
    return OpView(target, tuple(args), kwargs or {}, list(in_shapes), list(out_shapes))


def test_parse_marks_reduction_frozen_and_broadcast() -> None:
    anno = parse("b s k+, n k+, n -> b s n", additive=[2])
    assert anno.inputs == (("b", "s", "k"), ("n", "k"), ("n",))
    assert anno.outputs == (("b", "s", "n"),)
    assert anno.reduce == {"k"} and anno.additive == {2}
    frozen = parse("b 1 E^ -> b E^")
    assert "E" in frozen.frozen and frozen.inputs[0][1] in frozen.frozen
    assert str(anno) == "b s k+, n k+, n -> b s n"


@pytest.mark.parametrize("bad", ["a b", "a+ -> a^, a^", "a- -> a"])
def test_parse_refuses_malformed(bad: str) -> None:
    with pytest.raises(ValueError):
        parse(bad)


def test_linear_reduces_k_and_bias_is_additive() -> None:
    anno = annotator_for(aten.linear.default)(
        view(aten.linear.default, [], [(2, 8, 64), (32, 64), (32,)], [(2, 8, 32)])
    )
    assert anno.inputs == (("d0", "d1", "k"), ("n", "k"), ("n",))
    assert anno.reduce == {"k"} and anno.additive == {2}


def test_elementwise_never_splits_through_a_broadcast_dimension() -> None:
    # rotary: q (b, h, s, d) * cos (1, 1, s, d)
    anno = annotator_for(aten.mul.Tensor)(
        view(aten.mul.Tensor, [], [(2, 4, 8, 16), (1, 1, 8, 16)], [(2, 4, 8, 16)])
    )
    q, cos = anno.inputs
    assert q == anno.outputs[0]
    assert cos[2:] == q[2:] and cos[0] in anno.frozen and cos[1] in anno.frozen


def test_reshape_groups_pair_dimensions_with_equal_products() -> None:
    assert reshape_groups((2, 8, 64), (2, 8, 4, 16)) == [([0], [0]), ([1], [1]), ([2], [2, 3])]
    assert reshape_groups((2, 2, 2, 8, 16), (2, 4, 8, 16)) == [
        ([0], [0]),
        ([1, 2], [1]),
        ([3], [2]),
        ([4], [3]),
    ]
    assert reshape_groups((2, 1, 8), (2, 8)) == [([0], [0]), ([1], []), ([2], [1])]


def test_view_splits_heads_through_the_hidden_dimension_and_localizes_its_shape() -> None:
    v = view(aten.view.default, [None, [2, 8, -1, 16]], [(2, 8, 64)], [(2, 8, 4, 16)])
    anno = annotator_for(aten.view.default)(v)
    hidden, heads = anno.inputs[0][2], anno.outputs[0][2]
    assert hidden == heads and heads not in anno.frozen
    assert anno.outputs[0][3] in anno.frozen  # head_dim cannot be split
    args, _ = anno.localize((None, [2, 8, -1, 16]), {}, anno, Split(anno.outputs[0][0], 2, 1))
    assert args[1] == [1, 8, -1, 16]


def test_sdpa_freezes_key_length_and_head_dim_and_query_length_when_causal() -> None:
    shapes = [(2, 4, 8, 16)] * 3
    plain = annotator_for(aten.scaled_dot_product_attention.default)(
        view(aten.scaled_dot_product_attention.default, [None] * 3, shapes, [(2, 4, 8, 16)])
    )
    assert {"S", "E"} <= plain.frozen and "L" not in plain.frozen and "b1" not in plain.frozen
    causal = annotator_for(aten.scaled_dot_product_attention.default)(
        view(
            aten.scaled_dot_product_attention.default,
            [None] * 3,
            shapes,
            [(2, 4, 8, 16)],
            {"is_causal": True},
        )
    )
    assert "L" in causal.frozen


def test_cross_entropy_mean_is_not_split_but_sum_is_partial() -> None:
    target = aten.cross_entropy_loss.default
    mean = annotator_for(target)(view(target, [None, None, None, 1], [(8, 10), (8,)], [()]))
    total = annotator_for(target)(view(target, [None, None, None, 2], [(8, 10), (8,)], [()]))
    assert "N" in mean.frozen
    assert total.reduce == {"N"}


def test_register_op_overrides_and_extends() -> None:
    lib = torch.library.Library("agentrt_test", "DEF")
    lib.define("scale(Tensor x) -> Tensor")
    op = torch.ops.agentrt_test.scale.default
    assert annotator_for(op) is None
    register_op(op, "a b -> a b")
    assert annotator_for(op)(view(op, [], [(2, 3)], [(2, 3)])).inputs == (("a", "b"),)


def test_vocabulary_split_embedding_pieces_sum_to_the_lookup() -> None:
    target = aten.embedding.default
    anno = annotator_for(target)(view(target, [], [(10, 4), (2, 3)], [(2, 3, 4)]))
    assert anno.reduce == {"V"}
    weight = torch.randn(10, 4)
    ids = torch.tensor([[0, 4, 9], [5, 5, 2]])
    parts = [anno.kernel(Split("V", 2, i))(weight.chunk(2)[i], ids, 5) for i in range(2)]
    torch.testing.assert_close(parts[0] + parts[1], torch.nn.functional.embedding(ids, weight))
