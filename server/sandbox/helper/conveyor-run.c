/* conveyor-run: the one helper a job's sandbox execs, in place of sh (cgroups), setpriv, perl (keyring), prlimit and
 * the perl stage driver. Two modes, one binary (built by `make install` with the system cc; see server/sandbox/driver.py).
 *
 *   conveyor-run launch [--cgroup PROCS]... [--nice N] [--uid UID | --stay-root] -- COMMAND...
 *     On the host, as the server's user, before bwrap: joins each cgroup (so bwrap and all it starts are limited
 *     from their first instruction), drops to UID (no supplementary groups) when given, joins a new anonymous
 *     session keyring as that uid (its key quota), then execs COMMAND. Exit 125 if a cgroup cannot be joined, 124 if
 *     the keyring cannot be, 126 if the uid cannot be taken or the job would run as root without --stay-root (the
 *     server's choice where bwrap works only for root, which it warns about), 120 for anything it does not understand
 *     (a uid of 0, (uid_t)-1 or past 32 bits among them).
 *
 *   conveyor-run drive STATUS_FD COMPILE_FD CPU_S FSIZE NOFILE NPROC AS N COMPILE(N args)... RUN...
 *     Inside the sandbox, as bwrap's pid 1's child: sets the rlimits (here, inside the job's user namespace, so
 *     RLIMIT_NPROC counts this job's tasks; NPROC and AS are "-" when a cgroup enforces them), makes itself not
 *     dumpable (the program runs as the same uid and could otherwise take the status pipe), then runs the compile
 *     stage (stdin /dev/null, output to COMPILE_FD) and the program, reporting each stage's start and exact wait
 *     status on STATUS_FD in the format server/sandbox/driver.py parses.
 *
 *   conveyor-run wait JOB_FD STATUS_FD COMPILE_FD [PRELOAD...]
 *     The same driver in a warm sandbox (server/sandbox/pool.py), started before its job exists: makes itself not dumpable,
 *     starts PRELOAD if given (a pre-started interpreter, server/sandbox/helper/preload.*), reports "ready" on STATUS_FD,
 *     then reads one job from JOB_FD (server/sandbox/driver.py `job_message`: drive's arguments, the environment, the files
 *     and directories with their modes, the interpreter's argv), writes them into the work dir, closes JOB_FD and goes on as drive: the run
 *     stage is the pre-started interpreter when the job says so (its limits set with prlimit), else it is discarded.
 *     JOB_FD closed with nothing on it (a pool shutting down) ends it quietly.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#define KEYCTL_JOIN_SESSION_KEYRING 1
#define JOIN_FAILED 125
#define KEYRING_FAILED 124
#define UID_FAILED 126
#define PRCTL_FAILED 121
#define USAGE_FAILED 120

/* A decimal number in [MIN, MAX] that is the whole of TEXT (no leading space or '+', no overflow, not empty) into
 * *OUT; -1 otherwise. Every number the helper is given goes through here: atoi would read "4294967296" or garbage
 * as something, and a count near INT_MAX would overflow the bounds checks after it. */
static int number(const char *text, long min, long max, long *out) {
    if (text == NULL || !((*text >= '0' && *text <= '9') || (*text == '-' && min < 0))) return -1;
    char *rest;
    errno = 0;
    long n = strtol(text, &rest, 10);
    if (errno != 0 || rest == text || *rest != 0 || n < min || n > max) return -1;
    *out = n;
    return 0;
}

/* A file descriptor number given on the command line. */
static int fd_number(const char *text, int *fd) {
    long n;
    if (number(text, 0, INT_MAX, &n) != 0) return -1;
    *fd = (int)n;
    return 0;
}

/* The host uids a job may run as: never 0 (root), never (uid_t)-1 (to setresuid, "leave unchanged": root again). */
#define UID_MIN_JOB 1L
#define UID_MAX_JOB 4294967294L

/* Children get SIGPIPE back: the driver ignores it (a peer may die, see drive_signals), but a program's own
 * behaviour (`yes | head`) must not change with it, and an ignored signal survives exec. */
static void child_signals(void) { signal(SIGPIPE, SIG_DFL); }

