"""The ordinal teacher's pretext task: recover the age order of k shuffled faces.

Each sample is k faces with pairwise-distinct ages at least `min_gap` years apart, in random
order. The target is the permutation that sorts them, as a class among k!/2 (a permutation and
its reverse are merged: "ascending" and "descending" express the same ordinal relation).
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from agelens.manifest import Normalisation
from training.augment import augment, normalise, photo_conditions, to_float
from training.checkpoint import load_resume_state, save_resume_state
from training.config import OrdinalConfig
from training.dataset import Part
from training.device import module_device
from training.models import OrdinalTeacher, permutation_classes

log = logging.getLogger(__name__)


def perm_lookup(k: int) -> dict[tuple[int, ...], int]:
    table: dict[tuple[int, ...], int] = {}
    for cls, p in enumerate(permutation_classes(k)):
        table[p] = cls
        table[tuple(reversed(p))] = cls
    return table


def sample_sequences(
    ages: np.ndarray, k: int, min_gap: int, count: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """`count` index tuples (count, k) with sorted ages at least min_gap apart, and their classes."""
    lookup = perm_lookup(k)
    out = np.empty((0, k), dtype=np.int64)
    n = len(ages)
    # Feasibility: greedily pick ages at least min_gap apart; without k of them no sequence exists.
    picked: list[int] = []
    for a in np.unique(ages):
        if not picked or a - picked[-1] >= max(1, min_gap):
            picked.append(int(a))
    if len(picked) < k:
        raise ValueError(
            f"cannot sample {k} ages {min_gap}+ years apart from ages {sorted(set(ages.tolist()))[:20]}"
        )
    for _ in range(10_000):
        if len(out) >= count:
            break
        cand = rng.integers(0, n, size=(count * 4, k))
        a = np.sort(ages[cand], axis=1)
        ok = (np.diff(a, axis=1) >= max(1, min_gap)).all(axis=1)
        out = np.concatenate([out, cand[ok]])
    else:
        raise RuntimeError("sequence sampling did not converge")
    out = out[:count]
    order = np.argsort(ages[out], axis=1, kind="stable")
    labels = np.array([lookup[tuple(int(v) for v in row)] for row in order], dtype=np.int64)
    return out, labels


def build_ordinal_teacher(cfg: OrdinalConfig) -> OrdinalTeacher:
    return OrdinalTeacher(cfg.k, cfg.embed_dim, cfg.widths, cfg.blocks, cfg.stem)


@torch.no_grad()
def order_accuracy(
    model: OrdinalTeacher, part: Part, cfg: OrdinalConfig, norm: Normalisation, seed: int
) -> dict[str, float]:
    model.eval()
    dev = module_device(model)
    rng = np.random.default_rng(seed)
    seqs, labels = sample_sequences(part.ages.numpy(), cfg.k, cfg.min_gap, cfg.eval_sequences, rng)
    correct = 0
    for i in range(0, len(seqs), 128):
        idx = torch.from_numpy(seqs[i : i + 128])
        x = normalise(to_float(part.crops[idx.flatten()].to(dev)), norm)
        x = x.view(len(idx), cfg.k, *x.shape[1:])
        correct += int((model(x).argmax(1).cpu().numpy() == labels[i : i + 128]).sum())
    return {"accuracy": correct / len(seqs), "chance": 1.0 / len(model.perms), "sequences": len(seqs)}


def _batch(
    part: Part,
    idx: Tensor,
    k: int,
    norm: Normalisation,
    gen: torch.Generator,
    device: torch.device,
    photo: float = 0.0,
) -> Tensor:
    x = augment(to_float(part.crops[idx.flatten()].to(device, non_blocking=True)), gen)[0]
    if photo > 0:
        x = photo_conditions(x, gen, photo)
    x = normalise(x, norm)
    return x.view(len(idx), k, *x.shape[1:])


def warm_encoder(model: OrdinalTeacher, cfg: OrdinalConfig, crops: Tensor, norm: Normalisation) -> None:
    """Copy a registered student's backbone into the teacher's encoder (`init_encoder_from`)."""
    from training.config import ClassifierConfig
    from training.onnx_import import student_from_onnx

    assert cfg.init_encoder_from is not None
    student = student_from_onnx(
        cfg.init_encoder_from,
        ClassifierConfig(widths=cfg.widths, blocks=cfg.blocks, stem=cfg.stem),
        crops,
        norm,
    )
    model.encoder.load_state_dict(student.backbone.state_dict())
    log.info("ordinal teacher: encoder starts from %s", cfg.init_encoder_from)


def train_ordinal_teacher(
    cfg: OrdinalConfig,
    train: Part,
    val: Part,
    norm: Normalisation,
    out_dir: Path,
    device: torch.device | None = None,
) -> OrdinalTeacher:
    """Train, keep the epoch with the best val order accuracy, return it (on the CPU)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    device = device or torch.device("cpu")
    torch.manual_seed(cfg.seed)
    model = build_ordinal_teacher(cfg)
    if cfg.init_encoder_from is not None:
        warm_encoder(model, cfg, train.crops, norm)
    model = model.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = max(1, cfg.sequences_per_epoch // cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    warm = max(1, steps_per_epoch // 2)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            (s + 1) / warm if s < warm else 0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, total - warm)))
        ),
    )
    gen = torch.Generator().manual_seed(cfg.seed)
    ages = train.ages.numpy()
    start, best = 0, -1.0
    last_path, best_path = out_dir / "last.pt", out_dir / "best.pt"
    if last_path.exists():
        st = load_resume_state(last_path, model, opt, sched, gen)
        start, best = st["epoch"] + 1, st["best"]
        log.info("ordinal teacher: resuming at epoch %d", start)
    for epoch in range(start, cfg.epochs):
        model.train()
        t0 = time.time()
        rng = np.random.default_rng(cfg.seed * 1000 + epoch)
        seqs, labels = sample_sequences(ages, cfg.k, cfg.min_gap, steps_per_epoch * cfg.batch_size, rng)
        # Accumulated on the device, read once per epoch (no host-device sync per step).
        tot_loss = torch.zeros((), device=device)
        correct = torch.zeros((), dtype=torch.int64, device=device)
        for step in range(steps_per_epoch):
            sl = slice(step * cfg.batch_size, (step + 1) * cfg.batch_size)
            x = _batch(train, torch.from_numpy(seqs[sl]), cfg.k, norm, gen, device, cfg.photo)
            y = torch.from_numpy(labels[sl]).to(device, non_blocking=True)
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            tot_loss = tot_loss + loss.detach()
            correct = correct + (logits.argmax(1) == y).sum()
        val_acc = order_accuracy(model, val, cfg, norm, seed=12345)
        if val_acc["accuracy"] > best:
            best = val_acc["accuracy"]
            torch.save(
                {"model": model.state_dict(), "config": cfg.model_dump(), "epoch": epoch, "val": val_acc},
                best_path,
            )
        rec = {
            "epoch": epoch,
            "loss": round(float(tot_loss) / steps_per_epoch, 4),
            "train_acc": round(int(correct) / (steps_per_epoch * cfg.batch_size), 4),
            "val_acc": round(val_acc["accuracy"], 4),
            "seconds": round(time.time() - t0, 1),
        }
        with open(out_dir / "history.jsonl", "a") as fh:
            fh.write(json.dumps(rec) + "\n")
        log.info(
            "ordinal teacher: epoch %d/%d loss %.3f train acc %.3f val order acc %.3f (chance %.3f) %.0fs",
            epoch + 1,
            cfg.epochs,
            rec["loss"],
            rec["train_acc"],
            rec["val_acc"],
            val_acc["chance"],
            rec["seconds"],
        )
        save_resume_state(last_path, model, opt, sched, gen, epoch, best)
    return load_ordinal_teacher(best_path)


def load_ordinal_teacher(path: Path) -> OrdinalTeacher:
    st = torch.load(path, map_location="cpu", weights_only=False)
    model = build_ordinal_teacher(OrdinalConfig.model_validate(st["config"]))
    model.load_state_dict(st["model"])
    model.eval()
    return model
