#!/usr/bin/env bash
# `make package`: Debian packages of the extension for each PostgreSQL that a
# PG_CONFIG names (from the tree `cargo pgrx package` leaves in
# target/release/tally-pg<major>/, plus the install scripts of earlier releases), and
# of tally-api once.
#   scripts/package.sh VERSION "PG_CONFIG..." RELEASE...
set -euo pipefail
cd "$(dirname "$0")/.."
version=${1:?version}; pg_configs=${2:?pg_config list}; shift 2
arch=$(dpkg --print-architecture)
out=target/debian
rm -rf "$out" && mkdir -p "$out"

# The extension: postgresql-<major>-tally, its files where that major's pg_config
# says, so that packages of two majors share no file.
for pg_config in $pg_configs; do
    major=$("$pg_config" --version | sed -E 's/^PostgreSQL ([0-9]+).*/\1/')
    tree="$out/postgresql-$major-tally"
    cp -a "target/release/tally-pg$major" "$tree"
    for release in "$@"; do
        install -m 644 "extension/sql/tally--$release.sql" "$tree$("$pg_config" --sharedir)/extension/"
    done
    mkdir -p "$tree/DEBIAN" "$tree/usr/share/doc/postgresql-$major-tally"
    install -m 644 README.md CHANGELOG.md "$tree/usr/share/doc/postgresql-$major-tally/"
    # Debian's own majors come as the package postgresql-<major>; a PostgreSQL built
    # from source (18 here) is no package, so there is nothing to depend on.
    depends="libc6"
    if dpkg -s "postgresql-$major" >/dev/null 2>&1; then depends="postgresql-$major, libc6"; fi
    cat > "$tree/DEBIAN/control" <<CONTROL
Package: postgresql-$major-tally
Version: $version
Architecture: $arch
Maintainer: tally <tally@localhost>
Depends: $depends
Section: database
Priority: optional
Installed-Size: $(du -sk "$tree" | cut -f1)
Description: tally: exact subscription usage counters for PostgreSQL $major
 A PostgreSQL extension whose triggers keep subscription usage counters exact in
 the same transaction as every session row, enforce plan limits and can verify and
 repair consistency. After installing: shared_preload_libraries = 'tally', restart,
 then CREATE EXTENSION tally (or ALTER EXTENSION tally UPDATE) in each database.
 Installs into $("$pg_config" --pkglibdir) and $("$pg_config" --sharedir).
CONTROL
    fakeroot dpkg-deb --build -Zxz "$tree" "$out/postgresql-${major}-tally_${version}_${arch}.deb" >/dev/null
done

# The API: tally-api
tree="$out/tally-api"
mkdir -p "$tree/DEBIAN" "$tree/usr/bin" "$tree/usr/share/doc/tally-api"
install -m 755 target/release/tally-api "$tree/usr/bin/tally-api"
install -m 644 README.md CHANGELOG.md "$tree/usr/share/doc/tally-api/"
cat > "$tree/DEBIAN/control" <<CONTROL
Package: tally-api
Version: $version
Architecture: $arch
Maintainer: tally <tally@localhost>
Depends: libc6
Section: net
Priority: optional
Installed-Size: $(du -sk "$tree" | cut -f1)
Description: HTTP API over the tally PostgreSQL extension
 Records sessions and reads usage counters over HTTP with JWT bearer tokens; all
 counting and limits live in the database (package postgresql-<major>-tally).
 Configure with DATABASE_URL and TALLY_JWT_SECRET; see tally-api --help.
CONTROL
fakeroot dpkg-deb --build -Zxz "$tree" "$out/tally-api_${version}_${arch}.deb" >/dev/null
ls -1 "$out"/*.deb
