#!/usr/bin/env bash
# Runs Switchboard's whole test suite on a Debian machine, installing what is
# missing first (only when missing, so a second run goes straight to the tests):
#   - Debian packages: chromium (browser tests), redis-server, redis-sentinel
#   - npm packages into tests/interop/node_modules (and crates/websocket/interop)
#   - Python packages into tests/interop/.venv (and crates/websocket/interop/.venv)
# Then: cargo fmt --check, clippy -D warnings, release build, cargo tests,
# doc tests, and the interop suites in tests/interop against the release binary.
#
# Usage: scripts/test.sh [STAGE...]
#   STAGE is one of: deps fmt clippy build test doctest interop (default: all).
# Skip stages with environment variables set to 1:
#   SKIP_DEPS SKIP_APT SKIP_FMT SKIP_CLIPPY SKIP_BUILD SKIP_TEST SKIP_DOCTEST
#   SKIP_INTEROP SKIP_BROWSER SKIP_PYTHON
# Prints "N passed, M failed" (plus ", K skipped" when some were skipped) as the
# last line, counting stages and suites, and exits non-zero if anything failed.

set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

INTEROP="$ROOT/tests/interop"
WS_INTEROP="$ROOT/crates/websocket/interop"
LOG_DIR="$(mktemp -d "${TMPDIR:-/tmp}/switchboard-test.XXXXXX")"
trap 'rm -rf "$LOG_DIR"' EXIT

PASSED=()
FAILED=()
SKIPPED=()

if [[ -t 1 ]]; then
  BOLD=$'\e[1m' GREEN=$'\e[32m' RED=$'\e[31m' YELLOW=$'\e[33m' RESET=$'\e[0m'
else
  BOLD='' GREEN='' RED='' YELLOW='' RESET=''
fi

say() { printf '%s==> %s%s\n' "$BOLD" "$*" "$RESET"; }
warn() { printf '%swarning: %s%s\n' "$YELLOW" "$*" "$RESET" >&2; }

# Which stages to run: all by default, or the ones named on the command line.
ALL_STAGES=(deps fmt clippy build test doctest interop)
if [[ $# -gt 0 ]]; then
  WANTED=("$@")
  for s in "${WANTED[@]}"; do
    case " ${ALL_STAGES[*]} " in
      *" $s "*) ;;
      *) echo "unknown stage '$s' (known: ${ALL_STAGES[*]})" >&2; exit 2 ;;
    esac
  done
else
  WANTED=("${ALL_STAGES[@]}")
fi

wanted() {
  local s
  for s in "${WANTED[@]}"; do [[ "$s" == "$1" ]] && return 0; done
  return 1
}

# skip_requested VAR: true when the environment variable VAR is 1/true/yes.
skip_requested() {
  case "${!1:-0}" in 1 | true | yes) return 0 ;; *) return 1 ;; esac
}

# run_suite NAME TIMEOUT_SECS CMD...: run one counted suite, bounded in time.
run_suite() {
  local name="$1" limit="$2"
  shift 2
  say "$name"
  local start=$SECONDS rc=0
  if declare -F "$1" >/dev/null; then
    # Shell functions cannot run under timeout(1); they bound their own steps.
    "$@" || rc=$?
  else
    timeout --kill-after=30 "$limit" "$@" || rc=$?
  fi
  local took=$((SECONDS - start))
  if [[ $rc -eq 0 ]]; then
    printf '%s[pass]%s %s (%ss)\n' "$GREEN" "$RESET" "$name" "$took"
    PASSED+=("$name")
  else
    if [[ $rc -eq 124 ]]; then
      printf '%s[FAIL]%s %s: timed out after %ss\n' "$RED" "$RESET" "$name" "$limit"
    else
      printf '%s[FAIL]%s %s (exit %s, %ss)\n' "$RED" "$RESET" "$name" "$rc" "$took"
    fi
    FAILED+=("$name")
  fi
}

skip_suite() {
  printf '%s[skip]%s %s: %s\n' "$YELLOW" "$RESET" "$1" "$2"
  SKIPPED+=("$1")
}

# quietly LOGNAME CMD...: run CMD with output in a log, shown only on failure.
quietly() {
  local log="$LOG_DIR/$1.log"
  shift
  local rc=0
  "$@" >"$log" 2>&1 || rc=$?
  [[ $rc -eq 0 ]] && return 0
  warn "'$*' failed (exit $rc); its output:"
  tail -n 40 "$log" >&2
  return $rc
}

