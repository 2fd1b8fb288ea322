# Shared by the guest scenarios (sourced): PASS/FAIL lines, the checkout, starting and stopping `make run`.
# shellcheck shell=bash
SHARE=/mnt/host
GUEST=$SHARE/guest
RESULTS=$SHARE/results
PORT=${PORT:-3001}
BASE=http://127.0.0.1:$PORT
# Emulated CPUs are several times slower than the host's: the server's time limits grow to match (javac's compile
# of a hello took over 10 CPU-seconds, the default CPU_TIME_LIMIT_S, on a loaded host). The memory and pids limits
# stay the defaults under test; the job-wide CPU check asks for its own 1 s (jobs.py).
SERVER_ENV="COMPILE_TIMEOUT_MS=120000 JOB_TIMEOUT_MS=120000 CPU_TIME_LIMIT_S=60 SHUTDOWN_GRACE_MS=2000 PORT=$PORT"
failures=0

pass() { echo "PASS $SCENARIO: $*"; }
fail() { echo "FAIL $SCENARIO: $*"; failures=$((failures + 1)); }
check() {  # check "what" command...: PASS or FAIL on its exit status
    local what=$1
    shift
    if "$@"; then pass "$what"; else fail "$what"; fi
}

# A fresh clone of the checkout under test (the host's HEAD plus uncommitted changes, as a git bundle).
clone_as() {  # clone_as USER DIR
    local user=$1 dir=$2
    rm -rf "$dir"
    runuser -u "$user" -- git clone -q "$SHARE/repo.bundle" "$dir"
}

# Conveyor cgroups left anywhere in the hierarchy (the server's own, its jobs', a guard's), one a line; those an
# earlier scenario of the same boot left (BEFORE, its own FAIL) are not this scenario's.
conveyor_cgroups() {
    find /sys/fs/cgroup -mindepth 1 -type d -name '*conveyor*' 2>/dev/null \
        | grep -v -e '/conveyor-vm.service' -e "${KEEP_CGROUP:-^$}" | grep -vxF -e "${BEFORE:-^$}" || true
}
BEFORE=$(conveyor_cgroups)
[ -z "$BEFORE" ] || echo "conveyor cgroups an earlier scenario left (not counted here): $BEFORE"

# Processes of jobs still on the machine (their sandbox uid, or a marker in their command line).
job_processes() {
    pgrep -af "${1:-conveyor-sleeper}" | grep -v -e pgrep -e jobs.py || true
}

jobs() {  # jobs LABEL ARGS...: jobs.py's checks against the server, counted as this scenario's
    local label=$1 out
    shift
    out=$(python3 "$GUEST/jobs.py" "$BASE" "$@" 2>&1)
    echo "$out" | sed "s/^\(PASS\|FAIL\) /\1 $SCENARIO: $label/"
    failures=$((failures + $(echo "$out" | grep -c '^FAIL')))
}

server_pid() {  # the pid of `python -m server` run by USER, or nothing
    pgrep -u "$1" -f '^[^ ]*python[0-9.]* -m server' | head -1
}

wait_health() {  # wait_health SECONDS [PID]: 0 once /health answers; 1 past SECONDS, or once PID has ended
    local deadline=$((SECONDS + $1))
    while [ $SECONDS -lt $deadline ]; do
        curl -fsS -m 10 "$BASE/health" >/dev/null 2>&1 && return 0
        [ -n "${2:-}" ] && ! kill -0 "$2" 2>/dev/null && return 1
        sleep 2
    done
    return 1
}

wait_gone() {  # wait_gone PID SECONDS
    local deadline=$((SECONDS + $2))
    while kill -0 "$1" 2>/dev/null; do
        [ $SECONDS -ge $deadline ] && return 1
        sleep 1
    done
}

# `make run` as USER from a login shell, the way a user's terminal would start it: `su -l` opens a logind session
# (pam_systemd), so the shell, make and the server start in that session's scope, with XDG_RUNTIME_DIR and the
# user's D-Bus set. Its output goes to LOG; it runs in the background.
start_make_run() {  # start_make_run USER DIR LOG
    local user=$1 dir=$2 log=$3
    su -l "$user" -c "cd $dir && exec env $SERVER_ENV make run" >>"$log" 2>&1 &
    MAKE_SU_PID=$!
}

