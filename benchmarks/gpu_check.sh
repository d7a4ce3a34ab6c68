#!/usr/bin/env bash
# GPU readiness in one script: on a CUDA machine, run the CUDA tests and a short SmolLM2 bench (and the Qwen2.5-Coder
# 1.5B <- 0.5B pair when its GGUF files are there) in under 8 minutes, and write a report.
#
#   benchmarks/gpu_check.sh [REPORT_DIR]
#
# REPORT_DIR defaults to $OUT (the device tool's output folder) or ./gpu-check. Environment:
#   HFC_ASSETS   folder with qwen2.5-coder-{1.5b,0.5b}-instruct/model.gguf and data/ (default: /tmp/assets)
#   HFC_CACHE    dequantised GGUF copies (default: /tmp/hfc_cache)
#   PYTHON       the interpreter (default: python)
# Without CUDA it says so and exits 0. Run it from the repository root.
set -u

PYTHON=${PYTHON:-python}
ASSETS=${HFC_ASSETS:-/tmp/assets}
CACHE=${HFC_CACHE:-/tmp/hfc_cache}
REPORT_DIR=${1:-${OUT:-gpu-check}}

if ! "$PYTHON" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "gpu_check: needs a CUDA GPU (torch.cuda.is_available() is false here); nothing to do."
    exit 0
fi

mkdir -p "$REPORT_DIR"
REPORT="$REPORT_DIR/gpu_check.md"
export PYTHONPATH="${PYTHONPATH:-$PWD}" HF_HUB_OFFLINE=1
status=0

step() {  # step TITLE TIMEOUT_S COMMAND...: run, keep its output, note its status in the report
    local title=$1 limit=$2 log t0 rc
    shift 2
    log="$REPORT_DIR/$(echo "$title" | tr ' /<-' '____').log"
    t0=$SECONDS
    timeout "$limit" "$@" >"$log" 2>&1
    rc=$?
    [ "$rc" -eq 0 ] || status=1
    {
        echo "## $title"
        echo
        echo "\`$*\` -> exit $rc in $((SECONDS - t0)) s"
        echo
        echo '```'
        tail -n 25 "$log"
        echo '```'
        echo
    } >>"$REPORT"
}

{
    echo "# GPU check"
    echo
    echo "- date: $(date -u +%Y-%m-%dT%H:%M:%SZ), commit: $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
    echo "- $("$PYTHON" -c 'import torch, transformers; print(torch.cuda.get_device_name(0), "| torch", torch.__version__, "| transformers", transformers.__version__)')"
    echo
} >"$REPORT"

# The CUDA tests (they skip themselves without CUDA), then the offload and controller tests that run anywhere.
step "CUDA tests" 180 "$PYTHON" -m pytest tests -q -p no:cacheprovider -k "cuda or offload or controller"

BENCH=("$PYTHON" -m hf_cascade.cli bench --device cuda --max-new-tokens 64 --repeats 1 --no-plot --no-progress
    --cache-dir "$CACHE")
step "SmolLM2 bench" 150 "${BENCH[@]}" --builtin grounded --sample 3 --out "$REPORT_DIR/smollm2"

Q15="$ASSETS/qwen2.5-coder-1.5b-instruct/model.gguf"
Q05="$ASSETS/qwen2.5-coder-0.5b-instruct/model.gguf"
if [ -f "$Q15" ] && [ -f "$Q05" ]; then
    step "Qwen 1.5B <- 0.5B bench" 200 "${BENCH[@]}" --target "$Q15" --drafter "q05=$Q05" --builtin grounded \
        --sample 3 --method assisted:q05 --method cascade:q05 --out "$REPORT_DIR/qwen"
else
    echo "Qwen pair not found under $ASSETS (set HFC_ASSETS): skipped." >>"$REPORT"
fi

echo "gpu_check: report in $REPORT (exit $status)"
exit "$status"
