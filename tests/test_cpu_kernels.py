"""Every convolution the demo and ``exfiqa.train.trainer`` run must survive this CPU's torch kernels.

torch 2.14.1's CPU backward of a strided 1x1 convolution in ``channels_last`` with <= 8 input
channels segfaults on AVX-512 CPUs; the demo's narrow iResNets had exactly that shortcut. The
probe runs in a subprocess so that a crash is reported here, naming the convolution, instead of
killing the test run. ``fr.PointwiseConv`` is the fix; the last test shows it computes exactly what
the strided convolution computes.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from exfiqa.models.fr import PointwiseConv

PROBE = Path(__file__).with_name("conv_probe.py")


def _run_probe(mode: str, threads: int) -> None:
    proc = subprocess.run(
        [sys.executable, str(PROBE), mode, str(threads)], capture_output=True, text=True, timeout=900
    )
    lines = proc.stdout.splitlines()
    started = [ln[len("START "):] for ln in lines if ln.startswith("START ")]
    finished = {ln[len("OK "):] for ln in lines if ln.startswith("OK ")}
    if proc.returncode != 0:
        culprit = started[-1] if started else "(before the first convolution)"
        how = f"signal {-proc.returncode}" if proc.returncode < 0 else f"exit code {proc.returncode}"
        pytest.fail(
            f"{mode} probe ({threads} thread(s)) died with {how} in: {culprit}\n"
            f"{len(finished)} convolutions passed before it. stderr tail:\n{proc.stderr[-2000:]}"
        )
    assert lines and lines[-1] == "ALL OK", proc.stdout[-2000:]
    assert len(started) == len(finished) > 0


@pytest.mark.parametrize("threads", [1, 2])
def test_every_training_convolution_runs_forward_and_backward(threads):
    _run_probe("train", threads)


def test_fr_embedding_in_channels_last_runs():
    _run_probe("infer", 2)


@pytest.mark.parametrize(("cin", "cout", "side"), [(8, 8, 112), (8, 16, 56), (64, 128, 56), (3, 5, 7)])
def test_pointwise_conv_equals_the_strided_convolution(cin, cout, side):
    torch.manual_seed(0)
    ours = PointwiseConv(cin, cout, stride=2).double()
    plain = nn.Conv2d(cin, cout, 1, stride=2, bias=False).double()
    plain.load_state_dict(ours.state_dict())  # the same keys: released checkpoints load unchanged
    x = torch.randn(3, cin, side, side, dtype=torch.float64, requires_grad=True)  # contiguous: safe
    y_ours, y_plain = ours(x), plain(x)
    assert y_ours.shape == y_plain.shape == (3, cout, (side + 1) // 2, (side + 1) // 2)
    torch.testing.assert_close(y_ours, y_plain, rtol=0, atol=1e-12)
    g_ours = torch.autograd.grad(y_ours.square().sum(), [x, ours.weight])
    g_plain = torch.autograd.grad(y_plain.square().sum(), [x, plain.weight])
    for a, b in zip(g_ours, g_plain, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)
