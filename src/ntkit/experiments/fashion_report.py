"""The results page of ``ntkit bench fashion``: markdown tables beside the published numbers, and a plot.

``results.md`` holds: the test accuracy of every final fit beside the published ones
(:data:`PUBLISHED`), the validation sweeps (best validation accuracy per depth, activation, ``w_var`` and
``b_std``), the accuracy against training size, the float32 vs float64 effect at the full pool, and the time
and peak memory of every stage. ``learning_curve.png`` (matplotlib, ``ntkit[plot]``; skipped with a note
without it) plots test accuracy against training images on a log axis.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from ntkit._io import write_text_atomic
from ntkit.experiments.images_kernels import DEFAULT_ACTIVATION, RELU_W_VAR

#: Published test accuracies (%) on Fashion-MNIST: (source, model, training images, accuracy). Xiao et al.
#: (2017)'s benchmark of scikit-learn classifiers (best of their grid, all 60,000 training images; the data
#: set's README / benchmark site), and Novak et al. (2019), Table 1, which reports test *error* 8.22% (FCN-GP)
#: and 7.40% (CNN-GP, no pooling) -- quoted from memory of the paper -- with the hyper-parameters chosen on a
#: 10,000-image validation split and the GP fitted on the 50,000-image training split (their set-up: "full
#: training, validation, and test sets of sizes 50000, 10000, and 10000"); see
#: benchmarks/results/fashion.md for how sure.
PUBLISHED: tuple[tuple[str, str, int, float], ...] = (
    ("Xiao et al. 2017", "SVC (RBF, C = 10)", 60000, 89.7),
    ("Xiao et al. 2017", "random forest", 60000, 87.3),
    ("Xiao et al. 2017", "MLP", 60000, 87.1),
    ("Novak et al. 2019, Table 1", "FCN-GP (NNGP of the best FC)", 50000, 91.78),
    ("Novak et al. 2019, Table 1", "CNN-GP without pooling", 50000, 92.60),
)
#: Test images of every published row (the data set's test file).
PUBLISHED_TEST_IMAGES = 10000
_FAMILY = {"fc": "FC", "cnn": "CNN-GP / CNTK-V (no pooling)"}


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f}"


def standard_error(accuracy: float, n_test: int) -> float:
    """The binomial standard error ``sqrt(p (1 - p) / n)`` of an accuracy ``p`` measured on ``n`` test images
    (a fraction, like ``p``): how far the same classifier's accuracy moves between test sets of that size. Two
    classifiers scored on the *same* images differ by less than this suggests (their errors are correlated); a
    difference well inside it is not evidence that one is better."""
    if not 0.0 <= accuracy <= 1.0 or n_test < 1:
        raise ValueError(f"standard_error: expected an accuracy in [0, 1] and n_test >= 1, got {accuracy!r}, "
                         f"{n_test!r}")
    return float((accuracy * (1.0 - accuracy) / n_test) ** 0.5)


def _se(accuracy: float | None, n_test: int) -> str:
    return "-" if accuracy is None else f"{100 * standard_error(accuracy, n_test):.2f}"


def _cost(c: dict[str, Any] | None) -> str:
    if not c:
        return "- | - | - | - | -"
    load = "/".join("-" if v is None else f"{v:.1f}" for v in c.get("load", []))
    return (f"{c['seconds']:.1f} | {c.get('cpu_seconds', float('nan')):.1f} | {c['peak_anon_gb']:.2f} | "
            f"{c['peak_rss_gb']:.2f} | {load}")


def _b(rec: dict[str, Any]) -> str:
    """The bias standard deviation of a record (records written before the bias sweep have none: 0)."""
    return f"{rec.get('b_std', 0.0):g}"


def _w(rec: dict[str, Any]) -> str:
    """The weight variance of a record (records written before the weight sweep, and the random-feature records,
    have none: the default)."""
    return f"{rec.get('w_var', RELU_W_VAR):g}"


def _act(rec: dict[str, Any]) -> str:
    """The activation of a record (records written before the activation sweep, and the random-feature records,
    have none: the default, ReLU)."""
    return str(rec.get("activation", DEFAULT_ACTIVATION))


def _finals(summary: dict[str, Any]) -> list[dict[str, Any]]:
    return [f for fam in ("fc", "cnn") for f in summary["stages"].get(fam, {}).get("finals", [])]


def _curves(summary: dict[str, Any]) -> list[tuple[str, list[dict[str, Any]]]]:
    """``(label, curve)`` of every final fit and random-feature fit (records before the features' curve: none)."""
    return [(f"{f['kernel']} {f['which'].upper()}", f["curve"]) for f in _finals(summary)] + \
        [(f"{r['kernel']} NTK ({r['n_features']} features)", r["curve"])
         for r in summary["stages"].get("features", []) if r.get("curve")]


def format_report(summary: dict[str, Any]) -> str:
    """The markdown page (module notes)."""
    s = summary
    lines = ["# ntkit bench fashion", "",
             f"Fashion-MNIST from `{s['source']}`: final fit on {s['n_pool']} images (training split {s['n_fit']} + "
             f"validation {s['n_val']}), depth / activation / w_var / b_std / ridge sweep on {s['n_sweep']} training "
             "images against "
             f"the validation split, test on {s['n_test']}. Preprocessing: {s['settings']['preprocess']}; "
             f"exact kernels in {s['settings'].get('kernel_dtype', 'float64')}; targets: one-hot minus 0.1."
             + ("" if s["complete"] else " **Incomplete run** (interrupted)."), "",
             "## Test accuracy (%)", "",
             f"s.e.: the binomial standard error `sqrt(p (1 - p) / n)`, n the test images ({s['n_test']} here, "
             f"{PUBLISHED_TEST_IMAGES} for the published rows).", "",
             "| model | kernel | activation | w_var | b_std | ridge | training images | test accuracy | s.e. |",
             "|---|---|---|---|---|---|---|---|---|"]
    n_test = s["n_test"]
    for f in _finals(s):
        lines.append(f"| ntkit {f['which'].upper()} | {f['kernel']} | {_act(f)} | {_w(f)} | {_b(f)} | {f['reg']:g} | "
                     f"{f['n_pool']} | {_pct(f['test_acc'])} | {_se(f['test_acc'], n_test)} |")
    for r in s["stages"].get("features", []):
        lines.append(f"| ntkit NTK, {r['n_features']} random features | {r['kernel']} | {_act(r)} | {_w(r)} | "
                     f"{_b(r)} | {r['reg']:g} | {r['n_pool']} | {_pct(r['test_acc'])} | {_se(r['test_acc'], n_test)} |")
    for source, model, n_train, acc in PUBLISHED:
        lines.append(f"| {source}: {model} | - | - | - | - | - | {n_train} | {acc:.2f} | "
                     f"{_se(acc / 100, PUBLISHED_TEST_IMAGES)} |")
    for fam, name in _FAMILY.items():
        st = s["stages"].get(fam)
        if not st:
            continue
        lines += ["", f"## {name}: validation sweep (best validation accuracy %, over the ridge grid)", "",
                  "| kernel | activation | w_var | b_std | NNGP | NTK | kernel s | sweep solves s |",
                  "|---|---|---|---|---|---|---|---|"]
        for rec in st["sweeps"]:
            best = [max((a for a in rec["val_acc"][w] if a is not None), default=None) for w in ("nngp", "ntk")]
            cost = f"{rec['kernel_cost']['seconds']:.1f} | {rec['solve_cost']['seconds']:.1f}"
            lines.append(f"| {rec['kernel']} | {_act(rec)} | {_w(rec)} | {_b(rec)} | {_pct(best[0])} | "
                         f"{_pct(best[1])} | {cost} |")
    finals = _finals(s)
    chosen = [f for f in finals if f.get("ridge_choice")]
    if chosen:
        lines += ["", "## Ridge of the final fit, chosen at full size (validation accuracy %)", "",
                  f"Fitted on the training split ({chosen[0]['ridge_choice']['n_train']} images), scored on the "
                  "validation split; the sweep's ridge and its half-decade neighbours.", "",
                  "| kernel | which | sweep ridge | " + " | ".join(["ridge: validation"] * 3) + " | chosen |",
                  "|---|---|---|---|---|---|---|"]
        for f in chosen:
            c = f["ridge_choice"]
            lines.append(f"| {f['kernel']} | {f['which']} | {f['sweep_reg']:g} | "
                         + " | ".join(f"{r:g}: {_pct(a)}" for r, a in zip(c["regs"], c["val_acc"], strict=True))
                         + f" | {c['reg']:g} |")
    curves = _curves(s)
    if curves:
        sizes = sorted({r["n"] for _, curve in curves for r in curve})
        lines += ["", "## Accuracy against training size (%)", "",
                  "| kernel | " + " | ".join(str(n) for n in sizes) + " |", "|---|" + "---|" * len(sizes)]
        for label, curve in curves:
            at = {r["n"]: r["test_acc"] for r in curve}
            lines.append(f"| {label} | " + " | ".join(_pct(at.get(n)) for n in sizes) + " |")
    if finals:
        lines += ["", "## Precision of the final solve", "",
                  "| kernel | which | N | solve | accuracy | relative residuals | float32 unrefined accuracy |",
                  "|---|---|---|---|---|---|---|"]
        for f in finals:
            for r in f["curve"]:
                p = r.get("float32_plain")
                if r is not f["curve"][-1] and not p:
                    continue  # the sizes compared (and the full size)
                res = ", ".join(f"{v:.1e}" for v in r["residuals"])
                solve = r["precision"] + (f" + {r['cg_steps']} CG steps" if r.get("cg_steps") else "")
                lines.append(f"| {f['kernel']} | {f['which']} | {r['n']} | {solve} | {_pct(r['test_acc'])} "
                             f"| {res} | {_pct(p['test_acc']) if p else '-'} |")
    lines += ["", "## Cost of every stage", "",
              "Wall seconds, CPU seconds (user + system, all threads), peak anonymous memory (GB: arrays and "
              "factors), peak resident memory (GB: with the pages of memory-mapped kernel files), 1-minute load "
              "average at start / end (2 cores: a load above 2 means other work shared them).", "",
              "| stage | part | wall s | CPU s | peak GB | peak RSS GB | load |", "|---|---|---|---|---|---|---|",
              f"| load + preprocess | - | {_cost(s['load_cost'])} |"]
    for fam in ("fc", "cnn"):
        st = s["stages"].get(fam)
        if not st:
            continue
        for rec in st["sweeps"]:
            kc = rec["kernel_cost"]
            lines.append(f"| sweep {rec['kernel']} | kernels ({kc['pairs']:.3g} pairs) | {_cost(kc)} |")
            lines.append(f"| sweep {rec['kernel']} | ridge grid ({len(rec['regs'])} Cholesky x 2) | "
                         f"{_cost(rec['solve_cost'])} |")
        for f in st["finals"]:
            kc = f["kernel_cost"]
            lines.append(f"| final {f['kernel']} {f['which']} | kernels ({kc['pairs']:.3g} pairs) | {_cost(kc)} |")
            if f.get("ridge_choice"):
                lines.append(f"| final {f['kernel']} {f['which']} | ridge at full size (3 solves) | "
                             f"{_cost(f['ridge_choice']['cost'])} |")
            for r in f["curve"]:
                shared = ", its solve in the ridge choice's" if r.get("solved_in") else ""
                lines.append(f"| final {f['kernel']} {f['which']} | solve N = {r['n']} ({r['precision']}{shared}) | "
                             f"{_cost(r['cost'])} |")
                if r.get("float32_plain") and r["float32_plain"]["cost"]:
                    lines.append(f"| final {f['kernel']} {f['which']} | solve N = {r['n']} (float32 unrefined) | "
                                 f"{_cost(r['float32_plain']['cost'])} |")
    for r in s["stages"].get("features", []):
        lines.append(f"| features {r['kernel']} | features | {_cost(r['feature_cost'])} |")
        lines.append(f"| features {r['kernel']} | ridge | {_cost(r['solve_cost'])} |")
    return "\n".join(lines) + "\n"


def plot_curve(summary: dict[str, Any], path: Path) -> bool:
    """Test accuracy against training images of every final and random-feature fit; False when matplotlib is
    absent."""
    return plot_curves(_curves(summary), path)


def plot_curves(curves: list[tuple[str, list[dict[str, Any]]]], path: Path) -> bool:
    """``(label, curve)`` pairs (a final record's ``curve``: rows with ``n`` and ``test_acc``) on one log axis,
    the published numbers as lines; False when there is nothing to plot or matplotlib is absent."""
    if not curves or importlib.util.find_spec("matplotlib") is None:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for label, curve in curves:
        ax.plot([r["n"] for r in curve], [100 * r["test_acc"] for r in curve], marker="o", label=label)
    for _, model, _, acc in PUBLISHED:  # x in axes fractions, y in data: the label stays in view on any x axis
        ax.axhline(acc, lw=0.8, ls=":", color="grey")
        ax.text(0.01, acc, f"{model} {acc:g}", transform=ax.get_yaxis_transform(), fontsize=6, color="grey",
                va="bottom")
    ax.set_xscale("log")
    ax.set_xlabel("training images")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Fashion-MNIST: kernel regression")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def write_report(summary: dict[str, Any], out: Path, *, plot: bool = True) -> None:
    """``out/results.md`` and, with ``plot`` and matplotlib, ``out/learning_curve.png``."""
    text = format_report(summary)
    if plot and plot_curve(summary, out / "learning_curve.png"):
        text += "\n![accuracy against training size](learning_curve.png)\n"
    elif plot and _curves(summary):
        text += "\n(no plot: matplotlib is missing; pip install 'ntkit[plot]')\n"
    write_text_atomic(out / "results.md", text)


__all__ = ["PUBLISHED", "format_report", "plot_curve", "plot_curves", "standard_error", "write_report"]
