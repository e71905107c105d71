"""
Monte-Carlo NTK of a max-pooling CNN
====================================

Max pooling has no closed-form Gaussian kernel, so :func:`ntkit.infinite_kernel` refuses a network
that uses it (and points here). :func:`ntkit.monte_carlo_kernel` estimates the kernels of any
model instead: it draws networks at random, computes each one's empirical NNGP and NTK
(:func:`ntkit.empirical_ntk`) and averages them, with the standard error of every entry. Memory
does not grow with the number of draws (running sums).

First, on a model that *has* a closed form -- the CNTK-GAP of Arora et al. (2019), average pooling
-- the estimate agrees with the exact kernel within its error bars, and the error bars shrink as
:math:`1/\\sqrt{n}`. Then, on the same network with a max-pooling layer, the estimate converges as
the number of draws and the width grow.
"""

import matplotlib.pyplot as plt
import numpy as np
import torch
from sklearn.datasets import load_digits
from torch import nn

import ntkit

torch.set_default_dtype(torch.float64)

# %%
# Six 8x8 digit images, standardised.
digits = load_digits()
images = torch.tensor(digits.images[:6], dtype=torch.float64)[:, None]  # (6, 1, 8, 8)
x = (images - images.mean(dim=(2, 3), keepdim=True)) / images.std(dim=(2, 3), keepdim=True)

# %%
# A closed-form model: two 3x3 convolutions with ReLU, global average pooling, a linear read-out.
# ``model_fn(generator)`` draws one network; ``n_samples`` as a list gives the running estimates
# of one pass. The estimate converges to the expected NTK at width 32, which differs from the
# infinite-width limit by O(1/width): within the error bars of these draws (wider networks or
# more draws would resolve it).
n_list = [16, 32, 64, 128, 256]


def cntk_gap(generator, width=32):
    return ntkit.nn.cntk(1, depth=2, width=width, out_features=1, generator=generator)


exact = ntkit.infinite_kernel(cntk_gap(None), x)
runs = ntkit.monte_carlo_kernel(cntk_gap, x, n_samples=n_list, which="ntk", seed=0)
z = runs[-1].zscore(exact, "ntk")
print(f"CNTK-GAP, {n_list[-1]} draws of width 32: largest |estimate - exact| / SE = {float(z.abs().max()):.2f}")
se_gap = [float(r.ntk_stderr.mean()) for r in runs]
slope = np.polyfit(np.log(n_list), np.log(se_gap), 1)[0]
print(f"mean standard error against n: log-log slope {slope:.2f} (theory -0.5)")

# %%
# The same network with a 2x2 max pooling after the first convolution: no closed form.
# ``infinite_kernel`` refuses it and names the estimator to use.


def maxpool_cnn(generator, width=64):
    return nn.Sequential(
        ntkit.nn.Conv2d(1, width, 3, generator=generator), nn.ReLU(), nn.MaxPool2d(2),
        ntkit.nn.Conv2d(width, width, 3, generator=generator), nn.ReLU(),
        ntkit.nn.GlobalAvgPool(), ntkit.nn.Linear(width, 1, generator=generator),
    )


try:
    ntkit.infinite_kernel(maxpool_cnn(None), x)
except ValueError as err:
    print(str(err).split(". Supported")[0])

# %%
# Monte Carlo at growing widths. At each width the estimate converges (its standard error falls
# as :math:`1/\sqrt{n}`) to the expected NTK of that width; as the width grows, the single draws
# fluctuate less (the standard error at a fixed ``n`` falls like :math:`1/\sqrt{\text{width}}`) and
# the expected kernel settles to the width-independent limit.
widths = [16, 32, 64, 128]
n_draws = [4, 8, 16, 32]
mc = {w: ntkit.monte_carlo_kernel(lambda g, w=w: maxpool_cnn(g, w), x, n_samples=n_draws, which="ntk", seed=1)
      for w in widths}
for w in widths:
    last = mc[w][-1]
    print(f"width {w:4d}: Theta(x0, x1) = {float(last.ntk[0, 1]):.4f} +- {float(last.ntk_stderr[0, 1]):.4f} "
          f"({n_draws[-1]} draws)")

# %%
# Left: the CNTK-GAP estimate of the row :math:`\Theta(x_0, \cdot)` with two standard errors,
# against the exact kernel. Middle: the max-pooling CNN's :math:`\Theta(x_0, x_1)` with two
# standard errors, against the width. Right: the mean standard error against the number of draws.
fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(14, 4.2))
cols = np.arange(x.shape[0])
ax1.errorbar(cols, runs[-1].ntk[0], yerr=2 * runs[-1].ntk_stderr[0], fmt="o", capsize=3,
             label=f"Monte Carlo, {n_list[-1]} draws (width 32)")
ax1.plot(cols, exact.ntk[0], "kx", ms=9, label="infinite_kernel (exact)")
ax1.set_xlabel("image j")
ax1.set_ylabel(r"$\Theta(x_0, x_j)$")
ax1.set_title("CNTK-GAP: estimate vs exact")
ax1.legend()

est = [float(mc[w][-1].ntk[0, 1]) for w in widths]
err = [2 * float(mc[w][-1].ntk_stderr[0, 1]) for w in widths]
ax2.errorbar(widths, est, yerr=err, fmt="o-", capsize=3)
ax2.set_xscale("log", base=2)
ax2.set_xlabel("width (channels)")
ax2.set_ylabel(r"$\Theta(x_0, x_1)$")
ax2.set_title(f"max-pooling CNN, {n_draws[-1]} draws (±2 SE)")

for w in widths:
    ax3.plot(n_draws, [float(r.ntk_stderr.mean()) for r in mc[w]], "o-", label=f"max pool, width {w}")
ax3.plot(n_list, se_gap, "k^--", label="CNTK-GAP, width 32")
ax3.plot(n_list, se_gap[0] * (np.array(n_list) / n_list[0]) ** -0.5, "k:", label=r"$\propto n^{-1/2}$")
ax3.set_xscale("log")
ax3.set_yscale("log")
ax3.set_xlabel("draws n")
ax3.set_ylabel("mean standard error of the NTK")
ax3.legend(fontsize=8, loc="lower left")
fig.tight_layout()
plt.show()
