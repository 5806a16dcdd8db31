#!/usr/bin/env bash
# The gateway's capacity sweep and CPU profile on a bigger machine (16 cores, a GPU host),
# unchanged, in under 6 minutes; every result as JSON under OUT_DIR (issue 31):
#
#   benchmarks/device_check.sh OUT_DIR
#
#   machine.json                    cores, CPU model, memory, GPUs (nvidia-smi), Python
#   worker_capacity-<UTC>.json      sealed chunks/s at 1, 2, 4, 8 workers (as many as half
#                                   the cores allow), two interleaved rounds
#   overhead_profile-<UTC>.json     Cloister's own CPU per streamed chunk, and its shares
#
# The load generator gets the other half of the cores (one client process per 4 of
# them): it is not the bottleneck when its processes stay below 100% of a core each
# (worker_capacity.py records the load per round). Each step has its own time limit.
set -euo pipefail
out=${1:?usage: benchmarks/device_check.sh OUT_DIR}
root=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-$root/.venv/bin/python}
mkdir -p "$out"
cores=$(nproc)
half=$(( cores / 2 > 0 ? cores / 2 : 1 ))
workers=""
for n in 1 2 4 8; do
  if [ "$n" -le "$half" ] || [ "$n" -eq 1 ]; then workers="${workers:+$workers,}$n"; fi
done
clients=$(( cores / 4 > 0 ? cores / 4 : 1 ))
"$python" - "$out/machine.json" <<'PY'
import json, os, platform, shutil, subprocess, sys
gpus = []
if shutil.which("nvidia-smi"):
    query = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
                            "--format=csv,noheader"], capture_output=True, text=True)
    gpus = [line.strip() for line in query.stdout.splitlines() if line.strip()]
model = ""
try:
    model = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                 if line.startswith("model name"))
except (OSError, StopIteration):
    pass
memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
json.dump({"cores": os.cpu_count(), "cpu": model, "memory_gib": round(memory / 2**30, 1),
           "gpus": gpus, "python": platform.python_version(),
           "machine": platform.machine()}, open(sys.argv[1], "w"), indent=2)
PY
echo "device_check: $cores cores; workers $workers; $clients load client(s)" >&2
cd "$root"
timeout 240 "$python" benchmarks/worker_capacity.py --workers "$workers" --seconds 8 \
    --repeats 2 --clients "$clients" --out "$out"
timeout 90 "$python" benchmarks/overhead_profile.py --requests 300 --out "$out" \
    > "$out/overhead_profile.txt"
echo "device_check: results in $out" >&2
