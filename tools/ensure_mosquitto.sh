#!/bin/sh
# Make sure a Mosquitto binary exists for the test suite (and for the gateway's managed broker).
# As root on Debian/Ubuntu we install it; otherwise we say exactly what to run.
PATH="$PATH:/usr/sbin:/usr/local/sbin"
if command -v mosquitto >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "mosquitto not found: installing Debian's mosquitto package" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y --no-install-recommends mosquitto >/dev/null 2>&1 \
        || { apt-get update >/dev/null && apt-get install -y --no-install-recommends mosquitto >/dev/null; } \
        || { echo "apt-get install mosquitto failed" >&2; exit 1; }
    command -v mosquitto >/dev/null 2>&1 && exit 0
    echo "mosquitto was installed but is not on PATH" >&2
    exit 1
fi
echo "The test suite needs the Mosquitto broker binary. Install it with:" >&2
echo "    sudo apt-get install mosquitto" >&2
exit 1
