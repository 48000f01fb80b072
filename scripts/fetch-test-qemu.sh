#!/usr/bin/env bash
# A second, newer QEMU for the tests that must run against one: Debian 13's QEMU (10.x, from
# bookworm-backports on Debian 12), downloaded and unpacked — not installed, the system's QEMU
# stays as it is — into ~/.cache/vmctl/tools/qemu-bpo, with a wrapper that points it at its
# own firmware. Uses a private apt list, so no system apt source is added.
# Prints the wrapper's path. Prints nothing (and exits 0) where there is none to fetch: not
# Debian 12, or the mirror unreachable; the tests that need it then say they are skipped.
set -euo pipefail
dest="${HOME}/.cache/vmctl/tools/qemu-bpo"
wrapper="$dest/qemu-system-x86_64"
if [ -x "$wrapper" ] && "$wrapper" --version >/dev/null 2>&1; then
    echo "$wrapper"
    exit 0
fi
. /etc/os-release 2>/dev/null || true
if [ "${VERSION_CODENAME:-}" != bookworm ]; then
    echo "fetch-test-qemu: not Debian 12 (${VERSION_CODENAME:-unknown}); no backports QEMU" >&2
    exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/lists/partial" "$work/archives/partial"
echo "deb http://deb.debian.org/debian bookworm-backports main" >"$work/sources.list"
apt_opts=(-qq -o "Dir::Etc::SourceList=$work/sources.list" -o Dir::Etc::SourceParts=/nonexistent
    -o "Dir::State::Lists=$work/lists" -o "Dir::Cache=$work" -o Dir::Cache::pkgcache=
    -o Dir::Cache::srcpkgcache= -o Debug::NoLocking=1 -o APT::Sandbox::User="$(id -un)")
echo "fetch-test-qemu: downloading Debian's backports QEMU into $dest" >&2
if ! apt-get "${apt_opts[@]}" update >&2 ||
    ! (cd "$work" && apt-get "${apt_opts[@]}" download \
        qemu-system-x86/bookworm-backports qemu-system-data/bookworm-backports >&2); then
    echo "fetch-test-qemu: bookworm-backports unreachable; no second QEMU" >&2
    exit 0
fi
rm -rf "$dest"
mkdir -p "$dest"
for deb in "$work"/*.deb; do
    dpkg-deb -x "$deb" "$dest/root"
done
# Its own firmware first, then the system's SeaBIOS (the backports package links to it).
cat >"$wrapper" <<EOF
#!/bin/sh
exec "$dest/root/usr/bin/qemu-system-x86_64" -L "$dest/root/usr/share/qemu" -L /usr/share/seabios "\$@"
EOF
chmod +x "$wrapper"
if ! "$wrapper" --version >&2; then
    echo "fetch-test-qemu: the backports QEMU does not run here (missing libraries?)" >&2
    rm -rf "$dest"
    exit 0
fi
echo "$wrapper"
