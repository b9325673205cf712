#!/usr/bin/env bash
# Throw-away Slurm cluster on this one machine, for tests (a ctest fixture).
#
#   scripts/slurm/test-cluster.sh start DIR [--nodes N] [--cpus C] [--timeout S] [--proctrack pgid|linuxproc]
#   scripts/slurm/test-cluster.sh stop DIR
#   scripts/slurm/test-cluster.sh env DIR
#
# start  makes DIR (give a fresh, short path such as `mktemp -d`: unix socket paths under it must
#        fit in 108 bytes) holding slurm.conf, a munge key, state/, spool/, run/ (our pid files)
#        and log/; starts a private munged, slurmctld and N slurmd daemons in the background (no
#        systemd); waits until sinfo shows every node idle (--timeout, default 30 s; it takes
#        about 1 s); then prints on stdout what a client needs, for
#            eval "$(scripts/slurm/test-cluster.sh start "$dir")"
#        that is one line, `export SLURM_CONF=DIR/slurm.conf` (the munge socket is named in
#        slurm.conf's AuthInfo, so nothing else). Messages go to stderr.
# stop   cancels the cluster's jobs, kills the daemons it started (pids in DIR/run, checked
#        against a marker in their environment), their slurmstepd processes and descendants.
#        Idempotent, always exits 0; leaves DIR and its logs for the caller to delete.
# env    prints the export line again.
#
# Exit codes: 0 success. 77 = "cannot run Slurm here": packages missing, not root, a daemon died
# or the nodes did not become idle in time; the reason and the last lines of the daemons' output
# are on stderr, the half-started cluster is stopped, and a test should SKIP with that reason
# (ctest: SKIP_RETURN_CODE 77). 2 = wrong usage (also: DIR too long, a cluster already runs there).
#
# Needs the Debian 12 packages slurmctld slurmd slurm-client munge, and root (CI runs as root):
# slurmd must be root, and SlurmUser/SlurmdUser are root so no slurm account is needed. Jobs run
# as the user who submits them.
#
# Nodes are named n1..nN on this host. Default: one node n1 with all the machine's CPUs, in the
# layout `slurmd -C` reports. --nodes N starts N slurmd daemons (Debian's Slurm 22.05 is built with
# MULTIPLE_SLURMD: `slurmd -N nI` with its own Port), each with C CPUs (--cpus, default 1). Every
# node is given the machine's real layout, and CpuSpecList reserves the CPUs that are not its share,
# so n1 owns CPU 0, n2 CPU 1, ... and task/affinity binds tasks on different nodes to different
# CPUs. If N x C exceeds the machine's CPUs, nodes get a plain layout and their CPU ids overlap
# (a note says so); if C alone does, TaskPlugin is task/none (task/affinity cannot lay out more
# tasks than real CPUs), so tasks are not bound. sinfo's CPUS column shows the node's total (CPUTot); the usable count is
# CPUEfctv in `scontrol show node`.
#
# Why the unusual settings:
#   private munged      its socket and key in DIR (AuthInfo=socket=...): independent of a system
#                       munge (absent in containers, or with another key). --force because DIR
#                       (0700 from mktemp) is not world-executable, which munged otherwise refuses.
#   ports               SlurmctldPort and one Port per node, picked at random in 20000-59999 among
#                       those not listening: two fixtures, or a system Slurm on 6817/6818, coexist.
#   NodeAddr=127.0.0.1  names n1.. need not resolve; NodeHostname=`hostname -s` lets slurmd -N find
#                       its node; SlurmctldHost must be `hostname -s` (slurmctld checks it).
#   proctrack/pgid      (default; --proctrack linuxproc to compare) no cgroups needed (proctrack/
#                       cgroup fails in containers: "cgroup namespace 'freezer' not mounted").
#                       linuxproc tracks the process tree, and leaks processes for good: scancel
#                       sends SIGTERM to the batch shell (sbatch --wrap runs /bin/sh), which dies,
#                       its children are re-parented to init and never get the SIGKILL. pgid kills
#                       the whole process group (a job that calls setsid() still escapes).
#   task/affinity       binds each task to its CPUs with sched_setaffinity, without cgroups: srun
#                       -n 2 gives Cpus_allowed_list 0 and 1, a batch job its allocated CPU(s).
#   select/cons_tres + CR_CPU
#                       one CPU per task: several single-CPU jobs or array tasks run at once;
#                       memory is not a consumable resource (RealMemory is left at 1 MB).
#   SlurmdParameters=config_overrides
#                       a node may claim more CPUs than the machine has (--cpus) without DRAIN.
#   accounting_storage/none, jobcomp/none, jobacct_gather/none
#                       no slurmdbd: sacct fails ("Slurm accounting storage is disabled", exit 1);
#                       `scontrol show job ID` keeps a finished job's state and ExitCode for
#                       MinJobAge=300 s (purged some time after that).
#   KillWait=2          scancel: SIGCONT+SIGTERM at once, SIGKILL later; slurmd waits at least 5 s
#                       whatever KillWait says (measured: SIGKILL 4.7 s after scancel).
#   ReturnToService=2   a node that was DOWN (daemon restarted, timed out) comes back by itself.
#   SchedulerParameters=sched_interval=1,bf_interval=1
#                       pending jobs and array tasks start within a second (defaults 60 s/30 s).
#   MailProg=/bin/true  Debian has no /usr/bin/mail by default; slurmctld complains otherwise.
# The "mpi/pmix ... can not load PMIx library" errors in the logs are harmless (MpiDefault=none).
set -euo pipefail

