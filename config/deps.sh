#!/bin/sh
# SPDX-License-Identifier: MIT
# Installs the Debian 12 packages Kuimen needs that are missing: "run" for building and
# running, "test" for the tests as well. Does nothing when all are there.
set -eu
build="meson ninja-build pkg-config gcc libc6-dev libsqlite3-dev libinih-dev
       libsystemd-dev zlib1g-dev libsodium-dev libcjson-dev libgps-dev libmosquitto-dev libssl-dev mosquitto mosquitto-clients
       libmicrohttpd-dev libgnutls28-dev"
test="libcriterion-dev libpaho-mqtt-dev gpsd gpsd-clients python3-gps valgrind systemd user-mode-linux clang-14 libclang-rt-14-dev
      sqlite3 dmsetup e2fsprogs groff-base rabbitmq-server
      chromium chromium-driver python3-selenium openssl curl"
want=$build
[ "${1:-run}" = test ] && want="$build $test"
missing=""
for p in $want; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
echo "kuimen: installing:$missing"
sudo=""
[ "$(id -u)" = 0 ] || sudo=sudo
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends $missing
