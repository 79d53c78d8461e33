# Sourced by every script here: logging, root, installs and waits, in one
# place. Set SCRIPT (the name logs carry) before sourcing, or the file's name is used.

SCRIPT=${SCRIPT:-$(basename "$0" .sh)}

log() { printf '%s: %s\n' "$SCRIPT" "$*" >&2; }
die() { log "$*"; exit 1; }

# Runs a command as root: directly when root, else through sudo.
as_root() { if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo "$@"; fi; }

# Whether something accepts TCP connections on 127.0.0.1:$1.
answers() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Waits until 127.0.0.1:$2 answers, for at most $3 seconds; $1 names it.
wait_for() {
    local name=$1 port=$2 deadline=$((SECONDS + $3))
    until answers "$port"; do
        ((SECONDS < deadline)) || die "$name does not answer on 127.0.0.1:$port"
        sleep 0.5
    done
    log "$name answers on 127.0.0.1:$port"
}

# Installs Debian packages, saying so (the package lists are updated once).
LIB_APT_UPDATED=${LIB_APT_UPDATED:-0}
install_packages() {
    command -v apt-get >/dev/null || die "cannot install $*: no apt-get (install them by hand)"
    if ((LIB_APT_UPDATED == 0)); then
        as_root apt-get update -qq
        LIB_APT_UPDATED=1
    fi
    log "installing $* (Debian packages)"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}
