"""The editor's page: a ``gr.Blocks`` layout with explicit inputs, outputs and ``api_name``.

:func:`build_page` lays out an :class:`~vslerp.ui.editor.callbacks.Editor`'s callbacks;
:func:`build_editor` makes the Editor of a pipeline too. The page's own events skip Gradio's
preprocessing (``preprocess=False``: uploads reach the callbacks as files, undecoded, see
:mod:`.uploads`) and are not API endpoints; the endpoints are ``gr.api`` functions (:mod:`.api`).
Every callback is called through the Gradio boundary (:mod:`.boundary`). Nothing is launched
here: ``vslerp ui`` (``vslerp.ui.cmd_ui``) launches it, with :func:`launch_kwargs` (127.0.0.1,
never shared by default).
"""

from __future__ import annotations

from pathlib import Path

import torch

from vslerp.ui.editor.api import add_api
from vslerp.ui.editor.boundary import call, event_session, run_client_event
from vslerp.ui.editor.callbacks import MAX_BATCH_CELLS, Editor
from vslerp.ui.editor.mix import add_mix_api, mix_tab
from vslerp.ui.editor.results import USEFUL_ALPHA
from vslerp.ui.editor.values import LABELS, MAX_STEPS, MIN_STRENGTH

__all__ = ["DELETE_CACHE", "build_editor", "build_page", "launch_kwargs"]

# gr.Blocks(delete_cache=(every, age)): every 10 minutes, Gradio deletes the uploads and served
# copies of results older than an hour (and all of them when the server stops).
DELETE_CACHE = (600, 3600)

# Closes the error toasts still on the page once a render succeeds (the mistake is fixed).
CLEAR_ERRORS_JS = ("() => { document.querySelectorAll('.toast-body.error [data-testid=\"toast-close\"]')"
                   ".forEach(button => button.click()); }")

# the backend controls' callback arguments → the option of pipe._backend_options each one sets
_OPTION_KEYS = {"strength": "strength", "text_prompt": "prompt", "negative_prompt": "negative_prompt",
                "noise_level": "noise_level", "ip_adapter_scale": "ip_adapter_scale", "true_cfg_scale": "true_cfg_scale"}
_OPTION_ARGS = tuple(_OPTION_KEYS)

# Theme colours (light and dark), captions under the thumbnails, tables that scroll instead of clipping.
_CSS = """
#vslerp-banner {background: var(--color-accent-soft); color: var(--body-text-color); border-radius: 6px;
  border: 1px solid var(--color-accent); padding: 4px 10px;}
#vslerp-result img, #vslerp-gallery img, #vslerp-sweep-img img, #vslerp-mix-result img {image-rendering: pixelated;}
#vslerp-result img, #vslerp-sweep-img img, #vslerp-mix-result img {width: 100%; height: 100%; object-fit: contain;}
#vslerp-gallery .caption-label {position: static; max-width: 100%; white-space: normal; overflow-wrap: anywhere;
  background: none; color: var(--body-text-color-subdued); font-size: var(--text-xs); padding: 2px;}
#vslerp-gallery .thumbnail-item {display: flex; flex-direction: column; aspect-ratio: auto; height: auto;
  overflow: visible;}
#vslerp-gallery .thumbnail-item img {aspect-ratio: 1; height: auto; width: 100%;}
#vslerp-readout table, #vslerp-mix-readout table {display: block; max-width: 100%; overflow-x: auto;}
#vslerp-readout th, #vslerp-mix-readout th, #vslerp-readout td:last-child, #vslerp-mix-readout td:last-child
  {white-space: nowrap;}
#vslerp-sweep-table {max-width: 100%; overflow-x: auto;}
@media (max-width: 720px) {  /* the phone: the result right above the θ and α sliders, in view as they move */
  #vslerp-result-col {display: contents;}
  #vslerp-result {order: 1; flex: 1 1 100%; height: 34vh !important;} #vslerp-controls-col {order: 2;}
  #vslerp-details {order: 3; flex: 1 1 100%;} #vslerp-downloads {order: 4; flex: 1 1 100%;}
}
"""

# Ctrl+Enter in the prompt runs Edit; a slider moved with the keyboard re-renders as a drag does
# (Gradio's "release" event fires on pointerup only).
KEYS_JS = """() => {
  document.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && (e.ctrlKey || e.metaKey) && e.target.closest('#vslerp-prompt')) {
      e.preventDefault(); document.querySelector('#vslerp-run')?.click(); }
  });
  const keys = ['ArrowLeft', 'ArrowRight', 'ArrowUp', 'ArrowDown', 'PageUp', 'PageDown', 'Home', 'End'];
  document.addEventListener('keyup', (e) => {
    if (keys.includes(e.key) && e.target.matches('.vslerp-rerender input[type=range]')) {
      e.target.dispatchEvent(new PointerEvent('pointerup', {bubbles: true})); }
  });
}"""

