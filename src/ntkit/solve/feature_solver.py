"""The ``"features"`` solver of :class:`~ntkit.solve.KernelSystem`: ridge regression on random features.

For a kernel given as a :class:`~ntkit.solve.KernelOperator` of a model (:class:`~ntkit.solve.ModelTiles`),
``n_features`` random features of the model's kernel (:mod:`ntkit.random_features`) replace the
N x N system by an ``m x m`` one (:func:`ntkit.random_features.fit_feature_ridge`; ``O(N m^2)``, an
approximation whose error falls like ``1 / sqrt(m)``). The coefficients are then the ``m`` feature
weights, not kernel coefficients, and predictions need the test inputs. A tile function with features of
its own (:class:`FeatureTiles`: the sketched empirical NTK of a finite model,
:class:`ntkit.empirical.EmpiricalTiles`) draws them instead.

This is the one module of :mod:`ntkit.solve` that imports :mod:`ntkit.random_features` (a lower
subpackage, which never imports :mod:`ntkit.solve`).
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch

from ntkit._validation import as_tensor
from ntkit.random_features.network import FeatureMap
from ntkit.random_features.ridge import FeatureBatches, FeatureRidge, fit_feature_ridge
from ntkit.solve.operator import KernelOperator, ModelTiles

Tensor = torch.Tensor

#: Default ``m``: ``min(N, DEFAULT_FEATURES)``.
DEFAULT_FEATURES = 4096


@runtime_checkable
class FeatureTiles(Protocol):
    """A tile function that draws features of its own kernel (:class:`ntkit.empirical.EmpiricalTiles`)."""

    def feature_map(self, x: Tensor, n_features: int | None, generator: torch.Generator) -> FeatureBatches:
        """Features of ``n_features`` (None: the tile function's default) drawn from ``generator``; ``x``
        are the training inputs."""
        ...

    def ridge_options(self, fmap: Any) -> dict[str, Any]:
        """Keyword arguments of :func:`~ntkit.random_features.fit_feature_ridge` for the drawn ``fmap``."""
        ...


class FeatureSolver:
    """Ridge regression on ``n_features`` random features of the kernel of ``op``'s model.

    Parameters
    ----------
    op : KernelOperator
        The symmetric training kernel, built from a model (tiles :class:`~ntkit.solve.ModelTiles`) or with
        tiles that draw their own features (:class:`FeatureTiles`).
    y : Tensor of shape (N,) or (N, k)
    diag_reg : float
        Absolute ridge ``> 0``.
    n_features : int, optional
        ``m`` (default ``min(N, 4096)``; for :class:`FeatureTiles` their own default).
    generator : torch.Generator, optional
        The random draw of the features (default: seed 0).
    progress : bool

    Raises
    ------
    ValueError
        ``op`` is neither built from a model nor with :class:`FeatureTiles`.

    Examples
    --------
    >>> import torch, ntkit
    >>> from ntkit.solve import KernelOperator
    >>> x = torch.randn(30, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    >>> fs = FeatureSolver(KernelOperator(x, model=ntkit.nn.fc(3, depth=1, device="meta")), x[:, 0],
    ...                    diag_reg=1e-2, n_features=64)
    >>> w = fs.solve(x[:, 0], refit=False)
    >>> w.shape, fs.predict(w, x[:4]).shape
    (torch.Size([64]), torch.Size([4]))
    """

    def __init__(
        self,
        op: KernelOperator,
        y: Tensor,
        *,
        diag_reg: float,
        n_features: int | None = None,
        generator: torch.Generator | None = None,
        progress: bool = False,
    ) -> None:
        tiles = op.tile_fn
        self.op = op
        self.ridge: FeatureRidge
        gen = generator if generator is not None else torch.Generator().manual_seed(0)
        if isinstance(tiles, FeatureTiles):  # e.g. the sketched empirical NTK
            own = tiles.feature_map(op.x1, n_features, gen)
            self.ridge = fit_feature_ridge(own, op.x1, y.to(torch.float64), diag_reg=diag_reg, progress=progress,
                                           **tiles.ridge_options(own))
            return
        if not isinstance(tiles, ModelTiles):
            raise ValueError("solver: 'features' needs the kernel as a KernelOperator of a model (ModelTiles) or with "
                             f"tiles that draw features (FeatureTiles, e.g. EmpiricalTiles), got "
                             f"{type(tiles).__name__}")
        arch = tiles.tiles_for(tuple(op.x1.shape[1:])).arch
        n = int(op.shape[0])
        m = min(n, DEFAULT_FEATURES) if n_features is None else n_features
        fmap = FeatureMap(arch, m, tiles.which, generator=gen, dtype=op.tile_dtype)
        self.ridge = fit_feature_ridge(fmap, op.x1, y.to(torch.float64), diag_reg=diag_reg, progress=progress)

    def solve(self, b: Tensor, *, refit: bool = True) -> Tensor:
        """Feature weights (m,) or (m, k) for the right-hand side ``b`` (N,) or (N, k), in ``b``'s dtype.

        ``refit=False``: ``b`` are the fitted targets, whose weights are returned as they are; else one
        more pass over the training inputs, the factor reused.
        """
        if refit:
            w = self.ridge.refit(self.op.x1, (b[:, None] if b.ndim == 1 else b).to(torch.float64))
        else:
            w = self.ridge.weights
        return (w[:, 0] if b.ndim == 1 else w).to(b.dtype)

    def predict(self, coef: Tensor, x_test: Any) -> Tensor:
        """``phi(x_test) coef``: shape (T,) or (T, k), in ``coef``'s dtype."""
        w = coef[:, None] if coef.ndim == 1 else coef
        xt = as_tensor(x_test, "x_test", dtype=self.op.dtype, ndim=None)
        out = FeatureRidge(self.ridge.fmap, w.to(torch.float64), coef.ndim == 1, 0.0).predict(xt)
        return out.to(coef.dtype)
