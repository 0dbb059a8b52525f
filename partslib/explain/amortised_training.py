"""Training the amortised contribution head (:mod:`partslib.explain.amortised`).

1. :func:`game_targets` -- exact part Shapley values (and single-removal effects) of every
   class for training images, from a removal game: SynthParts' exact re-render on the
   ground-truth masks (``operator=dataset.rerender()``, ``keys`` = dataset indices), or any
   imputer on the PDM's maps for data that cannot be re-rendered
   (:class:`~partslib.removal.BackgroundFill`, whose empty coalition is flat grey like the
   re-render's).
2. :func:`fit_head` -- fits a :class:`~partslib.explain.amortised.ContributionHead` to them on
   training images only; the epoch is chosen on validation images by the agreement (mean
   per-image Spearman over present labels, true class) of the head with the validation
   images' single-removal effects of the same game.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor

from partslib.config import HeadConfig
from partslib.constants import INFERENCE_BATCH
from partslib.explain.amortised import ContributionHead, head_inputs
from partslib.explain.core import PartExplainer, fused_features
from partslib.explain.shapley import part_shapley, removal_game, single_effects
from partslib.models import ContractClassifier, check_images

__all__ = ["HEAD_CHECKPOINT", "HeadData", "baseline_logits", "fit_head", "game_targets",
           "head_data", "load_head", "rank_agreement", "train_head"]


@torch.no_grad()
def baseline_logits(classifier: ContractClassifier, size: tuple[int, ...],
                    grey: float = 128 / 255) -> Tensor:
    """``[K]`` logits of the flat ``grey`` image: the value of the empty coalition of the
    re-render game (every label removed) and of :class:`~partslib.removal.BackgroundFill`."""
    x = torch.full((1, 3, *size), float(grey))
    return classifier.eval()(x)[0].float()


@torch.no_grad()
def game_targets(classifier: ContractClassifier, images: Tensor, masks: Tensor,
                 operator: Any, num_labels: int, keys: Sequence[Any] | None = None,
                 batch_size: int = INFERENCE_BATCH, progress: bool = False, shapley: bool = True,
                 max_exact: int = 8) -> tuple[Tensor, Tensor | None]:
    """Single-removal effects ``[N, L, K]`` and (``shapley=True``) the part Shapley values
    ``[N, L, K]`` (exact up to ``max_exact`` present labels, else sampled) of the game
    "``images`` with labels of ``masks`` removed by ``operator``" (removed images are scored
    through a BatchNorm-folded copy of the classifier; same logits up to float rounding)."""
    images = check_images(images)
    masks = masks.long()
    present = torch.stack([(masks == p).flatten(1).any(1) for p in range(num_labels)], 1)
    feats = fused_features(classifier)
    game = removal_game(classifier, images, masks, operator, keys=keys, features=feats)
    full = torch.cat([classifier(images[i:i + batch_size])
                      for i in range(0, len(images), batch_size)])
    single = single_effects(game, present, full, batch_size=batch_size, progress=progress)
    if not shapley:
        return single, None
    sv = part_shapley(game, present, full, max_exact=max_exact, batch_size=batch_size,
                      progress=progress)
    return single, sv.values


@dataclass
class HeadData:
    """Inputs of the head for a set of images: ``inputs [N, L, D]``, ``present [N, L]``,
    ``logits [N, K]``, ``labels [N]`` (true classes)."""

    inputs: Tensor
    present: Tensor
    logits: Tensor
    labels: Tensor


@torch.no_grad()
def head_data(classifier: ContractClassifier, pdm: Any, images: Tensor, labels: Tensor,
              batch_size: int = INFERENCE_BATCH, stages: Sequence[str] = ()) -> HeadData:
    """The head's inputs from one classifier + PDM pass per batch."""
    ex = PartExplainer(classifier, pdm)
    images = check_images(images, size=ex.segmenter.input_size)
    xs, ps, ls = [], [], []
    for i in range(0, len(images), batch_size):
        ctx = ex.context(images[i:i + batch_size], None, batch_size)
        A = ctx.A.contiguous()
        x, present = head_inputs(A.float(), ctx.probs.float(), ctx.labels, classifier.fc,
                                 tuple(ctx.features[s] for s in stages))
        xs.append(x)
        ps.append(present)
        ls.append(ctx.logits.float())
    return HeadData(torch.cat(xs), torch.cat(ps), torch.cat(ls), labels.long().cpu())


