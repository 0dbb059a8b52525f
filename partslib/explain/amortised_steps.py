"""The amortised rule's head trained by the shared loop (:func:`partslib.training.fit`), so it
trains under ``torchrun`` like the classifier and the PDM (``python -m partslib.train head``).

:func:`head_training_set` computes what :func:`~partslib.explain.amortised_training.train_head`
computes before fitting (the removal game's targets of the training images, the head's inputs,
the validation images' single-removal effects) and returns them as a map-style dataset with
the head, its loss (:func:`~partslib.explain.amortised_training.fit_head`'s) and the
validation score its epoch is chosen by. The optimiser differs from ``fit_head``'s (the shared
loop's one-cycle AdamW over steps instead of a per-epoch cosine schedule), so a head trained
this way is not bit-identical to ``train_head``'s.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from partslib.explain.amortised import ContributionHead
from partslib.explain.amortised_training import (
    HeadData,
    _data_key,
    _fingerprint,
    _head_loss,
    _split_game,
    _val_record,
    baseline_logits,
    head_data,
)

__all__ = ["HeadTrainingSet", "head_training_set"]


@dataclass
class HeadTrainingSet:
    """A head to train, its training items ``((inputs, present, logits), (targets, present,
    logits))``, the loss and the validation score (:meth:`validate`)."""

    head: ContributionHead
    dataset: TensorDataset
    val: HeadData
    val_effects: Tensor
    scale: float
    config: dict[str, Any]
    epochs: int = 100
    focus: float = 3.0
    rank: float = 1.0
    info: dict[str, Any] = field(default_factory=dict)

    @staticmethod
    def forward(net: nn.Module, inputs: Any) -> Tensor:
        """The head's forward on a batch's ``(inputs, present, logits)``."""
        return net(*inputs)

    def loss(self, pred: Tensor, targets: Any) -> Tensor:
        """``fit_head``'s loss of a batch (``targets`` = ``(targets, present, logits)``)."""
        y, present, logits = targets
        return _head_loss(pred.float(), y, present, logits, scale=self.scale, focus=self.focus,
                          rank=self.rank)

    def validate(self, head: nn.Module) -> dict[str, float]:
        """The validation record the best epoch is chosen by (``val_score``)."""
        return _val_record(head, self.val, self.val_effects)

    def save(self, head: nn.Module, path: str | Path) -> Path:
        """Write ``head`` as :func:`~partslib.explain.amortised_training.load_head` reads it."""
        from partslib.training import save_checkpoint

        assert isinstance(head, ContributionHead)
        return save_checkpoint(path, state_dict=head.state_dict(), config=self.config,
                               kind="head", head=head.config(), info=self.info)


def _materialise(data: Any) -> Any:
    """A dataset of dict items (``image``, ``mask``, ``label``) as ``(images, masks, labels)``
    tensors; SynthParts splits, :class:`~partslib.data.split.Split` s and tuples as they are."""
    if hasattr(data, "tensors") or hasattr(data, "images") or isinstance(data, (tuple, list)):
        return data
    items = [data[i] for i in range(len(data))]
    return (torch.stack([torch.as_tensor(it["image"]) for it in items]),
            torch.stack([torch.as_tensor(it["mask"]) for it in items]),
            torch.tensor([int(it["label"]) for it in items]))


def head_training_set(classifier: Any, pdm: Any, train: Any, val: Any, *, n_train: int = 5000,
                      n_val: int = 500, hidden: int = 128, focus: float = 3.0,
                      rank: float = 1.0, stages: tuple[str, ...] = ("layer2",), seed: int = 0,
                      epochs: int = 100, operator: Any = None, progress: bool = False
                      ) -> HeadTrainingSet:
    """The head's training set for ``classifier`` and ``pdm`` (defaults: ``train_head``'s,
    occlusion targets): the game on the first ``n_train`` training items (re-render when the
    split can, else ``operator``, default background fill, on the PDM's maps), the
    single-removal effects of the first ``n_val`` validation items. Deterministic: every rank
    of a ``torchrun`` job computes the same set."""
    train, val = _materialise(train), _materialise(val)
    L = int(pdm.num_labels)
    game = "rerender" if operator is None and hasattr(train, "rerender") else \
        getattr(operator, "name", "background_fill")
    st = tuple(s for s in stages if s in classifier.stage_names)
    x_tr, y_tr, single_tr, _, gap = _split_game(classifier, pdm, train, n_train, L, operator,
                                                False, progress)
    x_va, y_va, single_va, _, _ = _split_game(classifier, pdm, val, n_val, L, operator, False,
                                              progress)
    base = baseline_logits(classifier, tuple(x_tr.shape[-2:]))
    hd_tr = head_data(classifier, pdm, x_tr, y_tr, stages=st)
    hd_va = head_data(classifier, pdm, x_va, y_va, stages=st)
    N, _, D = hd_tr.inputs.shape
    K = hd_tr.logits.shape[1]
    with torch.random.fork_rng():
        torch.manual_seed(int(seed))
        head = ContributionHead(D - 1 - K - L, L, K, hidden=hidden, baseline=base, game=game,
                                stages=st, weight=classifier.fc.weight.detach())
    flat = hd_tr.inputs[hd_tr.present]
    head.in_mean.copy_(flat.mean(0))
    head.in_std.copy_(flat.std(0).clamp_min(1e-3))
    y = single_tr.float()
    scale = float(y[hd_tr.present].std().clamp_min(1e-6))
    config = {"n_train": len(x_tr), "n_val": len(x_va), "target": "occlusion",
              "hidden": hidden, "epochs": epochs, "focus": focus, "rank": rank,
              "stages": list(st), "seed": seed, "game": game, "loop": "partslib.training.fit",
              "design": "feature-delta x fc.weight", "models": _fingerprint(classifier, pdm),
              "train": _data_key(train), "val": _data_key(val)}
    dataset = TensorDataset(hd_tr.inputs, hd_tr.present, hd_tr.logits, y)
    return HeadTrainingSet(head, _Pairs(dataset), hd_va, single_va, scale,  # type: ignore
                           config, epochs, focus, rank,
                           {"config": config, "baseline_gap_max": gap, "n_items": N})


class _Pairs(TensorDataset):
    """Items ``((inputs, present, logits), (targets, present, logits))``."""

    def __init__(self, base: TensorDataset):
        super().__init__(*base.tensors)

    def __getitem__(self, i: int) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...]]:
        x, present, logits, y = super().__getitem__(i)
        return (x, present, logits), (y, present, logits)
