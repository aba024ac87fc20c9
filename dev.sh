#!/bin/sh
# Set up ringtrap on a Debian machine and run the trap or its tests.
#
#   ./dev.sh run  [ringtrap run options]   the trap, on built-in defaults
#   ./dev.sh test [pytest options]         the whole test suite
#
# Installs only what is missing or changed, so a complete checkout starts at
# once and works offline:
#   - Debian packages: spamd, spamc, rspamd (the second scanner; its tests
#     run it offline in a private network namespace), socat, netcat-openbsd,
#     python3-venv, systemd (systemd-analyze), postfix (for the MTA end-to-end test,
#     installed unconfigured and not started), logrotate and man-db (the
#     install test checks the shipped logrotate file and man page); for
#     `test` also rbldnsd and bind9-dnsutils (dig), which read the blocklist
#     zones as DNS clients will, nats-server and postgresql (the fleet tests
#     run private JetStream servers on loopback ports and a PostgreSQL from
#     initdb on a Unix socket; Debian's own units are not used);
#   - the package with its test extras into ./.venv, again only when
#     pyproject.toml or the delivery script changed (.venv/.ringtrap-stamp);
#   - for `test`, two programs unpacked from Debian packages into ./.tools
#     without installing the packages: promtool (the prometheus package is
#     96 MB with its web assets; promtool alone checks the alert rules) and
#     exim4 (its daemon package conflicts with postfix as the host's MTA; the
#     Exim test runs it privately).  Their tests skip when they are absent.
set -eu
cd "$(dirname "$0")"

usage() { echo "usage: $0 run|test [args...]" >&2; exit 64; }
[ $# -ge 1 ] || usage
what=$1; shift
case "$what" in run|test) ;; *) usage ;; esac

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "ok installed"; }

# exim4's own libraries: its binary is unpacked, not installed, so these are not pulled in
exim_libs="libgnutls-dane0 libidn12 libnsl2 libpcre2-8-0 libdb5.3"
want="spamd spamc rspamd socat netcat-openbsd python3-venv systemd postfix logrotate man-db"
[ "$what" = test ] && want="$want $exim_libs rbldnsd bind9-dnsutils nats-server postgresql"
missing=""
for pkg in $want; do
    installed "$pkg" || missing="$missing $pkg"
done
apt_updated=""
if [ -n "$missing" ]; then
    echo "installing Debian packages:$missing" >&2
    $sudo apt-get update -qq
    apt_updated=yes
    # Postfix unconfigured: the tests run their own instance, none listens on port 25
    echo "postfix postfix/main_mailer_type select No configuration" | $sudo debconf-set-selections
    # shellcheck disable=SC2086
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >&2
fi

# unpack: PACKAGE PATH-IN-PACKAGE -> .tools/bin/NAME (best effort: offline, the tests skip)
unpack() {
    pkg=$1 path=$2 name=$(basename "$2")
    [ -x ".tools/bin/$name" ] && return 0
    mkdir -p .tools/bin .tools/debs
    if [ -z "$apt_updated" ]; then
        $sudo apt-get update -qq || true
        apt_updated=yes
    fi
    echo "unpacking $name from Debian's $pkg into .tools/bin" >&2
    # as root apt fetches as _apt, which cannot write into a checkout
    sandbox=""
    [ "$(id -u)" -ne 0 ] || sandbox="-o APT::Sandbox::User=root"
    # shellcheck disable=SC2086
    if (cd .tools/debs && apt-get download -qq $sandbox "$pkg" >&2); then
        rm -rf ".tools/x-$pkg"
        dpkg-deb -x .tools/debs/"$pkg"_*.deb ".tools/x-$pkg"
        cp ".tools/x-$pkg/$path" ".tools/bin/$name"
        rm -rf ".tools/x-$pkg" .tools/debs/"$pkg"_*.deb
    else
        echo "could not download $pkg: the tests that need $name will skip" >&2
    fi
}
if [ "$what" = test ]; then
    unpack prometheus usr/bin/promtool
    unpack exim4-daemon-light usr/sbin/exim4
fi

# reinstall only when what the install copies or declares has changed: the
# package itself is an editable install, so its modules need no reinstall
stamp=.venv/.ringtrap-stamp
digest=$(cat pyproject.toml scripts/ringtrap-deliver | sha256sum | cut -d' ' -f1)
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
if [ "$(cat "$stamp" 2>/dev/null)" != "$digest" ]; then
    # fleet: the NATS client, imported only by the forwarder and the collector
    .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test,fleet]' >&2
    echo "$digest" > "$stamp"
fi

case "$what" in
    run) exec .venv/bin/ringtrap run "$@" ;;
    test) exec .venv/bin/python -m pytest "$@" ;;
esac
