"""The FunnyBirds protocol: target sensitivity, the threshold choice, Com / Cor / Con.

:func:`funnybirds_setup` computes what depends on the model alone (accuracy, single removals,
background independence, the target-sensitivity pairs that pass FunnyBirds' assumption) once;
:func:`funnybirds_checks` then scores one explainer against it. The threshold is chosen per
explainer to maximise ``CSDC/3 + PC/3 + DC/3 + D`` (``evaluate_explainability.py``; ties go to
the smallest threshold), and at that threshold

* Com (completeness) = ``((CSDC + PC + DC)/3 + D) / 2``
* Cor (correctness) = SD (foreground parts, as FunnyBirds; ``sd_with_background`` also counts
  the background, label 0, as a part)
* Con (contrastivity) = TS.

Usage, with a dataset that re-renders any (image, dropped parts, dropped distractors)::

    setup = funnybirds_setup(predict, idx, labels, class_table, num_parts, distractor_present)
    result = funnybirds_checks(setup, predict, importance)
    result.scores()   # {"accuracy", "CSDC", "PC", "DC", "D", "BI", "SD", "SD_bg", "TS",
                      #  "Com", "Cor", "Con", "threshold", ...}
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch

from partslib.constants import INFERENCE_BATCH
from partslib.metrics.funnybirds import (
    THRESHOLDS,
    ClassTable,
    ImportanceFn,
    PredictFn,
    SingleRemovals,
    background_independence,
    class_distance,
    controlled_synthetic_data_check,
    deletion_check,
    distractibility,
    explain_in_batches,
    important_parts,
    minimal_sufficient_part_sets,
    predict_unique,
    preservation_check,
    shared_parts,
    single_deletion,
    single_removals,
)

__all__ = [
    "FunnyBirdsResult",
    "FunnyBirdsSetup",
    "TargetSensitivityPairs",
    "choose_threshold",
    "funnybirds_checks",
    "funnybirds_setup",
    "table_by_part_ids",
    "target_sensitivity",
    "target_sensitivity_classes",
    "target_sensitivity_pairs",
]


def _check_table(class_table: ClassTable, num_parts: int) -> None:
    for k, row in enumerate(class_table):
        bad = [p for p in row if not (isinstance(p, int) and 1 <= p <= num_parts)]
        if bad:
            raise ValueError(f"class_table row {k} must be keyed by part ids 1..{num_parts}, "
                             f"got keys {bad!r}")


def target_sensitivity_classes(class_table: ClassTable, target: int, distance: int = 3
                               ) -> tuple[int, int] | None:
    """The first pair of classes (table order) at ``distance`` from ``target`` whose parts
    shared with it are disjoint and not empty; ``None`` when there is none (FunnyBirds' code
    then reuses the previous image's pair; we skip the image)."""
    row = class_table[target]
    near = [k for k, other in enumerate(class_table)
            if k != target and class_distance(row, other) == distance]
    for a, b in ((a, b) for i, a in enumerate(near) for b in near[i + 1:]):
        sa, sb = shared_parts(row, class_table[a]), shared_parts(row, class_table[b])
        if sa and sb and sa.isdisjoint(sb):
            return a, b
    return None


@dataclass(frozen=True)
class TargetSensitivityPairs:
    """Images kept for TS and their two classes.

    Attributes:
        rows: ``[R]`` positions (into the setup's images) that pass the assumption.
        class1, class2: ``[R]`` the two classes; shared1, shared2: ``[R,P+1]`` bool, the parts
            each shares with the image's class.
        no_pair: images whose class has no such pair; assumption_failed: images where removing
            a class's shared parts does not lower its logit more than removing the other's.
    """

    rows: torch.Tensor
    class1: torch.Tensor
    class2: torch.Tensor
    shared1: torch.Tensor
    shared2: torch.Tensor
    no_pair: int
    assumption_failed: int


def _mask(parts: set, num_parts: int) -> torch.Tensor:
    m = torch.zeros(num_parts + 1, dtype=torch.bool)
    m[sorted(parts)] = True
    return m


def target_sensitivity_pairs(predict: PredictFn, image_indices: torch.Tensor,
                             labels: torch.Tensor, class_table: ClassTable, num_parts: int,
                             num_distractors: int, distance: int = 3,
                             batch_size: int = INFERENCE_BATCH
                             ) -> TargetSensitivityPairs:
    """Find each image's two classes and keep the image when the model agrees that removing
    class 1's shared parts lowers class 1's logit more than removing class 2's, and vice
    versa (FunnyBirds' assumption check)."""
    _check_table(class_table, num_parts)
    pairs = [target_sensitivity_classes(class_table, k, distance) for k in range(len(class_table))]
    rows, c1, c2, s1, s2 = [], [], [], [], []
    for m, k in enumerate(labels.tolist()):
        pair = pairs[k]
        if pair is None:
            continue
        rows.append(m)
        c1.append(pair[0])
        c2.append(pair[1])
        s1.append(_mask(shared_parts(class_table[k], class_table[pair[0]]), num_parts))
        s2.append(_mask(shared_parts(class_table[k], class_table[pair[1]]), num_parts))
    empty = torch.zeros(0, num_parts + 1, dtype=torch.bool)
    r = torch.tensor(rows, dtype=torch.long)
    a, b = torch.tensor(c1, dtype=torch.long), torch.tensor(c2, dtype=torch.long)
    sh1 = torch.stack(s1) if s1 else empty
    sh2 = torch.stack(s2) if s2 else empty
    R = r.shape[0]
    if R == 0:
        return TargetSensitivityPairs(r, a, b, sh1, sh2, no_pair=labels.shape[0],
                                      assumption_failed=0)
    logits = predict_unique(predict, image_indices[r].repeat(2), torch.cat([sh1, sh2]),
                            torch.zeros(2 * R, num_distractors, dtype=torch.bool), batch_size)
    wo1, wo2 = logits[:R], logits[R:]
    i = torch.arange(R)
    ok = (wo1[i, a] < wo2[i, a]) & (wo2[i, b] < wo1[i, b])
    return TargetSensitivityPairs(r[ok], a[ok], b[ok], sh1[ok], sh2[ok],
                                  no_pair=labels.shape[0] - R, assumption_failed=int((~ok).sum()))


def target_sensitivity(importance: ImportanceFn, image_indices: torch.Tensor,
                       pairs: TargetSensitivityPairs, batch_size: int = INFERENCE_BATCH) -> float:
    """TS: per kept image, one point when class 1's shared parts get more importance for
    class 1 than for class 2, one when class 2's shared parts get more for class 2; the mean
    over all points. NaN when no image is kept."""
    R = pairs.rows.shape[0]
    if R == 0:
        return float("nan")
    idx = image_indices[pairs.rows]
    imp1 = explain_in_batches(importance, idx, pairs.class1, batch_size).parts.double()
    imp2 = explain_in_batches(importance, idx, pairs.class2, batch_size).parts.double()
    sh1, sh2 = pairs.shared1.double(), pairs.shared2.double()
    point1 = (imp1 * sh1).sum(1) > (imp2 * sh1).sum(1)
    point2 = (imp1 * sh2).sum(1) < (imp2 * sh2).sum(1)
    return float(torch.cat([point1, point2]).double().mean())


@dataclass(frozen=True)
class FunnyBirdsSetup:
    """What the checks need from the model alone, computed once by :func:`funnybirds_setup`."""

    image_indices: torch.Tensor
    labels: torch.Tensor
    num_parts: int
    distractor_present: torch.Tensor
    sufficient_sets: list[list[frozenset]]
    removals: SingleRemovals  # targets = labels
    ts_pairs: TargetSensitivityPairs
    batch_size: int = INFERENCE_BATCH

    @property
    def predicted(self) -> torch.Tensor:
        """``[M]`` predicted class of each intact image."""
        return self.removals.base.argmax(1)

    @property
    def accuracy(self) -> float:
        """Share of intact images classified as their label."""
        return float((self.predicted == self.labels).double().mean())

    @property
    def background_independence(self) -> float:
        """BI of the model (:func:`partslib.metrics.funnybirds.background_independence`)."""
        return background_independence(self.removals)


def funnybirds_setup(predict: PredictFn, image_indices: torch.Tensor, labels: torch.Tensor,
                     class_table: ClassTable, num_parts: int, distractor_present: torch.Tensor,
                     ts_distance: int = 3, batch_size: int = INFERENCE_BATCH) -> FunnyBirdsSetup:
    """Everything the seven checks need from the model, once.

    Args:
        predict: ``(image_indices [M], drop_parts [M,P+1], drop_distractors [M,D]) -> [M,K]``.
        image_indices: ``[M]`` the test images (passed back to ``predict`` / ``importance``).
        labels: ``[M]`` their classes.
        class_table: per class ``{part id (1..P): variant}``.
        num_parts: P.
        distractor_present: ``[M,D]`` bool, which background objects each image has.
        ts_distance: class distance of the target-sensitivity pairs (FunnyBirds: 3).
        batch_size: rows per ``predict`` call.
    """
    M = image_indices.shape[0]
    if labels.shape != (M,) or distractor_present.shape[0] != M or distractor_present.dim() != 2:
        raise ValueError(f"labels must be [M] and distractor_present [M,D] with M={M}, got "
                         f"{tuple(labels.shape)} and {tuple(distractor_present.shape)}")
    if distractor_present.dtype != torch.bool:
        raise ValueError(f"distractor_present must be bool, got {distractor_present.dtype}")
    _check_table(class_table, num_parts)
    labels = labels.long()
    removals = single_removals(predict, image_indices, labels, num_parts, distractor_present,
                               batch_size)
    K = removals.base.shape[1]
    if len(class_table) != K:
        raise ValueError(f"class_table has {len(class_table)} classes, the model {K}")
    pairs = target_sensitivity_pairs(predict, image_indices, labels, class_table, num_parts,
                                     distractor_present.shape[1], ts_distance, batch_size)
    return FunnyBirdsSetup(image_indices, labels, num_parts, distractor_present,
                           minimal_sufficient_part_sets(class_table), removals, pairs, batch_size)


def choose_threshold(csdc: torch.Tensor, pc: torch.Tensor, dc: torch.Tensor,
                     d: torch.Tensor) -> int:
    """Index of the threshold that maximises ``CSDC/3 + PC/3 + DC/3 + D`` (first on ties)."""
    total = (csdc.nan_to_num(0.0) + pc + dc) / 3 + d
    return int(torch.argmax(total))


@dataclass(frozen=True)
class FunnyBirdsResult:
    """The seven checks of one explainer, with every per-threshold curve."""

    thresholds: torch.Tensor
    csdc: torch.Tensor
    pc: torch.Tensor
    dc: torch.Tensor
    d: torch.Tensor
    best: int
    accuracy: float
    bi: float
    sd: float
    sd_with_background: float
    ts: float
    counts: Mapping[str, int] = field(default_factory=dict)

    @property
    def threshold(self) -> float:
        """The chosen threshold t."""
        return float(self.thresholds[self.best])

    def at_best(self) -> dict[str, float]:
        """CSDC, PC, DC and D at the chosen threshold."""
        b = self.best
        return {"CSDC": float(self.csdc[b]), "PC": float(self.pc[b]),
                "DC": float(self.dc[b]), "D": float(self.d[b])}

    def scores(self) -> dict[str, float]:
        """Every score, the aggregates Com / Cor / Con, the threshold and the counts."""
        c = self.at_best()
        com = ((c["CSDC"] + c["PC"] + c["DC"]) / 3 + c["D"]) / 2
        out: dict[str, float] = {"accuracy": self.accuracy, **c, "BI": self.bi, "SD": self.sd,
                                 "SD_bg": self.sd_with_background, "TS": self.ts, "Com": com,
                                 "Cor": self.sd, "Con": self.ts, "threshold": self.threshold}
        out.update({f"n_{k}": float(v) for k, v in self.counts.items()})
        return out

    def curves(self) -> pd.DataFrame:
        """One row per threshold: CSDC, PC, DC, D and the objective the threshold maximises."""
        df = pd.DataFrame({"threshold": self.thresholds.numpy(), "CSDC": self.csdc.numpy(),
                           "PC": self.pc.numpy(), "DC": self.dc.numpy(), "D": self.d.numpy()})
        df["objective"] = (df["CSDC"].fillna(0.0) + df["PC"] + df["DC"]) / 3 + df["D"]
        return df


def funnybirds_checks(setup: FunnyBirdsSetup, predict: PredictFn, importance: ImportanceFn,
                      thresholds: torch.Tensor = THRESHOLDS) -> FunnyBirdsResult:
    """The seven FunnyBirds checks of one explainer.

    ``importance(image_indices, targets)`` is asked for the labels (CSDC, D, SD), the
    predictions (PC, DC) and the two target-sensitivity classes; its ``distractors`` must be
    given when any image has a background object.
    """
    idx, labels, predicted = setup.image_indices, setup.labels, setup.predicted
    D = setup.distractor_present.shape[1]
    bs = setup.batch_size
    on_label = explain_in_batches(importance, idx, labels, bs)
    on_pred = on_label if bool((predicted == labels).all()) else \
        explain_in_batches(importance, idx, predicted, bs)
    for name, imp in (("labels", on_label), ("predictions", on_pred)):
        if imp.parts.shape != (idx.shape[0], setup.num_parts + 1):
            raise ValueError(f"importance for the {name} must give parts of shape "
                             f"{(idx.shape[0], setup.num_parts + 1)}, got "
                             f"{tuple(imp.parts.shape)}")
    imp_label, imp_label_d = important_parts(on_label, thresholds)
    if imp_label_d is None:
        if bool(setup.distractor_present.any()):
            raise ValueError("importance gave no distractor importances, but the images have "
                             "background objects: distractibility needs them")
        imp_label_d = torch.zeros(idx.shape[0], thresholds.shape[0], D, dtype=torch.bool)
    elif imp_label_d.shape[2] != D:
        raise ValueError(f"importance gave {imp_label_d.shape[2]} distractor importances per "
                         f"image, distractor_present has {D} slots")
    imp_pred, _ = important_parts(on_pred, thresholds)
    correct = predicted == labels
    csdc = controlled_synthetic_data_check(imp_label, labels, correct, setup.sufficient_sets)
    pc = preservation_check(predict, idx, imp_pred, predicted, D, bs)
    dc = deletion_check(predict, idx, imp_pred, predicted, D, bs)
    d, n_d = distractibility(setup.removals, imp_label, imp_label_d)
    P = setup.num_parts
    sd, n_sd = single_deletion(setup.removals, on_label.parts, range(1, P + 1))
    sd_bg, n_sd_bg = single_deletion(setup.removals, on_label.parts, range(0, P + 1))
    ts = target_sensitivity(importance, idx, setup.ts_pairs, bs)
    counts = {"images": int(idx.shape[0]), "csdc": int(correct.sum()), "d": n_d, "sd": n_sd,
              "sd_bg": n_sd_bg, "ts": int(setup.ts_pairs.rows.shape[0]),
              "ts_no_pair": setup.ts_pairs.no_pair,
              "ts_assumption_failed": setup.ts_pairs.assumption_failed}
    return FunnyBirdsResult(thresholds.double(), csdc, pc, dc, d,
                            choose_threshold(csdc, pc, dc, d), setup.accuracy,
                            setup.background_independence, sd, sd_bg, ts, counts)


def table_by_part_ids(class_table: ClassTable, part_names: list[str]
                      ) -> list[dict[int, Any]]:
    """A class table keyed by part names, keyed by part ids instead (``part_names[0]`` is
    the background; ids are positions in ``part_names``)."""
    ids = {name: i for i, name in enumerate(part_names)}
    out = []
    for k, row in enumerate(class_table):
        unknown = [p for p in row if p not in ids or ids[p] == 0]
        if unknown:
            raise ValueError(f"class_table row {k} names parts {unknown!r}; expected some of "
                             f"{part_names[1:]!r}")
        out.append({ids[p]: v for p, v in row.items()})
    return out
