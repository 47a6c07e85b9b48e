#!/bin/sh
# SPDX-License-Identifier: MIT
# meson install: puts a config into the config directory without ever replacing an
# operator's. An existing FILE stays as it is and the default lands beside it as
# FILE.example (a reinstall used to overwrite the config, passwords and all). A config
# that holds a secret in clear (a `password =` line) is installed 0640, never
# world-readable; others 0644.
# Usage: install-config.sh SOURCE DIR   (DIR absolute; meson exports DESTDIR)
set -eu
src=$1
dir=${DESTDIR:-}$2
name=$(basename "$src")
mode=0644
if grep -Eq '^[[:space:]]*password[[:space:]]*[=:]' "$src"; then
        mode=0640
fi
install -d -m 0755 "$dir"
if [ -e "$dir/$name" ]; then
        install -m "$mode" "$src" "$dir/$name.example"
        echo "kuimen: kept $dir/$name; the new default is $dir/$name.example"
else
        install -m "$mode" "$src" "$dir/$name"
fi
# Group kuimen, when the box has one, may read a config holding a secret.
if [ "$mode" = 0640 ] && getent group kuimen >/dev/null 2>&1; then
        chgrp kuimen "$dir/$name" "$dir/$name.example" 2>/dev/null || true
fi
