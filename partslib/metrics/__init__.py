"""Validity (SPEC §5 V1-V5) and localisation (V6) metrics: plain functions over callables
and tensors. Removal operators live in :mod:`partslib.removal`."""

from partslib.metrics.bootstrap import bootstrap_interval, bootstrap_intervals
from partslib.metrics.localization import (
    confusion_matrix,
    mean_iou,
    netdissect_iou,
    part_iou,
    pointing_game,
    relevance_mass,
)
from partslib.metrics.validity import (
    ORDER_PAD,
    RandomExplainer,
    RemovalAgreement,
    cascading_randomisation,
    claimed_order,
    completeness_error,
    decisive_hits,
    decisive_part_accuracy,
    deletion_auc,
    deletion_curve,
    random_order,
    removal_agreement,
    removal_effects,
    spearman,
)

__all__ = [
    "ORDER_PAD",
    "RandomExplainer",
    "RemovalAgreement",
    "bootstrap_interval",
    "bootstrap_intervals",
    "cascading_randomisation",
    "claimed_order",
    "completeness_error",
    "confusion_matrix",
    "decisive_hits",
    "decisive_part_accuracy",
    "deletion_auc",
    "deletion_curve",
    "mean_iou",
    "netdissect_iou",
    "part_iou",
    "pointing_game",
    "random_order",
    "relevance_mass",
    "removal_agreement",
    "removal_effects",
    "spearman",
]
