# Mechanism analyses of the paper (§6–§7) on each task's default run — included from the main Makefile.
# The per-task defaults (parameter subset, landscape grid step, evaluation suffix, smoke-scale options)
# come from the task cards (configs/reproduce/<task>.yaml, key `analysis`); nothing here names a task.
#
#   make reproduce-analysis                              every in-reproduce task at SCALE=smoke (trains the smoke default runs if missing)
#   make reproduce-figure-analysis-<task>                one task
#   make reproduce-analysis SCALE=paper RUNS_DIR=/shared/runs     the paper default runs (seed 0) at their step-500 snapshot
#   make reproduce-analysis ANALYZE_FLAGS="--device cuda --params <module> --exact-max 0"
#
# Each writes $(FIGURES_DIR)/analysis-<task>/: summary.json and the figures (PNG + PDF + the plotted numbers).

ANALYZE_FLAGS   ?=
ANALYSIS_STEP   ?= 500

.PHONY: reproduce-analysis

ANALYZE = $(PY) -m equivrepro.analysis.report --scale $(SCALE) --runs-dir $(RUNS_DIR) --figures-dir $(FIGURES_DIR) \
	$(if $(filter paper,$(SCALE)),--step $(ANALYSIS_STEP),--train-missing) $(ANALYZE_FLAGS)

reproduce-analysis: $(FIGURES_PREREQS)
	$(ANALYZE) --all-tasks

reproduce-figure-analysis-%: $(FIGURES_PREREQS)
	$(ANALYZE) --task $*
