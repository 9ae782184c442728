"""The editor's API endpoints, ``gr.api`` functions: ``/edit`` and ``/sweep`` (``gradio_client``).

Inputs arrive as JSON values and Gradio file payloads (``handle_file``: uploaded first), unbounded
by any slider and unchecked by Gradio: a file must be in Gradio's upload folder or a data URL
(``Editor.client_files``, never a server path), and the editor checks and names each value. Give a target image or a target prompt, not both. Each returns the image as a PNG that
carries the editor's sidecar metadata (``vslerp grid --from`` renders it again).
"""

from __future__ import annotations

from vslerp.ui.editor.boundary import call, run_client_event

__all__ = ["add_api", "png_payload"]


def png_payload(editor, image, result) -> dict:
    """``image`` saved with ``result``'s metadata, as a Gradio file payload (copied to its cache)."""
    from gradio import FileData

    from vslerp.ui.images import save_png

    folder = editor.result_folder("api")
    png = save_png(image, folder / f"vslerp-{result['kind']}.png", result["metadata"], sidecar=False)
    return FileData(path=str(png), orig_name=png.name).model_dump()


def add_api(editor, *, steps: int, size: int, guidance: float, **queue) -> None:
    """Add ``/edit`` and ``/sweep`` to the ``gr.Blocks`` being built (``queue``: concurrency;
    steps, size, guidance: the defaults of the page's controls)."""
    import gradio as gr

    def edit(source: dict | None, target_image: dict | None, target_prompt: str | None, theta: float,
             alpha: float, seed: int, steps: int = steps, guidance: float = guidance, size: int = size,
             mean_source: str = "startup", stats_file: dict | None = None, strength: float = 1.0,
             text_prompt: str | None = None, negative_prompt: str | None = None, noise_level: int = 0,
             ip_adapter_scale: float | None = None, true_cfg_scale: float = 1.0) -> dict:
        """One cell: vSLERP(source, target, θ, α) (paper Eq. 12) → the image (PNG with metadata).

        The target is the target image or the target prompt (not both). mean_source: startup,
        prior clip_mean or statistics file (then stats_file, a .safetensors statistics file).
        strength < 1 starts from the source photo (img2img); text_prompt / negative_prompt
        condition the UNet (Stable unCLIP, IP-Adapter), noise_level is Stable unCLIP's,
        ip_adapter_scale the IP-Adapter's, true_cfg_scale FLUX's (with negative_prompt): a model
        refuses those it does not take."""
        image, result = run_client_event(editor, editor.edit, source, target_image, target_prompt, theta, alpha,
                                         seed, steps, guidance, size, mean_source, stats_file=stats_file,
                                         strength=strength, text_prompt=text_prompt,
                                         negative_prompt=negative_prompt, noise_level=noise_level,
                                         ip_adapter_scale=ip_adapter_scale, true_cfg_scale=true_cfg_scale)
        return call(png_payload, editor, image, result)

    def sweep(source: dict | None, target_image: dict | None, target_prompt: str | None, thetas_text: str,
              alphas_text: str, seed: int, steps: int = steps, guidance: float = guidance, size: int = size,
              mean_source: str = "startup", stats_file: dict | None = None, strength: float = 1.0,
              text_prompt: str | None = None, negative_prompt: str | None = None, noise_level: int = 0,
              ip_adapter_scale: float | None = None, true_cfg_scale: float = 1.0) -> dict:
        """A θ × α grid (θ, α lists as text: "0,0.5,1" or "start:stop:count") → the labelled grid
        (the backend options as /edit's)."""
        grid, result = run_client_event(editor, editor.sweep, source, target_image, target_prompt, thetas_text,
                                        alphas_text, seed, steps, guidance, size, mean_source,
                                        stats_file=stats_file, strength=strength, text_prompt=text_prompt,
                                        negative_prompt=negative_prompt, noise_level=noise_level,
                                        ip_adapter_scale=ip_adapter_scale, true_cfg_scale=true_cfg_scale)
        return call(png_payload, editor, grid, result)

    gr.api(edit, api_name="edit", **queue)
    gr.api(sweep, api_name="sweep", **queue)
