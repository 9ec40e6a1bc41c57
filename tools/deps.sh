#!/bin/sh
# Check for the Debian packages loupe builds against; install the missing ones
# when run as root (one `apt-get update` first), otherwise print the command.
# Called by `make demo` and `make test`, so a fresh clone needs nothing else.
set -eu

PKGS="gcc make pkg-config libopenblas-dev libpng-dev libstb-dev libcmocka-dev libcjson-dev"

missing=""
for p in $PKGS; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing="$missing $p"
    fi
done

[ -z "$missing" ] && exit 0

echo "loupe: missing Debian packages:$missing"
if [ "$(id -u)" -eq 0 ]; then
    echo "loupe: installing them with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    # shellcheck disable=SC2086
    apt-get install -y --no-install-recommends $missing
else
    echo "loupe: run this, then try again:"
    echo "    sudo apt-get update && sudo apt-get install -y --no-install-recommends$missing"
    exit 1
fi
