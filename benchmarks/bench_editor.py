"""The editor's embedding cache: an α change (cache hit: decode only) vs a cold edit.

Side by side in one run, on tiny random Kandinsky 2.2 components on the CPU (no weights
here), through the editor's own callback (``Editor.edit``) and through the HTTP API
(``gradio_client`` → ``/edit``):
  * cold: a fresh cache each time — the source through the image encoder and the prompt
    through the prior (``--prior-steps``), then the decoder;
  * warm: the same inputs with a new α — only the decoder runs.
Prints seconds (best of ``--repeats``, timed alternately) and warm/cold ratios (lower is better).
With real weights the encoder and the 25-step prior are a larger share, so the ratio falls.

Many users at once (``--clients``, default 20): that many threads each send one /edit request
(own seed and α) at the same moment, over HTTP with ``gradio_client``, to two servers launched
on 127.0.0.1 in this process: batched (concurrent requests share one pipeline call) and one at
a time (``max_batch=1``, the old behaviour). Prints wall times and batched/one-at-a-time ratios
for the crowd and for a single user's sequential edits (lower is better; ≤ 1 means no slower).

    python benchmarks/bench_editor.py [--size 64] [--steps 4] [--prior-steps 25] [--repeats 5] [--clients 20]
"""

from __future__ import annotations

import argparse
import os
import socket
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

__all__ = ["main"]


def paired(fn_a, fn_b, repeats: int) -> tuple[float, float]:
    """Best-of-``repeats`` seconds of two functions timed alternately."""
    best = [float("inf"), float("inf")]
    for _ in range(repeats):
        for k, fn in enumerate((fn_a, fn_b)):
            start = time.perf_counter()
            fn()
            best[k] = min(best[k], time.perf_counter() - start)
    return best[0], best[1]


def crowd(pipe, source: str, args) -> None:
    """Wall time of ``args.clients`` concurrent /edit requests and of one user's sequential edits,
    batched vs one at a time, on two servers side by side (timed alternately, best of repeats)."""
    import threading

    from gradio_client import Client, handle_file

    from vslerp.ui.editor import Editor, build_page

    servers = {}
    for name, max_batch in (("batched", 16), ("one at a time", 1)):
        editor = Editor(pipe, tiny_random=True, prior_steps=args.prior_steps, max_batch=max_batch)
        demo = build_page(editor)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
        clients = [Client(demo.local_url, verbose=False, httpx_kwargs={"timeout": 300}) for _ in range(args.clients)]
        servers[name] = (demo, clients, editor)
    try:
        def edit(client, k):
            client.predict(handle_file(source), None, "a photo of a cat", 0.5, -2 + 4 * k / max(1, args.clients - 1),
                           k, args.steps, 4.0, args.size, api_name="/edit")

        def together(name):
            clients = servers[name][1]
            go = threading.Barrier(len(clients) + 1)

            def one(k):
                go.wait()
                edit(clients[k], k)

            threads = [threading.Thread(target=one, args=(k,)) for k in range(len(clients))]
            for t in threads:
                t.start()
            go.wait()  # every client sends at once
            start = time.perf_counter()
            for t in threads:
                t.join()
            return time.perf_counter() - start

        def alone(name):
            client = servers[name][1][0]
            start = time.perf_counter()
            for k in range(5):
                edit(client, k)
            return time.perf_counter() - start

        for name in servers:  # warm up: caches filled, torch warmed, connections open
            together(name)
        best = {}
        for _ in range(args.repeats):
            for name in servers:
                for kind, fn in (("crowd", together), ("single", alone)):
                    best[kind, name] = min(best.get((kind, name), float("inf")), fn(name))
        batches = servers["batched"][2].queue
        print(f"{args.clients} concurrent /edit clients: batched {best['crowd', 'batched']:.2f} s, one at a time "
              f"{best['crowd', 'one at a time']:.2f} s   ratio {best['crowd', 'batched'] / best['crowd', 'one at a time']:.2f}"
              f"   (largest batch {batches.largest} requests)")
        print(f"one user, 5 sequential /edit calls: batched {best['single', 'batched']:.2f} s, one at a time "
              f"{best['single', 'one at a time']:.2f} s   ratio "
              f"{best['single', 'batched'] / best['single', 'one at a time']:.2f}")
    finally:
        for demo, *_ in servers.values():
            demo.close()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--prior-steps", type=int, default=25)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--clients", type=int, default=20, help="concurrent /edit clients")
    parser.add_argument("--only-crowd", action="store_true", help="skip the cache benchmark")
    args = parser.parse_args(argv)

    import numpy as np
    import PIL.Image
    import torch

    from vslerp.pipelines import VSlerpPipeline
    from vslerp.pipelines.testing import make_tiny_kandinsky
    from vslerp.ui.editor import Editor, EditorState, build_page

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    with tempfile.TemporaryDirectory() as tmp:
        prior_dir, decoder_dir = make_tiny_kandinsky(tmp)
        pipe = VSlerpPipeline.from_pretrained(decoder_dir, prior=prior_dir, device="cpu")
        pipe.set_progress_bar_config(disable=True)
        source = os.path.join(tmp, "source.png")
        PIL.Image.fromarray(np.random.default_rng(0).integers(0, 256, (96, 96, 3), dtype=np.uint8)).save(source)
        alphas = iter(np.tile(np.linspace(-2, 2, 9), 1000))
        if args.only_crowd:
            crowd(pipe, source, args)
            return 0
        editor = Editor(pipe, tiny_random=True, prior_steps=args.prior_steps)
        common = dict(steps=args.steps, guidance=4.0, size=args.size)

        def cold():
            editor.state = EditorState(pipe, prior_steps=args.prior_steps)  # empty cache
            editor.edit(source, None, "a photo of a cat", 0.5, 0.0, 1, **common)

        def warm():
            editor.edit(source, None, "a photo of a cat", 0.5, float(next(alphas)), 1, **common)

        warm()  # fill the cache (and warm up torch)
        cold_s, warm_s = paired(cold, warm, args.repeats)
        print(f"callback  cold edit {cold_s * 1e3:8.1f} ms   α change (cached) {warm_s * 1e3:8.1f} ms   "
              f"ratio {warm_s / cold_s:.2f}")

        from gradio_client import Client, handle_file

        api_editor = Editor(pipe, tiny_random=True, prior_steps=args.prior_steps)
        demo = build_page(api_editor)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
        try:
            client = Client(demo.local_url, verbose=False)

            def call(alpha):
                client.predict(handle_file(source), None, "a photo of a cat", 0.5, alpha, 1, args.steps, 4.0,
                               args.size, api_name="/edit")

            def api_cold():
                api_editor.state = EditorState(pipe, prior_steps=args.prior_steps)
                call(0.0)

            call(0.0)
            cold_s, warm_s = paired(api_cold, lambda: call(float(next(alphas))), args.repeats)
            print(f"/edit API cold edit {cold_s * 1e3:8.1f} ms   α change (cached) {warm_s * 1e3:8.1f} ms   "
                  f"ratio {warm_s / cold_s:.2f}")
        finally:
            demo.close()
        crowd(pipe, source, args)
    print(f"(tiny random model, {args.size}px, {args.steps} decoder steps, {args.prior_steps} prior steps, CPU)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
