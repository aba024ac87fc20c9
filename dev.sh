#!/bin/sh
# Set up ringtrap on a Debian machine and run the trap or its tests.
#
#   ./dev.sh run  [ringtrap run options]   the trap, on built-in defaults
#   ./dev.sh test [pytest options]         the whole test suite
#
# Installs what is missing (Debian: spamd, spamc, socat, netcat-openbsd,
# python3-venv, systemd for systemd-analyze, postfix for the MTA end-to-end
# test, installed unconfigured and not started) and the package with its test
# extras into ./.venv.
set -eu
cd "$(dirname "$0")"

usage() { echo "usage: $0 run|test [args...]" >&2; exit 64; }
[ $# -ge 1 ] || usage
what=$1; shift
case "$what" in run|test) ;; *) usage ;; esac

missing=""
for pkg in spamd spamc socat netcat-openbsd python3-venv systemd postfix; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing="$missing $pkg"
done
if [ -n "$missing" ]; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "installing Debian packages:$missing" >&2
    $sudo apt-get update -qq
    # Postfix unconfigured: the tests run their own instance, none listens on port 25
    echo "postfix postfix/main_mailer_type select No configuration" | $sudo debconf-set-selections
    # shellcheck disable=SC2086
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >&2
fi

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]' >&2

case "$what" in
    run) exec .venv/bin/ringtrap run "$@" ;;
    test) exec .venv/bin/python -m pytest "$@" ;;
esac
