"""Empirical (finite-width) NTK and NNGP of any PyTorch model.

One concept per module: :mod:`.jacobian` (Jacobian contraction), :mod:`.ntvp` (NTK-vector
products), :mod:`.structured` (layer-factored Linear / Conv), :mod:`.streamed` (layer contributions
formed during the backward passes: convolutions, batch norm), :mod:`.pntk` (the pseudo-NTK),
:mod:`.tiling` (memory budget and progress), :mod:`.api` (:func:`empirical_ntk`), :mod:`.nngp`
(:func:`empirical_nngp`), :mod:`.sketch` (sketched features ``phi phi^T ~ Theta``:
:func:`empirical_features`, :func:`empirical_feature_map`), :mod:`.sketch_tiles` (the empirical NTK as a
kernel operator's tiles for :mod:`ntkit.solve`, ``solver="features"`` on the sketched features:
:class:`EmpiricalTiles`).
"""

from ntkit.empirical._common import IMPLEMENTATIONS, MODES, NTK_MODES, PAIRS
from ntkit.empirical.api import empirical_ntk
from ntkit.empirical.nngp import empirical_nngp
from ntkit.empirical.sketch import empirical_feature_map, empirical_features
from ntkit.empirical.sketch_tiles import EmpiricalTiles

__all__ = [
    "IMPLEMENTATIONS",
    "MODES",
    "NTK_MODES",
    "PAIRS",
    "EmpiricalTiles",
    "empirical_feature_map",
    "empirical_features",
    "empirical_nngp",
    "empirical_ntk",
]
