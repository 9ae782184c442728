"""The paper's geometry report (§4–6) from stored image–caption embeddings: its numbers.

:func:`geometry_report` gathers the core's measures of raw embeddings — image ``(Ni, D)``,
text ``(Nt, D)``, pairs ``(P, 2)`` — into one JSON-able dict: separability (Eq. 5), ODD
(Eq. 6), thin shell and offsets (§4), exact conformity (Eq. 10) against its estimate (Eq. 11,
by :func:`vslerp.stats.scoring.estimated_conformity`), the CLIP loss under the mean shift
(Eq. 7–9) and the conformity KL (Fig. 11), plus a 2-feature linear SVM (scikit-learn) and,
given a checkpoint's image mean (a prior's ``clip_mean``, Stable unCLIP's normaliser),
:func:`compare_means` of the embeddings' mean with it.
:func:`write_report` (from :mod:`vslerp.stats.report_files`) writes it out.

``loss_vs_alpha`` and ``conformity_kl_vs_alpha`` are the core's functions
(:mod:`vslerp.contrastive`, :mod:`vslerp.divergence`) as the report's rows (plain dicts).
"""

from __future__ import annotations

import math

import torch

import vslerp
from vslerp import (
    MomentAccumulator,
    conformity,
    conformity_fit,
    cosine_to_mean,
    histogram,
    off_diagonal_dominance,
    offset_ratio,
    separability,
    thin_shell,
    top_features,
)
from vslerp.defaults import CONFORMITY_EXACT

from .report_files import no_loss_reason, write_report
from .scoring import estimated_conformity
from .statistics_file import ModalityStats

__all__ = [
    "DEFAULT_ALPHAS",
    "compare_means",
    "conformity_estimates",
    "conformity_kl_vs_alpha",
    "geometry_report",
    "loss_vs_alpha",
    "one_pair_per_image",
    "svm_two_features",
    "write_report",
]

DEFAULT_ALPHAS = tuple(round(-1.0 + 0.1 * i, 10) for i in range(21))  # −1, −0.9, …, 1
_F64 = torch.float64
_SCATTER_POINTS = 2000  # points kept per modality for scatter plots in report.json


# -- the core's measures as the report's rows ------------------------------------------------
def loss_vs_alpha(image: torch.Tensor, text: torch.Tensor, image_mean: torch.Tensor,
                  alphas=DEFAULT_ALPHAS, *, logit_scale: float = 100.0,
                  chunk_size: int = 1024) -> list[dict]:
    """:func:`vslerp.clip_loss` of (image − α·m, text) for each α (Eq. 9, Fig. 6), one row per α
    with ``alpha`` added; image, text (P, D) matched rows, image_mean m (D,) raw."""
    alphas = [float(a) for a in alphas]
    rows = vslerp.clip_loss_vs_alpha(image, text, alphas, image_mean, logit_scale=logit_scale,
                                     chunk_size=chunk_size)
    return [{"alpha": a, **r.summary()} for a, r in zip(alphas, rows, strict=True)]


def conformity_kl_vs_alpha(image: torch.Tensor, text: torch.Tensor, image_mean: torch.Tensor,
                           alphas=DEFAULT_ALPHAS, *, bins: int = 100) -> list[dict]:
    """:func:`vslerp.conformity_kl_vs_alpha` (Fig. 11) as one row per α: ``alpha``, ``kl``,
    ``image_mean_conformity``, ``text_mean_conformity``."""
    alphas = [float(a) for a in alphas]
    got = vslerp.conformity_kl_vs_alpha(image, text, alphas, image_mean, bins=bins)
    text_mean = float(got.text_mean_conformity)
    return [{"alpha": a, "kl": float(kl), "image_mean_conformity": float(im),
             "text_mean_conformity": text_mean}
            for a, kl, im in zip(alphas, got.kl.tolist(), got.image_mean_conformity.tolist(),
                                 strict=True)]


# -- small helpers ---------------------------------------------------------------------------
def compare_means(computed: torch.Tensor, checkpoint: torch.Tensor) -> dict:
    """How far a computed image mean (D,) is from a checkpoint's (D,): ``relative_difference``
    ‖m_computed − m_checkpoint‖ / ‖m_checkpoint‖ and ``cosine`` cos(m_computed, m_checkpoint),
    in float64 (None where the checkpoint's mean is zero)."""
    a, b = (torch.as_tensor(v).detach().to("cpu", _F64).reshape(-1) for v in (computed, checkpoint))  # (D,)
    if a.shape != b.shape:
        raise ValueError(f"the means have different dims ({a.shape[0]} vs {b.shape[0]}): another embedding space")
    norm = float(torch.linalg.vector_norm(b))
    if norm == 0.0 or not math.isfinite(norm):
        return {"relative_difference": None, "cosine": None}
    return {"relative_difference": float(torch.linalg.vector_norm(a - b)) / norm,
            "cosine": float(cosine_to_mean(a[None], b)[0])}


