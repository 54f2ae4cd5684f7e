#!/usr/bin/env bash
# Refreshes the vendored advisories (deploy/advisories/db) that CI checks
# Cargo.lock against with `cargo audit --no-fetch`: from a checkout of the
# RustSec advisory database, the advisories of every crate Cargo.lock
# names. CI machines reach crates.io but not GitHub, so the database
# travels with the repository; run this where GitHub is reachable, after
# adding a dependency and at least monthly:
#
#   git clone https://github.com/rustsec/advisory-db /tmp/advisory-db
#   deploy/advisories/update.sh /tmp/advisory-db
#
# (A git directory without a work tree works too: GIT_DIR=... is read
# with `git show`.)
set -euo pipefail
cd "$(dirname "$0")/../.."

source=${1:?usage: deploy/advisories/update.sh PATH-TO-ADVISORY-DB}
db=deploy/advisories/db
rm -rf "$db"
mkdir -p "$db/crates"

# The crate names in Cargo.lock, and the database's files and commit.
crates=$(sed -n 's/^name = "\(.*\)"$/\1/p' Cargo.lock | sort -u)
if [ -d "$source/crates" ]; then
    list() { (cd "$source" && find crates -name 'RUSTSEC-*.md'); }
    show() { cat "$source/$1"; }
    git_dir=$source/.git
else
    list() { git --git-dir="$source" ls-tree -r --name-only HEAD crates | grep '/RUSTSEC-.*\.md$'; }
    show() { git --git-dir="$source" show "HEAD:$1"; }
    git_dir=$source
fi
count=0
while read -r path; do
    name=$(basename "$(dirname "$path")")
    if grep -qx -- "$name" <<<"$crates"; then
        mkdir -p "$db/crates/$name"
        show "$path" >"$db/crates/$name/$(basename "$path")"
        count=$((count + 1))
    fi
done < <(list)
commit=$(git --git-dir="$git_dir" log -1 --format='%H %cs' 2>/dev/null || echo "unknown")
printf 'rustsec/advisory-db %s\n%s advisories for the crates in Cargo.lock\n' "$commit" "$count" >deploy/advisories/SNAPSHOT
echo "$count advisories from rustsec/advisory-db $commit"
