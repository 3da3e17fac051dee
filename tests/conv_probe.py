"""Run every convolution the demo and ``exfiqa.train.trainer`` use, one by one, and say which one crashes.

Run as a script (``python tests/conv_probe.py train|infer``) by ``tests/test_cpu_kernels.py``, so that
a CPU kernel that kills the process (torch 2.14's strided 1x1 ``channels_last`` backward on AVX-512
segfaults) becomes a named test failure instead of a dead test run. Before each convolution it
prints ``START <description>``, after it ``OK <description>``: the last ``START`` without its
``OK`` names the culprit.

The convolutions are collected with forward pre-hooks from the real models, so the probe follows
the architectures: the demo's FR backbones (default and tiny widths, all three architectures),
full-width FR backbones (the widths ``exfiqa.train.trainer`` uses on MS1MV2, with two units per stage:
the same shapes as iResNet-100 / IR-101) and ViT-FIQA (demo stems and the released patch
embedding). ``train`` runs forward + backward of each module in ``channels_last`` and contiguous
layout (training uses both); ``infer`` runs the FR embedding path (``FRModel.embed``, which is
``channels_last``) of each backbone under ``no_grad``.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator

import torch
from torch import nn

from exfiqa.demo import DemoSpec
from exfiqa.models import fr as frmod
from exfiqa.models.vitfiqa import build_vitfiqa

BATCH = 16  # the size of the reported reproducer; the demo trains with 64 (16 in the tiny world)


def fr_backbones() -> Iterator[tuple[str, nn.Module]]:
    """The FR backbones of the demo (default and tiny) and full-width ones as in exfiqa.train.trainer."""
    shapes = {
        "demo": (DemoSpec().fr_layers, DemoSpec().fr_widths, DemoSpec().fr_embedding),
        "tiny": (DemoSpec.tiny().fr_layers, DemoSpec.tiny().fr_widths, DemoSpec.tiny().fr_embedding),
        "full": ((2, 2, 2, 2), (64, 128, 256, 512), 512),
    }
    for tag, (layers, widths, emb) in shapes.items():
        for arch in ("iresnet", "magface", "curricularface"):
            yield f"{arch}[{tag}]", frmod.build_fr(arch, layers=layers, widths=widths, embedding_size=emb)


def vit_models() -> Iterator[tuple[str, nn.Module]]:
    for tag, spec in (("demo", DemoSpec()), ("tiny", DemoSpec.tiny())):
        yield f"vitfiqa[{tag}]", build_vitfiqa(
            variant="token", embed_dim=spec.vit_width, num_heads=spec.vit_heads, patch_size=spec.vit_patch,
            stem_channels=spec.vit_stem, feature_dim=spec.vit_feature, depth=1,
        )
    yield "vitfiqa[released]", build_vitfiqa(variant="token", depth=1)


def conv_calls(model: nn.Module) -> list[tuple[nn.Conv2d, tuple[int, ...]]]:
    """Each distinct (convolution settings, input shape) the model runs on a 112x112 batch."""
    seen: dict[tuple, tuple[nn.Conv2d, tuple[int, ...]]] = {}

    def hook(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        assert isinstance(module, nn.Conv2d)
        shape = tuple(args[0].shape[1:])
        key = (type(module).__name__, module.in_channels, module.out_channels, module.kernel_size,
               module.stride, module.padding, module.groups, shape)  # fmt: skip
        seen.setdefault(key, (module, shape))

    handles = [m.register_forward_pre_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        model.eval()(torch.zeros(2, 3, 112, 112))
    for h in handles:
        h.remove()
    return list(seen.values())


def describe(conv: nn.Conv2d, shape: tuple[int, ...], fmt: str) -> str:
    return (f"{type(conv).__name__}({conv.in_channels}, {conv.out_channels}, k={conv.kernel_size[0]}, "
            f"s={conv.stride[0]}, p={conv.padding[0]}) on ({BATCH}, {', '.join(map(str, shape))}) {fmt}")  # fmt: skip


def probe_train() -> None:
    formats = {"channels_last": torch.channels_last, "contiguous": torch.contiguous_format}
    done: set[str] = set()
    for name, model in [*fr_backbones(), *vit_models()]:
        for conv, shape in conv_calls(model):
            for fmt, memory_format in formats.items():
                what = describe(conv, shape, fmt)
                if what in done:
                    continue
                done.add(what)
                print(f"START {name}: {what}", flush=True)
                module = conv.train().to(memory_format=memory_format)
                x = torch.randn(BATCH, *shape).contiguous(memory_format=memory_format).requires_grad_()
                for _ in range(3):  # the reported crash needed a few iterations now and then
                    module(x).square().mean().backward()
                assert x.grad is not None and torch.isfinite(x.grad).all()
                print(f"OK {name}: {what}", flush=True)


def probe_infer() -> None:
    images = torch.randint(0, 256, (BATCH, 112, 112, 3), dtype=torch.uint8).numpy()
    for name, net in fr_backbones():
        arch = name.split("[")[0]
        fr_name = {"iresnet": "arcface", "magface": "magface", "curricularface": "curricularface"}[arch]
        model = frmod.FRModel(fr_name, net, frmod.FR_MODELS[fr_name][1], device="cpu", arch=arch)
        print(f"START {name}: FRModel.embed (channels_last, flip) on ({BATCH}, 112, 112, 3)", flush=True)
        emb = model.embed(images, batch_size=BATCH)
        assert emb.shape[0] == BATCH and bool(torch.isfinite(torch.from_numpy(emb)).all())
        print(f"OK {name}: FRModel.embed", flush=True)


if __name__ == "__main__":
    torch.manual_seed(0)
    torch.set_num_threads(int(sys.argv[2]) if len(sys.argv) > 2 else 1)
    {"train": probe_train, "infer": probe_infer}[sys.argv[1]]()
    print("ALL OK", flush=True)
