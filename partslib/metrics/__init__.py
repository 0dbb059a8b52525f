"""Validity (SPEC §5 V1-V5), localisation (V6) and the FunnyBirds checks: plain functions over
callables and tensors. Removal operators live in :mod:`partslib.removal`."""

from partslib.metrics.funnybirds import (
    PartImportance,
    minimal_sufficient_part_sets,
    precomputed_importance,
)
from partslib.metrics.funnybirds_protocol import (
    FunnyBirdsResult,
    FunnyBirdsSetup,
    funnybirds_checks,
    funnybirds_setup,
)
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
    "FunnyBirdsResult",
    "FunnyBirdsSetup",
    "PartImportance",
    "RandomExplainer",
    "RemovalAgreement",
    "cascading_randomisation",
    "claimed_order",
    "completeness_error",
    "confusion_matrix",
    "decisive_part_accuracy",
    "deletion_auc",
    "deletion_curve",
    "funnybirds_checks",
    "funnybirds_setup",
    "mean_iou",
    "minimal_sufficient_part_sets",
    "netdissect_iou",
    "part_iou",
    "pointing_game",
    "precomputed_importance",
    "random_order",
    "relevance_mass",
    "removal_agreement",
    "removal_effects",
    "spearman",
]
