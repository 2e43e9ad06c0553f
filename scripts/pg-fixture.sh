#!/usr/bin/env bash
# pg-fixture.sh: a throwaway PostgreSQL 15 + PgBouncer for keypool's
# integration tests.
#
# Usage:
#   scripts/pg-fixture.sh start    ENVFILE            start both servers, write ENVFILE
#   scripts/pg-fixture.sh stop     ENVFILE            stop both, delete the cluster and ENVFILE
#                                                     (idempotent: exits 0 if nothing is running)
#   scripts/pg-fixture.sh pg-stop  ENVFILE            stop PostgreSQL only (-m fast); PgBouncer stays up
#   scripts/pg-fixture.sh pg-start ENVFILE            start PostgreSQL again (same port and socket)
#                                                     and wait until it and PgBouncer accept connections
#   scripts/pg-fixture.sh pg-restart ENVFILE          restart PostgreSQL (pg_ctl restart -m fast -w) and
#                                                     return once it accepts connections; PgBouncer is
#                                                     not waited for (run pg-start next for that)
#   scripts/pg-fixture.sh run      ENVFILE -- CMD...  start, run CMD with ENVFILE's variables
#                                                     exported, stop; exits with CMD's status
#   scripts/pg-fixture.sh exec     ENVFILE -- CMD...  run CMD against the running fixture, with
#                                                     the same variables (KEYPOOL_*, KEYPOOL_PG_ENV,
#                                                     PGHOST/PGPORT/PGUSER/PGPASSWORD) exported
#
# ENVFILE gets plain KEY=VALUE lines (no quotes, no export):
#   KEYPOOL_PG_DIR  KEYPOOL_PG_SOCKET  KEYPOOL_PG_HOST  KEYPOOL_PG_PORT  KEYPOOL_PGB_PORT
#   KEYPOOL_PG_ADMIN  KEYPOOL_PG_APP_USER  KEYPOOL_PG_APP_PASSWORD
#   KEYPOOL_PG_LIMITED_USER  KEYPOOL_PG_LIMITED_PASSWORD  KEYPOOL_PG_REJECTED_USER
#
# What the cluster holds:
#   kp_admin     superuser, trust (unix socket and 127.0.0.1)
#   kp_app       SCRAM login, member of NOLOGIN roles tenant_acme, tenant_globex,
#                tenant_initech; owns databases app, acme, globex, initech
#   kp_limited   SCRAM login, CONNECTION LIMIT 2 (may connect to app)
#   kp_rejected  rejected by pg_hba (provokes an auth failure on purpose)
#   PgBouncer    transaction pooling, SCRAM, userlist with kp_app and kp_limited
#
# The cluster lives in a fresh `mktemp -d /tmp/keypool-pg.XXXXXX` directory (short
# unix socket paths) holding a marker file; only such a directory is ever deleted.
# Ports are probed upward from 55432, so several fixtures can run at once. As root,
# initdb, postgres and pgbouncer run as the `postgres` account through runuser.
# Servers are stopped by the PIDs in their pid files, never by process name.
#
# PgBouncer after pg-stop/pg-start: clients that arrive while PostgreSQL is down
# wait up to query_wait_timeout (120 s) or get "server login has been failing";
# pg-start returns once kp_app's pools for app, acme, globex and initech work
# again. Any other pool that failed meanwhile fails its first client after the
# restart with "server login has been failing" (PgBouncer's fast-fail).
set -euo pipefail

PG_BIN=/usr/lib/postgresql/15/bin
PGBOUNCER=/usr/sbin/pgbouncer
MARKER=.keypool-pg-fixture
LOCKFILE=/tmp/keypool-pg-fixture.lock
FIRST_PORT=55432
HOST=127.0.0.1
ADMIN=kp_admin
APP_USER=kp_app
APP_PASSWORD=app-secret-1
LIMITED_USER=kp_limited
LIMITED_PASSWORD=limited-secret-2
REJECTED_USER=kp_rejected
REJECTED_PASSWORD=rejected-secret-3

