"""The embedding cache shared by every session of one editor: moving θ or α only decodes.

Images are keyed by a sha256 of their RGB pixels and size (an upload seen before, same bytes, is
not even decoded again); prompts by (prompt, seed, prior steps), since a prompt becomes an image
embedding through the seeded prior. The cached raw embeddings go straight to the render layer.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict

import PIL.Image
import torch

from vslerp.ui.editor.messages import EditorError, display_name
from vslerp.ui.editor.uploads import open_upload

__all__ = ["EditorState"]

_CACHE_SIZE = 64  # embeddings kept per kind (images, prompts)


class EditorState:
    """Cache of raw embeddings (thread-safe).

    ``encode_calls`` / ``prompt_calls`` count the encoder / prior runs (cache misses),
    ``decode_calls`` the uploads decoded. ``model_lock``: one model call at a time (encoders,
    prior, denoising): diffusers' pipelines keep per-call state (scheduler timesteps, guidance,
    offload hooks). The image mean is not pipeline state: each render passes its own.
    """

    def __init__(self, pipe, *, prior_steps: int = 25, cache_size: int = _CACHE_SIZE) -> None:
        self.pipe = pipe
        self.prior_steps = int(prior_steps)
        self.cache_size = int(cache_size)
        self.encode_calls = 0  # image-encoder runs
        self.prompt_calls = 0  # prompt → prior runs
        self.decode_calls = 0  # uploaded files decoded
        self._images: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._prompts: OrderedDict[tuple, torch.Tensor] = OrderedDict()
        self._files: OrderedDict[str, str] = OrderedDict()  # sha256 of a file → of its pixels
        self._lock = threading.Lock()  # guards the caches and the counters
        self.model_lock = threading.RLock()

    @staticmethod
    def image_key(image: PIL.Image.Image) -> str:
        rgb = image.convert("RGB")
        digest = hashlib.sha256(f"{rgb.size}".encode())
        digest.update(rgb.tobytes())
        return digest.hexdigest()

    def _remember(self, cache: OrderedDict, key, value) -> None:
        cache[key] = value
        cache.move_to_end(key)
        while len(cache) > self.cache_size:
            cache.popitem(last=False)

    def image_embedding(self, image: PIL.Image.Image) -> tuple[torch.Tensor, str]:
        """Raw image embedding (D,) float32 of an RGB image and its cache key."""
        key = self.image_key(image)
        with self._lock:
            if key in self._images:
                self._images.move_to_end(key)
                return self._images[key], key
        with self.model_lock:
            raw = self.pipe.encode_image([image])[0]  # (D,)
        with self._lock:
            self.encode_calls += 1
            self._remember(self._images, key, raw)
        return raw, key

    def upload_embedding(self, upload, name: str) -> tuple[torch.Tensor, dict]:
        """(raw (D,), input) of an uploaded image file (or a PIL image).

        The input is the sidecar's ``{"kind": "image", "path", "sha256"}``: path = the upload's
        original file name, sha256 = of the file's bytes; plus ``pixels_sha256`` (the cache key).
        """
        from vslerp.ui.images import file_sha256

        if upload is None or isinstance(upload, PIL.Image.Image):
            raw, key = self.image_embedding(open_upload(upload, name))
            return raw, {"kind": "image", "path": None, "sha256": None, "pixels_sha256": key}
        try:
            file_sha = file_sha256(upload)
        except OSError:
            raise EditorError(f"The {name} image is no longer on the server: upload it again.") from None
        raw = None
        with self._lock:
            pixels_key = self._files.get(file_sha)
            if pixels_key is not None and pixels_key in self._images:
                self._files.move_to_end(file_sha)
                self._images.move_to_end(pixels_key)
                raw = self._images[pixels_key]
        if raw is None:
            image = open_upload(upload, name)
            with self._lock:
                self.decode_calls += 1
            raw, pixels_key = self.image_embedding(image)
            with self._lock:
                self._remember(self._files, file_sha, pixels_key)
        return raw, {"kind": "image", "path": display_name(upload), "sha256": file_sha,
                     "pixels_sha256": pixels_key}

    def prompt_embedding(self, prompt: str, seed: int) -> torch.Tensor:
        """Raw image embedding (D,) float32 the prior makes of ``prompt`` with ``seed``.

        The same as ``pipe(source, prompt, generator=torch.Generator().manual_seed(seed))``
        computes internally, so cached and uncached edits agree.
        """
        key = (prompt, int(seed), self.prior_steps)
        with self._lock:
            if key in self._prompts:
                self._prompts.move_to_end(key)
                return self._prompts[key]
        with self.model_lock:
            gen = torch.Generator().manual_seed(int(seed))
            raw = self.pipe.prompt_to_image_embedding([prompt], generator=gen,
                                                      num_inference_steps=self.prior_steps)[0]  # (D,)
        with self._lock:
            self.prompt_calls += 1
            self._remember(self._prompts, key, raw)
        return raw
