#!/usr/bin/env bash
# A model folder as a read-only volume protected by dm-verity, built reproducibly: the
# same folder gives the same image and the same root hash on any machine.
#
#   deploy/model-volume.sh MODEL_DIR OUT        writes OUT.img and OUT.verity, prints the
#                                               root hash (give it to `cloister serve
#                                               --model-verity-root` and to the boot's
#                                               `veritysetup open`)
#   deploy/model-volume.sh --verify OUT ROOT    checks every block against ROOT
#
# squashfs (Debian's squashfs-tools) with every time set to 0, owners root and modes
# normalised; dm-verity (cryptsetup-bin's veritysetup, which works on plain files) with a
# fixed salt and UUID, so nothing random enters the hash tree.
set -euo pipefail
SALT=${CLOISTER_VERITY_SALT:-636c6f69737465722d6d6f64656c2d766f6c756d652d73616c742d7631000000}
UUID=${CLOISTER_VERITY_UUID:-6d6f6465-6c76-6f6c-756d-650000000001}

if [ "${1:-}" = "--verify" ]; then
  veritysetup verify "$2.img" "$2.verity" "$3"
  exit
fi
[ $# -eq 2 ] || { echo "usage: $0 MODEL_DIR OUT | --verify OUT ROOT_HASH" >&2; exit 2; }
src=$1 out=$2
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
cp -r --no-preserve=all "$src/." "$stage/"
find "$stage" -type d -exec chmod 0755 {} +
find "$stage" -type f -exec chmod 0644 {} +
rm -f "$out.img" "$out.verity"
mksquashfs "$stage" "$out.img" -noappend -all-root -all-time 0 -mkfs-time 0 -no-xattrs \
  -quiet -no-progress >/dev/null
veritysetup format "$out.img" "$out.verity" --salt "$SALT" --uuid "$UUID" \
  --data-block-size 4096 --hash-block-size 4096 | awk '/^Root hash:/ {print $3}'