def rank_agreement(pred: Tensor, target: Tensor, present: Tensor) -> float:
    """Mean per-image Spearman correlation of ``pred`` and ``target`` ``[N, L]`` over each
    image's present labels (images with fewer than 2 present labels, or constant values, are
    skipped; ties are ranked in label order)."""
    def ranks(v: Tensor) -> Tensor:
        v = torch.where(present, v.double(), torch.inf)
        r = v.argsort(dim=1, stable=True).argsort(dim=1).double()
        return torch.where(present, r, torch.nan)

    ra, rb = ranks(pred), ranks(target)
    n = present.sum(1).double()
    da = ra - ra.nansum(1, keepdim=True) / n[:, None]
    db = rb - rb.nansum(1, keepdim=True) / n[:, None]
    num = (da * db).nansum(1)
    den = ((da ** 2).nansum(1) * (db ** 2).nansum(1)).sqrt()
    def flat(v: Tensor) -> Tensor:
        w = torch.where(present, v.double(), torch.nan)
        return (w.nan_to_num(-torch.inf).amax(1) - w.nan_to_num(torch.inf).amin(1)) == 0
    ok = (n >= 2) & ~flat(pred) & ~flat(target) & (den > 0)
    return float((num[ok] / den[ok]).mean()) if bool(ok.any()) else math.nan


def fit_head(train: HeadData, targets: Tensor, val: HeadData, val_effects: Tensor,
             baseline: Tensor, *, hidden: int = 128, epochs: int = 150, lr: float = 2e-3,
             weight_decay: float = 1e-4, batch_size: int = 128, seed: int = 0,
             focus: float = 1.0, rank: float = 0.0, game: str = "",
             stages: Sequence[str] = (), weight: Tensor | None = None, progress: bool = False
             ) -> tuple[ContributionHead, pd.DataFrame]:
    """Fit a head to per-class ``targets [N, L, K]`` of the training images (MSE over present
    labels and all classes, plus ``focus`` × the error of each image's predicted class, plus
    ``rank`` × a pairwise ranking loss of that class); keep the epoch whose head agrees best
    with ``val_effects [M, L, K]`` of the validation images (true class): the mean of the
    per-image Spearman correlation and the rate at which both put the same part first.
    ``weight``: the classifier's ``fc.weight``, read by the head (:class:`ContributionHead`).
    Returns ``(head, history)``."""
    N, L, D = train.inputs.shape
    K = train.logits.shape[1]
    gen = torch.Generator().manual_seed(int(seed))
    with torch.random.fork_rng():
        torch.manual_seed(int(seed))
        head = ContributionHead(D - 1 - K - L, L, K, hidden=hidden, baseline=baseline,
                                game=game, stages=tuple(stages), weight=weight)
    flat = train.inputs[train.present]
    head.in_mean.copy_(flat.mean(0))
    head.in_std.copy_(flat.std(0).clamp_min(1e-3))
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    y = targets.float()
    scale = float(y[train.present].std().clamp_min(1e-6))
    best, best_state, rows = -math.inf, None, []
    from partslib.progress import Progress

    epoch_iter = Progress(range(epochs), desc="contribution head", unit="epoch",
                          disable=not progress)
    for epoch in epoch_iter:
        head.train()
        perm = torch.randperm(N, generator=gen)
        total = 0.0
        for s in range(0, N, batch_size):
            b = perm[s:s + batch_size]
            pred = head(train.inputs[b], train.present[b], train.logits[b])
            loss = _head_loss(pred, y[b], train.present[b], train.logits[b], scale=scale,
                              focus=focus, rank=rank)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(b)
        sched.step()
        record = _val_record(head, val, val_effects)
        score = record["val_score"]
        rows.append({"epoch": epoch + 1, "train_loss": total / N, **record})
        if score > best:
            best, best_state = score, copy.deepcopy(head.state_dict())
    if best_state is not None:
        head.load_state_dict(best_state)
    head.eval()
    for p in head.parameters():
        p.requires_grad_(False)
    return head, pd.DataFrame(rows)