def _matrix(name: str, x) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 2 or x.shape[0] < 2 or x.shape[1] < 2:
        raise ValueError(f"{name} must be (N, D) with N ≥ 2 and D ≥ 2, got shape {tuple(x.shape)}")
    return x if x.is_floating_point() else x.float()


def _subsample(n: int, k: int, seed: int) -> torch.Tensor:
    """Up to k sorted row indices out of n, reproducible from ``seed``."""
    if n <= k:
        return torch.arange(n)
    gen = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=gen)[:k].sort().values


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


# -- conformity, §6.1 -----------------------------------------------------------------------
def conformity_estimates(x: torch.Tensor, acc: MomentAccumulator) -> dict:
    """Exact conformity (Eq. 10) vs its estimate from a mean (Eq. 11) for one modality.

    x (N, D) raw, ``acc`` its moments. Fits both regression directions against cos to the
    raw mean m and to the mean of unit vectors μ̂; ``exact_identity`` (``CONFORMITY_EXACT``)
    holds the coefficients a = N‖μ̂‖/(N−1), b = −1/(N−1) (r = 1 by construction) of the
    project's estimator (:func:`vslerp.stats.scoring.estimated_conformity`), and
    ``max_abs_error_identity`` checks that estimator against the exact conformity.
    When no line can be fitted (e.g. N = 2: both conformities are equal) ``raw_mean`` and
    ``unit_mean`` are None and ``degenerate`` says why; everything else is still given.
    Also returns (under ``_samples``) the tensors for plots: conformity, cos_raw, cos_unit.
    """
    conf = conformity(x)  # (N,)
    cos_raw = cosine_to_mean(x, acc.mean)  # (N,)
    cos_unit = cosine_to_mean(x, acc.mean_unit)  # (N,)
    estimate, _, coef = estimated_conformity(x, ModalityStats.from_accumulator(acc))  # (N,)
    err = (estimate.to(_F64) - conf.to(_F64)).abs().max()

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
            CONFORMITY_EXACT: {**coef, "r": 1.0}, "max_abs_error_identity": float(err),
            "mean_conformity": float(conf.mean()), "std_conformity": float(conf.std()),
            "_samples": {"conformity": conf, "cos_raw": cos_raw, "cos_unit": cos_unit}}


# -- §4: separability and SVM ----------------------------------------------------------------
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


# -- everything ------------------------------------------------------------------------------
def geometry_report(emb, *, alphas=DEFAULT_ALPHAS, logit_scale: float = 100.0,
                    max_pairs: int | None = None, chunk_size: int = 1024, top_k: int = 10,
                    bins: int = 100, seed: int = 0, checkpoint_mean=None) -> dict:
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
    undefined values are None. ``checkpoint_mean``: a :class:`~vslerp.stats.Statistics` of a
    checkpoint's image mean (``Statistics.from_prior``, ...): adds ``mean_comparison`` (its
    ``model_id`` and ``source`` and :func:`compare_means` of the embeddings' image mean with it).
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
                                "kl": float(vslerp.kl_divergence(exact["image"], exact["text"], bins=bins))}
    for f in tags[:3]:
        lo = float(min(image[:, f].min(), text[:, f].min()))
        hi = float(max(image[:, f].max(), text[:, f].max())) + 1e-12
        edges = torch.linspace(lo, hi, bins + 1, dtype=_F64)
        plots["features"][str(f)] = {
            "edges": edges.tolist(),
            "image": histogram(image[:, f], edges).tolist(),
            "text": histogram(text[:, f], edges).tolist(),
            "kl": float(vslerp.kl_divergence(image[:, f], text[:, f], bins=bins))}
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
        notes.append(no_loss_reason(int(pairs.shape[0])))
    kl = conformity_kl_vs_alpha(image, text, acc["image"].mean, alphas, bins=bins)
    meta = dict(getattr(emb, "metadata", None) or {})
    extra = {}
    if checkpoint_mean is not None:
        extra["mean_comparison"] = {"model": checkpoint_mean.metadata.get("model_id"),
                                    "source": checkpoint_mean.metadata.get("source"),
                                    **compare_means(acc["image"].mean, checkpoint_mean.image.mean)}
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
        **extra,
        "plots": plots,
    }
