"""Analytic FLOPs against the paper's figures (within 0.01 GFLOPs) and a hand count."""

from __future__ import annotations

import pytest

from exfiqa.models.flops import (
    block_flops,
    exit_cost,
    exit_costs,
    fused_cost,
    head_flops,
    patch_embed_flops,
)
from exfiqa.models.vitfiqa import ViTFIQAConfig

C = ViTFIQAConfig(variant="crfiqa")
T = ViTFIQAConfig(variant="token")


def test_crfiqa_matches_paper():
    assert patch_embed_flops(C) / 1e9 == pytest.approx(0.0358, abs=1e-4)
    assert block_flops(C) / 1e9 == pytest.approx(0.9484, abs=1e-4)
    assert head_flops(C) / 1e9 == pytest.approx(0.0760, abs=1e-3)
    assert exit_cost(C, 7).gflops == pytest.approx(6.75, abs=0.01)
    assert exit_cost(C, 12).gflops == pytest.approx(11.49, abs=0.01)
    assert exit_cost(C, 7).saving == pytest.approx(0.41, abs=0.005)
    assert fused_cost(C) / exit_cost(C, 12).gflops - 1 == pytest.approx(0.07, abs=0.01)


def test_token_matches_paper():
    assert block_flops(T) / 1e9 == pytest.approx(0.955, abs=0.01)
    assert 2000 < head_flops(T) < 4000  # "about 3k FLOPs"
    assert exit_cost(T, 6).saving == pytest.approx(0.50, abs=0.005)


def test_block_count_by_hand():
    # N=145, D=512: 12*N*D^2 + 2*N^2*D MACs, times 2
    assert block_flops(T) == 2 * (12 * 145 * 512**2 + 2 * 145**2 * 512)
    costs = exit_costs(C)
    assert [c.exit for c in costs] == list(range(1, 13))
    steps = {round(b.gflops - a.gflops, 9) for a, b in zip(costs, costs[1:], strict=False)}
    assert steps == {round(block_flops(C) / 1e9, 9)}
    with pytest.raises(ValueError):
        exit_cost(C, 13)