def _head_loss(pred: Tensor, y: Tensor, present: Tensor, logits: Tensor, *, scale: float,
               focus: float, rank: float) -> Tensor:
    """:func:`fit_head`'s loss of one batch: MSE over present labels and all classes (in
    units of ``scale``), ``focus`` × that of each image's predicted class, normalised by the
    present labels; plus ``rank`` × the pairwise ranking loss of that class."""
    m = present[..., None].float()
    err = ((pred - y) / scale) ** 2 * m  # [b, L, K]
    top = logits.argmax(1)
    focused = err[torch.arange(len(pred)), :, top].sum()
    loss = (err.sum() / pred.shape[-1] + focus * focused) / m.sum()
    if rank > 0:
        loss = loss + rank * _pair_loss(pred, y, present, top)
    return loss


@torch.no_grad()
def _val_record(head: torch.nn.Module, val: HeadData, val_effects: Tensor) -> dict[str, float]:
    """Agreement of ``head`` with the validation images' single-removal effects (true class):
    mean per-image Spearman, top-part agreement, and their mean (the epoch's score)."""
    head.eval()
    r_val = torch.arange(len(val.labels))
    pv = head(val.inputs, val.present, val.logits)[r_val, :, val.labels]
    ve = val_effects[r_val, :, val.labels].float()
    rho = rank_agreement(pv, ve, val.present)
    top = float((_top(pv, val.present) == _top(ve, val.present)).double().mean())
    return {"val_spearman": rho, "val_top_part": top, "val_score": (rho + top) / 2}


HEAD_CHECKPOINT = "checkpoints/head.pt"
TARGETS = ("occlusion", "shapley")


def _fingerprint(*modules: torch.nn.Module) -> str:
    """A short hash of the modules' parameters and buffers (which models a head explains)."""
    import hashlib

    h = hashlib.sha256()
    for m in modules:
        for name, t in m.state_dict().items():
            h.update(name.encode())
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _split_game(classifier: ContractClassifier, pdm: Any, data: Any, n: int, num_labels: int,
                operator: Any, shapley: bool, progress: bool
                ) -> tuple[Tensor, Tensor, Tensor, Tensor | None, float]:
    """Images, labels and the game values of the first ``n`` items of a split: re-render on
    its ground-truth masks when it can (SynthParts), else ``operator`` on the PDM's maps; and
    how far the empty coalition of its first 16 images is from the flat grey image's logits
    (0 up to float rounding: the head's bias is that image's score)."""
    images, masks, labels = _arrays(data)
    images, masks, labels = check_images(images[:n]), masks[:n].long(), labels[:n]
    keys: list[int] | None = None
    if operator is None and hasattr(data, "rerender"):
        op, maps, keys = data.rerender(), masks, list(range(len(images)))
    else:
        from partslib.removal import BackgroundFill

        ex = PartExplainer(classifier, pdm)
        maps = torch.cat([ex.context(images[i:i + INFERENCE_BATCH], None).labels
                          for i in range(0, len(images), INFERENCE_BATCH)])
        op = operator or BackgroundFill()
    single, values = game_targets(classifier, images, maps, op, num_labels, keys=keys,
                                  progress=progress, shapley=shapley)
    m = min(16, len(images))
    with torch.no_grad():
        drop = torch.ones(m, num_labels, dtype=torch.bool)
        empty = removal_game(classifier, images, maps, op, keys=keys)(torch.arange(m), drop)
        gap = float((empty.float() - baseline_logits(classifier, tuple(images.shape[-2:])))
                    .abs().max()) if m else 0.0
    return images, labels, single, values, gap


