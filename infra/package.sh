#!/usr/bin/env bash
# Builds the deployable app: the release handler for x86-64 Linux linked against glibc 2.28
# (so it runs on every Functions Linux image; see docs/deploy.md), then dist/ with
# host.json, the handler (mode 755) and one folder per function, and dist.zip for zip
# deploy and `func azure functionapp publish`. Deployments have lost the executable bit
# before, so the zip records every file's mode explicitly.
#
# The linker (cargo-zigbuild with zig from the Python package index, versions pinned in
# infra/requirements.txt) is installed into infra/.venv on first use.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

glibc=2.28
target=x86_64-unknown-linux-gnu
venv="infra/.venv"
requirements="infra/requirements.txt"

command -v python3 >/dev/null 2>&1 || { echo "package.sh: python3 (with venv and pip) is required" >&2; exit 1; }
# A venv made from other requirements is replaced, so a changed pin takes effect.
if ! cmp -s "$requirements" "$venv/requirements.installed" 2>/dev/null; then
  echo "==> installing $(grep -v '^#' "$requirements" | tr '\n' ' ')into $venv"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$requirements"
  cp "$requirements" "$venv/requirements.installed"
fi

echo "==> cargo zigbuild --release -p handler --target $target.$glibc"
# the venv's python3 comes first on PATH: cargo-zigbuild finds zig through `python3 -m ziglang`
PATH="$root/$venv/bin:$PATH" cargo zigbuild --release --locked -p handler --target "$target.$glibc"
# where cargo put it: a CARGO_TARGET_DIR set in the environment moves it
binary="${CARGO_TARGET_DIR:-target}/$target/release/handler"

rm -rf dist dist.zip
mkdir -p dist
install -m 644 host.json dist/host.json
install -m 755 "$binary" dist/handler
for dir in functions/*/; do
  name="$(basename "$dir")"
  install -d -m 755 "dist/$name"
  install -m 644 "$dir/function.json" "dist/$name/function.json"
done

python3 - <<'PY'
import os, stat, zipfile
# Fixed timestamps and sorted entries: the same inputs give the same zip.
with zipfile.ZipFile("dist.zip", "w", zipfile.ZIP_DEFLATED) as z:
    for folder, dirs, files in os.walk("dist"):
        dirs.sort()
        for f in sorted(files):
            path = os.path.join(folder, f)
            info = zipfile.ZipInfo(os.path.relpath(path, "dist"), date_time=(2020, 1, 1, 0, 0, 0))
            info.create_system = 3  # Unix: unzip and the platform honour the mode bits
            info.external_attr = (stat.S_IFREG | stat.S_IMODE(os.stat(path).st_mode)) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            with open(path, "rb") as src:
                z.writestr(info, src.read())
PY
echo "dist/ and dist.zip ready ($(du -h dist/handler | cut -f1) binary, glibc $glibc or newer)"
