"""Outputs of a (linearized / infinitely wide) network trained by gradient flow on any loss, by an ODE
in function space (conventions in :mod:`ntkit.predict`).

For a training loss ``L(f)`` of the training outputs ``f = f(X)`` (N, k) -- the *total* loss, a
scalar -- the gradient flow ``d theta / dt = -eta grad_theta L`` of the linearized model moves the
outputs on any inputs ``x`` as

    d f_t(X) / dt  = -eta Theta(X, X)  dL/df (f_t(X)),
    d f_t(x*) / dt = -eta Theta(x*, X) dL/df (f_t(X)),

with ``Theta (x) I_k`` for a kernel of shape (N, N) and the blocks of an (N, N, k, k) kernel
(``empirical_ntk(mode="full")``); the same for the infinitely wide network with its limiting NTK
(Jacot et al. 2018; Lee et al. 2019, section 2.2). For ``L = 1/(2 N k) sum (f - y)^2`` this is
``-(eta / (N k)) Theta (f - Y)``, the MSE dynamics that :func:`gradient_descent_mse` solves in
closed form. neural-tangents' ``predict.gradient_descent`` uses the same equation.

A ridge ``diag_reg = lambda`` (as in :func:`gradient_descent_mse`: the extra loss
``lambda / (2 N k) ||theta - theta_0||^2``, weight decay towards the initialisation) adds
``-eta lambda / (N k) (f_t - f_0)`` to both equations: with ``theta_t - theta_0 = J(X)^T a_t`` the
parameter flow gives ``d a / dt = -eta (dL/df + lambda / (N k) a)`` and ``f_t - f_0 = Theta a_t``.

The state integrated (``scipy.integrate.solve_ivp``, float64) is the outputs themselves, training
and test, ``(N + M) k`` numbers, so the tolerances bound the error of the outputs (a state of
coefficients ``a_t`` would leave the test outputs ``Theta(x*, X) a_t`` exposed to the conditioning
of ``Theta(X, X)``); the test outputs only follow the training ones. Each requested time ends an
integration interval, so no value comes from the integrator's interpolant.

Built-in losses (``N`` training points, ``k`` outputs):

* ``"mse"``: ``L = 1/(2 N k) sum_{i, c} (f_ic - y_ic)^2``; ``dL/df = (f - y) / (N k)``;
* ``"cross_entropy"``: ``L = (1/N) sum_i [-sum_c y_ic log softmax(f_i)_c]``, the mean over examples
  of the softmax cross-entropy (summed, not averaged, over classes; the same as
  ``torch.nn.functional.cross_entropy`` with its default ``reduction="mean"``), with one-hot (or
  probability) targets (N, k), or integer class labels (N,); ``dL/df = (softmax(f) sum_c y_c - y) / N``.

Any callable ``loss(fx, y) -> scalar tensor`` (``fx`` and ``y`` of the shape of ``y_train``) works;
its gradient comes from ``torch.autograd``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from scipy.integrate import solve_ivp

from ntkit._validation import check_choice, check_float, describe
from ntkit.compute.tile_task import single_threaded
from ntkit.predict._common import Layout, Prediction, cross_kernel, initial_outputs, train_inputs

Tensor = torch.Tensor

#: the built-in losses, by name
LOSSES = ("mse", "cross_entropy")
#: the integrators of ``scipy.integrate.solve_ivp`` accepted by ``method``
METHODS = ("RK45", "DOP853", "Radau", "BDF", "LSODA")
_IMPLICIT = ("Radau", "BDF", "LSODA")
#: below this many entries of ``Theta`` ((N + M) k x N k) the integration runs on one torch thread:
#: the integrator calls the right-hand side thousands of times, and on small tensors a thread pool
#: only adds its overhead (many times the work on a busy machine)
_SMALL = 1 << 20


class _Loss:
    """``dL/df`` (N, k) and the Hessian ``d^2L/df^2`` (N k, N k) of a training loss, with the checks
    of :func:`gradient_descent` (a scalar, differentiable, finite loss)."""

    def __init__(self, loss: str | Callable[..., Any], y: Tensor, layout: Layout) -> None:
        self.loss = loss
        self.kind = loss if isinstance(loss, str) else "callable"
        self.y = y  # (N, k)
        self.layout = layout
        self.name = loss if isinstance(loss, str) else getattr(loss, "__name__", type(loss).__name__)

    def _user_shape(self, f: Tensor) -> Tensor:
        return f[:, 0] if self.layout.vector else f

    def _call(self, f: Tensor) -> Tensor:
        """The user's loss at ``f``, checked to be a scalar tensor with a graph to ``f``."""
        assert callable(self.loss)
        value = self.loss(self._user_shape(f), self._user_shape(self.y))
        if not isinstance(value, torch.Tensor):
            raise TypeError(
                f"loss: expected loss(fx, y) to return a scalar torch.Tensor that depends differentiably on fx, "
                f"got {describe(value)}"
            )
        if value.numel() != 1:
            raise ValueError(
                f"loss: expected loss(fx, y) to return a scalar (the total training loss), got a tensor of shape "
                f"{tuple(value.shape)}; reduce it with .sum() or .mean()"
            )
        if not value.requires_grad:
            raise ValueError(
                "loss: expected a loss that depends differentiably on fx, got a result that carries no gradient "
                "(detached, converted to a number, or built from non-differentiable operations such as argmax "
                "or comparisons)"
            )
        return value.reshape(())

    def grad(self, f: Tensor, t: float) -> Tensor:
        """``dL/df`` at ``f`` (N, k); a ValueError naming ``t`` if the loss or the gradient is not finite."""
        if self.kind == "mse":
            g = (f - self.y) / self.layout.size
        elif self.kind == "cross_entropy":
            p = torch.softmax(f, dim=1)
            g = (p * self.y.sum(dim=1, keepdim=True) - self.y) / self.layout.n
        else:
            with torch.enable_grad():
                fr = f.detach().requires_grad_(True)
                value = self._call(fr)
                (gr,) = torch.autograd.grad(value, fr, allow_unused=True)
            if gr is None:
                raise ValueError(
                    "loss: expected a loss that depends differentiably on fx, got a result whose gradient with "
                    "respect to fx is None (it does not use fx)"
                )
            if not bool(torch.isfinite(value)):
                raise ValueError(
                    f"loss: the loss {self.name} is {float(value.detach())} at t = {t:.6g}; expected a finite value at "
                    "every time of the integration"
                )
            g = gr
        if not bool(torch.isfinite(g).all()):
            raise ValueError(
                f"loss: the gradient of the loss {self.name} has NaN/inf entries at t = {t:.6g}; expected finite "
                "values at every time of the integration"
            )
        return g

    def hessian(self, f: Tensor) -> Tensor:
        """``d^2L/df^2`` at ``f`` as an (N k, N k) matrix (row-major order of (N, k))."""
        n, k = f.shape
        if self.kind == "mse":
            return torch.eye(n * k, dtype=f.dtype, device=f.device) / self.layout.size
        if self.kind == "cross_entropy":
            p = torch.softmax(f, dim=1)
            s = self.y.sum(dim=1)
            blocks = (torch.diag_embed(p) - p[:, :, None] * p[:, None, :]) * (s / n)[:, None, None]
            return torch.block_diag(*blocks)
        with torch.enable_grad():
            h = torch.autograd.functional.hessian(self._call, f.detach())
        return h.reshape(n * k, n * k)


