"""The GPU suite's rows on Kandinsky 2.2's encoders and the editor: the prior per prompt,
``stats compute`` through ViT-bigG/14 vs the bare encoder, and the editor loop (cold edit, α
change with warm caches, concurrent edits batched vs one at a time).

``stats compute``: ``vslerp.stats.compute.compute_statistics`` (what the CLI command runs: JPEG
files decoded by DataLoader workers, batching, encoding, float64 sums) against a bare
``image_encoder(pixel_values)`` forward over the same images already in pixel batches. The
editor: the project's ``Editor`` in-process (its ``edit`` is the ``/edit`` endpoint's callback;
no server, so gradio need not be installed).
"""

from __future__ import annotations

import threading
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from gpu_kandinsky import reference_render

__all__ = ["EDITOR_NAMES", "editor_rows", "prior_names", "prior_rows", "stats_names", "stats_rows"]

EDITOR_NAMES = ["editor cold edit", "editor α change", "editor concurrent /edit batched vs one at a time"]
PROMPT = "a photo of a cat"


def prior_names(plan) -> list[str]:
    return ["prior" if b == 1 else f"prior, batch {b}" for b in plan.prior_batches]


def prior_rows(suite, plan, k) -> None:
    """Seconds per prompt through the prior (``prompt_to_image_embedding``: KandinskyV22PriorPipeline)."""
    for batch in plan.prior_batches:
        prompts = [f"{PROMPT} number {i}" for i in range(batch)]
        (seconds,) = suite.alternating(lambda p=prompts: k.pipe.prompt_to_image_embedding(
            p, generator=torch.Generator().manual_seed(0), num_inference_steps=plan.prior_steps))
        suite.add(prior_names(plan)[plan.prior_batches.index(batch)], seconds / batch, "s per prompt", None,
                  floor_s=suite.floor("prior", plan.prior_steps), seconds=seconds / batch,
                  note=f"batch {batch}, {plan.prior_steps} steps, guidance 4 (floor: the PriorTransformer alone)",
                  batch_s=seconds)


def stats_names(plan) -> list[str]:
    return ["stats compute" if i == 0 else f"stats compute, batch {b}" for i, b in enumerate(plan.stats_batches)]


