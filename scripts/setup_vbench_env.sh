#!/usr/bin/env bash
# Create (or bring up to date) the separate VBench environment that ditguide.metrics.vbench_score
# runs VBench in. vbench 0.1.5 pins transformers==4.33.2, timm<=1.0.12 and numpy<2, which the main
# environment cannot share, so it gets its own venv.
#
#   bash scripts/setup_vbench_env.sh                      # -> <repo>/.venv-vbench
#   DITGUIDE_VBENCH_VENV=/path/to/venv bash scripts/setup_vbench_env.sh
#   WITH_DETECTRON2=1 bash scripts/setup_vbench_env.sh    # + detectron2 from git (GPU machines with internet;
#                                                         #   needed by object_class, multiple_objects,
#                                                         #   color, spatial_relationship)
#   PYTHON=/usr/bin/python3.11 bash scripts/setup_vbench_env.sh
#
# Safe to rerun: an existing venv is updated in place. Model weights are not downloaded here:
# VBench fetches them into $VBENCH_CACHE_DIR (~/.cache/vbench) on first use, or run
#   <venv>/bin/python src/ditguide/metrics/vbench_run.py --prefetch
# on a machine with internet.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${DITGUIDE_VBENCH_VENV:-$repo/.venv-vbench}"
python="${PYTHON:-python3.11}"
# detectron2 has no release on PyPI; VBench's README installs its HEAD. Set DETECTRON2_REF to pin a commit.
detectron2_ref="${DETECTRON2_REF:-main}"
start=$(date +%s)

if ! command -v "$python" >/dev/null 2>&1; then
  echo "setup_vbench_env: $python not found; set PYTHON to a Python 3.11 interpreter" >&2
  exit 1
fi
version="$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
if [ "$version" != "3.11" ]; then
  echo "setup_vbench_env: requirements-vbench.txt was resolved on Python 3.11; $python is $version (set PYTHON)" >&2
  exit 1
fi

if [ ! -x "$venv/bin/python" ]; then
  echo "creating $venv"
  "$python" -m venv "$venv"
fi
# Keep the environment (several GB) out of git wherever it lives (Python >= 3.13 venv does this itself).
printf '# created by scripts/setup_vbench_env.sh: keep this environment out of git\n*\n' > "$venv/.gitignore"
# torch first and alone: with torch already present, resolving vbench's deps cannot pull another build.
"$venv/bin/python" -m pip install --quiet torch==2.14.1 torchvision==0.29.1
"$venv/bin/python" -m pip install --quiet -r "$repo/requirements-vbench.txt"
if [ "${WITH_DETECTRON2:-0}" = "1" ]; then
  "$venv/bin/python" -m pip install --quiet --no-build-isolation \
    "detectron2 @ git+https://github.com/facebookresearch/detectron2.git@${detectron2_ref}"
fi

# Smoke test: the package and the weight-free dimension import with these pins.
"$venv/bin/python" -c "import vbench, vbench.temporal_flickering, vbench.background_consistency; print('vbench', __import__('importlib.metadata').metadata.version('vbench'))"
echo "VBench environment ready at $venv ($(( $(date +%s) - start )) s)"
