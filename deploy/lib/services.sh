# shellcheck shell=bash
# Install, start and stop the services the onboarding engine needs:
# PostgreSQL (private cluster), tansu (Kafka-protocol broker), MailDev (SMTP catcher).
# Source this file from a bash script running with `set -euo pipefail`. The tools only the
# tests need are installed by tests/lib/test-services.sh, which builds on this file.
#
# Every process runs in the background with a pidfile and is stopped by that PID only.
# A pidfile whose process is gone is stale and ignored.

ONBOARDING_CACHE=${ONBOARDING_CACHE:-$HOME/.cache/onboarding}
MAILDEV_DIR=${MAILDEV_DIR:-$ONBOARDING_CACHE/maildev}
TANSU_VERSION=0.6.0
START_TIMEOUT=${START_TIMEOUT:-60}

say() { printf '%s\n' "$*"; }
die() {
  printf 'error: %s\n' "$*" >&2
  exit 1
}

# die with the last lines of a service's log.
die_with_log() {
  local msg=$1 log=$2
  {
    printf 'error: %s\n' "$msg"
    if [[ -f $log ]]; then
      printf -- '--- last lines of %s (this start) ---\n' "$log"
      awk '/^=== .* start: /{n=0} {line[n++]=$0} END{for(i=(n>30?n-30:0);i<n;i++) print line[i]}' "$log"
      printf -- '---\n'
    fi
  } >&2
  exit 1
}

# ---------------------------------------------------------------- processes

# Start time of process PID in clock ticks since boot (field 22 of /proc/PID/stat).
proc_start() { sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d ' ' -f 20; }