/* The driver writes to the server's status pipe and to a pre-started interpreter's argv pipe; either reader can be
 * gone (a server restart, an interpreter killed after it booted). The write then fails with EPIPE and the driver
 * goes on to report what it can: dying of SIGPIPE would lose the program's real status. */
static void drive_signals(void) { signal(SIGPIPE, SIG_IGN); }

static int write_all(int fd, const char *buf, size_t len) {
    while (len > 0) {
        ssize_t n = write(fd, buf, len);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return -1;
        buf += n;
        len -= (size_t)n;
    }
    return 0;
}

static int launch(int argc, char **argv) {
    char pid[32];
    int len = snprintf(pid, sizeof pid, "%d\n", (int)getpid());
    long uid = -1;
    int stay_root = 0, i = 2;
    for (; i < argc && strcmp(argv[i], "--") != 0; i += 2) {
        if (strcmp(argv[i], "--stay-root") == 0) {
            stay_root = 1;
            i--;
            continue;
        }
        if (i + 1 >= argc) return USAGE_FAILED;
        if (strcmp(argv[i], "--cgroup") == 0) {
            int fd = open(argv[i + 1], O_WRONLY | O_CLOEXEC);
            if (fd < 0 || write_all(fd, pid, (size_t)len) != 0) {
                fprintf(stderr, "conveyor: cannot join cgroup %s: %s\n", argv[i + 1], strerror(errno));
                return JOIN_FAILED;
            }
            close(fd);
        } else if (strcmp(argv[i], "--nice") == 0) {
            /* A warm sandbox starts at a lower priority than running jobs; the server renices it when taken. */
            long nice;
            if (number(argv[i + 1], -20, 19, &nice) != 0 || setpriority(PRIO_PROCESS, 0, (int)nice) != 0)
                return USAGE_FAILED;
        } else if (strcmp(argv[i], "--uid") == 0) {
            if (number(argv[i + 1], UID_MIN_JOB, UID_MAX_JOB, &uid) != 0) {
                fprintf(stderr, "conveyor: --uid %s: not a uid from %ld to %ld\n", argv[i + 1], UID_MIN_JOB, UID_MAX_JOB);
                return USAGE_FAILED;
            }
        } else {
            return USAGE_FAILED;
        }
    }
    if (i + 1 >= argc || (stay_root && uid >= 0)) return USAGE_FAILED;
    if (uid >= 0 && (setgroups(0, NULL) != 0 || setresgid((gid_t)uid, (gid_t)uid, (gid_t)uid) != 0 ||
                     setresuid((uid_t)uid, (uid_t)uid, (uid_t)uid) != 0)) {
        fprintf(stderr, "conveyor: cannot run as uid %ld: %s\n", uid, strerror(errno));
        return UID_FAILED;
    }
    /* Whatever the arguments, a job starts as root only when that was asked for by name, never by an omission. */
    uid_t ruid, euid, suid;
    if (!stay_root && (getresuid(&ruid, &euid, &suid) != 0 || ruid == 0 || euid == 0 || suid == 0)) {
        fprintf(stderr, "conveyor: refusing to start a job as root (no --uid)\n");
        return UID_FAILED;
    }
    if (syscall(SYS_keyctl, KEYCTL_JOIN_SESSION_KEYRING, NULL) < 0) {
        fprintf(stderr, "conveyor: cannot join a new session keyring: %s\n", strerror(errno));
        return KEYRING_FAILED;
    }
    execvp(argv[i + 1], &argv[i + 1]);
    fprintf(stderr, "conveyor: cannot run %s: %s\n", argv[i + 1], strerror(errno));
    return 127;
}

static void report(int fd, const char *text) {
    /* A failed report only loses the line: the server then goes by bwrap's exit status. */
    (void)write_all(fd, text, strlen(text));
}

/* Waits for a stage's process and reports its exact wait status; returns the wait status, or -1. */
static int finish(int sfd, const char *name, pid_t pid) {
    char line[64];
    int status;
    while (waitpid(pid, &status, 0) < 0) {
        if (errno != EINTR) {
            snprintf(line, sizeof line, "%s-end error\n", name);
            report(sfd, line);
            return -1;
        }
    }
    if (WIFSIGNALED(status)) snprintf(line, sizeof line, "%s-end signal %d\n", name, WTERMSIG(status));
    else snprintf(line, sizeof line, "%s-end exit %d\n", name, WEXITSTATUS(status));
    report(sfd, line);
    return status;
}

