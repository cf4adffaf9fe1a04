#!/usr/bin/env bash
# Install the requirements and run the test suite (offline: the tokenizer comes from ../shared/tiktoken_cache
# when that folder exists; elsewhere tiktoken downloads the GPT-2 BPE once).
set -euo pipefail
cd "$(dirname "$0")"
python3 -m pip install -q -r requirements.txt
if [ -z "${TIKTOKEN_CACHE_DIR:-}" ] && [ -d ../shared/tiktoken_cache ]; then
  export TIKTOKEN_CACHE_DIR="$(cd ../shared/tiktoken_cache && pwd)"
fi
python3 -m pytest tests "$@"
