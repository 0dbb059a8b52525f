"""One source for every default: frozen configurations of the study's stages.

Each dataclass holds one stage's knobs; its defaults ARE the default study's values
(``profiles/default.yaml``, checked by ``tests/test_defaults.py``). Library functions take a
config, or keyword overrides of one (``pipeline.train_pdm(..., epochs=2)`` means
``PDMConfig().replace(epochs=2)``), instead of repeating defaults::

    from partslib.config import PDMConfig

    cheap = PDMConfig(epochs=4, image_width=0)     # any field by keyword
    cheap.replace(lr=0.01)                          # a changed copy; unknown names raise

Profile names map to fields as ``<prefix><field>``: ``pdm_image_width`` is
``PDMConfig.image_width``; the classifier's and the data's knobs carry no prefix.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Self, TypeVar

__all__ = ["ClassifierConfig", "DataConfig", "HeadConfig", "PDMConfig", "resolve"]

_C = TypeVar("_C", bound="_Config")


class _Config:
    """Shared behaviour: ``replace`` with a clear error, lists stored as tuples."""

    def replace(self, **changes: Any) -> Self:
        """A copy with ``changes`` applied; an unknown name raises ``TypeError`` naming it."""
        names = {f.name for f in dataclasses.fields(self)}  # type: ignore[arg-type]
        unknown = sorted(set(changes) - names)
        if unknown:
            raise TypeError(f"{type(self).__name__} has no field(s) {unknown}; its fields are "
                            f"{sorted(names)}")
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]

    def asdict(self) -> dict[str, Any]:
        """The fields as a plain dict (tuples as lists, for JSON and checkpoint configs)."""
        return {k: list(v) if isinstance(v, tuple) else v
                for k, v in dataclasses.asdict(self).items()}  # type: ignore[call-overload]

    def _tuple(self, name: str) -> None:
        value = getattr(self, name)
        if value is not None and not isinstance(value, tuple):
            object.__setattr__(self, name, tuple(int(v) for v in value))

    @staticmethod
    def _check(ok: bool, name: str, value: Any, expected: str) -> None:
        if not ok:
            raise ValueError(f"{name} must be {expected}, got {value!r}")


@dataclass(frozen=True)
class DataConfig(_Config):
    """The SynthParts splits: image side, class table, and the seed and size of each split.

    Three disjoint streams of the same generator: ``train`` fits the models, ``val`` is what
    every model-selection choice (epochs, widths, the image step, rule settings) is made on and
    what the per-epoch learning curves show, ``test`` is evaluated once per run for the
    reported numbers. The three seeds must differ pairwise.

    ``classes``: a named class table (``"default"``: 6 classes; ``"funnybirds"``: 50 classes,
    each fixing a pattern on all 5 parts; see :mod:`partslib.data.classtables`) or an explicit
    one, a list of ``{part: pattern}`` mappings (stored as a tuple of sorted pairs).
    """

    image_size: int = 64
    train_seed: int = 0
    n_train: int = 5000
    test_seed: int = 1
    n_test: int = 1000
    val_seed: int = 2
    n_val: int = 1000
    classes: str | tuple[tuple[tuple[str, str], ...], ...] = "default"

    def __post_init__(self) -> None:
        from partslib.data.classtables import CLASS_TABLES, signatures_from_table

        if isinstance(self.classes, str):
            self._check(self.classes in CLASS_TABLES, "classes", self.classes,
                        f"one of {sorted(CLASS_TABLES)} or a list of {{part: pattern}} mappings")
        else:
            rows = [dict(r) for r in self.classes]  # mappings, or tuples of pairs
            object.__setattr__(self, "classes", signatures_from_table(rows))
        self._check(self.image_size >= 8, "image_size", self.image_size, ">= 8")
        self._check(self.n_train >= 1, "n_train", self.n_train, ">= 1")
        self._check(self.n_test >= 1, "n_test", self.n_test, ">= 1")
        self._check(self.n_val >= 1, "n_val", self.n_val, ">= 1")
        seeds = {"train_seed": self.train_seed, "val_seed": self.val_seed,
                 "test_seed": self.test_seed}
        same = [(a, b) for i, a in enumerate(seeds) for b in list(seeds)[i + 1:]
                if seeds[a] == seeds[b]]
        if same:
            a, b = same[0]
            raise ValueError(f"{a} and {b} must differ (got {seeds[a]} for both): the splits "
                             f"would share their samples; the train, val and test seeds must "
                             f"differ pairwise")


@dataclass(frozen=True)
class ClassifierConfig(_Config):
    """The classifier and its training.

    ``arch``: ``"small_resnet"`` (stage ``widths``) or a torchvision ResNet name
    (``"resnet18"``, ...; ``widths`` ignored). ``weights``: optional local weights file.
    ``epochs=0`` trains nothing (the model is used as built or loaded). ``augment``: random
    horizontal flips and shifts of up to 8%. ``class_weighted``: inverse-frequency class weights
    in the cross-entropy. ``removal_fraction``: in-domain removal training: that share of the
    training images is re-rendered (SynthParts) without a random non-empty subset of its labels and
    trained against the uniform target over the classes still consistent with what remains, or,
    for data that cannot be re-rendered (photos), has those parts filled from the kept
    background with its class kept (:mod:`partslib.data.removal_training`); 0 trains on intact
    images only.
    """

    arch: str = "small_resnet"
    widths: tuple[int, ...] = (24, 48, 96)
    weights: str | None = None
    epochs: int = 14
    lr: float = 0.003
    weight_decay: float = 0.0001
    batch_size: int = 128
    augment: bool = False
    class_weighted: bool = False
    removal_fraction: float = 0.0

    def __post_init__(self) -> None:
        self._tuple("widths")
        if self.weights == "":
            object.__setattr__(self, "weights", None)
        self._check(self.arch == "small_resnet" or self.arch.startswith("resnet"), "arch",
                    self.arch, "'small_resnet' or a torchvision ResNet name ('resnet18', ...)")
        self._check(len(self.widths) >= 1 and min(self.widths) >= 1, "widths", self.widths,
                    "one positive width per stage")
        self._check(self.epochs >= 0, "epochs", self.epochs, ">= 0")
        self._check(self.lr > 0, "lr", self.lr, "> 0")
        self._check(self.weight_decay >= 0, "weight_decay", self.weight_decay, ">= 0")
        self._check(self.batch_size >= 1, "batch_size", self.batch_size, ">= 1")
        self._check(0.0 <= self.removal_fraction <= 1.0, "removal_fraction",
                    self.removal_fraction, "a share of the training images in [0, 1]")


@dataclass(frozen=True)
class PDMConfig(_Config):
    """The Parts Detection Module's architecture and training.

    ``widths``: decoder width after each upsampling step, deep to shallow (one per step; ``None``
    or empty: half of each merged stage's channels, at least 16). ``image_width``: channels of
    the stride-1 step that merges the input image (0: none; only possible when the shallowest
    used stage is at stride 2, so 0 for torchvision ResNets). ``image_kernel``: that step's
    kernel. ``separable``: depthwise-separable 3x3 blocks. ``n_train``: training images (``None``:
    the whole split). ``balance``: median-frequency label weights in the loss.
    """

    n_train: int | None = 5000
    epochs: int = 20
    lr: float = 0.005
    batch_size: int = 16
    widths: tuple[int, ...] | None = (48, 24)
    image_width: int = 8
    image_kernel: int = 3
    separable: bool = False
    balance: bool = False

    def __post_init__(self) -> None:
        if self.widths is not None and len(self.widths) == 0:
            object.__setattr__(self, "widths", None)
        self._tuple("widths")
        self._check(self.n_train is None or self.n_train >= 1, "n_train", self.n_train,
                    ">= 1 or None")
        self._check(self.epochs >= 1, "epochs", self.epochs, ">= 1")
        self._check(self.lr > 0, "lr", self.lr, "> 0")
        self._check(self.batch_size >= 1, "batch_size", self.batch_size, ">= 1")
        self._check(self.widths is None or min(self.widths) >= 1, "widths", self.widths,
                    "positive widths or None")
        self._check(self.image_width >= 0, "image_width", self.image_width, ">= 0")
        self._check(self.image_kernel >= 1 and self.image_kernel % 2 == 1, "image_kernel",
                    self.image_kernel, "an odd kernel size >= 1")


@dataclass(frozen=True)
class HeadConfig(_Config):
    """The amortised contribution head (:mod:`partslib.explain.amortised_training`).

    ``n_train``: training images whose removal game it learns; ``n_val``: validation images
    that choose its epoch; ``target``: ``"occlusion"`` (single-removal effects) or
    ``"shapley"`` (exact part Shapley values).
    """

    n_train: int = 5000
    n_val: int = 500
    epochs: int = 100
    target: str = "occlusion"

    def __post_init__(self) -> None:
        self._check(self.n_train >= 1, "n_train", self.n_train, ">= 1")
        self._check(self.n_val >= 1, "n_val", self.n_val, ">= 1")
        self._check(self.epochs >= 1, "epochs", self.epochs, ">= 1")
        self._check(self.target in ("occlusion", "shapley"), "target", self.target,
                    "'occlusion' or 'shapley'")


def resolve(config: _C | None, default: type[_C], overrides: dict[str, Any]) -> _C:
    """``config`` (or ``default()``) with keyword ``overrides`` applied."""
    if config is not None and not isinstance(config, default):
        raise TypeError(f"config must be a {default.__name__}, got {type(config).__name__}")
    base = config if config is not None else default()
    return base.replace(**overrides) if overrides else base
