#!/usr/bin/env bash
# A real single-node Slurm cluster for a Debian machine without systemd (CI, a laptop, a VM):
# munge, MariaDB + slurmdbd (accounting: submitit needs sacct), slurmctld, slurmd, 2 fake GPUs.
#
#   slurm/cluster.sh install   # apt-get the Debian packages (root)
#   slurm/cluster.sh start     # write configs, start every daemon, wait until the node is idle
#   slurm/cluster.sh status
#   slurm/cluster.sh stop      # stop every daemon through its pid file (never by process name)
#   slurm/cluster.sh start|stop|status --two-nodes
#       # a second, separate cluster beside it: two 1-CPU nodes gruvn1, gruvn2 on this machine
#
# --two-nodes: its own slurm.conf ($GRUV_SLURM2_STATE/slurm.conf, default /tmp/gruv-slurm-2n; clients
# find it through SLURM_CONF), ClusterName gruv2n, its own ports, state and pid files. It shares the
# first cluster's munge and slurmdbd, so that one must be up. Its node names resolve through one
# marked /etc/hosts line, which stop removes. The first cluster is never touched.
#
# State lives in $GRUV_SLURM_STATE (default /tmp/gruv-slurm) and is wiped by `start`.
# Configs go to /etc/slurm (where every Slurm client looks). See ../shared/notes/local-slurm.md
# in the project's workspace for why each setting is there.
set -euo pipefail

STATE=${GRUV_SLURM_STATE:-/tmp/gruv-slurm}
ETC=/etc/slurm
HOST=$(hostname -s)
MYSQL_SOCK=/run/mysqld/mysqld.sock
PIDS="$STATE/pids"

log() { echo "[cluster] $*" >&2; }

install() {
  export DEBIAN_FRONTEND=noninteractive
  if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null || ! command -v mariadbd >/dev/null \
     || ! command -v slurmdbd >/dev/null; then
    apt-get update -q
    apt-get install -y -q --no-install-recommends slurm-wlm slurmdbd munge mariadb-server
  fi
}

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
  local t=$1 what=$2; shift 2
  for _ in $(seq $((t * 10))); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  log "timed out waiting for $what"
  return 1
}

pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

common_conf() {  # the slurm.conf settings both clusters share (the notes say why each is there)
  cat <<EOF
SlurmUser=root
AuthType=auth/munge
AuthInfo=cred_expire=5
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1024
SchedulerParameters=sched_interval=2,bf_interval=1
MailProg=/bin/true
KillWait=5
ReturnToService=2
InactiveLimit=0
MinJobAge=300
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
EOF
}

write_configs() {
  local topo mem cpus
  topo=$(slurmd -C | head -1 | tr ' ' '\n' | grep -E '^(CPUs|Boards|SocketsPerBoard|CoresPerSocket|ThreadsPerCore)=' | tr '\n' ' ')
  mem=$(awk '/MemTotal/ {printf "%d", $2 / 1024 * 0.9}' /proc/meminfo)
  mkdir -p "$ETC" "$STATE"/{ctld,spool,log,dev} "$PIDS"
  # Fake GPUs: character devices that alias /dev/null (gres.conf must name device files).
  for i in 0 1; do [ -e "$STATE/dev/fakegpu$i" ] || mknod -m 666 "$STATE/dev/fakegpu$i" c 1 3; done
  cat > "$ETC/slurm.conf" <<EOF
# written by gruv-hpc slurm/cluster.sh
ClusterName=gruvlocal
SlurmctldHost=$HOST(127.0.0.1)
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$PIDS/slurmctld.pid
SlurmdPidFile=$PIDS/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
$(common_conf)
FirstJobId=$(( $(date +%s) % 50000000 + 1000 ))
MaxArraySize=1001

GresTypes=gpu
NodeName=$HOST NodeAddr=127.0.0.1 $topo RealMemory=$mem Gres=gpu:2 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
  cat > "$ETC/gres.conf" <<EOF
Name=gpu File=$STATE/dev/fakegpu[0-1]
EOF
  cat > "$ETC/slurmdbd.conf" <<EOF
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
PidFile=$PIDS/slurmdbd.pid
LogFile=$STATE/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=root
StorageLoc=slurm_acct_db
EOF
  chmod 600 "$ETC/slurmdbd.conf"  # slurmdbd refuses a config others can read
}

