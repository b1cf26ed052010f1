# Mechanism analyses of the paper (§5.3–§6) on each task's default run — included from the main Makefile
# (after `SCALE ?= smoke`; it uses PY, SCALE, and RUNS_DIR / FIGURES_DIR / FIGURES_PREREQS of make/figures.mk).
#
#   make reproduce-analysis                              the three tasks at SCALE=smoke (trains the smoke default runs if missing)
#   make reproduce-figure-analysis-forcefield            one task (also -flowmatching, -voxels)
#   make reproduce-analysis SCALE=paper RUNS_DIR=/shared/runs     the paper default runs (seed 0) at their step-500 snapshot
#   make reproduce-analysis ANALYZE_FLAGS="--device cuda --params force_head.ffn --exact-max 0"
#
# Each writes $(FIGURES_DIR)/analysis-<task>/: summary.json (κ of L_mean and L_equiv and their ratio, landscape R²,
# linear-head slope, twirl table, gradient-ratio correlations), spectrum.csv, landscape.{pt,png,pdf,csv},
# linear_head.*, twirl.*, gradient_ratio.* (PNG + PDF + the plotted numbers). See scripts/analyze.py --help.

SCALE           ?= smoke
RUNS_DIR        ?= runs/$(SCALE)
FIGURES_DIR     ?= figures/$(SCALE)
FIGURES_PREREQS ?= venv
ANALYZE_FLAGS   ?=
ANALYSIS_STEP   ?= 500

ANALYSIS_TASKS := forcefield flowmatching voxels

# the paper's landscape grid steps (equivrepro.analysis.PAPER_STEPS; VoxMol had none: the 0.002 default)
ANALYSIS_GRID_STEP_forcefield   := 0.00164
ANALYSIS_GRID_STEP_flowmatching := 0.002
ANALYSIS_GRID_STEP_voxels       := 0.002

# extra smoke-scale options per task: the voxel U-Net's conv3d has no fast float64 CPU kernel (≈ 10× slower),
# so its smoke analysis runs in float32 on 2 of the 8 held-out conformers (a few minutes instead of an hour)
ANALYSIS_SMOKE_FLAGS_voxels := --dtype float32 --num-samples 2

# $(call analysis-recipe,<task>): smoke — run (or skip, if finished) the task's smoke default run through
# scripts/reproduce.py, then analyse its last checkpoint; paper — analyse the seed-0 default run's step-500 snapshot.
define analysis-recipe
$(if $(filter smoke paper,$(SCALE)),,$(error SCALE must be smoke or paper, got '$(SCALE)'))
$(if $(filter smoke,$(SCALE)),$(PY) scripts/reproduce.py --scale smoke --figures $(1)-pct --no-draw --runs-dir $(RUNS_DIR))
$(PY) scripts/analyze.py --scale $(SCALE) --out $(FIGURES_DIR)/analysis-$(1) --runs-dir $(RUNS_DIR) \
	--grid-step $(ANALYSIS_GRID_STEP_$(1)) $(if $(filter paper,$(SCALE)),--step $(ANALYSIS_STEP),$(ANALYSIS_SMOKE_FLAGS_$(1))) $(ANALYZE_FLAGS) \
	-- task=$(1) experiment=$(1)_$(SCALE) seed=0
endef

.PHONY: reproduce-analysis $(addprefix reproduce-figure-analysis-,$(ANALYSIS_TASKS))

# all three tasks' analyses (summary.json + figures under $(FIGURES_DIR)/analysis-<task>/)
reproduce-analysis: $(addprefix reproduce-figure-analysis-,$(ANALYSIS_TASKS))

# force field (EScAIP-style): Hessian/κ and landscape of force_head.out, linear-head α² law, twirl, gradient ratio
reproduce-figure-analysis-forcefield: $(FIGURES_PREREQS)
	$(call analysis-recipe,forcefield)

# flow matching (Proteina-style) at t = 0.6: Hessian/κ and landscape of the coords_out head, twirl, gradient ratio
reproduce-figure-analysis-flowmatching: $(FIGURES_PREREQS)
	$(call analysis-recipe,flowmatching)

# voxel denoising (VoxMol-style): Hessian/κ and landscape of the output conv head, twirl, gradient ratio
reproduce-figure-analysis-voxels: $(FIGURES_PREREQS)
	$(call analysis-recipe,voxels)
