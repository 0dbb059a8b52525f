"""The study's tables, one concern per module.

* :mod:`partslib.studies.validity` -- table T2 (orchestration: :func:`run_validity`).
* :mod:`partslib.studies.removal_cache` -- scoring removed images once (:class:`RemovalCache`).
* :mod:`partslib.studies.validity_text` -- T2's metrics, headline, ablation table and reading.
* :mod:`partslib.studies.validity_plots` -- T2's figures.
"""