prog=${0##*/}
die_usage() { echo "usage: $prog start DIR [--nodes N] [--cpus C] [--timeout S] [--proctrack pgid|linuxproc] | stop DIR | env DIR" >&2; exit 2; }
say() { echo "$prog: $*" >&2; }

action=${1:-}
dir=${2:-}
if [ -z "$action" ] || [ -z "$dir" ]; then die_usage; fi
shift 2

# The daemons started here carry this variable, so stop can check that a recorded pid is still
# ours; it is never given to clients or jobs. Their slurmstepd processes do not inherit it (slurmd
# starts them with an environment of its own); they are recognised by name and by
# SLURM_CONF=DIR/slurm.conf in their environment.
marker_var=PLEXUS_SLURM_FIXTURE

# Alive and not a zombie (our daemons' parent is init, which may reap them late).
pid_alive() {
  local stat
  [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null || return 1
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) }
  [ "${stat:0:1}" != Z ]
}

# Prints "pid ppid pgid" for every process; "stepd" after those that are this cluster's
# slurmstepd, "daemon" after those carrying the marker. (Builtins only, but for the few processes
# named slurm*/munged: it runs often while stop waits.)
process_table() {
  local d=$1 p stat comm fields kind
  for p in /proc/[0-9]*; do
    p=${p#/proc/}
    [ "$p" = "$$" ] && continue
    { read -r stat <"/proc/$p/stat"; } 2>/dev/null || continue
    comm=${stat#*(}
    comm=${comm%)*}
    read -r -a fields <<<"${stat##*) }"   # state ppid pgrp ...
    kind=""
    case "$comm" in
      slurmstepd) grep -qzxF -- "SLURM_CONF=$d/slurm.conf" "/proc/$p/environ" 2>/dev/null && kind=stepd ;;
      slurm* | munged | setsid | env) grep -qzxF -- "$marker_var=$d" "/proc/$p/environ" 2>/dev/null && kind=daemon ;;
    esac
    echo "$p ${fields[1]} ${fields[2]} $kind"
  done
}

