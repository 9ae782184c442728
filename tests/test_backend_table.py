"""The backend table (vslerp.stats.models): one record per generator, asked by everything else.

Each backend class's defaults and options are its record's; a ``model_index.json`` of a pipeline
no record claims (SD3) is refused by name on the CLI (one line, exit 2, nothing loaded) and by
``from_pretrained`` (ValueError); a ``model_index.json`` is read once per version of the file;
a failed load is a typed error the CLI translates by its type.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import vslerp.stats.models as models
from vslerp.pipelines import VSlerpPipeline
from vslerp.pipelines.limits import size_rule
from vslerp.stats.generators import generator_layout
from vslerp.stats.hub import ModelLoadError, ModelUnavailable, unavailable_model
from vslerp.ui.cli import main

SUPPORTED = ("vslerp renders KandinskyV22Pipeline, UnCLIPImageVariationPipeline, StableUnCLIPImg2ImgPipeline, "
             "StableDiffusionPipeline, StableDiffusionXLPipeline, FluxPipeline")


def cli(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def no_models(monkeypatch):
    def tripwire(*args, **kwargs):
        raise AssertionError("a model was loaded for an error a cheap check should catch")

    monkeypatch.setattr(VSlerpPipeline, "from_pretrained", tripwire)


@pytest.fixture
def work(tmp_path):
    rng = np.random.default_rng(0)
    for name in ("src.png", "tgt.png"):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(tmp_path / name)
    for name, class_name in (("sd3", "StableDiffusion3Pipeline"), ("flux", "FluxPipeline")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "model_index.json").write_text(json.dumps({"_class_name": class_name}))
    return tmp_path


@pytest.mark.parametrize("record", models.TABLE, ids=lambda r: r.name)
def test_each_backend_class_is_its_record(record):
    cls = record.pipeline_class()
    assert cls.backend == record.name and cls.__name__ == record.class_names[1]
    assert cls.default_guidance_scale == record.guidance
    assert tuple(cls._backend_options) == record.options
    assert models.BACKENDS[record.class_names[0]] == record.name
    if record.size is not None:
        assert cls.default_size == record.size


def test_an_unknown_class_name_is_refused_by_name_on_the_cli(work, capsys, no_models):
    code, out, err = cli(capsys, "grid", work / "src.png", work / "tgt.png", "--model", work / "sd3",
                         "--out", work / "grid.png")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert "StableDiffusion3Pipeline is not supported (yet)" in lines[0] and SUPPORTED in lines[0]
    assert not (work / "grid.png").exists()


def test_an_unknown_class_name_is_refused_by_from_pretrained_and_stats(work):
    with pytest.raises(ValueError, match=r"StableDiffusion3Pipeline is not supported \(yet\): " + SUPPORTED):
        VSlerpPipeline.from_pretrained(work / "sd3", device=None)
    with pytest.raises(models.UnsupportedModel, match="StableDiffusion3Pipeline is not supported"):
        generator_layout(work / "sd3")  # `vslerp stats compute --model`: not read as a Kandinsky prior
    assert models.backend_of(work / "sd3") is None  # the documented answer for "not a backend" stays


def test_a_flux_folder_is_recognised(work, capsys, no_models):
    assert models.backend_of(work / "flux", strict=True) == "flux" and generator_layout(work / "flux") == "flux"
    assert models.backend_by_name("black-forest-labs/FLUX.1-dev") == "flux"
    code, _, err = cli(capsys, "grid", work / "src.png", work / "tgt.png", "--model", work / "flux",
                       "--out", work / "grid.png")  # a FLUX base renders through an IP-Adapter
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "is a FLUX.1 base (flux)" in err and "XLabs-AI/flux-ip-adapter:ip_adapter.safetensors" in err


def test_a_prior_given_as_the_generator_is_named(tiny_kandinsky):
    with pytest.raises(ValueError, match="holds a Kandinsky 2.2 prior .*give it as the prior"):
        VSlerpPipeline.from_pretrained(tiny_kandinsky[0], device=None)


def test_model_index_is_read_once_per_version_of_the_file(tmp_path, monkeypatch):
    reads = []
    read_text = Path.read_text

    def counting(self, *args, **kwargs):
        if self.name == "model_index.json":
            reads.append(self)
        return read_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", counting)
    index = tmp_path / "model_index.json"
    index.write_text(json.dumps({"_class_name": "KandinskyV22Pipeline"}))
    assert models.backend_of(tmp_path) == "kandinsky2.2"
    assert models.read_model_index(tmp_path)["_class_name"] == "KandinskyV22Pipeline"
    models.read_model_index(tmp_path)["_class_name"] = "changed"  # a copy: the parsed file stays
    assert size_rule(tmp_path) == (64, None) and len(reads) == 1
    index.write_text(json.dumps({"_class_name": "UnCLIPImageVariationPipeline", "x": 1}))  # a new version
    assert models.backend_of(tmp_path) == "unclip" and len(reads) == 2


def test_size_rules_come_from_the_records(tmp_path):
    for part, config, rule in (("movq", {"block_out_channels": [8, 16]}, (4, None)),
                               ("super_res_first", {"sample_size": 32}, (1, 32)),
                               ("vae", {"block_out_channels": [8, 16, 16, 16, 16]}, (16, None))):
        folder = tmp_path / part
        (folder / part).mkdir(parents=True)
        (folder / part / "config.json").write_text(json.dumps(config))
        name = {"movq": "KandinskyV22Pipeline", "super_res_first": "UnCLIPImageVariationPipeline",
                "vae": "StableDiffusionPipeline"}[part]
        (folder / "model_index.json").write_text(json.dumps({"_class_name": name}))
        assert size_rule(folder) == rule
    assert size_rule("kakaobrain/karlo-v1-alpha-image-variations") == (1, 256)  # a hub id: the record's
    flux = tmp_path / "flux"
    (flux / "vae").mkdir(parents=True)
    (flux / "vae" / "config.json").write_text(json.dumps({"block_out_channels": [8, 16, 16, 16]}))
    (flux / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    assert size_rule(flux) == (16, None)  # VAE factor 8 × FLUX's 2×2 packing
    assert size_rule("black-forest-labs/FLUX.1-dev") == (16, None)


def test_a_failed_load_is_typed_and_the_cli_names_the_option(tiny_kandinsky, work, capsys):
    prior, _ = tiny_kandinsky
    broken = work / "broken"
    broken.mkdir()
    (broken / "model_index.json").write_text(json.dumps({"_class_name": "KandinskyV22Pipeline",
                                                         "unet": ["diffusers", "UNet2DConditionModel"]}))
    with pytest.raises(ModelLoadError) as caught:
        VSlerpPipeline.from_pretrained(broken, prior=prior, device=None)
    assert caught.value.option == "--model" and caught.value.ident == str(broken) and caught.value.reason
    assert str(caught.value).startswith("cannot load the Kandinsky 2.2 decoder")  # the API's own words
    code, _, err = cli(capsys, "grid", work / "src.png", work / "tgt.png", "--model", broken, "--prior", prior,
                       "--steps", 2, "--size", 64, "--out", work / "grid.png")
    lines = err.strip().splitlines()
    assert code == 2 and lines[-1].startswith(f"vslerp grid: error: cannot load --model {str(broken)!r}: "), err
    missing = unavailable_model("nobody/no-such-prior", "--prior")
    assert isinstance(missing, ModelUnavailable) and isinstance(missing, ModelLoadError)
    assert (missing.option, missing.ident) == ("--prior", "nobody/no-such-prior") and "--prior DIR" in missing.reason
