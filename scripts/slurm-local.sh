#!/usr/bin/env bash
# A real Slurm cluster on this machine, for tests and for trying maskvlp's Slurm path.
#
#   scripts/slurm-local.sh start    install (Debian packages, as root) and start munge, MariaDB,
#                                   slurmdbd (accounting, so sacct works), slurmctld and slurmd
#   scripts/slurm-local.sh start --nodes N
#                                   the same, plus N compute nodes node1..nodeN (N >= 2) in partition
#                                   `multi`: each a slurmd in its own network and UTS namespace (its own
#                                   address on a bridge, its own hostname), pinned to a share of the cores
#   scripts/slurm-local.sh stop     stop them, by the PIDs recorded at start, and remove every namespace,
#                                   link and file that start made for the nodes
#   scripts/slurm-local.sh status   show the daemons and `sinfo`
#   scripts/slurm-local.sh kill-node NAME     kill every process of a namespaced node at once (it dies)
#   scripts/slurm-local.sh revive-node NAME   start its slurmd again (the node comes back)
#
# The MariaDB server also holds a database `optuna` (user optuna, password optuna) for sweeps on an
# RDB storage: --storage 'mysql+pymysql://optuna:optuna@localhost/optuna?unix_socket=/run/mysqld/mysqld.sock'
# (and a user optuna_pw, password m4skvlp-pw-28: a password found nowhere else, for the test that no
# password is ever printed or stored)
#
# Partition `debug` has one node, this machine (named as `hostname` prints), with all its cores and
# memory. With --nodes N, partition `multi` holds node1..nodeN: nodeK lives in network namespace
# mvlp-nodeK with address 10.199.77.(10+K) on the bridge mvlp-br (this machine is 10.199.77.1 there, where
# slurmctld answers), hostname nodeK, 1 CPU (core (K-1) mod nproc) and a share of the memory. The nodes
# share this machine's files (as a cluster shares its filesystem) and talk only over that bridge. No
# systemd needed; state lives under /var/spool/maskvlp-slurm and /run. Root only (it installs packages,
# runs daemons and makes namespaces). docs/multinode.md says what this tests and what it cannot.
set -euo pipefail

STATE=/var/spool/maskvlp-slurm
PIDS="$STATE/pids"
CONF=/etc/slurm
CLUSTER=local
DB_PASS=maskvlp-slurm
NET=10.199.77             # the namespaced nodes' /24: the bridge is .1, nodeK is .(10+K)
BRIDGE=mvlp-br
NET_RECORD="$STATE/net"   # what make_nodes made, one line each (kind, name), removed in reverse by stop
NODES_FILE="$STATE/nodes" # one line per namespaced node: name, namespace, address, core

die() { echo "slurm-local: $*" >&2; exit 1; }

