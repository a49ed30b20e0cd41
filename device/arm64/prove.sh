#!/usr/bin/env bash
# arm64 proof (issue 4): run the int8 pipeline in a Raspberry Pi OS bookworm (Debian 12, Python 3.11) arm64
# root under qemu-user, with the device extra installed from aarch64 wheels for each runtime, and compare
# with x86. See the README section "arm64 proof".
#
#   sudo device/arm64/prove.sh [--root DIR] [--models DIR] [--data DIR] [--out DIR] [--keep]
#                              [--runtimes "litert tflite_runtime"] [--threads N] [--qemu-cpu CPU]
#                              [--reference-kernels auto|always|never] [--reference-crops N]
#
# Needs: root, Linux x86_64, `apt-get install qemu-user-static debootstrap`, deb.debian.org and PyPI.
#  * The root (debootstrap --variant=minbase bookworm + python3, python3-venv, python3-pip) is cached in
#    --root (default .cache/arm64-root); a second run reuses it. The venvs are made fresh on every run.
#  * qemu-aarch64-static is registered in binfmt_misc with the F flag (so the chroot needs no copy of it).
#  * QEMU_CPU=cortex-a72 (a Pi 4): QEMU's default "max" CPU offers SME, and the SME int8 kernels give wrong
#    results under qemu-user.
#  * The chroot gets fake /sys/devices/system/cpu/{possible,present} files, never the host's /sys.
#  * Everything inside runs under `env -i` with a clean PATH/HOME: the host's pip settings (PIP_*,
#    /etc/pip.conf, local wheel folders) never reach the chroot's pip, which talks to PyPI only.
#  * --threads (default: this host's cores, at most 4 like a Pi 4) is used on both sides; qemu-user runs
#    guest threads on host cores. Results are identical at 1 and 2 threads; 2 cut the run by a third.
#  * --keep keeps the copied project, models, images and venvs in the root (/opt/edgeface-proof).
#  * Kernels: each runtime first runs on its optimized (deployed) kernels. When that run is not within one
#    step of x86 (auto, the default), it runs again on the runtime's portable reference kernels, which must
#    match x86's reference kernels: the install is then proven exact and the optimized differences are the
#    runtime's kernel rounding (check.py explains). The reference run checks the first --reference-crops
#    (default 12) raw embedder crops; it takes about 10 more minutes under qemu.
#  * Single ops: every op of every int8 model runs alone on the inputs it sees on real images (recorded on
#    x86), on x86 and on arm64, and must be within one step: this compares one kernel at a time.
# Exit status: 0 when every check passes, 1 when a check fails, 2 for a setup error.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
ROOT="$REPO/.cache/arm64-root"
MODELS="${EDGEFACE_MODELS:-$REPO/models}"
DATA="${EDGEFACE_DATA:-$(cd "$REPO/.." && pwd)/shared/data}"
OUT="$REPO/.cache/arm64-proof"
KEEP=0
RUNTIMES="litert tflite_runtime"
REFERENCE_KERNELS=auto
REFERENCE_CROPS=12
CORES=$(nproc 2>/dev/null || echo 1)
THREADS=$(( CORES < 4 ? CORES : 4 ))  # a Pi 4 has 4; int8 results do not depend on it (measured)
QEMU_CPU_MODEL=cortex-a72
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
HOST_PYTHON="${PYTHON:-python3}"
NICE="${EDGEFACE_NICE:-nice -n 19}"

usage() { sed -n '2,29p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
die() { echo "prove.sh: error: $*" >&2; exit 2; }
while [[ $# -gt 0 ]]; do
  case "$1" in
    --root) ROOT="$2"; shift 2 ;;
    --models) MODELS="$2"; shift 2 ;;
    --data) DATA="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    --keep) KEEP=1; shift ;;
    --runtimes) RUNTIMES="$2"; shift 2 ;;
    --threads) THREADS="$2"; shift 2 ;;
    --qemu-cpu) QEMU_CPU_MODEL="$2"; shift 2 ;;
    --mirror) MIRROR="$2"; shift 2 ;;
    --reference-kernels) REFERENCE_KERNELS="$2"; shift 2 ;;
    --reference-crops) REFERENCE_CROPS="$2"; shift 2 ;;
    -h|--help) usage 0 ;;
    *) echo "prove.sh: unknown argument $1" >&2; usage 2 ;;
  esac
