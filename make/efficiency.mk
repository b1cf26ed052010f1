# The efficiency gap (equivrepro.efficiency) — included from the main Makefile. Which tasks have a study, and its
# families, sizes and budgets, are declared by the task cards (configs/reproduce/<task>.yaml, key `efficiency`).
#
#   make reproduce-efficiency-gap                                 CPU presets (SCALE=smoke): runs what is missing, fits, draws
#   make reproduce-efficiency-gap SCALE=paper LAUNCHER=slurm LAUNCH_ARGS="hydra.launcher.partition=gpu" EFFICIENCY_FLAGS=--launch
#   make reproduce-efficiency-gap SCALE=paper RUNS_DIR=/shared/runs      fit and draw from finished cluster runs
#
# Writes $(RESULTS_DIR)/efficiency_{points,comparison}.csv, efficiency_summary.json and
# $(FIGURES_DIR)/efficiency-{flops,seconds,frontier}.{png,pdf,csv}.

EFFICIENCY_FLAGS ?=

.PHONY: reproduce-efficiency-gap

reproduce-efficiency-gap: $(FIGURES_PREREQS)
	$(PY) -m equivrepro.efficiency --scale $(SCALE) --runs-dir $(RUNS_DIR) --results-dir $(RESULTS_DIR) \
		--figures-dir $(FIGURES_DIR) --launcher $(LAUNCHER) $(if $(JOBS),--jobs $(JOBS)) $(EFFICIENCY_FLAGS) $(LAUNCH_TAIL)
