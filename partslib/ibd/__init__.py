"""Interpretable Basis Decomposition (IBD), ported from the public reference code.

Paper: Zhou, Sun, Bau, Torralba, "Interpretable Basis Decomposition for Visual
Explanation", ECCV 2018. Reference code: https://github.com/CSAILVision/IBD. The
algorithm as that code runs it is written up in ``shared/docs/ibd.md``; section
numbers below refer to that file.

Pipeline:

1. :func:`train_concept_classifiers` learns one linear 1x1 concept classifier per
   concept on feature-grid cells (§2): sigmoid + MSE loss, plain SGD, hard-negative
   mining from a fixed pool of 20P negatives, 3:1 train/val split, per-concept AP.
2. :func:`normalise_concepts` centres and L2-normalises the concept weights (§2).
3. :func:`decompose` writes every L2-normalised class weight as a greedy Gram-Schmidt
   pursuit over the concept vectors plus a residual (§3).
4. :func:`ibd_contributions` and :func:`ibd_heatmaps` explain one image (§4).

Faithful to the reference: the pursuit picks the largest *signed* score (raw q.t at
the first step, the normalised orthogonalised candidate afterwards); coefficients are
``pinv([q_c1..q_cn, r+/|r+|, r-/|r-|]) @ w_hat``; contributions use the L2-normalised
GAP feature and percentages are relative to the total including the residual; the
components are re-sorted by contribution; heatmaps use the centred, unnormalised
weight with the bias and no sigmoid, gate by 1[s_i > 0], apply ReLU and one shared max;
concept training uses MSE on the sigmoid, SGD lr 0.01 without momentum, batch 128,
default ``nn.Linear`` initialisation, 20P negative pool, 2P negatives per epoch (random
at epoch 0, the top-scored pool cells afterwards), the 3:1 split with the first part
(positives; hardest negatives) to training, and a shuffled training order each epoch.
On the shipped ResNet-18/Places365 weights :func:`decompose` reproduces all 365
reference rankings (see ``tests/test_ibd.py``).

The one deliberate difference: every random choice (initialisation, positive order,
negative pool, epoch-0 negatives, shuffling) comes from a local generator seeded by
``(seed, concept id)``; the reference uses the unseeded global RNG (and a Python-set
order for the positives). Degenerate inputs that make the reference divide by zero
(a candidate already in the chosen span, an all-zero r+ or r-) are handled explicitly
instead of producing NaNs.

Not ported: the Grad-CAM branch for models without a GAP + linear head, feature
extraction and Broden loading (labels enter as per-cell grids, see
:func:`sample_labels_to_grid`), and rendering (JET overlay) of the heatmaps.

Modules: :mod:`partslib.ibd.concepts` (concept classifiers and their training, §2),
:mod:`partslib.ibd.decomposition` (basis decomposition §3 and contributions §4) and
:mod:`partslib.ibd.maps` (heatmaps, §4); every public name is importable from here.
"""

from partslib.ibd.concepts import (
    IGNORE_LABEL,
    ConceptClassifiers,
    average_precision,
    sample_labels_to_grid,
    train_concept_classifiers,
)
from partslib.ibd.decomposition import (
    IBDDecomposition,
    IBDExplanation,
    decompose,
    ibd_contributions,
    normalise_concepts,
)
from partslib.ibd.maps import concept_score_maps, ibd_heatmaps

__all__ = [
    "IGNORE_LABEL",
    "ConceptClassifiers",
    "IBDDecomposition",
    "IBDExplanation",
    "average_precision",
    "concept_score_maps",
    "decompose",
    "ibd_contributions",
    "ibd_heatmaps",
    "normalise_concepts",
    "sample_labels_to_grid",
    "train_concept_classifiers",
]
