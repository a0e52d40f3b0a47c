#!/usr/bin/env bash
# Install (or uninstall) sendpost-agent on a Postfix server, then set it up. Run as root.
# Idempotent: a second run with the same flags changes nothing and says so.
#
#   ./install.sh --api-key KEY [--mta postfix] [--endpoint URL] [--log-path PATH]
#   curl -sSL URL | sudo bash -s -- --api-key KEY --mta postfix --endpoint URL --package DEB
#   ./install.sh --uninstall [--purge]
#   any of them with --dry-run: print each change it would make, make none
#
# It only puts the package on disk, then hands over to `sendpost-agent setup`, which does
# everything else (user, directories, config.yaml, services, Postfix, doctor; see
# `sendpost-agent setup --help`) with the flags given here:
#   - apt systems: the .deb (--package FILE or URL; else dist/sendpost-agent_*.deb or
#     sendpost-agent_*.deb beside this script) with apt-get, which brings its dependencies,
#     replacing an earlier virtualenv install (below);
#   - elsewhere, or from a checkout without a .deb: a virtualenv in $SENDPOST_PREFIX with
#     `pip install` of this checkout (the OS packages to build it first), a sendpost-agent
#     link in $SENDPOST_BIN_DIR and the two units of systemd/ in $SYSTEMD_DIR.
# --uninstall runs `sendpost-agent teardown` (--purge too), then removes the package.
#
# Exit codes: 0 done (or nothing to do), 1 a step failed, 2 bad usage.
#
# Environment (defaults in brackets); the paths exist so that tests can install into a
# temporary root against a private Postfix, without touching /opt, /etc or systemd:
#   SENDPOST_API_KEY        the API key, instead of --api-key (keeps it out of `ps`)
#   SENDPOST_PREFIX         virtualenv [/opt/sendpost-agent]
#   SENDPOST_ETC            config directory, holds config.yaml [/etc/sendpost-agent]
#   SENDPOST_STATE          state-dir, written to config.yaml [/var/lib/sendpost-agent]
#   SENDPOST_BIN_DIR        where the sendpost-agent command is linked [/usr/local/bin]
#   SYSTEMD_DIR             where the units go [/etc/systemd/system]
#   SENDPOST_SYSTEMD        auto, yes or no: is systemd running? [auto: /run/systemd/system]
#   SENDPOST_PYTHON         interpreter for the virtualenv, >= 3.11 [system python3]
#   SENDPOST_SKIP_VENV      1: install nothing; $SENDPOST_PREFIX/bin/sendpost-agent must exist [0]
set -Eeuo pipefail
umask 022
export PATH="$PATH:/usr/sbin:/sbin"
trap '((BASH_SUBSHELL)) || printf "install.sh: failed at line %s: %s\n" "$LINENO" "$BASH_COMMAND" >&2' ERR

readonly PACKAGE=sendpost-agent
readonly UNITS=(sendpost-agent-milter.service sendpost-agent-logwatch.service)
readonly DEB_AGENT=/usr/bin/sendpost-agent

PREFIX=${SENDPOST_PREFIX:-/opt/sendpost-agent}
ETC_DIR=${SENDPOST_ETC:-/etc/sendpost-agent}
STATE_DIR=${SENDPOST_STATE:-}
BIN_DIR=${SENDPOST_BIN_DIR:-/usr/local/bin}
SYSTEMD_DIR=${SYSTEMD_DIR:-/etc/systemd/system}
PYTHON=${SENDPOST_PYTHON:-}
SKIP_VENV=${SENDPOST_SKIP_VENV:-0}
# The checkout install.sh lies in; none when bash reads it from a pipe (curl ... | bash -s),
# whatever the working directory holds.
SRC_DIR=""
if [[ -n ${BASH_SOURCE[0]:-} ]]; then
    SRC_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
fi

# The key is read once and never exported to child processes, never printed: setup reads
# it on its standard input.
API_KEY=${SENDPOST_API_KEY:-}
unset SENDPOST_API_KEY

