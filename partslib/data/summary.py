"""Tables that describe a SynthParts split: class signatures, class counts, part areas, checksum.

Pure functions of a dataset (or its config); the data-overview notebook shows them.
"""

from __future__ import annotations

import hashlib
from typing import cast

import numpy as np
import pandas as pd
import torch

from partslib.data.synthparts import SynthParts, SynthPartsConfig

__all__ = ["class_counts", "part_areas", "shared_images", "signature_table", "split_checksum"]


def signature_table(cfg: SynthPartsConfig) -> pd.DataFrame:
    """One row per class: its name, decisive part(s), their pattern(s), and its minimal
    sufficient part sets (``|`` between sets, ``+`` within one)."""
    rows = []
    sufficient = cfg.minimal_sufficient_sets()
    for k, sig in enumerate(cfg.signatures):
        rows.append({"class": k, "name": cfg.names[k],
                     "decisive parts": ", ".join(part for part, _ in sig),
                     "pattern": ", ".join(pat for _, pat in sig),
                     "minimal sufficient part sets": " | ".join("+".join(s)
                                                                for s in sufficient[k])})
    return pd.DataFrame(rows).set_index("class")


def class_counts(*splits: tuple[str, SynthParts]) -> pd.DataFrame:
    """Images per class (rows) for each named split (columns)."""
    cols = {}
    for name, ds in splits:
        counts = torch.bincount(ds.labels, minlength=ds.cfg.num_classes).tolist()
        cols[name] = counts
    names = splits[0][1].class_names
    return pd.DataFrame(cols, index=pd.Index(names, name="class"))


def part_areas(ds: SynthParts) -> pd.DataFrame:
    """Mean share of the image each label (background + parts) covers, per class, plus the share
    of images in which the part is visible at all (rows = classes, last row = all)."""
    num_labels = ds.cfg.num_parts + 1
    _, h, w = ds.masks.shape
    per_image = torch.stack([torch.bincount(m.flatten(), minlength=num_labels)
                             for m in ds.masks.to(torch.int64)]).double() / (h * w)  # [N, P+1]
    names = ds.part_names
    frame = pd.DataFrame(per_image.numpy(), columns=names)
    frame["class"] = [ds.class_names[int(k)] for k in ds.labels]
    # pandas types GroupBy.mean() as any scalar, Series or DataFrame; grouping the columns of
    # a list is a DataFrameGroupBy, whose mean is a DataFrame
    table = cast(pd.DataFrame, frame.groupby("class", sort=False)[names].mean())
    table.loc["all"] = frame[names].mean()
    return table


def split_checksum(ds: SynthParts) -> str:
    """SHA-256 of the split's arrays, the same value as the ``sha256`` of its cache manifest."""
    arrays = {"images": ds.images.permute(0, 2, 3, 1).numpy(),  # stored as [N, H, W, 3]
              "labels": ds.labels.numpy(), "masks": ds.masks.to(torch.uint8).numpy()}
    h = hashlib.sha256()
    for key in sorted(arrays):
        h.update(key.encode())
        h.update(np.ascontiguousarray(arrays[key]).tobytes())
    return h.hexdigest()


def shared_images(*splits: tuple[str, SynthParts]) -> dict[str, int]:
    """For each pair of named splits, how many images of the first are byte-identical to an
    image of the second (``{"train/test": 0, ...}``): 0 everywhere for disjoint streams."""
    digests = {name: {hashlib.sha256(np.ascontiguousarray(img.numpy()).tobytes()).digest()
                      for img in ds.images} for name, ds in splits}
    names = [name for name, _ in splits]
    return {f"{a}/{b}": len(digests[a] & digests[b])
            for i, a in enumerate(names) for b in names[i + 1:]}
