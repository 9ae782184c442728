"""Writing a geometry report: ``report.json``, ``report.md`` and the figures, each atomically.

:func:`write_report` takes the dict of :func:`vslerp.stats.report.geometry_report`; the
figures come from :mod:`vslerp.stats.plots`. Undefined values (None) are ``null`` in the
JSON and "—" in the Markdown, never NaN.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from vslerp.defaults import CONFORMITY_EXACT

from .outputs import atomic_write

__all__ = ["no_loss_reason", "write_report"]


def no_loss_reason(pairs: int) -> str:
    """Why a report has no CLIP loss vs α: its note in ``notes`` and the text of report.md."""
    if pairs == 0:
        return ("no CLIP loss vs α (Eq. 7–9): the embeddings hold no image–caption pairs — "
                "captions are paired with images only through the image ids of a COCO captions "
                "json (`stats compute --images DIR --captions captions.json`), not for a plain "
                "image folder or a caption text file")
    return (f"no CLIP loss vs α (Eq. 7–9): only {pairs} image–caption pair, and a contrastive "
            "batch needs at least 2")


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
    cmp = report.get("mean_comparison")
    if cmp:
        lines += [f"Image mean vs the checkpoint's (`{cmp['model']}`, {cmp['source']}): ‖Δ‖/‖m‖ = "
                  f"{_fmt(cmp['relative_difference'])}, cosine {_fmt(cmp['cosine'])}.", ""]
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
        ident = e[CONFORMITY_EXACT]
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
        reason = no_loss_reason(report["counts"]["loss_pairs"])
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
