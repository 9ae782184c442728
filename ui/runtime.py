"""What a command sets up for its process: quiet model libraries, and accelerate's processes.

One home for the rules every command shares: the model libraries' logs stay off stderr (stderr is for
vslerp's errors and warnings; ``VSLERP_LOG=1`` shows them), and processes run on the device
``vslerp.stats.encode.default_device()`` picks (which honours ``ACCELERATE_USE_CPU``).
"""

from __future__ import annotations

import contextlib
import os

__all__ = ["TINY_RANDOM", "accelerate_run", "accelerate_state", "build_tiny_random", "main_process_owns",
           "quiet_model_logs", "runs_on_cpu"]

# --tiny-random's defaults (`vslerp ui` and the render commands): 64 px, 2 steps, 2 prior steps
TINY_RANDOM = {"steps": 2, "size": 64, "prior_steps": 2}


@contextlib.contextmanager
def quiet_model_logs():
    """While models load and run: diffusers', transformers' and huggingface_hub's info and
    warning logs ("Could not reach the Hub ... using cached" offline, the prior's "input was
    truncated") and load progress bars are off; restored afterwards (the pipeline's own
    progress bar and vslerp's warnings are not theirs). ``VSLERP_LOG`` set: nothing is silenced."""
    if os.environ.get("VSLERP_LOG"):
        yield
        return
    from diffusers.utils import logging as diffusers_logging
    from huggingface_hub.utils import logging as hub_logging
    from transformers.utils import logging as transformers_logging

    libraries = (diffusers_logging, transformers_logging)
    levels = [lib.get_verbosity() for lib in (*libraries, hub_logging)]
    bars = [lib.is_progress_bar_enabled() for lib in libraries]
    for lib in (*libraries, hub_logging):
        lib.set_verbosity_error()
    for lib in libraries:
        lib.disable_progress_bar()
    try:
        yield
    finally:
        for lib, level in zip((*libraries, hub_logging), levels, strict=True):
            lib.set_verbosity(level)
        for lib, bar in zip(libraries, bars, strict=True):
            if bar:
                lib.enable_progress_bar()


def runs_on_cpu(device: str | None) -> bool:
    """Whether accelerate's processes run on the CPU (gloo): the given ``--device`` (or
    ``default_device()``, cpu under ``ACCELERATE_USE_CPU``) is not a CUDA device."""
    from vslerp.stats.encode import default_device, parse_device

    return (parse_device(device) if device is not None else default_device()).type != "cuda"


def accelerate_state(device: str | None):
    """``accelerate.PartialState`` for this process, on the CPU where :func:`runs_on_cpu`."""
    from accelerate import PartialState

    return PartialState(cpu=runs_on_cpu(device))


@contextlib.contextmanager
def accelerate_run(device: str | None):
    """:func:`accelerate_state` for one run, its process group torn down when the run ends: a gloo
    group left to the interpreter's exit can abort a process after its work is done
    ("terminate called without an active exception", seen under load)."""
    state = accelerate_state(device)
    try:
        yield state
    finally:
        import torch.distributed as dist

        if state.num_processes > 1 and dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()



def build_tiny_random(root) -> tuple[str, str]:
    """``(prior, decoder)`` folders of the tiny random Kandinsky 2.2 of --tiny-random, built quietly under ``root``."""
    from vslerp.pipelines.testing import make_tiny_kandinsky

    with quiet_model_logs():
        prior, decoder = make_tiny_kandinsky(root)
    return str(prior), str(decoder)


@contextlib.contextmanager
def main_process_owns(state, lock):
    """Hold ``lock()`` (an output lock) on the main process only; under accelerate every process learns at once whether it could."""
    from vslerp.stats import OutputBusy

    with contextlib.ExitStack() as stack:
        busy = None
        if state is None or state.is_main_process:
            try:
                stack.enter_context(lock())
            except OutputBusy as err:
                busy = str(err)
        if state is not None and state.num_processes > 1:
            from accelerate.utils import broadcast_object_list

            busy = broadcast_object_list([busy], from_process=0)[0]
        if busy is not None:
            raise OutputBusy(busy)
        yield
