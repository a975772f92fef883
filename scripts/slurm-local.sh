#!/usr/bin/env bash
# A real single-node Slurm cluster on this machine, for tests and for trying maskvlp's Slurm path.
#
#   scripts/slurm-local.sh start    install (Debian packages, as root) and start munge, MariaDB,
#                                   slurmdbd (accounting, so sacct works), slurmctld and slurmd
#   scripts/slurm-local.sh stop     stop them, by the PIDs recorded at start
#   scripts/slurm-local.sh status   show the daemons and `sinfo`
#
# The MariaDB server also holds a database `optuna` (user optuna, password optuna) for sweeps on an
# RDB storage: --storage 'mysql+pymysql://optuna:optuna@localhost/optuna?unix_socket=/run/mysqld/mysqld.sock'
# (and a user optuna_pw, password m4skvlp-pw-28: a password found nowhere else, for the test that no
# password is ever printed or stored)
#
# One partition `debug` with this machine's cores and memory. No systemd needed; state lives under
# /var/spool/maskvlp-slurm and /run. Works as root only (it installs packages and runs daemons).
set -euo pipefail

STATE=/var/spool/maskvlp-slurm
PIDS="$STATE/pids"
CONF=/etc/slurm
CLUSTER=local
DB_PASS=maskvlp-slurm

die() { echo "slurm-local: $*" >&2; exit 1; }

install_packages() {
  if ! command -v slurmctld >/dev/null || ! command -v slurmdbd >/dev/null || ! command -v mariadbd >/dev/null; then
    echo "slurm-local: installing slurm-wlm, munge, slurmdbd, mariadb-server"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq slurm-wlm munge slurmdbd mariadb-server >/dev/null
  fi
}

wait_for() {  # wait_for "description" command...
  local what=$1; shift
  for _ in $(seq 1 60); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.5
  done
  die "$what did not come up (logs in $STATE)"
}

write_configs() {
  local host cpus mem
  host=$(hostname)
  cpus=$(nproc)
  mem=$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
  mkdir -p "$CONF" "$STATE"/{ctld,d,log}
  cat >"$CONF/slurm.conf" <<EOF
ClusterName=$CLUSTER
SlurmctldHost=$host
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
MpiDefault=none
ReturnToService=2
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
JobAcctGatherType=jobacct_gather/linux
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobCompType=jobcomp/none
SchedulerType=sched/backfill
MinJobAge=300
KillWait=10
# preemption-safe jobs are requeued by submitit; let requeued jobs run again at once
JobRequeue=1
# reject impossible requests at submission (sbatch prints why) instead of leaving them pending forever
EnforcePartLimits=ALL
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
  cat >"$CONF/slurmdbd.conf" <<EOF
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
LogFile=$STATE/log/slurmdbd.log
PidFile=$STATE/slurmdbd.pid
EOF
  chmod 600 "$CONF/slurmdbd.conf"
  rm -f "$CONF/cgroup.conf"  # none: proctrack/linuxproc and task/none need no cgroups
}

start() {
  [ "$(id -u)" = 0 ] || die "run as root (it installs packages and starts daemons)"
  if [ -f "$PIDS" ] && sinfo >/dev/null 2>&1; then echo "slurm-local: already running"; sinfo; return 0; fi
  install_packages
  write_configs
  : >"$PIDS"

  mkdir -p /run/munge && chown munge:munge /run/munge
  [ -f /etc/munge/munge.key ] || { /usr/sbin/mungekey --create 2>/dev/null || /usr/sbin/create-munge-key -f; chown munge:munge /etc/munge/munge.key; }
  su -s /bin/sh munge -c /usr/sbin/munged
  wait_for munged test -S /run/munge/munge.socket.2
  echo "munged $(cat /run/munge/munged.pid)" >>"$PIDS"

  mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld
  [ -d /var/lib/mysql/mysql ] || mariadb-install-db --user=mysql --datadir=/var/lib/mysql >/dev/null
  mariadbd --user=mysql --datadir=/var/lib/mysql --socket=/run/mysqld/mysqld.sock \
    --pid-file=/run/mysqld/mysqld.pid >"$STATE/log/mariadb.log" 2>&1 &
  wait_for mariadb mariadb-admin --socket=/run/mysqld/mysqld.sock ping
  echo "mariadbd $(cat /run/mysqld/mysqld.pid)" >>"$PIDS"
  mariadb --socket=/run/mysqld/mysqld.sock <<EOF
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
CREATE DATABASE IF NOT EXISTS optuna;
CREATE USER IF NOT EXISTS 'optuna'@'localhost' IDENTIFIED BY 'optuna';
GRANT ALL ON optuna.* TO 'optuna'@'localhost';
CREATE USER IF NOT EXISTS 'optuna_pw'@'localhost' IDENTIFIED BY 'm4skvlp-pw-28';
GRANT ALL ON optuna.* TO 'optuna_pw'@'localhost';
FLUSH PRIVILEGES;
EOF

  slurmdbd
  wait_for slurmdbd sacctmgr -n list cluster
  echo "slurmdbd $(cat $STATE/slurmdbd.pid)" >>"$PIDS"
  sacctmgr -i add cluster "$CLUSTER" >/dev/null 2>&1 || true

  slurmctld
  wait_for slurmctld scontrol ping
  echo "slurmctld $(cat $STATE/slurmctld.pid)" >>"$PIDS"
  slurmd
  wait_for slurmd sh -c "sinfo -h -o %T | grep -qE 'idle|mixed|alloc'"
  echo "slurmd $(cat $STATE/slurmd.pid)" >>"$PIDS"
  echo "slurm-local: started (cluster '$CLUSTER', partition 'debug'):"
  sinfo
}

stop() {
  [ -f "$PIDS" ] || { echo "slurm-local: not started by this script"; return 0; }
  # stop in reverse order of start, each by its recorded PID
  tac "$PIDS" | while read -r name pid; do
    if kill -0 "$pid" 2>/dev/null; then
      kill "$pid" && echo "slurm-local: stopped $name ($pid)"
      for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    fi
  done
  rm -f "$PIDS"
}

status() {
  if [ -f "$PIDS" ]; then cat "$PIDS"; fi
  sinfo 2>&1 || true
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
