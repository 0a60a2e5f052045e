"""Rebuild a trainable student from a shipped ONNX file.

Why: teachers' and students' checkpoints are not committed (issue 3), so a fresh checkout holds
the shipped networks only as ONNX. To fine-tune one (for instance on a new crop) or to use it as
a teacher, its weights must come back into `AgeClassifier`.

The export folds every BatchNorm into the convolution before it, so the graph holds, per conv,
a weight W and a bias b. Setting the BN to identity (mean 0, var 1 - eps, scale 1, shift b)
reproduces the network exactly in eval mode, but in train mode BN would normalise by the batch
statistics and change the function at the first step. So the BN is "unfolded" again from data:
with the conv output's per-channel mean m and variance v on calibration crops, the BN gets
running stats (m, v), scale sqrt(v + eps) and shift b + m. Eval mode is then still exact, and
train mode, on batches like the calibration crops, starts close to the shipped network.

As a command, it writes the rebuilt network as a run's best.pt, so every tool that reads runs
(the soup, `reevaluate`, `student.init_from`, born-again teachers) takes a shipped version:

    python -m training.onnx_import model_store/agelens-student/3.4.0/model.onnx \\
        --cache data/cache/utkface-64 --out runs/shipped-3.4.0
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import Tensor, nn

from agelens.manifest import Normalisation
from training.augment import normalised_batches
from training.classifier import build_classifier
from training.config import ClassifierConfig
from training.dataset import load_data
from training.models import AgeClassifier, BasicBlock


def _constants(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    """Initialisers by name, followed through the Cast (fp16 storage) and Identity nodes the
    export puts between a stored weight and the Conv that reads it."""
    values = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type in ("Cast", "Identity") and node.input[0] in values:
            values[node.output[0]] = values[node.input[0]].astype(np.float32)
    return values


def conv_bn_pairs(model: AgeClassifier) -> list[tuple[nn.Conv2d, nn.BatchNorm2d]]:
    """Every conv with the BN after it, in the order the export writes the convs: stem, then per
    block conv1, conv2, shortcut."""
    bb = model.backbone
    pairs: list[tuple[nn.Conv2d, nn.BatchNorm2d]] = [(bb.stem[0], bb.stem[1])]
    for block in bb.stages.modules():
        if isinstance(block, BasicBlock):
            pairs += [(block.conv1, block.bn1), (block.conv2, block.bn2)]
            if isinstance(block.shortcut, nn.Sequential):
                pairs.append((block.shortcut[0], block.shortcut[1]))
    return pairs


def folded_weights(path: Path) -> tuple[list[tuple[np.ndarray, np.ndarray]], tuple[np.ndarray, np.ndarray]]:
    """(W, b) of each Conv of the graph's first pass (a flip-averaged graph runs the network
    twice, on the image and its mirror, with the same weights), and the head's (W, b)."""
    graph = onnx.load(str(path)).graph
    values = _constants(graph)
    convs: list[tuple[np.ndarray, np.ndarray]] = []
    for node in graph.node:
        if node.op_type == "GlobalAveragePool":
            break
        if node.op_type == "Conv":
            convs.append((values[node.input[1]], values[node.input[2]]))
    gemm = next(n for n in graph.node if n.op_type == "Gemm")
    return convs, (values[gemm.input[1]], values[gemm.input[2]])


def calibration_sample(crops: Tensor, n: int = 4096, seed: int = 0) -> Tensor:
    """A seeded random `n` of `crops` for the BN statistics.

    Not the first `n`: a cache is in file-name order, which for UTKFace is age order by the
    leading digits ("1_", "10_", "100_", "11_"...), so its first 4,096 train crops average 17
    years against 33 for all. Statistics from them describe children's faces; the rebuilt network
    is still exact in eval mode (any statistics are), but in train mode, and after a BN
    recomputation over all crops (the soup's), it is no longer the shipped network.
    """
    if len(crops) <= n:
        return crops
    idx = torch.randperm(len(crops), generator=torch.Generator().manual_seed(seed))[:n]
    return crops[idx.sort().values]


