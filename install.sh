#!/usr/bin/env bash
# Install (or uninstall) sendpost-agent on a Postfix server, from the checkout this script
# lives in. Run as root. Idempotent: a second run with the same flags changes nothing and
# says so. Debian/Ubuntu first (apt), RHEL-family (dnf) where cheap.
#
#   ./install.sh --api-key KEY [--mta postfix] [--endpoint URL] [--log-path PATH]
#   ./install.sh --uninstall [--purge]
#   any of them with --dry-run: print each change it would make, make none
#
# What an install does, in order (each step prints "ok" when already in place):
#   1. OS packages to build the virtualenv: python3-venv python3-dev gcc libmilter-dev
#   2. system user and group sendpost-agent (no login, no home)
#   3. state-dir (agent user, 0750), config dir, and the milter's socket directory
#      <queue_directory>/sendpost-agent (agent user, group postfix, 2750)
#   4. a virtualenv in $SENDPOST_PREFIX with `pip install <this checkout>`, and a
#      sendpost-agent link in $SENDPOST_BIN_DIR
#   5. config.yaml (mode 0600, agent user): api-key, mta, endpoint, log-path, and the
#      paths that differ from the defaults; other keys in an existing file are kept, and
#      so is a milter-socket set there (e.g. inet:127.0.0.1:PORT). With no mail log at all
#      (Postfix logs only to the journal) it stops before step 1 and says how to fix it
#   6. the two systemd units; daemon-reload, enable --now (restart when code, config or
#      unit changed). Without systemd: prints how to run both processes instead
#   7. the milter entry of postfix-conf/main.cf.snippet, for milter-socket, appended to
#      smtpd_milters with postconf -e (main.cf backed up beside itself first; existing
#      milters kept, an entry of ours for another socket replaced), then postfix reload
#   8. `sendpost-agent doctor`, and its verdict (a failed check does not undo anything)
#
# Exit codes: 0 done (or nothing to do), 1 a step failed, 2 bad usage.
#
# Environment (defaults in brackets); the paths exist so that tests can install into a
# temporary root against a private Postfix, without touching /opt, /etc or systemd:
#   SENDPOST_API_KEY        the API key, instead of --api-key (keeps it out of `ps`)
#   SENDPOST_PREFIX         virtualenv [/opt/sendpost-agent]
#   SENDPOST_ETC            config directory, holds config.yaml [/etc/sendpost-agent]
#   SENDPOST_STATE          state-dir [/var/lib/sendpost-agent]
#   SENDPOST_BIN_DIR        where the sendpost-agent command is linked [/usr/local/bin]
#   SYSTEMD_DIR             where the units go [/etc/systemd/system]
#   SENDPOST_SYSTEMD        auto, yes or no: is systemd running? [auto: /run/systemd/system]
#   SENDPOST_PYTHON         interpreter for the virtualenv, >= 3.11 [system python3]
#   SENDPOST_SKIP_VENV      1: leave the virtualenv (and the OS packages to build it) alone;
#                           $SENDPOST_PREFIX/bin/sendpost-agent must exist [0]
set -Eeuo pipefail
umask 022
export PATH="$PATH:/usr/sbin:/sbin"
trap '((BASH_SUBSHELL)) || printf "install.sh: failed at line %s: %s\n" "$LINENO" "$BASH_COMMAND" >&2' ERR

readonly AGENT_USER=sendpost-agent
readonly UNITS=(sendpost-agent-milter.service sendpost-agent-logwatch.service)
readonly DEFAULT_PREFIX=/opt/sendpost-agent
readonly DEFAULT_ETC=/etc/sendpost-agent
readonly DEFAULT_STATE=/var/lib/sendpost-agent
readonly DEFAULT_SOCKET_DIR=/var/spool/postfix/sendpost-agent
readonly DEFAULT_ENDPOINT=https://events.sendpost.io/api/v1/tpsp/custom-smtp/events
readonly DEFAULT_LOG_GROUP=adm
readonly OUR_SOCKET=sendpost-agent/milter.sock
readonly SYSLOG_LOGS=(/var/log/mail.log /var/log/maillog) # Debian's, RHEL's

PREFIX=${SENDPOST_PREFIX:-$DEFAULT_PREFIX}
ETC_DIR=${SENDPOST_ETC:-$DEFAULT_ETC}
CONFIG=$ETC_DIR/config.yaml
STATE_DIR=${SENDPOST_STATE:-}          # resolved later: env > config.yaml > default
BIN_DIR=${SENDPOST_BIN_DIR:-/usr/local/bin}
SYSTEMD_DIR_GIVEN=${SYSTEMD_DIR:+1}
SYSTEMD_DIR=${SYSTEMD_DIR:-/etc/systemd/system}
SYSTEMD_MODE=${SENDPOST_SYSTEMD:-auto}
PYTHON=${SENDPOST_PYTHON:-}
SKIP_VENV=${SENDPOST_SKIP_VENV:-0}
SRC_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

# The key is read once and never exported to child processes, never printed.
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
                             /var/log/mail.log, else /var/log/maillog]
  --postfix-config-dir DIR   the Postfix configuration to change (postconf -c DIR)
  --uninstall                stop and remove the services, the milter entry in
                             smtpd_milters and the virtualenv; keeps state and config
  --purge                    with --uninstall: also remove state-dir, config and the user
  --dry-run                  print each change it would make, and make none
  --help                     this text

Environment overrides (paths, for tests and unusual layouts) are described at the top
of install.sh.
EOF
}

# --- output ------------------------------------------------------------------------

CHANGES=0
DRY_RUN=0

say() { printf '%s\n' "$*"; }
ok() { printf '  ok      %s\n' "$*"; }
note() { printf '  note    %s\n' "$*"; }
warn() { printf '  WARNING %s\n' "$*"; }
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
change() {
    local what=$1
    shift
    CHANGES=$((CHANGES + 1))
    if ((DRY_RUN)); then
        printf '  would   %s\n' "$what"
        return 0
    fi
    printf '  change  %s\n' "$what"
    if ! "$@"; then
        printf 'install.sh: error: this step failed: %s\n' "$what" >&2
        exit 1
    fi
}

