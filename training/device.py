"""Where training runs: the CPU, or one CUDA GPU when the config (or `auto`) asks for it.

The crops stay in host memory; each batch is copied to the device as uint8 (1.5 MB for 128
crops at 64 px), so a GPU run needs no more host or device memory than a CPU run. Random draws
(batch order, augmentation parameters) come from one CPU generator in both cases, so a CPU and
a GPU run of one config see the same batches and the same augmentations.
"""

from __future__ import annotations

import torch
from torch import nn


def resolve_device(name: str) -> torch.device:
    """`auto` -> the first CUDA GPU if there is one, else the CPU; `cpu` / `cuda` as given."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("the config asks for device 'cuda', but torch sees no CUDA GPU")
        # Fixed input size: let cuDNN pick the fastest convolution algorithms once. TF32 matmuls
        # and convolutions cost nothing measurable in accuracy for a classifier of this size.
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return torch.device(name)


def module_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device
