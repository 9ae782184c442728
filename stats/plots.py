"""Figures of the geometry report and of conformity scoring (matplotlib figures, no pyplot).

Each function takes the plain data (lists / dicts from :mod:`vslerp.stats.report`) and
returns a ``matplotlib.figure.Figure``; :func:`save` writes one as PNG and closes it.
Layouts follow the paper's Figs. 2–6, 9, 10 and 11; each title names the figure (and the
panel) it corresponds to. Undefined values (None) are never drawn as numbers.
"""

from __future__ import annotations

__all__ = ["conformity_histogram", "report_figures", "save"]

_COLORS = {"image": "tab:blue", "text": "tab:orange"}


def _figure(ncols: int = 1, nrows: int = 1, size=(6.4, 4.2)):
    # A bare Figure draws and saves with Agg without pyplot: the process's backend is untouched.
    from matplotlib.figure import Figure

    fig = Figure(figsize=(size[0] * ncols, size[1] * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def save(fig, path) -> None:
    """Write ``fig`` as PNG to ``path`` (any name: the format is given explicitly)."""
    fig.savefig(path, format="png", dpi=110)


def _bars(ax, edges, counts, label, color):
    import numpy as np

    edges = np.asarray(edges)
    counts = np.asarray(counts, dtype=float)
    total = counts.sum() * np.diff(edges)
    density = np.divide(counts, total, out=np.zeros_like(counts), where=total > 0)
    ax.stairs(density, edges, fill=True, alpha=0.45, color=color, label=label)
    ax.stairs(density, edges, color=color, linewidth=1)


def _feature_histograms(report):
    feats = report["plots"]["features"]
    fig, axes = _figure(len(feats), 1, size=(4.6, 3.6))
    for ax, (f, h) in zip(axes[0], feats.items(), strict=False):
        for name in ("image", "text"):
            _bars(ax, h["edges"], h[name], name, _COLORS[name])
        ax.set_title(f"feature {f}: KL(image‖text) = {h['kl']:.2f}")
        ax.set_xlabel("raw feature value")
        ax.set_ylabel("density")
        ax.legend()
    fig.suptitle("Modality tags: most separable features (paper Fig. 2, left)")
    return fig


def _separability(report):
    import numpy as np

    sep = np.asarray(report["separability"]["sorted"], dtype=float)
    fig, axes = _figure()
    ax = axes[0, 0]
    ax.plot(np.arange(1, len(sep) + 1), sep, marker=".", markersize=3)
    for rank, (f, s) in enumerate(zip(report["separability"]["top_features"][:5],
                                      report["separability"]["top_scores"][:5], strict=False), start=1):
        ax.annotate(str(f), (rank, s), textcoords="offset points", xytext=(6, 0), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("feature rank")
    ax.set_ylabel("separability |m_i − m_t| / √(var_i + var_t)")
    ax.set_title("Per-feature separability, sorted (Eq. 5, Fig. 3 left)")
    ax.grid(alpha=0.3)
    return fig


def _svm(report):
    import numpy as np

    svm = report["svm"]
    pts = report["plots"]["svm_points"]
    f1, f2 = svm["features"]
    fig, axes = _figure(size=(5.6, 4.8))
    ax = axes[0, 0]
    for name in ("image", "text"):
        p = np.asarray(pts[name])
        ax.scatter(p[:, 0], p[:, 1], s=5, alpha=0.5, color=_COLORS[name], label=name)
    allp = np.concatenate([np.asarray(pts["image"]), np.asarray(pts["text"])])
    w, b = svm["weights"], svm["bias"]
    xs = np.linspace(allp[:, 0].min(), allp[:, 0].max(), 50)
    if abs(w[1]) > 1e-12:
        ax.plot(xs, -(w[0] * xs + b) / w[1], color="k", linewidth=1.5, label="SVM boundary")
        ax.set_ylim(allp[:, 1].min() - 0.05 * np.ptp(allp[:, 1]),
                    allp[:, 1].max() + 0.05 * np.ptp(allp[:, 1]))
    else:
        ax.axvline(-b / w[0], color="k", linewidth=1.5, label="SVM boundary")
    ax.set_xlabel(f"feature {f1}")
    ax.set_ylabel(f"feature {f2}")
    ax.set_title(f"Linear SVM on 2 features: {100 * svm['accuracy']:.2f} % (Fig. 2, right)")
    ax.legend(markerscale=3)
    return fig


def _thin_shell(report):
    fig, axes = _figure(2, 1, size=(4.8, 3.6))
    for ax, name in zip(axes[0], ("image", "text"), strict=False):
        h = report["plots"]["norm_hist"][name]
        ts = report["modalities"][name]["thin_shell"]
        _bars(ax, h["edges"], h["counts"], name, _COLORS[name])
        ax.axvline(ts["mu_norm"], color="k", linestyle="--", linewidth=1,
                   label=f"μ_norm = {ts['mu_norm']:.4g}")
        ax.set_xlim(0, None)
        ax.set_xlabel("‖v − m‖")
        ax.set_ylabel("density")
        ax.set_title(f"{name}: rel. error {100 * ts['rel_error']:.2f} %")
        ax.legend()
    fig.suptitle("Thin shell: no mass near the mean (§4, Eq. 3; Fig. 4, bottom)")
    return fig


def _bins(n: int) -> int:
    return int(min(60, max(10, n // 8)))


def _variance_odd(report):
    import numpy as np

    has_odd = all(report["modalities"][n]["odd"] for n in ("image", "text"))
    fig, axes = _figure(2 if has_odd else 1, 1, size=(5.2, 3.8))
    ax = axes[0, 0]
    for name in ("image", "text"):
        var = np.asarray(report["modalities"][name]["variance"]["values"])
        ax.hist(var, bins=_bins(len(var)), alpha=0.5, color=_COLORS[name], label=name)
    if len(var) >= 256:  # the tail is a handful of features among hundreds
        ax.set_yscale("log")
    ax.set_xlabel("feature variance")
    ax.set_ylabel("features")
    ax.set_title("Feature variance: long tail → ellipsoid (Fig. 5)")
    ax.legend()
    if has_odd:
        ax = axes[0, 1]
        for name in ("image", "text"):
            odd = np.asarray(report["modalities"][name]["odd"]["values"])
            ax.hist(odd, bins=_bins(len(odd)), alpha=0.5, color=_COLORS[name], label=name)
        ax.set_xlabel("off-diagonal dominance Σ_k≠ℓ |C_ℓk| / C_ℓℓ")
        ax.set_ylabel("features")
        ax.set_title("ODD (Eq. 6): > 1 means a tilted ellipsoid")
        ax.legend()
    return fig


def _conformity(report):
    import numpy as np

    fig, axes = _figure(2, 1, size=(4.8, 4.2))
    for ax, name in zip(axes[0], ("image", "text"), strict=False):
        d = report["plots"]["conformity"][name]
        fits = report["conformity"][name]["raw_mean"]
        conf = np.asarray(d["conformity"])
        if fits is None:  # degenerate (e.g. N = 2): show the raw cosines, no line
            est = np.asarray(d["cos_raw"])
            ax.scatter(conf, est, s=12, color=_COLORS[name], label="cos(m, v), no fit")
            ax.set_ylabel("cos(m, v)")
            ax.set_title(f"{name}: no fit (all conformities equal)")
            ax.ticklabel_format(useOffset=False)
        else:
            fit = fits["conformity_from_cos"]
            est = fit["a"] * np.asarray(d["cos_raw"]) + fit["b"]
            ax.scatter(conf, est, s=4, alpha=0.5, color=_COLORS[name])
            lo, hi = min(conf.min(), est.min()), max(conf.max(), est.max())
            ax.plot([lo, hi], [lo, hi], color="k", linewidth=1, label="y = x")
            ax.set_ylabel("estimate Ĉ = a·cos(m, v) + b (Eq. 11)")
            ax.set_title(f"{name}: r = {fit['r']:.5f}")
        ax.set_xlabel("conformity C (Eq. 10, exact)")
        ax.legend()
    fig.suptitle("Conformity vs its estimate from the raw mean (Fig. 9)")
    return fig


def _series(rows, key):
    """Values of ``key`` with None (undefined) as NaN, so matplotlib leaves a gap."""
    return [float("nan") if r[key] is None else r[key] for r in rows]


def _loss(report):
    rows = report["loss_vs_alpha"]
    alphas = [r["alpha"] for r in rows]
    fig, axes = _figure(1, 2, size=(7.2, 3.6))
    ax = axes[0, 0]
    for key in ("total", "alignment", "uniformity"):
        ax.plot(alphas, [r[key] for r in rows], marker=".", label=key)
    ax.set_ylabel("loss")
    ax.set_title(f"CLIP loss vs image-mean shift v' = v − αm (Eq. 7–9, logit scale "
                 f"{report['settings']['logit_scale']:g}; Fig. 6, top)")
    ax.legend()
    ax.grid(alpha=0.3)
    ax = axes[1, 0]
    handles = []
    for key, color in (("total", "tab:blue"), ("correct", "tab:green"),
                       ("misclassified", "tab:red")):
        values = _series(rows, key)
        if all(v != v for v in values):  # NaN everywhere: no such pairs at any α
            handles.append(ax.plot([], [], color=color, linestyle="none", marker="x",
                                   label=f"{key}: no pairs at any α")[0])
            continue
        gaps = any(v != v for v in values)
        handles.append(ax.plot(alphas, values, marker=".", color=color,
                               label=key + (" (gaps: no pairs)" if gaps else ""))[0])
    ax.set_xlabel("α")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    acc_ax = ax.twinx()
    handles += acc_ax.plot(alphas, [100 * r["accuracy"] for r in rows], color="k",
                           linestyle="--", marker=".", label="accuracy (right axis)")
    acc_ax.set_ylabel("accuracy (%)")
    acc_ax.set_ylim(-3, 103)
    ax.set_title("Correctly vs misclassified pairs, and accuracy (Fig. 6, bottom)")
    ax.legend(handles=handles, fontsize=8, loc="best")
    return fig


def _kl(report):
    import numpy as np

    rows = report["kl_vs_alpha"]
    fig, axes = _figure(2, 1, size=(5.2, 4.0))
    ax = axes[0, 0]
    ax.plot([r["alpha"] for r in rows], [r["kl"] for r in rows], marker="o")
    ax.set_xlabel("α (image mean shift v' = v − αm)")
    ax.set_ylabel("KL(image conformity ‖ text conformity)")
    ax.set_title("KL of the conformity distributions vs α (Fig. 11)")
    ax.grid(alpha=0.3)
    ax = axes[0, 1]
    h = report["plots"].get("conformity_hist")
    if h is not None:
        for name in ("image", "text"):
            _bars(ax, h["edges"], h[name], f"{name} ({int(np.sum(h[name]))})", _COLORS[name])
        ax.set_xlabel("conformity C (Eq. 10)")
        ax.set_ylabel("density")
        ax.set_title(f"Conformity distributions at α = 0 (Fig. 10–11)\n"
                     f"KL(image ‖ text) = {h['kl']:.3f}")
        ax.legend()
    return fig


def report_figures(report: dict):
    """Yield ``(file name, Figure)`` for each figure of a geometry report dict."""
    yield "feature_histograms.png", _feature_histograms(report)
    yield "separability.png", _separability(report)
    yield "svm_two_features.png", _svm(report)
    yield "thin_shell.png", _thin_shell(report)
    yield "variance_odd.png", _variance_odd(report)
    yield "conformity_estimate.png", _conformity(report)
    if report["loss_vs_alpha"]:
        yield "loss_vs_alpha.png", _loss(report)
    yield "kl_vs_alpha.png", _kl(report)


def conformity_histogram(scores, reference=None, *, title: str, kl: float | None = None,
                         bins: int = 60):
    """Histogram of estimated conformity ``scores`` (N,), over a ``reference`` sample if
    given (both as densities on shared bins); returns a Figure."""
    import numpy as np

    scores = np.asarray(scores, dtype=float)
    fig, axes = _figure()
    ax = axes[0, 0]
    data = [scores] if reference is None else [scores, np.asarray(reference, dtype=float)]
    lo = min(d.min() for d in data)
    hi = max(d.max() for d in data)
    edges = np.linspace(lo, hi if hi > lo else lo + 1e-6, bins + 1)
    if reference is not None:
        ax.hist(data[1], bins=edges, density=True, alpha=0.45, color="tab:gray",
                label=f"reference ({len(data[1])})")
    ax.hist(scores, bins=edges, density=True, histtype="step", linewidth=1.6,
            color="tab:blue", label=f"scored ({len(scores)})")
    ax.set_xlabel("estimated conformity Ĉ")
    ax.set_ylabel("density")
    ax.set_title(title + (f" — KL = {kl:.3f}" if kl is not None else ""))
    ax.legend()
    return fig