/* A warm sandbox's job pipe, kept open after the job message: after each stage's start report the driver waits here
 * for the server's go-ahead, so the server has reset the stage's accounting (the memory peak, the CPU base) before
 * anything of the stage runs. A pre-started python finishes a small program within the time the server takes to
 * read a report, and its peak and CPU time would otherwise be lost. NULL in drive mode. */
static FILE *gate = NULL;

static void await_gate(void) {
    if (gate != NULL) (void)fgetc(gate);  /* a byte, or EOF if the server is gone (the sandbox then dies with it) */
}

/* Runs one stage and reports its start and its exact wait status; returns the wait status, or -1. */
static int stage(int sfd, int cfd, const char *name, int to_pipe, char **cmd) {
    char line[64];
    snprintf(line, sizeof line, "%s-start\n", name);
    report(sfd, line);
    await_gate();
    pid_t pid = fork();
    if (pid < 0) {
        snprintf(line, sizeof line, "%s-end error\n", name);
        report(sfd, line);
        return -1;
    }
    if (pid == 0) {
        child_signals();
        if (to_pipe) {
            int null = open("/dev/null", O_RDONLY | O_CLOEXEC);  /* its copy on fd 0 is not close-on-exec */
            if (null > 0) dup2(null, 0);
            dup2(cfd, 1);
            dup2(cfd, 2);
        }
        execvp(cmd[0], cmd);  /* both pipes are close-on-exec */
        fprintf(stderr, "cannot run %s: %s\n", cmd[0], strerror(errno));
        _exit(127);
    }
    return finish(sfd, name, pid);
}

/* Soft and hard limit VALUE for process PID (0: this one), or none for "-"; anything else is refused rather than
 * read as 0 or unlimited. */
static int limit_of(pid_t pid, int resource, const char *value) {
    if (strcmp(value, "-") == 0) return 0;
    char *rest;
    errno = 0;
    rlim_t n = (rlim_t)strtoull(value, &rest, 10);
    if (*value < '0' || *value > '9' || *rest != 0 || errno != 0) {
        errno = EINVAL;
        return -1;
    }
    struct rlimit rl = {n, n};
    return prlimit(pid, resource, &rl, NULL);
}

/* limits: CPU FSIZE NOFILE NPROC AS, as strings ("-" for none), for process PID (0: this one). */
static int set_limits_of(pid_t pid, char **limits) {
    long cpu_s = 0;
    int bad_cpu = number(limits[0], 0, LONG_MAX - 1, &cpu_s) != 0;
    struct rlimit cpu = {(rlim_t)cpu_s, (rlim_t)cpu_s + 1};  /* SIGXCPU first, SIGKILL a second later */
    struct rlimit core = {0, 0};  /* a core_pattern pipe would run a host helper as root */
    if (bad_cpu) errno = EINVAL;
    if (bad_cpu || prlimit(pid, RLIMIT_CPU, &cpu, NULL) != 0 || limit_of(pid, RLIMIT_FSIZE, limits[1]) != 0 ||
        limit_of(pid, RLIMIT_NOFILE, limits[2]) != 0 || prlimit(pid, RLIMIT_CORE, &core, NULL) != 0 ||
        limit_of(pid, RLIMIT_NPROC, limits[3]) != 0 || limit_of(pid, RLIMIT_AS, limits[4]) != 0) {
        fprintf(stderr, "conveyor driver: setrlimit: %s\n", strerror(errno));
        return -1;
    }
    return 0;
}

static int set_limits(char **limits) { return set_limits_of(0, limits); }

static int undumpable(void) {
    if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0) {
#ifndef CONVEYOR_LEAVE_DUMPABLE
        fprintf(stderr, "conveyor driver: prctl: %s\n", strerror(errno));
        return PRCTL_FAILED;
#endif
    }
#ifdef CONVEYOR_LEAVE_DUMPABLE
    /* Tests only: the defence-in-depth test needs a driver whose pipes a program can steal. */
    prctl(PR_SET_DUMPABLE, 1, 0, 0, 0);
#endif
    return 0;
}

