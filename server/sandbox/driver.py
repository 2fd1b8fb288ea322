"""Stage driver: the reports it sends the server, and the perl driver used where the C helper is not built."""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Sequence

from .artifact import WorkFile

# sandbox/helper/conveyor-run.c (`drive`) does the same as SOURCE and NEW_KEYRING (`launch`) in one exec each, and
# writes the same reports; this perl is what runs on a host where `make install` found no C compiler.
# The sandbox's first process after rlimits are set. It runs the compile stage (output to its
# own pipe, stdin from /dev/null) and then the program, and reports each stage's start and exact wait status on
# the status pipe: bwrap itself would fold "killed by signal N" into exit code 128+N. perl-base is Essential on
# Debian, so this needs nothing beyond the perl language itself. Core built-ins only: loading POSIX.pm would cost
# about 8 ms of CPU per job. Reopening STDIN/STDOUT/STDERR keeps fds 0-2 (perl dup2s onto them), and every fd
# perl opens above 2 is close-on-exec; the two inherited pipe fds are closed by hand before the exec.
# Before anything else it makes itself not dumpable (prctl PR_SET_DUMPABLE 0): the program runs as the same uid,
# and could otherwise take the status pipe with pidfd_getfd or /proc/<driver>/fd and write to the server. exec
# makes the program dumpable again, which only exposes the program to itself. If that fails the job ends before
# the program runs. prctl's number comes as an argument, from libseccomp, for the native architecture.
SOURCE = r"""
use strict;
my ($sfd, $cfd, $prctl, $n) = splice(@ARGV, 0, 4);
if (syscall(0 + $prctl, 4, 0, 0, 0, 0) != 0) { print STDERR "conveyor driver: prctl: $!\n"; exit 121; }
open(my $st, '>&=', $sfd) or exit 120;
open(my $co, '>&=', $cfd) or exit 120;
select((select($st), $| = 1)[0]);
sub stage {
    my ($name, $to_pipe, @cmd) = @_;
    print $st "$name-start\n";
    my $pid = fork();
    if (!defined $pid) { print $st "$name-end error\n"; return -1; }
    if ($pid == 0) {
        if ($to_pipe) {
            open(STDIN, '<', '/dev/null'); open(STDOUT, '>&', $co); open(STDERR, '>&', $co);
        }
        close($st); close($co);
        exec { $cmd[0] } @cmd;
        print STDERR "cannot run $cmd[0]: $!\n";
        exit 127;
    }
    waitpid($pid, 0);
    my $s = $?;
    print $st "$name-end ", ($s & 127 ? "signal " . ($s & 127) : "exit " . ($s >> 8)), "\n";
    return $s;
}
if ($n > 0) { exit 0 if stage('compile', 1, splice(@ARGV, 0, $n)) != 0; }
close($co);
stage('run', 0, @ARGV);
exit 0;
"""

# The longest line the status pipe may carry: bwrap's first report is about 250 bytes, the driver's about 20.
STATUS_LINE_LIMIT = 1024
CHILD_PID = re.compile(rb'\{ "child-pid": (\d+)[^\n]*\}\n')  # bwrap's first report
EXIT_CODE = re.compile(rb'\{ "exit-code": \d+ \}\n')  # bwrap's last, once its pid 1 has ended
STAGE_END = re.compile(r"(exit|signal) \d{1,3}|error")
DIR_MODE = 0o755  # a work dir's directories, as bwrap --dir makes them


KEYRING_FAILED = 124
# Runs in the launcher, as the job's host uid, just before bwrap: joins a new anonymous session keyring (keyctl
# KEYCTL_JOIN_SESSION_KEYRING, NULL), then execs the rest of the command line. Without it every job would hold the
# server's session keyring, which a login session (pam_keyinit) fills, and share it with the next job. Here rather
# than in the driver so that the syscall filter can refuse keyctl altogether: a job allowed even this one call
# could fill its uid's key quota (kernel.keys.maxkeys) with keyrings, one per process, and stop other jobs starting.
NEW_KEYRING = (
    'syscall(0 + shift, 1, 0) >= 0 or do { print STDERR "conveyor: cannot join a new session keyring: $!\\n"; '
    f"exit {KEYRING_FAILED} }}; exec {{ $ARGV[0] }} @ARGV; exit 127"
)


def command(status_fd: int, compile_fd: int, prctl: int, compile_argv: list[str], run: list[str]) -> list[str]:
    """The driver's command line: its pipes, the native number of prctl, then both stages."""
    fixed = [str(status_fd), str(compile_fd), str(prctl), str(len(compile_argv))]
    return ["perl", "-e", SOURCE, *fixed, *compile_argv, *run]


def new_keyring(keyctl: int, argv: list[str]) -> list[str]:
    """`argv` run in a new, empty session keyring."""
    return ["perl", "-e", NEW_KEYRING, str(keyctl), *argv]


def job_message(
    args: list[str],
    env: dict[str, str],
    files: Sequence[WorkFile],
    preload: list[str] | None = None,
    *,
    dirs: Sequence[str] = (),
) -> bytes:
    """What a warm sandbox's driver (conveyor-run wait) reads: NUL-terminated fields, a count before each list:
    drive's arguments, the environment (KEY=value), the work dir's entries (each one's path, mode in octal with its
    type, S_IFDIR or S_IFREG, and size, followed by its bytes: directories first, parents before children), and the
    argv for its pre-started interpreter (none: the driver discards it and runs the program itself)."""
    fields = [str(len(args)), *args, str(len(env)), *(f"{key}={value}" for key, value in env.items())]
    parts = [b"".join(f.encode() + b"\0" for f in fields), str(len(dirs) + len(files)).encode() + b"\0"]
    entry = b"%s\0%o\0%d\0"  # path, mode, size
    for directory in dirs:
        parts.append(entry % (os.fsencode(directory), stat.S_IFDIR | DIR_MODE, 0))
    for file in files:
        parts += [entry % (os.fsencode(file.name), stat.S_IFREG | file.mode, len(file.content)), file.content]
    preload = preload or []
    parts += [f.encode() + b"\0" for f in (str(len(preload)), *preload)]
    return b"".join(parts)
