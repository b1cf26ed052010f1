"""Why equivariance is learned fast: tools that probe a trained (or early) checkpoint of any task.

Every tool takes ``(model, task, batches, rotations)`` — a model, its :class:`~equivrepro.task.Task`,
held-out batches with frozen randomness and fixed rotations — and uses only the Task interface and
:mod:`equivrepro.metrics`, so it runs unchanged on every task.

* :mod:`~equivrepro.analysis.heldout` — the frozen held-out set (samples, task randomness, rotations) of an evaluation.
* :mod:`~equivrepro.analysis.subset` — L_mean(θ_S), L_equiv(θ_S) as functions of a parameter subset.
* :mod:`~equivrepro.analysis.hessian` — Hessian-vector products, exact Hessians, Lanczos.
* :mod:`~equivrepro.analysis.curvature` — the Hessian and the PSD Gauss–Newton form; whole spectra of either.
* :mod:`~equivrepro.analysis.spectral` — SLQ densities, effective ranks, κ over resolved eigenvalues.
* :mod:`~equivrepro.analysis.structure` — is the L_mean / L_equiv comparison forced on a subset?
* :mod:`~equivrepro.analysis.landscape` — 2-D landscapes along Hessian eigenvectors, frozen and redrawn, quadratic fits.
* :mod:`~equivrepro.analysis.head_deviation` — the linear head's deviation against L_equiv over training.
* :mod:`~equivrepro.analysis.gradient_ratio` — ‖∇L_equiv‖/‖∇L_mean‖ vs pct over training.
* :mod:`~equivrepro.analysis.linear_head` — θ_∥ + θ_⊥ split of a linear head (and the α² identity).
* :mod:`~equivrepro.analysis.test_time_twirl` — MSE(K) = L_mean + L_equiv/K and its cost.
* :mod:`~equivrepro.analysis.report` — the command line ``equivrepro-analyze`` that runs them on a run.

Figures for these live in :mod:`equivrepro.plots.analysis`.
"""

from equivrepro.analysis.curvature import CurvatureSpectrum, GGNOperator, curvature_operator, curvature_spectrum
from equivrepro.analysis.gradient_ratio import ema_trajectory, ratio_correlation, wide_from_results
from equivrepro.analysis.head_deviation import deviation_correlation
from equivrepro.analysis.heldout import HeldOutSet, freeze_heldout, pick_suffix
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
from equivrepro.analysis.landscape import Landscape, grid_coordinates, loss_landscape, quadratic_fit, redrawn_landscape, smoothness
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
from equivrepro.analysis.spectral import (
    SpectralDensity,
    effective_ranks,
    resolved_condition,
    spectrum_distance,
    stochastic_lanczos_quadrature,
)
from equivrepro.analysis.structure import StructureVerdict, structure_verdict
from equivrepro.analysis.subset import LOSS_NAMES, SubsetLosses, as_batch_list, cast_batch, eval_mode, select_parameters
from equivrepro.analysis.test_time_twirl import draw_rotations, twirl_mse_table, twirled_equivariance

__all__ = [
    "DEFAULT_REL_THRESHOLD",
    "CurvatureSpectrum",
    "DeviationScaling",
    "GGNOperator",
    "HeadParams",
    "HeldOutSet",
    "HessianOperator",
    "LOSS_NAMES",
    "LanczosResult",
    "Landscape",
    "SpectralDensity",
    "Spectrum",
    "StructureVerdict",
    "SubsetLosses",
    "as_batch_list",
    "cast_batch",
    "condition_numbers",
    "curvature_operator",
    "curvature_spectrum",
    "deviation_correlation",
    "deviation_norm",
    "deviation_scaling",
    "draw_rotations",
    "effective_ranks",
    "ema_trajectory",
    "equal_rows_projector",
    "eval_mode",
    "exact_hessian",
    "fit_loglog_slope",
    "freeze_heldout",
    "get_linear_head",
    "grid_coordinates",
    "hessian_spectrum",
    "hvp",
    "lanczos",
    "loss_landscape",
    "pick_suffix",
    "power_iteration",
    "quadratic_fit",
    "ratio_correlation",
    "redrawn_landscape",
    "resolved_condition",
    "scaled_deviation",
    "select_parameters",
    "smoothness",
    "spectrum_distance",
    "split_head",
    "stochastic_lanczos_quadrature",
    "structure_verdict",
    "twirl_mse_table",
    "twirled_equivariance",
    "vector_output_projector",
    "wide_from_results",
]
