#!/usr/bin/env bash
# The GPU benchmarks of docs/benchmarks/gpu.md in one script, on a random-weight model of the
# gpt-oss-20b shape (no download). Run it from the checkout root with the environment that page
# sets up active (MLX's CUDA build and the workspace installed), for example:
#
#     bash tools/bench/gpu.sh all            # model, decode, run, batching, overhead
#     BENCH_BITS= bash tools/bench/gpu.sh batching   # bfloat16 weights (~42 GB a copy)
#
# Steps:
#   model     build the random model once (mlx-harmony-random-model) into $BENCH_MODELS
#   decode    tools/bench_generate.py: our decode loop against mlx-lm's, same model object
#   run       mlx-harmony-bench run: local, server, mlx-lm, mlx-lm-server interleaved, then report
#   batching  mlx-harmony-bench batching: 1, 2, 4, 8, 16 clients, our server and mlx_lm.server
#   overhead  mlx-harmony-bench server-overhead: the same turns in-process and through our server
#   all       every step above, in that order
#
# Settings from the environment (defaults in brackets):
#   BENCH_SHAPE        any mlx-harmony-random-model --shape [gpt-oss-20b]; tiny for a dry run
#   BENCH_BITS         quantize the linear layers [4]; empty: bfloat16 weights
#   BENCH_MODELS       where models are built [models]
#   BENCH_OUT          where results go, one folder per step [bench-results/gpu]
#   BENCH_TARGETS      targets of `run` [local,server,mlx-lm,mlx-lm-server]
#   BENCH_LIMIT        prompts of `run` (round-robin over the categories) [14]
#   BENCH_MAX_TOKENS   tokens per turn [128]
#   BENCH_INTERLEAVE   1: `run` keeps every target loaded at once (~13 GB each in 4 bits) [1]
#   BENCH_CONCURRENCY  client counts of `batching` [1,2,4,8,16]
#   BENCH_DEADLINE     seconds for the whole script; a harness step still running then is
#                      stopped with SIGINT (servers stopped, finished turns kept) [none]
#   PYTHON             the interpreter [python3]
set -uo pipefail
started=$(date +%s)
step=${1:-all}
root=$(pwd)
python=${PYTHON:-python3}

shape=${BENCH_SHAPE:-gpt-oss-20b}
bits=${BENCH_BITS-4}
models=${BENCH_MODELS:-models}
out=${BENCH_OUT:-bench-results/gpu}
targets=${BENCH_TARGETS:-local,server,mlx-lm,mlx-lm-server}
limit=${BENCH_LIMIT:-14}
max_tokens=${BENCH_MAX_TOKENS:-128}
interleave=${BENCH_INTERLEAVE:-1}
concurrency=${BENCH_CONCURRENCY:-1,2,4,8,16}
deadline=${BENCH_DEADLINE:-}
model=$models/$shape-random${bits:+-q$bits}
label="random-weight $shape${bits:+ ($bits-bit)}"

export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
# A checkout whose sources are on PYTHONPATH instead of installed: the harness's too.
"$python" -c 'import mlx_harmony.bench' 2>/dev/null \
  || export PYTHONPATH="$root/tools/bench/src${PYTHONPATH:+:$PYTHONPATH}"

device=$("$python" -c 'import mlx.core as mx; print(mx.device_info().get("device_name") or mx.default_device())' 2>/dev/null || echo "no MLX")
echo "gpu.sh: $step on $device; model $model; results in $out"

# Runs "$@", stopped with SIGINT when BENCH_DEADLINE runs out.
bounded() {
  if [ -z "$deadline" ]; then
    "$@"
    return
  fi
  local left=$(( deadline - ($(date +%s) - started) ))
  [ "$left" -gt 30 ] || { echo "gpu.sh: no time left for $*"; return 124; }
  timeout -s INT -k 30 "$left" "$@"
}

build_model() {
  if [ -f "$model/config.json" ]; then
    echo "gpu.sh: model already at $model"
    return 0
  fi
  mkdir -p "$models"
  "$python" -c 'import sys; from mlx_harmony.demo_model.cli import random_model_main as m; sys.exit(m(sys.argv[1:]))' \
    "$model" --shape "$shape" ${bits:+--bits "$bits"} --quiet \
    || { echo "gpu.sh: the model build failed"; return 1; }
  du -sh "$model"
}

prompt_config() {
  mkdir -p "$out"
  # random weights never close a Harmony message and loop: no loop detection (mlx-lm has none)
  echo '{"loop_detection": "off"}' > "$out/prompt-config.json"
  echo "$out/prompt-config.json"
}

run_decode() {
  mkdir -p "$out"
  bounded "$python" tools/bench_generate.py --shape "$shape" --dtype bfloat16 ${bits:+--bits "$bits"} \
    --prompt-tokens 128 --max-tokens "$max_tokens" --runs 3 --json "$out/decode.json"
}

run_bench() {
  local cfg flags=()
  cfg=$(prompt_config)
  [ "$interleave" = 1 ] && flags+=(--interleave)
  rm -rf "$out/run"
  bounded "$python" -m mlx_harmony.bench run \
    --target "$targets" --model "$model" --prompt-config "$cfg" \
    --limit "$limit" --max-tokens "$max_tokens" --retries none --warmup 2 \
    --startup-timeout 400 --no-progress "${flags[@]}" \
    --title "mlx-harmony-bench: $label on $device" --out "$out/run"
  local status=$?
  if [ ! -f "$out/run/report.md" ] && ls "$out"/run/*/records.jsonl >/dev/null 2>&1; then
    "$python" -m mlx_harmony.bench report "$out/run" --title "mlx-harmony-bench: $label on $device"
  fi
  return $status
}

run_batching() {
  local cfg extra=()
  cfg=$(prompt_config)
  [ -z "$bits" ] && extra+=(--one-at-a-time)  # two bfloat16 copies of gpt-oss-20b do not fit
  bounded "$python" -m mlx_harmony.bench batching --model "$model" --prompt-config "$cfg" \
    --concurrency "$concurrency" --max-tokens "$max_tokens" --startup-timeout 400 \
    --out "$out/batching" "${extra[@]}"
}

run_overhead() {
  local cfg
  cfg=$(prompt_config)
  bounded "$python" -m mlx_harmony.bench server-overhead --model "$model" --prompt-config "$cfg" \
    --target local,server --concurrency 1 --max-tokens "$max_tokens" --startup-timeout 400 \
    --out "$out/server-overhead"
}

case "$step" in
  model) build_model ;;
  decode) run_decode ;;
  run) build_model && run_bench ;;
  batching) build_model && run_batching ;;
  overhead) build_model && run_overhead ;;
  all) build_model && { run_decode; run_bench; run_batching; run_overhead; } ;;
  *) echo "usage: gpu.sh [model|decode|run|batching|overhead|all]"; exit 2 ;;
esac
