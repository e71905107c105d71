"""
The same kernel on a Dask cluster
=================================

:func:`ntkit.compute_kernel` cuts a kernel matrix into tiles; with ``scheduler=`` (a
``dask.distributed`` client or a scheduler address) the tiles run on the cluster's workers and
come back to be assembled here (:doc:`/user_guide/scale`). On the fully connected fast path the
result does not depend on the tiling nor on where the tiles ran: we check that it equals the
in-process kernel bit for bit, and draw which worker computed which tile, when.

A ``LocalCluster`` of two workers stands in for a real cluster; with one, pass its address
(``scheduler="tcp://host:8786"``, or ``ntkit kernel DATA.npy --scheduler tcp://host:8786``). The
workers here are threads of this process (``processes=False``), which keeps the page quick; with
worker processes (the default) a script needs the usual ``if __name__ == "__main__":`` guard.
"""

import matplotlib.pyplot as plt
import numpy as np
import torch
from dask.distributed import Client, LocalCluster, get_task_stream

import ntkit
import ntkit.data

# 1536 points on the unit circle, in order of their angle: the NTK is a function of the angle between
# two points, which draws the bands of the figure below.
x, _ = ntkit.data.circle_inputs(1536)
model = ntkit.nn.fc(2, depth=4, activation="relu", b_std=0.1, device="meta")

local = ntkit.compute_kernel(model, x, which="ntk", tile=256)

# %%
# Two workers with one thread each; no dashboard (``dashboard_address=None``).
with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None,
                  silence_logs=50) as cluster, Client(cluster) as client:
    with get_task_stream(client) as stream:
        distributed = ntkit.compute_kernel(model, x, which="ntk", tile=256, scheduler=client)
    tasks = stream.data

same = torch.equal(local.ntk, distributed.ntk)
print(f"{distributed.tiles_total} tiles, identical to the in-process kernel: {same}")
assert same

# %%
# Left: the kernel, with the tile grid (the symmetric kernel's lower tiles are mirrored, not
# computed). Right: the tile tasks on the two workers over time.
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.4), gridspec_kw={"width_ratios": [1, 1.4]})
ax1.imshow(distributed.ntk[:, :], cmap="magma")
for edge in range(256, 1536, 256):
    ax1.axhline(edge - 0.5, color="white", lw=0.6)
    ax1.axvline(edge - 0.5, color="white", lw=0.6)
ax1.set_title("NTK of 1536 points on the circle, 256 x 256 tiles")

workers = sorted({t["worker"] for t in tasks})
t0 = min(s["start"] for t in tasks for s in t["startstops"])
for t in tasks:
    row = workers.index(t["worker"])
    for s in t["startstops"]:
        if s["action"] == "compute":
            ax2.barh(row, s["stop"] - s["start"], left=s["start"] - t0, color=f"C{row}", edgecolor="black", lw=0.3)
ax2.set_yticks(range(len(workers)), [f"worker {i + 1}" for i in range(len(workers))])
ax2.set_xlabel("seconds")
ax2.set_title(f"{sum(1 for t in tasks for s in t['startstops'] if s['action'] == 'compute')} tasks on "
              f"{len(workers)} workers")
fig.tight_layout()
plt.show()
print("busy time per worker (s):", np.round([sum(s["stop"] - s["start"] for t in tasks if t["worker"] == w
                                                 for s in t["startstops"] if s["action"] == "compute")
                                             for w in workers], 2))
