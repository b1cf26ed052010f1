# Figures of the paper — included from the main Makefile (which defines PY, SCALE and the `venv` target).
#
#   make reproduce                                   smoke reproduction of the three tasks: headline + per-task pct and loss figures
#   make reproduce-figures SCALE=smoke               every figure on the CPU presets (runs what is missing)
#   make reproduce-figure-forcefield-vary-data       one figure (targets: make reproduce-figures-list)
#   make reproduce-figures SCALE=paper RUNS_DIR=/shared/runs       draw from finished paper-scale runs
#   make reproduce-figure-headline SCALE=paper LAUNCHER=slurm LAUNCH_ARGS="hydra.launcher.partition=gpu"
#                                                    submit the paper-scale sweeps of a figure to SLURM, then draw
#
# Runs go to RUNS_DIR (runs/<scale>), the results table to RESULTS_DIR (results/<scale>), figures to
# FIGURES_DIR (figures/<scale>) as PNG + PDF + the plotted numbers (CSV). Finished runs are never re-run,
# interrupted ones resume; sweeps share their default run. Set FIGURES_PREREQS to add prerequisites
# (e.g. `venv data`). JOBS: local runs at a time (default: 2 at smoke scale, 1 at paper scale).

RUNS_DIR        ?= runs/$(SCALE)
RESULTS_DIR     ?= results/$(SCALE)
FIGURES_DIR     ?= figures/$(SCALE)
LAUNCHER        ?= local
JOBS            ?=
LAUNCH_ARGS     ?=
FIGURES_PREREQS ?= venv

FIGURE_NAMES := headline \
	forcefield-pct forcefield-losses forcefield-vary-model forcefield-vary-data forcefield-losses-data \
	forcefield-vary-optim forcefield-vary-aug \
	flowmatching-pct flowmatching-losses flowmatching-vary-model flowmatching-vary-data flowmatching-final-pct flowmatching-final-pct-default \
	voxels-pct voxels-losses voxels-vary-model voxels-vary-data

# recursively expanded on purpose: `reproduce` sets SCALE=smoke for itself
REPRODUCE = $(PY) scripts/reproduce.py --scale $(SCALE) --runs-dir $(RUNS_DIR) --results-dir $(RESULTS_DIR) \
	--figures-dir $(FIGURES_DIR) --launcher $(LAUNCHER) $(if $(JOBS),--jobs $(JOBS)) $(REPRODUCE_FLAGS)

.PHONY: reproduce reproduce-forcefield reproduce-flowmatching reproduce-voxels reproduce-figures reproduce-figures-list $(addprefix reproduce-figure-,$(FIGURE_NAMES))

# the three default runs feed the headline and each task's pct and loss-decomposition figures
FORCEFIELD_FIGURES   := forcefield-pct forcefield-losses
FLOWMATCHING_FIGURES := flowmatching-pct flowmatching-losses flowmatching-final-pct-default
VOXELS_FIGURES       := voxels-pct voxels-losses
REPRODUCE_DEFAULT_FIGURES := headline $(FORCEFIELD_FIGURES) $(FLOWMATCHING_FIGURES) $(VOXELS_FIGURES)

reproduce: SCALE = smoke
reproduce: $(FIGURES_PREREQS)
	$(REPRODUCE) --figures $(REPRODUCE_DEFAULT_FIGURES) $(if $(LAUNCH_ARGS),-- $(LAUNCH_ARGS))

# one task's CPU reproduction (its default run, pct vs step, loss decomposition; per-t bars for flow matching)
reproduce-forcefield reproduce-flowmatching reproduce-voxels: SCALE = smoke
reproduce-forcefield: $(FIGURES_PREREQS)
	$(REPRODUCE) --figures $(FORCEFIELD_FIGURES) $(if $(LAUNCH_ARGS),-- $(LAUNCH_ARGS))
reproduce-flowmatching: $(FIGURES_PREREQS)
	$(REPRODUCE) --figures $(FLOWMATCHING_FIGURES) $(if $(LAUNCH_ARGS),-- $(LAUNCH_ARGS))
reproduce-voxels: $(FIGURES_PREREQS)
	$(REPRODUCE) --figures $(VOXELS_FIGURES) $(if $(LAUNCH_ARGS),-- $(LAUNCH_ARGS))

reproduce-figures: $(FIGURES_PREREQS)
	$(REPRODUCE) --figures all $(if $(LAUNCH_ARGS),-- $(LAUNCH_ARGS))

$(addprefix reproduce-figure-,$(FIGURE_NAMES)): reproduce-figure-%: $(FIGURES_PREREQS)
	$(REPRODUCE) --figures $* $(if $(LAUNCH_ARGS),-- $(LAUNCH_ARGS))

reproduce-figures-list: $(FIGURES_PREREQS)
	$(PY) scripts/reproduce.py --list --scale $(SCALE)
