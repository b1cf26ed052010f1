"""Task-agnostic twirl decomposition of a loss into its mean-prediction and equivariance parts.

:class:`EquivarianceMetric` (update / compute / reset) is the entry point for any training loop; the functions
below are what it is made of."""

from equivrepro.metrics.decomposition import (
    TermDecomposition,
    as_predictor,
    decompose_term,
    per_sample_rotations,
    twirl_decomposition,
    untwisted_predictions,
)
from equivrepro.metrics.gradients import gradient_norms
from equivrepro.metrics.metric import EquivarianceMetric  # noqa: E402  (after the modules it builds on)
from equivrepro.metrics.spectral import (
    AngleCurve,
    DegreeSpectrum,
    angle_curve_measured,
    angle_curve_predicted,
    degree_spectra,
    degree_spectrum,
    degree_spectrum_of,
    equiv_map,
    invariant_degrees,
    removed_degrees,
)
from equivrepro.metrics.twirl import TwirledPredictor

__all__ = [
    "EquivarianceMetric",
    "AngleCurve",
    "DegreeSpectrum",
    "angle_curve_measured",
    "angle_curve_predicted",
    "degree_spectra",
    "degree_spectrum",
    "degree_spectrum_of",
    "equiv_map",
    "invariant_degrees",
    "removed_degrees",
    "TermDecomposition",
    "TwirledPredictor",
    "as_predictor",
    "decompose_term",
    "gradient_norms",
    "per_sample_rotations",
    "twirl_decomposition",
    "untwisted_predictions",
]
