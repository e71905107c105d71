"""ntkit: Neural Tangent Kernels made practical.

Finite networks (:class:`FCNetwork`), their empirical kernels (:func:`empirical_ntk`,
:func:`empirical_nngp`), the exact infinite-width limits (:func:`fc_kernel`), and the experiments
that tie them together (:func:`ntkit.experiments.converge.run_convergence`).

Importing ntkit imports torch, numpy and scipy only; optional extras (matplotlib, dask,
scikit-learn) are imported by the functions that need them.
"""

from ntkit import activations, predict
from ntkit.activations import Activation, get_activation
from ntkit.compute import compute_kernel, kernel_tile_fn
from ntkit.empirical import empirical_nngp, empirical_ntk
from ntkit.infinite import fc_kernel
from ntkit.kernel import Kernel
from ntkit.networks import FCNetwork, NTKLinear
from ntkit.train import linearize

__version__ = "0.1.0"

__all__ = [
    "Activation",
    "FCNetwork",
    "Kernel",
    "NTKLinear",
    "__version__",
    "activations",
    "compute_kernel",
    "empirical_nngp",
    "empirical_ntk",
    "fc_kernel",
    "get_activation",
    "kernel_tile_fn",
    "linearize",
    "predict",
]