/* Both stages, with the pipes kept from the programs: compile (n args, none when 0) and run, NULL-terminated. */
static int stages(int sfd, int cfd, char **compile, int n, char **run) {
    if (fcntl(sfd, F_SETFD, FD_CLOEXEC) != 0 || fcntl(cfd, F_SETFD, FD_CLOEXEC) != 0) return USAGE_FAILED;
    if (n > 0 && stage(sfd, cfd, "compile", 1, compile) != 0) return 0;
    close(cfd);
    stage(sfd, cfd, "run", 0, run);
    return 0;
}

static int drive(int argc, char **argv) {
    if (argc < 11) return USAGE_FAILED;
    int sfd, cfd;
    long n;  /* the compile command's length: what is left after it is the run command, at least its name */
    if (fd_number(argv[2], &sfd) != 0 || fd_number(argv[3], &cfd) != 0 || number(argv[9], 0, argc - 11, &n) != 0)
        return USAGE_FAILED;
    drive_signals();
    if (set_limits(&argv[4]) != 0) return USAGE_FAILED;
    if (undumpable() != 0) return PRCTL_FAILED;
    char **compile = calloc((size_t)n + 1, sizeof *compile);  /* NULL-terminated copy; run ends argv */
    if (compile == NULL) return USAGE_FAILED;
    memcpy(compile, &argv[10], (size_t)n * sizeof *compile);
    return stages(sfd, cfd, compile, (int)n, &argv[10 + n]);
}

/* The job message's bounds: its fields, argument and file counts (the host validated it; these only keep a bad
 * message from costing more than a refused job). */
#define FIELD_MAX (1 << 20)
#define COUNT_MAX 65536

/* One NUL-terminated field, or NULL at EOF or when it is too long. */
static char *field(FILE *in) {
    char *text = NULL;
    size_t cap = 0;
    ssize_t n = getdelim(&text, &cap, '\0', in);
    if (n <= 0 || n > FIELD_MAX || text[n - 1] != '\0') {
        free(text);
        return NULL;
    }
    return text;
}

static long count(FILE *in, long max) {
    char *text = field(in), *rest;
    if (text == NULL) return -1;
    errno = 0;
    long n = strtol(text, &rest, 10);
    int bad = *text < '0' || *text > '9' || *rest != 0 || errno != 0 || n > max;
    free(text);
    return bad ? -1 : n;
}

/* Parent directories of PATH (validated by the server), as bwrap --dir makes them (0755, whatever the umask). */
static int parents(char *path) {
    if (*path == 0) return -1;
    for (char *slash = strchr(path + 1, '/'); slash != NULL; slash = strchr(slash + 1, '/')) {
        *slash = 0;
        int made = (mkdir(path, 0755) == 0 && chmod(path, 0755) == 0) || errno == EEXIST;
        *slash = '/';
        if (!made) return -1;
    }
    return 0;
}

/* SIZE bytes of IN into a new file PATH with permission bits PERMS (set exactly, whatever the umask). */
static int write_file(FILE *in, char *path, long long size, mode_t perms) {
    if (parents(path) != 0) return -1;
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0) return -1;
    if (fchmod(fd, perms) != 0) {
        close(fd);
        return -1;
    }
    char buf[65536];
    while (size > 0) {
        size_t want = size < (long long)sizeof buf ? (size_t)size : sizeof buf;
        size_t got = fread(buf, 1, want, in);
        if (got == 0 && !ferror(in)) errno = EPIPE;  /* the message ended inside the file */
        if (got == 0 || write_all(fd, buf, got) != 0) {
            close(fd);
            return -1;
        }
        size -= (long long)got;
    }
    return close(fd);
}

/* A directory PATH with bwrap --dir's mode (0755, whatever the umask); one already made as a parent is kept, a file or
 * anything else already there is refused. */
static int make_dir(char *path) {
    struct stat st;
    if (parents(path) != 0) return -1;
    if (mkdir(path, 0755) == 0) return chmod(path, 0755);
    if (errno != EEXIST) return -1;
    if (lstat(path, &st) == 0 && S_ISDIR(st.st_mode)) return 0;
    errno = EEXIST;
    return -1;
}

