"""Networks: the compact student (also the dark-knowledge teacher) and the ordinal teacher.

The student is a narrow ResNet with ordinary 3x3 convolutions: on this CPU, PyTorch's backward
pass for depthwise convolutions is several times slower per FLOP, so a MobileNet-style student
would cost far more training time for the same accuracy at 64 px (see training/README.md).
"""

from __future__ import annotations

import itertools

import torch
from torch import Tensor, nn


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.act = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        out = self.act(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act(out + self.shortcut(x))


class ResNetBackbone(nn.Module):
    """Stem (stride 2), then one stage per width, each halving the resolution.

    Striding the first stage too (64 px -> 16 px after two layers) halves the FLOPs against a
    CIFAR-style stride-1 first stage; measured here: 31 s vs 83 s per UTKFace epoch on 2 cores.
    """

    def __init__(self, widths: tuple[int, ...], blocks: tuple[int, ...], stem: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, stem, 3, 2, 1, bias=False), nn.BatchNorm2d(stem), nn.ReLU(inplace=True)
        )
        stages = []
        cin = stem
        for w, n in zip(widths, blocks, strict=True):
            layers = [BasicBlock(cin, w, 2)]
            layers += [BasicBlock(w, w, 1) for _ in range(n - 1)]
            stages.append(nn.Sequential(*layers))
            cin = w
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.out_dim = cin
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        # Zero-init the last BN of each residual branch: each block starts as identity, which
        # trains faster from scratch (Goyal et al., 2017).
        for m in self.modules():
            if isinstance(m, BasicBlock):
                nn.init.zeros_(m.bn2.weight)

    def forward(self, x: Tensor) -> Tensor:
        return torch.flatten(self.pool(self.stages(self.stem(x))), 1)


class AgeClassifier(nn.Module):
    """Backbone + dropout + linear over age classes. `forward` returns logits only (what ONNX
    exports); `forward_features` also returns the pooled feature used by the hint loss."""

    def __init__(
        self,
        num_classes: int = 101,
        widths: tuple[int, ...] = (48, 96, 128),
        blocks: tuple[int, ...] = (1, 1, 1),
        stem: int = 32,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.backbone = ResNetBackbone(widths, blocks, stem)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(self.backbone.out_dim, num_classes)
        self.feature_dim = self.backbone.out_dim

    def forward_features(self, x: Tensor) -> tuple[Tensor, Tensor]:
        feat = self.backbone(x)
        return feat, self.head(self.dropout(feat))

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_features(x)[1]


def permutation_classes(k: int, merge_reverse: bool = True) -> list[tuple[int, ...]]:
    """The permutations the ordinal teacher classifies. With merge_reverse, a permutation and its
    reverse share a class (ascending vs descending order is the same ordinal relation), as in
    order-prediction networks (Lee et al., 2017): k!/2 classes."""
    perms = list(itertools.permutations(range(k)))
    if not merge_reverse:
        return perms
    out: list[tuple[int, ...]] = []
    seen: set[tuple[int, ...]] = set()
    for p in perms:
        if p in seen:
            continue
        out.append(p)
        seen.add(p)
        seen.add(tuple(reversed(p)))
    return out


class OrdinalTeacher(nn.Module):
    """Order-prediction network: a shared per-face encoder, pairwise feature fusion, and a
    classifier over the (merged) permutations of k faces.

    Pairwise fusion (an MLP on each ordered pair's concatenated embeddings, as in OPN) makes the
    encoder learn features whose *differences* encode age order, which is exactly the ordinal
    structure we want to hand to the student through the hint loss.
    """

    def __init__(
        self,
        k: int = 4,
        embed_dim: int = 128,
        widths: tuple[int, ...] = (64, 128, 192),
        blocks: tuple[int, ...] = (1, 1, 2),
        stem: int = 32,
        pair_dim: int = 128,
    ) -> None:
        super().__init__()
        self.k = k
        self.perms = permutation_classes(k)
        self.encoder = ResNetBackbone(widths, blocks, stem)
        self.embed = nn.Sequential(nn.Linear(self.encoder.out_dim, embed_dim), nn.BatchNorm1d(embed_dim))
        self.embed_dim = embed_dim
        self.pairs = list(itertools.combinations(range(k), 2))
        self.pair_mlp = nn.Sequential(nn.Linear(2 * embed_dim, pair_dim), nn.ReLU(inplace=True))
        self.head = nn.Sequential(
            nn.Dropout(0.2),
            nn.Linear(pair_dim * len(self.pairs), 256),
            nn.ReLU(inplace=True),
            nn.Linear(256, len(self.perms)),
        )

    def embed_faces(self, x: Tensor) -> Tensor:
        """(N, 3, S, S) -> (N, embed_dim): the intermediate representation given to the student."""
        return self.embed(self.encoder(x.contiguous(memory_format=torch.channels_last)))

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, k, 3, S, S) shuffled faces -> logits over permutation classes."""
        b = x.shape[0]
        e = self.embed_faces(x.flatten(0, 1)).view(b, self.k, -1)
        fused = [self.pair_mlp(torch.cat([e[:, i], e[:, j]], dim=1)) for i, j in self.pairs]
        return self.head(torch.cat(fused, dim=1))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def conv_flops(model: nn.Module, input_size: int) -> int:
    """Multiply-accumulates of one forward pass at batch 1, counted with hooks."""
    macs = 0

    def hook(mod: nn.Module, inp: tuple[Tensor, ...], out: Tensor) -> None:
        nonlocal macs
        if isinstance(mod, nn.Conv2d):
            k = mod.kernel_size[0] * mod.kernel_size[1] * (mod.in_channels // mod.groups)
            macs += int(out.numel() * k)
        elif isinstance(mod, nn.Linear):
            macs += int(mod.in_features * mod.out_features)

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    was_training = model.training
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, 3, input_size, input_size))
    model.train(was_training)
    for h in handles:
        h.remove()
    return macs
