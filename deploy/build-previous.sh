#!/usr/bin/env bash
# Builds the previous release's `wasmgrid` (the commit in
# deploy/previous-release) into target/previous/wasmgrid, for the
# mixed-version test (tests/mixed_version.rs): replicas of both releases in
# one cluster, one step of a rolling upgrade. Kept when already built for
# that commit. Bump deploy/previous-release at each release.
#
# It builds in a git worktree of that commit, in this checkout's target
# directory, so the dependencies both releases share are compiled once.
# Exit status 3: the commit is not in this clone (a shallow one).
set -euo pipefail
cd "$(dirname "$0")/.."

commit=$(tr -d '[:space:]' <deploy/previous-release)
out=target/previous
if [ -x "$out/wasmgrid" ] && [ "$(cat "$out/commit" 2>/dev/null)" = "$commit" ]; then
    exit 0
fi
if ! git cat-file -e "$commit^{commit}" 2>/dev/null; then
    git fetch --quiet origin "$commit" 2>/dev/null || git fetch --quiet --unshallow origin 2>/dev/null || true
fi
if ! git cat-file -e "$commit^{commit}" 2>/dev/null; then
    echo "build-previous: commit $commit (deploy/previous-release) is not in this clone; fetch the history" >&2
    exit 3
fi
mkdir -p "$out"
src=$out/src
rm -rf "$src"
git worktree prune
git worktree add --quiet --detach "$src" "$commit"
# Its own crates build beside ours in target/; its `wasmgrid` is copied
# out and the uplifted target/debug/wasmgrid removed, so the next build of
# this checkout puts its own binary back there.
target_dir=${CARGO_TARGET_DIR:-$PWD/target}
CARGO_TARGET_DIR=$target_dir cargo build --quiet --manifest-path "$src/Cargo.toml" -p wasmgrid --bin wasmgrid
cp "$target_dir/debug/wasmgrid" "$out/wasmgrid.new"
rm -f "$target_dir/debug/wasmgrid"
mv "$out/wasmgrid.new" "$out/wasmgrid"
echo "$commit" >"$out/commit"
git worktree remove --force "$src"
echo "built the previous release ($commit) as $out/wasmgrid"