# Print the PID recorded in FILE if that process is alive; fail otherwise. The pidfile also
# records the process's start time, so a PID reused by an unrelated process counts as gone.
pidfile_pid() {
  local file=$1 pid start
  [[ -s $file ]] || return 1
  read -r pid start <"$file" || true
  [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null || return 1
  [[ -z $start || $start == "$(proc_start "$pid")" ]] || return 1
  printf '%s\n' "$pid"
}

# start_bg PIDFILE LOG CMD [ARGS...]: run CMD in the background, detached from stdin.
start_bg() {
  local pidfile=$1 log=$2
  shift 2
  printf '=== %s start: %s\n' "$(date -Is)" "$*" >>"$log"
  nohup "$@" >>"$log" 2>&1 </dev/null &
  printf '%s %s\n' "$!" "$(proc_start "$!")" >"$pidfile"
}

# stop_pidfile FILE [NAME]: TERM the process, wait up to 10 s, then KILL. Removes FILE.
stop_pidfile() {
  local file=$1 name=${2:-$(basename "$1" .pid)} pid i
  if ! pid=$(pidfile_pid "$file"); then
    rm -f "$file"
    say "$name: not running"
    return 0
  fi
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 100; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    kill -KILL "$pid" 2>/dev/null || true
    say "$name: killed (pid $pid did not stop within 10 s)"
  else
    say "$name: stopped (pid $pid)"
  fi
  rm -f "$file"
}

# ---------------------------------------------------------------- readiness

# shellcheck disable=SC2016 # $1 and $2 expand in the inner bash
port_open() { timeout 2 bash -c 'exec 3<>"/dev/tcp/$1/$2"' _ "$1" "$2" 2>/dev/null; }
http_ok() { curl -fsS -o /dev/null --max-time 2 "$1" 2>/dev/null; }

# wait_port HOST PORT TIMEOUT: wait until a TCP connect succeeds.
wait_port() {
  local deadline=$((SECONDS + $3))
  until port_open "$1" "$2"; do
    ((SECONDS < deadline)) || return 1
    sleep 0.2
  done
}

# wait_http URL TIMEOUT: wait until URL answers 2xx.
wait_http() {
  local deadline=$((SECONDS + $2))
  until http_ok "$1"; do
    ((SECONDS < deadline)) || return 1
    sleep 0.2
  done
}

# await NAME PIDFILE LOG CHECK...: wait until CHECK succeeds; fail fast if the process dies.
await() {
  local name=$1 pidfile=$2 log=$3 deadline=$((SECONDS + START_TIMEOUT))
  shift 3
  until "$@"; do
    pidfile_pid "$pidfile" >/dev/null || die_with_log "$name exited during start-up" "$log"
    ((SECONDS < deadline)) || die_with_log "$name not ready after ${START_TIMEOUT}s ($*)" "$log"
    sleep 0.2
  done
}

# fail if something else already listens on the port we are about to use.
require_free_port() {
  if port_open 127.0.0.1 "$2"; then
    die "$1: port $2 on 127.0.0.1 is already in use by another process (choose another port)"
  fi
}

# ---------------------------------------------------------------- packages

# apt_install PACKAGE...: install Debian packages; refresh the package lists and try again
# when they do not know a package or are too old to fetch it.
apt_install() {
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@"; then
    DEBIAN_FRONTEND=noninteractive apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@"
  fi
}

# npm (and Node.js) for MailDev and the browser tests' playwright-core.
ensure_npm() {
  command -v npm >/dev/null || apt_install nodejs npm
}

# ---------------------------------------------------------------- build

# What building `onboard` needs besides Rust, gcc and make: OpenSSL's headers (librdkafka is
# built with TLS and SCRAM support, the rdkafka crate's `ssl` feature) and pkg-config to find them.
ensure_build_deps() {
  if ! command -v pkg-config >/dev/null || ! pkg-config --exists openssl; then
    say "build: installing libssl-dev and pkg-config (apt-get)"
    apt_install libssl-dev pkg-config
  fi
}

# ---------------------------------------------------------------- PostgreSQL

# Newest installed server binaries (Debian: /usr/lib/postgresql/VERSION/bin).
pg_bin() {
  local d
  d=$(find /usr/lib/postgresql -mindepth 3 -maxdepth 3 -path '*/bin/initdb' 2>/dev/null | sort -V | tail -n 1)
  [[ -n $d ]] || return 1
  dirname "$d"
}

ensure_postgres() {
  if [[ ! -x /usr/lib/postgresql/15/bin/initdb ]] && ! pg_bin >/dev/null; then
    say "postgres: installing PostgreSQL (apt-get)"
    apt_install postgresql
  fi
  PG_BIN=$(pg_bin) || die "postgres: no initdb under /usr/lib/postgresql after install"
}

# Run a command as user postgres (the server refuses to run as root).
as_postgres() {
  if ((EUID == 0)); then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

# Make DIR owned by postgres and every parent directory traversable by it.
pg_prepare_dir() {
  local dir=$1 parent
  mkdir -p "$dir"
  ((EUID == 0)) || return 0
  chown postgres:postgres "$dir"
  chmod 700 "$dir"
  parent=$(dirname "$dir")
  while [[ $parent != / ]]; do
    if ! runuser -u postgres -- test -x "$parent"; then
      say "postgres: allowing traversal (o+x) of $parent"
      chmod o+x "$parent"
    fi
    parent=$(dirname "$parent")
  done
}

# start_postgres DIR PORT: private cluster in DIR on 127.0.0.1:PORT, socket in DIR.
start_postgres() {
  local dir port=$2 pid
  : "${PG_BIN:=$(pg_bin)}"
  mkdir -p "$1"
  dir=$(cd "$1" && pwd)
  if as_postgres "$PG_BIN/pg_ctl" -D "$dir" status >/dev/null 2>&1; then
    pid=$(sed -n 1p "$dir/postmaster.pid")
    say "postgres: already running (pid $pid, port $(sed -n 4p "$dir/postmaster.pid"), data $dir)"
    return 0
  fi
  pg_prepare_dir "$dir"
  if [[ ! -s $dir/PG_VERSION ]]; then
    as_postgres "$PG_BIN/initdb" -D "$dir" -U postgres --auth=trust -E UTF8 >"$dir.initdb.log" 2>&1 ||
      die_with_log "postgres: initdb failed" "$dir.initdb.log"
  fi
  require_free_port postgres "$port"
  as_postgres "$PG_BIN/pg_ctl" -D "$dir" -l "$dir/postgres.log" -w -t "$START_TIMEOUT" \
    -o "-p $port -k $dir -c listen_addresses=127.0.0.1" start >/dev/null ||
    die_with_log "postgres: did not start on 127.0.0.1:$port" "$dir/postgres.log"
  wait_port 127.0.0.1 "$port" 10 || die_with_log "postgres: port $port not answering" "$dir/postgres.log"
  say "postgres: started (pid $(head -n 1 "$dir/postmaster.pid"), 127.0.0.1:$port, data $dir)"
}

# stop_postgres DIR
stop_postgres() {
  local dir=$1 pid
  : "${PG_BIN:=$(pg_bin)}"
  if [[ -d $dir ]] && as_postgres "$PG_BIN/pg_ctl" -D "$dir" status >/dev/null 2>&1; then
    pid=$(head -n 1 "$dir/postmaster.pid")
    as_postgres "$PG_BIN/pg_ctl" -D "$dir" -m fast -w stop >/dev/null
    say "postgres: stopped (pid $pid)"
  else
    say "postgres: not running"
  fi
}

# create_database PORT NAME: create the database if it does not exist.
create_database() {
  local port=$1 name=$2
  : "${PG_BIN:=$(pg_bin)}"
  if [[ -z $("$PG_BIN/psql" -h 127.0.0.1 -p "$port" -U postgres -d postgres -tAc \
    "SELECT 1 FROM pg_database WHERE datname = '$name'") ]]; then
    "$PG_BIN/createdb" -h 127.0.0.1 -p "$port" -U postgres "$name"
    say "postgres: created database $name"
  fi
}

# ---------------------------------------------------------------- tansu

tansu_path() { command -v tansu || printf '%s\n' "${CARGO_HOME:-$HOME/.cargo}/bin/tansu"; }

ensure_tansu() {
  TANSU=$(tansu_path)
  if [[ ! -x $TANSU ]]; then
    say "tansu: installing tansu $TANSU_VERSION with cargo (about 12 minutes on 2 cores)"
    cargo install tansu --version "$TANSU_VERSION" --locked --features dynostore
    TANSU=$(tansu_path)
    [[ -x $TANSU ]] || die "tansu: install did not produce $TANSU"
  fi
}

# start_tansu RUNDIR PORT: in-memory broker on 127.0.0.1:PORT (contents are transient).
start_tansu() {
  local rundir=$1 port=$2 pid
  local pidfile=$rundir/tansu.pid log=$rundir/tansu.log
  : "${TANSU:=$(tansu_path)}"
  mkdir -p "$rundir"
  if pid=$(pidfile_pid "$pidfile"); then
    say "tansu: already running (pid $pid)"
    return 0
  fi
  require_free_port tansu "$port"
  # tansu also reads settings from the environment (CLUSTER_ID, SCHEMA_REGISTRY, ...): clear them.
  start_bg "$pidfile" "$log" env -u CLUSTER_ID -u SCHEMA_REGISTRY -u DATA_LAKE \
    -u OTEL_EXPORTER_OTLP_ENDPOINT "$TANSU" broker \
    --cluster-id onboarding-local \
    --listener-url "tcp://127.0.0.1:$port" \
    --advertised-listener-url "tcp://127.0.0.1:$port" \
    --storage-engine memory://tansu/
  await tansu "$pidfile" "$log" port_open 127.0.0.1 "$port"
  say "tansu: started (pid $(pidfile_pid "$pidfile"), 127.0.0.1:$port)"
}

# ---------------------------------------------------------------- MailDev

ensure_maildev() {
  MAILDEV=$MAILDEV_DIR/node_modules/.bin/maildev
  [[ -x $MAILDEV ]] && return 0
  ensure_npm
  say "maildev: installing maildev@3 into $MAILDEV_DIR"
  mkdir -p "$MAILDEV_DIR"
  npm install --prefix "$MAILDEV_DIR" --no-audit --no-fund --loglevel=error maildev@3
  [[ -x $MAILDEV ]] || die "maildev: install did not produce $MAILDEV"
}

# start_maildev RUNDIR SMTP_PORT WEB_PORT
start_maildev() {
  local rundir=$1 smtp=$2 web=$3 pid
  local pidfile=$rundir/maildev.pid log=$rundir/maildev.log
  : "${MAILDEV:=$MAILDEV_DIR/node_modules/.bin/maildev}"
  mkdir -p "$rundir"
  if pid=$(pidfile_pid "$pidfile"); then
    say "maildev: already running (pid $pid)"
    return 0
  fi
  require_free_port "maildev smtp" "$smtp"
  require_free_port "maildev web" "$web"
  start_bg "$pidfile" "$log" "$MAILDEV" --ip 127.0.0.1 --web-ip 127.0.0.1 -s "$smtp" -w "$web"
  await maildev "$pidfile" "$log" http_ok "http://127.0.0.1:$web/api/healthz"
  await maildev "$pidfile" "$log" port_open 127.0.0.1 "$smtp"
  say "maildev: started (pid $(pidfile_pid "$pidfile"), smtp 127.0.0.1:$smtp, web http://127.0.0.1:$web)"
}

# ---------------------------------------------------------------- OpenLDAP (slapd)

# Debian's OpenLDAP 2.5: slapd, its argon2 password module (/usr/lib/ldap/argon2.so) and the
# command-line clients (ldapwhoami, ldapsearch). Only the packages: no system instance is used.
SLAPD=${SLAPD:-/usr/sbin/slapd}
SLAPADD=${SLAPADD:-/usr/sbin/slapadd}
ensure_slapd() {
  if [[ ! -x $SLAPD || ! -x /usr/lib/ldap/argon2.so && ! -f /usr/lib/ldap/argon2.so ]] ||
    ! command -v ldapwhoami >/dev/null; then
    say "slapd: installing slapd and ldap-utils (apt-get)"
    apt_install slapd ldap-utils
  fi
  [[ -x $SLAPD ]] || die "slapd: install did not produce $SLAPD"
  [[ -f /usr/lib/ldap/argon2.so ]] ||
    die "slapd: /usr/lib/ldap/argon2.so is missing; OpenLDAP 2.5 or later with its argon2 module is needed"
}

# DN of the base entry for a DNS-like suffix list: ldap_base_dn pickup.example -> dc=pickup,dc=example
ldap_base_dn() {
  local IFS=. part out=()
  for part in $1; do out+=("dc=$part"); done
  (IFS=,; printf '%s\n' "${out[*]}")
}

# start_slapd DIR PORT [BASE_DN]: a private OpenLDAP instance in DIR on 127.0.0.1:PORT, from a
# plain slapd.conf (no cn=config), with the argon2 module loaded so that `{ARGON2}` password
# hashes bind. The base entry and `ou=Users` under it are made on first start (slapadd, before
# the server runs). The administrator is `cn=admin,BASE_DN`, its password generated once into
# DIR/admin-password (mode 600). Users bind to their own entries; nobody reads a userPassword.
# With SLAPD_TLS_CERT and SLAPD_TLS_KEY (PEM files) set, the ldap:// port offers StartTLS, and
# with SLAPD_LDAPS_PORT as well, ldaps:// listens on that port too.
# Sets LDAP_URL, LDAP_BASE_DN, LDAP_USERS_DN, LDAP_ADMIN_DN, LDAP_ADMIN_PASSWORD_FILE (and
# LDAPS_URL with SLAPD_LDAPS_PORT).
start_slapd() {
  local dir port=$2 base=${3:-dc=pickup,dc=example} pid org
  mkdir -p "$1"
  dir=$(cd "$1" && pwd)
  LDAP_URL=ldap://127.0.0.1:$port
  LDAP_BASE_DN=$base
  LDAP_USERS_DN=ou=Users,$base
  LDAP_ADMIN_DN=cn=admin,$base
  LDAP_ADMIN_PASSWORD_FILE=$dir/admin-password
  local pidfile=$dir/slapd.pid log=$dir/slapd.log conf=$dir/slapd.conf tls= urls
  urls=$LDAP_URL/
  if [[ -n ${SLAPD_TLS_CERT:-} && -n ${SLAPD_TLS_KEY:-} ]]; then
    tls="TLSCertificateFile $SLAPD_TLS_CERT
TLSCertificateKeyFile $SLAPD_TLS_KEY"
    if [[ -n ${SLAPD_LDAPS_PORT:-} ]]; then
      LDAPS_URL=ldaps://127.0.0.1:$SLAPD_LDAPS_PORT
      urls="$urls $LDAPS_URL/"
    fi
  fi
  if pid=$(pidfile_pid "$pidfile"); then
    say "slapd: already running (pid $pid, $LDAP_URL, base $base)"
    return 0
  fi
  mkdir -p "$dir/data"
  if [[ ! -s $LDAP_ADMIN_PASSWORD_FILE ]]; then
    (umask 077 && openssl rand -base64 24 | tr -d '\n' >"$LDAP_ADMIN_PASSWORD_FILE")
  fi
  local admin_hash
  admin_hash=$(/usr/sbin/slappasswd -h '{SSHA}' -T "$LDAP_ADMIN_PASSWORD_FILE") ||
    die "slapd: slappasswd could not hash the administrator's password"
  # slapd writes the PID itself too; ours (start_bg) also records the start time.
  cat >"$conf" <<CONF
# Written by deploy/lib/services.sh (start_slapd) on every start.
include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/inetorgperson.schema
pidfile $dir/slapd.run.pid
argsfile $dir/slapd.args
$tls
modulepath /usr/lib/ldap
moduleload back_mdb
moduleload argon2
database mdb
maxsize 104857600
suffix "$base"
rootdn "$LDAP_ADMIN_DN"
rootpw $admin_hash
directory $dir/data
index objectClass eq
index uid eq
# A user binds with her password and reads her own entry; the hashes are for binding only.
access to attrs=userPassword
  by self write
  by anonymous auth
  by * none
access to *
  by self read
  by users read
  by * none
CONF
  if [[ ! -s $dir/data/data.mdb ]]; then
    org=${base#dc=}
    org=${org%%,*}
    "$SLAPADD" -q -f "$conf" >>"$log" 2>&1 <<LDIF || die_with_log "slapd: slapadd of the base entries failed" "$log"
dn: $base
objectClass: dcObject
objectClass: organization
dc: $org
o: $org

dn: $LDAP_USERS_DN
objectClass: organizationalUnit
ou: Users
LDIF
  fi
  require_free_port slapd "$port"
  # -d 0: stay in the foreground (stopped by our PID), log only start-up failures.
  start_bg "$pidfile" "$log" "$SLAPD" -d 0 -f "$conf" -h "$urls"
  await slapd "$pidfile" "$log" port_open 127.0.0.1 "$port"
  say "slapd: started (pid $(pidfile_pid "$pidfile"), $urls, base $base)"
}

# stop_slapd DIR
stop_slapd() { stop_pidfile "$1/slapd.pid" slapd; }
