#!/bin/sh
# Make sure the system packages the test suite needs are there:
#   sh tools/ensure_packages.sh mosquitto chromium libmagic1
# As root on Debian/Ubuntu the missing ones are installed with apt-get (one call); otherwise the script
# says exactly what to run and fails. Nothing here downloads anything but Debian packages.
PATH="$PATH:/sbin:/usr/sbin:/usr/local/sbin"

present() {
    case "$1" in
        # the broker for the tests' fixture and the gateway's managed broker
        mosquitto) command -v mosquitto >/dev/null 2>&1 ;;
        # the dashboard browser tests (Playwright drives it through executable_path; no browser download)
        chromium) [ -x /usr/bin/chromium ] ;;
        # neonize (the WhatsApp extra, installed with the dev tools) loads it through python-magic
        libmagic1) ldconfig -p 2>/dev/null | grep -q 'libmagic\.so\.1' \
            || ls /usr/lib/*/libmagic.so.1 /usr/lib/libmagic.so.1 /opt/homebrew/lib/libmagic.1.dylib >/dev/null 2>&1 ;;
        *) echo "ensure_packages.sh: no check for package '$1'" >&2; exit 2 ;;
    esac
}

missing=""
for pkg in "$@"; do
    if ! present "$pkg"; then missing="$missing $pkg"; fi
done
[ -z "$missing" ] && exit 0

if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "not found:$missing; installing Debian's packages" >&2
    export DEBIAN_FRONTEND=noninteractive
    # shellcheck disable=SC2086 # one word per package
    apt-get install -y --no-install-recommends $missing >/dev/null 2>&1 \
        || { apt-get update >/dev/null && apt-get install -y --no-install-recommends $missing >/dev/null; } \
        || { echo "apt-get install$missing failed" >&2; exit 1; }
    for pkg in $missing; do
        present "$pkg" || { echo "$pkg was installed but is still not found" >&2; exit 1; }
    done
    exit 0
fi
echo "The test suite needs these system packages:$missing. Install them with:" >&2
echo "    sudo apt-get install$missing" >&2
exit 1