START_DIR=   # set while `start` is in progress: cleaned up if it fails
ENV_TMP=     # temporary env file not yet moved into place
RUN_ENVFILE= # set by `run`: stopped on exit

log() { echo "pg-fixture: $*" >&2; }
die() { log "$*"; exit 1; }

usage() {
  sed -n '4,19s/^# \{0,1\}//p' "$0" >&2
  exit 2
}

# as_pg CMD...: run a server program as a non-root user, from a directory it can read.
as_pg() {
  if [[ $EUID -eq 0 ]]; then
    (cd / && runuser -u postgres -- "$@")
  else
    (cd / && "$@")
  fi
}

# pg_psql PASSWORD PSQL_ARGS...: psql shielded from the caller's PG* settings and psqlrc.
pg_psql() {
  local password=$1
  shift
  env -u PGSERVICE -u PGSERVICEFILE -u PGOPTIONS -u PGPASSFILE -u PGPASSWORD \
    -u PGHOST -u PGHOSTADDR -u PGPORT -u PGUSER -u PGDATABASE -u PGSSLMODE \
    PGCONNECT_TIMEOUT=5 ${password:+"PGPASSWORD=$password"} \
    timeout 60 psql -X -q -At -v ON_ERROR_STOP=1 "$@"
}

# first_line FILE: print the first line of FILE (nothing if it is missing).
first_line() {
  local line=
  { IFS= read -r line <"$1"; } 2>/dev/null || true
  printf '%s' "$line"
}