def _is_labels(y: Any) -> bool:
    """Whether ``y_train`` is an array of integer class labels."""
    if isinstance(y, torch.Tensor):
        return not (y.is_floating_point() or y.is_complex() or y.dtype == torch.bool)
    if isinstance(y, (np.ndarray, list, tuple)):
        try:
            return np.asarray(y).dtype.kind in "iu"
        except (ValueError, TypeError):
            return False
    return False


def _one_hot(labels: Any, k_train_train: Any) -> Tensor:
    """Integer class labels (N,) as one-hot targets (N, k); ``k`` from an (N, N, k, k) kernel, else
    ``max(labels) + 1``."""
    lab = labels if isinstance(labels, torch.Tensor) else torch.from_numpy(np.asarray(labels))
    if lab.ndim != 1 or lab.numel() == 0:
        raise ValueError(f"y_train: expected integer class labels of shape (N,), got {describe(lab)}")
    lab = lab.to(torch.int64)
    kt = k_train_train
    k = int(kt.shape[2]) if hasattr(kt, "shape") and len(kt.shape) == 4 else int(lab.max()) + 1
    if int(lab.min()) < 0 or int(lab.max()) >= k:
        raise ValueError(
            f"y_train: expected class labels in [0, {k}), got labels in [{int(lab.min())}, {int(lab.max())}]"
        )
    if k < 2:
        raise ValueError(f"y_train: cross_entropy expected at least 2 classes, got labels with {k}")
    return torch.nn.functional.one_hot(lab, k).to(torch.float64)