/* One entry of the work dir: PATH (validated by the server), its MODE in octal (S_IFREG or S_IFDIR and permission
 * bits, no set-id or sticky bit), SIZE, then SIZE bytes (none for a directory). Anything else ends the job. */
static int write_entry(FILE *in, char *path) {
    char *text = field(in), *rest;
    long size = count(in, LONG_MAX), mode = -1;
    if (text != NULL && *text >= '0' && *text <= '7') {
        errno = 0;
        mode = strtol(text, &rest, 8);
        if (errno != 0 || *rest != 0) mode = -1;
    }
    free(text);
    errno = EINVAL;
    if (mode < 0 || size < 0 || (mode & ~(long)(S_IFMT | 0777)) != 0) return -1;
    if (S_ISDIR((mode_t)mode) && size == 0) return make_dir(path);
    if (S_ISREG((mode_t)mode)) return write_file(in, path, size, (mode_t)mode & 0777);
    return -1;
}

/* A NULL-terminated list of COUNT fields. */
static char **fields(FILE *in) {
    long n = count(in, COUNT_MAX);
    if (n < 0) return NULL;
    char **list = calloc((size_t)n + 1, sizeof *list);
    if (list == NULL) return NULL;
    for (long i = 0; i < n; i++)
        if ((list[i] = field(in)) == NULL) return NULL;
    return list;
}

/* drive's arguments (NULL-terminated, from argv[1] on: argv[0] is unused), the environment, the work dir's entries
 * (a build's directories and files, or the job's own files), and the
 * argv for a pre-started interpreter (empty: run the program as drive does). */
static char **read_job(FILE *in, char ***preload) {
    long nargs = count(in, COUNT_MAX);
    if (nargs < 7) return NULL;  /* CPU FSIZE NOFILE NPROC AS N, and a program */
    char **args = calloc((size_t)nargs + 2, sizeof *args);
    if (args == NULL) return NULL;
    for (long i = 1; i <= nargs; i++)
        if ((args[i] = field(in)) == NULL) return NULL;
    long nenv = count(in, COUNT_MAX);
    /* The job's environment as a cold run has it: the server's, then (last, as bwrap --chdir sets it) PWD. */
    char *pwd = getenv("PWD");
    pwd = pwd != NULL ? strdup(pwd) : NULL;
    if (nenv < 0 || clearenv() != 0) return NULL;
    for (long i = 0; i < nenv; i++) {
        char *entry = field(in);
        if (entry == NULL || strchr(entry, '=') == NULL || putenv(entry) != 0) return NULL;
    }
    if (pwd != NULL && setenv("PWD", pwd, 1) != 0) return NULL;
    free(pwd);
    long nfiles = count(in, COUNT_MAX);
    for (long i = 0; i < nfiles; i++) {
        char *path = field(in);
        if (path == NULL || write_entry(in, path) != 0) {
            fprintf(stderr, "conveyor driver: cannot write %s: %s\n", path ? path : "a file", strerror(errno));
            return NULL;
        }
        free(path);
    }
    if (nfiles < 0 || (*preload = fields(in)) == NULL) return NULL;
    return args;
}

/* Starts PRELOAD (an interpreter that boots, closes the descriptor whose number is its last argument to say so,
 * then waits for its program's argv on the one before) and waits until it has booted; *GO is the write end for
 * that argv. Returns its pid, or -1 (it could not start, or died booting: the job then runs as drive runs it). */
static pid_t preload(char **cmd, int *go) {
    int argv_pipe[2], booted[2];
    if (pipe2(argv_pipe, O_CLOEXEC) != 0) return -1;
    if (pipe2(booted, O_CLOEXEC) != 0) {
        close(argv_pipe[0]);
        close(argv_pipe[1]);
        return -1;
    }
    pid_t pid = fork();
    if (pid == 0) {
        child_signals();
        int n = 0;
        while (cmd[n] != NULL) n++;
        char **full = calloc((size_t)n + 3, sizeof *full);
        int rfd = dup(argv_pipe[0]), wfd = dup(booted[1]);  /* without close-on-exec: the interpreter's */
        char rnum[16], wnum[16];
        snprintf(rnum, sizeof rnum, "%d", rfd);
        snprintf(wnum, sizeof wnum, "%d", wfd);
        if (full == NULL || rfd < 0 || wfd < 0) _exit(127);
        memcpy(full, cmd, (size_t)n * sizeof *full);
        full[n] = rnum;
        full[n + 1] = wnum;
        execvp(full[0], full);
        _exit(127);
    }
    close(argv_pipe[0]);
    close(booted[1]);
    if (pid > 0) {
        char byte;
        errno = 0;
        while (read(booted[0], &byte, 1) > 0 || errno == EINTR) errno = 0;  /* until EOF: booted, or dead */
        int status;
        if (waitpid(pid, &status, WNOHANG) == pid) pid = -1;
    }
    close(booted[0]);
    if (pid < 0) {
        close(argv_pipe[1]);
        return -1;
    }
    *go = argv_pipe[1];
    return pid;
}