install_packages() {
  if ! command -v slurmctld >/dev/null || ! command -v slurmdbd >/dev/null || ! command -v mariadbd >/dev/null; then
    echo "slurm-local: installing slurm-wlm, munge, slurmdbd, mariadb-server"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq slurm-wlm munge slurmdbd mariadb-server >/dev/null
  fi
  if ! command -v ip >/dev/null || ! command -v nsenter >/dev/null; then  # --nodes: namespaces and links
    echo "slurm-local: installing iproute2, util-linux"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iproute2 util-linux >/dev/null
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

write_configs() {  # write_configs N: the configs, with N namespaced nodes (0: none)
  local nodes=$1 host cpus mem k ctld
  host=$(hostname)
  cpus=$(nproc)
  mem=$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
  ctld=$host
  [ "$nodes" -gt 0 ] && ctld="$host($NET.1)"  # the nodes reach the controller on the bridge
  mkdir -p "$CONF" "$STATE"/{ctld,d,log}
  cat >"$CONF/slurm.conf" <<EOF
ClusterName=$CLUSTER
SlurmctldHost=$ctld
AuthType=auth/munge
# a requeued job waits this long (default 120 s) before it may start again; a job step's credential lives as long
AuthInfo=cred_expire=15
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
MpiDefault=none
ReturnToService=2
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d/%n
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd-%n.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd-%n.log
JobAcctGatherType=jobacct_gather/linux
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobCompType=jobcomp/none
SchedulerType=sched/backfill
# ... and then waits for the next periodic scheduling pass (default every 60 s): run one every 2 s
SchedulerParameters=sched_interval=2
MinJobAge=300
KillWait=10
# a node silent this long is DOWN: its jobs end NODE_FAIL and, being requeueable, are requeued
SlurmdTimeout=30
# preemption-safe jobs are requeued by submitit; let requeued jobs run again at once
JobRequeue=1
# reject impossible requests at submission (sbatch prints why) instead of leaving them pending forever
EnforcePartLimits=ALL
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
  if [ "$nodes" -gt 0 ]; then
    for k in $(seq 1 "$nodes"); do
      echo "NodeName=node$k NodeAddr=$NET.$((10 + k)) NodeHostname=node$k CPUs=1 RealMemory=$((mem / nodes)) State=UNKNOWN"
    done >>"$CONF/slurm.conf"
    echo "PartitionName=multi Nodes=node[1-$nodes] MaxTime=INFINITE State=UP OverSubscribe=NO" >>"$CONF/slurm.conf"
  fi
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

make_nodes() {  # make_nodes N: the bridge, then per node a namespace, a veth pair and a hosts file
  local nodes=$1 k ns hosts
  ip link add "$BRIDGE" type bridge
  echo "link $BRIDGE" >>"$NET_RECORD"
  ip addr add "$NET.1/24" dev "$BRIDGE"
  ip link set "$BRIDGE" up
  hosts="127.0.0.1 localhost"$'\n'"$NET.1 $(hostname)"
  for k in $(seq 1 "$nodes"); do hosts+=$'\n'"$NET.$((10 + k)) node$k"; done
  : >"$NODES_FILE"
  for k in $(seq 1 "$nodes"); do
    ns=mvlp-node$k
    ip netns add "$ns"
    echo "netns $ns" >>"$NET_RECORD"
    ip link add "mvlp-v$k" type veth peer name eth0 netns "$ns"
    ip link set "mvlp-v$k" master "$BRIDGE" up
    ip -n "$ns" addr add "$NET.$((10 + k))/24" dev eth0
    ip -n "$ns" link set eth0 up
    ip -n "$ns" link set lo up
    mkdir -p "/etc/netns/$ns"  # its /etc/hosts (start_node mounts it; `ip netns exec` would too)
    echo "etc /etc/netns/$ns" >>"$NET_RECORD"
    echo "$hosts" >"/etc/netns/$ns/hosts"
    echo "node$k $ns $NET.$((10 + k)) $(((k - 1) % $(nproc)))" >>"$NODES_FILE"
  done
}

start_node() {  # start_node NAME: its slurmd inside its namespaces, pinned to its core
  local name ns addr core
  read -r name ns addr core < <(awk -v n="$1" '$1 == n' "$NODES_FILE" 2>/dev/null) || true
  [ -n "${ns:-}" ] || die "no namespaced node '$1' (the nodes are in $NODES_FILE)"
  rm -f "$STATE/slurmd-$name.pid"
  # its own hostname (UTS namespace) and hosts file (mount namespace), then its network namespace; not
  # `ip netns exec`, whose fresh /sys would hide the cgroup mounts slurmd needs
  unshare --uts --mount --propagation private sh -c \
    'mount --bind "/etc/netns/$2/hosts" /etc/hosts && hostname "$1" && exec nsenter --net="/run/netns/$2" taskset -c "$3" slurmd' \
    _ "$name" "$ns" "$core"
  wait_for "slurmd of $name" test -s "$STATE/slurmd-$name.pid"
  echo "slurmd-$name $(cat "$STATE/slurmd-$name.pid")" >>"$PIDS"
}

kill_node() {  # kill_node NAME: every process in its network namespace, at once (the node dies)
  local ns
  ns=$(awk -v n="$1" '$1 == n {print $2}' "$NODES_FILE" 2>/dev/null || true)
  [ -n "$ns" ] || die "no namespaced node '$1' (the nodes are in $NODES_FILE)"
  ip netns pids "$ns" | xargs -r kill -9
  echo "slurm-local: killed every process of $1 ($ns)"
}

remove_nodes() {  # everything make_nodes made, from its record, in reverse
  [ -f "$NET_RECORD" ] || return 0
  tac "$NET_RECORD" | while read -r kind name; do
    case $kind in
      netns)
        ip netns pids "$name" 2>/dev/null | xargs -r kill -9
        ip netns delete "$name" 2>/dev/null && echo "slurm-local: removed namespace $name" ;;
      link) ip link delete "$name" 2>/dev/null && echo "slurm-local: removed bridge $name" ;;
      etc) rm -rf "$name" ;;
    esac
  done
  rm -f "$NET_RECORD" "$NODES_FILE"
}

