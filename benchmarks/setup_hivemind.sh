#!/usr/bin/env bash
# Creates benchmarks/.venv-hivemind: hivemind 1.1.12 for benchmarks/averaging.py, kept OUT of the
# project venv (hivemind pins its own protobuf/grpc versions). Order matters (see FACTS.md):
# torch==2.13.0 first (the CPU wheel already on disk; an unpinned torch pulls a multi-GB CUDA build),
# then hivemind with numpy < 2.4 (numpy 2.4 silently breaks hivemind's 8-bit compression).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="$here/.venv-hivemind"
py="${PYTHON:-python3.11}"
if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "import hivemind, torch; assert hivemind.__version__ == '1.1.12'" 2>/dev/null; then
  echo "hivemind venv ready: $venv"
  exit 0
fi
"$py" -m venv "$venv"
"$venv/bin/pip" install --quiet "torch==2.13.0"
"$venv/bin/pip" install --quiet "hivemind==1.1.12" "numpy<2.4"
"$venv/bin/python" -c "import hivemind, torch; print('hivemind', hivemind.__version__, 'torch', torch.__version__)"
