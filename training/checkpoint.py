"""Resumable training state: everything needed to continue a run exactly where it stopped."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn


def save_resume_state(
    path: Path,
    model: nn.Module,
    opt: torch.optim.Optimizer,
    sched: torch.optim.lr_scheduler.LRScheduler,
    gen: torch.Generator,
    epoch: int,
    best: float,
    **extra: Any,
) -> None:
    state = {
        "model": model.state_dict(),
        "opt": opt.state_dict(),
        "sched": sched.state_dict(),
        "gen": gen.get_state(),
        "epoch": epoch,
        "best": best,
        **extra,
    }
    # Write then rename: a run killed mid-save keeps its previous checkpoint intact.
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def load_resume_state(
    path: Path,
    model: nn.Module,
    opt: torch.optim.Optimizer,
    sched: torch.optim.lr_scheduler.LRScheduler,
    gen: torch.Generator,
) -> dict[str, Any]:
    """Restore model, optimiser, schedule and RNG in place; returns the whole state dict."""
    # Optimiser state is moved onto the parameters' device by load_state_dict, so a run can
    # resume on another device than the one that saved it.
    state = torch.load(path, map_location="cpu", weights_only=False)
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["opt"])
    sched.load_state_dict(state["sched"])
    gen.set_state(state["gen"])
    return state