start() {
  [ "$(id -u)" = 0 ] || die "run as root (it installs packages and starts daemons)"
  local nodes=0 have
  if [ "${1:-}" = --nodes ]; then
    nodes=${2:-}
    [[ "$nodes" =~ ^[0-9]+$ ]] && [ "$nodes" -ge 2 ] || die "--nodes N needs a whole number N >= 2 (got '${2:-}')"
  elif [ -n "${1:-}" ]; then
    die "unknown option '$1' (usage: $0 start [--nodes N])"
  fi
  if [ -f "$PIDS" ] && sinfo >/dev/null 2>&1; then
    have=$(sinfo -h -p multi -o %D 2>/dev/null || true)
    if [ "${have:-0}" = "$nodes" ]; then echo "slurm-local: already running"; sinfo; return 0; fi
    die "already running with ${have:-0} namespaced nodes, not $nodes: run '$0 stop' first"
  fi
  install_packages
  mkdir -p "$STATE"
  remove_nodes  # a previous start's namespaces, if they outlived their daemons
  write_configs "$nodes"
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

  if [ "$nodes" -gt 0 ]; then make_nodes "$nodes"; fi  # the bridge's address first: slurmctld listens there
  slurmctld
  wait_for slurmctld scontrol ping
  echo "slurmctld $(cat $STATE/slurmctld.pid)" >>"$PIDS"
  slurmd
  wait_for slurmd sh -c "sinfo -h -p debug -o %T | grep -qE 'idle|mixed|alloc'"
  echo "slurmd $(cat "$STATE/slurmd-$(hostname).pid")" >>"$PIDS"
  if [ "$nodes" -gt 0 ]; then
    for k in $(seq 1 "$nodes"); do start_node "node$k"; done
    wait_for "the $nodes namespaced nodes" sh -c "[ \"\$(sinfo -h -p multi -t idle -o %D)\" = $nodes ]"
  fi
  echo "slurm-local: started (cluster '$CLUSTER', partition 'debug'$([ "$nodes" -gt 0 ] && echo ", partition 'multi' of $nodes nodes" || true)):"
  sinfo
}

stop() {
  if [ -f "$PIDS" ]; then
    # stop in reverse order of start, each by its recorded PID
    tac "$PIDS" | while read -r name pid; do
      if kill -0 "$pid" 2>/dev/null; then
        kill "$pid" && echo "slurm-local: stopped $name ($pid)"
        for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
      fi
    done
    rm -f "$PIDS"
  else
    echo "slurm-local: no daemons started by this script"
  fi
  remove_nodes
}

status() {
  if [ -f "$PIDS" ]; then cat "$PIDS"; fi
  if [ -f "$NODES_FILE" ]; then echo "namespaced nodes (name, namespace, address, core):"; cat "$NODES_FILE"; fi
  sinfo 2>&1 || true
}

case "${1:-}" in
  start) shift; start "$@" ;;
  stop) stop ;;
  status) status ;;
  kill-node) kill_node "${2:?usage: $0 kill-node NAME}" ;;
  revive-node) start_node "${2:?usage: $0 revive-node NAME}" ;;
  *) echo "usage: $0 start [--nodes N] | stop | status | kill-node NAME | revive-node NAME" >&2; exit 2 ;;
esac
