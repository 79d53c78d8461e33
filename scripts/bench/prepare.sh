# Sourced by bench.sh and bench/instructions.sh: installs the tools they
# drive, when missing, from the distribution's packages; starts the
# services; builds svc and the baselines; points svc at a fresh database,
# queues and keys named $NAME (scripts/fresh.sh).
#   NAME and TOOLS (Debian package names, each also its command) must be set.

source scripts/lib.sh
for tool in $TOOLS; do
    command -v "$tool" >/dev/null || install_packages "$tool"
done
scripts/services.sh
cargo build --release --locked --bin svc --examples
svc=target/release/svc
source scripts/fresh.sh
