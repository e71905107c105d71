"""
The NTK-GP: trained networks as a Gaussian process, with its uncertainty
========================================================================

Averaged over random initialisations, infinitely wide networks trained by gradient descent on the
squared error are a Gaussian process -- the *NTK-GP* of Lee et al. (2019), eqs. 15-16 (:eq:`ntk-gp`):
its mean is kernel regression with the NTK, its covariance comes from the NNGP of the
initialisation propagated through training. We compute it with
:func:`ntkit.predict.gradient_descent_mse_ensemble`, compare it with the Bayesian posterior of the
NNGP (:func:`ntkit.predict.gp_inference`), and train a few finite networks to see them fall inside
the band.
"""

import matplotlib.pyplot as plt
import torch

import ntkit
from ntkit.predict import gp_inference, gradient_descent_mse_ensemble, max_learning_rate

torch.set_default_dtype(torch.float64)

# %%
# A 1-D regression task: 12 noisy observations of :math:`\sin(2x)`. The architecture: two hidden
# erf layers with a bias (``device="meta"``: the limit needs no weights).
g = torch.Generator().manual_seed(1)
x_train = (torch.linspace(-3, 3, 12) + 0.2 * torch.randn(12, generator=g))[:, None]
y_train = torch.sin(2 * x_train) + 0.05 * torch.randn(12, 1, generator=g)
x_test = torch.linspace(-4, 4, 200)[:, None]

model = ntkit.nn.fc(1, depth=2, activation="erf", w_std=1.5, b_std=0.5, device="meta")
k_train = ntkit.infinite_kernel(model, x_train)
k_test_train = ntkit.infinite_kernel(model, x_test, x_train)
k_test = ntkit.infinite_kernel(model, x_test)

# %%
# The NTK-GP after ``steps`` steps of gradient descent at a stable learning rate (below
# :func:`ntkit.predict.max_learning_rate`, :math:`2N/\lambda_{\max}(\Theta)`), and the NNGP
# posterior with a small observation noise.
lr = 0.8 * max_learning_rate(k_train.ntk)
steps = 400
ens = gradient_descent_mse_ensemble(k_train.ntk, k_train.nngp, y_train, learning_rate=lr, discrete=True)
ntk_gp = ens(steps, ntk_test_train=k_test_train.ntk, nngp_test_train=k_test_train.nngp, nngp_test_test=k_test.nngp)
nngp = gp_inference(k_train.nngp, y_train, diag_reg=1e-4)(k_test_train.nngp, k_test.nngp)
print(f"learning rate {lr:.3f}, {steps} steps")

# %%
# Finite networks of width 512 with the same architecture, trained the same way
# (:func:`ntkit.train.train_gd`).
trained = []
for seed in range(4):
    torch.manual_seed(seed)
    net = ntkit.nn.fc(1, 512, 1, depth=2, activation="erf", w_std=1.5, b_std=0.5)
    ntkit.train.train_gd(net, x_train, y_train, learning_rate=lr, steps=steps, check_learning_rate=False)
    with torch.no_grad():
        trained.append(net(x_test)[:, 0])

inside = sum(
    float(((f - ntk_gp.mean[:, 0]).abs() <= 2 * ntk_gp.cov.diagonal().clamp(min=0).sqrt() + 1e-3).float().mean())
    for f in trained
) / len(trained)
print(f"fraction of the trained networks' outputs inside the NTK-GP's 2-sd band: {inside:.2f}")

# %%
# The two posteriors with their 2-standard-deviation bands.
fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
for ax, post, title in [(axes[0], ntk_gp, f"NTK-GP after {steps} GD steps"), (axes[1], nngp, "NNGP posterior")]:
    mean = post.mean[:, 0]
    sd = post.cov.diagonal().clamp(min=0).sqrt()
    ax.fill_between(x_test[:, 0], mean - 2 * sd, mean + 2 * sd, color="0.85", label="mean ± 2 sd")
    ax.plot(x_test[:, 0], mean, "k-", lw=2, label="mean")
    ax.plot(x_test[:, 0], torch.sin(2 * x_test[:, 0]), "k:", label=r"$\sin(2x)$")
    ax.plot(x_train[:, 0], y_train[:, 0], "o", color="tab:blue", label="training data")
    ax.set_title(title)
    ax.set_xlabel("x")
for i, f in enumerate(trained):
    axes[0].plot(x_test[:, 0], f, color="tab:red", lw=0.8, alpha=0.8, label="trained, width 512" if i == 0 else None)
axes[0].set_ylabel("f(x)")
axes[0].legend(fontsize=8, loc="lower left")
fig.tight_layout()
plt.show()
