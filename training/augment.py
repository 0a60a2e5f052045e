"""Batched, on-tensor augmentation for cached uint8 crops (no per-sample PIL work on the CPU)."""

from __future__ import annotations

import io
import math
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
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


_SEPIA = torch.tensor([[0.393, 0.769, 0.189], [0.349, 0.686, 0.168], [0.272, 0.534, 0.131]])


def _rand(gen: torch.Generator, *shape: int, lo: float = 0.0, hi: float = 1.0) -> Tensor:
    return lo + (hi - lo) * torch.rand(*shape, generator=gen)


def _gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    radius = max(1, math.ceil(2.5 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype)
    k = torch.exp(-(t**2) / (2 * sigma**2))
    k = (k / k.sum()).to(x.device)
    c = x.shape[1]
    x = F.conv2d(
        F.pad(x, (radius, radius, 0, 0), mode="replicate"), k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c
    )
    return F.conv2d(
        F.pad(x, (0, 0, radius, radius), mode="replicate"), k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c
    )


def _jpeg(x: Tensor, quality: int) -> Tensor:
    """One (3, S, S) image in [0, 1] through a real JPEG encoder and decoder (Pillow)."""
    arr = (x.permute(1, 2, 0).clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    out = np.asarray(Image.open(buf).convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(out.copy()).permute(2, 0, 1).to(x.device, x.dtype).div_(255.0)


def photo_conditions(x: Tensor, gen: torch.Generator, p: float) -> Tensor:
    """Give a share `p` of the batch the look of real uploads, each face its own mix: a colour
    cast, a faded or scanned print (sepia, low contrast, lifted blacks), greyscale, low
    resolution or blur, sensor noise, and JPEG at quality 30-90, in the order a photo meets them.

    UTKFace's faces are recent web photos; users send old prints, greyscale scans and heavily
    compressed thumbnails, where the model trained on UTKFace alone drifts (issue 23 measured
    old family photos 5.5 years too old). Drawn from the CPU generator, applied on x's device.
    """
    n = x.shape[0]
    chosen = torch.nonzero(torch.rand(n, generator=gen) < p).flatten()
    m = len(chosen)
    if m == 0:
        return x
    dev = x.device
    y = x[chosen.to(dev)]

    def pick(prob: float) -> Tensor:
        return (torch.rand(m, generator=gen) < prob).view(m, 1, 1, 1).to(dev)

    # Colour cast: each channel's gain within +-15 %.
    y = torch.where(pick(0.4), y * _rand(gen, m, 3, 1, 1, lo=0.85, hi=1.15).to(dev), y)
    # Faded or scanned print.
    sepia = torch.einsum("ij,njhw->nihw", _SEPIA.to(dev), y).clamp(0, 1)
    amount = _rand(gen, m, 1, 1, 1, lo=0.3, hi=1.0).to(dev)
    contrast = _rand(gen, m, 1, 1, 1, lo=0.55, hi=0.9).to(dev)
    floor = _rand(gen, m, 1, 1, 1, lo=0.15, hi=0.45).to(dev)
    faded = ((1 - amount) * y + amount * sepia) * contrast + (1 - contrast) * floor
    y = torch.where(pick(0.25), faded, y)
    gray = (0.299 * y[:, 0:1] + 0.587 * y[:, 1:2] + 0.114 * y[:, 2:3]).expand_as(y)
    y = torch.where(pick(0.35), gray, y)
    # Resolution: a small source face upscaled (one of three sizes), or defocus blur.
    size = y.shape[-1]
    how = torch.randint(0, 8, (m,), generator=gen)  # 0-2: low resolution, 3-5: blur, 6-7: neither
    for code, low in enumerate((14, 20, 28)):
        sel = torch.nonzero(how == code).flatten().to(dev)
        if len(sel):
            small = F.interpolate(y[sel], size=(low, low), mode="area")
            y[sel] = F.interpolate(small, size=(size, size), mode="bilinear", align_corners=False)
    for code, sigma in zip((3, 4, 5), (0.8, 1.3, 2.0), strict=True):
        sel = torch.nonzero(how == code).flatten().to(dev)
        if len(sel):
            y[sel] = _gaussian_blur(y[sel], sigma)
    y = torch.where(
        pick(0.3),
        y + torch.randn(y.shape, generator=gen).to(dev) * _rand(gen, m, 1, 1, 1, hi=0.04).to(dev),
        y,
    )
    y = y.clamp(0, 1)
    jpeg = torch.rand(m, generator=gen) < 0.45
    quality = torch.randint(30, 91, (m,), generator=gen)
    for i in torch.nonzero(jpeg).flatten().tolist():
        y[i] = _jpeg(y[i], int(quality[i]))
    out = x.clone()
    out[chosen.to(dev)] = y
    return out
