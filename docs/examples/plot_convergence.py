"""
Convergence to the infinite-width limit
=======================================

The empirical NTK of a randomly initialised network fluctuates around a deterministic limit,
:math:`\\Theta_\\infty \\otimes I`, with fluctuations of order :math:`n^{-1/2}` in the width
:math:`n` (:ref:`ntk-recursion`). We draw a few networks at each width, compute their NTK with
:func:`ntkit.empirical_ntk`, and compare with :func:`ntkit.infinite_kernel` of the same model.
This is what ``ntkit converge`` does (see :doc:`/user_guide/cli`).
"""

import math

import matplotlib.pyplot as plt
import numpy as np
import torch
from torch import nn

import ntkit

torch.set_default_dtype(torch.float64)

# %%
# Inputs on the unit circle, :math:`x = (\cos\gamma, \sin\gamma)`, and one architecture: three
# hidden ReLU layers in NTK parameterization (Jacot et al. 2018, Fig. 1).
n_points = 48
gamma = torch.linspace(-math.pi, math.pi, n_points + 1)[:-1]
x = torch.stack([torch.cos(gamma), torch.sin(gamma)], dim=1)


def network(width: int) -> nn.Module:
    return ntkit.nn.fc(2, width, 1, depth=3, activation="relu", b_std=0.1)


# The limit does not depend on the width: any width describes it.
limit = ntkit.infinite_kernel(network(8), x)
limit_blocks = limit.blocks(1)

# %%
# Networks of increasing width (the README's run uses widths up to 8192 and 10 seeds).
widths = [32, 64, 128, 256, 512, 1024]
seeds = 4
distances = {}
rows = {}
for width in widths:
    d = []
    for seed in range(seeds):
        torch.manual_seed(1000 * width + seed)
        theta = ntkit.empirical_ntk(network(width), x)  # (48, 48, 1, 1)
        d.append(float((theta - limit_blocks).norm() / limit_blocks.norm()))
        if seed < 3:
            rows.setdefault(width, []).append(theta[0, :, 0, 0])
    distances[width] = d
    print(f"width {width:5d}: mean relative distance {np.mean(d):.4f}")

mean = np.array([np.mean(distances[w]) for w in widths])
slope, intercept = np.polyfit(np.log(widths), np.log(mean), 1)
print(f"log-log slope: {slope:.3f} (theory: -0.5)")

# %%
# Left: the row :math:`\Theta(x_0, x)` of narrow and wide networks against the limit. Right: the
# distance against the width on log-log axes.
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
for width, color in [(widths[0], "tab:green"), (widths[-1], "tab:red")]:
    for r, row in enumerate(rows[width]):
        ax1.plot(gamma, row, color=color, alpha=0.6, lw=1, label=f"width {width}" if r == 0 else None)
ax1.plot(gamma, limit.ntk[0], "k--", lw=2, label=r"$\Theta_\infty$")
ax1.set_xlabel(r"$\gamma$,  $x = (\cos\gamma, \sin\gamma)$")
ax1.set_ylabel(r"$\Theta(x_0, x)$")
ax1.set_title("empirical NTK at initialisation")
ax1.legend()

spread = np.array([np.std(distances[w], ddof=1) for w in widths])
ax2.errorbar(widths, mean, yerr=spread, fmt="o", capsize=3, label="mean ± sd over seeds")
ax2.plot(widths, np.exp(intercept) * np.array(widths, float) ** slope, "k-", label=f"fit: slope {slope:.2f}")
ax2.plot(widths, mean[0] * (np.array(widths, float) / widths[0]) ** -0.5, "k:", label="slope -1/2")
ax2.set_xscale("log")
ax2.set_yscale("log")
ax2.set_xlabel("width n")
ax2.set_ylabel(r"$\|\Theta_n - \Theta_\infty \otimes I\|_F \,/\, \|\Theta_\infty \otimes I\|_F$")
ax2.set_title("distance to the limit")
ax2.legend()
fig.tight_layout()
plt.show()
