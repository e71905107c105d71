"""ntkit: Neural Tangent Kernels made practical.

One description of a network -- a torch model built from :mod:`ntkit.nn` -- gives its finite
empirical kernels (:func:`empirical_ntk`, :func:`empirical_nngp`) and its exact infinite-width
NNGP / NTK (:func:`infinite_kernel`; :func:`fc_kernel` for the fully connected shortcut), at scale
(:func:`compute_kernel`, :mod:`ntkit.solve`), with the experiments that tie them together
(:func:`ntkit.experiments.converge.run_convergence`).

Importing ntkit imports torch, numpy and scipy only; optional extras (matplotlib, dask,
scikit-learn) are imported by the functions that need them.
"""

from ntkit import activations, nn, predict
from ntkit._version import __version__
from ntkit.activations import Activation, get_activation
from ntkit.compute import compute_kernel, fc_kernel, infinite_kernel, kernel_tile_fn
from ntkit.empirical import empirical_nngp, empirical_ntk
from ntkit.kernel import Kernel
from ntkit.monte_carlo import MonteCarloKernel, monte_carlo_kernel
from ntkit.networks import FCNetwork, NTKLinear
from ntkit.random_features import features
from ntkit.train import linearize

__all__ = [
    "Activation",
    "FCNetwork",
    "Kernel",
    "MonteCarloKernel",
    "NTKLinear",
    "__version__",
    "activations",
    "compute_kernel",
    "empirical_nngp",
    "empirical_ntk",
    "fc_kernel",
    "features",
    "get_activation",
    "infinite_kernel",
    "kernel_tile_fn",
    "linearize",
    "monte_carlo_kernel",
    "nn",
    "predict",
]
