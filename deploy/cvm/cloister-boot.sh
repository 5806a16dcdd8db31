#!/usr/bin/env bash
# Boot-time checks and installation for Cloister on a confidential VM.
#   cloister-boot.sh check     refuse to start unless the TEE and the GPU are ready
#   cloister-boot.sh install   install the unit, the env file and the service user
set -euo pipefail

check() {
  [ -d /sys/kernel/config/tsm/report ] || { echo "no configfs-tsm: not a confidential VM" >&2; exit 1; }
  if command -v nvidia-smi >/dev/null 2>&1; then
    # CC mode must be on and the GPU ready-state is set by Cloister after local attestation.
    nvidia-smi conf-compute -f | grep -qi "CC status: ON" \
      || { echo "GPU confidential computing is off" >&2; exit 1; }
  fi
  install -d -m 0700 -o cloister -g cloister /run/cloister
  export VLLM_RPC_BASE_PATH=/run/cloister
}

install_unit() {
  id cloister >/dev/null 2>&1 || useradd --system --home /var/lib/cloister cloister
  install -d -m 0755 /etc/cloister
  [ -f /etc/cloister/cloister.env ] || install -m 0644 "$(dirname "$0")/cloister.env" /etc/cloister/
  install -m 0644 "$(dirname "$0")/cloister.service" /etc/systemd/system/cloister.service
  systemctl daemon-reload
  systemctl enable cloister.service
}

case "${1:-}" in
  check) check ;;
  install) install_unit ;;
  *) echo "usage: $0 check|install" >&2; exit 2 ;;
esac
