#!/usr/bin/env bash
# mlx-harmony-bench on the lent GPU machine (H100), on a random-weight gpt-oss-20b-shaped model:
# all four targets (our CLI stack, our server, mlx-lm, mlx_lm.server), interleaved prompt by
# prompt; then the report. Optionally tools/bench_batching.py on the same model.
#
# Runs from the checkout root inside ../shared/gpu's setup (MLX-CUDA + wheels installed, the
# members' src folders on PYTHONPATH). Prepare here once, with the server's extra wheels:
#     bash ../shared/gpu/prepare.sh fastapi starlette uvicorn
# then, back to back (the machine keeps /root only while it stays warm):
#     run(kind="nvidia-h100-x1", carry=[".gpu/a", ".gpu/bin"], command="bash .gpu/bin/setup.sh")
#     run(carry=[".gpu/b", ".gpu/bin"], timeout_s=600,
#         command="bash .gpu/bin/setup.sh bash tools/bench/gpu.sh all")
# and, if there is time left on the machine, the batching table:
#     run(carry=[".gpu/b", ".gpu/bin"], timeout_s=600,
#         command="bash .gpu/bin/setup.sh bash tools/bench/gpu.sh batching")
# Results come back as $OUT/bench.tgz (and $OUT/batching.tgz); here:
#     mkdir -p docs/benchmarks/bench-h100-gpt-oss-20b-random
#     tar -xzf <files_at>/bench.tgz -C docs/benchmarks/bench-h100-gpt-oss-20b-random
#     uv run mlx-harmony-bench report docs/benchmarks/bench-h100-gpt-oss-20b-random \
#         --title "mlx-harmony-bench: random-weight gpt-oss-20b (4-bit) on an H100"
#
# Steps: model (build the random model once per machine), run (the four targets), all (both),
# batching (tools/bench_batching.py at 1, 2, 4, 8, 16 clients). Settings from the environment:
#   BENCH_TARGETS      local,server,mlx-lm,mlx-lm-server
#   BENCH_LIMIT        14 prompts (round-robin over the categories: 18 turns)
#   BENCH_MAX_TOKENS   128
#   BENCH_SHAPE        gpt-oss-20b (any mlx-harmony-random-model --shape; tiny for a dry run)
#   BENCH_BITS         4 (the linear layers; empty: bfloat16 weights, ~42 GB a copy)
#   BENCH_INTERLEAVE   1 (all four models loaded at once, ~13 GB each in 4 bits; 0: in turn)
#   BENCH_DEADLINE     540 s for the whole call: the run is stopped (SIGINT, servers stopped,
#                      finished turns kept) so that results still come back
set -uo pipefail
started=$(date +%s)
step=${1:-all}
root=$(pwd)
out=${OUT:-/tmp/bench-out}
mkdir -p "$out"

targets=${BENCH_TARGETS:-local,server,mlx-lm,mlx-lm-server}
limit=${BENCH_LIMIT:-14}
max_tokens=${BENCH_MAX_TOKENS:-128}
bits=${BENCH_BITS-4}
shape=${BENCH_SHAPE:-gpt-oss-20b}
interleave=${BENCH_INTERLEAVE:-1}
deadline=${BENCH_DEADLINE:-540}
home=${BENCH_HOME:-/root}
model=$home/bench-models/$shape-random${bits:+-q$bits}
work=$home/bench-work

export PYTHONPATH="$root/tools/bench/src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export TIKTOKEN_ENCODINGS_BASE=${TIKTOKEN_ENCODINGS_BASE:-$root/packages/harmony-format/src/mlx_harmony/harmony_format/data}

# The members are importable from their src folders but not installed: give importlib.metadata
# a name and version for each, so __version__ and run.json's versions are the real ones.
meta=/tmp/mlx-harmony-meta
python3 - "$meta" "$root" <<'PY'
import sys, tomllib
from pathlib import Path
meta, root = Path(sys.argv[1]), Path(sys.argv[2])
for pyproject in [*root.glob("packages/*/pyproject.toml"), *root.glob("apps/*/pyproject.toml"),
                  root / "tools/bench/pyproject.toml"]:
    project = tomllib.loads(pyproject.read_text())["project"]
    name, version = project["name"], project["version"]
    info = meta / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
