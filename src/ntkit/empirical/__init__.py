"""Empirical (finite-width) NTK and NNGP of any PyTorch model.

One concept per module: :mod:`.jacobian` (Jacobian contraction), :mod:`.ntvp` (NTK-vector
products), :mod:`.structured` (layer-factored Linear / Conv), :mod:`.streamed` (layer contributions
formed during the backward passes: convolutions, batch norm), :mod:`.pntk` (the pseudo-NTK),
:mod:`.tiling` (memory budget and progress), :mod:`.api` (:func:`empirical_ntk`), :mod:`.nngp`
(:func:`empirical_nngp`), :mod:`.sketch` (sketched features ``phi phi^T ~ Theta``:
:func:`empirical_features`, :func:`empirical_feature_map`).
"""

from ntkit.empirical._common import IMPLEMENTATIONS, MODES, NTK_MODES, PAIRS
from ntkit.empirical.api import empirical_ntk
from ntkit.empirical.nngp import empirical_nngp
from ntkit.empirical.sketch import empirical_feature_map, empirical_features

__all__ = [
    "IMPLEMENTATIONS",
    "MODES",
    "NTK_MODES",
    "PAIRS",
    "empirical_feature_map",
    "empirical_features",
    "empirical_nngp",
    "empirical_ntk",
]