start_munge() {
  if [ ! -f /etc/munge/munge.key ]; then
    mkdir -p /etc/munge && mungekey --create && chown munge:munge /etc/munge/munge.key && chmod 600 /etc/munge/munge.key
  fi
  mkdir -p /run/munge /var/log/munge /var/lib/munge
  chown munge:munge /run/munge /var/log/munge /var/lib/munge
  if ! pid_alive /run/munge/munged.pid; then
    runuser -u munge -- /usr/sbin/munged
  fi
  wait_for 10 munge sh -c 'munge -n | unmunge'
}

start_mariadb() {
  local data=$STATE/mysql
  mkdir -p "$data" /run/mysqld
  chown mysql:mysql "$data" /run/mysqld "$STATE/log"
  chmod 777 "$STATE/log"
  if [ ! -d "$data/mysql" ]; then
    mariadb-install-db --user=mysql --datadir="$data" --auth-root-authentication-method=socket >"$STATE/log/mariadb-install.log" 2>&1
  fi
  mariadbd --user=mysql --datadir="$data" --socket="$MYSQL_SOCK" --skip-networking \
    --pid-file="$data/mariadbd.pid" --log-error="$STATE/log/mariadb.log" >/dev/null 2>&1 &
  wait_for 30 mariadb mariadb --socket="$MYSQL_SOCK" -e 'select 1'
}

start() {
  install_check
  if pid_alive "$PIDS/slurmctld.pid"; then log "already running"; return 0; fi
  stop_quiet
  rm -rf "$STATE"
  write_configs
  start_munge
  start_mariadb
  slurmdbd
  wait_for 30 slurmdbd sacctmgr -n list cluster
  slurmctld
  wait_for 30 slurmctld scontrol ping
  slurmd
  wait_for 60 "node idle" sh -c "sinfo -h -N -o '%t' | grep -qE '^idle'"
  log "up: $(sinfo -h -N -o '%N %t %c CPUs %m MB %G')"
}

install_check() {
  for b in slurmctld slurmd slurmdbd munged mariadbd; do
    command -v "$b" >/dev/null || { log "$b missing: run '$0 install' first"; exit 1; }
  done
}

stop_pidfile() {  # stop_pidfile FILE NAME
  local f=$1
  if pid_alive "$f"; then
    local pid; pid=$(cat "$f")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$f"
}

stop_quiet() {
  stop_pidfile "$PIDS/slurmd.pid"
  stop_pidfile "$PIDS/slurmctld.pid"
  stop_pidfile "$PIDS/slurmdbd.pid"
  stop_pidfile "$STATE/mysql/mariadbd.pid"
  stop_pidfile /run/munge/munged.pid
}

stop() {
  stop_quiet
  log "stopped"
}

