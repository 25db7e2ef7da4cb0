# Shared by the .ci/*-venv.sh scripts (sourced, not run): make a project venv and pip-install
# into it, idempotently and safely when several test binaries start the same script at once.
#
#   venv_install NAME VENV READY [--python PY] [--before FN] -- PIP_ARGS…
#
# READY is a shell function that succeeds when the venv already does its job; nothing is done
# then. Otherwise the install is serialised by a lock file inside VENV (and READY checked again
# once the lock is held: another process may have finished meanwhile), FN runs (system
# prerequisites), the venv is created with PY (default ${PYTHON:-python3}) if it has no
# working python, `pip install PIP_ARGS…` runs, and READY must hold afterwards.
venv_install() {
    local name="$1" venv="$2" ready="$3" python="${PYTHON:-python3}" before=""
    shift 3
    while [ $# -gt 0 ]; do
        case "$1" in
        --python) python="$2"; shift 2 ;;
        --before) before="$2"; shift 2 ;;
        --) shift; break ;;
        *) echo "venv_install: unknown option $1" >&2; return 2 ;;
        esac
    done
    export PIP_DISABLE_PIP_VERSION_CHECK=1
    "$ready" && return 0
    mkdir -p "$venv"
    exec 9>"$venv/.install.lock"
    flock 9
    "$ready" && return 0 # another process finished the install while we waited
    if [ -n "$before" ]; then "$before"; fi
    if ! "$venv/bin/python" -c 'import sys' 2>/dev/null; then
        echo "$name: creating $venv with $python ($("$python" --version 2>&1))" >&2
        "$python" -m venv "$venv"
    fi
    echo "$name: installing $* into $venv" >&2
    "$venv/bin/python" -m pip install --quiet "$@"
    if ! "$ready"; then
        echo "$name: $venv does not work after the install" >&2
        return 1
    fi
}
