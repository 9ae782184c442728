#!/usr/bin/env bash
# The GPU suite on a machine without network (benchmarks/gpu_device.md says why and how).
#
#   bash benchmarks/gpu_run.sh fetch        # here, with PyPI: the wheels the GPU machine lacks -> .whl/
#   bash benchmarks/gpu_run.sh run [ARGS]   # there: install what is missing, run bench_gpu.py --device cuda
#   bash benchmarks/gpu_run.sh check        # only print which carried wheels this machine would install
#
# fetch pins the versions this environment runs (diffusers and its pure-Python requirements,
# setuptools for the editable install); run installs a carried wheel only where the machine
# lacks the package or has it older than the minimum below (diffusers checks its requirements'
# versions when imported), into /tmp/site (PYTHONPATH), then the project with --no-deps, then
# the suite. Results: $OUT (the device tool's output folder) or out/gpu: results.json, RESULTS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
mode="${1:-run}"
shift || true
# distribution:minimum version ("carried": the fetched one; "any": install only when missing):
# what diffusers needs beyond torch, transformers, safetensors, numpy and pillow (its Requires-Dist).
# huggingface_hub comes with transformers: a newer one (with its own requirements) could break the
# machine's transformers, and diffusers checks only python, requests, filelock and numpy at import.
WHEELS="diffusers:carried huggingface_hub:any importlib_metadata:any zipp:any requests:any
charset_normalizer:any idna:any urllib3:any certifi:any setuptools:64"

if [ "$mode" = "fetch" ]; then
  py="${PYTHON:-python3}"
  rm -rf .whl && mkdir -p .whl
  for pair in $WHEELS; do
    dist="${pair%%:*}"
    version="$("$py" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$dist")"
    "$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform any -d .whl "$dist==$version"
  done
  du -sh .whl && ls .whl
  exit 0
fi
if [ "$mode" != "run" ] && [ "$mode" != "check" ]; then
  echo "gpu_run.sh: unknown mode '$mode' (fetch, run or check)" >&2
  exit 2
fi

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PIP_DISABLE_PIP_VERSION_CHECK=1
site=/tmp/site
mkdir -p "$site"
export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
need="$(python3 - "$WHEELS" <<'PY'
import glob, importlib.metadata as m, re, sys

def key(v):
    return [int(x) if x.isdigit() else 0 for x in re.split(r"[.+]", v)[:3]]

for pair in sys.argv[1].split():
    dist, minimum = pair.split(":")
    wheel = sorted(glob.glob(f".whl/{dist}-*.whl"))
    if not wheel:
        sys.exit(f"gpu_run.sh: no {dist} wheel in .whl/ (run 'bash benchmarks/gpu_run.sh fetch' with network, "
                 "and carry .whl)")
    carried = re.match(rf"{dist}-([^-]+)-", wheel[-1].split("/")[-1]).group(1)
    try:
        have = m.version(dist)
    except m.PackageNotFoundError:
        have = None
    floor = carried if minimum == "carried" else None if minimum == "any" else minimum
    if have is None or (floor is not None and key(have) < key(floor)):
        print(wheel[-1])
PY
)"
if [ "$mode" = "check" ]; then
  echo "${need:-nothing to install}"
  exit 0
fi
if [ -n "$need" ]; then
  echo "gpu_run.sh: installing $(echo "$need" | xargs -n1 basename | tr '\n' ' ')"
  # shellcheck disable=SC2086
  python3 -m pip install -q --no-index --no-deps --no-compile --target "$site" $need
fi
python3 -m pip install -q --no-deps --no-build-isolation -e .
out="${OUT:-out/gpu}"
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv || true
python3 benchmarks/bench_gpu.py --device cuda --out "$out" "$@"
