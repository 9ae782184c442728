"""``--ip-adapter REPO_OR_DIR:SUBFOLDER/WEIGHT``: which IP-Adapter weights an SD / SDXL base loads.

Torch-free (the CLI's parser uses it): the text names the three arguments of diffusers'
``load_ip_adapter`` (``pretrained_model_name_or_path``, ``subfolder``, ``weight_name``), e.g.
``h94/IP-Adapter:models/ip-adapter_sd15.safetensors`` → ``("h94/IP-Adapter", "models",
"ip-adapter_sd15.safetensors")``; a weight at the top of the repo or folder has subfolder ``""``.
"""

from __future__ import annotations

__all__ = ["WEIGHT_SUFFIXES", "format_ip_adapter", "parse_ip_adapter"]

WEIGHT_SUFFIXES = (".safetensors", ".bin")  # the weight files load_ip_adapter reads

_FORM = "REPO_OR_DIR:SUBFOLDER/WEIGHT, e.g. h94/IP-Adapter:models/ip-adapter_sd15.safetensors"


def parse_ip_adapter(text: str) -> tuple[str, str, str]:
    """``"REPO_OR_DIR:SUBFOLDER/WEIGHT"`` → ``(repo_or_dir, subfolder, weight_name)``.

    The last ``:`` separates the repo or folder (which may hold one, as ``C:\\models``) from the
    weight's path inside it; the weight's last ``/`` its subfolder (``""``: none) from the file
    name, which must end in ``.safetensors`` or ``.bin``. ``ValueError`` naming what is wrong.
    """
    if not isinstance(text, str):
        raise TypeError(f"--ip-adapter must be text ({_FORM}), got {type(text).__name__}")
    if ":" not in text:
        raise ValueError(f"--ip-adapter {text!r}: no ':' before the weight file: give {_FORM}")
    repo, inside = text.rsplit(":", 1)
    repo, inside = repo.strip(), inside.strip().replace("\\", "/")
    if not repo:
        raise ValueError(f"--ip-adapter {text!r}: the repo or folder before ':' is empty: give {_FORM}")
    subfolder, _, weight = inside.rpartition("/")
    parts = [p for p in subfolder.split("/") if p]
    if not weight:
        raise ValueError(f"--ip-adapter {text!r}: no weight file after ':': give {_FORM}")
    if not weight.lower().endswith(WEIGHT_SUFFIXES):
        raise ValueError(f"--ip-adapter {text!r}: the weight file {weight!r} must end in .safetensors or .bin")
    if ".." in parts or inside.startswith("/"):
        raise ValueError(f"--ip-adapter {text!r}: the weight's path must lie inside the repo or folder")
    return repo, "/".join(parts), weight


def format_ip_adapter(repo: str, subfolder: str | None, weight_name: str) -> str:
    """The text :func:`parse_ip_adapter` reads back into ``(repo, subfolder, weight_name)``."""
    inside = f"{subfolder.strip('/')}/{weight_name}" if subfolder else weight_name
    return f"{repo}:{inside}"