# Prints the pids of this cluster's job processes: the descendants of its slurmstepd processes and
# every member of their process groups (a task whose parent died is re-parented to init but keeps
# its group); with "all", also the slurmstepd and daemon processes themselves.
cluster_pids() {
  local d=$1 which=${2:-jobs} p ppid pgid kind changed=1
  local -A parent=() group=() ours=() stepd=() groups=()
  while read -r p ppid pgid kind; do
    parent[$p]=$ppid
    group[$p]=$pgid
    case "$kind" in
      stepd) stepd[$p]=1; ours[$p]=1 ;;
      daemon) [ "$which" = all ] && ours[$p]=1 ;;
    esac
  done < <(process_table "$d")
  ((${#stepd[@]})) || { [ "$which" = all ] && echo "${!ours[@]}"; return 0; }
  while ((changed)); do
    changed=0
    for p in "${!parent[@]}"; do
      [ -n "${ours[$p]:-}" ] && continue
      if [ -n "${ours[${parent[$p]}]:-}" ]; then ours[$p]=1; changed=1; fi
    done
  done
  for p in "${!ours[@]}"; do
    [ -n "${stepd[$p]:-}" ] || groups[${group[$p]}]=1
  done
  # Never the group of this script or of its caller.
  unset "groups[${group[$PPID]:-x}]" "groups[$(ps -o pgid= -p $$ | tr -d ' ')]" "groups[0]" "groups[1]"
  for p in "${!group[@]}"; do
    [ -n "${groups[${group[$p]}]:-}" ] && [ -z "${stepd[$p]:-}" ] && ours[$p]=1
  done
  if [ "$which" != all ]; then
    for p in "${!stepd[@]}"; do unset "ours[$p]"; done
  fi
  unset "ours[$$]" "ours[1]"
  echo "${!ours[@]}"
}

print_env() { echo "export SLURM_CONF=$1/slurm.conf"; }

stop_cluster() {
  local d f pid pids i
  d=$(realpath -m -- "$1")
  # 1. Cancel all jobs (pending array tasks must not start in the CPUs freed next), then SIGKILL
  #    their processes at once rather than wait for slurmd's (5 s later).
  local ctld_pid=""
  [ -f "$d/run/slurmctld.pid" ] && ctld_pid=$(cat "$d/run/slurmctld.pid")
  if pid_alive "$ctld_pid" && [ -f "$d/slurm.conf" ]; then
    local jobs
    jobs=$(SLURM_CONF=$d/slurm.conf timeout 10 squeue -h -o %A 2>/dev/null | sort -u | tr '\n' ' ') || jobs=""
    if [ -n "${jobs// /}" ]; then
      # shellcheck disable=SC2086  # word splitting of the job id list is intended
      SLURM_CONF=$d/slurm.conf timeout 10 scancel $jobs 2>/dev/null || true
    fi
  fi
  read -r -a pids <<<"$(cluster_pids "$d" jobs)"
  if ((${#pids[@]})); then kill -KILL "${pids[@]}" 2>/dev/null || true; fi
  # 2. The daemons: TERM, then KILL what is left after 2 s (slurmd does not exit while a job
  #    termination it handles waits out its 5 s before SIGKILL; nothing here needs a clean exit).
  pids=()
  for f in "$d"/run/slurmd-*.pid "$d/run/slurmctld.pid" "$d/run/munged.pid"; do
    [ -f "$f" ] || continue
    pid=$(cat "$f")
    if pid_alive "$pid" && grep -qzxF -- "$marker_var=$d" "/proc/$pid/environ" 2>/dev/null; then
      kill -TERM "$pid" 2>/dev/null || true
      pids+=("$pid")
    fi
    rm -f "$f"
  done
  for ((i = 0; i < 20; i++)); do
    local left=()
    for pid in "${pids[@]}"; do pid_alive "$pid" && left+=("$pid"); done
    pids=("${left[@]}")
    ((${#pids[@]})) || break
    sleep 0.1
  done
  if ((${#pids[@]})); then kill -KILL "${pids[@]}" 2>/dev/null || true; fi
  # 3. Whatever is left: slurmstepd processes, their tasks, a daemon's children (slurmscriptd).
  for ((i = 0; i < 3; i++)); do
    read -r -a pids <<<"$(cluster_pids "$d" all)"
    ((${#pids[@]})) || break
    kill -KILL "${pids[@]}" 2>/dev/null || true
    sleep 0.2
  done
  return 0
}

# Ports: the listening TCP ports from /proc/net/tcp{,6} (hex, state 0A = LISTEN).
listening_ports() {
  local _sl addr _rem st _rest
  cat /proc/net/tcp /proc/net/tcp6 2>/dev/null |
    while read -r _sl addr _rem st _rest; do
      [ "$st" = 0A ] && echo $((16#${addr##*:}))
    done | sort -un
}
# A base port p such that p .. p+$1-1 are all free, from 20000..59999.
pick_ports() {
  local n=$1 busy base k ok try
  busy=" $(listening_ports | tr '\n' ' ') "
  for ((try = 0; try < 200; try++)); do
    base=$((20000 + (RANDOM * 32768 + RANDOM) % 40000))
    ok=1
    for ((k = 0; k < n; k++)); do
      case "$busy" in *" $((base + k)) "*) ok=0; break ;; esac
    done
    ((ok)) && { echo "$base"; return 0; }
  done
  return 1
}

# The daemons' stderr (DIR/log/*.out: the same lines as their log files, and also what they said
# before opening those).
show_logs() {
  local d=$1 f
  for f in "$d"/log/*.out; do
    [ -s "$f" ] || continue
    echo "---- last lines of $f:" >&2
    tail -n 15 "$f" >&2
  done
}

# Cannot start: say why, show the logs, clean up, exit 77.
fail() {
  say "cannot start a Slurm cluster here: $*"
  [ -n "${dir:-}" ] && [ -d "$dir/log" ] && show_logs "$dir"
  [ -n "${dir:-}" ] && stop_cluster "$dir"
  exit 77
}

# Starts "$@" detached (own session, no inherited stdin/stdout: a caller's $(...) or ctest does not
# wait for it; working directory DIR, so it does not pin the caller's), with the marker in its
# environment; logs to $out; records the pid in $pidfile.
launch() {
  local out=$1 pidfile=$2
  shift 2
  (cd "$dir" && exec env "$marker_var=$dir" SLURM_CONF="$dir/slurm.conf" setsid "$@") </dev/null >"$out" 2>&1 &
  echo $! >"$pidfile"
}

start_cluster() {
  local nodes=1 cpus="" timeout=30 proctrack=pgid
  while (($#)); do
    case "$1" in
      --nodes) nodes=${2:-}; shift 2 || die_usage ;;
      --cpus) cpus=${2:-}; shift 2 || die_usage ;;
      --timeout) timeout=${2:-}; shift 2 || die_usage ;;
      --proctrack) proctrack=${2:-}; shift 2 || die_usage ;;
      *) die_usage ;;
    esac
  done
  [[ "$nodes" =~ ^[1-9][0-9]*$ && "$timeout" =~ ^[1-9][0-9]*$ ]] || die_usage
  [[ -z "$cpus" || "$cpus" =~ ^[1-9][0-9]*$ ]] || die_usage
  [[ "$proctrack" =~ ^(pgid|linuxproc)$ ]] || die_usage

  local missing=() c
  for c in munged munge slurmctld slurmd sinfo srun sbatch squeue scancel scontrol setsid; do
    command -v "$c" >/dev/null || missing+=("$c")
  done
  ((${#missing[@]} == 0)) || fail "missing commands: ${missing[*]} (apt-get install slurmctld slurmd slurm-client munge)"
  [ "$(id -u)" -eq 0 ] || fail "must run as root (slurmd starts jobs as their user)"

  dir=$(realpath -m -- "$dir")
  # Unix sockets (munge's, slurmstepd's DIR/spool/nX/nX_JOBID.STEP) must fit in 108 bytes.
  ((${#dir} <= 64)) || { say "DIR path too long for unix sockets (${#dir} > 64 chars): $dir"; exit 2; }
  mkdir -p "$dir"
  local f
  for f in "$dir"/run/*.pid; do
    [ -f "$f" ] && pid_alive "$(cat "$f")" && { say "a cluster already runs in $dir: stop it first"; exit 2; }
  done
  rm -rf "$dir/state" "$dir/spool" "$dir/run" "$dir/log" "$dir/munge"
  mkdir -p "$dir/state" "$dir/spool" "$dir/run" "$dir/log" "$dir/munge"
  chmod 0700 "$dir/munge"

  local host
  host=$(hostname -s)
  # The machine's layout, e.g. "CPUs=2 Boards=1 SocketsPerBoard=1 CoresPerSocket=2 ThreadsPerCore=1".
  # Nodes get it, so that task/affinity's masks name real CPUs; each node's share is then set with
  # CpuSpecList (the CPUs it must not use): with --nodes 2, n1 uses CPU 0 and n2 CPU 1, not both 0.
  # When the shares do not fit (nodes x cpus > machine CPUs), each node gets a plain layout of its
  # own CPUs and the nodes' CPU ids overlap (tasks on different nodes may be bound to the same CPU).
  local hw layout hw_cpus node_lines=() i
  hw=$(slurmd -C 2>/dev/null | head -n 1) || hw=""
  layout=$(grep -oE '(CPUs|Boards|SocketsPerBoard|CoresPerSocket|ThreadsPerCore)=[0-9]+' <<<"$hw" | tr '\n' ' ') || layout=""
  hw_cpus=$(sed -n 's/.*CPUs=\([0-9]*\).*/\1/p' <<<"$layout")
  [[ "$layout" == *CoresPerSocket=* && -n "$hw_cpus" ]] || { layout=""; hw_cpus=$(nproc); }
  if [ -z "$cpus" ]; then
    if ((nodes == 1)); then cpus=$hw_cpus; else cpus=1; fi
  fi
  local share="" task_plugin=task/affinity
  if ((cpus > hw_cpus)); then
    # task/affinity cannot lay out more tasks than real CPUs ("Unable to layout tasks").
    task_plugin=task/none
    say "note: $cpus CPUs per node > $hw_cpus CPUs here: TaskPlugin=task/none, tasks are not bound to CPUs"
  elif [ -n "$layout" ] && ((nodes * cpus <= hw_cpus)); then
    share=1
  elif ((nodes * cpus > hw_cpus)); then
    say "note: $nodes nodes x $cpus CPU(s) > $hw_cpus CPUs here: the nodes' CPU ids overlap, so do affinity masks"
  fi
  local spec c specs
  for ((i = 1; i <= nodes; i++)); do
    if [ -n "$share" ]; then
      spec=()
      for ((c = 0; c < hw_cpus; c++)); do
        ((c >= (i - 1) * cpus && c < i * cpus)) || spec+=("$c")
      done
      specs=""
      ((${#spec[@]})) && specs="CpuSpecList=$(IFS=,; echo "${spec[*]}") "
      node_lines+=("${layout}${specs}")
    else
      node_lines+=("CPUs=$cpus Boards=1 SocketsPerBoard=1 CoresPerSocket=$cpus ThreadsPerCore=1 ")
    fi
  done

  local base
  base=$(pick_ports $((nodes + 1))) || fail "no free TCP port range above 20000"
  local ctld_port=$base

  # Munge: a private key and daemon.
  head -c 1024 /dev/urandom >"$dir/munge/munge.key"
  chmod 0600 "$dir/munge/munge.key"
  local sock=$dir/munge/munge.socket.2
  launch "$dir/log/munged.out" "$dir/run/munged.pid" \
    munged --foreground --force --socket="$sock" --key-file="$dir/munge/munge.key" \
    --pid-file="$dir/munge/munged.pid" --log-file="$dir/log/munged.log" --seed-file="$dir/munge/munged.seed"

  {
    echo "# Written by scripts/slurm/test-cluster.sh: a throw-away test cluster."
    echo "ClusterName=plexustest"
    echo "SlurmctldHost=$host(127.0.0.1)"
    echo "SlurmctldPort=$ctld_port"
    echo "SlurmUser=root"
    echo "SlurmdUser=root"
    echo "AuthType=auth/munge"
    echo "CredType=cred/munge"
    echo "AuthInfo=socket=$sock"
    echo "StateSaveLocation=$dir/state"
    echo "SlurmdSpoolDir=$dir/spool/%n"
    echo "SlurmctldPidFile=$dir/state/slurmctld.pid"
    echo "SlurmdPidFile=$dir/spool/slurmd-%n.pid"
    echo "SlurmctldLogFile=$dir/log/slurmctld.log"
    echo "SlurmdLogFile=$dir/log/slurmd-%n.log"
    echo "MailProg=/bin/true"
    echo "SlurmctldDebug=info"
    echo "SlurmdDebug=info"
    echo "ProctrackType=proctrack/$proctrack"
    echo "TaskPlugin=$task_plugin"
    echo "JobAcctGatherType=jobacct_gather/none"
    echo "AccountingStorageType=accounting_storage/none"
    echo "JobCompType=jobcomp/none"
    echo "SelectType=select/cons_tres"
    echo "SelectTypeParameters=CR_CPU"
    echo "SchedulerType=sched/backfill"
    echo "SchedulerParameters=sched_interval=1,bf_interval=1"
    echo "SlurmdParameters=config_overrides"
    echo "MpiDefault=none"
    echo "ReturnToService=2"
    echo "KillWait=2"
    echo "MinJobAge=300"
    echo "MessageTimeout=10"
    echo "SlurmdTimeout=60"
    echo "SlurmctldTimeout=30"
    echo "InactiveLimit=0"
    echo "Waittime=0"
    for ((i = 1; i <= nodes; i++)); do
      echo "NodeName=n$i NodeHostname=$host NodeAddr=127.0.0.1 Port=$((base + i)) ${node_lines[i - 1]}State=UNKNOWN"
    done
    echo "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP"
  } >"$dir/slurm.conf"

  local t0=$SECONDS
  for ((i = 0; i < 50; i++)); do [ -S "$sock" ] && break; sleep 0.1; done
  [ -S "$sock" ] || fail "munged did not create its socket"
  munge -n -S "$sock" | unmunge -S "$sock" >/dev/null 2>&1 || fail "munge/unmunge round trip failed"

  launch "$dir/log/slurmctld.out" "$dir/run/slurmctld.pid" slurmctld -D -f "$dir/slurm.conf"
  for ((i = 1; i <= nodes; i++)); do
    mkdir -p "$dir/spool/n$i"
    launch "$dir/log/slurmd-n$i.out" "$dir/run/slurmd-n$i.pid" slurmd -D -f "$dir/slurm.conf" -N "n$i"
  done

  # Wait for every node to be idle; fail as soon as a daemon has died.
  local states=""
  while :; do
    for f in "$dir"/run/*.pid; do
      pid_alive "$(cat "$f")" || fail "$(basename "$f" .pid) exited"
    done
    states=$(SLURM_CONF=$dir/slurm.conf timeout 5 sinfo -h -N -o '%N %t' 2>/dev/null) || states=""
    if [ -n "$states" ] && [ "$(grep -c ' idle$' <<<"$states")" -eq "$nodes" ]; then break; fi
    ((SECONDS - t0 < timeout)) || fail "nodes not idle after ${timeout} s; sinfo says: ${states:-nothing}"
    sleep 0.2
  done
  say "cluster up in $((SECONDS - t0)) s: $nodes node(s) x $cpus CPU(s), slurmctld port $ctld_port, logs in $dir/log"
  print_env "$dir"
}

case "$action" in
  start) start_cluster "$@" ;;
  stop) (($# == 0)) || die_usage; stop_cluster "$dir" ;;
  env) (($# == 0)) || die_usage; [ -f "$dir/slurm.conf" ] || { say "no cluster in $dir"; exit 2; }; print_env "$(cd "$dir" && pwd)" ;;
  *) die_usage ;;
esac
