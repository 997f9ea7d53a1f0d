#!/usr/bin/env bash
# Makes the whole root file system of a module's runtime image from one built binary: the binary as
# /usr/local/bin/module, the ELF interpreter and every shared library it needs (found with readelf, followed
# recursively, looked up under SYSROOT), /etc/passwd and /etc/group with the unprivileged user `module`
# (uid/gid 10001) and an empty /data (mode 1777) for the module's state. Used by the Dockerfiles' build stage and by
# scripts/build-images.sh --prebuilt, so both produce the same image.
# Usage: scripts/collect-rootfs.sh BINARY OUT_DIR [SYSROOT]
#   SYSROOT: where the target's libraries live: / (default, native build) or e.g. /usr/arm-linux-gnueabihf
set -euo pipefail
case "${1:-}" in -h|--help|"") sed -n 2,8p "$0"; [ -n "${1:-}" ] && exit 0; exit 2;; esac
bin="$1"; out="$2"; sysroot="${3:-/}"
command -v readelf >/dev/null 2>&1 || { echo "collect-rootfs: readelf is missing: apt-get install binutils" >&2; exit 1; }
[ -f "$bin" ] || { echo "collect-rootfs: no binary $bin; build it first" >&2; exit 1; }

rm -rf "$out"; mkdir -p "$out/usr/local/bin" "$out/etc" "$out/data"
cp "$bin" "$out/usr/local/bin/module"

# Library folders of the target, in the order the dynamic loader searches them (Debian multiarch first).
dirs=()
for d in lib/x86_64-linux-gnu usr/lib/x86_64-linux-gnu lib/arm-linux-gnueabihf usr/lib/arm-linux-gnueabihf \
         lib/aarch64-linux-gnu usr/lib/aarch64-linux-gnu lib lib64 usr/lib; do
  [ -d "${sysroot%/}/$d" ] && dirs+=("$d")
done

interp=$(readelf -l "$bin" | sed -n 's/.*\[Requesting program interpreter: \(.*\)\]/\1/p')
if [ -n "$interp" ]; then
  # The interpreter keeps its absolute path (e.g. /lib64/ld-linux-x86-64.so.2, /lib/ld-linux-armhf.so.3).
  src="${sysroot%/}$interp"
  [ -e "$src" ] || src="${sysroot%/}/lib/$(basename "$interp")"
  [ -e "$src" ] || { echo "collect-rootfs: interpreter $interp not found under $sysroot" >&2; exit 1; }
  mkdir -p "$out$(dirname "$interp")"
  cp -L "$src" "$out$interp"
fi

declare -A seen=()
queue=("$bin")
while [ ${#queue[@]} -gt 0 ]; do
  f="${queue[0]}"; queue=("${queue[@]:1}")
  for lib in $(readelf -d "$f" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'); do
    [ -n "${seen[$lib]:-}" ] && continue
    seen[$lib]=1
    [ -n "$interp" ] && [ "$lib" = "$(basename "$interp")" ] && continue
    found=""
    for d in "${dirs[@]}"; do
      if [ -e "${sysroot%/}/$d/$lib" ]; then found="$d"; break; fi
    done
    [ -n "$found" ] || { echo "collect-rootfs: $lib (needed by $f) not found under $sysroot" >&2; exit 1; }
    # Installed in the multiarch folder the loader searches by default; the cross sysroot's lib/ becomes it.
    dest="$found"
    case "$found" in lib|usr/lib)
      case "$(readelf -h "$bin" | sed -n 's/.*Machine: *//p')" in
        *ARM*) dest=lib/arm-linux-gnueabihf;; *AArch64*) dest=lib/aarch64-linux-gnu;; *) dest=lib/x86_64-linux-gnu;;
      esac;;
    esac
    mkdir -p "$out/$dest"
    cp -L "${sysroot%/}/$found/$lib" "$out/$dest/$lib"
    queue+=("${sysroot%/}/$found/$lib")
  done
done

# /data is where the module keeps its state (its working folder). Sticky and world-writable like /tmp,
# because COPY into the image resets owners to root (on every builder) but keeps modes.
chmod 1777 "$out/data"
printf 'root:x:0:0:root:/root:/sbin/nologin\nmodule:x:10001:10001:module:/data:/sbin/nologin\n' >"$out/etc/passwd"
printf 'root:x:0:\nmodule:x:10001:\n' >"$out/etc/group"
echo "collect-rootfs: $(du -sh "$out" | cut -f1) in $out ($(find "$out" -type f | wc -l) files)"
