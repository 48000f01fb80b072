#!/usr/bin/env bash
# The whole test suite: what README.md tells a newcomer to run and what CI runs (.ci/run).
# Installs what it needs (apt packages, rustup targets, cargo-nextest), checks formatting and
# lints, type-checks the macOS and Windows targets, then runs every test. Tests that cannot run
# on this machine print "skipped: <reason>"; they are listed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never
mkdir -p "${HOME}/.cache/vmctl"

step() { printf '\n==> %s\n' "$*"; }

step "dependencies"
./scripts/install-deps.sh --tests

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (linux)"
cargo clippy --workspace --all-targets -- -D warnings

# The guest agent runs inside the Linux VM only; fs-share's transports (vhost-user, /dev/fuse)
# are Linux-only so far (its passthrough keeps Linux calls in sys/linux for a macOS port).
step "cargo clippy --target aarch64-apple-darwin (type-check only: macOS cannot run here)"
cargo clippy --workspace --exclude guest-agent --exclude fs-share --target aarch64-apple-darwin -- -D warnings
step "cargo clippy --target x86_64-pc-windows-msvc (type-check only: Windows cannot run here)"
# vmctl-tests are the Linux end-to-end scenarios; vmctl itself builds there and says it is
# not available yet.
cargo clippy --workspace --exclude guest-agent --exclude fs-share --exclude vmctl-tests --target x86_64-pc-windows-msvc -- -D warnings

step "a second QEMU for the tests that need a newer one (Debian 13's, unpacked under ~/.cache/vmctl/tools)"
VMCTL_TEST_QEMU_NEW=$(./scripts/fetch-test-qemu.sh || true)
export VMCTL_TEST_QEMU_NEW
echo "${VMCTL_TEST_QEMU_NEW:-none}"

# Run as root, the suite also runs the main job as an ordinary user (tests/tests/user_start.rs):
# it needs one, with a home and subordinate ids, which `useradd -m` gives as adduser does.
if [ "$(id -u)" = 0 ] && [ -z "${VMCTL_TEST_USER:-}" ]; then
    step "an ordinary user for the run-as-a-user scenario (vmctl-ci)"
    id vmctl-ci >/dev/null 2>&1 || useradd -m -s /bin/bash vmctl-ci
    export VMCTL_TEST_USER=vmctl-ci
fi

step "cargo nextest run --workspace"
log=$(mktemp)
status=0
cargo nextest run --workspace --no-fail-fast --success-output final 2>&1 | tee "$log" || status=$?

skips=$(grep -a -o 'skipped: .*' "$log" | sort | uniq -c || true)
if [ -n "$skips" ]; then
    step "skipped on this machine (each with its reason)"
    echo "$skips"
fi
# The hostile-guest / hostile-user suite (.config/nextest.toml, profile "hostile";
# SECURITY.md says what each test defends): how many of its tests passed in this run.
suite=$(cargo nextest list --profile hostile --message-format oneline 2>/dev/null || true)
total=$(printf '%s\n' "$suite" | grep -c . || true)
passed=0
while read -r bin name; do
    [ -n "$name" ] || continue
    if grep -a -E "^\s+PASS .* ${bin} ${name}\$" "$log" >/dev/null; then
        passed=$((passed + 1))
    fi
done <<<"$suite"
step "hostile-guest / hostile-user suite: ${passed} of ${total} passed (cargo nextest run --profile hostile)"
rm -f "$log"
exit $status
