#!/usr/bin/env bash
# THE test command: installs prerequisites, then runs every test. With
# CI=true it also checks formatting and clippy, and a missing Samba fails the
# integration tests instead of skipping them. Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/setup.sh

# Under sudo, root's PATH usually lacks the invoking user's ~/.cargo/bin.
if ! command -v cargo >/dev/null && [[ -n ${SUDO_USER:-} ]]; then
  user_home=$(getent passwd "$SUDO_USER" | cut -d: -f6)
  if [[ -x $user_home/.cargo/bin/cargo ]]; then
    export PATH="$user_home/.cargo/bin:$PATH"
    export CARGO_HOME="${CARGO_HOME:-$user_home/.cargo}" RUSTUP_HOME="${RUSTUP_HOME:-$user_home/.rustup}"
  fi
fi
command -v cargo >/dev/null || { echo "test.sh: cargo not found" >&2; exit 1; }
# kubernetes-validate and hadolint, installed by setup.sh.
export PATH="${XDG_CACHE_HOME:-$HOME/.cache}/smb3-csi/venv/bin:$PATH"

failed=()
run() {
  echo "+ $*"
  "$@" || failed+=("$*")
}

if [[ ${CI:-} == true ]]; then
  run cargo fmt --all -- --check
  run cargo clippy --workspace --all-targets --features smb3-csi/demo -- -D warnings
fi
# The workspace: the smb3 client's own tests, the test kit's, and the driver's
# (with the `demo` feature, so the demo test can run `smb3-csi demo`). The run is
# recorded for the secret scan: every test password is registered, and the tests'
# tracing, each driver process's output, gRPC error messages and /metrics bodies
# are kept under SMB3_TESTKIT_RUN_LOG (crates/smb3-testkit/src/run_log.rs).
run_log=$(mktemp -d "${TMPDIR:-/tmp}/smb3-csi-run-log.XXXXXX")
export SMB3_TESTKIT_RUN_LOG=$run_log
run cargo test --workspace --all-targets --features smb3-csi/demo
# Every registered secret (plain, UTF-16LE, hex, base64) searched for in all of it; fails on a hit.
if run cargo run -q -p smb3-testkit --bin secret-scan -- "$run_log"; then
  rm -rf "$run_log"
else
  echo "test.sh: the recorded run stays in $run_log" >&2
fi
unset SMB3_TESTKIT_RUN_LOG
# The benchmark in its quick mode (small sizes, one run, under a minute): CI checks that it runs, not its numbers.
run cargo test --features smb3-csi/demo --bench compare -- --quick
# Every fuzz target for a few seconds from its committed corpus (README "Security").
if command -v cargo-fuzz >/dev/null || [[ -x ${CARGO_HOME:-$HOME/.cargo}/bin/cargo-fuzz ]]; then
  run bash scripts/fuzz.sh --ci
elif [[ ${CI:-} == true ]]; then
  failed+=("fuzzing: no cargo-fuzz (scripts/setup.sh installs it)")
fi

if ((${#failed[@]} > 0)); then
  printf 'test.sh: FAILED: %s\n' "${failed[@]}" >&2
  exit 1
fi
echo "test.sh: all passed"
