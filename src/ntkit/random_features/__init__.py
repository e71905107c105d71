"""Random features and sketches of the infinite-width kernels: ``phi(x).phi(x') ~ K(x, x')`` in O(N) work.

:func:`ntkit.features` (also :func:`features` here) computes them, :func:`feature_map` draws a map
to apply to batches, :func:`feature_error` measures the estimate against the exact kernel, and
:func:`feature_ridge` fits kernel ridge regression on them in ``O(N m^2)``;
:func:`fit_feature_ridge` does so for any drawn map (streamed over the inputs, resumable from a
checkpoint), e.g. the sketched empirical-NTK features of :func:`ntkit.empirical.empirical_feature_map`.
"""

from ntkit.random_features.api import feature_error, feature_map, features
from ntkit.random_features.network import FeatureMap
from ntkit.random_features.ridge import FeatureRidge, feature_ridge, fit_feature_ridge
from ntkit.random_features.sketch import GaussianProjection, TensorSketch

__all__ = ["FeatureMap", "FeatureRidge", "GaussianProjection", "TensorSketch", "feature_error", "feature_map",
           "feature_ridge", "features", "fit_feature_ridge"]
