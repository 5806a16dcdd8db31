#!/usr/bin/env bash
# Boot-time checks and installation for Cloister on a confidential VM.
#   cloister-boot.sh mount     open the application volume under dm-verity with the root
#                              hash from the (measured) kernel command line and mount it
#                              read-only at /opt/cloister (app-volume.sh builds it)
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

mount_app() {
  # cloister.app_roothash=HEX on the kernel command line: the launch measurement covers
  # it (direct kernel boot with an OVMF built for kernel hashes), so the volume that
  # mounts is the one measured; without it nothing mounts and the unit does not start.
  roothash=$(tr ' ' '\n' </proc/cmdline | sed -n 's/^cloister.app_roothash=//p')
  [ -n "$roothash" ] || { echo "no cloister.app_roothash= on the kernel command line" >&2; exit 1; }
  data=${CLOISTER_APP_DATA:-/dev/disk/by-partlabel/cloister-app}
  hash=${CLOISTER_APP_HASH:-/dev/disk/by-partlabel/cloister-app-verity}
  mountpoint -q /opt/cloister && exit 0
  veritysetup open "$data" cloister-app "$hash" "$roothash"
  install -d /opt/cloister
  mount -o ro,nodev,nosuid /dev/mapper/cloister-app /opt/cloister
}

install_unit() {
  id cloister >/dev/null 2>&1 || useradd --system --home /var/lib/cloister cloister
  install -d -m 0755 /etc/cloister
  [ -f /etc/cloister/cloister.env ] || install -m 0644 "$(dirname "$0")/cloister.env" /etc/cloister/
  install -D -m 0755 "$0" /usr/lib/cloister/cloister-boot.sh
  install -m 0644 "$(dirname "$0")/cloister.service" /etc/systemd/system/cloister.service
  systemctl daemon-reload
  systemctl enable cloister.service
}

case "${1:-}" in
  mount) mount_app ;;
  check) check ;;
  install) install_unit ;;
  *) echo "usage: $0 mount|check|install" >&2; exit 2 ;;
esac
