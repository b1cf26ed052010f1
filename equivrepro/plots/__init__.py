"""Figures of the paper drawn from the results table (:mod:`equivrepro.plots.figures`), and the analysis
figures (:mod:`equivrepro.plots.analysis`). Each writes PNG + PDF and returns the numbers it drew."""

from equivrepro.plots.figures import (
    DATA_COLUMNS,
    ema_smooth,
    final_pct_bars,
    headline,
    loss_decomposition,
    pct_curves,
    vary,
    vary_augmentation,
    vary_data_size,
    vary_model_size,
    vary_optimizer,
)

__all__ = [
    "DATA_COLUMNS",
    "ema_smooth",
    "final_pct_bars",
    "headline",
    "loss_decomposition",
    "pct_curves",
    "vary",
    "vary_augmentation",
    "vary_data_size",
    "vary_model_size",
    "vary_optimizer",
]