def _arrays(data: Any) -> tuple[Tensor, Tensor, Tensor]:
    """``(images, masks, labels)`` of a split: a dataset with ``tensors()`` (SynthParts), a
    :class:`~partslib.data.split.Split` (real photos), or the three tensors themselves."""
    if hasattr(data, "tensors"):
        return data.tensors()
    if all(hasattr(data, a) for a in ("images", "masks", "labels")):
        return data.images, data.masks, data.labels
    if isinstance(data, (tuple, list)) and len(data) == 3:
        return data[0], data[1], data[2]
    raise TypeError(f"a split must be a SynthParts dataset, a Split or a tuple (images, masks, "
                    f"labels), got {type(data).__name__}")


def train_head(classifier: ContractClassifier, pdm: Any, train: Any, val: Any, *,
               n_train: int = HeadConfig.n_train, n_val: int = HeadConfig.n_val,
               target: str = HeadConfig.target, hidden: int = 128,
               epochs: int = HeadConfig.epochs, lr: float = 2e-3, focus: float = 3.0,
               rank: float = 1.0, stages: Sequence[str] = ("layer2",), seed: int = 0,
               operator: Any = None, checkpoint: str | None = None, resume: bool = True,
               progress: bool = False) -> tuple[ContributionHead, dict[str, Any]]:
    """Train the amortised rule's head for ``classifier`` and ``pdm`` on the first ``n_train``
    training items; the epoch is chosen on the first ``n_val`` validation items.

    A split is a SynthParts dataset, a :class:`~partslib.data.split.Split` or a tuple
    ``(images, masks, labels)`` (masks are not read by an imputer game). The game is
    SynthParts' exact re-render on ground-truth masks when the splits can re-render, else
    ``operator`` (default
    :class:`~partslib.removal.BackgroundFill`) on the PDM's maps. ``target``: ``"occlusion"``
    (single-removal effects; the head's outputs are then shifted to be complete) or
    ``"shapley"`` (exact part Shapley values). A checkpoint written with the same settings and
    models is loaded instead of training again (``resume=False``: never; the new head
    replaces it), one with other settings is moved aside. Returns ``(head, info)`` (info:
    settings, history, time).
    """
    import time

    from partslib.io import jsonable
    from partslib.training import archive_if_stale, load_checkpoint, save_checkpoint

    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
    L = int(pdm.num_labels)
    game = "rerender" if operator is None and hasattr(train, "rerender") else \
        getattr(operator, "name", "background_fill")
    n_tr, n_va = len(_arrays(train)[2]), len(_arrays(val)[2])
    config = {"n_train": int(min(n_train, n_tr)), "n_val": int(min(n_val, n_va)),
              "target": target, "hidden": hidden, "epochs": epochs, "lr": lr, "focus": focus,
              "rank": rank, "stages": [s for s in stages if s in classifier.stage_names],
              "seed": seed, "game": game, "design": "feature-delta x fc.weight",
              "models": _fingerprint(classifier, pdm),
              "train": _data_key(train), "val": _data_key(val)}
    if checkpoint is not None and resume and Path(checkpoint).exists():
        archive_if_stale(checkpoint, "head", config)
    if checkpoint is not None and resume and Path(checkpoint).exists():
        ckpt = load_checkpoint(checkpoint, kind="head")
        head = ContributionHead(**ckpt["head"])
        head.load_state_dict(ckpt["state_dict"])
        return _frozen(head), {**ckpt["info"], "loaded": str(checkpoint)}
    t0 = time.perf_counter()
    x_tr, y_tr, single_tr, shap_tr, gap = _split_game(
        classifier, pdm, train, config["n_train"], L, operator, target == "shapley", progress)
    x_va, y_va, single_va, _, _ = _split_game(classifier, pdm, val, config["n_val"], L,
                                              operator, False, progress)
    t_game = time.perf_counter() - t0
    base = baseline_logits(classifier, tuple(x_tr.shape[-2:]))
    st = tuple(config["stages"])
    hd_tr = head_data(classifier, pdm, x_tr, y_tr, stages=st)
    hd_va = head_data(classifier, pdm, x_va, y_va, stages=st)
    targets = single_tr if shap_tr is None else shap_tr
    head, history = fit_head(hd_tr, targets, hd_va, single_va, base, hidden=hidden,
                             epochs=epochs, lr=lr, focus=focus, rank=rank, seed=seed,
                             game=game, stages=st, weight=classifier.fc.weight.detach(),
                             progress=progress)
    best = history.loc[history["val_score"].idxmax()]
    info = {"config": config, "best_epoch": int(best["epoch"]),
            "val_spearman": float(best["val_spearman"]),
            "val_top_part": float(best["val_top_part"]), "game_seconds": t_game,
            "baseline_gap_max": gap,
            "fit_seconds": time.perf_counter() - t0 - t_game,
            "history": jsonable(history.to_dict("list")), "parameters": sum(
                p.numel() for p in head.parameters())}
    info = jsonable(info)
    if checkpoint is not None:
        save_checkpoint(checkpoint, state_dict=head.state_dict(), config=config, kind="head",
                        head=head.config(), info=info)
    return head, info


