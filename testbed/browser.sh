#!/usr/bin/env bash
# Test-bed component: a real browser for the controller's live view, headless Chromium
# driven over WebDriver by chromedriver, both from Debian's packages.
#
# Nothing runs between tests: each browser test starts its own chromedriver (and so its
# own Chromium) on a free loopback port and stops it (crate shop-testkit, `browser`).
#
# Usage: browser.sh install|up|down|status|env
set -euo pipefail
# shellcheck source=testbed/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

CHROMIUM=/usr/bin/chromium
CHROMEDRIVER=/usr/bin/chromedriver

install() {
  local missing=()
  [[ -x $CHROMIUM ]] || missing+=(chromium)
  [[ -x $CHROMEDRIVER ]] || missing+=(chromium-driver)
  ((${#missing[@]})) || return 0
  apt_install browser "${missing[@]}"
}

status() {
  if [[ -x $CHROMIUM && -x $CHROMEDRIVER ]]; then
    echo "browser: $("$CHROMEDRIVER" --version 2>/dev/null | head -n1)"
  else
    echo "browser: not installed (testbed/browser.sh install)"
    return 1
  fi
}

up() {
  [[ -x $CHROMIUM && -x $CHROMEDRIVER ]] || die browser "Chromium or chromedriver missing: run 'testbed/browser.sh install'"
  log "browser: $("$CHROMEDRIVER" --version 2>/dev/null | head -n1)"
}

# The lines bed.sh writes into the env file.
env_lines() {
  echo "export SHOPSTREAM_CHROMEDRIVER='$CHROMEDRIVER'"
  echo "export SHOPSTREAM_CHROMIUM='$CHROMIUM'"
}

case ${1:-} in
  install) install ;;
  up) up ;;
  down) ;;
  status) status ;;
  env) env_lines ;;
  *) echo "usage: $0 install|up|down|status|env" >&2; exit 2 ;;
esac
