# Sourced by the GPU scripts (gpu_check.sh, reproduce.sh) from the repository root: makes the
# checkout importable on a bare device machine. Python packages missing there (pydantic, typer,
# rich, safetensors) travel as wheels in .whl/ (docs/benchmarks.md says how to fetch them).
export PYTHONUNBUFFERED=1
if [ -d .whl ] && ! python3 -c "import pydantic" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
