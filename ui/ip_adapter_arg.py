"""``--ip-adapter REPO_OR_DIR:SUBFOLDER/WEIGHT``: the one parser of that value (no torch).

``h94/IP-Adapter:models/ip-adapter_sd15.safetensors`` → ``("h94/IP-Adapter", "models",
"ip-adapter_sd15.safetensors")``: the three arguments of diffusers' ``load_ip_adapter``
(``pretrained_model_name_or_path_or_dict``, ``subfolder``, ``weight_name``). The split is at the
last ``:`` before the ``SUBFOLDER/WEIGHT`` part, so a Windows drive (``C:\\adapters:models/...``)
stays in the folder; the subfolder may be nested (``a/b/w.safetensors`` → ``"a/b"``).
"""

from __future__ import annotations

__all__ = ["IP_ADAPTER_FORMAT", "parse_ip_adapter"]

IP_ADAPTER_FORMAT = "REPO_OR_DIR:SUBFOLDER/WEIGHT.safetensors"
_WEIGHT_SUFFIXES = (".safetensors", ".bin")


def parse_ip_adapter(text) -> tuple[str, str, str]:
    """``"REPO_OR_DIR:SUBFOLDER/WEIGHT"`` → ``(repo_or_dir, subfolder, weight_name)``.

    Raises ``ValueError`` with one line (``--ip-adapter must be REPO_OR_DIR:SUBFOLDER/WEIGHT.safetensors,
    got ...``, and what is missing) for anything else: no ``:``, an empty part, no subfolder,
    a weight file that is not ``.safetensors`` / ``.bin``.
    """
    if not isinstance(text, str):
        raise TypeError(f"--ip-adapter must be a string, got {type(text).__name__}")
    value = text.strip()

    def bad(why: str) -> ValueError:
        return ValueError(f"--ip-adapter must be {IP_ADAPTER_FORMAT}, got {text!r} ({why}); "
                          "e.g. h94/IP-Adapter:models/ip-adapter_sd15.safetensors")

    repo, sep, rest = value.rpartition(":")
    if not sep:
        raise bad("no ':' between the repo or folder and SUBFOLDER/WEIGHT")
    repo, rest = repo.strip(), rest.strip().replace("\\", "/")
    if not repo:
        raise bad("no repo or folder before ':'")
    subfolder, slash, weight = rest.rpartition("/")
    subfolder = subfolder.strip("/")
    if not slash or not subfolder:
        raise bad("no SUBFOLDER/ before the weight file")
    if not weight or not weight.lower().endswith(_WEIGHT_SUFFIXES):
        raise bad("the weight file must end in .safetensors or .bin")
    if any(part in ("", ".", "..") for part in subfolder.split("/")):
        raise bad("the subfolder must be a plain relative path")
    return repo, subfolder, weight