def _write_jpegs(folder: Path, count: int, procs: int) -> list[Path]:
    """``count`` photo-like JPEGs (``bench_stats.write_images``), written by ``procs`` processes."""
    from bench_stats import write_images

    per = -(-count // procs)
    parts = [(folder / f"{i:02d}", min(per, count - i * per)) for i in range(procs) if count > i * per]
    with ProcessPoolExecutor(len(parts)) as pool:
        done = list(pool.map(write_images, *zip(*parts, strict=True)))
    return [p for part in done for p in part]


def stats_rows(suite, plan, k, root: Path) -> None:
    from vslerp.stats import ClipEncoders, ImageItem, open_image
    from vslerp.stats.compute import compute_statistics

    encoders = ClipEncoders(k.pipe.image_encoder, k.pipe.image_processor, model_id="random ViT-bigG/14")
    files = _write_jpegs(root / "jpegs", plan.stats_images, plan.workers)
    items = [ImageItem(f"{p.parent.name}/{p.name}", p, -1) for p in files]
    with ThreadPoolExecutor(plan.workers) as pool:  # the bare side's pixels, decoded once, in advance
        pixels = torch.cat(list(pool.map(lambda p: encoders.preprocess_images([open_image(p)]), files)))
    dev, dtype, n = encoders.device, encoders.dtype, len(files)
    for name, batch in zip(stats_names(plan), plan.stats_batches, strict=True):
        def bare(b=batch):
            with torch.no_grad():
                for chunk in pixels.split(b):  # the same host→device copy and forward the loop does
                    encoders.image_encoder(pixel_values=chunk.to(dev, dtype)).image_embeds.float()

        def command(b=batch):
            result = compute_statistics(encoders, items, batch_size=b, num_workers=plan.workers, progress=False)
            if result.statistics.image.count != n:
                raise RuntimeError(f"stats compute encoded {result.statistics.image.count} of {n} images")

        with torch.no_grad():
            encoders.image_encoder(pixel_values=pixels[:batch].to(dev, dtype))  # warm-up: kernels, allocator
        t_bare, t_command = ([suite.timed(fn) for _ in range(plan.stats_repeats)] for fn in (bare, command))
        t_bare, t_command = min(t_bare), min(t_command)
        suite.add(name, t_bare / t_command, "×", ">= 0.9", floor_s=suite.floor("vit", n), seconds=t_command,
                  note=f"{n} JPEGs 640x480 on disk, batch {batch}, {plan.workers} DataLoader workers; "
                       f"best of {plan.stats_repeats}", command_images_per_s=n / t_command,
                  bare_images_per_s=n / t_bare)


def _source_image(root: Path, size: int) -> str:
    import PIL.Image

    rng = np.random.default_rng(0)
    coarse = (rng.random((8, 8, 3)) * 255).astype(np.uint8)
    path = root / "source.png"
    PIL.Image.fromarray(coarse).resize((size, size), PIL.Image.BICUBIC).save(path)
    return str(path)


def editor_rows(suite, plan, k, root: Path) -> None:
    """Cold edit and α change (warm caches) vs a bare decoder render; concurrent edits batched
    (one pipeline call for the waiting requests) vs one at a time (``max_batch=1``)."""
    from vslerp.ui.editor import Editor, EditorState

    source = _source_image(root, plan.editor_size)
    steps, size = plan.editor_steps, plan.editor_size
    common = {"steps": steps, "guidance": 4.0, "size": size}
    editor = Editor(k.pipe, tiny_random=plan.dry_run, prior_steps=plan.prior_steps)
    alphas = iter(np.tile(np.linspace(-2, 2, 9), 1000))

    def cold():
        editor.state = EditorState(k.pipe, prior_steps=plan.prior_steps)  # empty caches
        editor.edit(source, None, PROMPT, 0.5, 0.0, 1, **common)

    def warm():
        editor.edit(source, None, PROMPT, 0.5, float(next(alphas)), 1, **common)

    def bare():
        reference_render(k, k.source, steps, size, "pil")

    t_cold, t_warm, t_bare = suite.alternating(cold, warm, bare)
    note = f"Editor.edit (the /edit callback) in-process, {size}², {steps} steps, prior {plan.prior_steps} steps"
    suite.add("editor cold edit", t_cold / t_bare, "× a bare decoder render", None, note=note + "; fresh caches",
              cold_s=t_cold, bare_decoder_s=t_bare)
    suite.add("editor α change", t_warm / t_bare, "× a bare decoder render", "<= 1.05 (the decoder alone)",
              note=note + "; source and prompt embeddings cached", alpha_change_s=t_warm, bare_decoder_s=t_bare)

    def crowd(max_batch: int):
        ed = Editor(k.pipe, tiny_random=plan.dry_run, prior_steps=plan.prior_steps, max_batch=max_batch)
        ed.edit(source, None, PROMPT, 0.5, 0.0, 1, **common)  # its caches filled

        def together():
            go, errors = threading.Barrier(plan.clients + 1), []

            def one(i):
                go.wait()
                try:
                    ed.edit(source, None, PROMPT, 0.5, -2 + 4 * i / max(1, plan.clients - 1), i, **common)
                except Exception as err:  # noqa: BLE001 - re-raised below, in the timing thread
                    errors.append(err)

            threads = [threading.Thread(target=one, args=(i,)) for i in range(plan.clients)]
            for t in threads:
                t.start()
            go.wait()  # every request at once
            for t in threads:
                t.join()
            if errors:
                raise errors[0]
        return together, ed

    (batched, ed_batched), (serial, _) = crowd(16), crowd(1)
    t_batched, t_serial = suite.paired(batched, serial)
    suite.add("editor concurrent /edit batched vs one at a time", t_batched / t_serial, "×", "< 1",
              note=note + f"; {plan.clients} concurrent requests (own seed and α), threads",
              batched_s=t_batched, one_at_a_time_s=t_serial, largest_batch=ed_batched.queue.largest)
