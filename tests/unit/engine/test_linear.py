"""oneDNN-packed linears: the same products as ``F.linear``, only where they are faster."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from agentrt.engine.linear import (
    MAX_PACKED_ROWS,
    MIN_PACKED_ROWS,
    PackedLinear,
    pack_linears,
    packing_available,
)
from agentrt.engine.matmul import Weight

pytestmark = pytest.mark.skipif(not packing_available(), reason="torch built without oneDNN")


class TwoLayers(nn.Module):
    """An embedding tied to an output projection, a biased linear and a bf16 one."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(50, 24)
        self.hidden = nn.Linear(24, 40)
        self.narrow = nn.Linear(40, 24, bias=False)
        self.head = nn.Linear(24, 50, bias=False)
        self.head.weight = self.embed.weight
        self.bf16 = nn.Linear(24, 8).to(torch.bfloat16)


@pytest.mark.parametrize("rows", [1, 7, 32, MAX_PACKED_ROWS, MAX_PACKED_ROWS + 1, 600])
def test_packed_products_equal_f_linear(rows: int) -> None:
    model = TwoLayers()
    assert pack_linears(model) == 3  # the bf16 layer stays as it was
    x = torch.randn(1, rows, 24)
    for layer in (model.hidden, model.head):
        assert isinstance(layer, PackedLinear)
        expected = F.linear(x, layer.weight, layer.bias)
        got = layer(x)
        assert got.shape == expected.shape == (1, rows, layer.out_features)
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert model.narrow(torch.randn(rows, 40)).shape == (rows, 24)  # 2-D input, no bias


def test_packing_keeps_parameters_tied_weights_and_other_dtypes() -> None:
    model = TwoLayers()
    before = {name: p.clone() for name, p in model.state_dict().items()}
    pack_linears(model)
    assert model.head.weight is model.embed.weight
    assert type(model.bf16) is nn.Linear
    after = model.state_dict()
    assert before.keys() == after.keys()  # the packed copies are not parameters
    for name, value in before.items():
        assert torch.equal(value, after[name])
    x = torch.randn(3, 24, dtype=torch.bfloat16)
    torch.testing.assert_close(model.bf16(x), F.linear(x, model.bf16.weight, model.bf16.bias))


def test_an_input_of_another_dtype_takes_the_dense_path() -> None:
    model = TwoLayers()
    pack_linears(model)
    x = torch.randn(4, 24, dtype=torch.float64)
    layer = model.hidden.double()  # a later .to() changes the dense weight, not the packed one
    torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias))


@pytest.mark.parametrize(
    ("rows", "packed"),
    [
        (1, False),
        (MIN_PACKED_ROWS - 1, False),
        (MIN_PACKED_ROWS, True),
        (MAX_PACKED_ROWS, True),
        (MAX_PACKED_ROWS + 1, False),
    ],
)
def test_only_batched_decode_rows_use_the_packed_weight(rows: int, packed: bool) -> None:
    # A packed copy of another weight shows which of the two a product used.
    model = TwoLayers()
    pack_linears(model)
    layer = model.hidden
    other = torch.randn_like(layer.weight)
    layer.packed_weight = torch.ops.mkldnn._reorder_linear_weight(other, 32)
    x = torch.randn(rows, 24)
    expected = F.linear(x, other if packed else layer.weight, layer.bias)
    torch.testing.assert_close(layer(x), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("rows", [1, 2, MIN_PACKED_ROWS, MAX_PACKED_ROWS])
def test_a_bfloat16_weight_uses_its_packed_copy_from_one_row(
    monkeypatch: pytest.MonkeyPatch, rows: int
) -> None:
    from agentrt.engine import loader

    monkeypatch.setattr(loader, "cpu_has_bf16_instructions", lambda: True)
    torch.manual_seed(0)
    dense = torch.randn(40, 24, dtype=torch.bfloat16)
    try:
        weight = Weight(dense, None, pack=True)
    except RuntimeError as e:  # oneDNN's bfloat16 reorder needs avx512bw/vl/dq or avx_ne_convert
        pytest.skip(f"this CPU cannot pack bfloat16 weights: {e}")
    assert weight.packed is not None
    # A packed copy of another weight shows which of the two the product used.
    other = torch.randn_like(dense)
    weight.packed = torch.ops.mkldnn._reorder_linear_weight(other, 32)
    x = torch.randn(rows, 24, dtype=torch.bfloat16)
    torch.testing.assert_close(weight(x), F.linear(x, other), rtol=2e-2, atol=2e-2)


def test_a_bfloat16_weight_stays_dense_without_native_bfloat16(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from agentrt.engine import loader

    monkeypatch.setattr(loader, "cpu_has_bf16_instructions", lambda: False)
    dense = torch.randn(40, 24, dtype=torch.bfloat16)
    weight = Weight(dense, None, pack=True)
    assert weight.packed is None
    x = torch.randn(1, 24, dtype=torch.bfloat16)
    torch.testing.assert_close(weight(x), F.linear(x, dense))
    assert Weight(dense.float(), None, pack=True).packed is not None  # float32 packs anywhere
