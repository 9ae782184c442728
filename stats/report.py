"""The paper's geometry report (§4–6) from stored image–caption embeddings.

Pure functions on raw embeddings — image ``(Ni, D)``, text ``(Nt, D)``, pairs ``(P, 2)`` —
built on the core measures of :mod:`vslerp` (separability Eq. 5, ODD Eq. 6, thin shell,
offsets, exact conformity Eq. 10 and its estimate Eq. 11), plus the CLIP loss of Eq. 7–8
under the mean shift of Eq. 9, streamed over row chunks so that 25,000 pairs need only
O(chunk·P) memory, never a P×P matrix. :func:`geometry_report` gathers everything into one
JSON-able dict; :func:`write_report` writes ``report.json``, ``report.md`` and the figures.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from vslerp import (
    MomentAccumulator,
    conformity,
    conformity_fit,
    cosine_to_mean,
    exact_conformity_coefficients,
    off_diagonal_dominance,
    offset_ratio,
    separability,
    thin_shell,
    top_features,
)

from .outputs import atomic_write

__all__ = [
    "DEFAULT_ALPHAS",
    "clip_loss",
    "conformity_estimates",
    "geometry_report",
    "histogram",
    "kl_divergence",
    "loss_vs_alpha",
    "conformity_kl_vs_alpha",
    "one_pair_per_image",
    "svm_two_features",
    "write_report",
]

DEFAULT_ALPHAS = tuple(round(-1.0 + 0.1 * i, 10) for i in range(21))  # −1, −0.9, …, 1
_F64 = torch.float64
_SCATTER_POINTS = 2000  # points kept per modality for scatter plots in report.json


# -- small helpers ----------------------------------------------------------------------
def _matrix(name: str, x) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 2 or x.shape[0] < 2 or x.shape[1] < 2:
        raise ValueError(f"{name} must be (N, D) with N ≥ 2 and D ≥ 2, got shape {tuple(x.shape)}")
    return x if x.is_floating_point() else x.float()


def _unit(x: torch.Tensor) -> torch.Tensor:
    """Rows of x (N, D) scaled to unit norm, float32."""
    x = x.float()
    return x / torch.linalg.vector_norm(x, dim=1, keepdim=True)


def _subsample(n: int, k: int, seed: int) -> torch.Tensor:
    """Up to k sorted row indices out of n, reproducible from ``seed``."""
    if n <= k:
        return torch.arange(n)
    gen = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=gen)[:k].sort().values


def histogram(values: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """Counts (B,) float64 of ``values`` (N,) in bins ``edges`` (B+1,); outside values go to
    the end bins."""
    values = values.to(_F64).clamp(float(edges[0]), float(edges[-1]))
    idx = torch.bucketize(values, edges.to(_F64), right=True) - 1
    idx = idx.clamp(0, edges.numel() - 2)
    return torch.bincount(idx, minlength=edges.numel() - 1).to(_F64)


def kl_divergence(p_samples: torch.Tensor, q_samples: torch.Tensor, *, bins: int = 100,
                  pseudo_count: float = 0.5) -> float:
    """KL(P‖Q) in nats between the distributions of two 1-D samples (paper Fig. 11).

    Both are histogrammed on ``bins`` shared equal-width bins spanning their joint range;
    each bin gets ``pseudo_count`` added (additive smoothing) so empty bins stay finite.
    ≥ 0, and exactly 0 for identical samples. The value depends on ``bins``.
    """
    p_samples = torch.as_tensor(p_samples).flatten().to(_F64)
    q_samples = torch.as_tensor(q_samples).flatten().to(_F64)
    if p_samples.numel() == 0 or q_samples.numel() == 0:
        raise ValueError("kl_divergence needs non-empty samples")
    if not isinstance(bins, int) or bins < 1:
        raise ValueError(f"bins must be a positive int, got {bins!r}")
    if pseudo_count <= 0:
        raise ValueError(f"pseudo_count must be > 0, got {pseudo_count}")
    lo = float(torch.minimum(p_samples.min(), q_samples.min()))
    hi = float(torch.maximum(p_samples.max(), q_samples.max()))
    if hi <= lo:
        hi = lo + 1e-12
    edges = torch.linspace(lo, hi, bins + 1, dtype=_F64)
    p = histogram(p_samples, edges) + pseudo_count
    q = histogram(q_samples, edges) + pseudo_count
    p, q = p / p.sum(), q / q.sum()
    return max(float((p * (p / q).log()).sum()), 0.0)


def one_pair_per_image(pairs: torch.Tensor, *, max_pairs: int | None = None,
                       seed: int = 0) -> torch.Tensor:
    """The first caption of each image (COCO has ~5): (P', 2) int64, a proper contrastive
    batch with exactly one positive per row and column; subsampled to ``max_pairs``."""
    if not isinstance(pairs, torch.Tensor) or pairs.ndim != 2 or pairs.shape[1] != 2:
        raise ValueError(f"pairs must be (P, 2), got {getattr(pairs, 'shape', pairs)!r}")
    pairs = pairs.long()[torch.argsort(pairs[:, 1].long(), stable=True)]  # caption order
    keep, images, texts = [], set(), set()
    for row, (img, txt) in enumerate(pairs.tolist()):
        if img not in images and txt not in texts:  # first caption of each image, once
            images.add(img)
            texts.add(txt)
            keep.append(row)
    pairs = pairs[torch.tensor(keep, dtype=torch.int64)]
    if max_pairs is not None and pairs.shape[0] > max_pairs:
        pairs = pairs[_subsample(pairs.shape[0], max_pairs, seed)]
    return pairs


# -- CLIP loss, Eq. 7–9 -----------------------------------------------------------------
def clip_loss(image: torch.Tensor, text: torch.Tensor, *, logit_scale: float = 100.0,
              chunk_size: int = 1024) -> dict[str, float]:
    """Symmetric CLIP loss of matched rows (paper Eq. 7) and its split (Eq. 8).

    image, text: (P, D) raw embeddings, row j of each a matching pair. Logits
    s·cos(t_j, i_k) with s = ``logit_scale`` (= 1/τ). Per pair,
    ℓ_j = ½[LSE_k(l_jk) − l_jj] + ½[LSE_k(l_kj) − l_jj]; ``total`` = mean ℓ_j,
    ``alignment`` = −E[l_jj] and ``uniformity`` = E[½ LSE_row + ½ LSE_col], so
    total = alignment + uniformity (the paper writes −alignment with alignment = E[l_jj]).
    A pair is *correct* when its caption is the arg-max in the image's row and its image
    the arg-max in the caption's column; ``correct`` / ``misclassified`` are mean ℓ_j over
    those pairs (None when a group is empty: accuracy 0 % or 100 %), ``accuracy`` their share.

    Streams over ``chunk_size`` image rows: memory O(chunk·P), never the P×P matrix;
    column log-sum-exp and arg-max are merged chunk by chunk. Reductions in float64.
    """
    image = _matrix("image", image)
    text = _matrix("text", text)
    if image.shape != text.shape:
        raise ValueError(f"image and text must have the same shape, got {tuple(image.shape)} "
                         f"and {tuple(text.shape)}")
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    if not (isinstance(logit_scale, (int, float)) and math.isfinite(logit_scale) and logit_scale > 0):
        raise ValueError(f"logit_scale must be a positive number, got {logit_scale!r}")
    n = image.shape[0]
    image_unit = _unit(image)  # (P, D)
    text_unit = _unit(text)  # (P, D)
    diag = torch.empty(n, dtype=_F64)  # l_jj
    row_lse = torch.empty(n, dtype=_F64)  # LSE over captions for each image
    row_ok = torch.empty(n, dtype=torch.bool)
    col_lse = torch.full((n,), -math.inf, dtype=_F64)  # running LSE over images per caption
    col_max = torch.full((n,), -math.inf, dtype=torch.float32)
    col_arg = torch.zeros(n, dtype=torch.int64)
    for start in range(0, n, chunk_size):
        stop = min(start + chunk_size, n)
        logits = (image_unit[start:stop] @ text_unit.T) * logit_scale  # (c, P) float32
        rows = torch.arange(start, stop)
        diag[start:stop] = logits[rows - start, rows].to(_F64)
        row_ok[start:stop] = logits.argmax(dim=1) == rows
        chunk_max, chunk_arg = logits.max(dim=0)  # (P,)
        logits = logits.to(_F64)  # reductions in float64; the float32 copy is released
        row_lse[start:stop] = torch.logsumexp(logits, dim=1)
        col_lse = torch.logaddexp(col_lse, torch.logsumexp(logits, dim=0))
        del logits
        better = chunk_max > col_max  # first arg-max wins ties, as argmax does
        col_max = torch.where(better, chunk_max, col_max)
        col_arg = torch.where(better, chunk_arg + start, col_arg)
    per_pair = 0.5 * (row_lse - diag) + 0.5 * (col_lse - diag)  # (P,)
    correct = row_ok & (col_arg == torch.arange(n))

    def _mean(mask):  # None, not NaN, for an empty group
        return float(per_pair[mask].mean()) if bool(mask.any()) else None

    return {"total": float(per_pair.mean()), "alignment": float(-diag.mean()),
            "uniformity": float((0.5 * row_lse + 0.5 * col_lse).mean()),
            "correct": _mean(correct), "misclassified": _mean(~correct),
            "accuracy": float(correct.double().mean()), "pairs": n}


def loss_vs_alpha(image: torch.Tensor, text: torch.Tensor, image_mean: torch.Tensor,
                  alphas=DEFAULT_ALPHAS, *, logit_scale: float = 100.0,
                  chunk_size: int = 1024) -> list[dict[str, float]]:
    """:func:`clip_loss` of (image − α·m, text) for each α (paper Eq. 9, Fig. 6).

    image, text: (P, D) matched rows; image_mean m: (D,) raw image mean (of the whole set).
    Returns one dict per α with the keys of :func:`clip_loss` plus ``alpha``.
    """
    image_mean = image_mean.to(torch.float32)
    return [{"alpha": float(a), **clip_loss(image - float(a) * image_mean, text,
                                            logit_scale=logit_scale, chunk_size=chunk_size)}
            for a in alphas]


def conformity_kl_vs_alpha(image: torch.Tensor, text: torch.Tensor, image_mean: torch.Tensor,
                           alphas=DEFAULT_ALPHAS, *, bins: int = 100) -> list[dict[str, float]]:
    """KL(image ‖ text) of the exact conformity distributions (Eq. 10) as the images are
    shifted v' = v − α·m (Eq. 9; paper Fig. 11, KL ≈ 0.14 at α = 0 for COCO ViT-B/32).

    image (Ni, D), text (Nt, D) raw; image_mean (D,). Conformity within each modality, in
    O(N·D) by the core; KL by :func:`kl_divergence` with ``bins`` shared bins.
    """
    text_conf = conformity(text)
    image_mean = image_mean.to(torch.float32)
    out = []
    for a in alphas:
        image_conf = conformity(image - float(a) * image_mean)
        out.append({"alpha": float(a), "kl": kl_divergence(image_conf, text_conf, bins=bins),
                    "image_mean_conformity": float(image_conf.mean()),
                    "text_mean_conformity": float(text_conf.mean())})
    return out


# -- conformity, §6.1 -------------------------------------------------------------------
def conformity_estimates(x: torch.Tensor, acc: MomentAccumulator) -> dict:
    """Exact conformity (Eq. 10) vs its estimate from a mean (Eq. 11) for one modality.

    x (N, D) raw, ``acc`` its moments. Fits both regression directions against cos to the
    raw mean m and to the mean of unit vectors μ̂; ``exact_identity`` is a = N‖μ̂‖/(N−1),
    b = −1/(N−1) (r = 1 by construction); ``max_abs_error_identity`` checks it numerically.
    When no line can be fitted (e.g. N = 2: both conformities are equal) ``raw_mean`` and
    ``unit_mean`` are None and ``degenerate`` says why; everything else is still given.
    Also returns (under ``_samples``) the tensors for plots: conformity, cos_raw, cos_unit.
    """
    conf = conformity(x)
    cos_raw = cosine_to_mean(x, acc.mean)
    cos_unit = cosine_to_mean(x, acc.mean_unit)
    ident = exact_conformity_coefficients(acc.count, acc.mean_unit)
    err = (ident.a * cos_unit.to(_F64) + ident.b - conf.to(_F64)).abs().max()

    def _fit(cos):
        fit = conformity_fit(cos, conf)
        return {"conformity_from_cos": vars(fit.conformity_from_cos),
                "cos_from_conformity": vars(fit.cos_from_conformity)}

    try:
        fits, degenerate = {"raw_mean": _fit(cos_raw), "unit_mean": _fit(cos_unit)}, None
    except ValueError as fit_error:  # constant conformity or cosine: no line through it
        fits = {"raw_mean": None, "unit_mean": None}
        why = ("both conformities are equal" if x.shape[0] == 2
               else f"the values are constant ({fit_error})")
        degenerate = f"no regression line with N = {x.shape[0]}: {why}"
    return {**fits, "degenerate": degenerate,
            "exact_identity": vars(ident), "max_abs_error_identity": float(err),
            "mean_conformity": float(conf.mean()), "std_conformity": float(conf.std()),
            "_samples": {"conformity": conf, "cos_raw": cos_raw, "cos_unit": cos_unit}}


# -- §4: separability and SVM -----------------------------------------------------------
def svm_two_features(image: torch.Tensor, text: torch.Tensor, features: list[int], *,
                     max_points: int = 20000, seed: int = 0) -> dict:
    """Linear SVM (scikit-learn ``LinearSVC``) separating image from text rows using only
    the two ``features`` (paper §4: 100 % on COCO). Training accuracy, as the paper reports,
    on up to ``max_points`` rows per modality. Returns accuracy, the boundary w·x + b = 0
    (in the raw feature units) and the fitted points' count."""
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    if len(features) != 2:
        raise ValueError(f"need exactly two features, got {features}")
    img = image[_subsample(image.shape[0], max_points, seed)][:, features].to(_F64).numpy()
    txt = text[_subsample(text.shape[0], max_points, seed + 1)][:, features].to(_F64).numpy()
    import numpy as np

    x = np.concatenate([img, txt])
    y = np.concatenate([np.ones(len(img)), np.zeros(len(txt))])
    scaler = StandardScaler().fit(x)
    svm = LinearSVC(C=1.0, dual="auto", max_iter=20000, random_state=seed)
    svm.fit(scaler.transform(x), y)
    accuracy = float(svm.score(scaler.transform(x), y))
    w = svm.coef_[0] / scaler.scale_  # back to raw units
    b = float(svm.intercept_[0] - (svm.coef_[0] * scaler.mean_ / scaler.scale_).sum())
    return {"features": [int(f) for f in features], "accuracy": accuracy,
            "weights": [float(v) for v in w], "bias": b, "points": int(len(x))}


def _modality_geometry(x: torch.Tensor, acc: MomentAccumulator, bins: int) -> dict:
    cov = acc.covariance()
    var = torch.diagonal(cov).clamp_min(0)
    std = var.sqrt()
    shell = thin_shell(x, acc.mean)
    norms = torch.linalg.vector_norm(x.to(_F64) - acc.mean, dim=1)  # y = ‖v − m‖, (N,)
    edges = torch.linspace(float(norms.min()), float(norms.max()) + 1e-12, bins + 1, dtype=_F64)
    odd = off_diagonal_dominance(cov) if bool((var > 0).all()) else None
    sorted_var = var.sort(descending=True).values
    share = sorted_var.cumsum(0) / sorted_var.sum()
    return {
        "count": acc.count,
        "thin_shell": shell,
        "offset": offset_ratio(acc.mean, std),
        "mean_norm": float(torch.linalg.vector_norm(acc.mean)),
        "std_norm": float(torch.linalg.vector_norm(std)),
        "variance": {"max": float(var.max()), "median": float(var.median()),
                     "min": float(var.min()), "max_over_median": float(var.max() / var.median())
                     if var.median() > 0 else float("inf"),
                     "features_for_half_variance": int((share < 0.5).sum()) + 1,
                     "features_for_90pct_variance": int((share < 0.9).sum()) + 1,
                     "values": var.tolist()},
        "odd": None if odd is None else {
            "mean": float(odd.mean()), "median": float(odd.median()), "max": float(odd.max()),
            "share_above_1": float((odd > 1).double().mean()), "values": odd.tolist()},
        "_norm_hist": {"edges": edges.tolist(), "counts": histogram(norms, edges).tolist()},
    }


# -- everything -------------------------------------------------------------------------
def geometry_report(emb, *, alphas=DEFAULT_ALPHAS, logit_scale: float = 100.0,
                    max_pairs: int | None = None, chunk_size: int = 1024, top_k: int = 10,
                    bins: int = 100, seed: int = 0) -> dict:
    """The paper's §4–6 measurements of stored embeddings, as one JSON-able dict.

    ``emb``: anything with ``.image`` (Ni, D), ``.text`` (Nt, D) raw float tensors,
    ``.pairs`` (P, 2) int64 (image row, text row) and optionally ``.metadata`` — e.g.
    :func:`vslerp.stats.read_embeddings`. ``alphas``: the shifts of Eq. 9;
    ``logit_scale``: 1/τ of Eq. 7 (CLIP's trained value is 100; the Kandinsky prior repo
    ships none); ``max_pairs``: subsample the loss batch (one caption per image);
    ``chunk_size``: image rows per logits chunk. Keys: ``separability``, ``svm``,
    ``modalities`` (thin shell, variance tail, ODD, offset per modality), ``conformity``,
    ``loss_vs_alpha``, ``kl_vs_alpha``, ``notes`` (what was left out and why: no pairs,
    an empty loss group, a degenerate fit) and, for the figures, ``plots``. Never NaN:
    undefined values are None.
    """
    image = _matrix("emb.image", getattr(emb, "image", None))
    text = _matrix("emb.text", getattr(emb, "text", None))
    if image.shape[1] != text.shape[1]:
        raise ValueError(f"image and text embeddings have different dims "
                         f"({image.shape[1]} vs {text.shape[1]})")
    alphas = [float(a) for a in alphas]
    if not alphas or not all(math.isfinite(a) for a in alphas):
        raise ValueError(f"alphas must be a non-empty list of finite numbers, got {alphas}")
    if max_pairs is not None and (not isinstance(max_pairs, int) or max_pairs < 2):
        raise ValueError(f"max_pairs must be an int ≥ 2, got {max_pairs!r}")
    pairs = one_pair_per_image(getattr(emb, "pairs", torch.zeros(0, 2, dtype=torch.int64)),
                               max_pairs=max_pairs, seed=seed)
    acc = {"image": MomentAccumulator(image.shape[1]).update(image),
           "text": MomentAccumulator(text.shape[1]).update(text)}
    data = {"image": image, "text": text}

    sep = separability(acc["image"].mean, acc["image"].variance(),
                       acc["text"].mean, acc["text"].variance())
    finite = torch.where(torch.isfinite(sep), sep, torch.finfo(_F64).max)
    tags = top_features(finite, top_k)
    svm = svm_two_features(image, text, tags[:2], seed=seed)

    modalities, plots = {}, {"norm_hist": {}, "conformity": {}, "features": {}}
    conf, exact, notes = {}, {}, []
    for name in ("image", "text"):
        geo = _modality_geometry(data[name], acc[name], bins)
        plots["norm_hist"][name] = geo.pop("_norm_hist")
        modalities[name] = geo
        est = conformity_estimates(data[name], acc[name])
        samples = est.pop("_samples")
        exact[name] = samples["conformity"]  # (N,) exact conformity at α = 0
        keep = _subsample(data[name].shape[0], _SCATTER_POINTS, seed)
        plots["conformity"][name] = {k: v[keep].tolist() for k, v in samples.items()}
        conf[name] = est
        if est["degenerate"]:
            notes.append(f"{name} conformity: {est['degenerate']}; the fits are left out")
    # image vs text conformity distributions at α = 0 (paper Fig. 10–11), for the KL figure
    lo = float(min(exact["image"].min(), exact["text"].min()))
    hi = float(max(exact["image"].max(), exact["text"].max()))
    shown = min(bins, max(10, min(image.shape[0], text.shape[0]) // 10))
    edges = torch.linspace(lo, hi if hi > lo else lo + 1e-6, shown + 1, dtype=_F64)
    plots["conformity_hist"] = {"edges": edges.tolist(),
                                "image": histogram(exact["image"], edges).tolist(),
                                "text": histogram(exact["text"], edges).tolist(),
                                "kl": kl_divergence(exact["image"], exact["text"], bins=bins)}
    for f in tags[:3]:
        lo = float(min(image[:, f].min(), text[:, f].min()))
        hi = float(max(image[:, f].max(), text[:, f].max())) + 1e-12
        edges = torch.linspace(lo, hi, bins + 1, dtype=_F64)
        plots["features"][str(f)] = {
            "edges": edges.tolist(),
            "image": histogram(image[:, f], edges).tolist(),
            "text": histogram(text[:, f], edges).tolist(),
            "kl": kl_divergence(image[:, f], text[:, f], bins=bins)}
    pts = {n: data[n][_subsample(data[n].shape[0], _SCATTER_POINTS, seed)][:, tags[:2]].tolist()
           for n in data}
    plots["svm_points"] = pts

    if pairs.shape[0] >= 2:
        img_p, txt_p = image[pairs[:, 0]], text[pairs[:, 1]]
        loss = loss_vs_alpha(img_p, txt_p, acc["image"].mean, alphas,
                             logit_scale=logit_scale, chunk_size=chunk_size)
        for group, empty_when in (("correct", "0 %"), ("misclassified", "100 %")):
            missing = [r["alpha"] for r in loss if r[group] is None]
            if missing:
                notes.append(f"no {group} pairs at α = {', '.join(f'{a:g}' for a in missing)} "
                             f"(accuracy {empty_when}): that loss is undefined there (null / —)")
    else:
        loss = []
        notes.append(_no_loss_reason(int(pairs.shape[0])))
    kl = conformity_kl_vs_alpha(image, text, acc["image"].mean, alphas, bins=bins)
    meta = dict(getattr(emb, "metadata", None) or {})
    return {
        "metadata": {k: meta.get(k) for k in ("model_id", "encoder_fingerprint", "dim",
                                              "dataset") if k in meta},
        "settings": {"alphas": alphas, "logit_scale": logit_scale, "max_pairs": max_pairs,
                     "chunk_size": chunk_size, "top_k": top_k, "bins": bins, "seed": seed},
        "counts": {"image": int(image.shape[0]), "text": int(text.shape[0]),
                   "pairs": int(getattr(emb, "pairs", pairs).shape[0]),
                   "loss_pairs": int(pairs.shape[0]), "dim": int(image.shape[1])},
        "separability": {"top_features": tags, "top_scores": [float(sep[f]) for f in tags],
                         "sorted": sep.sort(descending=True).values.tolist()},
        "svm": svm,
        "modalities": modalities,
        "conformity": conf,
        "loss_vs_alpha": loss,
        "kl_vs_alpha": kl,
        "notes": notes,
        "plots": plots,
    }


def _no_loss_reason(pairs: int) -> str:
    if pairs == 0:
        return ("no CLIP loss vs α (Eq. 7–9): the embeddings hold no image–caption pairs — "
                "captions are paired with images only through the image ids of a COCO captions "
                "json (`stats compute --images DIR --captions captions.json`), not for a plain "
                "image folder or a caption text file")
    return (f"no CLIP loss vs α (Eq. 7–9): only {pairs} image–caption pair, and a contrastive "
            "batch needs at least 2")


# -- writing ----------------------------------------------------------------------------
def _json_safe(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


_UNDEFINED = "—"  # what report.md shows for a value that does not exist (JSON null)


def _fmt(value, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return _UNDEFINED
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _markdown(report: dict, figures: list[str]) -> str:
    c, m = report["counts"], report["modalities"]
    lines = ["# Geometry report (Levi & Gilboa §4–6)", ""]
    meta = report.get("metadata", {})
    if meta:
        lines += [", ".join(f"{k}: `{v}`" for k, v in meta.items()), ""]
    lines += [f"{c['image']} images, {c['text']} captions, {c['pairs']} pairs "
              f"({c['loss_pairs']} in the loss batch, one caption per image), D = {c['dim']}.", ""]
    sep = report["separability"]
    svm = report["svm"]
    lines += ["## Modality tags (Eq. 5)", "",
              "| feature | separability |", "|---:|---:|"]
    lines += [f"| {f} | {_fmt(s, 2)} |" for f, s in zip(sep["top_features"], sep["top_scores"], strict=False)]
    lines += ["", f"Linear SVM on features {svm['features']}: accuracy "
              f"**{100 * svm['accuracy']:.2f} %** ({svm['points']} points; paper: 100 %).", ""]
    lines += ["## Thin shell, ellipsoid, offset (§4)", "",
              "| | μ_norm = E‖v−m‖ | var(y) | √E‖v−m‖² | rel. error | ‖m‖/‖σ‖ | var max/median "
              "| features for 50 % var | ODD median | ODD > 1 |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name in ("image", "text"):
        g = m[name]
        ts, var, odd = g["thin_shell"], g["variance"], g["odd"] or {}
        lines.append(f"| {name} | {_fmt(ts['mu_norm'])} | {_fmt(ts['var_y'])} | {_fmt(ts['rms'])} | "
                     f"{100 * ts['rel_error']:.3f} % | {_fmt(g['offset'], 3)} | "
                     f"{_fmt(var['max_over_median'], 1)} | {var['features_for_half_variance']} | "
                     f"{_fmt(odd.get('median'), 2)} | "
                     f"{_fmt(100 * odd['share_above_1'], 1) + ' %' if odd else _UNDEFINED} |")
    lines += ["", "Paper (COCO images, ViT-B/32): 7.5873, 0.1914, 7.6007, 0.18 %; offsets 0.94 "
              "image, 1.03 text.", "",
              "## Conformity: exact (Eq. 10) vs estimated (Eq. 11)", "",
              "| | mean | cos to | Ĉ = a·cos + b: a | b | r | cos = a·C + b: a | b |",
              "|---|---:|---|---:|---:|---:|---:|---:|"]
    for name in ("image", "text"):
        e = report["conformity"][name]
        for key, label in (("raw_mean", "raw m"), ("unit_mean", "μ̂")):
            fits = e[key] or {}
            f1 = fits.get("conformity_from_cos") or {}
            f2 = fits.get("cos_from_conformity") or {}
            lines.append(f"| {name} | {_fmt(e['mean_conformity'])} | {label} | "
                         f"{_fmt(f1.get('a'))} | {_fmt(f1.get('b'))} | {_fmt(f1.get('r'), 6)} | "
                         f"{_fmt(f2.get('a'))} | {_fmt(f2.get('b'))} |")
        ident = e["exact_identity"]
        lines.append(f"| {name} | | exact identity | {_fmt(ident['a'])} | {_fmt(ident['b'], 6)} | "
                     f"1 (max error {e['max_abs_error_identity']:.1e}) | | |")
    lines += ["", "Paper: r = 0.9998; images a = 1.461, b = −0.002 (cos regressed on C)."]
    for name in ("image", "text"):
        if report["conformity"][name].get("degenerate"):
            lines += ["", f"{_UNDEFINED} for {name}: {report['conformity'][name]['degenerate']}, "
                      "so the fits are undefined; the exact identity still holds."]
    lines += [""]
    loss = report["loss_vs_alpha"]
    s = report["settings"]
    lines += [f"## CLIP loss vs mean shift (Eq. 7–9), logit scale {s['logit_scale']:g}", ""]
    if loss:
        lines += ["| α | total | alignment | uniformity | correct | misclassified | accuracy |",
                  "|---:|---:|---:|---:|---:|---:|---:|"]
        lines += [f"| {r['alpha']:+.2f} | {_fmt(r['total'])} | {_fmt(r['alignment'])} | "
                  f"{_fmt(r['uniformity'])} | {_fmt(r['correct'])} | {_fmt(r['misclassified'])} | "
                  f"{100 * r['accuracy']:.1f} % |" for r in loss]
        best = min(loss, key=lambda r: r["total"])
        lines += ["", f"Lowest total loss at α = {best['alpha']:+.2f} (paper: near 0). "
                  "alignment = −E[s·cos(t_j, i_j)], so total = alignment + uniformity."]
        if any(r["correct"] is None or r["misclassified"] is None for r in loss):
            lines += ["", f"{_UNDEFINED}: no pairs in that group at that α (accuracy 0 % leaves "
                      "no correctly classified pair, 100 % no misclassified one), so its mean "
                      "loss is undefined (null in report.json)."]
        lines += [""]
    else:
        reason = _no_loss_reason(report["counts"]["loss_pairs"])
        lines += [reason[0].upper() + reason[1:] + ".", ""]
    kl = report["kl_vs_alpha"]
    best = min(kl, key=lambda r: r["kl"])
    at0 = min(kl, key=lambda r: abs(r["alpha"]))
    lines += ["## Image vs text conformity distributions vs mean shift (Fig. 11)", "",
              "| α | KL(image ‖ text) | mean C image | mean C text |", "|---:|---:|---:|---:|"]
    lines += [f"| {r['alpha']:+.2f} | {_fmt(r['kl'])} | {_fmt(r['image_mean_conformity'])} | "
              f"{_fmt(r['text_mean_conformity'])} |" for r in kl]
    lines += ["", f"KL at α = {at0['alpha']:+.2f}: {_fmt(at0['kl'])}; lowest at α = "
              f"{best['alpha']:+.2f} (paper: ≈ 0.14 at α = 0, lowest near 0). "
              f"{s['bins']} shared bins, pseudo-count 0.5.", "", "## Figures", ""]
    lines += [f"![{f}]({f})" for f in figures]
    return "\n".join(lines) + "\n"


def write_report(report: dict, out_dir: str | Path, *, overwrite: bool = False) -> list[Path]:
    """Write ``report.json``, ``report.md`` and the figures of :func:`geometry_report`'s
    dict into ``out_dir`` (created), each atomically. Existing report files raise
    ``FileExistsError`` unless ``overwrite``. Returns the paths written."""
    from . import plots as _plots

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out-dir {out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    if not overwrite:
        clash = [p.name for p in (out / "report.json", out / "report.md") if p.exists()]
        if clash:
            raise FileExistsError(f"{out} already holds {', '.join(clash)}; pass --overwrite "
                                  "to replace them")
    written = []
    for name, figure in _plots.report_figures(report):
        path = out / name
        atomic_write(path, lambda tmp, fig=figure: _plots.save(fig, tmp))
        written.append(path)
    path = out / "report.json"
    atomic_write(path, lambda tmp: Path(tmp).write_text(
        json.dumps(_json_safe(report), indent=1), encoding="utf-8"))
    written.append(path)
    path = out / "report.md"
    text = _markdown(report, [p.name for p in written if p.suffix == ".png"])
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    written.append(path)
    return written
