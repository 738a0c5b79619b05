#!/bin/sh
# Installs what ivh-reclaimd needs to build, test and run its demo on Debian 12.
# Idempotent; runs apt-get update only when something is missing.
set -eu

PACKAGES="gcc make cmake pkg-config clang-format
libev-dev libcurl4-openssl-dev libssl-dev libcjson-dev libyaml-dev libsystemd-dev libcmocka-dev
openssl ca-certificates python3 systemd dpkg-dev clang libclang-rt-14-dev valgrind curl jq time faketime
scdoc man-db bash-completion debhelper devscripts lintian debootstrap systemd-container prometheus etcd-server"

missing=""
for p in $PACKAGES; do
        if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
                missing="$missing $p"
        fi
done
if [ -n "$missing" ]; then
        if [ "$(id -u)" -ne 0 ]; then
                echo "deps.sh: missing packages:$missing; run as root or install them" >&2
                exit 1
        fi
        echo "deps.sh: installing$missing" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        # shellcheck disable=SC2086
        apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi
