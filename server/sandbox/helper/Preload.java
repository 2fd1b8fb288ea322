// A pre-started JVM in a warm java sandbox (sandbox/pool.py), started as
//   java FLAGS -Xbootclasspath/a:/.conveyor-preload -cp . conveyor.preload.Preload ARGV_FD BOOTED_FD
// with FLAGS the run command's own (languages.toml [java] `preload`; the driver appends the two descriptors). It
// boots, closes BOOTED_FD (the driver then reports the sandbox ready), waits for the job's run command on ARGV_FD
// (what follows `sh` in `sh -c SCRIPT CLASS ARGS...`), takes the class as SCRIPT would (.main-class when there is one),
// and runs its main as `java FLAGS -cp . CLASS ARGS...` does, on this same main thread.
// Built by `make helper` (javac) into helper/java/, bound read-only at /.conveyor-preload into every java sandbox;
// it is on the boot class path, so the system class loader, java.class.path (".") and the program's classes are a
// cold run's.
// Faithful to the plain launcher (sun.launcher.LauncherHelper) where a program can tell:
//  - the class is loaded as the launcher loads it (not initialized), its public static void main(String[]) looked up
//    as it does; anything the launcher would refuse (no such class, no or a non-static main, a LinkageError) is handed
//    to the run command itself (`sh -c SCRIPT CLASS ARGS...` as a child), which prints the launcher's own message;
//  - the class is initialized, then main invoked through a method handle: main's frame here is @Hidden (honoured for
//    boot class path code) and the handle's frames are hidden, so stack traces, Thread.getStackTrace and StackWalker
//    show the program's frames only. Where the VM shows hidden frames anyway (a preallocated OutOfMemoryError) or the
//    initialization adds its caller's frames (ExceptionInInitializerError), they are trimmed from the uncaught
//    exception and its causes and suppressed ones before the JVM prints it as usual ("Exception in thread "main"",
//    exit code 1);
//  - System.in, System.out and System.err are not touched (no buffer read ahead, nothing written); no thread is
//    started; the two descriptors are closed before the program runs; sun.java.command is set to "CLASS ARGS...".
// What stays visible: /proc/self/cmdline (this class and the descriptors) and the JVM's input arguments
// (RuntimeMXBean, with -Xbootclasspath/a), this class (Class.forName("conveyor.preload.Preload") finds it, and a
// program's own class of that name would be shadowed), the descriptor numbers the JVM opened while booting (its
// modules image is not fd 3), the process's start time and uptime, the main thread's stack depth (a few frames less
// room before StackOverflowError), another thread's view of the main thread's stack (hidden frames), and that the
// JVM's start-up is not in the job's CPU time. After a refusal handed to the run command, the launcher's exit status
// is the child's (a signal N as 128+N).
package conveyor.preload;

import java.io.FileDescriptor;
import java.io.FileInputStream;
import java.io.IOException;
import java.lang.invoke.MethodHandle;
import java.lang.invoke.MethodHandles;
import java.lang.reflect.Method;
import java.lang.reflect.Modifier;
import java.nio.charset.Charset;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collections;
import java.util.IdentityHashMap;
import java.util.List;
import java.util.Set;

public final class Preload {
    // What the initialization of a class adds below its <clinit> frame (Class.forName's own frames), found once by
    // initializing Trigger the same way before the job.
    private static StackTraceElement[] trigger = new StackTraceElement[0];

    private Preload() {}

    /** Boots, waits for the job, runs it. */
    @jdk.internal.vm.annotation.Hidden
    public static void main(String[] args) throws Throwable {
        initialize(Trigger.class.getName());
        trigger = Arrays.copyOfRange(Trigger.FRAMES, 1, Trigger.FRAMES.length);
        FileDescriptor argvFd = descriptor(Integer.parseInt(args[0]));
        new FileInputStream(descriptor(Integer.parseInt(args[1]))).close(); // booted
        byte[] data = readAll(argvFd);
        if (data.length == 0) {
            Runtime.getRuntime().halt(0); // discarded before it got a job
        }
        String[] argv = split(data); // -c SCRIPT CLASS ARGS...
        if (argv.length < 3 || !argv[0].equals("-c")) {
            throw new IllegalArgumentException("conveyor preload: a job for another command");
        }
        String given = mainClass(argv[2]);
        String name = given == null ? null : given.replace('/', '.'); // as the launcher does
        MethodHandle main = name == null ? null : mainOf(name);
        if (main == null) {
            System.exit(runCommand(argv)); // the launcher's refusal, in its own words
        }
        String[] jobArgs = Arrays.copyOfRange(argv, 3, argv.length);
        StringBuilder command = new StringBuilder(given);
        for (String arg : jobArgs) {
            command.append(' ').append(arg);
        }
        System.setProperty("sun.java.command", command.toString());
        try {
            initialize(name);
            main.invokeExact(jobArgs);
        } catch (Throwable t) {
            trim(t, Collections.newSetFromMap(new IdentityHashMap<>()));
            throw t;
        }
    }