def _check_times(t: Any) -> tuple[np.ndarray, bool]:
    """Times as a float64 array (T,) and whether ``t`` was a scalar."""
    if isinstance(t, torch.Tensor):
        t = t.detach().cpu().numpy()
    if t is None or isinstance(t, (bool, np.bool_, str, bytes)):
        raise TypeError(f"t: expected a finite time >= 0 or a 1-D array of them, got {describe(t)}")
    try:
        arr = np.asarray(t)
    except (ValueError, TypeError):
        raise TypeError(f"t: expected a finite time >= 0 or a 1-D array of them, got {describe(t)}") from None
    if arr.dtype.kind not in "iuf" or arr.ndim > 1:
        raise TypeError(f"t: expected a finite time >= 0 or a 1-D array of them, got {describe(t)}")
    scalar = arr.ndim == 0
    arr = arr.astype(np.float64).reshape(-1)
    if arr.size == 0:
        raise ValueError("t: expected at least one time, got an empty array")
    if not np.isfinite(arr).all():
        raise ValueError(
            "t: expected finite times (the ODE is integrated up to t), got NaN/inf; for the end of MSE training "
            "use gradient_descent_mse(...)(None)"
        )
    if (arr < 0).any():
        raise ValueError(f"t: expected times >= 0, got {float(arr.min())}")
    return arr, scalar


