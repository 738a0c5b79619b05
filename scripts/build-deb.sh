#!/bin/sh
# Builds the Debian packages (ivh-reclaimd and ivh-reclaimd-dbgsym) with
# dpkg-buildpackage, in a copy of this tree so that the tree stays clean, and
# copies the .deb, .buildinfo and .changes files to OUTDIR.
#
#   scripts/build-deb.sh OUTDIR [WORKDIR]
#
# With IVH_DEB_VERSION set, the copy's debian/changelog gets an entry for that
# version first (the tests build an "upgrade" this way).
#
# WORKDIR (default: a new temporary directory, removed afterwards) is where
# the copy is built; two builds in different WORKDIRs give identical
# packages (tests/package/test_deb.py checks it). Building in the tree
# itself, as `dpkg-buildpackage -us -uc -b`, works as well (README).
set -eu
[ $# -ge 1 ] || { echo "usage: $0 OUTDIR [WORKDIR]" >&2; exit 64; }
src=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$1"
out=$(cd "$1" && pwd)
if [ $# -ge 2 ]; then
        work=$2
        mkdir -p "$work"
        keep=1
else
        work=$(mktemp -d /tmp/ivh-deb.XXXXXX)
        keep=0
fi
work=$(cd "$work" && pwd)
rm -rf "$work/ivh-reclaimd"
mkdir "$work/ivh-reclaimd"

# The tracked and new files, as they are now (not build directories).
cd "$src"
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
        git ls-files -co --exclude-standard | while IFS= read -r f; do
                [ -e "$f" ] && printf '%s\n' "$f"
        done | tar -cf - -T - | tar -xf - -C "$work/ivh-reclaimd"
else
        tar -cf - --exclude='./build*' --exclude=./.git . | tar -xf - -C "$work/ivh-reclaimd"
fi

cd "$work/ivh-reclaimd"
if [ -n "${IVH_DEB_VERSION:-}" ]; then
        {
                printf 'ivh-reclaimd (%s) unstable; urgency=medium\n\n  * Rebuilt as %s.\n\n -- %s  %s\n\n' \
                        "$IVH_DEB_VERSION" "$IVH_DEB_VERSION" "$(dpkg-parsechangelog -S Maintainer)" \
                        "$(dpkg-parsechangelog -S Date)"
                cat debian/changelog
        } >debian/changelog.new
        mv debian/changelog.new debian/changelog
fi
dpkg-buildpackage -us -uc -b >"$work/build.log" 2>&1 || {
        tail -n 60 "$work/build.log" >&2
        echo "build-deb.sh: dpkg-buildpackage failed; the whole log is $work/build.log" >&2
        exit 1
}
cp "$work"/*.deb "$work"/*.buildinfo "$work"/*.changes "$out"/
[ "$keep" = 1 ] || rm -rf "$work"
ls "$out"
