# Figures of the paper — included from the main Makefile (which defines PY, SCALE and the `venv` target).
# Which tasks, sweeps and figures exist is declared by the task cards (configs/reproduce/<task>.yaml) and
# read by Python; nothing here names a task.
#
#   make reproduce                                   smoke reproduction: every in-reproduce task's default run, its figures, the headline
#   make reproduce-<task>                            one task's default run and figures (e.g. make reproduce-flowmatching)
#   make reproduce-figures SCALE=smoke               every figure on the CPU presets (runs what is missing)
#   make reproduce-figure-<figure>                   one figure (names: make reproduce-figures-list)
#   make reproduce-figures SCALE=paper RUNS_DIR=/shared/runs       draw from finished paper-scale runs
#   make reproduce-figure-headline SCALE=paper LAUNCHER=slurm LAUNCH_ARGS="hydra.launcher.partition=gpu"
#                                                    submit the paper-scale sweeps of a figure to SLURM, then draw
#
# Runs go to RUNS_DIR (runs/<scale>), the results table to RESULTS_DIR (results/<scale>), figures to
# FIGURES_DIR (figures/<scale>) as PNG + PDF + the plotted numbers (CSV). Finished runs are never re-run,
# interrupted ones resume; sweeps share their default run. JOBS: local runs at a time (default: 2 at smoke
# scale, 1 at paper scale).

RUNS_DIR        ?= runs/$(SCALE)
RESULTS_DIR     ?= results/$(SCALE)
FIGURES_DIR     ?= figures/$(SCALE)
LAUNCHER        ?= local
JOBS            ?=
LAUNCH_ARGS     ?=
FIGURES_PREREQS ?= venv

# recursively expanded on purpose: `reproduce` sets SCALE=smoke for itself
REPRODUCE = $(PY) -m equivrepro.reproduce --scale $(SCALE) --runs-dir $(RUNS_DIR) --results-dir $(RESULTS_DIR) \
	--figures-dir $(FIGURES_DIR) --launcher $(LAUNCHER) $(if $(JOBS),--jobs $(JOBS)) $(REPRODUCE_FLAGS)
LAUNCH_TAIL = $(if $(LAUNCH_ARGS),-- $(LAUNCH_ARGS))

.PHONY: reproduce _reproduce-smoke reproduce-figures reproduce-figures-list

# `make reproduce` and `make reproduce-<task>` are smoke-scale by definition: they re-enter make with SCALE=smoke
# (so RUNS_DIR, RESULTS_DIR and FIGURES_DIR follow it)
reproduce:
	@$(MAKE) --no-print-directory _reproduce-smoke SCALE=smoke REPRODUCE_WHAT="--figures reproduce"

_reproduce-smoke: $(FIGURES_PREREQS)
	$(REPRODUCE) $(REPRODUCE_WHAT) $(LAUNCH_TAIL)

reproduce-figures: $(FIGURES_PREREQS)
	$(REPRODUCE) --figures all $(LAUNCH_TAIL)

reproduce-figures-list: $(FIGURES_PREREQS)
	$(PY) -m equivrepro.reproduce --list --scale $(SCALE)

# one figure; Python rejects an unknown name and lists the valid ones
reproduce-figure-%: $(FIGURES_PREREQS)
	$(REPRODUCE) --figures $* $(LAUNCH_TAIL)

# one task's CPU reproduction (its default run and the figures its card marks for `make reproduce`)
reproduce-%:
	@$(MAKE) --no-print-directory _reproduce-smoke SCALE=smoke REPRODUCE_WHAT="--task $*"
