"""Training loop for an age classifier: the student alone, the dark-knowledge teacher, or the
student distilled from one or both teachers (the loss terms are switched by their weights).

    loss = label_loss(student, y)
         + alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T))
         + beta  * hint(adapter(student_feature), ordinal_teacher_embedding)

Checkpoints are written every epoch (`last.pt`) and on every val improvement (`best.pt`); a run
that finds `last.pt` resumes from it, so an interrupted pipeline loses at most one epoch.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn, update_bn

from agelens.ages import expected_age, softmax
from agelens.manifest import Normalisation
from training.augment import augment, normalise, normalised_batches, photo_conditions, to_float
from training.checkpoint import load_resume_state, save_resume_state
from training.config import ClassifierConfig, DistillConfig
from training.dataset import NUM_CLASSES, CachedData
from training.device import module_device
from training.evaluate import predict_logits
from training.models import AgeClassifier, OrdinalTeacher

log = logging.getLogger(__name__)
AGES = torch.arange(NUM_CLASSES, dtype=torch.float32)


@dataclass
class TeacherTargets:
    """Teacher outputs computed once per cached train crop and its mirror image: (N, 2, D).

    Offline targets (as in "fast knowledge distillation") make a distillation epoch cost the same
    as a plain one on this CPU; the student's small geometric and colour jitter leaves the face,
    and so the teacher's answer about it, the same. Index 1 is the horizontally flipped crop.
    """

    dk_logits: Tensor | None = None
    ordinal_embed: Tensor | None = None


@torch.no_grad()
def compute_teacher_targets(
    crops: Tensor,
    norm: Normalisation,
    dk: AgeClassifier | None,
    ordinal: OrdinalTeacher | None,
    batch: int = 512,
) -> TeacherTargets:
    outs: dict[str, list[Tensor]] = {"dk": [], "ord": []}
    for t in (dk, ordinal):
        if t is not None:
            t.eval()
    # Computed on the teachers' device, kept in host memory next to the crops they describe.
    teacher = dk if dk is not None else ordinal
    dev = module_device(teacher) if teacher is not None else torch.device("cpu")
    for x in normalised_batches(crops, norm, dev, batch):
        pair = torch.stack([x, x.flip(3)], 1).flatten(0, 1).contiguous(memory_format=torch.channels_last)
        if dk is not None:
            outs["dk"].append(dk(pair).view(len(x), 2, -1).cpu())
        if ordinal is not None:
            outs["ord"].append(ordinal.embed_faces(pair).view(len(x), 2, -1).cpu())
    return TeacherTargets(
        torch.cat(outs["dk"]) if outs["dk"] else None, torch.cat(outs["ord"]) if outs["ord"] else None
    )


@dataclass
class OnlineTeachers:
    """Teachers run on the student's own batch at every step (born-again `online`).

    Offline targets describe only the fixed crop and its mirror; a teacher run on the batch the
    student sees (same jitter, same mixup) gives a target for every new image, which is what
    lets a long schedule keep learning from it ("consistent teaching", Beyer et al., 2022). The
    dark knowledge of several members is the log of their mean probability (each member's
    uncertainty kept, as in `ensemble_teacher_logits`).
    """

    # A member that learnt another crop comes wrapped in augment.ZoomedView, so it answers on the
    # batch zoomed to its own crop: an ensemble can look at each face two ways.
    members: list[nn.Module]
    ordinal: OrdinalTeacher | None = None
    # Per member, the datasets (indices into CachedData.datasets) whose faces it teaches; None:
    # every face. A face's target is the mean over the members that teach its dataset.
    routes: list[list[int] | None] | None = None

    def __post_init__(self) -> None:
        for m in [*self.members, *([self.ordinal] if self.ordinal is not None else [])]:
            m.eval()

    @property
    def embed_dim(self) -> int | None:
        return self.ordinal.embed_dim if self.ordinal is not None else None

    @torch.no_grad()
    def __call__(self, x: Tensor, source: Tensor | None = None) -> tuple[Tensor | None, Tensor | None]:
        logits = None
        if self.members:
            probs = torch.stack([m(x).softmax(-1) for m in self.members])  # (M, N, C)
            if self.routes is not None and source is not None:
                src = source.to(x.device)
                w = torch.stack(
                    [
                        torch.ones_like(src, dtype=x.dtype)
                        if r is None
                        else torch.isin(src, torch.tensor(r, device=x.device)).to(x.dtype)
                        for r in self.routes
                    ]
                )  # (M, N)
                probs = (probs * w[..., None]).sum(0) / w.sum(0).clamp_min(1e-6)[:, None]
            else:
                probs = probs.mean(0)
            logits = probs.clamp_min(1e-12).log()
        embed = self.ordinal.embed_faces(x) if self.ordinal is not None else None
        return logits, embed


def mixed_label_loss(
    logits: Tensor, ages: Tensor, mix: tuple[float, Tensor] | None, sigma: float, l1_weight: float
) -> Tensor:
    """The label loss of a batch, mixed with the same weight as its images (mixup)."""
    if mix is None:
        return label_loss(logits, ages, sigma, l1_weight)
    lam, partner = mix
    return lam * label_loss(logits, ages, sigma, l1_weight) + (1 - lam) * label_loss(
        logits, ages[partner], sigma, l1_weight
    )


def build_classifier(cfg: ClassifierConfig) -> AgeClassifier:
    return AgeClassifier(NUM_CLASSES, cfg.widths, cfg.blocks, cfg.stem, cfg.dropout)


def label_loss(logits: Tensor, ages: Tensor, sigma: float, l1_weight: float) -> Tensor:
    logp = F.log_softmax(logits, dim=1)
    if sigma > 0:
        # Gaussian label distribution (DLDL, Gao et al. 2017): neighbouring ages share credit,
        # which suits labels that are themselves estimates (UTKFace's README).
        axis = AGES.to(logits.device)
        target = torch.exp(-((axis.view(1, -1) - ages.view(-1, 1).float()) ** 2) / (2 * sigma**2))
        target = target / target.sum(1, keepdim=True)
        loss = -(target * logp).sum(1).mean()
    else:
        loss = F.nll_loss(logp, ages)
    if l1_weight > 0:
        loss = loss + l1_weight * (logp.exp() @ AGES.to(logits.device) - ages.float()).abs().mean()
    return loss


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    t = temperature
    return F.kl_div(
        F.log_softmax(student_logits / t, dim=1),
        F.log_softmax(teacher_logits / t, dim=1),
        reduction="batchmean",
        log_target=True,
    ) * (t * t)


def hint_loss(student_feat: Tensor, teacher_emb: Tensor, kind: str) -> Tensor:
    if kind == "cosine":
        return (1.0 - F.cosine_similarity(student_feat, teacher_emb, dim=1)).mean()
    return (
        F.mse_loss(F.normalize(student_feat, dim=1), F.normalize(teacher_emb, dim=1)) * student_feat.shape[1]
    )


def val_mae_by_dataset(model: nn.Module, data: CachedData, norm: Normalisation) -> dict[str, float]:
    """Val MAE of each dataset."""
    logits = predict_logits(model, data.val.crops, norm)
    err = np.abs(expected_age(softmax(logits), np.arange(NUM_CLASSES)) - data.val.ages.numpy())
    source = data.val.source.numpy()
    return {
        name: float(err[source == i].mean()) for i, name in enumerate(data.datasets) if (source == i).any()
    }


def epoch_order(data: CachedData, shares: list[float] | None, gen: torch.Generator) -> Tensor:
    """The training faces of one epoch: a permutation, or with dataset shares a draw (with
    replacement) in which each dataset takes its share and its faces are drawn alike."""
    n = len(data.train)
    if shares is None:
        return torch.randperm(n, generator=gen)
    source = data.train.source
    counts = torch.bincount(source, minlength=len(shares)).double()
    weights = torch.tensor(shares, dtype=torch.float64)[source] / counts[source]
    return torch.multinomial(weights, n, replacement=True, generator=gen)


@torch.no_grad()
def fit_adapter(
    adapter: nn.Linear,
    model: AgeClassifier,
    data: CachedData,
    norm: Normalisation,
    device: torch.device,
    targets: TeacherTargets,
    online: OnlineTeachers | None,
    n: int = 4096,
    ridge: float = 1e-3,
) -> None:
    """Set `adapter` to the ridge regression from the starting network's pooled features to the
    teacher's unit-length embeddings, over `n` unaugmented train crops (an even, seeded draw).
    Cosine is blind to scale, so unit-length targets lose nothing and keep the fit well posed."""
    from training.onnx_import import calibration_sample  # the same seeded draw the BN import uses

    model.eval()  # the training loop sets train mode again at each epoch's start
    idx = calibration_sample(torch.arange(len(data.train)), n)
    feats, embeds = [], []
    for i in range(0, len(idx), 256):
        part = idx[i : i + 256]
        x = normalise(to_float(data.train.crops[part].to(device)), norm).contiguous(
            memory_format=torch.channels_last
        )
        feats.append(model.forward_features(x)[0].double())
        if online is not None and online.ordinal is not None:
            e = online.ordinal.embed_faces(x)
        else:
            assert targets.ordinal_embed is not None
            e = targets.ordinal_embed[part, 0].to(device)
        embeds.append(torch.nn.functional.normalize(e.double(), dim=1))
    f, e = torch.cat(feats), torch.cat(embeds)
    x = torch.cat([f, torch.ones(len(f), 1, dtype=f.dtype, device=f.device)], dim=1)
    gram = x.T @ x
    # Ridge relative to the features' mean energy, so its strength does not depend on their scale.
    shrink = torch.full((x.shape[1],), ridge * float(gram.diagonal()[:-1].mean()), dtype=x.dtype)
    shrink[-1] = 0.0  # the bias is not shrunk
    w = torch.linalg.solve(gram + torch.diag(shrink.to(x.device)), x.T @ e)  # (F + 1, E)
    adapter.weight.copy_(w[:-1].T.float())
    adapter.bias.copy_(w[-1].float())
    cos = torch.nn.functional.cosine_similarity(x @ w, e, dim=1).mean()
    log.info("hint adapter fitted on %d crops: cosine %.3f", len(idx), float(cos))


def train_classifier(
    cfg: ClassifierConfig,
    data: CachedData,
    norm: Normalisation,
    out_dir: Path,
    targets: TeacherTargets | None = None,
    distill: DistillConfig | None = None,
    device: torch.device | None = None,
    online: OnlineTeachers | None = None,
    shares: list[float] | None = None,
) -> AgeClassifier:
    """Train, keep the epoch with the best val MAE, and return that model (loaded from best.pt,
    on the CPU: evaluation and export run there). Teachers give offline `targets` (per cached
    crop and mirror) or run `online` on every batch; not both."""
    out_dir.mkdir(parents=True, exist_ok=True)
    targets = targets or TeacherTargets()
    distill = distill or DistillConfig(alpha=0.0, beta=0.0)
    offline = targets.dk_logits is not None or targets.ordinal_embed is not None
    if online is not None and offline:
        raise ValueError("teachers are either offline targets or online, not both")
    if cfg.mixup > 0 and offline:
        # An offline target describes the unmixed crop; it would be wrong for a mixed image.
        raise ValueError("mixup needs online teachers (or none): offline targets describe unmixed crops")
    use_kd = distill.alpha > 0 and (targets.dk_logits is not None or bool(online and online.members))
    use_hint = distill.beta > 0 and (targets.ordinal_embed is not None or bool(online and online.ordinal))
    torch.manual_seed(cfg.seed)
    device = device or torch.device("cpu")
    model = build_classifier(cfg)
    if cfg.init_from is not None and cfg.init_from.suffix == ".onnx":
        # A shipped network: BN statistics re-derived on the crops this run trains on. Imported
        # here because onnx_import builds the network with this module's build_classifier.
        from training.onnx_import import student_from_onnx

        model = student_from_onnx(cfg.init_from, cfg, data.train.crops, norm)
        log.info("%s: starting from the weights of %s", out_dir.name, cfg.init_from)
    elif cfg.init_from is not None:
        model.load_state_dict(torch.load(cfg.init_from, map_location="cpu", weights_only=False)["model"])
        log.info("%s: starting from the weights of %s", out_dir.name, cfg.init_from)
    model = model.to(device, memory_format=torch.channels_last)
    adapter: nn.Module | None = None
    params = list(model.parameters())
    if use_hint:
        embed_dim = targets.ordinal_embed.shape[-1] if targets.ordinal_embed is not None else online.embed_dim  # type: ignore[union-attr]
        assert embed_dim is not None
        # Training-only projection from the student's pooled feature into the teacher's
        # embedding space; it is not part of the exported student.
        adapter = nn.Linear(model.feature_dim, embed_dim).to(device)
        # A resumed run reloads its adapter from last.pt below.
        if distill.hint_adapter_init == "fit" and not (out_dir / "last.pt").exists():
            fit_adapter(adapter, model, data, norm, device, targets, online)
        params += list(adapter.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    n = len(data.train)
    steps_per_epoch = max(1, n // cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    warm = max(1, int(cfg.warmup_epochs * steps_per_epoch))

    def lr_at(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        if cfg.swa:
            return 1.0
        return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    averaged: AveragedModel | None = None
    if cfg.ema_decay > 0:
        # BN statistics are averaged too (use_buffers), so the EMA model can be evaluated as is.
        # In the one run that used it (born-again, research/born_again) it lagged far behind the
        # raw weights early on; averaging BN statistics is the likely cause, so it is off by default.
        averaged = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True)
    elif cfg.swa:
        # Equal average of the weights; BN statistics are recomputed for it after each update.
        averaged = AveragedModel(model)
    gen = torch.Generator().manual_seed(cfg.seed)
    start_epoch, best = 0, float("inf")
    last_path, best_path = out_dir / "last.pt", out_dir / "best.pt"
    if last_path.exists():
        state = load_resume_state(last_path, model, opt, sched, gen)
        if adapter is not None and state.get("adapter"):
            adapter.load_state_dict(state["adapter"])
        if averaged is not None and state.get("averaged"):
            averaged.load_state_dict(state["averaged"])
        start_epoch, best = state["epoch"] + 1, state["best"]
        log.info("%s: resuming at epoch %d (best val MAE %.3f)", out_dir.name, start_epoch, best)

    history = out_dir / "history.jsonl"
    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        if adapter is not None:
            adapter.train()
        t0 = time.time()
        perm = epoch_order(data, shares, gen)
        # Summed on the device and read once per epoch: a float() per step would make the
        # host wait for the GPU after every step.
        zero = torch.zeros((), device=device)
        sums = {"loss": zero, "label": zero, "kd": zero, "hint": zero}
        for step in range(steps_per_epoch):
            idx = perm[step * cfg.batch_size : (step + 1) * cfg.batch_size]
            xa, flipped = augment(to_float(data.train.crops[idx].to(device, non_blocking=True)), gen)
            if cfg.photo > 0:
                xa = photo_conditions(xa, gen, cfg.photo)
            x = normalise(xa, norm).contiguous(memory_format=torch.channels_last)
            y = data.train.ages[idx].to(device, non_blocking=True)
            mix: tuple[float, Tensor] | None = None
            # Drawn only when mixup is on, so runs without it keep their random stream.
            if cfg.mixup > 0 and float(torch.rand(1, generator=gen)) < cfg.mixup:
                lam = float(torch.rand(1, generator=gen))
                partner = torch.randperm(len(idx), generator=gen).to(device)
                x = lam * x + (1 - lam) * x[partner]
                mix = (lam, partner)
            feat, logits = model.forward_features(x)
            l_label = mixed_label_loss(logits, y, mix, cfg.label_sigma, cfg.l1_weight)
            loss = l_label
            view = flipped.long()
            t_logits, t_emb = (
                online(x, data.train.source[idx])
                if online is not None and (use_kd or use_hint)
                else (None, None)
            )
            if use_kd:
                if t_logits is None:
                    assert targets.dk_logits is not None
                    t_logits = targets.dk_logits[idx, view].to(device)
                l_kd = kd_loss(logits, t_logits, distill.temperature)
                loss = loss + distill.alpha * l_kd
                sums["kd"] = sums["kd"] + l_kd.detach()
            if use_hint:
                assert adapter is not None
                if t_emb is None:
                    assert targets.ordinal_embed is not None
                    t_emb = targets.ordinal_embed[idx, view].to(device)
                l_hint = hint_loss(adapter(feat), t_emb, distill.hint_loss)
                loss = loss + distill.beta * l_hint
                sums["hint"] = sums["hint"] + l_hint.detach()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if averaged is not None and not cfg.swa:
                averaged.update_parameters(model)
            sums["loss"] = sums["loss"] + loss.detach()
            sums["label"] = sums["label"] + l_label.detach()
        if averaged is not None and cfg.swa:
            averaged.update_parameters(model)
            # The averaged weights need their own BN statistics: those of the running model
            # describe other weights. Recomputed on the unaugmented training crops.
            update_bn(normalised_batches(data.train.crops, norm, device, 512), averaged)
        # With EMA or SWA on, the averaged weights are what gets validated, kept and exported.
        kept: nn.Module = averaged.module if averaged is not None else model
        by_dataset = val_mae_by_dataset(kept, data, norm)
        # The model-selection score: the mean of the datasets' val MAE, so that a mixture is
        # chosen for every population it serves, not for the largest one.
        mae = float(np.mean(list(by_dataset.values())))
        improved = mae < best
        if improved:
            best = mae
            torch.save(
                {"model": kept.state_dict(), "config": cfg.model_dump(), "epoch": epoch, "val_mae": mae},
                best_path,
            )
        rec = {k: round(float(v) / steps_per_epoch, 4) for k, v in sums.items()}
        rec.update(
            epoch=epoch,
            val_mae=round(mae, 4),
            **(
                {"val_mae_by_dataset": {k: round(v, 4) for k, v in by_dataset.items()}}
                if len(by_dataset) > 1
                else {}
            ),
            seconds=round(time.time() - t0, 1),
            lr=opt.param_groups[0]["lr"],
        )
        with open(history, "a") as fh:
            fh.write(json.dumps(rec) + "\n")
        log.info(
            "%s: epoch %d/%d loss %.3f val MAE %.3f%s (%.0fs)",
            out_dir.name,
            epoch + 1,
            cfg.epochs,
            rec["loss"],
            mae,
            " *" if improved else "",
            rec["seconds"],
        )
        save_resume_state(
            last_path,
            model,
            opt,
            sched,
            gen,
            epoch,
            best,
            adapter=adapter.state_dict() if adapter is not None else None,
            averaged=averaged.state_dict() if averaged is not None else None,
        )
    final = build_classifier(cfg)
    final.load_state_dict(torch.load(best_path, map_location="cpu", weights_only=False)["model"])
    final.eval()
    return final


def read_history(path: Path) -> list[dict]:
    """The per-epoch records `train_classifier` appends to history.jsonl."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def load_classifier(path: Path) -> AgeClassifier:
    state = torch.load(path, map_location="cpu", weights_only=False)
    model = build_classifier(ClassifierConfig.model_validate(state["config"]))
    model.load_state_dict(state["model"])
    model.eval()
    return model
