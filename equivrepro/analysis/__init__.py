"""Why equivariance is learned fast: tools that probe a trained (or early) checkpoint of any task.

Every tool takes ``(model, task, batches, rotations)`` — a model, its :class:`~equivrepro.task.Task`,
held-out batches with frozen randomness and fixed rotations — and uses only the Task interface and
:mod:`equivrepro.metrics`, so it runs unchanged on every task.

* :mod:`~equivrepro.analysis.subset` — L_mean(θ_S), L_equiv(θ_S) as functions of a parameter subset.
* :mod:`~equivrepro.analysis.hessian` — Hessian-vector products, exact Hessians, Lanczos, κ.
* :mod:`~equivrepro.analysis.landscape` — 2-D landscapes along Hessian eigenvectors, quadratic fits.
* :mod:`~equivrepro.analysis.gradient_ratio` — ‖∇L_equiv‖/‖∇L_mean‖ vs pct over training.
* :mod:`~equivrepro.analysis.linear_head` — θ_∥ + θ_⊥ split of a linear head and the α² law.
* :mod:`~equivrepro.analysis.test_time_twirl` — MSE(K) = L_mean + L_equiv/K and its cost.

Figures for these live in :mod:`equivrepro.plots.analysis`.
"""

from equivrepro.analysis.gradient_ratio import ema_trajectory, ratio_correlation, wide_from_results
from equivrepro.analysis.hessian import (
    DEFAULT_REL_THRESHOLD,
    HessianOperator,
    LanczosResult,
    Spectrum,
    condition_numbers,
    exact_hessian,
    hessian_spectrum,
    hvp,
    lanczos,
    power_iteration,
)
from equivrepro.analysis.landscape import PAPER_STEPS, Landscape, grid_coordinates, loss_landscape, quadratic_fit, smoothness
from equivrepro.analysis.linear_head import (
    DeviationScaling,
    HeadParams,
    deviation_norm,
    deviation_scaling,
    equal_rows_projector,
    fit_loglog_slope,
    get_linear_head,
    scaled_deviation,
    split_head,
    vector_output_projector,
)
from equivrepro.analysis.subset import LOSS_NAMES, SubsetLosses, as_batch_list, cast_batch, eval_mode, select_parameters
from equivrepro.analysis.test_time_twirl import draw_rotations, twirl_mse_table, twirled_equivariance

__all__ = [
    "DEFAULT_REL_THRESHOLD", "DeviationScaling", "HeadParams", "HessianOperator", "LOSS_NAMES", "LanczosResult",
    "Landscape", "PAPER_STEPS", "Spectrum", "SubsetLosses", "as_batch_list", "cast_batch", "condition_numbers",
    "deviation_norm", "deviation_scaling", "draw_rotations", "ema_trajectory", "equal_rows_projector", "eval_mode",
    "exact_hessian", "fit_loglog_slope", "get_linear_head", "grid_coordinates", "hessian_spectrum", "hvp", "lanczos",
    "loss_landscape", "power_iteration", "quadratic_fit", "ratio_correlation", "scaled_deviation", "select_parameters",
    "smoothness", "split_head", "twirl_mse_table", "twirled_equivariance", "vector_output_projector", "wide_from_results",
]
