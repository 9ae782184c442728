"""The Mix panel: vmix of up to 6 images or prompts with a weight each (as ``pipe.mix``), its
checks, its read-out and its ``/mix`` endpoint. A mix waits in the editor's render queue and is
rendered in one ``render_batch`` with the edits and sweeps of the same settings; its inputs come
from the embedding cache.
"""

from __future__ import annotations

import time
from dataclasses import replace

from vslerp.ui.editor.boundary import call, event_session, progress_reporter, run_event
from vslerp.ui.editor.messages import EditorError, RenderCancelled, sentence
from vslerp.ui.editor.uploads import client_upload, discard
from vslerp.ui.editor.values import (
    a_number,
    axis,
    mean_source_value,
    seed_value,
    settings,
    text_value,
)

__all__ = ["MIX_SLOTS", "add_mix_api", "mix", "mix_tab", "mix_values", "shown_weights"]

MIX_SLOTS = 6  # inputs of the page's Mix panel (pipe.mix takes up to 16)


def mix_values(images, prompts, weights) -> tuple[list, list[float]]:
    """The filled slots as ``[("image", upload) | ("prompt", text)]`` and their weights (≥ 0, not
    all zero); a slot with both an image and a prompt, or fewer than 2 filled, is refused."""
    if not (len(images) == len(prompts) == len(weights)):
        raise EditorError(f"A mix gives one image, prompt and weight per input, got {len(images)} images, "
                          f"{len(prompts)} prompts and {len(weights)} weights.")
    inputs, kept = [], []
    for k, (image, prompt, weight) in enumerate(zip(images, prompts, weights, strict=True)):
        prompt = (text_value("mix_prompt", prompt) or "").strip()
        if image is None and not prompt:
            continue
        if image is not None and prompt:
            raise EditorError(f"Mix input {k + 1}: give an image or a prompt, not both.")
        a_number("weight", weight)
        if not 0 <= float(weight) <= 1e6:  # NaN fails too
            raise EditorError(f"Mix input {k + 1}: its weight must be from 0 to 1, got {weight!r}.")
        inputs.append(("image", image) if image is not None else ("prompt", prompt))
        kept.append(float(weight))
    if len(inputs) < 2:
        raise EditorError(f"A mix needs at least 2 inputs (an image or a prompt each), got {len(inputs)}.")
    if sum(kept) <= 0:
        raise EditorError("Give at least one mix input a weight above 0.")
    return inputs, kept


def shown_weights(filled: list[bool], weights: list[float]) -> str:
    """The weights as the mix uses them: normalised over the filled slots, in percent."""
    used = [float(w) if f and isinstance(w, (int, float)) and w >= 0 else 0.0 for f, w in zip(filled, weights,
                                                                                             strict=True)]
    total = sum(used)
    if sum(filled) < 2 or total <= 0:
        return "_Weights used: fill at least two inputs, one with a weight above 0._"
    parts = [f"input {k + 1}: {100 * w / total:.0f} %" for k, w in enumerate(used) if filled[k]]
    return "**Weights used** (normalised): " + " · ".join(parts)


def mix(editor, inputs, weights, alpha, seed, steps, guidance, size, mean_source=None, stats_file=None, *,
        should_stop=None, report=None, target_kind=None) -> tuple:
    """One mix: vmix(inputs, weights, α, m) rendered → (image, result dict). inputs: what
    :func:`mix_values` returns (uploads already taken as the client's files)."""
    from vslerp.ui.render import batch_key
    from vslerp.ui.sidecar import sidecar

    seed = seed_value(seed)
    steps, guidance, size = settings(steps, guidance, size)
    (alpha,) = axis("α", "alpha", [alpha], False)
    mean_source = mean_source_value(mean_source, getattr(editor.pipe, "prior", None) is not None)
    raws, refs = [], []
    for k, (kind, value) in enumerate(inputs):
        if kind == "image":
            raw, ref = editor.state.upload_embedding(editor.upload(value, f"mix input {k + 1}"), f"mix input {k + 1}")
        else:
            raw, ref = editor.state.prompt_embedding(value, seed), {"kind": "prompt", "prompt": value}
        raws.append(raw)
        refs.append(ref)
    stats, mean_label, stats_path = editor.mean_statistics(mean_source, stats_file)
    spec = replace(editor.spec, inputs=tuple(refs), weights=(tuple(weights),), thetas=(), alphas=(alpha,), seed=seed,
                   steps=steps, guidance=guidance, size=size, stats=stats_path, labels=False)
    job = {"spec": spec, "inputs": raws, "statistics": stats, "should_stop": should_stop, "report": report,
           "total": steps}
    try:  # batched with the edits and sweeps of the same settings (Editor._render_batch)
        done = editor.queue.submit(batch_key(spec.resolved(editor.pipe)), spec.cells, job, None, should_stop)
    except RenderCancelled:
        raise editor.stopped() from None
    except (ValueError, TypeError) as err:
        raise EditorError(sentence(err)) from None
    out = done["out"]
    metadata = sidecar(spec, editor.pipe, out, "ui mix", statistics=stats, tiny_random=editor.tiny_random,
                       weights=[float(w) for w in out.weights[0].tolist()])  # the page's one row
    return out.images[0], {"kind": "mix", "images": list(out.images), "metadata": metadata, "mean_label": mean_label,
                           "conformity": out.conformity.float(), "inputs": refs,
                           "input_conformity": [float(c) for c in done["ends"]],
                           "weights": out.weights[0].tolist(), "alpha": alpha}


