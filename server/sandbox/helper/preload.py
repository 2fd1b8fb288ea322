# A pre-started python3 in a warm sandbox (sandbox/pool.py): booted before its job exists, it closes the descriptor
# named by its second argument (the driver then reports the sandbox ready), waits for the job's argv on the one
# named by its first, then runs the job's program as `python3 PROGRAM ARGS...` would.
# Run as `python3 -c <this file>`: it uses only what the interpreter has loaded at start-up, so the program finds
# the same modules loaded, the same __main__ (file, loader, no leftovers of this code), argv, orig_argv, sys.path[0]
# and importer cache, tracebacks without this code's frames (the excepthook's failures shown as the interpreter
# shows them), and the same exit status (SystemExit, 1 for an uncaught exception, SIGINT for KeyboardInterrupt).
# A source this cannot compile as the interpreter reads it (a NUL byte) is handed to a fresh `python3` by exec.
# What stays visible: two frames of this code below the program's (sys._getframe().f_back), this code in
# /proc/self/cmdline, the process's start time, and that the interpreter's start-up is not in the job's CPU time.
def _conveyor_preload() -> None:
    import os
    import sys

    import __main__

    uncaught = _conveyor_uncaught  # the module's globals are the program's from here on
    fd = int(sys.argv[1])
    os.close(int(sys.argv[2]))  # booted
    data = b""
    while chunk := os.read(fd, 65536):
        data += chunk
    os.close(fd)
    if not data:
        os._exit(0)  # discarded before it got a job
    argv = [os.fsdecode(arg) for arg in data.split(b"\0")[:-1]]
    path = os.path.join(os.getcwd(), argv[0])
    with open(path, "rb") as source:
        text = source.read()
    if b"\0" in text:  # the interpreter's reader stops at a NUL, compile() refuses it: let the interpreter do it
        os.execv(sys.executable, [sys.orig_argv[0], *argv])
    sys.argv[:] = argv
    sys.orig_argv[:] = [sys.orig_argv[0], *argv]
    sys.path[0] = os.path.dirname(path)
    external = sys.modules["_frozen_importlib_external"]
    external.PathFinder._path_importer_cache(path)  # as the interpreter looks the script up as a zip first
    scope = vars(__main__)
    scope.clear()
    scope.update(
        __name__="__main__",
        __doc__=None,
        __package__=None,
        __loader__=external.SourceFileLoader("__main__", path),
        __spec__=None,
        __annotations__={},
        __builtins__=sys.modules["builtins"],
        __file__=path,
        __cached__=None,
    )
    failed = None
    try:
        exec(compile(text, path, "exec", dont_inherit=True), scope)
    except SystemExit:
        raise
    except BaseException as exc:
        failed = exc
    if failed is not None:  # outside the except block: the hook runs with no exception being handled, as it does
        uncaught(failed)


def _conveyor_uncaught(exc: BaseException) -> None:
    """What the interpreter does with an uncaught exception (Python/pythonrun.c, _PyErr_PrintEx), from the program's
    first frame on; then exit 1, or by SIGINT for KeyboardInterrupt."""
    import os
    import sys

    def trimmed(error: BaseException) -> BaseException:
        tb = error.__traceback__
        while tb is not None and tb.tb_frame.f_code.co_filename == "<string>":
            tb = tb.tb_next  # this code's frames
        return error.with_traceback(tb)

    def say(text: str) -> None:
        if sys.stderr is not None:
            sys.stderr.write(text)

    exc = trimmed(exc)
    try:
        hook = sys.excepthook
    except AttributeError:
        say("sys.excepthook is missing\n")
        sys.__excepthook__(type(exc), exc, exc.__traceback__)
    else:
        try:
            hook(type(exc), exc, exc.__traceback__)
        except SystemExit:
            raise
        except BaseException as error:
            error.__context__ = None  # the interpreter calls the hook with no exception being handled
            error = trimmed(error)
            say("Error in sys.excepthook:\n")
            sys.__excepthook__(type(error), error, error.__traceback__)
            say("\nOriginal exception was:\n")
            sys.__excepthook__(type(exc), exc, exc.__traceback__)
    if isinstance(exc, KeyboardInterrupt):
        import signal

        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    raise SystemExit(1)


_conveyor_preload()