step() { printf '\n%s\n' "$*"; }

# --- arguments -----------------------------------------------------------------------

UNINSTALL=0
PURGE=0
ARG_ENDPOINT=""
ARG_LOG_PATH=""
ARG_POSTFIX_DIR=""

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
        --api-key | --mta | --endpoint | --log-path | --postfix-config-dir)
            if [[ $1 != *=* ]]; then
                (($# >= 2)) || usage_error "$opt needs a value"
                value=$2
                shift
            fi
            [[ -n $value && $value != --* ]] || usage_error "$opt needs a value"
            ;;
        --uninstall | --purge | --dry-run | --help | -h)
            [[ $1 != *=* ]] || usage_error "$opt takes no value"
            ;;
        *) usage_error "unknown option: $opt" ;;
        esac
        shift
        case $opt in
        --api-key) API_KEY=$value ;;
        --mta)
            if [[ ${value,,} != postfix ]]; then
                printf "install.sh: error: --mta '%s' is not supported; the only supported MTA is postfix\n" \
                    "$value" >&2
                exit 2
            fi
            ;;
        --endpoint) ARG_ENDPOINT=$value ;;
        --log-path) ARG_LOG_PATH=$value ;;
        --postfix-config-dir) ARG_POSTFIX_DIR=$value ;;
        --uninstall) UNINSTALL=1 ;;
        --purge) PURGE=1 ;;
        --dry-run) DRY_RUN=1 ;;
        --help | -h)
            usage
            exit 0
            ;;
        esac
    done
    if ((PURGE && !UNINSTALL)); then
        usage_error "--purge only goes with --uninstall"
    fi
    if [[ -n $API_KEY && $API_KEY =~ [[:space:][:cntrl:]] ]]; then
        # Never print the key itself.
        usage_error "the API key contains spaces or control characters; paste it exactly"
    fi
    if [[ -n $ARG_ENDPOINT && ! $ARG_ENDPOINT =~ ^https?://[^/[:space:]]+ ]]; then
        usage_error "--endpoint '$ARG_ENDPOINT' is not an http(s) URL"
    fi
    if [[ -n $ARG_LOG_PATH && $ARG_LOG_PATH != /* ]]; then
        usage_error "--log-path '$ARG_LOG_PATH' is not an absolute path"
    fi
    if [[ -n $ARG_POSTFIX_DIR && ! -f $ARG_POSTFIX_DIR/main.cf ]]; then
        usage_error "--postfix-config-dir '$ARG_POSTFIX_DIR' has no main.cf"
    fi
    case $SYSTEMD_MODE in
    auto | yes | no) ;;
    *) usage_error "SENDPOST_SYSTEMD must be auto, yes or no, not '$SYSTEMD_MODE'" ;;
    esac
}

# --- config.yaml (read and written with shell builtins: the key never reaches argv) ---

declare -A CURRENT=() # key -> value found in an existing config.yaml

# yaml_unquote TEXT: the scalar value of TEXT in REPLY (our own file's simple forms).
yaml_unquote() {
    local text=$1
    if [[ $text =~ ^\"(.*)\"[[:space:]]*(#.*)?$ ]]; then
        text=${BASH_REMATCH[1]}
        text=${text//\\\"/\"}
        text=${text//\\\\/\\}
    elif [[ $text =~ ^\'(.*)\'[[:space:]]*(#.*)?$ ]]; then
        text=${BASH_REMATCH[1]}
        text=${text//\'\'/\'}
    else
        text=${text%%[[:space:]]#*}
        text=${text%"${text##*[![:space:]]}"}
    fi
    REPLY=$text
}

# yaml_quote TEXT: TEXT as a double-quoted YAML scalar, in REPLY.
yaml_quote() {
    local text=${1//\\/\\\\}
    text=${text//\"/\\\"}
    REPLY="\"$text\""
}

# config_entry LINE -> CONFIG_KEY, REPLY: the key and the value of a "key: value" line.
config_entry() {
    [[ $1 =~ ^([a-z-]+):[[:space:]]*(.*)$ ]] || return 1
    CONFIG_KEY=${BASH_REMATCH[1]}
    yaml_unquote "${BASH_REMATCH[2]}"
}

read_config() {
    local line
    [[ -f $CONFIG ]] || return 0
    while IFS= read -r line || [[ -n $line ]]; do
        if config_entry "$line"; then
            CURRENT[$CONFIG_KEY]=$REPLY
        fi
    done <"$CONFIG"
}

readonly MANAGED_KEYS=(api-key mta endpoint log-path state-dir milter-socket postfix-config-dir)
declare -A WANT=() # managed key -> value to write ("" = leave the key out)
NEW_CONFIG=""

render_config() {
    local line key
    local -A written=()
    NEW_CONFIG=""
    if [[ -f $CONFIG ]]; then
        while IFS= read -r line || [[ -n $line ]]; do
            if config_entry "$line" && [[ -v WANT[$CONFIG_KEY] ]]; then
                key=$CONFIG_KEY
                if [[ -z ${written[$key]:-} && -n ${WANT[$key]} ]]; then
                    if [[ $REPLY == "${WANT[$key]}" ]]; then
                        NEW_CONFIG+="$line"$'\n' # as written, quoted or not
                    else
                        config_line "$key"
                        NEW_CONFIG+=$REPLY
                    fi
                fi
                written[$key]=1
            else
                NEW_CONFIG+="$line"$'\n'
            fi
        done <"$CONFIG"
    else
        NEW_CONFIG="# sendpost-agent configuration, written by install.sh (every key: README.md,"$'\n'
        NEW_CONFIG+="# Configuration). Re-run install.sh to change the keys below; keep this file 0600."$'\n'
    fi
    for key in "${MANAGED_KEYS[@]}"; do
        if [[ -z ${written[$key]:-} && -n ${WANT[$key]} ]]; then
            config_line "$key"
            NEW_CONFIG+=$REPLY
        fi
    done
}

# config_line KEY -> REPLY: "KEY: VALUE" and a newline; mta stays bare, as in the docs.
config_line() {
    if [[ $1 == mta ]]; then
        REPLY="$1: ${WANT[$1]}"$'\n'
    else
        yaml_quote "${WANT[$1]}"
        REPLY="$1: $REPLY"$'\n'
    fi
}

write_config() {
    local tmp
    tmp=$(mktemp "$ETC_DIR/.config.yaml.XXXXXX") # mode 0600 from the start
    printf '%s' "$NEW_CONFIG" >"$tmp"
    chown "$AGENT_USER:$AGENT_USER" "$tmp"
    chmod 0600 "$tmp"
    mv -f "$tmp" "$CONFIG"
}

# --- helpers -------------------------------------------------------------------------

systemd_running() {
    case $SYSTEMD_MODE in
    yes) return 0 ;;
    no) return 1 ;;
    *) [[ -d /run/systemd/system ]] ;;
    esac
}

PC=(postconf)        # postconf with -c DIR when a config dir was named
PF=(postfix)         # postfix with -c DIR likewise
POSTFIX_DIR=""       # the config dir, "" = Postfix's default
QUEUE_DIR=""
SOCKET_DIR=""
MILTER_ENTRY=""      # our smtpd_milters entry, for MILTER_ADDRESS
MILTER_SOCKET=""     # where the milter listens (milter-socket)
MILTER_ADDRESS=""    # the same, as smtpd_milters names it
POSTFIX_GROUP=postfix

find_postfix() {
    POSTFIX_DIR=${ARG_POSTFIX_DIR:-${CURRENT[postfix-config-dir]:-}}
    if ! command -v postconf >/dev/null; then
        return 1
    fi
    if [[ -n $POSTFIX_DIR ]]; then
        PC=(postconf -c "$POSTFIX_DIR")
        PF=(postfix -c "$POSTFIX_DIR")
    fi
    QUEUE_DIR=$("${PC[@]}" -h queue_directory)
    SOCKET_DIR=$QUEUE_DIR/sendpost-agent
    local owner
    owner=$("${PC[@]}" -h mail_owner)
    POSTFIX_GROUP=$(id -gn "$owner" 2>/dev/null || echo postfix)
    choose_milter_socket
}

# Installing (not uninstalling) with a unix milter-socket elsewhere: the milter's unit may
# write only in SOCKET_DIR, and a chrooted smtpd sees only the queue directory.
check_milter_socket() {
    if [[ $MILTER_SOCKET == unix:* && $MILTER_SOCKET != "unix:$SOCKET_DIR/milter.sock" ]]; then
        die 1 "milter-socket $MILTER_SOCKET in $CONFIG: the milter's unit may write only in" \
            "$SOCKET_DIR (ProtectSystem=strict), and a chrooted smtpd sees only Postfix's queue" \
            "directory; use inet:127.0.0.1:PORT, or remove milter-socket for the default socket"
    fi
}

# The milter-socket of config.yaml (e.g. inet:127.0.0.1:PORT) is kept; without one, the
# socket in Postfix's queue directory. A unix socket in a sendpost-agent directory is the
# one install.sh writes itself, and follows queue_directory.
choose_milter_socket() {
    MILTER_SOCKET=${CURRENT[milter-socket]:-}
    if [[ -z $MILTER_SOCKET || $MILTER_SOCKET == unix:*/"$OUR_SOCKET" ]]; then
        MILTER_SOCKET=unix:$SOCKET_DIR/milter.sock
    fi
    # Inside the queue directory, relative to it: the same file for a chrooted smtpd.
    MILTER_ADDRESS=${MILTER_SOCKET/#"unix:$QUEUE_DIR/"/unix:}
    MILTER_ENTRY=${MILTER_ENTRY/"unix:$OUR_SOCKET"/"$MILTER_ADDRESS"}
}

main_cf() { echo "$("${PC[@]}" -h config_directory)/main.cf"; }

# The smtpd_milters entry, exactly as postfix-conf/main.cf.snippet gives it.
read_milter_entry() {
    local snippet=$SRC_DIR/postfix-conf/main.cf.snippet line
    [[ -f $snippet ]] || die 1 "$snippet is missing: run install.sh from a sendpost-agent checkout"
    while IFS= read -r line; do
        if [[ $line =~ ^smtpd_milters[[:space:]]*=[[:space:]]*(.*[^[:space:]])[[:space:]]*$ ]]; then
            MILTER_ENTRY=${BASH_REMATCH[1]}
        fi
    done <"$snippet"
    [[ $MILTER_ENTRY == *"unix:$OUR_SOCKET"* ]] || die 1 "no smtpd_milters line with $OUR_SOCKET in $snippet"
}

# our_item ITEM [old]: does one smtpd_milters item name our milter? With "old", also an
# entry install.sh added for another milter-socket, or one naming its default socket.
our_item() {
    [[ $1 =~ ^[{[:space:]]*([^,[:space:]}]+) ]] || return 1
    local address=${BASH_REMATCH[1]}
    [[ $address == "$MILTER_ADDRESS" || $address == "$MILTER_SOCKET" ]] && return 0
    [[ ${2:-} == old ]] || return 1
    [[ ${1/"$address"/"$MILTER_ADDRESS"} == "$MILTER_ENTRY" || $address == "unix:$OUR_SOCKET" ||
        $address == "unix:$SOCKET_DIR/milter.sock" ]]
}

# milter_items VALUE -> ITEMS: the smtpd_milters list, one item each ({ ... } is one).
milter_items() {
    local value=$1 item="" depth=0 ch i
    ITEMS=()
    for ((i = 0; i < ${#value}; i++)); do
        ch=${value:i:1}
        if [[ $ch == "{" ]]; then
            depth=$((depth + 1))
        elif [[ $ch == "}" ]]; then
            depth=$((depth - 1))
        fi
        if ((depth == 0)) && [[ $ch == "," || $ch == " " || $ch == $'\t' || $ch == $'\n' ]]; then
            [[ -n $item ]] && ITEMS+=("$item")
            item=""
        else
            item+=$ch
        fi
    done
    [[ -n $item ]] && ITEMS+=("$item")
    return 0
}

# has_our_milter VALUE [old]: does the smtpd_milters value name our milter (our_item)?
has_our_milter() {
    local item
    milter_items "$1"
    for item in "${ITEMS[@]}"; do
        our_item "$item" "${2:-}" && return 0
    done
    return 1
}

# milters_without_ours VALUE -> REPLY: the list without our entries (old ones too), others
# untouched; VALUE itself when it has none.
milters_without_ours() {
    local value=$1 entry=$MILTER_ENTRY item
    # The usual case: our entry exactly as we appended it.
    if [[ $value == "$entry" ]]; then
        REPLY=""
        return
    elif [[ $value == *", $entry" ]]; then
        REPLY=${value%", $entry"}
        return
    elif [[ $value == "$entry, "* ]]; then
        REPLY=${value#"$entry, "}
        return
    fi
    REPLY=$value
    has_our_milter "$value" old || return 0
    # Edited by hand, or an entry for a socket given up: drop the items naming ours.
    REPLY=""
    for item in "${ITEMS[@]}"; do
        if ! our_item "$item" old; then
            REPLY+=${REPLY:+, }$item
        fi
    done
}

backup_main_cf() {
    local cf=$1 stamp backup
    stamp=$(date +%Y%m%d-%H%M%S)
    backup=$cf.sendpost-agent.$stamp
    local n=1
    while [[ -e $backup ]]; do
        backup=$cf.sendpost-agent.$stamp.$n
        n=$((n + 1))
    done
    cp -p "$cf" "$backup"
    printf '          backup: %s\n' "$backup"
}

# backup_and_postconf MAIN_CF POSTCONF_ARGS...: back up main.cf, then change it.
backup_and_postconf() {
    backup_main_cf "$1"
    shift
    "${PC[@]}" "$@"
}

postfix_reload() {
    local out
    if ! out=$("${PF[@]}" reload 2>&1); then
        printf '%s\n' "$out" >&2
        return 1
    fi
}

postfix_running() { "${PF[@]}" status >/dev/null 2>&1; }

# ensure_dir PATH OWNER GROUP MODE
ensure_dir() {
    local path=$1 owner=$2 group=$3 mode=$4 current
    if [[ ! -d $path ]]; then
        change "create $path ($owner:$group, mode $mode)" \
            install -d -o "$owner" -g "$group" -m "$mode" "$path"
        return
    fi
    current=$(stat -c '%U:%G %a' "$path")
    if [[ $current == "$owner:$group $mode" ]]; then
        ok "$path ($owner:$group, mode $mode)"
    else
        change "set $path to $owner:$group, mode $mode (was $current)" \
            set_owner_mode "$path" "$owner:$group" "$mode"
    fi
}

set_owner_mode() { chown "$2" "$1" && chmod "$3" "$1"; }

remove_path() { rm -rf -- "$1"; }

# remove_our_dir DIR: rm -rf, but only a directory named for us (a guard against an
# override such as SENDPOST_STATE=/var/lib).
remove_our_dir() {
    if [[ $1 != /* || $(basename "$1") != *sendpost* ]]; then
        warn "not removing $1: its name does not say sendpost; remove it yourself"
        return 0
    fi
    rm -rf -- "$1"
}

# --- install steps -------------------------------------------------------------------

PKG_TOOL=""
PACKAGES=()
INSTALL_SYSLOG=0  # no syslog daemon writes a mail log: install rsyslog, which does

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

missing_packages() {
    local p
    local -a wanted=()
    PACKAGES=()
    if command -v apt-get >/dev/null && command -v dpkg-query >/dev/null; then
        PKG_TOOL=apt-get
        wanted=(python3-venv python3-dev gcc libmilter-dev)
    elif command -v dnf >/dev/null && command -v rpm >/dev/null; then
        PKG_TOOL=dnf
        wanted=(gcc sendmail-milter-devel)
        if choose_python; then
            wanted+=("$(basename "$PYTHON")-devel")
        else
            wanted+=(python3.11 python3.11-devel)
        fi
    fi
    ((INSTALL_SYSLOG)) && wanted+=(rsyslog)
    for p in "${wanted[@]}"; do
        package_installed "$p" || PACKAGES+=("$p")
    done
}

package_installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed" ||
        rpm -q "$1" >/dev/null 2>&1
}

install_packages() {
    if [[ $PKG_TOOL == apt-get ]]; then
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}"
    else
        dnf install -y -q "${PACKAGES[@]}"
    fi
    # dnf starts no service it installs (apt does): rsyslog must run to write the log.
    if ((INSTALL_SYSLOG)) && systemd_running; then
        systemctl enable --quiet --now rsyslog
    fi
}

step_packages() {
    step "OS packages"
    if ((SKIP_VENV)); then
        ok "skipped (SENDPOST_SKIP_VENV=1)"
        return
    fi
    missing_packages
    if [[ -z $PKG_TOOL ]]; then
        warn "neither apt-get nor dnf found: install Python >= 3.11 with venv and headers," \
            "gcc and the libmilter headers yourself"
    elif ((${#PACKAGES[@]})); then
        change "$PKG_TOOL install ${PACKAGES[*]}" install_packages
    else
        ok "build dependencies installed"
    fi
}

step_user() {
    step "System user"
    if getent passwd "$AGENT_USER" >/dev/null; then
        ok "user $AGENT_USER"
        return
    fi
    local shell=/usr/sbin/nologin
    [[ -x $shell ]] || shell=/sbin/nologin
    local -a group_opt=(--user-group)
    getent group "$AGENT_USER" >/dev/null && group_opt=(--gid "$AGENT_USER")
    change "create system user $AGENT_USER (no login, no home)" \
        useradd --system "${group_opt[@]}" --no-create-home --home-dir /nonexistent \
        --shell "$shell" --comment "sendpost-agent" "$AGENT_USER"
}

step_dirs() {
    step "Directories"
    ensure_dir "$STATE_DIR" "$AGENT_USER" "$AGENT_USER" 750
    # Files left by a run as root (e.g. the manual start README once described).
    if [[ -d $STATE_DIR ]] && getent passwd "$AGENT_USER" >/dev/null &&
        [[ -n $(find "$STATE_DIR" -mindepth 1 \( ! -user "$AGENT_USER" -o ! -group "$AGENT_USER" \) -print -quit) ]]; then
        change "give the files in $STATE_DIR to $AGENT_USER" \
            chown -R "$AGENT_USER:$AGENT_USER" "$STATE_DIR"
    fi
    ensure_dir "$ETC_DIR" root "$AGENT_USER" 750
    if [[ ! -d $QUEUE_DIR ]]; then
        die 1 "Postfix's queue_directory $QUEUE_DIR does not exist; is Postfix set up?"
    fi
    # Postfix (group postfix) connects to the socket; setgid passes the group on to it.
    ensure_dir "$SOCKET_DIR" "$AGENT_USER" "$POSTFIX_GROUP" 2750
}

VENV_CHANGED=0

source_fingerprint() {
    (
        cd "$SRC_DIR"
        find . \( -name .git -o -name .venv -o -name tests -o -name build -o -name '*.egg-info' \
            -o -name __pycache__ -o -name '.*cache' \) -prune -o -type f \
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
        --exclude='*.egg-info' --exclude='*.so' --exclude=__pycache__ --exclude='./.*cache' -cf - . |
        tar -C "$stage" -xf -
    "$PREFIX/bin/pip" install --quiet --disable-pip-version-check --upgrade "$stage" || status=$?
    rm -rf -- "$stage"
    ((status == 0)) || return "$status"
    printf '%s\n' "$FINGERPRINT" >"$PREFIX/.sendpost-agent-source"
}

FINGERPRINT=""

step_venv() {
    step "Virtualenv $PREFIX"
    if ((SKIP_VENV)); then
        if [[ -x $PREFIX/bin/sendpost-agent ]]; then
            ok "left alone (SENDPOST_SKIP_VENV=1): $PREFIX/bin/sendpost-agent"
        elif ((DRY_RUN)); then
            warn "$PREFIX/bin/sendpost-agent does not exist (SENDPOST_SKIP_VENV=1)"
        else
            die 1 "SENDPOST_SKIP_VENV=1 but $PREFIX/bin/sendpost-agent does not exist"
        fi
        return
    fi
    if ! choose_python; then
        if ((DRY_RUN)); then
            warn "no Python >= 3.11 found yet (the OS packages above provide it)"
            change "create the virtualenv and pip install $SRC_DIR" true
            VENV_CHANGED=1
            return
        fi
        die 1 "no Python >= 3.11 found (tried /usr/bin/python3*); set SENDPOST_PYTHON"
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
        ok "sendpost-agent installed from this checkout ($("$PREFIX/bin/sendpost-agent" --version))"
        return
    fi
    VENV_CHANGED=1
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
        warn "$link exists and is not our link; left alone"
    else
        change "link $link -> $PREFIX/bin/sendpost-agent" link_command
    fi
}

LOG_PATH=""
LOG_GROUP=""

choose_log_path() {
    local maillog_file
    maillog_file=$("${PC[@]}" -h maillog_file 2>/dev/null || true)
    if [[ -n $ARG_LOG_PATH ]]; then
        LOG_PATH=$ARG_LOG_PATH
        return
    elif [[ -n ${CURRENT[log-path]:-} ]]; then
        LOG_PATH=${CURRENT[log-path]}
    elif [[ -n $maillog_file ]]; then
        LOG_PATH=$maillog_file
    elif [[ ! -e ${SYSLOG_LOGS[0]} && -e ${SYSLOG_LOGS[1]} ]]; then
        LOG_PATH=${SYSLOG_LOGS[1]}
    else
        LOG_PATH=${SYSLOG_LOGS[0]}
    fi
    # Postfix logs to syslog, yet no syslog daemon writes a mail log (Debian 12 without
    # rsyslog: only the journal has it): logwatch would wait for ever.
    if [[ -z $maillog_file && ! -e ${SYSLOG_LOGS[0]} && ! -e ${SYSLOG_LOGS[1]} ]] &&
        [[ $LOG_PATH == "${SYSLOG_LOGS[0]}" || $LOG_PATH == "${SYSLOG_LOGS[1]}" ]] &&
        ! syslog_daemon_running; then
        local why="no mail log to follow: Postfix logs to syslog (maillog_file is empty), but"
        why+=" no syslog daemon runs and neither ${SYSLOG_LOGS[0]} nor ${SYSLOG_LOGS[1]} exists"
        why+=" (only the journal has Postfix's log, as on Debian 12 without rsyslog)"
        if ((!SKIP_VENV)) && ! package_installed rsyslog &&
            { command -v apt-get || command -v dnf; } >/dev/null; then
            INSTALL_SYSLOG=1
            # Debian's rsyslog writes mail.log, Fedora's and RHEL's maillog.
            command -v apt-get >/dev/null || LOG_PATH=${SYSLOG_LOGS[1]}
            note "$why: installing rsyslog, which writes $LOG_PATH (uninstall leaves it)"
            return
        fi
        die 1 "$why. Install and start rsyslog (apt-get install rsyslog; systemctl start" \
            "rsyslog), which writes ${SYSLOG_LOGS[0]}, and run install.sh again; or name the" \
            "file Postfix logs to with --log-path (e.g. its maillog_file, postconf(5))"
    fi
}

# Is a syslog daemon running (one that may not have written the mail log yet)?
syslog_daemon_running() {
    local name
    for name in rsyslogd syslog-ng syslogd; do
        pgrep -x "$name" >/dev/null 2>&1 && return 0
    done
    return 1
}

# The group logwatch reads the log through (SupplementaryGroups=): the log's group when it
# is group-readable and not root, else adm (Debian's syslog group) when it exists.
choose_log_group() {
    local owner group mode
    LOG_GROUP=""
    getent group "$DEFAULT_LOG_GROUP" >/dev/null && LOG_GROUP=$DEFAULT_LOG_GROUP
    if [[ ! -e $LOG_PATH ]]; then
        note "$LOG_PATH does not exist yet; logwatch waits for it"
        return
    fi
    read -r owner group mode < <(stat -c '%U %G %a' "$LOG_PATH")
    if ((8#$mode & 8#004)); then
        return
    elif ((8#$mode & 8#040)) && [[ $group != root ]]; then
        LOG_GROUP=$group
        return
    fi
    warn "logwatch (user $AGENT_USER${LOG_GROUP:+, group $LOG_GROUP}) cannot read $LOG_PATH" \
        "($owner:$group, mode $mode): make the log group-readable by ${LOG_GROUP:-a group}" \
        "(rsyslog: \$FileGroup adm, \$FileCreateMode 0640, as Debian does)," \
        "or point --log-path at a log it can read"
}

CONFIG_CHANGED=0
MILTER_CONFIG_CHANGED=0  # a key the milter reads: restart it (a restart loses rows)
# Keys only logwatch reads: changing them (a key rotation) leaves the milter running, as
# messages received while it restarts would have no map row.
readonly LOGWATCH_ONLY_KEYS=(api-key endpoint log-path postfix-config-dir)

step_config() {
    step "Configuration $CONFIG"
    local key
    WANT=(
        [api-key]=${API_KEY:-${CURRENT[api-key]:-}}
        [mta]=postfix
        [endpoint]=${ARG_ENDPOINT:-${CURRENT[endpoint]:-$DEFAULT_ENDPOINT}}
        [log-path]=$LOG_PATH
        [state-dir]=""
        [milter-socket]=""
        [postfix-config-dir]=$POSTFIX_DIR
    )
    [[ $STATE_DIR != "$DEFAULT_STATE" ]] && WANT[state-dir]=$STATE_DIR
    # One in the file stays, even the default; install.sh itself writes only another.
    if [[ -n ${CURRENT[milter-socket]:-} || $MILTER_SOCKET != "unix:$DEFAULT_SOCKET_DIR/milter.sock" ]]; then
        WANT[milter-socket]=$MILTER_SOCKET
    fi
    render_config
    local current=""
    [[ -f $CONFIG ]] && { IFS= read -r -d '' current <"$CONFIG" || true; }
    if [[ -f $CONFIG && $current == "$NEW_CONFIG" ]]; then
        local perms
        perms=$(stat -c '%U:%G %a' "$CONFIG")
        if [[ $perms == "$AGENT_USER:$AGENT_USER 600" ]]; then
            ok "$CONFIG (mode 0600, $AGENT_USER); api-key set"
        else
            CONFIG_CHANGED=1
            change "set $CONFIG to $AGENT_USER:$AGENT_USER, mode 0600 (was $perms)" \
                set_owner_mode "$CONFIG" "$AGENT_USER:$AGENT_USER" 600
        fi
        return
    fi
    local -a what=()
    for key in "${MANAGED_KEYS[@]}"; do
        [[ ${CURRENT[$key]:-} == "${WANT[$key]}" ]] && continue
        [[ " ${LOGWATCH_ONLY_KEYS[*]} " == *" $key "* ]] || MILTER_CONFIG_CHANGED=1
        if [[ $key == api-key ]]; then
            what+=("api-key ${CURRENT[$key]:+changed}${CURRENT[$key]:-set}")
        elif [[ -z ${WANT[$key]} ]]; then
            what+=("$key removed (default)")
        else
            what+=("$key: ${WANT[$key]}")
        fi
    done
    ((${#what[@]})) || what=("rewritten") MILTER_CONFIG_CHANGED=1
    CONFIG_CHANGED=1
    local joined
    printf -v joined '%s; ' "${what[@]}"
    if [[ -f $CONFIG ]]; then
        change "update $CONFIG (${joined%; })" write_config
    else
        change "write $CONFIG, mode 0600 ($AGENT_USER) (${joined%; })" write_config
    fi
}

# render_unit NAME -> REPLY: the unit from systemd/ with this install's paths.
render_unit() {
    local text=""
    IFS= read -r -d '' text <"$SRC_DIR/systemd/$1" || true
    # Placeholders first, so that one replacement can never feed the next.
    text=${text//"$DEFAULT_PREFIX"/@PREFIX@}
    text=${text//"$DEFAULT_ETC/config.yaml"/@CONFIG@}
    text=${text//"$DEFAULT_STATE"/@STATE@}
    text=${text//"$DEFAULT_SOCKET_DIR"/@SOCKET@}
    text=${text//@PREFIX@/"$PREFIX"}
    text=${text//@CONFIG@/"$CONFIG"}
    text=${text//@STATE@/"$STATE_DIR"}
    text=${text//@SOCKET@/"$SOCKET_DIR"}
    if [[ -z $LOG_GROUP ]]; then
        text=${text//$'\n'"SupplementaryGroups=$DEFAULT_LOG_GROUP"$'\n'/$'\n'}
    else
        text=${text//"SupplementaryGroups=$DEFAULT_LOG_GROUP"/"SupplementaryGroups=$LOG_GROUP"}
    fi
    REPLY=$text
}

write_unit() {
    mkdir -p "$SYSTEMD_DIR"
    printf '%s' "$2" >"$SYSTEMD_DIR/$1.tmp"
    chmod 0644 "$SYSTEMD_DIR/$1.tmp"
    mv -f "$SYSTEMD_DIR/$1.tmp" "$SYSTEMD_DIR/$1"
}

declare -A UNIT_CHANGED=()

step_units() {
    step "systemd units in $SYSTEMD_DIR"
    local unit current
    if ! systemd_running && [[ ! -d $SYSTEMD_DIR && -z $SYSTEMD_DIR_GIVEN ]]; then
        ok "skipped: no systemd on this host"
        return
    fi
    for unit in "${UNITS[@]}"; do
        render_unit "$unit"
        current=""
        [[ -f $SYSTEMD_DIR/$unit ]] && { IFS= read -r -d '' current <"$SYSTEMD_DIR/$unit" || true; }
        if [[ $current == "$REPLY" ]]; then
            ok "$unit"
        else
            UNIT_CHANGED[$unit]=1
            change "install $SYSTEMD_DIR/$unit" write_unit "$unit" "$REPLY"
        fi
    done
    if ! systemd_running; then
        return
    fi
    if ((${#UNIT_CHANGED[@]})); then
        change "systemctl daemon-reload" systemctl daemon-reload
    fi
    for unit in "${UNITS[@]}"; do
        local restart=$((VENV_CHANGED || CONFIG_CHANGED))
        [[ $unit == sendpost-agent-milter.service ]] && restart=$((VENV_CHANGED || MILTER_CONFIG_CHANGED))
        [[ -n ${UNIT_CHANGED[$unit]:-} ]] && restart=1
        if ! systemctl is-enabled --quiet "$unit" 2>/dev/null; then
            change "systemctl enable --now $unit" systemctl enable --quiet --now "$unit"
        elif ! systemctl is-active --quiet "$unit"; then
            change "systemctl start $unit" systemctl start "$unit"
        elif ((restart)); then
            change "systemctl restart $unit (new code, config or unit)" systemctl restart "$unit"
        else
            ok "$unit enabled and running"
        fi
    done
}

step_postfix() {
    step "Postfix ($(main_cf))"
    local raw expanded cf
    cf=$(main_cf)
    raw=$("${PC[@]}" -h smtpd_milters)
    expanded=$("${PC[@]}" -x -h smtpd_milters)
    if has_our_milter "$expanded"; then
        ok "smtpd_milters has the sendpost-agent milter"
    else
        # An entry of ours for another socket (milter-socket changed) is replaced.
        milters_without_ours "$raw"
        local new=${REPLY:+$REPLY, }$MILTER_ENTRY
        change "back up main.cf and set smtpd_milters = $new" \
            backup_and_postconf "$cf" -e "smtpd_milters = $new"
        if postfix_running; then
            change "postfix reload" postfix_reload
        else
            note "Postfix is not running: the milter is used from its next start"
        fi
    fi
    local action
    action=$("${PC[@]}" -h milter_default_action)
    if [[ $action != accept ]]; then
        note "milter_default_action = $action is left as it is: our entry carries its own" \
            "default_action=accept, so mail never waits for sendpost-agent"
    fi
    local macros
    macros=$("${PC[@]}" -x -h milter_end_of_data_macros)
    if [[ " ${macros//,/ } " != *" i "* ]]; then
        warn "milter_end_of_data_macros ($macros) lacks i: the milter cannot see queue IDs;" \
            "add i to it"
    fi
}

# An inet socket is left to doctor's own check.
wait_for_socket() {
    local i
    [[ $MILTER_SOCKET == unix:* ]] || return 0
    for ((i = 0; i < 50; i++)); do
        [[ -S ${MILTER_SOCKET#unix:} ]] && return 0
        sleep 0.2
    done
    return 1
}

run_doctor() {
    step "sendpost-agent doctor"
    wait_for_socket || note "the milter socket ${MILTER_SOCKET#unix:} has not appeared yet"
    local rc=0
    timeout 300 "$PREFIX/bin/sendpost-agent" --config "$CONFIG" doctor || rc=$?
    case $rc in
    0) say "doctor: all checks passed." ;;
    1) say "doctor: a check failed (see above). The install stays in place: fix what the" \
        "check names, then run 'sendpost-agent doctor' again." ;;
    124) say "doctor: timed out after 300 s; run 'sendpost-agent doctor' to see where it waits." ;;
    *) say "doctor: could not run (exit $rc, see above); run 'sendpost-agent doctor' once" \
        "the services are up." ;;
    esac
}

print_manual_run() {
    local run="$PREFIX/bin/sendpost-agent --config $CONFIG"
    local as="setpriv --reuid=$AGENT_USER --regid=$AGENT_USER"
    local log_groups=--init-groups
    [[ -n $LOG_GROUP ]] && log_groups=--groups=$LOG_GROUP
    cat <<EOF

systemd is not running on this host (no /run/systemd/system), so nothing was started.
Run both processes under your supervisor (container entrypoint, supervisord, runit, s6):
as root, which these commands drop to the agent user; in the foreground; restarted when
they exit non-zero; stopped with SIGTERM. Start the milter before Postfix:

  milter:    $as --init-groups -- $run milter
  logwatch:  $as $log_groups -- $run logwatch

Both log to stderr. Then check the whole path with: $BIN_DIR/sendpost-agent doctor
EOF
}

install_main() {
    ((DRY_RUN)) && say "Dry run: nothing is changed; each change is shown as 'would'."
    read_config
    if [[ -z $API_KEY && -z ${CURRENT[api-key]:-} ]]; then
        usage_error "an API key is needed: --api-key KEY or SENDPOST_API_KEY (the Event" \
            "Ingestion API key of your Custom SMTP TPSP)"
    fi
    read_milter_entry
    if ! find_postfix; then
        die 1 "Postfix is not installed (postconf not found); install postfix first"
    fi
    check_milter_socket
    local version
    version=$("${PC[@]}" -h mail_version)
    if [[ ${version%%.*} -lt 3 ]]; then
        die 1 "Postfix $version is too old: the per-milter default_action needs 3.0 or newer"
    fi
    STATE_DIR=${STATE_DIR:-${CURRENT[state-dir]:-$DEFAULT_STATE}}
    local path
    for path in "$PREFIX" "$ETC_DIR" "$STATE_DIR" "$SOCKET_DIR"; do
        [[ $path == /* && $path != *[[:space:]]* ]] ||
            usage_error "'$path' must be an absolute path without spaces"
    done
    choose_log_path
    say "Installing sendpost-agent from $SRC_DIR (Postfix $version, ${POSTFIX_DIR:-default config})"
    step_packages
    step_user
    step_dirs
    step_venv
    step_link
    step "Mail log"
    choose_log_group
    ok "logwatch reads $LOG_PATH${LOG_GROUP:+ through group $LOG_GROUP}"
    step_config
    step_units
    step_postfix
    say ""
    if ((DRY_RUN)); then
        say "Dry run: $CHANGES change(s) would be made; nothing was changed."
        return
    fi
    if ((CHANGES == 0)); then
        say "No changes: sendpost-agent is installed as requested."
    else
        say "Done: $CHANGES change(s) made."
    fi
    if systemd_running; then
        run_doctor
    else
        print_manual_run
    fi
}

# --- uninstall -----------------------------------------------------------------------

uninstall_main() {
    ((DRY_RUN)) && say "Dry run: nothing is changed; each change is shown as 'would'."
    read_config
    read_milter_entry
    STATE_DIR=${STATE_DIR:-${CURRENT[state-dir]:-$DEFAULT_STATE}}
    say "Uninstalling sendpost-agent"

    # Postfix first, so that it stops using the milter before the milter stops.
    if find_postfix; then
        step "Postfix ($(main_cf))"
        local raw expanded
        raw=$("${PC[@]}" -h smtpd_milters)
        expanded=$("${PC[@]}" -x -h smtpd_milters)
        if has_our_milter "$raw" old; then
            milters_without_ours "$raw"
            local rest=$REPLY
            if [[ -n $rest ]]; then
                change "back up main.cf and set smtpd_milters = $rest" \
                    backup_and_postconf "$(main_cf)" -e "smtpd_milters = $rest"
            else
                change "back up main.cf and remove smtpd_milters (only ours was in it)" \
                    backup_and_postconf "$(main_cf)" -X smtpd_milters
            fi
            if postfix_running; then
                change "postfix reload" postfix_reload
            fi
        elif has_our_milter "$expanded" old; then
            warn "smtpd_milters names our milter through another parameter ($raw);" \
                "remove it there by hand"
        else
            ok "smtpd_milters does not name the sendpost-agent milter"
        fi
    else
        step "Postfix"
        note "postconf not found: nothing to change in Postfix"
    fi

    step "systemd units"
    local unit
    local removed=0
    for unit in "${UNITS[@]}"; do
        if systemd_running && systemctl is-enabled --quiet "$unit" 2>/dev/null; then
            change "systemctl disable --now $unit" systemctl disable --quiet --now "$unit"
        elif systemd_running && systemctl is-active --quiet "$unit" 2>/dev/null; then
            change "systemctl stop $unit" systemctl stop "$unit"
        fi
        if [[ -e $SYSTEMD_DIR/$unit ]]; then
            change "remove $SYSTEMD_DIR/$unit" rm -f -- "$SYSTEMD_DIR/$unit"
            removed=1
        else
            ok "$unit not installed"
        fi
    done
    if ((removed)) && systemd_running; then
        change "systemctl daemon-reload" systemctl daemon-reload
    fi
    if ((removed)) && ! systemd_running; then
        note "no systemd here: stop the milter and logwatch processes you started yourself"
    fi

    step "Files"
    local link=$BIN_DIR/sendpost-agent
    if [[ -L $link && $(readlink "$link") == "$PREFIX/bin/sendpost-agent" ]]; then
        change "remove $link" rm -f -- "$link"
    fi
    if ((SKIP_VENV)); then
        ok "$PREFIX left alone (SENDPOST_SKIP_VENV=1)"
    elif [[ -f $PREFIX/pyvenv.cfg ]]; then
        change "remove the virtualenv $PREFIX" remove_path "$PREFIX"
    elif [[ -e $PREFIX ]]; then
        warn "$PREFIX is not a virtualenv; left alone"
    else
        ok "no virtualenv at $PREFIX"
    fi
    if [[ -n $SOCKET_DIR && -d $SOCKET_DIR ]]; then
        change "remove the socket directory $SOCKET_DIR" remove_our_dir "$SOCKET_DIR"
    fi

    if ((PURGE)); then
        if [[ -e $STATE_DIR ]]; then
            change "remove state-dir $STATE_DIR (--purge)" remove_our_dir "$STATE_DIR"
        fi
        if [[ -e $ETC_DIR ]]; then
            change "remove $ETC_DIR and its config.yaml (--purge)" remove_our_dir "$ETC_DIR"
        fi
        if getent passwd "$AGENT_USER" >/dev/null; then
            change "remove user $AGENT_USER (--purge)" userdel "$AGENT_USER"
        fi
        if getent group "$AGENT_USER" >/dev/null; then
            change "remove group $AGENT_USER (--purge)" remove_group
        fi
    else
        [[ -e $STATE_DIR ]] && note "kept state-dir $STATE_DIR (queue map, events not sent yet)"
        [[ -e $CONFIG ]] && note "kept $CONFIG (API key) and the user $AGENT_USER"
        if [[ -e $STATE_DIR || -e $CONFIG ]]; then
            note "to remove them too: install.sh --uninstall --purge"
        fi
    fi

    say ""
    if ((DRY_RUN)); then
        say "Dry run: $CHANGES change(s) would be made; nothing was changed."
    elif ((CHANGES == 0)); then
        say "No changes: sendpost-agent is not installed."
    else
        say "Done: $CHANGES change(s) made; sendpost-agent is uninstalled."
    fi
}

remove_group() {
    # userdel normally removes the user's own group; only a leftover reaches this.
    if getent group "$AGENT_USER" >/dev/null; then
        groupdel "$AGENT_USER"
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
