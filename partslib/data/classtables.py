"""SynthParts class tables: which pattern each class puts on which part, and what that implies.

A class table is data: one mapping ``{part: pattern}`` per class (its *signature*). Parts a class
does not name carry a random *nuisance* pattern, drawn from the patterns that no class puts on
that part, so a sample of class ``k`` shows exactly ``k``'s signature and never a pair from
another class's signature off its own.

Two tables come with partslib (:data:`CLASS_TABLES`, chosen by the ``classes`` profile key):

* ``"default"`` -- 6 classes, each named by one or two (part, pattern) pairs; every other part
  is a nuisance (the table of the default study).
* ``"funnybirds"`` -- 50 classes in the manner of FunnyBirds (Hesse et al., ICCV 2023): every
  class fixes a pattern ("variant") on each of the 5 parts, the 50 combinations drawn once
  (without replacement, ``numpy.random.default_rng(3)``) from the 4^5 possible ones and stored
  below as data. Classes share parts (every pair of classes differs on 1 to 5 parts) and their
  minimal sufficient part sets differ: 13 classes are singled out by 2 parts, 37 need 3
  (:func:`minimal_sufficient_sets`).

Sufficiency (FunnyBirds' definition, as ``partslib.metrics.funnybirds``): a set ``S`` of the
parts class ``k`` names is *sufficient* when no other class shows the same patterns on all of
``S`` (nuisance patterns never match a signature pattern, so a sample of ``k`` showing ``S``
rules every other class out). It is *minimal* when no proper subset is sufficient. In the
default table each class's single decisive part is its one minimal set; the two-part class has
two, either part alone.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence

__all__ = [
    "CLASS_TABLES",
    "DEFAULT_SIGNATURES",
    "FUNNYBIRDS_CODES",
    "PATTERN_CODES",
    "Signature",
    "check_signatures",
    "class_distance",
    "minimal_sufficient_sets",
    "signatures_from_table",
]

Signature = tuple[tuple[str, str], ...]

# Each class: tuple of (part, pattern) pairs that define it (its decisive parts).
DEFAULT_SIGNATURES: tuple[Signature, ...] = (
    (("head", "stripes"),),
    (("body", "stripes"),),  # same pattern as class 0, other part
    (("tail", "dots"),),
    (("body", "dots"),),  # same pattern as class 2, other part
    (("wing", "checker"),),
    (("legs", "stripes"), ("tail", "checker")),  # two decisive parts
)

# One letter per pattern in the FunnyBirds-style codes.
PATTERN_CODES = {"p": "plain", "s": "stripes", "d": "dots", "c": "checker"}
FUNNYBIRDS_PARTS = ("head", "body", "tail", "legs", "wing")
# 50 classes: the pattern of head, body, tail, legs and wing, one letter each (PATTERN_CODES).
FUNNYBIRDS_CODES: tuple[str, ...] = (
    "pppps", "ppdpp", "ppdsd", "ppdcp", "pspcd", "psspc", "psscp", "pscpp",
    "pdpcd", "pdscd", "pddcs", "pddcc", "pdcps", "pcdsc", "sppss", "spscd",
    "spddp", "spcpp", "ssppp", "ssppd", "sspsc", "sdpss", "sddpc", "sdddc",
    "sddcd", "scpps", "scsds", "dpppc", "dpcdc", "dspdc", "dsdss", "ddpcc",
    "ddsps", "ddsdc", "dddcs", "dcppp", "dcsdp", "dcdsp", "dccdp", "cpsps",
    "cpssc", "csssp", "cscpp", "cscss", "cdsps", "cdcdp", "ccpps", "ccppd",
    "ccscd", "ccdcd",
)


def _funnybirds() -> tuple[tuple[Signature, ...], tuple[str, ...]]:
    sigs = tuple(tuple((part, PATTERN_CODES[c]) for part, c in zip(FUNNYBIRDS_PARTS, code))
                 for code in FUNNYBIRDS_CODES)
    return sigs, FUNNYBIRDS_CODES


# name -> (signatures, class names or None for "<pattern>-<part>" names)
CLASS_TABLES: dict[str, tuple[tuple[Signature, ...], tuple[str, ...] | None]] = {
    "default": (DEFAULT_SIGNATURES, None),
    "funnybirds": _funnybirds(),
}


def signatures_from_table(table: Sequence[Mapping[str, str]]) -> tuple[Signature, ...]:
    """Signatures from a class table ``[{part: pattern}, ...]`` (pairs sorted by part name)."""
    if isinstance(table, (str, bytes)) or not isinstance(table, Sequence):
        raise ValueError(f"a class table must be a list of {{part: pattern}} mappings, "
                         f"got {table!r}")
    sigs = []
    for k, row in enumerate(table):
        if not isinstance(row, Mapping) or not row:
            raise ValueError(f"class {k} of the class table must be a non-empty "
                             f"{{part: pattern}} mapping, got {row!r}")
        sigs.append(tuple(sorted((str(p), str(q)) for p, q in row.items())))
    return tuple(sigs)


def check_signatures(signatures: Sequence[Signature], parts: Sequence[str],
                     patterns: Sequence[str]) -> None:
    """Raise ``ValueError`` naming the first fault that would make labels ambiguous.

    Checks: at least 2 classes; each signature names distinct known parts with known patterns;
    no signature equals or contains another's (a sample would show both); every part that some
    class leaves free keeps a nuisance pattern no class puts on it.
    """
    if len(signatures) < 2:
        raise ValueError(f"need at least 2 classes (signatures), got {len(signatures)}")
    for k, sig in enumerate(signatures):
        names = [part for part, _ in sig]
        if not sig or len(set(names)) != len(names):
            raise ValueError(f"signature of class {k} must name each part at most once "
                             f"(1 to {len(parts)} (part, pattern) pairs), got {sig!r}")
        for part, pat in sig:
            if part not in parts:
                raise ValueError(f"signature of class {k} uses part {part!r}, "
                                 f"not in parts {list(parts)!r}")
            if pat not in patterns:
                raise ValueError(f"signature of class {k} uses pattern {pat!r}; expected one "
                                 f"of {list(patterns)}")
    sets = [frozenset(sig) for sig in signatures]
    for k, a in enumerate(sets):
        for j, b in enumerate(sets[:k]):
            if a == b:
                raise ValueError(f"signature of class {k} duplicates class {j}: "
                                 f"{signatures[k]!r}")
            if a < b or b < a:
                small, big = (k, j) if a < b else (j, k)
                raise ValueError(f"signature of class {small} is contained in that of class "
                                 f"{big}: every sample of {big} would also show {small}'s")
    for part in parts:
        if all(part in dict(sig) for sig in signatures):
            continue
        taken = {pat for sig in signatures for p, pat in sig if p == part}
        if not [pat for pat in patterns if pat not in taken]:
            raise ValueError(f"part {part!r} is free in some class but every pattern "
                             f"{list(patterns)} is taken on it: no nuisance pattern is left")


def class_distance(a: Signature, b: Signature) -> int:
    """Number of parts on which two signatures differ (a part one of them leaves free counts
    when the other names it)."""
    da, db = dict(a), dict(b)
    return sum(da.get(p) != db.get(p) for p in set(da) | set(db))


def minimal_sufficient_sets(signatures: Sequence[Signature],
                            parts: Sequence[str]) -> list[list[tuple[str, ...]]]:
    """For each class, its minimal sufficient part sets (part names in ``parts`` order).

    See the module docstring for the definition. Sets are listed by size, then by part order.
    """
    sigs = [dict(s) for s in signatures]
    out: list[list[tuple[str, ...]]] = []
    for k, sig in enumerate(sigs):
        found: list[tuple[str, ...]] = []
        own = [p for p in parts if p in sig]
        for r in range(1, len(own) + 1):
            for S in itertools.combinations(own, r):
                if any(set(f) <= set(S) for f in found):
                    continue
                mine = {p: sig.get(p) for p in S}
                if all({p: other.get(p) for p in S} != mine
                       for j, other in enumerate(sigs) if j != k):
                    found.append(S)
        out.append(found)
    return out