# alive PID COMM [DIR]: PID is a live (not zombie) process named COMM. With DIR it
# must also belong to this fixture: a postgres process runs in DIR/data, pgbouncer
# was started with DIR/pgbouncer.ini. Guards against signalling a reused PID.
alive() {
  local pid=$1 comm=$2 dir=${3:-} stat name cmdline
  [[ $pid =~ ^[1-9][0-9]*$ ]] || return 1
  { IFS= read -r stat <"/proc/$pid/stat"; } 2>/dev/null || return 1
  stat=${stat##*) }             # the state follows the ")" that closes comm
  [[ ${stat%% *} != [ZX] ]] || return 1
  { IFS= read -r name <"/proc/$pid/comm"; } 2>/dev/null || return 1
  [[ $name == "$comm" ]] || return 1
  [[ -n $dir ]] || return 0
  if [[ $comm == postgres ]]; then
    [[ /proc/$pid/cwd -ef $dir/data ]]
  else
    cmdline=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
    [[ $cmdline == *"$dir/pgbouncer.ini"* ]]
  fi
}

# wait_gone PID COMM DIR SECONDS: wait until the process is gone; 1 on timeout.
wait_gone() {
  local i
  for ((i = 0; i < $4 * 10; i++)); do
    alive "$1" "$2" "$3" || return 0
    sleep 0.1
  done
  ! alive "$1" "$2" "$3"
}

# env_get ENVFILE KEY: print KEY's value from ENVFILE.
env_get() {
  local key value
  while IFS='=' read -r key value; do
    if [[ $key == "$2" ]]; then
      printf '%s' "$value"
      return 0
    fi
  done <"$1"
  return 1
}

# fixture_dir ENVFILE: print the fixture directory ENVFILE names, if it is ours.
fixture_dir() {
  local dir
  [[ -f $1 ]] || die "no env file $1"
  dir=$(env_get "$1" KEYPOOL_PG_DIR) || die "$1 has no KEYPOOL_PG_DIR"
  [[ -f $dir/$MARKER ]] || die "$dir is not a pg-fixture directory (no $MARKER)"
  printf '%s' "$dir"
}

# ---------------------------------------------------------------- ports

# port_busy PORT: something listens on PORT (TCP or a unix socket for that
# port), or another fixture has reserved it (its PostgreSQL may be pg-stopped).
port_busy() {
  local port=$1
  if command -v ss >/dev/null 2>&1; then
    [[ -z $(ss -Htln "sport = :$port") ]] || return 0
    ss -Hxl | grep -qE "/\.s\.PGSQL\.$port([[:space:]]|$)" && return 0
  else
    (exec 3<>"/dev/tcp/$HOST/$port") 2>/dev/null && return 0
  fi
  [[ ! -e /tmp/.s.PGSQL.$port && ! -e /var/run/postgresql/.s.PGSQL.$port ]] || return 0
  grep -qsxE "(pg|pgb)_port=$port" /tmp/keypool-pg.*/"$MARKER" && return 0
  return 1
}

# reserve_port DIR NAME FROM: find a free port >= FROM, record it in DIR's marker
# as NAME_port=PORT (under a lock, so concurrent fixtures never pick the same
# one), and print it.
reserve_port() {
  local dir=$1 name=$2 port=$3 lock_fd=
  if { exec {lock_fd}>>"$LOCKFILE"; } 2>/dev/null; then
    flock -w 60 "$lock_fd" || log "could not lock $LOCKFILE; probing anyway"
  fi
  while port_busy "$port"; do
    ((++port <= 65535)) || die "no free port"
  done
  echo "${name}_port=$port" >>"$dir/$MARKER"
  [[ -z $lock_fd ]] || exec {lock_fd}>&-
  printf '%s' "$port"
}

# ---------------------------------------------------------------- PostgreSQL

# clear_stale_pg_files DIR: drop pid and socket lock files whose process is dead
# (a killed postmaster may linger as a zombie and block the next start).
clear_stale_pg_files() {
  local dir=$1 file pid
  for file in "$dir/data/postmaster.pid" "$dir"/sock/.s.PGSQL.*.lock; do
    [[ -f $file ]] || continue
    pid=$(first_line "$file")
    if ! alive "$pid" postgres "$dir"; then
      rm -f -- "$file"
      [[ $file != *.lock ]] || rm -f -- "${file%.lock}"
    fi
  done
}

# pg_ctl_start DIR: start PostgreSQL with the configuration in DIR/data.
pg_ctl_start() {
  clear_stale_pg_files "$1"
  as_pg "$PG_BIN/pg_ctl" -D "$1/data" -w -t 60 -l "$1/pg.log" start >/dev/null
}

# wait_pg_ready DIR PORT: wait until PostgreSQL accepts connections on its socket.
wait_pg_ready() {
  local i
  for ((i = 0; i < 100; i++)); do
    pg_psql "" -h "$1/sock" -p "$2" -U "$ADMIN" -d postgres -c 'SELECT 1' >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  pg_psql "" -h "$1/sock" -p "$2" -U "$ADMIN" -d postgres -c 'SELECT 1' >/dev/null
}

# resume_stopped DIR: SIGCONT every process of this cluster that is stopped (a
# test freezes servers with SIGSTOP to make them silent; if it died before
# resuming them, a stopped process would ignore the shutdown signals below).
resume_stopped() {
  local dir=$1 proc pid stat
  for proc in /proc/[0-9]*; do
    pid=${proc#/proc/}
    { IFS= read -r stat <"$proc/stat"; } 2>/dev/null || continue
    stat=${stat##*) }
    [[ ${stat%% *} == [Tt] ]] || continue
    if alive "$pid" postgres "$dir"; then
      log "resuming stopped postgres process $pid"
      kill -CONT "$pid" 2>/dev/null || true
    fi
  done
}

# stop_postgres DIR: pg_ctl -m fast stop, then immediate shutdown (SIGQUIT; SIGTERM
# would be a smart shutdown, which never ends while PgBouncer holds connections),
# then SIGKILL; finally kill leftover backends of this cluster (cwd is DIR/data).
stop_postgres() {
  local dir=$1 pid proc status=0
  resume_stopped "$dir"
  pid=$(first_line "$dir/data/postmaster.pid")
  if alive "$pid" postgres "$dir"; then
    as_pg "$PG_BIN/pg_ctl" -D "$dir/data" -m fast -t 30 stop >/dev/null 2>&1 || true
    if ! wait_gone "$pid" postgres "$dir" 1; then
      log "pg_ctl stop failed; sending SIGQUIT to postmaster $pid"
      kill -QUIT "$pid" 2>/dev/null || true
      if ! wait_gone "$pid" postgres "$dir" 10; then
        log "sending SIGKILL to postmaster $pid"
        kill -KILL "$pid" 2>/dev/null || true
        wait_gone "$pid" postgres "$dir" 5 || { log "postmaster $pid survived SIGKILL"; status=1; }
      fi
    fi
  fi
  for proc in /proc/[0-9]*; do
    pid=${proc#/proc/}
    if alive "$pid" postgres "$dir"; then
      log "killing leftover postgres process $pid"
      kill -KILL "$pid" 2>/dev/null || true
      wait_gone "$pid" postgres "$dir" 5 || status=1
    fi
  done
  return "$status"
}

# ---------------------------------------------------------------- PgBouncer

# stop_pgbouncer DIR: SIGTERM (immediate shutdown), then SIGKILL.
stop_pgbouncer() {
  local dir=$1 pid
  pid=$(first_line "$dir/pgbouncer.pid")
  alive "$pid" pgbouncer "$dir" || return 0
  kill -TERM "$pid" 2>/dev/null || true
  wait_gone "$pid" pgbouncer "$dir" 10 && return 0
  log "sending SIGKILL to pgbouncer $pid"
  kill -KILL "$pid" 2>/dev/null || true
  wait_gone "$pid" pgbouncer "$dir" 5 || { log "pgbouncer $pid survived SIGKILL"; return 1; }
}

# wait_pgb_ready DIR PGB_PORT DB...: wait until, for each DB, a query as kp_app
# goes through PgBouncer to the server.
wait_pgb_ready() {
  local dir=$1 port=$2 db pid i
  shift 2
  for db in "$@"; do
    for ((i = 1; ; i++)); do
      # The pid file appears once PgBouncer listens; no pid file after 2 s, a
      # failed bind or a dead process: give up at once.
      pid=$(first_line "$dir/pgbouncer.pid")
      if [[ -n $pid ]]; then
        alive "$pid" pgbouncer "$dir" || return 1
        pgb_select1 "$port" "$db" 2>/dev/null && break
      elif ((i > 20)) || port_clash_in "$dir/pgbouncer.log"; then
        return 1
      fi
      if ((i >= 100)); then
        pgb_select1 "$port" "$db" || return 1 # the last try shows the error
        break
      fi
      sleep 0.1
    done
  done
}

pgb_select1() {
  pg_psql "$APP_PASSWORD" -h "$HOST" -p "$1" -U "$APP_USER" -d "$2" -c 'SELECT 1' >/dev/null
}

# ---------------------------------------------------------------- start

# write_pg_config DIR PORT: (re)write the settings this fixture adds.
write_pg_config() {
  cat >"$1/data/keypool.conf" <<EOF
listen_addresses = '$HOST'
port = $2
unix_socket_directories = '$1/sock'
max_connections = 40
fsync = off
synchronous_commit = off
full_page_writes = off
lc_messages = 'C'
password_encryption = 'scram-sha-256'
log_min_messages = warning
EOF
}

# write_pgbouncer_config DIR PG_PORT PGB_PORT
write_pgbouncer_config() {
  cat >"$1/pgbouncer.ini" <<EOF
[databases]
* = host=$1/sock port=$2

[pgbouncer]
listen_addr = $HOST
listen_port = $3
unix_socket_dir = $1/sock
auth_type = scram-sha-256
auth_file = $1/userlist.txt
pool_mode = transaction
max_client_conn = 200
default_pool_size = 10
server_reset_query =
ignore_startup_parameters = extra_float_digits
logfile = $1/pgbouncer.log
pidfile = $1/pgbouncer.pid
server_login_retry = 1
EOF
}

own_dir() {
  if [[ $EUID -eq 0 ]]; then chown -R postgres: "$1"; fi
}

# port_clash_in FILE: the last lines of FILE report a port already in use.
port_clash_in() {
  tail -n 20 "$1" 2>/dev/null | grep -q 'Address already in use'
}

setup_sql() {
  local db
  cat <<EOF
CREATE ROLE $APP_USER LOGIN PASSWORD '$APP_PASSWORD' NOSUPERUSER NOCREATEROLE NOCREATEDB;
CREATE ROLE tenant_acme NOLOGIN;
CREATE ROLE tenant_globex NOLOGIN;
CREATE ROLE tenant_initech NOLOGIN;
GRANT tenant_acme, tenant_globex, tenant_initech TO $APP_USER;
CREATE ROLE $LIMITED_USER LOGIN PASSWORD '$LIMITED_PASSWORD' CONNECTION LIMIT 2;
CREATE ROLE $REJECTED_USER LOGIN PASSWORD '$REJECTED_PASSWORD';
EOF
  for db in app acme globex initech; do
    echo "CREATE DATABASE $db OWNER $APP_USER;"
  done
  echo "GRANT CONNECT ON DATABASE app TO $LIMITED_USER, $REJECTED_USER;"
  for db in app acme globex initech; do
    echo "\\connect $db"
    echo "GRANT USAGE, CREATE ON SCHEMA public TO PUBLIC;"
  done
}

cmd_start() {
  local envfile=$1 dir pg_port pgb_port attempt
  if [[ -e $envfile ]]; then
    log "$envfile exists: stopping the fixture it names first"
    cmd_stop "$envfile"
  fi
  mkdir -p -- "$(dirname -- "$envfile")"

  START_DIR=$(mktemp -d /tmp/keypool-pg.XXXXXX)
  dir=$START_DIR
  : >"$dir/$MARKER"
  mkdir "$dir/sock"
  printf '"%s" "%s"\n' "$APP_USER" "$APP_PASSWORD" "$LIMITED_USER" "$LIMITED_PASSWORD" \
    >"$dir/userlist.txt"
  chmod 600 "$dir/userlist.txt"
  own_dir "$dir"

  as_pg "$PG_BIN/initdb" -D "$dir/data" -U "$ADMIN" --auth=trust --locale=C.UTF-8 -E UTF8 \
    --no-sync --no-instructions >"$dir/initdb.log" 2>&1
  echo "include 'keypool.conf'" >>"$dir/data/postgresql.conf"
  cat >"$dir/data/pg_hba.conf" <<EOF
# TYPE  DATABASE  USER            ADDRESS       METHOD
local   all       $ADMIN                        trust
host    all       $ADMIN          $HOST/32  trust
local   all       $REJECTED_USER                reject
host    all       $REJECTED_USER  $HOST/32  reject
local   all       all                           scram-sha-256
host    all       all             $HOST/32  scram-sha-256
EOF

  # A port can still be taken between the probe and the bind by a process that
  # is not a fixture: retry with the next free port.
  pg_port=$((FIRST_PORT - 1))
  for attempt in 1 2 3 4 5; do
    pg_port=$(reserve_port "$dir" pg $((pg_port + 1)))
    write_pg_config "$dir" "$pg_port"
    own_dir "$dir"
    if pg_ctl_start "$dir"; then break; fi
    if [[ $attempt -eq 5 ]] || ! port_clash_in "$dir/pg.log"; then die "PostgreSQL did not start"; fi
    log "port $pg_port was taken; retrying"
  done
  wait_pg_ready "$dir" "$pg_port"
  setup_sql | pg_psql "" -h "$dir/sock" -p "$pg_port" -U "$ADMIN" -d postgres -f - >/dev/null

  pgb_port=$pg_port
  for attempt in 1 2 3 4 5; do
    pgb_port=$(reserve_port "$dir" pgb $((pgb_port + 1)))
    write_pgbouncer_config "$dir" "$pg_port" "$pgb_port"
    own_dir "$dir"
    if as_pg "$PGBOUNCER" -d "$dir/pgbouncer.ini" && wait_pgb_ready "$dir" "$pgb_port" app; then
      break
    fi
    stop_pgbouncer "$dir"
    if [[ $attempt -eq 5 ]] || ! port_clash_in "$dir/pgbouncer.log"; then die "PgBouncer did not start"; fi
    log "port $pgb_port was taken; retrying"
  done

  ENV_TMP=$(mktemp "$envfile.XXXXXX")
  cat >"$ENV_TMP" <<EOF
KEYPOOL_PG_DIR=$dir
KEYPOOL_PG_SOCKET=$dir/sock
KEYPOOL_PG_HOST=$HOST
KEYPOOL_PG_PORT=$pg_port
KEYPOOL_PGB_PORT=$pgb_port
KEYPOOL_PG_ADMIN=$ADMIN
KEYPOOL_PG_APP_USER=$APP_USER
KEYPOOL_PG_APP_PASSWORD=$APP_PASSWORD
KEYPOOL_PG_LIMITED_USER=$LIMITED_USER
KEYPOOL_PG_LIMITED_PASSWORD=$LIMITED_PASSWORD
KEYPOOL_PG_REJECTED_USER=$REJECTED_USER
EOF
  chmod 644 "$ENV_TMP"
  mv -f -- "$ENV_TMP" "$envfile"
  ENV_TMP=
  START_DIR=
  log "PostgreSQL on $HOST:$pg_port, PgBouncer on $HOST:$pgb_port, in $dir"
}

# ---------------------------------------------------------------- other commands

cmd_stop() {
  local envfile=$1 dir status=0
  [[ -e $envfile ]] || return 0
  dir=$(env_get "$envfile" KEYPOOL_PG_DIR) || dir=
  if [[ -n $dir && -f $dir/$MARKER ]]; then
    stop_pgbouncer "$dir" || status=1
    stop_postgres "$dir" || status=1
    if [[ $status -ne 0 ]]; then
      log "servers in $dir are still running; kept $dir and $envfile"
      return 1
    fi
    rm -rf -- "$dir"
  elif [[ -n $dir && -e $dir ]]; then
    log "$dir is not a pg-fixture directory (no $MARKER): left alone"
  fi
  rm -f -- "$envfile"
}

cmd_pg_stop() {
  stop_postgres "$(fixture_dir "$1")"
}

cmd_pg_start() {
  local dir port pgb_port
  dir=$(fixture_dir "$1")
  port=$(env_get "$1" KEYPOOL_PG_PORT) || die "$1 has no KEYPOOL_PG_PORT"
  if ! alive "$(first_line "$dir/data/postmaster.pid")" postgres "$dir"; then
    pg_ctl_start "$dir" || {
      tail -n 30 "$dir/pg.log" >&2
      die "PostgreSQL did not start"
    }
  fi
  wait_pg_ready "$dir" "$port"
  pgb_port=$(env_get "$1" KEYPOOL_PGB_PORT) || die "$1 has no KEYPOOL_PGB_PORT"
  if alive "$(first_line "$dir/pgbouncer.pid")" pgbouncer "$dir"; then
    # A PgBouncer pool (one per database and user) whose server login failed
    # while PostgreSQL was down fails its next client at once ("server login
    # has been failing") and only then logs in again: do that for kp_app's pools.
    wait_pgb_ready "$dir" "$pgb_port" app acme globex initech
  fi
}

# pg-restart ENVFILE: a fast restart of a running PostgreSQL (every backend is
# terminated), for tests that measure how clients recover. Returns as soon as the
# server accepts connections again (pg_ctl -w reads "ready" from postmaster.pid,
# no client round trip, so a test can time recovery from here). PgBouncer's pools
# are not waited for (a pool whose server login failed meanwhile fast-fails its
# next client): run pg-start afterwards, which then only waits, when the test
# goes through PgBouncer.
cmd_pg_restart() {
  local dir
  dir=$(fixture_dir "$1")
  alive "$(first_line "$dir/data/postmaster.pid")" postgres "$dir" || die "PostgreSQL is not running"
  as_pg "$PG_BIN/pg_ctl" -D "$dir/data" -m fast -w -t 60 -l "$dir/pg.log" restart >/dev/null || {
    tail -n 30 "$dir/pg.log" >&2
    die "PostgreSQL did not restart"
  }
}

# export_env ENVFILE: export ENVFILE's KEYPOOL_* variables, KEYPOOL_PG_ENV (the
# file itself) and the usual libpq variables for the app login over TCP
# (PGHOST, PGPORT, PGUSER, PGPASSWORD), which the examples read.
export_env() {
  local key value
  while IFS='=' read -r key value; do
    if [[ $key =~ ^KEYPOOL_[A-Z_]+$ ]]; then export "$key=$value"; fi
  done <"$1"
  export KEYPOOL_PG_ENV=$1
  export PGHOST=$KEYPOOL_PG_HOST PGPORT=$KEYPOOL_PG_PORT
  export PGUSER=$KEYPOOL_PG_APP_USER PGPASSWORD=$KEYPOOL_PG_APP_PASSWORD
}

# exec ENVFILE -- CMD...: run CMD against an already running fixture.
cmd_exec() {
  local envfile=$1
  shift
  if [[ ${1:-} == -- ]]; then shift; fi
  [[ $# -gt 0 ]] || usage
  fixture_dir "$envfile" >/dev/null
  export_env "$envfile"
  trap - EXIT
  exec "$@"
}

cmd_run() {
  local envfile=$1 status
  shift
  if [[ ${1:-} == -- ]]; then shift; fi
  [[ $# -gt 0 ]] || usage
  RUN_ENVFILE=$envfile   # the EXIT trap stops the fixture from here on
  cmd_start "$envfile"
  export_env "$envfile"
  set +e
  "$@"
  status=$?
  set -e
  exit "$status"   # the EXIT trap stops the fixture
}

# ---------------------------------------------------------------- exit handling

on_exit() {
  local status=$? name
  set +e
  if [[ -n $START_DIR ]]; then
    log "start failed; cleaning up $START_DIR"
    for name in initdb.log pg.log pgbouncer.log; do
      # initdb's output only matters if PostgreSQL never got as far as starting
      [[ $name != initdb.log || ! -e $START_DIR/pg.log ]] || continue
      if [[ -s $START_DIR/$name ]]; then
        echo "---- last 30 lines of $name" >&2
        tail -n 30 "$START_DIR/$name" >&2
      fi
    done
    stop_pgbouncer "$START_DIR"
    stop_postgres "$START_DIR" && rm -rf -- "$START_DIR"
  fi
  [[ -z $ENV_TMP ]] || rm -f -- "$ENV_TMP"
  [[ -z $RUN_ENVFILE ]] || cmd_stop "$RUN_ENVFILE"
  exit "$status"
}
trap on_exit EXIT
trap 'exit 129' HUP
trap 'exit 130' INT
trap 'exit 143' TERM

[[ $# -ge 2 && -n $2 ]] || usage
command=$1
envfile=$2
shift 2
case $command in
  start) [[ $# -eq 0 ]] || usage; cmd_start "$envfile" ;;
  stop) [[ $# -eq 0 ]] || usage; cmd_stop "$envfile" ;;
  pg-stop) [[ $# -eq 0 ]] || usage; cmd_pg_stop "$envfile" ;;
  pg-start) [[ $# -eq 0 ]] || usage; cmd_pg_start "$envfile" ;;
  pg-restart) [[ $# -eq 0 ]] || usage; cmd_pg_restart "$envfile" ;;
  run) cmd_run "$envfile" "$@" ;;
  exec) cmd_exec "$envfile" "$@" ;;
  *) usage ;;
esac