def readout(result: dict | None) -> str:
    """The mix's read-out: each input with its weight and conformity, then the mix's."""
    if not result:
        return ""
    from vslerp.ui.editor.results import ResultViews

    rows = [f"| {k + 1}: {ResultViews.describe_target(ref)} | {100 * w:.0f} % | {c:.4f} |"
            for k, (ref, w, c) in enumerate(zip(result["inputs"], result["weights"], result["input_conformity"],
                                                strict=True))]
    return "\n".join([f"**Mix** at α = {result['alpha']:g} · **Typical image:** {result['mean_label']}", "",
                      "**Conformity**: how typical an image is (its mean cosine to other images)", "",
                      "| input | weight | conformity |", "|---|---|---|", *rows,
                      f"| **mix** | | {float(result['conformity'].reshape(-1)[0]):.4f} |"])


def run_mix(editor, images, prompts, weights, alpha, seed, steps, guidance, size, mean_source=None,
            stats_file=None, progress=None):
    """A page or API mix event (the Gradio boundary): the client's files taken as uploads only
    (never a server path, data URLs' files deleted after), the Stop button and the progress bar."""
    def event(should_stop=None, report=None, target_kind=None):
        folder, uploads = editor.out_dir / "uploads", []
        try:
            uploads.append(client_upload(stats_file, folder, "statistics file"))
            for k, image in enumerate(images):
                uploads.append(client_upload(image, folder, f"mix input {k + 1}"))
            inputs, kept = mix_values(uploads[1:], prompts, weights)
            return mix(editor, inputs, kept, alpha, seed, steps, guidance, size, mean_source, uploads[0],
                       should_stop=should_stop, report=report)
        finally:
            for upload in uploads:
                if upload is not None and upload.temporary:
                    discard(upload)

    return run_event(event, stop=editor.stop_probe(event_session()), report=progress_reporter(progress))