EXAMPLE_PROMPTS = ("a watercolour painting of a fox", "a snowy mountain lake at dawn", "a bunch of yellow tulips")


def example_images() -> list[str]:
    """The bundled example images (package data ``vslerp.ui.examples``): cat, mountains, flower."""
    from importlib.resources import files

    return [str(files("vslerp.ui.examples") / f"{name}.png") for name in ("cat", "mountains", "flower")]


def build_editor(pipe, *, spec=None, statistics=None, tiny_random: bool = False, concurrency: int = 1,
                 reference: torch.Tensor | None = None, prior_steps: int | None = None,
                 default_steps: int | None = None, default_size: int | None = None,
                 stats_path: str | Path | None = None, max_batch: int = MAX_BATCH_CELLS,
                 out_dir: str | Path | None = None):
    """The editor of ``pipe`` as a ``gr.Blocks`` (not launched): :func:`build_page` of
    ``Editor(pipe, spec=..., statistics=..., ...)`` (see :class:`Editor` for the options)."""
    editor = Editor(pipe, spec=spec, statistics=statistics, reference=reference, tiny_random=tiny_random,
                    prior_steps=prior_steps, stats_path=stats_path, max_batch=max_batch, out_dir=out_dir)
    return build_page(editor, concurrency=concurrency, default_steps=default_steps, default_size=default_size)


