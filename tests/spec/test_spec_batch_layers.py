"""Flatten/Unflatten layers in a spec must keep the batch as dim 0, like the reshape/flatten ops."""

from __future__ import annotations

import pytest

from torchsmith.errors import SpecError
from torchsmith.spec import build_model, validate_spec

SPEC = """input_shape: [2, 3, 4]
chain:
  - Identity
  - %s
"""


@pytest.mark.parametrize(
    ("layer", "line"),
    [
        ("{type: Flatten, start_dim: 0}", 4),
        ("{type: Flatten,\n     start_dim: -3}", 5),
        ("{type: Unflatten, dim: 0, unflattened_size: [1, 2]}", 4),
        ("{type: Unflatten, dim: -3, unflattened_size: [2, 1]}", 4),
        ("{type: Unflatten, args: [0, [2, 1]]}", 4),
    ],
)
def test_layers_that_fold_or_split_the_batch_are_refused(layer, line):
    with pytest.raises(SpecError) as info:
        validate_spec(SPEC % layer)
    msg = str(info.value)
    assert info.value.line == line and msg.startswith(f"<spec>:{line}: chain[1]"), msg
    assert "does not keep the batch dimension (dim 0)" in msg and "(2, 3, 4) into" in msg, msg


def test_layers_that_keep_the_batch_build():
    model = build_model(SPEC % "{type: Unflatten, dim: 2, unflattened_size: [2, 2]}")
    assert model[1].dim == 2
    assert validate_spec(SPEC % "{type: Flatten, start_dim: -2}")["outputs"] == [2, 12]


def test_without_a_sample_shape_flattening_from_dim_0_is_still_refused():
    text = "chain:\n  - {type: Flatten, start_dim: 0}\n"
    with pytest.raises(
        SpecError, match=r"<spec>:2: chain\[0\]\.start_dim: Flatten\(start_dim=0.*at every input"
    ):
        validate_spec(text)
    validate_spec("chain:\n  - {type: Flatten, start_dim: 0, end_dim: 0}\n")  # flatten(0, 0) changes nothing
