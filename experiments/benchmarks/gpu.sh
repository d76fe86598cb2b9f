#!/bin/sh
# One-command GPU benchmark (experiments/benchmarks/gpu.py): writes a markdown table to $1.
#   sh experiments/benchmarks/gpu.sh OUT.md [--budget=240]
# Installs nothing. Needs python with jax (CUDA), flax, optax and ml_collections; torch and
# diffusers only for the last part (diffjax vs diffusers).
set -u
OUT="${1:?usage: sh experiments/benchmarks/gpu.sh OUT.md [--budget=SECONDS]}"
shift
PY="${PYTHON:-$(command -v python || command -v python3)}"
cd "$(dirname "$0")/../.." || exit 1
if ! "$PY" -c 'import jax; jax.devices("gpu")' >/dev/null 2>&1; then
  echo "gpu.sh: no GPU visible to JAX ($PY -c 'import jax; jax.devices(\"gpu\")' failed)." >&2
  echo "gpu.sh: needs jax with CUDA (pip install 'jax[cuda12]' or 'jax[cuda13]'); nothing was run." >&2
  "$PY" -c 'import jax; print("jax", jax.__version__, "devices:", jax.devices())' >&2 || true
  exit 2
fi
export PYTHONUNBUFFERED=1
exec "$PY" experiments/benchmarks/gpu.py "$OUT" "$@"