@torch.no_grad()
def student_from_onnx(
    path: Path,
    cfg: ClassifierConfig,
    crops: Tensor,
    norm: Normalisation,
    calibration: int = 4096,
    batch: int = 512,
) -> AgeClassifier:
    """The ONNX student's network as an `AgeClassifier` built from `cfg`'s architecture, with
    BN statistics taken on `calibration_sample(crops, calibration)` (uint8 crops, (N, S, S, 3):
    pass all the train crops, in any order). Returned in eval mode."""
    model = build_classifier(cfg)
    pairs = conv_bn_pairs(model)
    convs, (head_w, head_b) = folded_weights(path)
    if len(convs) != len(pairs) or model.head.weight.shape != head_w.shape:
        raise ValueError(f"{path} does not hold the architecture of {cfg.widths}/{cfg.blocks}/{cfg.stem}")
    for (conv, bn), (w, b) in zip(pairs, convs, strict=True):
        if tuple(conv.weight.shape) != w.shape:
            want = tuple(conv.weight.shape)
            raise ValueError(f"{path}: conv of shape {w.shape} where the config has {want}")
        conv.weight.copy_(torch.from_numpy(w))
        bn.weight.fill_(1.0)
        bn.bias.copy_(torch.from_numpy(b))
        bn.running_mean.zero_()
        bn.running_var.fill_(1.0 - bn.eps)
    model.head.weight.copy_(torch.from_numpy(head_w))
    model.head.bias.copy_(torch.from_numpy(head_b))
    model.eval()

    # Per-channel moments of each conv's output (before its BN) over the calibration crops.
    sums: dict[int, list[Tensor]] = {}

    def hook(i: int) -> Callable[[nn.Module, tuple[Tensor, ...], Tensor], None]:
        def record(_: nn.Module, __: tuple[Tensor, ...], out: Tensor) -> None:
            s = sums.setdefault(i, [torch.zeros(out.shape[1], dtype=torch.float64)] * 2 + [torch.zeros(1)])
            o = out.double()
            s[0] = s[0] + o.sum((0, 2, 3))
            s[1] = s[1] + (o * o).sum((0, 2, 3))
            s[2] = s[2] + out.shape[0] * out.shape[2] * out.shape[3]

        return record

    handles = [conv.register_forward_hook(hook(i)) for i, (conv, _) in enumerate(pairs)]
    try:
        for x in normalised_batches(calibration_sample(crops, calibration), norm, torch.device("cpu"), batch):
            model(x)
    finally:
        for h in handles:
            h.remove()
    for i, (_, bn) in enumerate(pairs):
        total, sq, count = sums[i]
        mean = total / count.double()
        var = (sq / count.double() - mean * mean).clamp_min(1e-6)
        bn.running_mean.copy_(mean.float())
        bn.running_var.copy_(var.float())
        bn.weight.copy_((var + bn.eps).sqrt().float())
        bn.bias.add_(mean.float())
    return model


def write_checkpoint(model: AgeClassifier, cfg: ClassifierConfig, source: Path, out_dir: Path) -> Path:
    """`model` as a run's best.pt, in the format train_classifier writes (its config makes it
    loadable by load_classifier)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "best.pt"
    torch.save({"model": model.state_dict(), "config": cfg.model_dump(), "source": str(source)}, path)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("onnx", type=Path, help="a shipped student's model.onnx")
    ap.add_argument(
        "--cache", type=Path, required=True, help="crop cache whose train crops give the BN statistics"
    )
    ap.add_argument("--out", type=Path, required=True, help="run folder to write best.pt into")
    ap.add_argument(
        "--calibration", type=int, default=4096, help="how many train crops (a seeded random sample)"
    )
    args = ap.parse_args()
    cfg = ClassifierConfig()
    crops = load_data(args.cache).train.crops
    model = student_from_onnx(args.onnx, cfg, crops, Normalisation(), args.calibration)
    write_checkpoint(model, cfg, args.onnx, args.out)
    print(args.out / "best.pt")


if __name__ == "__main__":
    main()