def _top(v: Tensor, present: Tensor) -> Tensor:
    """The present label with the largest value, per row."""
    return torch.where(present, v, -torch.inf).argmax(1)


def _pair_loss(pred: Tensor, target: Tensor, present: Tensor, cls: Tensor) -> Tensor:
    """Pairwise logistic ranking loss of class ``cls`` over present label pairs: the order of
    every pair, as Spearman's correlation counts it."""
    r = torch.arange(len(cls))
    p, t = pred[r, :, cls], target[r, :, cls]
    d_t = t[:, :, None] - t[:, None, :]
    d_p = p[:, :, None] - p[:, None, :]
    pair = present[:, :, None] & present[:, None, :] & (d_t > 0)
    scale = t.abs().amax(1).clamp_min(1e-3)[:, None, None]
    return (F.softplus(-d_p / scale * 4) * pair).sum() / pair.sum().clamp_min(1)


def _data_key(data: Any) -> str:
    """Which data a split is (SynthParts: generator fingerprint, seed and size; tensors: a
    hash of their bytes)."""
    cfg = getattr(data, "cfg", None)
    if cfg is not None and hasattr(cfg, "fingerprint"):
        return f"{cfg.fingerprint()}-{getattr(data, 'seed', '')}-{len(data)}"
    import hashlib

    h = hashlib.sha256()
    for t in _arrays(data):
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _frozen(head: ContributionHead) -> ContributionHead:
    head.eval()
    for p in head.parameters():
        p.requires_grad_(False)
    return head


def load_head(results_dir: str, checkpoint: str = "") -> ContributionHead:
    """The contribution head trained by :func:`train_head` in ``results_dir`` (checkpoint
    ``results_dir/<checkpoint>``, default ``checkpoints/head.pt``), in eval mode."""
    from partslib.training import load_checkpoint

    path = Path(results_dir) / (checkpoint or HEAD_CHECKPOINT)
    if not path.exists():
        raise FileNotFoundError(f"no contribution head at {path}: run the PDM stage first "
                                f"(python -m partslib.runner --only 03_pdm ...)")
    ckpt = load_checkpoint(path, kind="head")
    head = ContributionHead(**ckpt["head"])
    head.load_state_dict(ckpt["state_dict"])
    return _frozen(head)
