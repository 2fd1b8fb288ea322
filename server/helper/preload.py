# A pre-started python3 in a warm sandbox (server/pool.py): booted before its job exists, it closes the descriptor
# named by its second argument (the driver then reports the sandbox ready), waits for the job's argv on the one
# named by its first, then runs the job's program as `python3 PROGRAM ARGS...` would.
# Run as `python3 -c <this file>`: it uses only what the interpreter has loaded at start-up, so the program finds
# the same modules loaded, the same __main__ (file, loader, no leftovers of this code), argv, orig_argv and
# sys.path[0], tracebacks without this code's frames, and the same exit status (SystemExit, 1 for an uncaught
# exception, SIGINT for KeyboardInterrupt). What stays visible: two frames of this code below the program's
# (sys._getframe().f_back), and the interpreter's start-up is not in the job's CPU time.
def _conveyor_preload() -> None:
    import os
    import sys

    import __main__

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
    sys.argv[:] = argv
    sys.orig_argv[:] = [sys.orig_argv[0], *argv]
    sys.path[0] = os.path.dirname(path)
    loader = sys.modules["_frozen_importlib_external"].SourceFileLoader("__main__", path)
    scope = vars(__main__)
    scope.clear()
    scope.update(
        __name__="__main__",
        __doc__=None,
        __package__=None,
        __loader__=loader,
        __spec__=None,
        __annotations__={},
        __builtins__=sys.modules["builtins"],
        __file__=path,
        __cached__=None,
    )
    try:
        with open(path, "rb") as source:
            code = compile(source.read(), path, "exec", dont_inherit=True)
        exec(code, scope)
    except SystemExit:
        raise
    except BaseException as exc:
        tb = exc.__traceback__
        while tb is not None and tb.tb_frame.f_code.co_filename != path:
            tb = tb.tb_next  # this code's frames
        sys.excepthook(type(exc), exc.with_traceback(tb), tb)
        if isinstance(exc, KeyboardInterrupt):
            import signal

            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGINT)
        raise SystemExit(1) from None


_conveyor_preload()
