#!/usr/bin/env bash
# MicroRWKV quick start, from a fresh clone to a generated story:
#   1. install the requirements (CPU is enough),
#   2. prepare a corpus: your TinyStories file(s) if given, else 15k stories from the Hugging Face hub,
#      else (no network) a synthetic smoke-test corpus of simple stories,
#   3. train the small CPU MicroRWKV (config/train_tinystories_cpu.py, a few minutes on 2 cores),
#   4. generate a story from "One day", decoding in RNN mode.
# Usage: bash quickstart.sh                                  # hub, or synthetic when offline
#        bash quickstart.sh --source TinyStoriesV2-GPT4-train.txt   # any prepare_tinystories.py source flags
# Extra train.py overrides: TRAIN_ARGS="--max_iters=100" bash quickstart.sh
set -euo pipefail
cd "$(dirname "$0")"
python3 -m pip install -q -r requirements.txt
if [ -z "${TIKTOKEN_CACHE_DIR:-}" ] && [ -d ../shared/tiktoken_cache ]; then  # offline GPT-2 BPE files, if present
  export TIKTOKEN_CACHE_DIR="$(cd ../shared/tiktoken_cache && pwd)"
fi

data=quickstart  # data/quickstart/, whatever the source
if [ $# -gt 0 ]; then
  python3 prepare_tinystories.py "$@" --name "$data" --force
elif ! python3 prepare_tinystories.py --num_stories 15000 --name "$data" --force; then
  echo "TinyStories is not reachable: preparing a synthetic smoke-test corpus instead (not TinyStories)"
  python3 prepare_tinystories.py --synthetic 5000 --name "$data" --force
fi

python3 train.py config/train_tinystories_cpu.py --dataset="$data" --out_dir=out-quickstart ${TRAIN_ARGS:-}
python3 generate.py --out_dir=out-quickstart --prompt="One day" --max_num_tokens=150 --stop_at_eot
