"""
Cross-entropy training predicted by the NTK
===========================================

The closed forms of :func:`ntkit.predict.gradient_descent_mse` hold for the squared error only. A
classifier trained on the softmax cross-entropy follows the same function-space gradient flow,

.. math::

   \\frac{d f_t(x)}{dt} = -\\eta\\, \\Theta(x, X)\\, \\frac{\\partial \\mathcal{L}}{\\partial f}(f_t(X)),
   \\qquad \\mathcal{L} = -\\frac{1}{N}\\sum_i \\log \\operatorname{softmax}(f_t(x_i))_{y_i},

but now the right-hand side is nonlinear in the outputs:
:func:`ntkit.predict.gradient_descent` integrates it as an ODE. With the infinite-width NTK it
predicts how a wide network's logits evolve; here we train networks of two widths by full-batch
gradient descent and compare.
"""

import math

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F

import ntkit
from ntkit.predict import gradient_descent

torch.set_default_dtype(torch.float64)

# %%
# Three classes of 2-D points: noisy blobs around three directions. Test inputs: a grid.
g = torch.Generator().manual_seed(0)
k, per_class = 3, 8
centres = torch.stack([torch.tensor([math.cos(a), math.sin(a)]) for a in (0.3, 0.3 + 2.1, 0.3 + 4.2)])
labels = torch.arange(k).repeat_interleave(per_class)
x_train = 1.2 * centres[labels] + 0.6 * torch.randn(k * per_class, 2, generator=g)
n = len(x_train)
side = torch.linspace(-2.5, 2.5, 31)
grid = torch.cartesian_prod(side, side).flip(1)  # rows: (x1, x2) with x1 fastest
x_all = torch.cat([x_train, grid])
tr, te = slice(0, n), slice(n, None)

# %%
# The infinite-width NTK of one hidden ReLU layer (with bias), and the predictor. One ODE solve
# gives the outputs at every requested time on the training inputs and on the grid.
ntk = ntkit.fc_kernel(x_all, depth=1, activation="relu", b_std=0.1).ntk
eta, steps = 0.5, 300
times = torch.arange(0, steps + 1, 10)
predict_fn = gradient_descent("cross_entropy", ntk[tr, tr], labels, learning_rate=eta)

# %%
# Networks of widths 64 and 2048 trained by ``steps`` full-batch gradient-descent steps on the same
# loss (``torch.nn.functional.cross_entropy``, mean over examples); time ``t`` is the step count.
# Each network is compared with the NTK prediction that starts from its own initial outputs.
runs = {}
for width in (64, 2048):
    net = ntkit.FCNetwork(2, [width], k, b_std=0.1, seed=1)
    with torch.no_grad():
        f0 = net(x_all)
    pred = predict_fn(times, f0[tr], f0[te], ntk[te, tr])
    opt = torch.optim.SGD(net.parameters(), lr=eta)
    losses = []
    for step in range(steps + 1):
        opt.zero_grad()
        loss = F.cross_entropy(net(x_train), labels)
        losses.append(float(loss.detach()))
        if step < steps:
            loss.backward()
            opt.step()
    with torch.no_grad():
        grid_logits = net(grid)
    predicted_loss = [float(F.cross_entropy(f, labels)) for f in pred.train]
    rms = float((grid_logits - pred.test[-1]).pow(2).mean().sqrt())
    moved = float((grid_logits - f0[te]).pow(2).mean().sqrt())
    agree = float((grid_logits.argmax(1) == pred.test[-1].argmax(1)).double().mean())
    print(f"width {width:5d}: RMS(trained - NTK) on the grid {rms:.4f} (logits moved by {moved:.3f}), "
          f"same class on {100 * agree:.1f}% of the grid")
    runs[width] = (losses, predicted_loss, grid_logits, pred.test[-1])

# %%
# Left: the training loss of each network (solid) and its NTK prediction (dashed). Middle: the
# classes the NTK predicts on the grid after training, with the wide network's decision
# boundaries drawn over them (black). Right: every grid logit of each network against its
# prediction -- the narrow network scatters, the wide one sits on the diagonal.
fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
ax = axes[0]
for width, color in [(64, "tab:green"), (2048, "tab:red")]:
    losses, predicted_loss, _, _ = runs[width]
    ax.plot(range(steps + 1), losses, color=color, lw=1.5, label=f"network, n = {width}")
    ax.plot(times, predicted_loss, color=color, ls="--", marker="o", ms=3, lw=1, label=f"NTK prediction, n = {width}")
ax.set_xlabel("gradient-descent step t")
ax.set_ylabel("training cross-entropy")
ax.set_yscale("log")
ax.set_title("training loss: networks and their NTK predictions")
ax.legend(fontsize=8)

ax = axes[1]
_, _, wide_logits, wide_pred = runs[2048]
shape = (len(side), len(side))
ax.contourf(side, side, wide_pred.argmax(1).reshape(shape), levels=[-0.5, 0.5, 1.5, 2.5],
            colors=["tab:blue", "tab:orange", "tab:purple"], alpha=0.35)
ax.contour(side, side, wide_logits.argmax(1).reshape(shape), levels=[0.5, 1.5], colors="k", linewidths=1)
for c, color in enumerate(["tab:blue", "tab:orange", "tab:purple"]):
    ax.scatter(*x_train[labels == c].T, color=color, edgecolor="k", s=30)
ax.set_aspect("equal")
ax.set_title(f"classes after {steps} steps: NTK (colours), network n = 2048 (lines)")

ax = axes[2]
for width, color in [(64, "tab:green"), (2048, "tab:red")]:
    _, _, logits, predicted = runs[width]
    ax.scatter(predicted.flatten(), logits.flatten(), s=3, color=color, alpha=0.5, label=f"n = {width}")
lim = float(runs[2048][3].abs().max()) * 1.1
ax.plot([-lim, lim], [-lim, lim], "k-", lw=0.8)
ax.set_xlabel("logit predicted by the NTK")
ax.set_ylabel("logit of the trained network")
ax.set_title("grid logits after training")
ax.legend(fontsize=8, markerscale=3)
fig.tight_layout()
plt.show()

# %%
# With ``"mse"`` the same call reproduces :func:`ntkit.predict.gradient_descent_mse` (to about
# 1e-9 at the default tolerances); any differentiable ``loss(fx, y)`` returning a scalar works
# too. For a finite network's own linearized dynamics, pass its empirical NTK
# (``ntkit.empirical_ntk(net, x, mode="full")``, blocks (N, N, k, k)).
