"""Training-step cost of the demo FR backbone in the layouts that run on every CPU.

The demo trains its narrow iResNets (widths 8-16-32-64) in ``channels_last``. torch 2.14's strided
1x1 ``channels_last`` backward with <= 8 input channels segfaults on AVX-512 CPUs, so the shortcut
convolutions are :class:`exfiqa.models.fr.PointwiseConv` (subsample, then a stride-1 1x1 convolution).
This prints the median time of a training step (forward, backward, AdamW step; one thread, as one
demo worker) for that fix in ``channels_last`` and in the default layout (the other fix that
avoids the crash), interleaved so that drift of the machine hits both alike. The plain strided
``nn.Conv2d`` is timed only where it cannot crash: in the default layout.

Usage: python bench/bench_fr_train.py [--steps 20] [--rounds 5] [--batch-size 64]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from exfiqa.demo import DemoSpec
from exfiqa.models import fr as frmod


def plain_shortcuts(net: nn.Module) -> nn.Module:
    """The same backbone with every PointwiseConv replaced by the plain strided nn.Conv2d."""
    for module in list(net.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, frmod.PointwiseConv):
                conv = nn.Conv2d(child.in_channels, child.out_channels, 1, stride=child.stride, bias=False)
                conv.weight.data.copy_(child.weight.data)
                setattr(module, name, conv)
    return net


def step_time(net: nn.Module, memory_format: torch.memory_format, batch: int, steps: int) -> float:
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    net.train().to(memory_format=memory_format)
    x = torch.randn(batch, 3, 112, 112).contiguous(memory_format=memory_format)
    t0 = time.perf_counter()
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        net(x).square().mean().backward()
        opt.step()
    return (time.perf_counter() - t0) / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=64)
    args = ap.parse_args()
    torch.set_num_threads(1)
    spec = DemoSpec()

    def build(plain: bool) -> nn.Module:
        torch.manual_seed(0)
        net = frmod.build_fr("iresnet", layers=spec.fr_layers, widths=spec.fr_widths, embedding_size=spec.fr_embedding)
        return plain_shortcuts(net) if plain else net

    variants = {
        "PointwiseConv, channels_last (the demo now)": (False, torch.channels_last),
        "PointwiseConv, contiguous": (False, torch.contiguous_format),
        "plain strided Conv2d, contiguous": (True, torch.contiguous_format),
    }
    nets = {name: build(plain) for name, (plain, _) in variants.items()}
    for name, (_, fmt) in variants.items():
        step_time(nets[name], fmt, args.batch_size, 2)  # warm-up
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, (_, fmt) in variants.items():
            times[name].append(step_time(nets[name], fmt, args.batch_size, args.steps))
    base = statistics.median(times[next(iter(variants))])
    print(f"demo iResNet {spec.fr_widths}, batch {args.batch_size}, 1 thread, {args.rounds} rounds x {args.steps} steps")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"  {name:45s} {1000 * med:7.1f} ms/step  {med / base:5.2f}x  (min {1000 * min(ts):.1f}, max {1000 * max(ts):.1f})")


if __name__ == "__main__":
    main()
