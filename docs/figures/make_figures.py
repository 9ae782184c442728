"""Make the README's figure: SLERP vs vSLERP paths on a synthetic off-centre ellipsoid.

Two raw "embeddings" a, b on a thin ellipsoidal shell centred at m (far from the origin,
as CLIP image embeddings are, paper §5): plain SLERP (α=0, about the origin) cuts inside the
shell, vSLERP with α=1 (Eq. 12: SLERP about m) follows it, and α=2 bends further out.
Drawn with the project's own ``vslerp.slerp`` / ``vslerp.vslerp``:

    python docs/figures/make_figures.py docs/figures/vslerp_paths.png
"""

from __future__ import annotations

import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

import vslerp  # noqa: E402


def main(out: str) -> None:
    gen = torch.Generator().manual_seed(0)
    mean = torch.tensor([3.0, 1.5])  # the modality mean m: the shell is off the origin
    angles = torch.rand(400, generator=gen) * 2 * torch.pi
    radius = 1.0 + 0.04 * torch.randn(400, generator=gen)
    axes = torch.tensor([1.3, 1.0])  # an ellipse, not a circle
    cloud = torch.stack([angles.cos(), angles.sin()], 1) * axes * radius[:, None] + mean
    a = torch.tensor([1.3 * torch.cos(torch.tensor(2.2)), 1.0 * torch.sin(torch.tensor(2.2))]) + mean
    b = torch.tensor([1.3 * torch.cos(torch.tensor(0.5)), 1.0 * torch.sin(torch.tensor(0.5))]) + mean
    thetas = torch.linspace(0, 1, 50)

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    ax.scatter(*cloud.T, s=4, color="0.75", label="image embeddings (raw)")
    ax.scatter([0], [0], marker="+", s=80, color="k")
    ax.annotate("origin", (0, 0), textcoords="offset points", xytext=(6, -12))
    ax.scatter(*mean, marker="x", s=60, color="k")
    ax.annotate("modality mean m", mean.tolist(), textcoords="offset points", xytext=(6, 6))
    for alpha, color in ((0.0, "tab:red"), (1.0, "tab:blue"), (2.0, "tab:green")):
        path = vslerp.vslerp(a, b, thetas, alpha, mean)  # (50, 2)
        label = "SLERP (α = 0)" if alpha == 0 else f"vSLERP α = {alpha:g} (Eq. 12)"
        ax.plot(*path.T, color=color, lw=2, label=label)
    ax.scatter(*torch.stack([a, b]).T, color="k", zorder=3)
    ax.annotate("source a", a.tolist(), textcoords="offset points", xytext=(-30, 8))
    ax.annotate("target b", b.tolist(), textcoords="offset points", xytext=(6, -12))
    ax.set_aspect("equal")
    ax.set_title("θ = 0 → 1 between two raw embeddings: SLERP vs vSLERP")
    ax.legend(loc="lower right", fontsize=8, frameon=False)
    ax.set_xticks([])
    ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(out)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "vslerp_paths.png")
