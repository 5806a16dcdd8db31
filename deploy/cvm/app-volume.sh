#!/usr/bin/env bash
# Cloister and its locked dependencies as a read-only volume under dm-verity, built
# reproducibly: the same wheel and lock give the same image and root hash on any machine.
# The root hash goes on the kernel command line (cloister.app_roothash=HEX), which the
# SEV-SNP launch measurement covers when the VM boots its kernel directly with an OVMF
# built for kernel hashes (`cloister measure snp --kernel --initrd --append`); the boot
# opens and mounts the volume at /opt/cloister only if every block matches
# (cloister-boot.sh mount). What runs is then what was measured, not what is on the
# operator's disk.
#
#   deploy/cvm/app-volume.sh WHEEL OUT [LOCK]   writes OUT.img and OUT.verity, prints the
#                                               root hash; LOCK: a --require-hashes lock
#                                               (gateway/data/requirements-gpu.lock)
#   deploy/cvm/app-volume.sh --verify OUT ROOT  checks every block against ROOT
#
# The volume is a virtual environment at /opt/cloister (pyvenv.cfg, bin/python -> the
# image's /usr/bin/python3.11, the packages, `bin/cloister`), installed without bytecode;
# squashfs with every time 0, owners root, modes normalised; dm-verity with a fixed salt
# and UUID, so nothing random or machine-specific enters the hash tree.
set -euo pipefail
SALT=${CLOISTER_VERITY_SALT:-636c6f69737465722d6170702d766f6c756d652d73616c742d76310000000000}
UUID=${CLOISTER_VERITY_UUID:-6170702d-766f-6c75-6d65-000000000001}
PREFIX=/opt/cloister
PYTHON=${PYTHON:-python3}

if [ "${1:-}" = "--verify" ]; then
  veritysetup verify "$2.img" "$2.verity" "$3"
  exit
fi
[ $# -ge 2 ] && [ $# -le 3 ] || {
  echo "usage: $0 WHEEL OUT [LOCK] | --verify OUT ROOT_HASH" >&2; exit 2; }
wheel=$1 out=$2 lock=${3:-}
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
root=$stage$PREFIX
version=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
mkdir -p "$root/bin"
printf 'home = /usr/bin\ninclude-system-site-packages = false\nversion = %s\n' \
  "$version" > "$root/pyvenv.cfg"
ln -s "/usr/bin/python$version" "$root/bin/python"
pip=("$PYTHON" -m pip install --quiet --no-compile --disable-pip-version-check
     --root-user-action ignore --no-warn-script-location --prefix "$PREFIX" --root "$stage")
if [ -n "$lock" ]; then
  "${pip[@]}" --require-hashes --no-deps -r "$lock"
fi
"${pip[@]}" --no-deps --no-index "$wheel"
# What depends on where it was built: the wheel's path (PEP 610), the builder's Python in
# the scripts' first line.
find "$root" -name direct_url.json -delete
for script in "$root"/bin/*; do
  [ -L "$script" ] || sed -i "1s|^#!.*python.*$|#!$PREFIX/bin/python|" "$script"
done
find "$stage" -type d -exec chmod 0755 {} +
find "$stage" -type f -perm /111 -exec chmod 0755 {} +
find "$stage" -type f ! -perm /111 -exec chmod 0644 {} +
rm -f "$out.img" "$out.verity"
mksquashfs "$root" "$out.img" -noappend -all-root -all-time 0 -mkfs-time 0 -no-xattrs \
  -quiet -no-progress >/dev/null
veritysetup format "$out.img" "$out.verity" --salt "$SALT" --uuid "$UUID" \
  --data-block-size 4096 --hash-block-size 4096 | awk '/^Root hash:/ {print $3}'
