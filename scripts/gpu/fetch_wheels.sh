#!/usr/bin/env bash
# Download the wheels the GPU machine lacks into .whl/ (git-ignored), so a `device` run can
# install them offline. Its image has torch, lightning, transformers, safetensors, einops,
# tqdm and tensorboard; it lacks diffusers, omegaconf and open_clip; lightning and
# transformers are carried too so the versions the suite was tested with run there. Versions follow
# requirements/pinned.txt.
set -euo pipefail
cd "$(dirname "$0")/../.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
mkdir -p .whl
platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${platforms[@]}" -d .whl \
  diffusers==0.42.1 omegaconf==2.4.0 lightning==2.6.6 transformers==5.23.0 antlr4-python3-runtime==4.13.2 open-clip-torch==3.3.0 ftfy wcwidth
ls -la .whl