    /** Initializes a class as the JVM does before it calls main (the launcher loads it uninitialized). */
    @jdk.internal.vm.annotation.Hidden
    private static void initialize(String name) throws ClassNotFoundException {
        Class.forName(name, true, ClassLoader.getSystemClassLoader());
    }

    /** A class whose initialization records the frames initialize() puts below a <clinit>. */
    static final class Trigger {
        static final StackTraceElement[] FRAMES = new Throwable().getStackTrace();
    }

    /** The class the run command's SCRIPT runs: .main-class's text less its trailing newlines ($(cat)) when it is
     * a regular file, else CLASS; null where the shell could differ (unreadable, a NUL byte). */
    private static String mainClass(String given) {
        Path file = Path.of(".main-class");
        if (!Files.isRegularFile(file)) {
            return given;
        }
        try {
            String text = Files.readString(file, Charset.forName(System.getProperty("sun.jnu.encoding")));
            int end = text.length();
            while (end > 0 && text.charAt(end - 1) == '\n') {
                end--;
            }
            return text.indexOf('\0') >= 0 ? null : text.substring(0, end);
        } catch (IOException | RuntimeException e) {
            return null;
        }
    }

    /** main as the launcher finds it (LauncherHelper.loadMainClass, validateMainClass), or null where it refuses. */
    private static MethodHandle mainOf(String name) {
        try {
            Class<?> c = Class.forName(name, false, ClassLoader.getSystemClassLoader());
            for (Class<?> s = c; s != null; s = s.getSuperclass()) {
                if (s.getName().equals("javafx.application.Application")) {
                    return null; // the launcher's JavaFX path
                }
            }
            Method m = c.getMethod("main", String[].class);
            if (!Modifier.isStatic(m.getModifiers()) || m.getReturnType() != void.class) {
                return null;
            }
            m.setAccessible(true); // a class that is not public: JNI, which the launcher calls main by, ignores access
            return MethodHandles.lookup().unreflect(m);
        } catch (ReflectiveOperationException | LinkageError | RuntimeException e) {
            return null;
        }
    }

    /** The job's run command itself, on the same stdin, stdout and stderr; its exit status. */
    private static int runCommand(String[] argv) throws IOException, InterruptedException {
        List<String> command = new ArrayList<>();
        command.add("sh");
        command.addAll(Arrays.asList(argv));
        return new ProcessBuilder(command).inheritIO().start().waitFor();
    }

    /** Takes this launcher's frames off the bottom of every trace in t's graph: the method handle's and main's (the
     * VM shows them in a preallocated OutOfMemoryError), then initialize()'s (Trigger's). A cold run's main thread
     * has nothing below main (or below <clinit> while the JVM initializes the class). */
    private static void trim(Throwable t, Set<Throwable> seen) {
        if (t == null || !seen.add(t)) {
            return;
        }
        StackTraceElement[] frames = t.getStackTrace();
        int n = frames.length;
        while (n > 0 && ours(frames[n - 1])) {
            n--;
        }
        int start = n - trigger.length;
        if (start >= 0 && Arrays.equals(frames, start, n, trigger, 0, trigger.length)) {
            n = start;
        }
        if (n < frames.length) {
            t.setStackTrace(Arrays.copyOf(frames, n));
        }
        trim(t.getCause(), seen);
        for (Throwable suppressed : t.getSuppressed()) {
            trim(suppressed, seen);
        }
    }

    private static boolean ours(StackTraceElement frame) {
        String c = frame.getClassName();
        return c.equals(Preload.class.getName()) || c.startsWith("java.lang.invoke.LambdaForm$");
    }

    private static String[] split(byte[] data) {
        Charset charset = Charset.forName(System.getProperty("sun.jnu.encoding")); // as the launcher decodes argv
        List<String> out = new ArrayList<>();
        for (int i = 0, from = 0; i < data.length; i++) {
            if (data[i] == 0) {
                out.add(new String(data, from, i - from, charset));
                from = i + 1;
            }
        }
        return out.toArray(new String[0]);
    }

    /** Reads a pipe to its end and closes it (FileInputStream.readAllBytes would try to seek it). */
    private static byte[] readAll(FileDescriptor fd) throws IOException {
        byte[] data = new byte[1024];
        int size = 0;
        try (FileInputStream in = new FileInputStream(fd)) {
            for (int n; (n = in.read(data, size, data.length - size)) > 0; ) {
                size += n;
                if (size == data.length) {
                    data = Arrays.copyOf(data, size * 2);
                }
            }
        }
        return Arrays.copyOf(data, size);
    }

    /** An inherited descriptor by number, to read or close: Java has no public way, and sun.misc.Unsafe (exported
     * by jdk.unsupported, given to boot class path code) sets FileDescriptor's field. */
    private static FileDescriptor descriptor(int fd) throws ReflectiveOperationException {
        sun.misc.Unsafe unsafe = sun.misc.Unsafe.getUnsafe();
        FileDescriptor descriptor = new FileDescriptor();
        unsafe.putInt(descriptor, unsafe.objectFieldOffset(FileDescriptor.class.getDeclaredField("fd")), fd);
        return descriptor;
    }
}
