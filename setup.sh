#!/usr/bin/env bash
# One set-up command for a fresh machine (the README's first command; CI runs exactly this).
#   - Python: the package with its dev extras; torch pinned to the CPU build this machine kind ships
#     locally (an unpinned torch pulls a multi-GB CUDA build). On a CUDA machine use
#     `python -m pip install -e '.[dev,cuda]'` instead.
#   - Debian packages, as root only: bubblewrap (the sandbox train.py runs in) and headless Chromium (the
#     browser test of report.html).
#   - npm, where present: the Claude Code and Codex CLIs for the agent backends' tests.
# Steps that cannot run here (no root, no apt-get, no npm) are skipped, and so are the tests needing them.
set -euo pipefail
cd "$(dirname "$0")"
if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    apt-get update -qq && apt-get install -y -qq bubblewrap chromium chromium-driver >/dev/null
fi
if command -v npm >/dev/null; then
    npm install -g --silent --no-fund --no-audit @anthropic-ai/claude-code@2.1.330 @openai/codex@0.169.0
fi
python -m pip install -q torch==2.13.0 -e '.[dev]'