status() {
  for d in munged:/run/munge/munged.pid mariadbd:$STATE/mysql/mariadbd.pid slurmdbd:$PIDS/slurmdbd.pid \
           slurmctld:$PIDS/slurmctld.pid slurmd:$PIDS/slurmd.pid; do
    if pid_alive "${d#*:}"; then echo "${d%%:*}: running (pid $(cat "${d#*:}"))"; else echo "${d%%:*}: stopped"; fi
  done
  pid_alive "$PIDS/slurmctld.pid" && sinfo -N -o '%N %t %c %m %G' || true
}

# ---- --two-nodes: a second cluster beside the first ----------------------------------------------
STATE2=${GRUV_SLURM2_STATE:-/tmp/gruv-slurm-2n}
CONF2=$STATE2/slurm.conf
HOSTS_MARK="# gruv-hpc slurm/cluster.sh --two-nodes"
NODES2="gruvn1 gruvn2"

hosts_remove() {  # rewrite in place: /etc/hosts may be a bind mount, which a rename would break
  if grep -qF "$HOSTS_MARK" /etc/hosts; then
    local kept; kept=$(grep -vF "$HOSTS_MARK" /etc/hosts)
    printf '%s\n' "$kept" > /etc/hosts
  fi
}

write_configs2() {
  mkdir -p "$STATE2"/{ctld,log,pids}
  cat > "$CONF2" <<EOF
# written by gruv-hpc slurm/cluster.sh --two-nodes
ClusterName=gruv2n
SlurmctldHost=$HOST(127.0.0.1)
SlurmctldPort=17000
StateSaveLocation=$STATE2/ctld
SlurmdSpoolDir=$STATE2/spool.%n
SlurmctldPidFile=$STATE2/pids/slurmctld.pid
SlurmdPidFile=$STATE2/pids/slurmd.%n.pid
SlurmctldLogFile=$STATE2/log/slurmctld.log
SlurmdLogFile=$STATE2/log/slurmd.%n.log
$(common_conf)
# job ids 10000 above the first cluster's: rendezvous ports (20000 + id % 20000) apart from its
FirstJobId=$(( $(date +%s) % 50000000 + 11000 ))

NodeName=gruvn1 NodeHostname=$HOST NodeAddr=127.0.0.1 Port=17001 CPUs=1 RealMemory=2000 State=UNKNOWN
NodeName=gruvn2 NodeHostname=$HOST NodeAddr=127.0.0.1 Port=17002 CPUs=1 RealMemory=2000 State=UNKNOWN
PartitionName=two Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
}

start2() {
  install_check
  if pid_alive "$STATE2/pids/slurmctld.pid"; then log "two-node cluster already running"; return 0; fi
  if ! pid_alive "$PIDS/slurmdbd.pid" || ! pid_alive /run/munge/munged.pid; then
    log "the two-node cluster uses the first cluster's munge and slurmdbd: run '$0 start' first"
    exit 1
  fi
  stop2_quiet
  rm -rf "$STATE2"
  write_configs2
  printf '127.0.0.1 gruvn1 gruvn2 %s\n' "$HOSTS_MARK" >> /etc/hosts
  export SLURM_CONF=$CONF2
  slurmctld
  wait_for 30 "slurmctld (two nodes)" scontrol ping
  for n in $NODES2; do slurmd -N "$n"; done
  wait_for 60 "both nodes idle" sh -c "[ \$(sinfo -h -N -t idle -o '%N' | sort -u | wc -l) = 2 ]"
  log "two-node cluster up (SLURM_CONF=$CONF2): $(sinfo -h -N -o '%N %t %c CPUs %m MB' | tr '\n' ' ')"
}

stop2_quiet() {
  for n in $NODES2; do stop_pidfile "$STATE2/pids/slurmd.$n.pid"; done
  stop_pidfile "$STATE2/pids/slurmctld.pid"
  hosts_remove
}

status2() {
  for n in slurmctld slurmd.gruvn1 slurmd.gruvn2; do
    local f=$STATE2/pids/$n.pid
    if pid_alive "$f"; then echo "$n: running (pid $(cat "$f"))"; else echo "$n: stopped"; fi
  done
  if pid_alive "$STATE2/pids/slurmctld.pid"; then SLURM_CONF=$CONF2 sinfo -N -o '%N %t %c %m'; fi
}

if [ "${2:-}" = --two-nodes ]; then
  case "${1:-}" in
    start) start2 ;;
    stop) stop2_quiet; log "two-node cluster stopped" ;;
    status) status2 ;;
    *) echo "usage: $0 start|stop|status --two-nodes" >&2; exit 2 ;;
  esac
  exit 0
fi

case "${1:-}" in
  install) install ;;
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 install|start|stop|status [--two-nodes]" >&2; exit 2 ;;
esac