# Stamp files record which lock/requirements file an install came from, so the
# install reruns only when that file changed.
checksum() { sha256sum "$1" | cut -d' ' -f1; }

# ---------------------------------------------------------------------------
# Dependencies
# ---------------------------------------------------------------------------

SUDO=()
if [[ "$(id -u)" -ne 0 ]] && command -v sudo >/dev/null 2>&1; then
  SUDO=(sudo -n)
fi

install_apt_packages() {
  local missing=()
  command -v chromium >/dev/null 2>&1 || [[ -x /usr/bin/chromium ]] || missing+=(chromium)
  command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
  command -v redis-sentinel >/dev/null 2>&1 || missing+=(redis-sentinel)
  [[ ${#missing[@]} -eq 0 ]] && return 0
  if ! command -v apt-get >/dev/null 2>&1; then
    warn "apt-get not found; cannot install ${missing[*]}"
    return 0
  fi
  say "installing Debian packages: ${missing[*]}"
  quietly apt-update "${SUDO[@]}" apt-get update -q ||
    { warn "apt-get update failed; continuing without ${missing[*]}"; return 0; }
  quietly apt-install "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -q "${missing[@]}" fonts-dejavu-core fonts-liberation ||
    warn "could not install ${missing[*]}; the tests that need them will be skipped"
}

# install_node_deps DIR: npm ci (or npm install when there is no lock file) in DIR.
install_node_deps() {
  local dir="$1" stamp="$1/node_modules/.switchboard-stamp" src want
  [[ -f "$dir/package.json" ]] || return 0
  src="$dir/package.json"
  [[ -f "$dir/package-lock.json" ]] && src="$dir/package-lock.json"
  want="$(checksum "$src")"
  if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    return 0
  fi
  say "installing npm packages in ${dir#"$ROOT"/}"
  local npm_flags=(--no-audit --no-fund --loglevel=error --prefix "$dir")
  if [[ -f "$dir/package-lock.json" ]]; then
    quietly "npm-$(basename "$(dirname "$dir")")" npm ci "${npm_flags[@]}" ||
      quietly "npm-install-$(basename "$(dirname "$dir")")" npm install "${npm_flags[@]}" ||
      return 1
  else
    quietly "npm-$(basename "$(dirname "$dir")")" npm install "${npm_flags[@]}" || return 1
  fi
  echo "$want" >"$stamp"
}

# install_python_deps DIR: a venv in DIR/.venv with DIR/requirements.txt installed.
install_python_deps() {
  local dir="$1" venv="$1/.venv" stamp="$1/.venv/.switchboard-stamp" want
  [[ -f "$dir/requirements.txt" ]] || return 0
  want="$(checksum "$dir/requirements.txt")"
  if [[ -x "$venv/bin/python" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    return 0
  fi
  say "installing Python packages into ${venv#"$ROOT"/}"
  if [[ ! -x "$venv/bin/python" ]]; then
    quietly "venv-$(basename "$(dirname "$dir")")" python3 -m venv "$venv" || return 1
  fi
  quietly "pip-$(basename "$(dirname "$dir")")" \
    "$venv/bin/python" -m pip install --disable-pip-version-check -q -r "$dir/requirements.txt" || return 1
  echo "$want" >"$stamp"
}

install_deps() {
  local ok=0
  if skip_requested SKIP_APT; then
    echo "SKIP_APT=1: not installing Debian packages"
  else
    install_apt_packages
  fi
  install_node_deps "$INTEROP" || ok=1
  install_python_deps "$INTEROP" || ok=1
  install_node_deps "$WS_INTEROP" || ok=1
  install_python_deps "$WS_INTEROP" || ok=1
  return $ok
}

if wanted deps; then
  if skip_requested SKIP_DEPS; then
    skip_suite deps "SKIP_DEPS=1"
  else
    run_suite "install dependencies" 900 install_deps
  fi
fi

# ---------------------------------------------------------------------------
# Rust
# ---------------------------------------------------------------------------

# In CI every build starts from scratch: incremental state is pure overhead, and
# line tables (not full debug info) keep backtraces useful while cutting
# compile and link time of the many test binaries. Local runs keep the normal
# profiles so they share artifacts with plain `cargo test`.
if [[ -n "${CI:-}" ]]; then
  export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
  export CARGO_PROFILE_DEV_DEBUG="${CARGO_PROFILE_DEV_DEBUG:-line-tables-only}"
  export CARGO_PROFILE_TEST_DEBUG="${CARGO_PROFILE_TEST_DEBUG:-line-tables-only}"
fi

# cargo_stage NAME STAGE SKIPVAR TIMEOUT CMD...
cargo_stage() {
  local name="$1" stage="$2" var="$3" limit="$4"
  shift 4
  wanted "$stage" || return 0
  if skip_requested "$var"; then
    skip_suite "$name" "$var=1"
    return 0
  fi
  run_suite "$name" "$limit" "$@"
}

cargo_stage "cargo fmt --check" fmt SKIP_FMT 120 cargo fmt --all -- --check
cargo_stage "cargo clippy" clippy SKIP_CLIPPY 1200 cargo clippy --workspace --all-targets -- -D warnings
cargo_stage "cargo build --release" build SKIP_BUILD 1500 cargo build --release --bins --example chat_backend
cargo_stage "cargo test" test SKIP_TEST 1500 cargo test --workspace --all-targets
cargo_stage "cargo doc tests" doctest SKIP_DOCTEST 900 cargo test --workspace --doc

# ---------------------------------------------------------------------------
# Interop suites against the release binary
# ---------------------------------------------------------------------------

target_dir() {
  if [[ -n "${CARGO_TARGET_DIR:-}" ]]; then
    (cd "$ROOT" && realpath -m "$CARGO_TARGET_DIR")
  else
    cargo metadata --no-deps --format-version 1 2>/dev/null |
      python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])' 2>/dev/null ||
      echo "$ROOT/target"
  fi
}

if wanted interop; then
  if skip_requested SKIP_INTEROP; then
    skip_suite "interop suites" "SKIP_INTEROP=1"
  else
    SWITCHBOARD_BIN="${SWITCHBOARD_BIN:-$(target_dir)/release/switchboard}"
    export SWITCHBOARD_BIN
    echo "interop suites use SWITCHBOARD_BIN=$SWITCHBOARD_BIN"
    RAN_SUITES=()
    node_suite() {
      local file="$1"
      RAN_SUITES+=("$file")
      run_suite "interop: $file" 300 \
        node --test --test-reporter=spec --test-concurrency=1 "$INTEROP/$file"
    }
    # Suites that need a browser: skipped (not failed) without one.
    BROWSER_SUITES=(browser.test.mjs browser_channels.test.mjs socketio_browser.test.mjs pusher_browser.test.mjs admin_browser.test.mjs login_browser.test.mjs centrifugo_streams_browser.test.mjs)
    build_failed=0
    for s in "${FAILED[@]+"${FAILED[@]}"}"; do [[ "$s" == "cargo build --release" ]] && build_failed=1; done
    if [[ $build_failed -eq 1 ]]; then
      # An older binary may still be lying around; testing it would be misleading.
      echo "${RED}the release build failed: not running the interop suites${RESET}"
      FAILED+=("interop suites (build failed)")
    elif [[ ! -x "$SWITCHBOARD_BIN" ]]; then
      echo "${RED}no executable at $SWITCHBOARD_BIN: the release build is missing${RESET}"
      FAILED+=("interop suites (no binary)")
    elif [[ ! -d "$INTEROP/node_modules/ws" ]]; then
      echo "${RED}tests/interop/node_modules is missing: run the deps stage${RESET}"
      FAILED+=("interop suites (no node_modules)")
    else
      node_suite tutorial_node.test.mjs
      node_suite http_lifecycle.test.mjs
      node_suite config.test.mjs
      node_suite cli_connect.test.mjs
      node_suite centrifugo.test.mjs
      node_suite centrifugo_protobuf.test.mjs
      node_suite centrifugo_streams.test.mjs
      node_suite proxy.test.mjs
      node_suite http_api.test.mjs
      node_suite pusher.test.mjs
      # Webhooks checked with the pusher SDK's verifier; two nodes on a private redis-server.
      node_suite webhooks.test.mjs
      node_suite pusher_bad_input.test.mjs
      node_suite socketio.test.mjs
      # Attacks replayed while canary clients check that nothing else is disturbed.
      node_suite hostile.test.mjs
      # --max-connections-per-ip with raw ws, centrifuge, socket.io-client and pusher-js.
      node_suite ip_limits.test.mjs
      # Several nodes on a private redis-server (started by the suites on free ports).
      node_suite cluster.test.mjs
      node_suite cluster_faults.test.mjs
      node_suite cluster_api.test.mjs
      node_suite socketio_cluster.test.mjs
      node_suite centrifugo_streams_cluster.test.mjs
      node_suite pusher_cluster.test.mjs
      # A rolling deploy of three nodes under 3,000 connections from 4 client threads (DEPLOY_TEST_SCALE=0.2: 600), drained and not (≈ 45 s).
      node_suite deploy.test.mjs
      # Redis restarted empty / with its data and a node killed, each twice, with every
      # client kind: nothing acknowledged may be lost.
      node_suite chaos.test.mjs
      node_suite redis_tls.test.mjs
      # A master, a replica and three sentinels; the master is killed under publishing.
      node_suite redis_sentinel.test.mjs
      # Three masters + three replicas; channels on every master; a master killed.
      node_suite redis_cluster.test.mjs
      if skip_requested SKIP_PYTHON; then
        skip_suite "interop: python_client.py" "SKIP_PYTHON=1"
      elif [[ ! -x "$INTEROP/.venv/bin/python" ]]; then
        echo "${RED}tests/interop/.venv is missing: run the deps stage${RESET}"
        FAILED+=("interop: python_client.py (no venv)")
      else
        run_suite "interop: python_client.py" 300 "$INTEROP/.venv/bin/python" "$INTEROP/python_client.py"
        run_suite "interop: cent_api.py" 120 "$INTEROP/.venv/bin/python" "$INTEROP/cent_api.py"
        run_suite "interop: metrics_scrape.py" 120 "$INTEROP/.venv/bin/python" "$INTEROP/metrics_scrape.py"
        run_suite "interop: pusher_sdk.py" 120 "$INTEROP/.venv/bin/python" "$INTEROP/pusher_sdk.py"
        run_suite "interop: centrifuge_python_protobuf.py" 120 "$INTEROP/.venv/bin/python" "$INTEROP/centrifuge_python_protobuf.py"
      fi
      if skip_requested SKIP_BROWSER; then
        skip_suite "interop: ${BROWSER_SUITES[*]}" "SKIP_BROWSER=1"
        RAN_SUITES+=("${BROWSER_SUITES[@]}")
      elif [[ ! -x "${CHROMIUM_PATH:-/usr/bin/chromium}" ]]; then
        skip_suite "interop: ${BROWSER_SUITES[*]}" "chromium is not installed (apt-get install chromium)"
        RAN_SUITES+=("${BROWSER_SUITES[@]}")
      else
        for file in "${BROWSER_SUITES[@]}"; do node_suite "$file"; done
      fi
      # A suite file nobody runs would pass silently forever: every one must be listed above.
      for path in "$INTEROP"/*.test.mjs; do
        file="$(basename "$path")"
        case " ${RAN_SUITES[*]} " in
          *" $file "*) ;;
          *) FAILED+=("interop: $file is not run by scripts/test.sh (add it to the list)") ;;
        esac
      done
    fi
  fi
fi

# ---------------------------------------------------------------------------
# Summary
# ---------------------------------------------------------------------------

echo
say "summary"
for s in "${PASSED[@]+"${PASSED[@]}"}"; do printf '  %spass%s  %s\n' "$GREEN" "$RESET" "$s"; done
for s in "${SKIPPED[@]+"${SKIPPED[@]}"}"; do printf '  %sskip%s  %s\n' "$YELLOW" "$RESET" "$s"; done
for s in "${FAILED[@]+"${FAILED[@]}"}"; do printf '  %sFAIL%s  %s\n' "$RED" "$RESET" "$s"; done
line="${#PASSED[@]} passed, ${#FAILED[@]} failed"
[[ ${#SKIPPED[@]} -gt 0 ]] && line="$line, ${#SKIPPED[@]} skipped"
echo "$line"
[[ ${#FAILED[@]} -eq 0 ]]
