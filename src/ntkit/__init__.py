"""ntkit: Neural Tangent Kernels made practical.

One description of a network -- a torch model built from :mod:`ntkit.nn` -- gives its finite
empirical kernels (:func:`empirical_ntk`, :func:`empirical_nngp`) and its exact infinite-width
NNGP / NTK (:func:`infinite_kernel`; :func:`fc_kernel` for the fully connected shortcut), at scale
(:func:`compute_kernel`, :mod:`ntkit.solve`), with the experiments that tie them together
(:func:`ntkit.experiments.converge.run_convergence`).

Importing ntkit imports torch, numpy and scipy only; optional extras (matplotlib, dask,
scikit-learn) are imported by the functions that need them.

Two names are easy to confuse: :class:`DualActivation` is the base class of an activation with its
Gaussian dual maps (what the kernels use; subclass it, or wrap a function in
:class:`ntkit.activations.CallableActivation`); :class:`ntkit.nn.Activation` is the torch module that
applies one in a model. The former top-level name ``ntkit.Activation`` of the dual map still works,
with a ``DeprecationWarning``.
"""

import sys
import warnings
from typing import TYPE_CHECKING, Any

from ntkit import activations, nn, predict
from ntkit._version import __version__
from ntkit.activations import DualActivation, get_activation
from ntkit.compute import compute_kernel, fc_kernel, infinite_kernel, kernel_tile_fn
from ntkit.empirical import empirical_features, empirical_nngp, empirical_ntk
from ntkit.graphs import Graphs
from ntkit.kernel import Kernel
from ntkit.monte_carlo import MonteCarloKernel, monte_carlo_kernel
from ntkit.networks import FCNetwork, NTKLinear
from ntkit.random_features import features
from ntkit.train import linearize

__all__ = [
    "DualActivation",
    "FCNetwork",
    "Graphs",
    "Kernel",
    "MonteCarloKernel",
    "NTKLinear",
    "__version__",
    "activations",
    "compute_kernel",
    "empirical_features",
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

#: Deprecated top-level names -> (the object, the warning). Not in ``__all__``, so ``import ntkit`` and
#: ``from ntkit import *`` do not warn; only an access (``ntkit.Activation``, ``from ntkit import Activation``) does.
_DEPRECATED: dict[str, tuple[Any, str]] = {
    "Activation": (
        DualActivation,
        "ntkit.Activation is the dual-map base class, renamed ntkit.DualActivation; "
        "ntkit.nn.Activation is the torch module",
    ),
}

if TYPE_CHECKING:
    Activation = DualActivation  # the deprecated spelling, for type checkers (at run time: _deprecated_attribute)


def _deprecated_attribute(name: str) -> Any:
    """The module's ``__getattr__`` (PEP 562): each access of a deprecated name warns and returns its object.

    Raises
    ------
    AttributeError
        For any other name, as a module without ``__getattr__`` would.
    """
    if name in _DEPRECATED:
        obj, message = _DEPRECATED[name]
        # ``from ntkit import Activation`` looks the name up twice: the import system's ``hasattr`` check
        # (frozen importlib), then the statement itself. Only the second warns, pointing at the caller.
        if not sys._getframe(1).f_code.co_filename.startswith("<frozen importlib"):
            warnings.warn(message, DeprecationWarning, stacklevel=2)
        return obj
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if not TYPE_CHECKING:  # hidden from type checkers, which would otherwise accept any ntkit.<name>
    __getattr__ = _deprecated_attribute
