/* The native half of warm java sandboxes' pre-started JVM (server/sandbox/helper/Preload.java): waits for the job, then
 * does what the JDK's own launcher (libjli's java.c, JavaMain) does once the JVM is up, by the same JNI calls into
 * sun.launcher.LauncherHelper (JNI needs no export to call it): the class loaded by loadMainClass (its own error
 * messages and exit status), checked by validateMainClass, the arguments made Strings by makePlatformString, main
 * looked up (initializing the class) and called with CallStaticVoidMethod. The program's main thread then has nothing
 * of the launcher's between it and main, and is as far along its identity hash codes as a cold start's (see
 * validate_apart). What cannot be done the same way (a .main-class the shell would read otherwise, a JavaFX
 * application) is handed to the run command by exec, in place of this JVM: the cold start itself. */
#define _GNU_SOURCE
#include <errno.h>
#include <jni.h>
#include <pthread.h>
#include <stdio.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define LM_CLASS 1 /* LauncherHelper's mode for a main class given by name */
#define MAX_JOB (1 << 20)
#define USAGE_FAILED 120 /* as conveyor-run's */

static jclass launcher(JNIEnv *env) { return (*env)->FindClass(env, "sun/launcher/LauncherHelper"); }

/* java.c NewPlatformString: bytes to a String as the launcher decodes its command line. */
static jstring platform_string(JNIEnv *env, const char *s) {
    jclass cls = launcher(env);
    if (cls == NULL) return NULL;
    jmethodID make = (*env)->GetStaticMethodID(env, cls, "makePlatformString", "(Z[B)Ljava/lang/String;");
    jsize len = (jsize)strlen(s);
    jbyteArray bytes = (*env)->NewByteArray(env, len);
    if (make == NULL || bytes == NULL) return NULL;
    (*env)->SetByteArrayRegion(env, bytes, 0, len, (const jbyte *)s);
    jstring str = (*env)->CallStaticObjectMethod(env, cls, make, JNI_TRUE, bytes);
    (*env)->DeleteLocalRef(env, bytes);
    return (*env)->ExceptionCheck(env) ? NULL : str;
}

/* java.c NewPlatformStringArray. */
static jobjectArray platform_strings(JNIEnv *env, char **strv, int n) {
    jclass string = (*env)->FindClass(env, "java/lang/String");
    jobjectArray array = string == NULL ? NULL : (*env)->NewObjectArray(env, n, string, NULL);
    for (int i = 0; array != NULL && i < n; i++) {
        jstring str = platform_string(env, strv[i]);
        if (str == NULL) return NULL;
        (*env)->SetObjectArrayElement(env, array, i, str);
        (*env)->DeleteLocalRef(env, str);
    }
    return array;
}

/* The run command itself (`sh -c SCRIPT CLASS ARGS...`) in place of this JVM, with the signal mask it had and none of
 * the JVM's descriptors (its modules image, its argv pipe): the program then has what a cold start's has. */
static void run_command(char **argv) {
    sigset_t none;
    sigemptyset(&none);
    pthread_sigmask(SIG_SETMASK, &none, NULL);
    if (close_range(3, ~0U, 0) != 0)
        for (int fd = 3; fd < 65536; fd++) close(fd); /* a kernel before 5.9 */
    execvp("sh", argv);
    _exit(127);
}

/* The class SCRIPT runs: CLASS, or .main-class's text less its trailing newlines when it is a regular file ($(cat)).
 * NULL where the shell could read it otherwise (unreadable, too big, a NUL byte). */
static char *main_class(char *given) {
    struct stat st;
    if (stat(".main-class", &st) != 0 || !S_ISREG(st.st_mode)) return given;
    FILE *in = fopen(".main-class", "rb");
    if (in == NULL) return NULL;
    char *text = calloc(4097, 1);
    size_t size = text == NULL ? 0 : fread(text, 1, 4096, in);
    int more = fgetc(in) != EOF;
    fclose(in);
    if (text == NULL || more || memchr(text, 0, size) != NULL) return NULL;
    while (size > 0 && text[size - 1] == '\n') text[--size] = 0;
    return text;
}

/* The job's `-c SCRIPT CLASS ARGS...` (NUL-terminated strings) from FD, read to its end; its count in *N. */
static char **read_job(int fd, int *n) {
    char *data = malloc(MAX_JOB + 1);
    size_t size = 0;
    ssize_t got;
    while (data != NULL && size < MAX_JOB && (got = read(fd, data + size, MAX_JOB - size)) != 0) {
        if (got > 0) size += (size_t)got;
        else if (errno != EINTR) return NULL;
    }
    close(fd);
    if (data == NULL || size == MAX_JOB) return NULL; /* the API's bounds keep a job's command far below */
    if (size == 0) _exit(0); /* discarded before it got a job */
    *n = 0;
    for (size_t i = 0; i < size; i++) *n += data[i] == 0;
    char **argv = calloc((size_t)*n + 2, sizeof *argv);
    if (argv == NULL) return NULL;
    argv[0] = "sh";
    for (size_t i = 0, k = 1; i < size && (int)k <= *n; k++) {
        argv[k] = data + i;
        i += strlen(data + i) + 1;
    }
    return argv;
}

