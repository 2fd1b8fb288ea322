// A pre-started JVM in a warm java sandbox (sandbox/pool.py), started as
//   java FLAGS -Xbootclasspath/a:/.conveyor-preload -cp . conveyor.preload.Preload /.conveyor-preload ARGV_FD BOOTED_FD
// with FLAGS the run command's own (languages.toml [java] `preload`; the driver appends the two descriptors). It boots
// and loads its native half (helper/preload-java.c), which closes BOOTED_FD (the driver then reports the sandbox
// ready), waits for the job's run command on ARGV_FD (what follows `sh` in `sh -c SCRIPT CLASS ARGS...`), takes the
// class as SCRIPT does (.main-class when there is one) and runs it as the JDK's launcher does once the JVM is up, by the
// same JNI calls into sun.launcher.LauncherHelper, on this same main thread. Built by `make helper` (javac and cc) into
// helper/java/, bound read-only at /.conveyor-preload into every java sandbox; on the boot class path, so the system
// class loader, java.class.path (".") and the program's classes are a cold run's.
// main and run are @Hidden (jdk.internal.vm.annotation, honoured for boot class path code): stack traces,
// Thread.getStackTrace and StackWalker show the program's frames only. The VM shows hidden frames in a preallocated
// OutOfMemoryError's trace: they are taken off the bottom of an uncaught exception's traces before the JVM prints it
// as usual ("Exception in thread "main"", exit code 1).
// The program's main thread has done what a cold start's main thread has by the time main runs, and no more: the JVM
// gives each thread its own sequence of identity hash codes (Object.hashCode, so default toString and the order of
// identity-keyed HashMaps), which this keeps the same. So this code uses nothing of java.lang.invoke, reflection or
// string concatenation (an invokedynamic), and the native half checks the class on a thread of its own.
// What stays visible: /proc/self/cmdline (this class and the descriptors) and the JVM's input arguments
// (RuntimeMXBean, with -Xbootclasspath/a), this class (Class.forName("conveyor.preload.Preload") finds it, and would
// shadow a program's own class of that name), the descriptor numbers the JVM opened while booting (its modules image
// is not fd 3), the process's start time and uptime, the identity hash codes of threads other than main (the JVM
// seeds each new thread's from a process-wide sequence, which loading this class advanced), the JVM's count of threads
// started, the main thread's stack depth (two frames less room before StackOverflowError), and that the JVM's start-up
// is not in the job's CPU time.
package conveyor.preload;

public final class Preload {
    private static final int MAX_THROWABLES = 64; // an uncaught exception's causes and suppressed ones looked at

    private Preload() {}

    /** Boots, waits for the job and runs it (run). */
    @jdk.internal.vm.annotation.Hidden
    public static void main(String[] args) throws Throwable {
        System.load(args[0].concat("/libconveyor-preload.so"));
        try {
            run(Integer.parseInt(args[1]), Integer.parseInt(args[2]));
        } catch (Throwable t) {
            trim(t, new Throwable[MAX_THROWABLES], 0);
            throw t;
        }
    }

    /** helper/preload-java.c: the job, run as the JDK's launcher runs main. */
    @jdk.internal.vm.annotation.Hidden
    private static native void run(int argvFd, int bootedFd);

    /** Takes this class's frames off the bottom of the traces of t, its causes and suppressed ones (seen: those done,
     * compared by identity: no identity hash codes); returns the count seen. */
    private static int trim(Throwable t, Throwable[] seen, int count) {
        if (t == null || count == seen.length) {
            return count;
        }
        for (int i = 0; i < count; i++) {
            if (seen[i] == t) {
                return count;
            }
        }
        seen[count++] = t;
        StackTraceElement[] frames = t.getStackTrace();
        int n = frames.length;
        while (n > 0 && frames[n - 1].getClassName().equals("conveyor.preload.Preload")) {
            n--;
        }
        if (n < frames.length) {
            StackTraceElement[] kept = new StackTraceElement[n];
            System.arraycopy(frames, 0, kept, 0, n);
            t.setStackTrace(kept);
        }
        count = trim(t.getCause(), seen, count);
        for (Throwable suppressed : t.getSuppressed()) {
            count = trim(suppressed, seen, count);
        }
        return count;
    }
}
