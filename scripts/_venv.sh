#!/usr/bin/env bash
# Shared by scripts/test and scripts/demo (sourced, not run): find Python >= 3.11, create or
# reuse the venv ($CUR_RAY_VENV, default .venv) and install requirements-dev.lock plus cur_ray
# (editable, --no-deps); the install is skipped while a stamp in the venv shows the lock file,
# pyproject.toml and the Python version unchanged. Expects ROOT and the name in SCRIPT.

say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
die() { printf '%s: %s\n' "${SCRIPT:-scripts}" "$*" >&2; exit 2; }

export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1

# --- Python and venv ---------------------------------------------------------------------------
find_python() {
    local c
    for c in ${CUR_RAY_PYTHON:-} python3 python3.13 python3.12 python3.11; do
        if command -v "$c" >/dev/null 2>&1 &&
            "$c" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            command -v "$c"
            return 0
        fi
    done
    return 1
}

VENV=${CUR_RAY_VENV:-.venv}
[[ $VENV == /* ]] || VENV=$ROOT/$VENV
LOCK=$ROOT/requirements-dev.lock
STAMP=$VENV/.cur_ray-install-stamp
[[ -f $LOCK ]] || die "missing $LOCK (run ./scripts/lock)"

if ! "$VENV/bin/python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    PYTHON=$(find_python) || die "need Python >= 3.11 (set CUR_RAY_PYTHON to its path)"
    say "creating venv $VENV with $("$PYTHON" --version)"
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV" ||
        die "python -m venv failed (on Debian/Ubuntu: apt-get install python3-venv)"
fi
PY=$VENV/bin/python

# The stamp: hash of what the install depends on.
want_stamp=$("$PY" - "$LOCK" "$ROOT/pyproject.toml" <<'EOF'
import hashlib, sys
h = hashlib.sha256(sys.version.encode())
for path in sys.argv[1:]:
    h.update(open(path, "rb").read())
print(h.hexdigest())
EOF
)
if [[ "$(cat "$STAMP" 2>/dev/null || true)" != "$want_stamp" ]]; then
    say "installing requirements-dev.lock and cur_ray (editable) into $VENV"
    start=$SECONDS
    rm -f "$STAMP"
    "$PY" -m pip install -q --progress-bar off -r "$LOCK"
    "$PY" -m pip install -q --progress-bar off --no-deps -e "$ROOT"
    echo "$want_stamp" >"$STAMP"
    echo "installed in $((SECONDS - start))s"
fi
export PATH="$VENV/bin:$PATH"

