"""partslib: explain CNN classifiers through accurately segmented semantic parts."""

__version__ = "0.1.0"