done

[[ $REFERENCE_KERNELS =~ ^(auto|always|never)$ ]] || die "--reference-kernels wants auto, always or never"
[[ $REFERENCE_CROPS =~ ^[1-9][0-9]*$ ]] || die "--reference-crops wants a positive number"
[[ $(id -u) -eq 0 ]] || die "needs root (debootstrap, chroot, mounts, binfmt_misc)"
[[ $(uname -m) == x86_64 ]] || die "runs on an x86_64 host (it compares arm64 with x86)"
command -v debootstrap >/dev/null || die "debootstrap not found: apt-get install debootstrap qemu-user-static"
QEMU="$(command -v qemu-aarch64-static || true)"
[[ -n "$QEMU" ]] || die "qemu-aarch64-static not found: apt-get install qemu-user-static"
[[ -f "$MODELS/models.json" ]] || die "no models.json in $MODELS (--models DIR, built by edgeface build)"
[[ -d "$DATA/bbt" && -d "$DATA/lfw" ]] || die "no shared data at $DATA (--data DIR with bbt/ and lfw/)"
mkdir -p "$OUT"
ROOT="$(mkdir -p "$ROOT" && cd "$ROOT" && pwd)"
OUT="$(cd "$OUT" && pwd)"
WORK=/opt/edgeface-proof            # inside the root
T_START=$(date +%s)
declare -A SECONDS_OF
phase() { local name=$1 t0=$2; SECONDS_OF[$name]=$(( $(date +%s) - t0 )); echo "== $name: ${SECONDS_OF[$name]} s"; }

exec 9>"$ROOT.lock"
flock -n 9 || die "another proof is using $ROOT"

# ---------------------------------------------------------------------------------------------- binfmt
if [[ ! -e /proc/sys/fs/binfmt_misc/register ]]; then
  mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc || die "cannot mount binfmt_misc"
fi
BINFMT=/proc/sys/fs/binfmt_misc/qemu-aarch64
if [[ ! -e $BINFMT ]]; then
  printf '%s' ':qemu-aarch64:M::\x7f\x45\x4c\x46\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00:\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff:'"$QEMU"':F' \
    > /proc/sys/fs/binfmt_misc/register || die "cannot register $QEMU in binfmt_misc"
  echo "registered $QEMU for aarch64 in binfmt_misc (flag F)"
fi
grep -q '^enabled' $BINFMT || die "$BINFMT is disabled"
INTERP="$(sed -n 's/^interpreter //p' $BINFMT)"
FLAGS="$(sed -n 's/^flags: //p' $BINFMT)"

# ------------------------------------------------------------------------------------------- the root
t=$(date +%s)
if [[ ! -f "$ROOT/.edgeface-root-ok" ]]; then
  if [[ ! -f "$ROOT/.edgeface-stage1-ok" ]]; then
    echo "== debootstrap first stage (downloads) into $ROOT"
    rm -rf "$ROOT" && mkdir -p "$ROOT"
    debootstrap --foreign --arch=arm64 --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
      bookworm "$ROOT" "$MIRROR"
    touch "$ROOT/.edgeface-stage1-ok"
  fi
fi
if [[ "$FLAGS" != *F* ]]; then   # a registration without F needs the interpreter inside the root
  mkdir -p "$ROOT$(dirname "$INTERP")" && cp "$INTERP" "$ROOT$INTERP"
fi
# Fake CPU topology for the runtimes (a Pi 4 has 4 cores); the host's /sys is never mounted in.
mountpoint -q "$ROOT/sys" && die "$ROOT/sys is a mount point; the proof never binds the host's /sys"
mkdir -p "$ROOT/sys/devices/system/cpu"
echo 0-3 > "$ROOT/sys/devices/system/cpu/possible"
echo 0-3 > "$ROOT/sys/devices/system/cpu/present"