PY
export PYTHONPATH="$PYTHONPATH:$meta"

left() { echo $(( deadline - ($(date +%s) - started) )); }

build_model() {
  if [ -f "$model/config.json" ]; then
    echo "gpu.sh: model already at $model"
    return 0
  fi
  echo "gpu.sh: building a random $shape model in $model (bits: ${bits:-none})"
  python3 -c 'import sys; from mlx_harmony.demo_model.cli import random_model_main as m; sys.exit(m(sys.argv[1:]))' \
    "$model" --shape "$shape" ${BENCH_DTYPE:+--dtype "$BENCH_DTYPE"} ${bits:+--bits "$bits"} \
    --home "$home/bench-models/home" --quiet \
    || { echo "gpu.sh: the model build failed"; return 1; }
  du -sh "$model"
}

prompt_config() {
  mkdir -p "$work"
  # random weights loop and never close a Harmony message: no loop detection (mlx-lm has none)
  echo '{"loop_detection": "off"}' > "$work/prompt-config.json"
  echo "$work/prompt-config.json"
}

run_bench() {
  local cfg; cfg=$(prompt_config)
  rm -rf "$work/bench"
  local flags=()
  [ "$interleave" = 1 ] && flags+=(--interleave)
  local budget; budget=$(( $(left) - 20 ))
  echo "gpu.sh: running $targets on $limit prompts, $max_tokens tokens, ${budget}s left"
  timeout -s INT -k 30 "$budget" python3 -m mlx_harmony.bench run \
    --target "$targets" --model "$model" --prompt-config "$cfg" \
    --limit "$limit" --max-tokens "$max_tokens" --retries none --warmup 2 \
    --startup-timeout 400 --no-progress "${flags[@]}" \
    --title "mlx-harmony-bench: random-weight $shape${bits:+ ($bits-bit)} on $(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 || echo CPU)" \
    --out "$work/bench"
  local status=$?
  [ $status -ne 0 ] && echo "gpu.sh: the run ended with status $status (124/130: stopped at the deadline)"
  if [ ! -f "$work/bench/report.md" ] && ls "$work"/bench/*/records.jsonl >/dev/null 2>&1; then
    python3 -m mlx_harmony.bench report "$work/bench" >/dev/null || true
  fi
  tar -czf "$out/bench.tgz" -C "$work/bench" --exclude='*.log' . && cp "$work/bench/report.md" "$out/" 2>/dev/null
  for log in "$work"/bench/*/*.log; do [ -f "$log" ] && tail -n 15 "$log"; done
  cat "$work/bench/report.md" 2>/dev/null | head -80
  return $status
}

run_batching() {
  local cfg; cfg=$(prompt_config)
  rm -rf "$work/batching"
  local budget; budget=$(( $(left) - 20 ))
  local extra=()
  [ -z "$bits" ] && extra+=(--one-at-a-time)  # two bfloat16 copies (~42 GB each) do not fit
  timeout -s INT -k 30 "$budget" python3 tools/bench_batching.py --model "$model" \
    --prompt-config "$cfg" --concurrency "${BENCH_CONCURRENCY:-1,2,4,8,16}" \
    --max-tokens "$max_tokens" --requests-per-client 2 --startup-timeout 400 \
    --out "$work/batching" "${extra[@]}"
  local status=$?
  tar -czf "$out/batching.tgz" -C "$work/batching" . && cp "$work/batching/batching.md" "$out/" 2>/dev/null
  return $status
}

case "$step" in
  model) build_model ;;
  run) run_bench ;;
  all) build_model && run_bench ;;
  batching) build_model && run_batching ;;
  *) echo "usage: gpu.sh [model|run|all|batching]"; exit 2 ;;
esac
