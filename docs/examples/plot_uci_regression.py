"""
Kernel regression on small data sets (UCI)
==========================================

Arora et al. (2020) found that the infinite-width NTK, used as the kernel of a classifier, beats
random forests on the 90 small UCI data sets of Fernández-Delgado et al. (2014). Here a few of
them are classified by kernel regression on one-hot labels -- the output of an infinitely wide
network trained to convergence (:ref:`training`) -- with the NTK and the NNGP of fully connected
ReLU networks of several depths, through :class:`ntkit.sklearn.NTKClassifier`.

The UCI files are not part of ntkit. When the folder ``shared/data/uci`` lies beside the
repository (or ``NTKIT_UCI_DATA`` names one in Arora et al.'s layout) this page uses four of its
data sets with their first published train / test split; otherwise it runs the same code on
synthetic tasks from scikit-learn. ``ntkit bench uci`` runs the full benchmark (SVMs, all 90 sets).
"""

import os
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from sklearn.datasets import make_circles, make_classification, make_moons
from sklearn.preprocessing import StandardScaler

from ntkit.experiments.uci import load_uci_dataset
from ntkit.sklearn import NTKClassifier


def uci_folder() -> Path | None:
    """``$NTKIT_UCI_DATA``, or ``shared/data/uci`` beside the repository holding this file."""
    if os.environ.get("NTKIT_UCI_DATA"):
        return Path(os.environ["NTKIT_UCI_DATA"])
    for here in [Path.cwd(), *Path.cwd().parents]:
        if (here / "pyproject.toml").exists():
            candidate = here.parent / "shared" / "data" / "uci"
            return candidate if candidate.is_dir() else None
    return None


def tasks() -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """name -> (x_train, y_train, x_test, y_test)."""
    folder = uci_folder()
    out = {}
    if folder is not None:
        for name in ["iris", "wine", "seeds", "breast-cancer-wisc"]:
            data = load_uci_dataset(folder / name)
            train, test = data.folds[0]
            out[name] = (data.x[train], data.y[train], data.x[test], data.y[test])
        return out
    rng = np.random.default_rng(0)
    synthetic = {
        "moons": make_moons(300, noise=0.25, random_state=0),
        "circles": make_circles(300, noise=0.1, factor=0.5, random_state=0),
        "classification (10-d)": make_classification(300, n_features=10, n_informative=5, random_state=0),
        "3 classes (5-d)": make_classification(300, n_features=5, n_informative=3, n_classes=3,
                                               n_clusters_per_class=1, random_state=1),
    }
    for name, (x, y) in synthetic.items():
        x = StandardScaler().fit_transform(x)
        idx = rng.permutation(len(y))
        out[name] = (x[idx[:200]], y[idx[:200]], x[idx[200:]], y[idx[200:]])
    return out


data = tasks()
print("data:", "UCI" if uci_folder() is not None else "synthetic (no UCI folder found)")

# %%
# Kernel regression with each kernel and depth (the ridge ``diag_reg`` is relative to the mean of
# the kernel's diagonal).
depths = [1, 2, 3, 5]
scores: dict[str, dict[str, list[float]]] = {}
for name, (x_train, y_train, x_test, y_test) in data.items():
    for which in ("ntk", "nngp"):
        accs = []
        for depth in depths:
            clf = NTKClassifier(depth=depth, which=which, method="regression", diag_reg=1e-2)
            accs.append(clf.fit(x_train, y_train).score(x_test, y_test))
        scores.setdefault(name, {})[which] = accs
    print(f"{name:24s} n={len(y_train) + len(y_test):4d}  NTK " + " ".join(f"{a:.3f}" for a in scores[name]["ntk"]))

# %%
# Test accuracy against the depth: the NTK (solid) and the NNGP (dashed) are close, and the depth
# matters little on these small tasks -- as Arora et al. observed.
fig, ax = plt.subplots(figsize=(7.5, 4.5))
for i, (name, s) in enumerate(scores.items()):
    color = f"C{i}"
    ax.plot(depths, s["ntk"], "o-", color=color, label=f"{name}, NTK")
    ax.plot(depths, s["nngp"], "s--", color=color, alpha=0.7, label=f"{name}, NNGP")
ax.set_xlabel("hidden layers")
ax.set_ylabel("test accuracy")
ax.set_xticks(depths)
ax.set_title("kernel regression with infinite-width kernels")
ax.legend(fontsize=7, ncol=2)
fig.tight_layout()
plt.show()
