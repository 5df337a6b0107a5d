#!/usr/bin/env bash
# Vendors a release of Roost as the "previous release" of the compatibility test:
#   tests/compat/vendor-release.sh COMMIT
# writes tests/compat/roost-previous-COMMIT.tar.gz (its Cargo.toml, Cargo.lock, licences and
# src/, with the manifest changed as tests/compat/README.md says) and removes the older one.
# Then set PREVIOUS_RELEASE in tests/compat/main.rs to COMMIT.
set -euo pipefail
commit="${1:?usage: $0 COMMIT}"
cd "$(dirname "$0")/../.."
short="$(git rev-parse --short=7 "$commit")"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir "$work/roost-previous"
git archive "$commit" Cargo.toml Cargo.lock LICENSE-MIT LICENSE-APACHE src \
    | tar -x -C "$work/roost-previous"
# The client and the server are built, renamed so that they never replace the current ones in
# the shared target directory; the benchmark goes; the crate is its own workspace.
rm -rf "$work/roost-previous/src/bin/roost-bench"
python3 - "$work/roost-previous/Cargo.toml" "$short" <<'PY'
import re, sys
path, short = sys.argv[1], sys.argv[2]
manifest = open(path).read()
manifest = manifest.replace('name = "roost"\nversion', 'name = "roost-previous"\nversion', 1)
manifest = re.sub(r'default-run = "roost"\n',
                  'autobins = false\nautotests = false\nautobenches = false\nautoexamples = false\n',
                  manifest)
manifest = manifest.replace('[lib]\npath = "src/lib.rs"', '[lib]\nname = "roost"\npath = "src/lib.rs"')
manifest = re.sub(r'(\[\[bin\]\]\n[^\[]*)+',
                  '# The previous release\'s server and command-line client, renamed so that they never replace\n'
                  '# the current ones in a shared target directory (tests/compat/README.md).\n'
                  '[[bin]]\nname = "roost-previous"\npath = "src/bin/roost/main.rs"\n\n'
                  '[[bin]]\nname = "roost-client-previous"\npath = "src/bin/roost-client.rs"\n\n',
                  manifest, count=1)
manifest = (f'# Vendored from Roost commit {short} (tests/compat/README.md): server and client; only this manifest changed.\n'
            + manifest + '\n# Its own workspace, not a member of the crate that vendors it.\n[workspace]\n')
open(path, 'w').write(manifest)
PY
rm -f tests/compat/roost-previous-*.tar.gz
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime="$(git log -1 --format=%cI "$commit")" \
    -czf "tests/compat/roost-previous-$short.tar.gz" -C "$work" roost-previous
echo "tests/compat/roost-previous-$short.tar.gz"
