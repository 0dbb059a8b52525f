"""The study's tables, one concern per module.

* :mod:`partslib.studies.funnybirds_plots` -- the FunnyBirds spider plot and threshold curves.
* :mod:`partslib.studies.localization` -- table T1 (where the parts are: PDM vs IBD's linear
  maps vs Grad-CAM/CAM) and its figure.
* :mod:`partslib.studies.realphoto` -- the study on folder-format datasets of real photos
  (decisive parts, T1/T2 on photos, explaining any photograph).
* :mod:`partslib.studies.validity` -- table T2 (orchestration: :func:`run_validity`).
* :mod:`partslib.studies.removal_cache` -- scoring removed images once (:class:`RemovalCache`).
* :mod:`partslib.studies.validity_text` -- T2's metrics, headline, ablation table and reading.
* :mod:`partslib.studies.validity_plots` -- T2's figures.
"""
