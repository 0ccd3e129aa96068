#!/bin/sh
# neonize (the WhatsApp extra, installed with the dev tools) loads libmagic through python-magic.
# As root on Debian/Ubuntu we install it when missing; otherwise we say exactly what to run.
PATH="$PATH:/sbin:/usr/sbin"
if ldconfig -p 2>/dev/null | grep -q 'libmagic\.so\.1' || ls /usr/lib/*/libmagic.so.1 /usr/lib/libmagic.so.1 /opt/homebrew/lib/libmagic.1.dylib >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "libmagic1 not found: installing Debian's libmagic1 package" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y --no-install-recommends libmagic1 >/dev/null 2>&1 \
        || { apt-get update >/dev/null && apt-get install -y --no-install-recommends libmagic1 >/dev/null; } \
        || { echo "apt-get install libmagic1 failed" >&2; exit 1; }
    exit 0
fi
echo "The WhatsApp tests need libmagic (used by neonize). Install it with:" >&2
echo "    sudo apt-get install libmagic1" >&2
exit 1
