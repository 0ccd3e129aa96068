#!/bin/sh
# Make sure Debian's Chromium exists for the dashboard browser tests (Playwright drives it through
# executable_path; no browser is ever downloaded). As root on Debian/Ubuntu we install it;
# otherwise we say exactly what to run.
if [ -x /usr/bin/chromium ]; then
    exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "chromium not found: installing Debian's chromium package" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y --no-install-recommends chromium >/dev/null 2>&1 \
        || { apt-get update >/dev/null && apt-get install -y --no-install-recommends chromium >/dev/null; } \
        || { echo "apt-get install chromium failed" >&2; exit 1; }
    [ -x /usr/bin/chromium ] && exit 0
    echo "chromium was installed but /usr/bin/chromium is missing" >&2
    exit 1
fi
echo "The dashboard browser tests need Debian's Chromium at /usr/bin/chromium. Install it with:" >&2
echo "    sudo apt-get install chromium" >&2
exit 1