TRACEBACK='import asyncio, traceback
from server.__main__ import serve
from server.settings import Settings
try:
    asyncio.run(serve(Settings.from_env()))
except BaseException:
    traceback.print_exc()'

# Start `make run`, wait for it to serve (the first start installs the venv: minutes under emulation).
start_and_wait() {  # start_and_wait USER DIR LOG SECONDS
    local user=$1 dir=$2 log=$3 started=$SECONDS
    start_make_run "$user" "$dir" "$log"
    if wait_health "$4" "$MAKE_SU_PID"; then
        pass "make run serves /health after $((SECONDS - started)) s"
        local pid
        pid=$(server_pid "$user")
        echo "server pid $pid, cgroup: $(cat /proc/"$pid"/cgroup 2>/dev/null)"
        return 0
    fi
    if kill -0 "$MAKE_SU_PID" 2>/dev/null; then fail "make run did not serve /health within $4 s; its output:"
    else fail "make run ended after $((SECONDS - started)) s without serving; its output:"; fi
    tail -n 40 "$log" | sed 's/^/    /'
    if ! kill -0 "$MAKE_SU_PID" 2>/dev/null; then
        # server/__main__.py prints an OSError's message alone: the same start once more, for its traceback.
        echo "    the same start with its traceback:"
        su -l "$user" -c "cd $dir && env $SERVER_ENV timeout 300 .venv/bin/python -c '$TRACEBACK'" 2>&1 | tail -n 30 \
            | sed 's/^/    /'
    fi
    return 1
}

# Scenario body shared by root and the non-root user: jobs, SIGTERM cleanup, SIGKILL cleanup and restart.
serve_and_check() {  # serve_and_check USER DIR
    local user=$1 dir=$2 log=$RESULTS/$SCENARIO-make-run.log pid
    : >"$log"
    start_and_wait "$user" "$dir" "$log" 1200 || return 0
    jobs "" all
    echo "conveyor cgroups while serving:"
    conveyor_cgroups | sed 's/^/    /'

    pid=$(server_pid "$user")
    kill -TERM "$pid"
    if wait_gone "$pid" 60; then pass "the server stops on SIGTERM"; else fail "the server is still running 60 s after SIGTERM"; fi
    wait_gone "$MAKE_SU_PID" 30 || true
    sleep 2
    left=$(conveyor_cgroups)
    if [ -z "$left" ]; then pass "no conveyor cgroups left after SIGTERM"; else fail "cgroups left after SIGTERM: $left"; fi

    # SIGKILL with a job running: the guard must kill the job and remove the cgroups; a restart must start clean.
    start_and_wait "$user" "$dir" "$log" 600 || return 0
    jobs "" sleeper conveyor-sleeper
    local deadline=$((SECONDS + 120))
    until [ -n "$(job_processes)" ] || [ $SECONDS -ge $deadline ]; do sleep 1; done
    if [ -n "$(job_processes)" ]; then pass "the long job runs"; else fail "the long job is not running after 120 s"; fi
    pid=$(server_pid "$user")
    kill -KILL "$pid"
    wait_gone "$pid" 30 || true
    wait_gone "$MAKE_SU_PID" 30 || true
    sleep 8
    left=$(job_processes)
    if [ -z "$left" ]; then pass "no job processes left after SIGKILL"; else fail "job processes left after SIGKILL: $left"; fi
    left=$(conveyor_cgroups)
    if [ -z "$left" ]; then pass "no conveyor cgroups left after SIGKILL"; else fail "cgroups left after SIGKILL: $left"; fi
    if start_and_wait "$user" "$dir" "$log" 600; then
        jobs "after restart: " memory-hogs 1
        pid=$(server_pid "$user")
        kill -TERM "$pid"
        wait_gone "$pid" 60 || fail "the restarted server is still running 60 s after SIGTERM"
        wait_gone "$MAKE_SU_PID" 30 || true
        sleep 2
        left=$(conveyor_cgroups)
        if [ -z "$left" ]; then pass "no conveyor cgroups left after the restart's SIGTERM"; else fail "cgroups left: $left"; fi
    fi
}