usage() {
    cat <<'EOF'
Usage: install.sh --api-key KEY [OPTIONS]      install or update sendpost-agent
       install.sh --uninstall [--purge]         remove it again

Options:
  --api-key KEY              Event Ingestion API key (or SENDPOST_API_KEY); needed on
                             the first install, kept from config.yaml afterwards
  --mta postfix              the MTA (only postfix is supported)
  --endpoint URL             ingestion URL [https://events.sendpost.io/api/v1/tpsp/custom-smtp/events]
  --log-path PATH            mail log to follow [Postfix's maillog_file, else
                             /var/log/mail.log, else /var/log/maillog; when no syslog
                             daemon writes one: the systemd journal]
  --log-source file|journal  read the mail log file or the systemd journal
  --with-rsyslog             no mail log written: install rsyslog instead of reading
                             the journal
  --postfix-config-dir DIR   the Postfix configuration to change (postconf -c DIR)
  --package FILE|URL         the sendpost-agent .deb to install (apt systems) [a
                             sendpost-agent_*.deb in dist/ or beside install.sh]
  --uninstall                undo the setup (Postfix entries, services) and remove the
                             package; keeps state and config
  --purge                    with --uninstall: also remove state-dir, config and the user
  --dry-run                  print each change it would make, and make none
  --verbose                  show the package manager's and pip's output
  --help                     this text

The values are checked and applied by `sendpost-agent setup` (its --help lists the
steps). Environment overrides (paths, for tests and unusual layouts) are described at
the top of install.sh.
EOF
}

# --- output ------------------------------------------------------------------------

CHANGES=0
DRY_RUN=0
VERBOSE=0

ok() { printf '  ok      %s\n' "$*"; }
note() { printf '  note    %s\n' "$*"; }
die() {
    local code=$1
    shift
    printf 'install.sh: error: %s\n' "$*" >&2
    exit "$code"
}
usage_error() {
    printf 'install.sh: error: %s\n\n' "$*" >&2
    usage >&2
    exit 2
}

# change DESCRIPTION COMMAND...: one change to the system; only described in a dry run.
# The command's output shows with --verbose, or when it fails.
change() {
    local what=$1 log status=0
    shift
    CHANGES=$((CHANGES + 1))
    if ((DRY_RUN)); then
        printf '  would   %s\n' "$what"
        return 0
    fi
    printf '  change  %s\n' "$what"
    if ((VERBOSE)); then
        "$@" || status=$?
    else
        log=$(mktemp)
        "$@" >"$log" 2>&1 || status=$?
        ((status == 0)) || tail -n 20 "$log" >&2
        rm -f -- "$log"
    fi
    ((status == 0)) || die 1 "this step failed: $what"
}

# --- arguments -----------------------------------------------------------------------

UNINSTALL=0
PURGE=0
ARG_PACKAGE=""
SETUP_ARGS=() # flags handed to `sendpost-agent setup` as given

parse_args() {
    local opt value
    while (($#)); do
        opt=$1
        value=""
        case $opt in
        --*=*)
            value=${opt#*=}
            opt=${opt%%=*}
            ;;
        esac
        case $opt in
        --api-key | --mta | --endpoint | --log-path | --log-source | --postfix-config-dir | --package)
            if [[ $1 != *=* ]]; then
                (($# >= 2)) || usage_error "$opt needs a value"
                value=$2
                shift
            fi
            [[ -n $value && $value != --* ]] || usage_error "$opt needs a value"
            ;;
        --uninstall | --purge | --dry-run | --verbose | --with-rsyslog | --help | -h)
            [[ $1 != *=* ]] || usage_error "$opt takes no value"
            ;;
        *) usage_error "unknown option: $opt" ;;
        esac
        shift
        case $opt in
        --api-key) API_KEY=$value ;;
        --mta | --endpoint | --log-path | --log-source | --postfix-config-dir) SETUP_ARGS+=("$opt" "$value") ;;
        --with-rsyslog) SETUP_ARGS+=("$opt") ;;
        --package) ARG_PACKAGE=$value ;;
        --uninstall) UNINSTALL=1 ;;
        --purge) PURGE=1 ;;
        --dry-run) DRY_RUN=1 ;;
        --verbose) VERBOSE=1 ;;
        --help | -h)
            usage
            exit 0
            ;;
        esac
    done
    if ((PURGE && !UNINSTALL)); then
        usage_error "--purge only goes with --uninstall"
    fi
}

