"""Make the docs' figures from synthetic embeddings, with the package's own functions.

- ``vslerp_paths.png`` (README): SLERP vs vSLERP paths. Two raw "embeddings" a, b on a thin
  ellipsoidal shell centred at m (far from the origin, as CLIP image embeddings are, paper
  §5): plain SLERP (α=0, about the origin) cuts inside the shell, vSLERP with α=1 (Eq. 12:
  SLERP about m) follows it, and α=2 bends further out (``vslerp.vslerp``).
- ``vmix_paths.png`` (docs/pipeline.md): a 3-way mix over the whole weight triangle on the
  same shell: ``vslerp.vmix`` with α=1 (the spherical mean about m) stays on the shell, a
  linear mix Σ wᵢ vᵢ fills the triangle inside it, and α=0 (about the origin) cuts inside too.

    python docs/figures/make_figures.py docs/figures    # writes both into docs/figures
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

import vslerp  # noqa: E402

MEAN = torch.tensor([3.0, 1.5])  # the modality mean m: the shell is off the origin
AXES = torch.tensor([1.3, 1.0])  # an ellipse, not a circle


def shell_cloud() -> torch.Tensor:
    """(400, 2) raw "embeddings" on a thin elliptical shell about ``MEAN``."""
    gen = torch.Generator().manual_seed(0)
    angles = torch.rand(400, generator=gen) * 2 * torch.pi
    radius = 1.0 + 0.04 * torch.randn(400, generator=gen)
    return torch.stack([angles.cos(), angles.sin()], 1) * AXES * radius[:, None] + MEAN


def on_shell(angle: float) -> torch.Tensor:
    """The point of the shell at ``angle`` (radians) about the mean, (2,)."""
    return AXES * torch.tensor([torch.cos(torch.tensor(angle)), torch.sin(torch.tensor(angle))]) + MEAN


def vslerp_paths(out) -> Path:
    """SLERP vs vSLERP between two raw embeddings (the README's figure)."""
    mean = MEAN
    cloud = shell_cloud()
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
    plt.close(fig)
    return Path(out)


def vmix_paths(out) -> Path:
    """A 3-way mix of raw embeddings over the weight triangle: vmix (α = 1, α = 0) vs linear."""
    inputs = torch.stack([on_shell(2.4), on_shell(0.9), on_shell(-0.6)]).double()  # (3, 2)
    steps = 12
    weights = torch.tensor([[i, j, steps - i - j] for i in range(steps + 1)
                            for j in range(steps + 1 - i)], dtype=torch.float64) / steps  # (91, 3)
    t = torch.linspace(0, 1, 60, dtype=torch.float64)[:, None]
    zero = torch.zeros_like(t)
    edges = [torch.cat(e, 1) for e in ((1 - t, t, zero), (zero, 1 - t, t), (t, zero, 1 - t))]
    colors = weights.clamp(0, 1).numpy()  # each mix coloured by its weights (RGB)

    fig, ax = plt.subplots(figsize=(7.6, 4.0), dpi=100)
    ax.scatter(*shell_cloud().T, s=4, color="0.8", label="image embeddings (raw)")
    ax.scatter([0], [0], marker="+", s=80, color="k")
    ax.annotate("origin", (0, 0), textcoords="offset points", xytext=(6, -12))
    ax.scatter(*MEAN, marker="x", s=60, color="k")
    ax.annotate("m", MEAN.tolist(), textcoords="offset points", xytext=(-4, -16))
    methods = (("linear mix Σ wᵢ vᵢ", "s", lambda w: w @ inputs),
               ("vmix α = 0 (about the origin)", "^", lambda w: vslerp.vmix(inputs, w, 0.0, MEAN)),
               ("vmix α = 1 (about m)", "o", lambda w: vslerp.vmix(inputs, w, 1.0, MEAN)))
    for label, marker, mix in methods:
        for edge in edges:  # the triangle's edges: two-input mixes (vmix: vSLERP paths)
            ax.plot(*mix(edge).T, color="0.35", lw=0.8)
        ax.scatter(*mix(weights).T, s=14, c=colors, marker=marker, edgecolors="none", label=label)
    ax.scatter(*inputs.T, s=50, color="k", zorder=3)
    for k, point in enumerate(inputs):
        ax.annotate(f"v{k + 1}", point.tolist(), textcoords="offset points", xytext=(6, 4))
    ax.set_aspect("equal")
    ax.set_title("A 3-way mix over all weights (colour = the weights): vmix vs a linear mix",
                 fontsize=10)
    legend = ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False)
    for handle in legend.legend_handles[1:]:
        handle.set_color("0.3")  # a marker per method; the colours are the weights
    ax.set_xticks([])
    ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(out, bbox_inches="tight")  # the legend is outside the axes
    plt.close(fig)
    return Path(out)


def main(out_dir: str) -> None:
    folder = Path(out_dir)
    vslerp_paths(folder / "vslerp_paths.png")
    vmix_paths(folder / "vmix_paths.png")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else ".")
