"""Batched, on-tensor augmentation for cached uint8 crops (no per-sample PIL work on the CPU)."""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from agelens.manifest import Normalisation


def to_float(batch_u8: Tensor) -> Tensor:
    """(N, S, S, 3) uint8 -> (N, 3, S, S) float in [0, 1]."""
    return batch_u8.permute(0, 3, 1, 2).float().div_(255.0)


def normalised_batches(
    crops: Tensor, norm: Normalisation, device: torch.device, batch_size: int = 512
) -> Iterator[Tensor]:
    """Cached uint8 crops, `batch_size` at a time, as normalised float batches on `device`
    (one batch on the device at a time; the crops stay in host memory)."""
    for i in range(0, len(crops), batch_size):
        yield normalise(to_float(crops[i : i + batch_size].to(device)), norm)


def normalise(x: Tensor, norm: Normalisation) -> Tensor:
    mean = torch.tensor(norm.mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(norm.std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def augment(
    x: Tensor,
    gen: torch.Generator,
    max_rotate_deg: float = 10.0,
    max_scale: float = 0.08,
    max_shift: float = 0.06,
    color: float = 0.25,
    gray_p: float = 0.1,
) -> tuple[Tensor, Tensor]:
    """Flip, small similarity jitter (mimics detector keypoint noise), colour jitter, grayscale.

    The geometric jitter matters: at serving time crops come from BlazeFace keypoints on photos,
    which are noisier than on UTKFace's pre-aligned images. Returns the batch and its flip mask
    (distillation uses the mask to pick the teacher's target for the mirrored crop).
    """
    n, dev = x.shape[0], x.device

    def uniform(*shape: int) -> Tensor:
        # Drawn from the CPU generator whatever the device, so CPU and GPU runs of one seed
        # see the same augmentations; then moved next to the batch.
        return (torch.rand(*shape, generator=gen) * 2 - 1).to(dev)

    flip = torch.rand(n, generator=gen) < 0.5
    x = torch.where(flip.to(dev).view(n, 1, 1, 1), x.flip(3), x)
    ang = uniform(n) * math.radians(max_rotate_deg)
    scale = 1.0 + uniform(n) * max_scale
    tx = uniform(n) * max_shift * 2
    ty = uniform(n) * max_shift * 2
    cos, sin = torch.cos(ang) / scale, torch.sin(ang) / scale
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    # Colour: brightness, contrast, saturation, each per sample.
    b = 1.0 + uniform(n, 1, 1, 1) * color
    c = 1.0 + uniform(n, 1, 1, 1) * color
    s = 1.0 + uniform(n, 1, 1, 1) * color
    x = x * b
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * c + mean
    gray = 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]
    x = (x - gray) * s + gray
    to_gray = (torch.rand(n, generator=gen) < gray_p).to(dev).view(n, 1, 1, 1)
    x = torch.where(to_gray, gray.expand_as(x), x)
    # The flip mask stays on the CPU: it indexes the offline teacher targets, kept in host memory.
    return x.clamp_(0.0, 1.0), flip


def zoom_to_margin(x: Tensor, from_margin: float, to_margin: float) -> Tensor:
    """A batch of crops aligned at `from_margin`, resampled to the crop of the same faces at
    `to_margin` (agelens.manifest.AlignmentSpec: the margin grows or shrinks the template's unit
    face box by that fraction on every side, about its centre, so the two crops share a centre
    and differ by the scale (1 + 2 to) / (1 + 2 from)).

    It lets a teacher that learnt another crop answer on the student's own augmented, mixed
    batch (online teaching). Zooming in from a 64 px crop upsamples (a little blurrier than a
    crop aligned at that margin); zooming out replicates the border, as the cache does past the
    source image's edge.
    """
    s = (1.0 + 2.0 * to_margin) / (1.0 + 2.0 * from_margin)
    if s == 1.0:
        return x
    theta = torch.tensor([[s, 0.0, 0.0], [0.0, s, 0.0]], dtype=x.dtype, device=x.device).expand(len(x), 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


class ZoomedView(nn.Module):
    """A network that learnt crops at `own_margin`, fed crops aligned at `input_margin`: it sees
    them zoomed to its own crop (`zoom_to_margin`). An online teacher wrapped this way answers on
    the student's batch; flip averaging commutes with it (the zoom is about the centre)."""

    def __init__(self, model: nn.Module, input_margin: float, own_margin: float) -> None:
        super().__init__()
        self.model = model
        self.margins = (input_margin, own_margin)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(zoom_to_margin(x, *self.margins))