/* sun.java.command as the launcher sets it: the class and its arguments, space-separated. */
static void set_command(JNIEnv *env, const char *name, char **args, int n) {
    size_t len = strlen(name) + 1;
    for (int i = 0; i < n; i++) len += strlen(args[i]) + 1;
    char *command = malloc(len);
    if (command == NULL) return;
    strcpy(command, name);
    for (int i = 0; i < n; i++) strcat(strcat(command, " "), args[i]);
    jclass system = (*env)->FindClass(env, "java/lang/System");
    jmethodID set = system == NULL ? NULL
        : (*env)->GetStaticMethodID(env, system, "setProperty", "(Ljava/lang/String;Ljava/lang/String;)Ljava/lang/String;");
    jstring key = (*env)->NewStringUTF(env, "sun.java.command");
    jstring value = platform_string(env, command);
    if (set != NULL && key != NULL && value != NULL) (*env)->CallStaticObjectMethod(env, system, set, key, value);
    free(command);
}

/* LauncherHelper.validateMainClass on a thread of its own: it reflects on the class (Class.getMethod), which takes the
 * next identity hash code of the thread it runs on; a cold start's main thread did that for the program's class, the
 * pre-started one for this launcher's class already. It ends (or, refusing, exits the JVM as the launcher does)
 * before main runs, and gives its thread id back. */
struct validation {
    JavaVM *vm;
    jclass launcher, main;
    jmethodID validate;
};

static void *validate(void *arg) {
    struct validation *v = arg;
    JNIEnv *env;
    JavaVMAttachArgs attach = {JNI_VERSION_1_8, "conveyor-preload", NULL};
    if ((*v->vm)->AttachCurrentThread(v->vm, (void **)&env, &attach) != JNI_OK) return NULL;
    (*env)->CallStaticVoidMethod(env, v->launcher, v->validate, v->main);
    if ((*env)->ExceptionCheck(env)) (*env)->ExceptionClear(env);
    (*v->vm)->DetachCurrentThread(v->vm);
    return v; /* validated */
}

static int validate_apart(JNIEnv *env, jclass cls, jclass main_cls) {
    jclass thread = (*env)->FindClass(env, "java/lang/Thread");
    jfieldID ids = thread == NULL ? NULL : (*env)->GetStaticFieldID(env, thread, "threadSeqNumber", "J");
    if (ids == NULL) return -1;
    jlong id = (*env)->GetStaticLongField(env, thread, ids);
    struct validation v = {NULL, (*env)->NewGlobalRef(env, cls), (*env)->NewGlobalRef(env, main_cls), NULL};
    v.validate = (*env)->GetStaticMethodID(env, cls, "validateMainClass", "(Ljava/lang/Class;)V");
    pthread_t t;
    void *done = NULL;
    if (v.validate == NULL || (*env)->GetJavaVM(env, &v.vm) != 0 || pthread_create(&t, NULL, validate, &v) != 0)
        return -1;
    pthread_join(t, &done);
    (*env)->SetStaticLongField(env, thread, ids, id);
    return done == NULL ? -1 : 0;
}

JNIEXPORT void JNICALL Java_conveyor_preload_Preload_run(JNIEnv *env, jclass self, jint argv_fd, jint booted_fd) {
    (void)self;
    close(booted_fd); /* booted */
    int n = 0;
    char **argv = read_job(argv_fd, &n);
    if (argv == NULL) _exit(USAGE_FAILED);
    if (n < 3 || strcmp(argv[1], "-c") != 0) run_command(argv); /* not the command it stands for: run it as it is */
    char *name = main_class(argv[3]);
    if (name == NULL) run_command(argv);
    char **args = &argv[4];
    int nargs = n - 3;
    set_command(env, name, args, nargs);
    /* java.c JavaMain from LoadMainClass on, with LauncherHelper.checkAndLoadMain's steps: its output to stderr, the
     * class loaded (or the launcher's message and exit), the JavaFX case handed to the run command, the class
     * checked (apart), recorded as the application's. */
    jclass cls = launcher(env);
    jmethodID output = cls == NULL ? NULL : (*env)->GetStaticMethodID(env, cls, "initOutput", "(Z)V");
    jmethodID load = cls == NULL ? NULL : (*env)->GetStaticMethodID(env, cls, "loadMainClass", "(ILjava/lang/String;)Ljava/lang/Class;");
    jmethodID fx = cls == NULL ? NULL : (*env)->GetStaticMethodID(env, cls, "doesExtendFXApplication", "(Ljava/lang/Class;)Z");
    jfieldID app = cls == NULL ? NULL : (*env)->GetStaticFieldID(env, cls, "appClass", "Ljava/lang/Class;");
    if ((*env)->ExceptionCheck(env) || output == NULL || load == NULL || fx == NULL || app == NULL) run_command(argv);
    (*env)->CallStaticVoidMethod(env, cls, output, JNI_TRUE);
    jstring what = platform_string(env, name);
    jclass main_cls = what == NULL ? NULL : (*env)->CallStaticObjectMethod(env, cls, load, LM_CLASS, what);
    if (main_cls == NULL || (*env)->ExceptionCheck(env)) return;
    (*env)->SetStaticObjectField(env, cls, app, main_cls);
    if ((*env)->CallStaticBooleanMethod(env, cls, fx, main_cls) || (*env)->ExceptionCheck(env)) run_command(argv);
    if (validate_apart(env, cls, main_cls) != 0) run_command(argv);
    jobjectArray main_args = platform_strings(env, args, nargs);
    if (main_args == NULL) return;
    jmethodID main_id = (*env)->GetStaticMethodID(env, main_cls, "main", "([Ljava/lang/String;)V");
    if (main_id == NULL) return;
    (*env)->CallStaticVoidMethod(env, main_cls, main_id, main_args);
}
