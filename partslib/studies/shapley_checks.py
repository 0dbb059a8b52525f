"""Part Shapley values in the validity study: the oracle game, imputers against it, interactions.

On SynthParts every image can be re-rendered without any subset of its labels, so the exact
part Shapley values of the **re-render game on ground-truth masks** are the reference
(:func:`shapley_checks`):

* the oracle row: how well those values rank the single-part re-render effects (T2's V2 and V4
  reference) -- what a perfect Shapley-based rule could reach;
* agreement: exact Shapley values of the games a user can play on any photo -- the PDM's
  argmax parts removed by an imputer -- against the oracle's (mean per-image Spearman over the
  labels present in both);
* interactions: for classes with two decisive parts, the pairwise Shapley interaction index of
  the pair (true class) beside the two parts' values.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
import torch
from torch import Tensor

from partslib.constants import INFERENCE_BATCH
from partslib.explain.amortised_training import rank_agreement
from partslib.explain.core import PartExplainer, fused_features
from partslib.explain.shapley import ShapleyValues, part_shapley, removal_game
from partslib.models import ContractClassifier, check_images

__all__ = ["shapley_checks"]


def _top_hits(values: Tensor, present: Tensor, decisive: Tensor) -> float:
    top = torch.where(present, values, -torch.inf).argmax(1)
    return float(decisive[torch.arange(len(top)), top].double().mean())


@torch.no_grad()
def shapley_checks(classifier: ContractClassifier, pdm: Any, images: Tensor, masks: Tensor,
                   labels: Tensor, decisive: Tensor, rerender: Any, keys: Sequence[Any],
                   imputers: Mapping[str, Any], decisive_table: Tensor,
                   batch_size: int = INFERENCE_BATCH) -> tuple[dict[str, float], pd.DataFrame,
                                                   pd.DataFrame]:
    """The oracle, the imputers' agreement with it, and the decisive pairs' interactions.

    Args:
        images, masks, labels, decisive: the evaluated images (correctly classified), their
            ground-truth masks, classes and decisive parts ``[N, L]``.
        rerender: SynthParts' re-render operator; ``keys``: the images' dataset indices.
        imputers: name → removal operator played on the PDM's argmax parts.
        decisive_table: ``[K, L]`` bool decisive parts of each class.

    Returns ``(metrics, agreement, interactions)``: flat metrics (``oracle_spearman``,
    ``oracle_decisive``, ``agreement/<imputer>``, ``decisive/<imputer>`` on the PDM's parts,
    ``agreement_gt/<imputer>``, ``decisive_gt/<imputer>`` on the ground-truth masks,
    ``n_images``), one row per game, one row per class with two or more decisive parts.
    """
    images = check_images(images)
    L = decisive.shape[1]
    r = torch.arange(len(images))
    k = labels.long().cpu()
    feats = fused_features(classifier)
    full = torch.cat([classifier(images[i:i + batch_size])
                      for i in range(0, len(images), batch_size)])
    gt_present = torch.stack([(masks == p).flatten(1).any(1) for p in range(L)], 1).cpu()
    game = removal_game(classifier, images, masks.long(), rerender, keys=list(keys),
                        features=feats)
    oracle = part_shapley(game, gt_present, full, max_exact=L, batch_size=batch_size,
                          interactions=True)
    ref = oracle.values[r, :, k].float()
    single = oracle.single[r, :, k].float()
    metrics = {"n_images": float(len(images)),
               "oracle_spearman": rank_agreement(ref, single, gt_present),
               "oracle_decisive": _top_hits(ref, gt_present, decisive.cpu()),
               "oracle_efficiency_error": float(oracle.efficiency_error().max())}
    rows = [{"game": "re-render, ground-truth masks (oracle)", "imputer": "rerender",
             "spearman_vs_oracle": 1.0, "spearman_vs_single_rerender": metrics["oracle_spearman"],
             "decisive": metrics["oracle_decisive"], "passes_per_image":
             float(oracle.evaluations.double().mean())}]
    ex = PartExplainer(classifier, pdm)
    maps = torch.cat([ex.context(images[i:i + batch_size], None).labels
                      for i in range(0, len(images), batch_size)])
    pdm_present = torch.stack([(maps == p).flatten(1).any(1) for p in range(L)], 1).cpu()
    # each imputer on the PDM's parts (what a user plays on a photo), then on the ground-truth
    # masks: what is left between the latter and the oracle is the operator's, not the PDM's
    for (where, suffix, parts, present), (name, op) in itertools.product(
            (("PDM parts", "", maps, pdm_present),
             ("ground-truth masks", "_gt", masks.long(), gt_present)), imputers.items()):
        sv = part_shapley(removal_game(classifier, images, parts, op, features=feats),
                          present, full, max_exact=L, batch_size=batch_size)
        v = sv.values[r, :, k].float()
        metrics[f"agreement{suffix}/{name}"] = rank_agreement(v, ref, present & gt_present)
        metrics[f"decisive{suffix}/{name}"] = _top_hits(v, present, decisive.cpu())
        rows.append({"game": f"{name}, {where}", "imputer": getattr(op, "name", name),
                     "spearman_vs_oracle": metrics[f"agreement{suffix}/{name}"],
                     "spearman_vs_single_rerender": rank_agreement(v, single, gt_present),
                     "decisive": metrics[f"decisive{suffix}/{name}"],
                     "passes_per_image": float(sv.evaluations.double().mean())})
    return metrics, pd.DataFrame(rows), _interactions(oracle, k, decisive_table)


_PAIR_COLUMNS = ["class", "part_a", "part_b", "n_images", "phi_a", "phi_b", "interaction"]


def _interactions(oracle: ShapleyValues, k: Tensor, table: Tensor) -> pd.DataFrame:
    """Mean interaction index of each class's first two decisive parts (true class); one row
    per such class among the images (no row: the frame still has its columns)."""
    rows = []
    inter = oracle.interactions
    if inter is None:
        return pd.DataFrame(columns=_PAIR_COLUMNS)
    for c in range(table.shape[0]):
        parts = torch.nonzero(table[c]).flatten().tolist()
        sel = k == c
        if len(parts) < 2 or not bool(sel.any()):
            continue
        p, q = parts[:2]
        i_pq = inter[sel, p, q, c]
        ok = ~torch.isnan(i_pq)
        rows.append({"class": c, "part_a": p, "part_b": q, "n_images": int(ok.sum()),
                     "phi_a": float(oracle.values[sel, p, c].mean()),
                     "phi_b": float(oracle.values[sel, q, c].mean()),
                     "interaction": float(i_pq[ok].mean()) if bool(ok.any()) else math.nan})
    return pd.DataFrame(rows, columns=_PAIR_COLUMNS)
