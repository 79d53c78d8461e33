# Sourced by bench.sh and bench/instructions.sh: installs the tools they
# drive, when missing, from the distribution's packages; starts the
# services; builds svc and the baselines; points svc at a fresh database,
# queues and keys named $NAME (scripts/fresh.sh).
#   NAME and TOOLS (Debian package names, each also its command) must be set.

for tool in $TOOLS; do
    if ! command -v "$tool" >/dev/null; then
        echo "$(basename "$0"): installing $tool" >&2
        if [[ $(id -u) -eq 0 ]]; then apt-get install -y -qq "$tool" >/dev/null; else sudo apt-get install -y -qq "$tool" >/dev/null; fi
    fi
done
scripts/services.sh
cargo build --release --locked --bin svc --examples
svc=target/release/svc
source scripts/fresh.sh
