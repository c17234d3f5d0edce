#!/usr/bin/env bash
# Builds the deployable app: dist/ with host.json, the handler binary (mode 755) and one
# folder per function, plus dist.zip for zip deploy. Deployments have lost the
# executable bit before, so the zip records mode 755 explicitly.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
target="${TARGET:-}"   # e.g. TARGET=x86_64-unknown-linux-musl for a static binary
if [ -n "$target" ]; then
  cargo build --release --locked -p handler --target "$target"
  binary="target/$target/release/handler"
else
  cargo build --release --locked -p handler
  binary="target/release/handler"
fi
rm -rf dist dist.zip
mkdir -p dist
cp host.json dist/
install -m 755 "$binary" dist/handler
for dir in functions/*/; do
  name="$(basename "$dir")"
  mkdir -p "dist/$name"
  cp "$dir/function.json" "dist/$name/"
done
python3 - <<'PY'
import os, zipfile
with zipfile.ZipFile("dist.zip", "w", zipfile.ZIP_DEFLATED) as z:
    for folder, _, files in os.walk("dist"):
        for f in sorted(files):
            path = os.path.join(folder, f)
            info = zipfile.ZipInfo.from_file(path, os.path.relpath(path, "dist"))
            info.external_attr = (0o755 if f == "handler" else 0o644) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            with open(path, "rb") as src:
                z.writestr(info, src.read())
PY
echo "dist/ and dist.zip ready ($(du -h dist/handler | cut -f1) binary)"
