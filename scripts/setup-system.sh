#!/usr/bin/env bash
# System packages the tests and the release tooling use, from Debian's archive:
#   squashfs-tools, cryptsetup-bin   reproducible dm-verity model volumes (deploy/)
#   ovmf                             a firmware image to compute SNP launch measurements of
#   postgresql                       the real database the platform and fleet tests use
#   chromium                         the headless browser of the docs and status-page tests
#   prometheus                       `promtool check metrics` over the gateway's exposition
#   nodejs, npm                      the Node and browser clients of the compatibility tests
#   golang-go, golang-golang-x-mod-dev  Go's sumdb note and tlog, the outside verifier of
#                                    the transparency log (built offline, GOPATH mode)
#   haproxy, nginx-light             the balancer configurations of deploy/balancers/, run by a test
# Installed with apt-get when missing (as root); otherwise says what to install.
set -euo pipefail
need=()
command -v mksquashfs >/dev/null 2>&1 || need+=(squashfs-tools)
command -v veritysetup >/dev/null 2>&1 || [ -x /usr/sbin/veritysetup ] || need+=(cryptsetup-bin)
[ -f /usr/share/ovmf/OVMF.fd ] || need+=(ovmf)
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || need+=(postgresql)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
command -v node >/dev/null 2>&1 || need+=(nodejs)
command -v npm >/dev/null 2>&1 || need+=(npm)
command -v go >/dev/null 2>&1 || [ -x /usr/lib/go/bin/go ] || need+=(golang-go)
[ -d /usr/share/gocode/src/golang.org/x/mod/sumdb ] || need+=(golang-golang-x-mod-dev)
command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || need+=(haproxy)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx-light)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "setup-system: please install: ${need[*]} (sudo apt-get install ${need[*]})" >&2
  exit 1
fi
echo "setup-system: installing ${need[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null || true
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
