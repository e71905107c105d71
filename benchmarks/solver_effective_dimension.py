"""Effective dimension of the bench_solvers task: how many centres a Nystrom model needs.

For kernel ridge regression with kernel matrix ``K`` (eigenvalues ``mu_i``) and ridge ``lambda``, the
effective dimension ``d_eff = sum_i mu_i / (mu_i + lambda)`` counts the directions the exact
solution uses; Nystrom KRR with ``M`` uniformly sampled centres reaches the exact model's risk once
``M`` is of order ``d_eff log d_eff`` (Rudi, Camoriano & Rosasco 2015, "Less is more: Nystrom
computational regularization"; Rudi, Carratino & Rosasco 2017, Falkon). This script computes the
spectrum of the depth-3 ReLU NTK on the training inputs of ``bench_solvers.py`` (same data, same
ridge) and prints ``d_eff`` and how much of it lies outside the top ``M`` eigen-directions.

Usage (from the repository root)::

    PYTHONPATH=src python benchmarks/solver_effective_dimension.py --n 20000 --threads 2
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_solvers import DEPTH, W_STD, make_data
from ntkit.compute import compute_kernel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--noise", type=float, default=0.2)
    parser.add_argument("--centres", type=int, nargs="*", default=[5000, 10000])
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    x, _, _ = make_data(args.n, 1, args.noise)
    start = time.perf_counter()
    kernel = compute_kernel(None, x, depth=DEPTH, w_std=W_STD, which="ntk").ntk
    lam = args.noise**2 * float(kernel.diagonal().mean())  # the ridge of bench_solvers (Var f = 1)
    mu = torch.linalg.eigvalsh(kernel).flip(0)
    del kernel
    share = mu / (mu + lam)
    d_eff = float(share.sum())
    print(f"N = {args.n}, depth-{DEPTH} ReLU NTK (w_std = {W_STD:.4f}), ridge {lam:.4f}: d_eff = {d_eff:.0f} "
          f"({d_eff / args.n:.1%} of N); eigenvalues above the ridge: {int((mu > lam).sum())} of {args.n}; "
          f"smallest eigenvalue {float(mu[-1]):.4f}; {time.perf_counter() - start:.0f} s")
    for m in args.centres:
        if m < args.n:
            print(f"  top {m} directions carry d_eff {float(share[:m].sum()):.0f}; the other {args.n - m} "
                  f"carry {float(share[m:].sum()):.0f}")


if __name__ == "__main__":
    main()