MOUNTED=()
cleanup() {
  local rc=$?
  for ((i=${#MOUNTED[@]}-1; i>=0; i--)); do umount "${MOUNTED[$i]}" 2>/dev/null || umount -l "${MOUNTED[$i]}" || true; done
  if [[ $KEEP -eq 0 ]]; then rm -rf "${ROOT:?}$WORK"; fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM
for m in proc dev; do
  mkdir -p "$ROOT/$m"
  if ! mountpoint -q "$ROOT/$m"; then
    if [[ $m == proc ]]; then mount -t proc proc "$ROOT/proc"; else mount --bind /dev "$ROOT/dev"; fi
    MOUNTED+=("$ROOT/$m")
  fi
done
cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
# Trust what the host trusts (a TLS-inspecting proxy's CA on some networks): append the host bundle's
# certificates that the root's bundle lacks. Certificates only; no pip setting crosses into the root.
"$HOST_PYTHON" - /etc/ssl/certs/ca-certificates.crt "$ROOT/etc/ssl/certs/ca-certificates.crt" <<'PY'
import re, sys
pem = re.compile(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", re.S)
try:
    host = pem.findall(open(sys.argv[1]).read())
except OSError:
    sys.exit(0)
have = set(pem.findall(open(sys.argv[2]).read()))
extra = [c for c in host if c not in have]
if extra:
    with open(sys.argv[2], "a") as f:
        f.write("\n" + "\n".join(extra) + "\n")
    print(f"added {len(extra)} host CA certificate(s) to the root's bundle")
PY

# Inside the root: nothing from the host's environment except what is listed here.
#   in_root [NAME=VALUE ...] -- COMMAND [ARG ...]
in_root() {
  local envs=()
  while [[ $# -gt 0 && $1 != -- ]]; do envs+=("$1"); shift; done
  shift
  env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
    QEMU_CPU="$QEMU_CPU_MODEL" PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 \
    ${http_proxy:+http_proxy=$http_proxy} ${https_proxy:+https_proxy=$https_proxy} "${envs[@]}" \
    $NICE chroot "$ROOT" "$@"
}
if [[ ! -f "$ROOT/.edgeface-root-ok" ]]; then
  echo "== debootstrap second stage (under qemu)"
  in_root -- /debootstrap/debootstrap --second-stage
  in_root -- apt-get clean
  touch "$ROOT/.edgeface-root-ok"
fi
ARCH=$(in_root -- uname -m)
[[ $ARCH == aarch64 ]] || die "the root does not run as aarch64 (uname -m: $ARCH)"
phase root "$t"

# ------------------------------------------------------------------------- project, models, images in
t=$(date +%s)
rm -rf "${ROOT:?}$WORK" && mkdir -p "$ROOT$WORK"/{src,models,data}
if git -C "$REPO" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  # tracked and untracked-but-not-ignored files of the working tree (no models, caches, .git)
  (cd "$REPO" && git ls-files -z --cached --others --exclude-standard | xargs -0 -I{} sh -c 'test -e "{}" && printf "%s\0" "{}"' \
     | tar --null -T - -cf -) | tar -C "$ROOT$WORK/src" -xf -
else
  tar -C "$REPO" --exclude=.git --exclude=.cache --exclude=models --exclude='*.tflite' --exclude='*.egg-info' \
    --exclude=__pycache__ -cf - . | tar -C "$ROOT$WORK/src" -xf -
fi
# the int8 models of the default pipeline (every detector of the default configuration, the landmark model,
# the embedder) with their manifests, and models.json as it is (the float files it lists stay behind)
PYTHONPATH="$REPO" "$HOST_PYTHON" "$HERE/check.py" models --models "$MODELS" > "$OUT/models.txt"
while read -r f; do cp "$MODELS/$f" "$ROOT$WORK/models/"; done < "$OUT/models.txt"
cp "$MODELS/models.json" "$ROOT$WORK/models/models.json"
echo "models: $(grep -c tflite "$OUT/models.txt") int8 models ($(grep tflite "$OUT/models.txt" | tr '\n' ' '))"
"$HOST_PYTHON" "$HERE/check.py" images --data "$DATA" > "$OUT/images.txt"
tar -C "$DATA" -T "$OUT/images.txt" -cf - | tar -C "$ROOT$WORK/data" -xf -
phase copy "$t"

# ----------------------------------------------------------------------------------- x86 reference
t=$(date +%s)
echo "== x86 reference ($HOST_PYTHON, source $REPO)"
PYTHONPATH="$REPO" EDGEFACE_RUNTIME=litert $NICE "$HOST_PYTHON" "$HERE/check.py" run --models "$ROOT$WORK/models" \
  --data "$ROOT$WORK/data" --threads "$THREADS" --out "$OUT/x86-litert.npz" 2>&1 | tee "$OUT/x86-litert.log"
cp "$OUT/x86-litert.npz" "$ROOT$WORK/x86-litert.npz"
rm -f "$OUT/x86-litert-reference.npz"  # made below when a runtime needs it, for these models
# single ops: one model per op of every int8 model plus the inputs each op sees (host, TensorFlow), run here
# and on arm64, so each kernel is compared alone
PYTHONPATH="$REPO" $NICE "$HOST_PYTHON" "$HERE/check.py" split --models "$ROOT$WORK/models" --data "$ROOT$WORK/data" \
  --out "$ROOT$WORK/ops" 2>&1 | { grep -v -e '^I0000' -e '^WARNING: All log' -e '^To enable' || true; } | tee "$OUT/split.log"
PYTHONPATH="$REPO" EDGEFACE_RUNTIME=litert $NICE "$HOST_PYTHON" "$HERE/check.py" ops-run --ops "$ROOT$WORK/ops" \
  --out "$OUT/x86-litert-ops.npz" 2>&1 | tee -a "$OUT/split.log"
phase x86 "$t"

# ------------------------------------------------------------------------ arm64: one venv per runtime
CANDIDATES=()
REFERENCES=()
OPS_CANDIDATES=()
for rt in $RUNTIMES; do
  case "$rt" in
    litert) extra=device ;;
    tflite_runtime) extra=device-legacy ;;
    *) die "unknown runtime $rt (litert, tflite_runtime)" ;;
  esac
  venv="$WORK/venv-$rt"
  t=$(date +%s)
  echo "== arm64 $rt: python3 -m venv + pip install src[$extra]"
  in_root -- python3 -m venv "$venv"
  if ! in_root -- "$venv/bin/pip" install --quiet --only-binary=:all: --no-binary=edgeface "$WORK/src[$extra]" \
       2>&1 | tee "$OUT/arm64-$rt-pip.log"; then
    echo "pip install failed for $rt (log: $OUT/arm64-$rt-pip.log)" >&2
  fi
  in_root -- "$venv/bin/pip" freeze > "$OUT/arm64-$rt-freeze.txt" || true
  phase "install_$rt" "$t"
  t=$(date +%s)
  echo "== arm64 $rt: check.py run (QEMU_CPU=$QEMU_CPU_MODEL)"
  rm -f "$OUT/arm64-$rt.npz"
  if in_root EDGEFACE_RUNTIME="$rt" -- "$venv/bin/python" "$WORK/src/device/arm64/check.py" run \
       --models "$WORK/models" --data "$WORK/data" --threads "$THREADS" --inputs "$WORK/x86-litert.npz" \
       --out "$WORK/arm64-$rt.npz" 2>&1 | tee "$OUT/arm64-$rt.log"; then
    cp "$ROOT$WORK/arm64-$rt.npz" "$OUT/arm64-$rt.npz"
  else
    echo "the check failed to run on arm64 with $rt (log: $OUT/arm64-$rt.log)" >&2
  fi
  rm -f "$OUT/arm64-$rt-ops.npz"
  if in_root EDGEFACE_RUNTIME="$rt" -- "$venv/bin/python" "$WORK/src/device/arm64/check.py" ops-run --ops "$WORK/ops" \
       --out "$WORK/arm64-$rt-ops.npz" 2>&1 | tee -a "$OUT/arm64-$rt.log"; then
    cp "$ROOT$WORK/arm64-$rt-ops.npz" "$OUT/arm64-$rt-ops.npz"
  fi
  phase "run_$rt" "$t"
  CANDIDATES+=(--candidate "arm64-$rt=$OUT/arm64-$rt.npz")
  OPS_CANDIDATES+=(--ops-candidate "arm64-$rt=$OUT/arm64-$rt-ops.npz")

  # reference kernels: when the optimized kernels are not within tolerance (auto), or always
  need_ref=0
  if [[ $REFERENCE_KERNELS == always ]]; then need_ref=1
  elif [[ $REFERENCE_KERNELS == auto && -f "$OUT/arm64-$rt.npz" ]]; then
    "$HOST_PYTHON" "$HERE/check.py" compare --reference "$OUT/x86-litert.npz" \
      --candidate "arm64-$rt=$OUT/arm64-$rt.npz" > /dev/null 2>&1 || need_ref=1
  fi
  if [[ $need_ref -eq 1 ]]; then
    t=$(date +%s)
    if [[ ! -f "$OUT/x86-litert-reference.npz" ]]; then
      echo "== x86 reference, reference kernels"
      PYTHONPATH="$REPO" EDGEFACE_RUNTIME=litert $NICE "$HOST_PYTHON" "$HERE/check.py" run --kernels reference \
        --models "$ROOT$WORK/models" --data "$ROOT$WORK/data" --threads "$THREADS" --max-crops "$REFERENCE_CROPS" \
        --out "$OUT/x86-litert-reference.npz" 2>&1 | tee "$OUT/x86-litert-reference.log"
      cp "$OUT/x86-litert-reference.npz" "$ROOT$WORK/x86-litert-reference.npz"
      REFERENCES+=(--reference "$OUT/x86-litert-reference.npz")
    fi
    echo "== arm64 $rt: check.py run --kernels reference"
    rm -f "$OUT/arm64-$rt-reference.npz"
    if in_root EDGEFACE_RUNTIME="$rt" -- "$venv/bin/python" "$WORK/src/device/arm64/check.py" run --kernels reference \
         --models "$WORK/models" --data "$WORK/data" --threads "$THREADS" --inputs "$WORK/x86-litert-reference.npz" \
         --max-crops "$REFERENCE_CROPS" --out "$WORK/arm64-$rt-reference.npz" 2>&1 | tee "$OUT/arm64-$rt-reference.log"; then
      cp "$ROOT$WORK/arm64-$rt-reference.npz" "$OUT/arm64-$rt-reference.npz"
    else
      echo "the reference-kernel check failed to run on arm64 with $rt (log: $OUT/arm64-$rt-reference.log)" >&2
    fi
    phase "reference_$rt" "$t"
    CANDIDATES+=(--candidate "arm64-$rt-reference=$OUT/arm64-$rt-reference.npz")
  fi
done

# ------------------------------------------------------------------------------------------- compare
SECONDS_OF[total]=$(( $(date +%s) - T_START ))
DISK_MB=$(du -smx "$ROOT" | cut -f1)
{
  printf '{"wall_seconds": {'
  sep=""; for k in "${!SECONDS_OF[@]}"; do printf '%s"%s": %s' "$sep" "$k" "${SECONDS_OF[$k]}"; sep=", "; done
  printf '}, "root": "%s", "root_disk_mb": %s, "qemu": "%s", "qemu_cpu": "%s", "threads": %s}\n' \
    "$ROOT" "$DISK_MB" "$("$QEMU" --version | head -1)" "$QEMU_CPU_MODEL" "$THREADS"
} > "$OUT/run.json"
echo "== wall time ${SECONDS_OF[total]} s, root $DISK_MB MB"
"$HOST_PYTHON" "$HERE/check.py" compare --reference "$OUT/x86-litert.npz" "${REFERENCES[@]}" "${CANDIDATES[@]}" \
  --ops "$ROOT$WORK/ops" --ops-reference "$OUT/x86-litert-ops.npz" "${OPS_CANDIDATES[@]}" \
  --extra "$OUT/run.json" --report "$OUT/report.json"