def mix_tab(editor, gr, *, seed, steps, guidance, size, mean_source, stats_file, render: dict):
    """The Mix tab (inside the page's ``gr.Blocks``); returns its render events (for Stop's ``cancels``)."""
    with gr.Tab("Mix", elem_id="vslerp-mix-tab"):
        gr.Markdown("Mix up to 6 images or prompts: each input gets a weight; the mix keeps what they share. "
                    "The paper's vertical SLERP for many inputs (their weighted spherical mean about α·m).")
        images, prompts, weights = [], [], []
        with gr.Row():
            with gr.Column(scale=2):
                for row in range(MIX_SLOTS // 3):
                    with gr.Row():
                        for col in range(3):
                            k = 3 * row + col
                            with gr.Column(min_width=160), gr.Group():
                                images.append(gr.Image(label=f"Input {k + 1}: image", type="filepath", height=120,
                                                       sources=["upload", "clipboard"], elem_id=f"vslerp-mix-image-{k}"))
                                prompts.append(gr.Textbox(label=f"or prompt {k + 1}", elem_id=f"vslerp-mix-prompt-{k}"))
                                weights.append(gr.Slider(0.0, 1.0, value=1.0, step=0.05, label="Weight",
                                                         elem_id=f"vslerp-mix-weight-{k}"))
                shown = gr.Markdown(shown_weights([False] * MIX_SLOTS, [1.0] * MIX_SLOTS), elem_id="vslerp-mix-weights")
            with gr.Column(scale=1, min_width=280):
                alpha = gr.Slider(-2.0, 2.0, value=1.0, step=0.1, label="Pull towards the typical image (α)",
                                  info="0: mix about the origin; 1: about the paper's image mean m",
                                  elem_id="vslerp-mix-alpha")
                with gr.Row():
                    run = gr.Button("Mix", variant="primary", elem_id="vslerp-mix-run", scale=3)
                    stop_btn = gr.Button("Stop", variant="stop", elem_id="vslerp-mix-stop", scale=1, min_width=60)
                result = gr.Image(label="Mix", type="pil", interactive=False, height=300, format="png",
                                  elem_id="vslerp-mix-result")
                with gr.Accordion("Details", open=False, elem_id="vslerp-mix-details"):
                    details = gr.Markdown("", elem_id="vslerp-mix-readout")
                downloads = gr.File(label="Downloads: PNG with its settings, the .json settings", file_count="multiple",
                                    interactive=False, visible=False, elem_id="vslerp-mix-downloads")
        state = gr.State(None)

    def ui_mix(*values, progress=gr.Progress()):  # noqa: B008 - gradio API
        n = MIX_SLOTS
        ims, texts, ws, rest = values[:n], values[n:2 * n], values[2 * n:3 * n], values[3 * n:]
        return run_mix(editor, list(ims), list(texts), list(ws), *rest, progress=progress)

    def show(*values):
        n = MIX_SLOTS
        filled = [values[k] is not None or bool((values[n + k] or "").strip()) for k in range(n)]
        return shown_weights(filled, list(values[2 * n:]))

    def follow(result):
        return call(_follow, editor, result)

    for control in (*images, *prompts, *weights):
        control.change(show, [*images, *prompts, *weights], shown, api_name=False, preprocess=False, queue=False)
    event = run.click(ui_mix, [*images, *prompts, *weights, alpha, seed, steps, guidance, size, mean_source,
                               stats_file], [result, state], api_name=False, preprocess=False, **render)
    event.success(follow, state, [details, downloads], api_name=False)
    event.failure(editor.failed, details, [details, downloads, result], api_name=False, queue=False)
    stop_btn.click(lambda: editor.stop(event_session()) if event_session() else None, None, None, cancels=[event],
                   api_name=False, queue=False)
    return [event]


def _follow(editor, result):
    import gradio as gr

    from vslerp.ui.images import save_png

    folder = editor.result_folder("mix")
    meta = result["metadata"]
    stem = f"vslerp-mix-seed{meta['seed']}-alpha{result['alpha']:g}-{time.strftime('%Y%m%d-%H%M%S')}"
    png = save_png(result["images"][0], folder / f"{stem}.png", meta)
    return readout(result), gr.update(value=[str(png), str(png.with_suffix(".json"))], visible=True)


def add_mix_api(editor, *, steps: int, size: int, guidance: float, **queue) -> None:
    """Add ``/mix`` to the ``gr.Blocks`` being built (queued with the other renders)."""
    import gradio as gr

    from vslerp.ui.editor.api import png_payload

    def mix_endpoint(images: list, prompts: list, weights: list, alpha: float = 1.0, seed: int = 0,
                     steps: int = steps, guidance: float = guidance, size: int = size,
                     mean_source: str = "startup", stats_file: dict | None = None) -> dict:
        """vmix of 2–6 inputs → the image (PNG with metadata). images[k] a file or None, prompts[k]
        a prompt or None (one of the two per input), weights[k] ≥ 0 (normalised); alpha as /edit's."""
        if not all(isinstance(v, list) for v in (images, prompts, weights)):
            raise gr.Error("images, prompts and weights must be lists, one entry per input.", print_exception=False)
        if len(images) > MIX_SLOTS:
            raise gr.Error(f"A mix here takes at most {MIX_SLOTS} inputs, got {len(images)}.", print_exception=False)
        image, result = run_mix(editor, images, prompts, weights, alpha, seed, steps, guidance, size, mean_source,
                                stats_file)
        return call(png_payload, editor, image, result)

    gr.api(mix_endpoint, api_name="mix", **queue)