def build_page(editor: Editor, *, concurrency: int = 1, default_steps: int | None = None,
               default_size: int | None = None, delete_cache: tuple[int, int] | None = DELETE_CACHE):
    """The page of ``editor``'s callbacks as a ``gr.Blocks`` (not launched).

    API endpoints (``gradio_client``): ``/edit`` (source image, target image, target prompt,
    theta, alpha, seed[, steps, guidance, size, mean source, statistics file, strength, text
    prompt, negative prompt, noise level, IP-Adapter scale] → image) and ``/sweep`` (…, thetas
    text, alphas text, … → labelled grid image). The strength, text-prompt, noise-level and
    IP-Adapter-scale controls are shown only where the model's backend takes them. Renders that arrive
    together are batched by ``editor.queue``; ``concurrency``: events Gradio runs at once.
    The page starts at ``default_steps`` and ``default_size`` (default: 50 and 512; 2 and 64
    for a tiny random model). ``delete_cache``: Gradio's ``(every, age)`` in seconds for its
    uploads and served files (:data:`DELETE_CACHE`).
    """
    import gradio as gr

    if int(concurrency) < 1:
        raise ValueError(f"concurrency must be ≥ 1, got {concurrency}")
    steps0 = default_steps or (2 if editor.tiny_random else editor.spec.steps)
    size0 = default_size or (64 if editor.tiny_random else (editor.spec.size or editor.pipe.default_size))
    info = editor.pipe.describe(editor.default_statistics)
    # Render events wait together at the batching queue: let up to two batches' worth in at once.
    max_batch = editor.queue.max_cells
    render_limit = int(concurrency) if max_batch <= 1 else max(int(concurrency), 2 * max_batch)
    render = dict(concurrency_limit=render_limit, concurrency_id="vslerp-render")

    accepted = tuple(getattr(editor.pipe, "_backend_options", ()))  # the backend options this model takes

    def taken(*values) -> dict:
        """The backend controls' values, for the options this backend takes only (the others are hidden)."""
        return {key: value for key, value in zip(_OPTION_ARGS, values, strict=True) if _OPTION_KEYS[key] in accepted}

    # The page's events: the visible Target choice decides.
    def ui_edit(source, target_image, target_prompt, theta, alpha, seed, steps, guidance, size, mean_source,
                stats_file, strength, text_prompt, negative_prompt, noise_level, ip_scale, true_cfg, target_kind,
                progress=gr.Progress()):  # noqa: B008 - gradio API
        return run_client_event(editor, editor.edit, source, target_image, target_prompt, theta, alpha, seed, steps,
                                guidance, size, mean_source, stats_file=stats_file, target_kind=target_kind,
                                progress=progress, **taken(strength, text_prompt, negative_prompt, noise_level,
                                                           ip_scale, true_cfg))

    def ui_sweep(source, target_image, target_prompt, thetas_text, alphas_text, seed, steps, guidance, size,
                 mean_source, stats_file, strength, text_prompt, negative_prompt, noise_level, ip_scale, true_cfg,
                 target_kind, progress=gr.Progress()):  # noqa: B008
        return run_client_event(editor, editor.sweep, source, target_image, target_prompt, thetas_text, alphas_text,
                                seed, steps, guidance, size, mean_source, stats_file=stats_file,
                                target_kind=target_kind, progress=progress,
                                **taken(strength, text_prompt, negative_prompt, noise_level, ip_scale, true_cfg))

    def details_fn(result, gallery):
        return call(editor.details, result, gallery)

    def show_target(kind):
        return gr.update(visible=kind == "prompt"), gr.update(visible=kind == "image")

    def stop():
        session = event_session()
        if session is not None:
            editor.stop(session)

    def checked(name: str):
        def check(payload):  # a file that is not an image is refused as it arrives, not on Edit
            call(editor.check_upload, payload, name)
        return check

    startup_mean = editor.startup_mean_label()
    mean_choices = [(f"as started ({startup_mean})", "startup"), ("the prior's training mean", "prior clip_mean"),
                    ("from a statistics file", "statistics file")]
    kind0, kinds = "prompt", ["prompt", "image"]  # the Target choices the page starts with
    images = example_images()
    examples = [[image, prompt] for image, prompt in zip(images, EXAMPLE_PROMPTS, strict=True)]
    if getattr(editor.pipe, "prior", None) is None:  # a backend without a Kandinsky prior: no clip_mean,
        mean_choices.pop(1)  # and a target prompt has no prior to become an image embedding through
        kind0, kinds = "image", ["image"]
        examples = [[image, images[(i + 1) % len(images)]] for i, image in enumerate(images)]
    guidance0 = float(editor.pipe.default_guidance_scale)  # the backend's (diffusers') default
    with gr.Blocks(title="vslerp editor", delete_cache=delete_cache) as demo:
        gr.Markdown("# vslerp editor\nMove a source image towards a target (a prompt or another image), and "
                    "pull the way there towards the typical image: the result keeps the source's object.")
        if editor.tiny_random:
            gr.Markdown("⚠️ **Tiny random model — noise-only smoke test.** The images are noise; "
                        "this checks the editor works without model weights.", elem_id="vslerp-banner")
        with gr.Tab("Edit", elem_id="vslerp-edit-tab"):
            with gr.Row():
                with gr.Column(scale=1, min_width=280):
                    source = gr.Image(label="Source image", height=220, type="filepath",
                                      sources=["upload", "clipboard", "webcam"], elem_id="vslerp-source")
                    target_kind = gr.Radio(kinds, value=kind0, label="Target", visible=len(kinds) > 1,
                                           info="what the source moves towards", elem_id="vslerp-target-kind")
                    target_prompt = gr.Textbox(label=LABELS["target_prompt"], placeholder="a photo of a cat",
                                               info="Ctrl+Enter runs Edit",
                                               visible=kind0 == "prompt", elem_id="vslerp-prompt")
                    target_image = gr.Image(label="Target image", height=180, visible=kind0 == "image", type="filepath",
                                            sources=["upload", "clipboard", "webcam"], elem_id="vslerp-target")
                with gr.Column(scale=1, min_width=280, elem_id="vslerp-controls-col"):
                    theta = gr.Slider(0.0, 1.0, value=0.5, step=0.05, label=LABELS["theta"],
                                      info="0: the source, 1: the target (the paper's θ of vertical SLERP, Eq. 12)",
                                      elem_id="vslerp-theta", elem_classes="vslerp-rerender")
                    alpha = gr.Slider(-USEFUL_ALPHA, USEFUL_ALPHA, value=0.0, step=0.1, label=LABELS["alpha"],
                                      info="0: the straight way; above 0 the way stays nearer the typical image "
                                           "(the paper's α and image mean m)", elem_id="vslerp-alpha",
                                      elem_classes="vslerp-rerender")
                    with gr.Row(equal_height=True):
                        seed = gr.Number(value=0, precision=0, label=LABELS["seed"], minimum=0, scale=3)
                        dice = gr.Button("Random seed", scale=1, min_width=60, size="sm")
                    with gr.Row(equal_height=True):
                        steps = gr.Number(value=steps0, precision=0, minimum=1, maximum=MAX_STEPS, label=LABELS["steps"],
                                          elem_id="vslerp-steps", min_width=100)
                        guidance = gr.Number(value=guidance0, minimum=0, step=0.5, label=LABELS["guidance"],
                                             elem_id="vslerp-guidance", min_width=100)
                    size = gr.Slider(min(64, size0), max(1024, size0), value=size0, step=min(64, size0), label=LABELS["size"],
                                     elem_id="vslerp-size")
                    strength = gr.Slider(MIN_STRENGTH, 1.0, value=1.0, step=0.05, label=LABELS["strength"],
                                         info="below 1 keeps the photo's layout (img2img)",
                                         visible="strength" in accepted, elem_id="vslerp-strength",
                                         elem_classes="vslerp-rerender")
                    with gr.Group(visible="prompt" in accepted or "negative_prompt" in accepted):
                        text_prompt = gr.Textbox(label=LABELS["text_prompt"],
                                                 visible="prompt" in accepted, elem_id="vslerp-text-prompt")
                        negative_prompt = gr.Textbox(label=LABELS["negative_prompt"], visible="negative_prompt" in accepted,
                                                     elem_id="vslerp-negative-prompt")
                    noise_level = gr.Slider(0, 1000, value=0, step=1, label=LABELS["noise_level"],
                                            info="noise added to the image embedding (Stable unCLIP)",
                                            visible="noise_level" in accepted, elem_id="vslerp-noise-level")
                    ip_scale = gr.Slider(0.0, 2.0, value=1.0, step=0.05, label=LABELS["ip_adapter_scale"],
                                         info="how strongly the image embedding conditions the UNet",
                                         visible="ip_adapter_scale" in accepted, elem_id="vslerp-ip-scale")
                    true_cfg = gr.Slider(1.0, 10.0, value=1.0, step=0.5, label=LABELS["true_cfg_scale"],
                                         info="above 1: guidance away from the negative prompt (FLUX; slower)",
                                         visible="true_cfg_scale" in accepted, elem_id="vslerp-true-cfg")
                    with gr.Accordion("Advanced", open=False):
                        mean_source = gr.Radio(
                            mean_choices, value="startup", label=LABELS["mean_source"], elem_id="vslerp-mean-source",
                            info="The paper's image mean m. The prior's training mean is the Kandinsky prior's "
                                 "clip_mean; a statistics file is computed from a dataset (vslerp stats compute).")
                        stats_file = gr.File(label="Statistics file (.safetensors)", file_types=[".safetensors"],
                                             type="filepath", height=150, elem_id="vslerp-stats-file")
                    with gr.Row():
                        run = gr.Button("Edit", variant="primary", elem_id="vslerp-run", scale=3)
                        stop_btn = gr.Button("Stop", variant="stop", elem_id="vslerp-stop", scale=1, min_width=60)
                with gr.Column(scale=1, min_width=280, elem_id="vslerp-result-col"):
                    result = gr.Image(label="Result", type="pil", interactive=False, height=300,
                                      elem_id="vslerp-result", format="png")
                    with gr.Accordion("Details", open=False, elem_id="vslerp-details"):
                        readout = gr.Markdown("_Upload a source, give a target, press **Edit** or move a slider._",
                                              elem_id="vslerp-readout")
                        plot = gr.Plot(label="Reference conformity", show_label=False, visible=False)
                    downloads = gr.File(label="Downloads: PNG with its settings, the .json settings, GIF",
                                        file_count="multiple", interactive=False, visible=False,
                                        elem_id="vslerp-downloads")
            example_row = gr.Examples(examples, [source, target_image if kind0 == "image" else target_prompt],
                                      label="Examples: click one for a first edit", elem_id="vslerp-examples",
                                      examples_per_page=len(examples))
            with gr.Accordion("Sweep: a grid of θ × α in one batched render", open=False):
                with gr.Row():
                    thetas_text = gr.Textbox(value="0,0.5,1", label=LABELS["thetas"],
                                             elem_id="vslerp-thetas")
                    alphas_text = gr.Textbox(value="-1,0,1", label=f"{LABELS['alphas']}, useful −{USEFUL_ALPHA:g}..{USEFUL_ALPHA:g}",
                                             elem_id="vslerp-alphas")
                    sweep_btn = gr.Button("Sweep", elem_id="vslerp-sweep")
                with gr.Row():
                    with gr.Column(scale=3):
                        sweep_img = gr.Image(label="Sweep", type="pil", interactive=False, format="png", height=460,
                                             elem_id="vslerp-sweep-img")
                    with gr.Column(scale=2, min_width=280):
                        sweep_readout = gr.Markdown("", elem_id="vslerp-sweep-readout")
                        sweep_table = gr.Dataframe(label="Conformity of each cell (rows θ, columns α)",
                                                   interactive=False, visible=False, wrap=True,
                                                   elem_id="vslerp-sweep-table")
                        sweep_plot = gr.Plot(label="Reference conformity", show_label=False, visible=False)
                        sweep_downloads = gr.File(label="Sweep downloads: PNG with its settings, .json settings, GIF",
                                                  file_count="multiple", interactive=False, visible=False,
                                                  elem_id="vslerp-sweep-downloads")
            gallery = gr.Gallery(label="Results so far", columns=6, fit_columns=False, height=260, object_fit="contain",
                                 elem_id="vslerp-gallery")
        mix_tab(editor, gr, seed=seed, steps=steps, guidance=guidance, size=size, mean_source=mean_source,
                stats_file=stats_file, render=render)
        gallery_state = gr.State([])
        result_state = gr.State(None)
        gr.Markdown(f"<small>model: {info.get('decoder')} · backend: {info.get('backend')} · prior: {info.get('prior')} · "
                    f"dim {info.get('dim')} · {info.get('dtype')} on {info.get('device')}</small>")

        common = [seed, steps, guidance, size, mean_source, stats_file, strength, text_prompt, negative_prompt,
                  noise_level, ip_scale, true_cfg]
        edit_inputs = [source, target_image, target_prompt, theta, alpha, *common]
        sweep_inputs = [source, target_image, target_prompt, thetas_text, alphas_text, *common]
        target_kind.change(show_target, target_kind, [target_prompt, target_image], api_name=False)
        for image, name in ((source, "source"), (target_image, "target image")):
            image.upload(checked(name), image, None, api_name=False, preprocess=False,  # queued: a toast
                         concurrency_limit=None).failure(lambda: None, None, image, api_name=False, queue=False)
        for control in (source, target_image, target_prompt, target_kind, *common, theta, alpha, thetas_text,
                        alphas_text):  # the user changed an input: the toasts of the mistakes before it go
            (control.input if hasattr(control, "input") else control.upload)(None, None, None, js=CLEAR_ERRORS_JS,
                                                                              api_name=False)
        edit_events = [run.click(ui_edit, [*edit_inputs, target_kind], [result, result_state], api_name=False,
                                 preprocess=False, **render),
                       example_row.load_input_event.then(lambda: kind0, None, target_kind, api_name=False,
                                                         queue=False).then(
                           ui_edit, [*edit_inputs, target_kind], [result, result_state], api_name=False,
                           preprocess=False, **render)]
        for slider in (theta, alpha, strength):
            edit_events.append(slider.release(ui_edit, [*edit_inputs, target_kind], [result, result_state],
                                              api_name=False, trigger_mode="always_last", preprocess=False,
                                              **render))
        for event in edit_events:
            event.success(details_fn, [result_state, gallery_state],
                          [readout, plot, gallery, gallery_state, downloads], api_name=False)
            event.success(editor.stale_sweep, sweep_readout, [sweep_readout, sweep_img], api_name=False)
            event.success(lambda: gr.update(label="Result"), None, result, js=CLEAR_ERRORS_JS, api_name=False,
                          queue=False)
            event.failure(editor.failed, readout, [readout, downloads, result], api_name=False, queue=False)
        swept = sweep_btn.click(ui_sweep, [*sweep_inputs, target_kind], [sweep_img, result_state], api_name=False,
                                preprocess=False, **render)
        swept.success(details_fn, [result_state, gallery_state],
                      [sweep_readout, sweep_table, sweep_plot, gallery, gallery_state, sweep_downloads, sweep_img],
                      api_name=False)
        swept.success(None, None, None, js=CLEAR_ERRORS_JS, api_name=False)
        swept.failure(editor.failed, sweep_readout, [sweep_readout, sweep_downloads, sweep_img], api_name=False,
                      queue=False)
        stop_btn.click(stop, None, None, cancels=[*edit_events, swept], api_name=False, queue=False)
        dice.click(editor.roll_seed, None, seed, api_name=False)
        add_api(editor, steps=steps0, size=size0, guidance=guidance0, **render)
        add_mix_api(editor, steps=steps0, size=size0, guidance=guidance0, **render)


    demo.queue(default_concurrency_limit=int(concurrency))
    return demo


def launch_kwargs(host: str = "127.0.0.1", port: int | None = 7860, share: bool = False) -> dict:
    """Keyword arguments for ``demo.launch`` with the editor's safe defaults (Gradio ≥ 6: ``css``)."""
    return {"server_name": host, "server_port": port, "share": share, "max_file_size": "25mb",
            "css": _CSS, "js": KEYS_JS, "show_error": False, "allowed_paths": [], "quiet": True,
            "ssr_mode": False}