static void discard(pid_t pid, int go) {
    if (pid <= 0) return;
    close(go);
    kill(pid, SIGKILL);
    while (waitpid(pid, NULL, 0) < 0 && errno == EINTR) {}
}

/* The run stage in the pre-started interpreter: its limits, its program's argv, its exact wait status. */
static int run_preloaded(int sfd, int cfd, pid_t pid, int go, char **limits, char **argv) {
    if (set_limits(limits) != 0 || set_limits_of(pid, limits) != 0) {
        discard(pid, go);
        return USAGE_FAILED;
    }
    close(cfd);
    report(sfd, "run-start\n");
    await_gate();
    for (char **arg = argv; *arg != NULL; arg++)
        if (write_all(go, *arg, strlen(*arg) + 1) != 0) break;  /* a dead interpreter reports its own status */
    close(go);
    finish(sfd, "run", pid);
    return 0;
}

static int warm(int argc, char **argv) {
    int jfd, sfd, cfd;
    if (argc < 5 || fd_number(argv[2], &jfd) != 0 || fd_number(argv[3], &sfd) != 0 || fd_number(argv[4], &cfd) != 0)
        return USAGE_FAILED;
    drive_signals();
    if (undumpable() != 0) return PRCTL_FAILED;
    if (fcntl(sfd, F_SETFD, FD_CLOEXEC) != 0 || fcntl(cfd, F_SETFD, FD_CLOEXEC) != 0 ||
        fcntl(jfd, F_SETFD, FD_CLOEXEC) != 0)
        return USAGE_FAILED;
    int go = -1;
    pid_t zygote = argc > 5 ? preload(&argv[5], &go) : -1;
    report(sfd, "ready\n");
    FILE *in = fdopen(jfd, "rb");
    if (in == NULL) return USAGE_FAILED;
    int first = fgetc(in);
    if (first == EOF) {  /* discarded before it got a job */
        discard(zygote, go);
        return 0;
    }
    ungetc(first, in);
    char **preloaded = NULL;
    char **args = read_job(in, &preloaded);
    gate = in;  /* close-on-exec: no program gets it */
    /* args[1..] are drive's CPU FSIZE NOFILE NPROC AS N COMPILE... RUN... */
    long nargs = 0, n = -1;
    while (args != NULL && args[nargs + 1] != NULL) nargs++;
    /* N's bound leaves the run command at least its name (read_job makes sure nargs is at least 7). */
    if (args == NULL || number(args[6], 0, nargs - 7, &n) != 0) {
        discard(zygote, go);
        return USAGE_FAILED;
    }
    if (zygote > 0 && n == 0 && preloaded[0] != NULL) return run_preloaded(sfd, cfd, zygote, go, &args[1], preloaded);
    discard(zygote, go);
    if (set_limits(&args[1]) != 0) return USAGE_FAILED;
    char **compile = calloc((size_t)n + 1, sizeof *compile);
    if (compile == NULL) return USAGE_FAILED;
    memcpy(compile, &args[7], (size_t)n * sizeof *compile);
    return stages(sfd, cfd, compile, (int)n, &args[7 + n]);
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "launch") == 0) return launch(argc, argv);
    if (argc > 1 && strcmp(argv[1], "drive") == 0) return drive(argc, argv);
    if (argc > 1 && strcmp(argv[1], "wait") == 0) return warm(argc, argv);
    fprintf(stderr, "usage: conveyor-run launch|drive|wait ...\n");
    return USAGE_FAILED;
}
