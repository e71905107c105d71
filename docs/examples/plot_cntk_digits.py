"""
A convolutional NTK on digit images
===================================

The convolutional NTK (CNTK) of Arora et al. (2019) is the infinite-width limit of a CNN: every
convolution averages the covariance of pixel pairs over the filter, and the read-out pools it
(:ref:`convolutions`). :func:`ntkit.nn.cntk` builds their CNTK-GAP architecture (3x3 convolutions,
ReLU, global average pooling); :func:`ntkit.infinite_kernel` reads its exact kernel from the model
-- here on scikit-learn's 8x8 digit images, with kernel regression on one-hot labels as the
classifier, against the NTK of a fully connected network on the same pixels.
"""

import time

import matplotlib.pyplot as plt
import torch
from sklearn.datasets import load_digits

import ntkit
from ntkit.predict import gp_inference

# %%
# 250 training and 150 test images (the site must build in minutes; more images, more accuracy).
digits = load_digits()
g = torch.Generator().manual_seed(0)
order = torch.randperm(len(digits.target), generator=g)
images = torch.tensor(digits.images, dtype=torch.float64)[order][:, None] / 16.0  # (n, 1, 8, 8)
images = (images - images.mean(dim=(2, 3), keepdim=True)) / images.std(dim=(2, 3), keepdim=True)
labels = torch.tensor(digits.target)[order]
x_train, y_train = images[:250], labels[:250]
x_test, y_test = images[250:400], labels[250:400]
one_hot = torch.nn.functional.one_hot(y_train, 10).double() - 0.1

# %%
# The kernels. The widths do not enter the NTK-parameterized limit: the model lives on the meta
# device. The CNTK-GAP runs in ntkit's native convolutional loop where a C compiler is present.
cnn = ntkit.nn.cntk(1, depth=3, readout="gap", device="meta")
fc = ntkit.nn.fc(64, depth=3, device="meta")
flat = torch.nn.Flatten()
accuracy = {}
kernels = {}
for name, model, (a, b) in [("CNTK-GAP, depth 3", cnn, (x_train, x_test)),
                            ("fully connected NTK, depth 3", fc, (flat(x_train), flat(x_test)))]:
    start = time.perf_counter()
    k_train = ntkit.infinite_kernel(model, a, which="ntk")
    k_test = ntkit.infinite_kernel(model, b, a, which="ntk")
    seconds = time.perf_counter() - start
    scale = float(k_train.diagonal().mean())
    post = gp_inference(k_train / scale, one_hot, diag_reg=1e-3)(k_test / scale)
    predicted = post.mean.argmax(dim=1)
    accuracy[name] = float((predicted == y_test).double().mean())
    kernels[name] = (k_train, predicted)
    print(f"{name}: test accuracy {accuracy[name]:.3f}  ({seconds:.1f} s for the kernels)")

# %%
# Left: the CNTK between 100 training images sorted by class, normalised to a correlation -- the
# block structure is the classes. Right: test images with the CNTK's prediction (red: wrong).
k_train, predicted = kernels["CNTK-GAP, depth 3"]
idx = torch.argsort(y_train[:100], stable=True)
k = k_train[:100, :100][idx][:, idx]
d = k.diagonal().sqrt()
fig = plt.figure(figsize=(11, 4.6))
ax = fig.add_subplot(1, 2, 1)
im = ax.imshow(k / d[:, None] / d[None, :], cmap="viridis")
ax.set_title("CNTK correlation, 100 training images by class")
ax.set_xlabel("image (sorted by label)")
ax.set_ylabel("image (sorted by label)")
fig.colorbar(im, ax=ax, fraction=0.046)
for i in range(15):
    sub = fig.add_subplot(3, 10, 10 * (i // 5) + 6 + i % 5)
    sub.imshow(x_test[i, 0], cmap="gray_r")
    right = int(predicted[i]) == int(y_test[i])
    sub.set_title(f"{int(predicted[i])}", color="black" if right else "red", fontsize=10)
    sub.axis("off")
fig.suptitle("  /  ".join(f"{n}: {100 * a:.1f}% test accuracy" for n, a in accuracy.items()), fontsize=10)
fig.tight_layout(rect=(0, 0, 1, 0.94))
plt.show()
