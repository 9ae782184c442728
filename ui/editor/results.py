"""What a result shows: the conformity read-out, histogram, sweep table, downloads and gallery.

:class:`ResultViews` is the part of :class:`~vslerp.ui.editor.callbacks.Editor` that turns a
result dict (``Editor.render``'s) into the page's follow-up outputs. Each part degrades on its
own: a part that fails is a warning on the page and the others still update.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from pathlib import Path

from vslerp.defaults import CONFORMITY_ESTIMATORS

__all__ = ["MAX_GALLERY", "RESULTS_MAX_AGE", "RESULTS_MAX_BYTES", "RESULT_PREFIXES", "FAILED_NOTE", "STALE_NOTE", "USEFUL_ALPHA",
           "ResultViews", "prune_results"]

USEFUL_ALPHA = 2.0  # |α| ≤ 2: the paper's useful range (the α slider's); sweeps beyond get a note
MAX_GALLERY = 24  # results kept in a session's gallery
# The results folder's cap: a result's files (Gradio serves its own copies) are kept this long,
# and the oldest go first once the folder holds more than this many bytes.
RESULTS_MAX_AGE = 3600.0  # seconds
RESULTS_MAX_BYTES = 256_000_000
RESULT_PREFIXES = ("api-", "mix-", "result-", "sweep-")  # the result folders' names start so
STALE_NOTE = "⚠️ _Earlier settings: this sweep was made before the last Edit. Press **Sweep** to update it._"
FAILED_NOTE = "⚠️ _The last request did not finish: this describes the result before it._"

log = logging.getLogger("vslerp.ui.editor")


def _method(result: dict) -> str:
    """The conformity estimator in words (``vslerp.defaults.CONFORMITY_ESTIMATORS``)."""
    return CONFORMITY_ESTIMATORS.get(result["method"], result["method"])


def prune_results(folder, max_age: float = RESULTS_MAX_AGE, max_bytes: int = RESULTS_MAX_BYTES) -> None:
    """Delete the result folders in ``folder`` older than ``max_age`` seconds, then the oldest
    until the rest hold at most ``max_bytes`` (only folders named by :data:`RESULT_PREFIXES`)."""
    entries = []
    for path in Path(folder).iterdir() if Path(folder).is_dir() else ():
        if path.is_dir() and not path.is_symlink() and path.name.startswith(RESULT_PREFIXES):
            try:
                size = sum(f.lstat().st_size for f in path.rglob("*"))
                entries.append((path.lstat().st_mtime, size, path))
            except OSError:  # removed meanwhile
                continue
    entries.sort()  # oldest first
    total, now = sum(size for _, size, _ in entries), time.time()
    for mtime, size, path in entries:
        if now - mtime <= max_age and total <= max_bytes:
            break
        shutil.rmtree(path, ignore_errors=True)
        total -= size


class ResultViews:
    """Views of a result dict; ``self.out_dir`` holds the downloads (capped: :func:`prune_results`
    with ``results_max_age`` / ``results_max_bytes``)."""

    out_dir: Path
    results_max_age: float = RESULTS_MAX_AGE
    results_max_bytes: int = RESULTS_MAX_BYTES

    def result_folder(self, kind: str) -> Path:
        """A new folder for a result's files, once the results folder is pruned to its cap."""
        prune_results(self.out_dir, self.results_max_age, self.results_max_bytes)
        return Path(tempfile.mkdtemp(prefix=f"{kind}-", dir=self.out_dir))

    @staticmethod
    def describe_target(ref: dict) -> str:
        if ref.get("kind") == "prompt":
            return f"“{ref['prompt']}”"
        return f"image {ref.get('path') or 'upload'}"

    @staticmethod
    def file_stem(result: dict) -> str:
        """A download's name: seed, θ, α (or the sweep's shape) and the time it was made."""
        meta = result["metadata"]
        made = time.strftime("%Y%m%d-%H%M%S")
        if result["kind"] == "result":
            return f"vslerp-seed{meta['seed']}-theta{meta['thetas'][0]:g}-alpha{meta['alphas'][0]:g}-{made}"
        return f"vslerp-sweep-seed{meta['seed']}-{len(meta['thetas'])}x{len(meta['alphas'])}-{made}"

    def readout(self, result: dict | None) -> str:
        """Markdown conformity read-out of source, target and result(s)."""
        import numpy as np

        if not result:
            return ""
        conf = result["conformity"].reshape(-1).tolist()
        meta = result["metadata"]
        rows = [f"| source | {result['source_conformity']:.4f} |",
                f"| target | {result['target_conformity']:.4f} |"]
        if len(conf) == 1:  # a sweep's cells are in its own table (sweep_table), one per θ, α
            rows.append(f"| result | {conf[0]:.4f} |")
        lines = [
            f"**Target:** {self.describe_target(meta['target'])} · **Typical image:** {result['mean_label']}",
            "",
            "**Conformity**: how typical an image is (its mean cosine to other images; the paper's "
            f"Eq. 10), {_method(result)}",
            "",
            "| | conformity |", "|---|---|", *rows,
        ]
        far = [a for a in meta["alphas"] if abs(a) > USEFUL_ALPHA]
        if far:
            lines += ["", f"_Note: α = {', '.join(f'{a:g}' for a in far)} lies outside −{USEFUL_ALPHA:g}.."
                      f"{USEFUL_ALPHA:g}, the useful range: expect artefacts._"]
        ref = result.get("reference_conformity")
        if ref is None:
            lines += ["", "_No reference images were given when the editor started, so there is no "
                      "histogram of where these fall._"]
        else:
            ref = np.asarray(ref)

            def pct(value):
                return float((ref <= value).mean() * 100)

            if len(conf) == 1:
                cell_text = f"result {pct(conf[0]):.0f}"
            else:
                cell_pct = [pct(c) for c in conf]
                cell_text = f"sweep cells {min(cell_pct):.0f}–{max(cell_pct):.0f}"
            lines += ["", f"Percentile in the reference ({len(ref)} images, scored with the same mean): "
                      f"source {pct(result['source_conformity']):.0f}, "
                      f"target {pct(result['target_conformity']):.0f}, {cell_text}."]
        return "\n".join(lines)

    def histogram(self, result: dict | None):
        """A small matplotlib histogram of the reference conformity with markers, or None.

        The reference is scored with the edit's own statistics. One result is a red line; a
        sweep's cells are a red rug (one tick per cell).
        """
        if not result or result.get("reference_conformity") is None:
            return None
        from matplotlib.figure import Figure

        fig = Figure(figsize=(4.2, 2.4), dpi=100, layout="constrained")
        ax = fig.add_subplot()
        ax.hist(result["reference_conformity"], bins=40, color="#9aa5b1")
        for label, value, color in (("source", result["source_conformity"], "#1f77b4"),
                                    ("target", result["target_conformity"], "#2ca02c")):
            ax.axvline(value, color=color, lw=2, label=label)
        conf = result["conformity"].reshape(-1).tolist()
        if len(conf) == 1:
            ax.axvline(conf[0], color="#d62728", lw=2, label="result")
        else:
            ax.plot(conf, [0.06] * len(conf), "|", color="#d62728", ms=16, mew=1.5,
                    transform=ax.get_xaxis_transform(), label=f"sweep cells ({len(conf)})")
        ax.set_xlabel(f"conformity: {_method(result)}\nimage mean: {result['mean_label']}", fontsize=8)
        ax.set_yticks([])
        ax.legend(fontsize=7, loc="upper left")
        return fig

    def downloads(self, result: dict | None, history: list | None = None) -> list[str]:
        """[PNG with metadata, its .json sidecar, GIF] of the result or sweep.

        The GIF of a single result animates ``history`` (the session's results, oldest first)
        kept to those of the result's own size, ending with this result.
        """
        if not result:
            return []
        from vslerp.ui.editor.boundary import warn
        from vslerp.ui.images import save_animation, save_png

        folder = self.result_folder(result["kind"])
        image = result.get("grid") or result["images"][0]
        stem = self.file_stem(result)
        png = save_png(image, folder / f"{stem}.png", result["metadata"])
        files = [str(png), str(png.with_suffix(".json"))]
        if len(result["images"]) > 1:
            frames = result["images"]
        else:
            frames = [im for im in (history or []) if im.size == image.size] or [image]
        try:
            gif = save_animation(frames, folder / f"{stem}.gif", fps=4, pingpong=len(frames) > 2)
            files.append(str(gif))
        except (OSError, ValueError) as err:
            log.warning("vslerp editor: GIF not written: %s", err)
            warn(f"The GIF could not be written ({err}); the PNG and JSON are there.")
        return files

    def sweep_table(self, result: dict | None) -> dict:
        """The sweep's conformity as a table: one row per θ, one column per α (a gr.Dataframe value)."""
        if not result or result.get("kind") != "sweep":
            return {"headers": ["θ \\ α"], "data": []}
        conf = result["conformity"].reshape(len(result["thetas"]), len(result["alphas"])).tolist()  # (T, A)
        return {"headers": ["θ \\ α", *(f"α = {a:g}" for a in result["alphas"])],
                "data": [[f"θ = {t:g}", *(round(float(c), 4) for c in row)]
                         for t, row in zip(result["thetas"], conf, strict=True)]}

    @classmethod
    def caption(cls, result: dict) -> str:
        """A gallery caption: the target, then θ, α (or the sweep's shape), seed and size."""
        meta = result["metadata"]
        if result["kind"] == "result":
            head = f"θ={meta['thetas'][0]:g} α={meta['alphas'][0]:g}"
        else:
            head = f"sweep {len(meta['thetas'])}×{len(meta['alphas'])}"
        target = cls.describe_target(meta["target"])
        target = target if len(target) <= 40 else target[:38] + "…”"
        return f"{target} · {head} · seed {meta['seed']} · {meta['size']}px"

    @staticmethod
    def stale_sweep(readout: str | None, note: str = STALE_NOTE, label: str = "Sweep (earlier settings)") -> tuple:
        """After an edit: the sweep's read-out and grid marked as made with earlier settings
        (after a failed request, ``note`` and ``label`` say so of the result's)."""
        import gradio as gr

        if not readout:  # no sweep yet
            return gr.update(), gr.update()
        text = readout if readout.startswith(note) else f"{note}\n\n{readout}"
        return text, gr.update(label=label)

    @classmethod
    def failed(cls, readout: str | None) -> tuple:
        """After a failed edit or sweep: its read-out marked, its downloads gone, the result labelled
        as the earlier one."""
        import gradio as gr

        shown = readout if readout and "**Conformity**" in readout else None  # a read-out of a result
        text, label = cls.stale_sweep(shown, FAILED_NOTE, "Result (earlier settings)")
        return text, gr.update(value=None, visible=False), label

    def details(self, result: dict | None, gallery: list | None):
        """After an edit: read-out, histogram, gallery, gallery state, downloads.

        After a sweep: its read-out (with the percentile range), the conformity table, histogram,
        gallery, gallery state and downloads, for the sweep's own panel.
        """
        import gradio as gr

        from vslerp.ui.editor.boundary import warn

        gallery = list(gallery or [])
        readout, figure, files = "", None, []
        if result:
            shown = result.get("grid") or result["images"][0]
            history = [im for im, cap in gallery if " · θ=" in cap][-15:] + [shown]
            gallery = (gallery + [(shown, self.caption(result))])[-MAX_GALLERY:]
            for part in ("readout", "histogram", "downloads"):
                try:
                    if part == "readout":
                        readout = self.readout(result)
                    elif part == "histogram":
                        figure = self.histogram(result)
                    else:
                        files = self.downloads(result, history)
                except Exception as err:  # a follow-up never fails silently nor hides the others
                    log.exception("vslerp editor: %s failed", part)
                    warn(f"The {part} could not be made ({type(err).__name__}: {err}).")
        plot = gr.update(value=figure, visible=figure is not None)
        downloads = gr.update(value=files or None, visible=bool(files))
        if result and result.get("kind") == "sweep":
            table = gr.update(value=self.sweep_table(result), visible=True)
            return readout, table, plot, gallery, gallery, downloads, gr.update(label="Sweep")
        return readout, plot, gallery, gallery, downloads