# --- the package -------------------------------------------------------------------

apt_system() { command -v apt-get >/dev/null && command -v dpkg-query >/dev/null; }

package_installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed" ||
        rpm -q "$1" >/dev/null 2>&1
}

# find_deb -> DEB: --package, else a sendpost-agent_*.deb beside us or in dist/ (the last
# by name, if several).
DEB=""
find_deb() {
    DEB=$ARG_PACKAGE
    [[ -n $DEB || -z $SRC_DIR ]] && return 0
    local candidate
    for candidate in "$SRC_DIR"/dist/"$PACKAGE"_*.deb "$SRC_DIR"/"$PACKAGE"_*.deb; do
        [[ -f $candidate ]] && DEB=$candidate
    done
    return 0
}

fetch_deb() {
    if command -v curl >/dev/null; then
        curl -fsSL -o "$1" "$DEB"
    else
        wget -q -O "$1" "$DEB"
    fi
}

# A fresh host (a container) may have no package lists yet.
apt_install() {
    DEBIAN_FRONTEND=noninteractive apt-get update -q &&
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@"
}

PACKAGE_CHANGED=0

step_deb() {
    local file=$DEB tmp=""
    if [[ $DEB == http://* || $DEB == https://* ]]; then
        tmp=$(mktemp -d)
        file=$tmp/$PACKAGE.deb
        ((DRY_RUN)) && file=""
        [[ -z $file ]] || change "download $DEB" fetch_deb "$file"
    elif [[ ! -f $DEB ]]; then
        die 2 "--package $DEB: no such file"
    else
        file=$(cd "$(dirname "$DEB")" && pwd)/$(basename "$DEB")
    fi
    local want="" have=""
    [[ -n $file ]] && want=$(dpkg-deb -f "$file" Version)
    package_installed "$PACKAGE" && have=$(dpkg-query -W -f='${Version}' "$PACKAGE")
    if [[ -n $want && $want == "$have" ]]; then
        ok "package $PACKAGE $have"
    else
        PACKAGE_CHANGED=1
        change "apt-get install $PACKAGE ${want:-from $DEB}${have:+ (was $have)}" apt_install "$file"
    fi
    [[ -z $tmp ]] || rm -rf -- "$tmp"
    AGENT=$DEB_AGENT
}

choose_python() {
    local c
    local -a candidates=(/usr/bin/python3 /usr/bin/python3.13 /usr/bin/python3.12
        /usr/bin/python3.11 /usr/local/bin/python3)
    [[ -n $PYTHON ]] && candidates=("$PYTHON")
    for c in "${candidates[@]}"; do
        if [[ -x $c ]] && "$c" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            PYTHON=$c
            return 0
        fi
    done
    return 1
}

step_build_packages() {
    local p tool=""
    local -a wanted=() missing=()
    if apt_system; then
        tool=apt-get
        wanted=(python3-venv python3-dev gcc libmilter-dev libsystemd-dev pkg-config)
    elif command -v dnf >/dev/null && command -v rpm >/dev/null; then
        tool=dnf
        wanted=(gcc sendmail-milter-devel systemd-devel pkgconf-pkg-config)
        if choose_python; then
            wanted+=("$(basename "$PYTHON")-devel")
        else
            wanted+=(python3.11 python3.11-devel)
        fi
    else
        note "neither apt-get nor dnf found: install Python >= 3.11 with venv and headers," \
            "gcc, pkg-config and the libmilter and libsystemd headers yourself"
        return
    fi
    for p in "${wanted[@]}"; do
        package_installed "$p" || missing+=("$p")
    done
    if ((${#missing[@]} == 0)); then
        ok "build dependencies installed"
    elif [[ $tool == apt-get ]]; then
        change "apt-get install ${missing[*]}" apt_install "${missing[@]}"
    else
        change "dnf install ${missing[*]}" dnf install -y -q "${missing[@]}"
    fi
}

source_fingerprint() {
    (
        cd "$SRC_DIR"
        find . \( -name .git -o -name .venv -o -name tests -o -name build -o -name dist \
            -o -name '*.egg-info' -o -name __pycache__ -o -name '.*cache' \) -prune -o -type f \
            \( -name '*.py' -o -name pyproject.toml -o -name setup.cfg -o -name setup.py \) -print |
            LC_ALL=C sort | xargs -d '\n' sha256sum
        "$PYTHON" -c 'import sys; print(sys.version)'
    ) | sha256sum | cut -d' ' -f1
}

build_venv() {
    local stage status=0 want have=""
    want=$("$PYTHON" -c 'import sys; print(sys.version)')
    [[ -x $PREFIX/bin/python ]] && have=$("$PREFIX/bin/python" -c 'import sys; print(sys.version)' || true)
    if [[ ! -f $PREFIX/pyvenv.cfg ]]; then
        "$PYTHON" -m venv "$PREFIX"
    elif [[ $have != "$want" ]]; then
        # Its interpreter is gone or another version (an OS upgrade): start afresh.
        "$PYTHON" -m venv --clear "$PREFIX"
    fi
    # Build from a copy: the checkout stays untouched (no build/ or egg-info in it).
    stage=$(mktemp -d)
    tar -C "$SRC_DIR" --exclude=./.git --exclude=./.venv --exclude=./tests --exclude=./build \
        --exclude=./dist --exclude='*.egg-info' --exclude='*.so' --exclude=__pycache__ \
        --exclude='./.*cache' -cf - . | tar -C "$stage" -xf -
    "$PREFIX/bin/pip" install --quiet --disable-pip-version-check --upgrade "$stage" || status=$?
    rm -rf -- "$stage"
    ((status == 0)) || return "$status"
    printf '%s\n' "$FINGERPRINT" >"$PREFIX/.sendpost-agent-source"
}

FINGERPRINT=""

step_venv() {
    if ! choose_python; then
        ((DRY_RUN)) || die 1 "no Python >= 3.11 found (tried /usr/bin/python3*); set SENDPOST_PYTHON"
        note "no Python >= 3.11 found yet (the OS packages above provide it)"
        PACKAGE_CHANGED=1
        change "create the virtualenv $PREFIX and pip install $SRC_DIR" true
        return
    fi
    case $PYTHON in
    /home/* | /root/*)
        die 1 "$PYTHON lies under /home or /root, which the services cannot see" \
            "(ProtectHome=yes); use a system Python (SENDPOST_PYTHON)"
        ;;
    esac
    if [[ -e $PREFIX && ! -f $PREFIX/pyvenv.cfg ]] && [[ -n $(ls -A "$PREFIX") ]]; then
        die 1 "$PREFIX exists and is not a virtualenv; move it away or set SENDPOST_PREFIX"
    fi
    FINGERPRINT=$(source_fingerprint)
    if [[ -x $PREFIX/bin/sendpost-agent && -f $PREFIX/.sendpost-agent-source &&
        $(<"$PREFIX/.sendpost-agent-source") == "$FINGERPRINT" ]]; then
        ok "virtualenv $PREFIX: sendpost-agent installed from this checkout"
        return
    fi
    PACKAGE_CHANGED=1
    if [[ -f $PREFIX/pyvenv.cfg ]]; then
        change "pip install $SRC_DIR into $PREFIX (the code changed)" build_venv
    else
        change "create the virtualenv $PREFIX ($PYTHON) and pip install $SRC_DIR" build_venv
    fi
}

link_command() { mkdir -p "$BIN_DIR" && ln -sfn "$PREFIX/bin/sendpost-agent" "$BIN_DIR/sendpost-agent"; }

step_link() {
    local link=$BIN_DIR/sendpost-agent
    if [[ -L $link && $(readlink "$link") == "$PREFIX/bin/sendpost-agent" ]]; then
        ok "$link -> $PREFIX/bin/sendpost-agent"
    elif [[ -e $link && ! -L $link ]]; then
        note "$link exists and is not our link; left alone"
    else
        change "link $link -> $PREFIX/bin/sendpost-agent" link_command
    fi
}

# render_unit NAME -> REPLY: the unit of systemd/ (written for the .deb) running this
# virtualenv's command with this config; setup adds a drop-in for other directories.
render_unit() {
    local text=""
    IFS= read -r -d '' text <"$SRC_DIR/systemd/$1" || true
    # Placeholders first, so that one replacement can never feed the next.
    text=${text//"$DEB_AGENT"/@AGENT@}
    text=${text//\/opt\/sendpost-agent\/bin\/sendpost-agent/@AGENT@}
    text=${text//\/etc\/sendpost-agent\/config.yaml/@CONFIG@}
    text=${text//@AGENT@/"$PREFIX/bin/sendpost-agent"}
    text=${text//@CONFIG@/"$ETC_DIR/config.yaml"}
    REPLY=$text
}

write_unit() {
    mkdir -p "$SYSTEMD_DIR"
    printf '%s' "$2" >"$SYSTEMD_DIR/$1.tmp"
    chmod 0644 "$SYSTEMD_DIR/$1.tmp"
    mv -f "$SYSTEMD_DIR/$1.tmp" "$SYSTEMD_DIR/$1"
}

step_units() {
    local unit current
    for unit in "${UNITS[@]}"; do
        render_unit "$unit"
        current=""
        [[ -f $SYSTEMD_DIR/$unit ]] && { IFS= read -r -d '' current <"$SYSTEMD_DIR/$unit" || true; }
        if [[ $current == "$REPLY" ]]; then
            ok "$SYSTEMD_DIR/$unit"
        else
            PACKAGE_CHANGED=1
            change "install $SYSTEMD_DIR/$unit" write_unit "$unit" "$REPLY"
        fi
    done
}

AGENT=""

install_package() {
    if ((SKIP_VENV)); then
        AGENT=$PREFIX/bin/sendpost-agent
        [[ -x $AGENT ]] || die 1 "SENDPOST_SKIP_VENV=1 but $AGENT does not exist"
        ok "package left alone (SENDPOST_SKIP_VENV=1): $AGENT"
        return
    fi
    if apt_system; then
        find_deb
        if [[ -n $DEB ]]; then
            step_deb
            if venv_installed; then
                # Its units in $SYSTEMD_DIR would shadow the package's and keep running it.
                note "an install from a checkout is here ($PREFIX): the package replaces it"
                remove_venv
                PACKAGE_CHANGED=1
            fi
            return
        fi
        [[ -n $SRC_DIR && -f $SRC_DIR/setup.py ]] || die 2 "no sendpost-agent .deb beside install.sh: name it" \
            "with --package FILE or URL"
        note "no .deb (make deb, or --package): installing this checkout into a virtualenv"
    elif [[ -n $ARG_PACKAGE ]]; then
        die 2 "--package needs an apt system (apt-get, dpkg); elsewhere run install.sh from a" \
            "sendpost-agent checkout (git clone), which installs it into a virtualenv"
    elif [[ -z $SRC_DIR || ! -f $SRC_DIR/setup.py ]]; then
        die 2 "not an apt system: run install.sh from a sendpost-agent checkout (git clone)"
    fi
    AGENT=$PREFIX/bin/sendpost-agent
    step_build_packages
    step_venv
    step_link
    step_units
}

# run_agent COMMAND ARGS...: the installed sendpost-agent; its exit code is ours.
run_agent() {
    local -a args=(--config "$ETC_DIR/config.yaml" "$@")
    ((DRY_RUN)) && args+=(--dry-run)
    ((VERBOSE)) && args+=(--verbose)
    if [[ ! -x $AGENT ]]; then
        ((DRY_RUN)) || die 1 "$AGENT is missing after the install"
        printf '  would   run sendpost-agent %s (its plan shows once it is installed)\n' "$1"
        return 0
    fi
    printf '\n'
    local rc=0
    if [[ $1 == setup && -n $API_KEY ]]; then
        "$AGENT" "${args[@]}" --api-key-stdin <<<"$API_KEY" || rc=$?
    else
        "$AGENT" "${args[@]}" || rc=$?
    fi
    exit "$rc"
}

install_main() {
    printf 'Installing sendpost-agent%s\n' "$( ((DRY_RUN)) && echo " (dry run: nothing is changed)")"
    install_package
    local -a setup=("${SETUP_ARGS[@]}")
    [[ -n $STATE_DIR ]] && setup+=(--state-dir "$STATE_DIR")
    ((PACKAGE_CHANGED)) && setup+=(--restart)
    run_agent setup "${setup[@]}"
}

# --- uninstall -----------------------------------------------------------------------

systemd_running() {
    case ${SENDPOST_SYSTEMD:-auto} in
    yes) return 0 ;;
    no) return 1 ;;
    *) [[ -d /run/systemd/system ]] ;;
    esac
}

# venv_installed: the virtualenv path installed here before (its virtualenv, or a unit of
# ours in $SYSTEMD_DIR running its command).
venv_installed() {
    local unit
    [[ -f $PREFIX/pyvenv.cfg ]] && return 0
    for unit in "${UNITS[@]}"; do
        grep -qsF "$PREFIX/bin/sendpost-agent" "$SYSTEMD_DIR/$unit" && return 0
    done
    return 1
}

remove_venv() {
    local unit link=$BIN_DIR/sendpost-agent removed=0
    for unit in "${UNITS[@]}"; do
        if [[ -e $SYSTEMD_DIR/$unit ]]; then
            change "remove $SYSTEMD_DIR/$unit" rm -f -- "$SYSTEMD_DIR/$unit"
            removed=1
        fi
    done
    if ((removed)) && systemd_running; then
        change "systemctl daemon-reload" systemctl daemon-reload
    fi
    if [[ -L $link && $(readlink "$link") == "$PREFIX/bin/sendpost-agent" ]]; then
        change "remove $link" rm -f -- "$link"
    fi
    if ((SKIP_VENV)); then
        ok "$PREFIX left alone (SENDPOST_SKIP_VENV=1)"
    elif [[ -f $PREFIX/pyvenv.cfg ]]; then
        change "remove the virtualenv $PREFIX" rm -rf -- "$PREFIX"
    elif [[ -e $PREFIX ]]; then
        note "$PREFIX is not a virtualenv; left alone"
    fi
}

uninstall_main() {
    printf 'Uninstalling sendpost-agent%s\n' "$( ((DRY_RUN)) && echo " (dry run: nothing is changed)")"
    local rc=0
    local -a teardown=(teardown)
    ((PURGE)) && teardown+=(--purge)
    if apt_system && package_installed "$PACKAGE"; then
        AGENT=$DEB_AGENT
    else
        AGENT=$PREFIX/bin/sendpost-agent
    fi
    if [[ -x $AGENT ]]; then
        (run_agent "${teardown[@]}") || rc=$?
        ((rc == 0)) || exit "$rc"
        printf '\n'
    else
        note "sendpost-agent is not installed ($AGENT): nothing to tear down"
        # Purging needs the agent, which a plain --uninstall removed.
        ((PURGE)) && note "what a purge would remove, if still there: rm -rf" \
            "${STATE_DIR:-/var/lib/sendpost-agent} $ETC_DIR; userdel sendpost-agent"
    fi
    if [[ $AGENT == "$DEB_AGENT" ]]; then
        if ((PURGE)); then
            change "apt-get purge $PACKAGE" apt-get purge -y -q "$PACKAGE"
        else
            change "apt-get remove $PACKAGE" apt-get remove -y -q "$PACKAGE"
        fi
    else
        remove_venv
    fi
    if ((DRY_RUN)); then
        printf 'Dry run: %s more change(s) would be made; nothing was changed.\n' "$CHANGES"
    elif ((CHANGES)); then
        printf 'Done: %s more change(s) made; the package is removed.\n' "$CHANGES"
    elif [[ ! -x $AGENT ]]; then
        printf 'No changes: sendpost-agent is not installed.\n'
    fi
}

main() {
    parse_args "$@"
    if ((!DRY_RUN)) && ((EUID != 0)); then
        die 1 "run install.sh as root (or try --dry-run)"
    fi
    if ((UNINSTALL)); then
        uninstall_main
    else
        install_main
    fi
}

main "$@"
