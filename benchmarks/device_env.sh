# Sourced by the GPU scripts (gpu_window.sh, reproduce.sh) from the repository root: makes the
# checkout importable on a bare device machine and unpacks the prepared data folders it carries
# (.devdata/<folder>.tar.xz into data/<folder>, unless already there). Python packages missing
# there (pydantic and what it needs; typer, for a known version) travel as wheels in .whl/
# (benchmarks/gpu_prepare.sh).
export PYTHONUNBUFFERED=1
if [ -d .whl ] && ! python3 -c "import pydantic" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
for archive in .devdata/*.tar.xz; do
  [ -f "$archive" ] || continue
  name=$(basename "$archive" .tar.xz)
  [ -f "data/$name/manifest.json" ] || { mkdir -p data && tar -xJf "$archive" -C data; }
done
