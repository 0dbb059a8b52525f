# partslib study bundle. Every target goes through scripts/ (which create or reuse .venv).
# `make` or `make help` lists the targets.
PROFILE ?= default

.DEFAULT_GOAL := help
.PHONY: help study smoke dry-run test lab notebooks nb-reference report

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | \
		awk 'BEGIN {FS = ":.*## "}; {printf "  make %-14s %s\n", $$1, $$2}'

study: ## run the whole study headlessly (make study PROFILE=gpu); results in results/PROFILE/
	scripts/study.sh $(PROFILE)

smoke: ## run the smoke profile (tiny data, a few minutes)
	scripts/study.sh smoke

dry-run: ## check profiles/PROFILE.yaml against the notebooks without running anything
	scripts/study.sh $(PROFILE) --dry-run

test: ## package tests and the nbval regression of the notebooks (what CI runs)
	scripts/test.sh

lab: ## open the notebooks in JupyterLab
	scripts/bootstrap.sh jupyter lab notebooks/

notebooks: ## write notebooks/*.ipynb from their jupytext sources notebooks/NN_*.py
	scripts/bootstrap.sh python scripts/notebooks.py

nb-reference: ## re-execute the smoke profile into tests/nb_reference/ (after a deliberate change)
	scripts/study.sh smoke --reference

report: ## rebuild results/PROFILE/report.html from its run folder; screenshot it (needs chromium)
	scripts/bootstrap.sh python -m partslib.report --profile $(PROFILE) --html
	scripts/bootstrap.sh python scripts/screenshot_report.py results/$(PROFILE)/report.html \
		--out results/$(PROFILE)/report.png