def gradient_descent(
    loss: str | Callable[..., Any],
    k_train_train: Any,
    y_train: Any,
    *,
    learning_rate: float = 1.0,
    diag_reg: float = 0.0,
    dtype: torch.dtype = torch.float64,
    method: str = "DOP853",
    rtol: float = 1e-10,
    atol: float = 1e-12,
) -> Callable[..., Prediction]:
    """Outputs of a (linearized / infinitely wide) network trained by gradient flow on any loss.

    ``predict_fn = gradient_descent(loss, k_train_train, y_train, learning_rate=eta)`` returns
    ``predict_fn(t, fx_train_0, fx_test_0, k_test_train)``, which integrates the function-space
    gradient flow of the linearized model

        d f_t(X)  / dt = -eta (Theta(X, X)  dL/df (f_t(X)) + diag_reg / (N k) (f_t(X) - f_0(X))),
        d f_t(x*) / dt = -eta (Theta(x*, X) dL/df (f_t(X)) + diag_reg / (N k) (f_t(x*) - f_0(x*))),

    from ``t = 0`` through the requested times with ``scipy.integrate.solve_ivp`` (float64; module
    :mod:`ntkit.predict.any_loss`). ``L``
    is the total training loss: ``"mse"`` is ``1/(2 N k) sum (f - y)^2`` (then the result is
    :func:`gradient_descent_mse`'s gradient flow), ``"cross_entropy"`` the mean over the ``N``
    examples of the softmax cross-entropy, ``-(1/N) sum_i sum_c y_ic log softmax(f_i)_c``.

    Parameters
    ----------
    loss : {"mse", "cross_entropy"} or callable
        A built-in loss, or ``loss(fx, y) -> Tensor``: the total training loss (a scalar tensor) of
        outputs ``fx`` and targets ``y``, both of the shape of ``y_train``; differentiated with
        ``torch.autograd`` (its Hessian too, for the implicit ``method`` s).
    k_train_train : Tensor of shape (N, N) or (N, N, k, k)
        The NTK (infinite-width, or empirical from ``empirical_ntk(model, x, mode="full")``) on the
        training inputs; (N, N) is shared by the ``k`` outputs.
    y_train : Tensor of shape (N, k) or (N,)
        Targets. For ``"cross_entropy"``: one-hot (or probability) rows (N, k) with ``k >= 2``, or
        integer class labels (N,), one-hot encoded with ``k`` classes (from an (N, N, k, k) kernel,
        else ``max(labels) + 1``); the outputs then have shape (N, k).
    learning_rate : float
        ``eta > 0``.
    diag_reg : float
        Ridge ``lambda >= 0``: the extra loss ``lambda / (2 N k) ||theta - theta_0||^2``, as in
        :func:`gradient_descent_mse`.
    dtype : torch.dtype
        Dtype of the kernels and outputs (float64, the reference; the integrator's state is float64).
    method : {"DOP853", "RK45", "Radau", "BDF", "LSODA"}
        The ``solve_ivp`` integrator. The explicit Runge-Kutta methods suit most runs; the implicit
        ones (given the exact Jacobian ``-eta (Theta H + diag_reg / (N k))``, ``H`` the loss's
        Hessian, an ((N + M) k)^2 matrix) suit stiff ones: a training time ``t`` far beyond ``N k / (eta lambda_max)``.
    rtol, atol : float
        Relative and absolute tolerances of the integrator, on the outputs.

    Returns
    -------
    predict_fn(t, fx_train_0=None, fx_test_0=None, k_test_train=None) -> Prediction
        ``t``: a finite time ``>= 0``, or a 1-D array of them (any order, repeats allowed; one
        integration serves them all). ``fx_train_0`` (shape of the targets) and ``fx_test_0``
        (M, k): outputs at initialisation, zeros when None. ``k_test_train``: (M, N) or
        (M, N, k, k). Returns ``Prediction(train, test)`` of shapes (N, k) and (M, k) for a scalar
        ``t``, with a leading axis (T, ...) for T times; ``test`` is None without ``k_test_train``.
        ``predict_fn`` raises ValueError for a loss (or gradient) that is NaN / inf at some time
        (the message names the time), a non-scalar loss or one without a gradient with respect to
        ``fx``, TypeError for a loss that returns no tensor, and RuntimeError when the integrator
        fails.

    Raises
    ------
    ValueError
        An unknown loss name or ``method``, a kernel that is not (N, N) or (N, N, k, k), targets with
        another number of rows, cross-entropy targets with fewer than 2 classes or labels out of
        range, ``learning_rate <= 0``, ``diag_reg < 0``, ``rtol`` or ``atol <= 0``.
    TypeError
        ``loss`` neither a name nor a callable.

    Examples
    --------
    >>> import torch
    >>> from ntkit.predict import gradient_descent, gradient_descent_mse
    >>> k = torch.tensor([[2.0, 1.0], [1.0, 2.0]], dtype=torch.float64)
    >>> y = torch.tensor([[1.0], [-1.0]], dtype=torch.float64)
    >>> ode = gradient_descent("mse", k, y, learning_rate=1.0)(3.0).train
    >>> closed = gradient_descent_mse(k, y, learning_rate=1.0)(3.0).train
    >>> bool((ode - closed).abs().max() < 1e-9)
    True

    Cross-entropy with class labels: the logits of the right class grow (here ``k = 2`` classes,
    the kernel shared by both outputs).

    >>> pred = gradient_descent("cross_entropy", k, torch.tensor([0, 1]), learning_rate=1.0)([1.0, 10.0])
    >>> pred.train.shape
    torch.Size([2, 2, 2])
    >>> (pred.train[:, 0, 0] > pred.train[:, 0, 1]).tolist()  # the first point moves to class 0
    [True, True]
    """
    if isinstance(loss, str):
        check_choice(loss, "loss", LOSSES)
    elif not callable(loss):
        raise TypeError(f"loss: expected one of {list(LOSSES)} or a callable loss(fx, y), got {describe(loss)}")
    learning_rate = check_float(learning_rate, "learning_rate", minimum=0.0, strict=True)
    diag_reg = check_float(diag_reg, "diag_reg", minimum=0.0)
    check_choice(method, "method", METHODS)
    rtol = check_float(rtol, "rtol", minimum=0.0, strict=True)
    atol = check_float(atol, "atol", minimum=0.0, strict=True)
    cross_entropy = isinstance(loss, str) and loss == "cross_entropy"
    if cross_entropy and _is_labels(y_train):
        y_train = _one_hot(y_train, k_train_train)
    mat, y, layout = train_inputs(k_train_train, y_train, dtype)
    if cross_entropy and (layout.vector or layout.k < 2):
        raise ValueError(
            f"y_train: cross_entropy expected one-hot targets of shape (N, k) with k >= 2 or integer labels (N,), "
            f"got {'floating targets of shape (N,)' if layout.vector else 'targets of shape (N, 1)'}"
        )
    fn = _Loss(loss, y, layout)
    n, k = layout.n, layout.k
    ridge = diag_reg / layout.size

    def tensor(v: np.ndarray, *shape: int) -> Tensor:
        """A float64 state vector as a tensor of the kernel's dtype and device."""
        return torch.from_numpy(np.array(v)).to(dtype=mat.dtype, device=mat.device).reshape(*shape)

    def apply(kmat: Tensor, g: Tensor) -> Tensor:
        """``Theta g`` for ``g`` of shape (N, k): (rows, k)."""
        return (kmat @ g.reshape(n * k, 1)).reshape(-1, k) if layout.block else kmat @ g

    def as_full(kmat: Tensor) -> Tensor:
        """The (rows k, N k) matrix of ``g -> Theta g`` in the row-major order of (rows, k)."""
        return kmat if layout.block else torch.kron(kmat, torch.eye(k, dtype=mat.dtype, device=mat.device))

    def predict_fn(t: Any, fx_train_0: Any = None, fx_test_0: Any = None, k_test_train: Any = None) -> Prediction:
        times, scalar = _check_times(t)
        f0 = initial_outputs(fx_train_0, "fx_train_0", n, layout, mat)
        if k_test_train is None and fx_test_0 is not None:
            raise ValueError("fx_test_0: given without k_test_train; pass both or neither")
        kt, m = (None, 0) if k_test_train is None else cross_kernel(k_test_train, layout, mat)
        ft0 = initial_outputs(fx_test_0, "fx_test_0", m, layout, mat)
        start = torch.cat([f0, ft0]).reshape(-1)  # the state: train then test outputs, row-major
        rows = n + m

        def rhs(time: float, v: np.ndarray) -> np.ndarray:
            state = tensor(v, rows, k)
            g = fn.grad(state[:n], float(time))
            drive = apply(mat, g) if kt is None else torch.cat([apply(mat, g), apply(kt, g)])
            step = -learning_rate * (drive + ridge * (state - start.reshape(rows, k)))
            return step.reshape(-1).cpu().numpy().astype(np.float64)

        full: list[Tensor] = []  # the (rows k, N k) operator of the Jacobian, built on first use

        def jac(time: float, v: np.ndarray) -> np.ndarray:
            if not full:
                full.append(as_full(mat) if kt is None else torch.cat([as_full(mat), as_full(kt)]))
            h = fn.hessian(tensor(v[: n * k], n, k))
            out = torch.zeros(rows * k, rows * k, dtype=mat.dtype, device=mat.device)
            out[:, : n * k] = full[0] @ h
            out.diagonal().add_(ridge)
            return (-learning_rate * out).cpu().numpy().astype(np.float64)

        fn.grad(f0, 0.0)  # the checks at the initial point, before the integrator sees it
        extra = {"jac": jac} if method in _IMPLICIT else {}
        uniq, inverse = np.unique(times, return_inverse=True)
        states, now, v = [], 0.0, start.cpu().numpy().astype(np.float64)
        small = mat.device.type == "cpu" and rows * k * n * k <= _SMALL
        with single_threaded() if small else contextlib.nullcontext():
            for t_next in uniq:
                if t_next > now:  # one integration per interval, ending exactly at the requested time
                    sol = solve_ivp(rhs, (now, float(t_next)), v, method=method, rtol=rtol, atol=atol, **extra)
                    if sol.status != 0:
                        reached = float(sol.t[-1]) if sol.t.size else now
                        raise RuntimeError(
                            f"gradient_descent: the integrator {method} stopped at t = {reached:.6g} on its way to "
                            f"t = {float(t_next):.6g}: {sol.message}"
                        )
                    now, v = float(t_next), sol.y[:, -1]
                states.append(tensor(v, rows, k))
        out = torch.stack(states)[torch.from_numpy(inverse.reshape(-1))]  # (T, rows, k)

        def shape(x: Tensor) -> Tensor:
            x = x[..., 0] if layout.vector else x
            return x[0] if scalar else x

        return Prediction(shape(out[:, :n]), None if kt is None else shape(out[:, n:]))

    return predict_fn


__all__ = ["LOSSES", "METHODS", "gradient_descent"]
