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
# A program that ends normally leaving nothing for the interpreter's exit to do (see _conveyor_settled) ends with
# os._exit(0): the interpreter's teardown takes 1.5-3 ms and would only free memory. For that check this code keeps
# an audit hook (a C method that keeps nothing; no interface lists them) and gc, out of sys.modules. The check looks
# at every object the program could have left; those of the boot are looked at once before the job, after a full
# collection puts them in the oldest generation (so gc.get_stats() shows that collection), and at the exit only the
# younger generations are, unless a collection has moved something of the program's among the old (1.2 ms a job
# before, 0.1 ms now, for a hello).
TYPE_CHECKING = False  # mypy reads it as typing's (no import here: see above)
if TYPE_CHECKING:
    from collections.abc import Callable
    from types import ModuleType
    from typing import Any

    Check = Callable[..., bool]
    StreamsOf = Callable[[ModuleType], "dict[int, object] | None"]
    # What the exit check knows of the boot's objects: the stream layers, the classes and their shapes (whether
    # each has its own __del__, its bases), and how many collections of generations 1 and 2 there had been.
    Old = tuple[tuple[object, ...], tuple[type, ...], tuple[tuple[bool, tuple[type, ...]], ...], list[int]]
    YoungCheck = Callable[..., "bool | None"]


def _conveyor_preload() -> None:
    import os
    import sys

    import __main__

    # gc, for the exit check, is taken back out of sys.modules: the program finds the modules it would find.
    known = "gc" in sys.modules
    import gc

    if not known:
        del sys.modules["gc"]
    uncaught, checks = _conveyor_uncaught, _conveyor_private(sys)  # the module's globals are the program's from here on
    settled = checks["_conveyor_settled"]
    # compile()'s first call builds the ast module's types (~0.6 ms): before the job, not in it. The program finds
    # them built either way (its source is compiled with compile() below, before it runs).
    compile("", "", "exec")
    boot = set(sys.modules)
    old = checks["_conveyor_old_checked"](sys, gc)  # before the job: its exit looks at what is younger
    # Records that a program set an audit hook, a profiler or a tracer (each would see the exit check), keeping
    # nothing: dict.pop(event, args) removes only these keys, and a C method has no frame for a tracer to see.
    unseen = dict.fromkeys(("sys.addaudithook", "sys.setprofile", "sys.settrace"))
    none_seen = dict(unseen)
    sys.addaudithook(unseen.pop)
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
    del source  # closed, but an open file's kind to the exit check
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
    elif unseen == none_seen and settled(os, sys, gc, boot, old):  # `==`, not a call, first: a profiler sees calls
        os._exit(0)


def _conveyor_private(sys: "ModuleType") -> "dict[str, Callable[..., Any]]":
    """The exit check's functions again, with globals of their own holding only the builtins: they run once the
    module's globals have become the program's (__main__'s), where `all` or `id` may be the program's own."""
    private: dict[str, Any] = {"__builtins__": sys.modules["builtins"]}
    made: dict[int, object] = {}
    for name in (  # each after those its defaults name
        "_conveyor_abc_only",
        "_conveyor_finalizing",
        "_conveyor_nothing_left",
        "_conveyor_streams",
        "_conveyor_old_checked",
        "_conveyor_young_settled",
        "_conveyor_settled",
    ):
        function = globals()[name]
        defaults = tuple(made.get(id(value), value) for value in function.__defaults__ or ())
        made[id(function)] = private[name] = type(function)(function.__code__, private, name, defaults)
    return private


def _conveyor_abc_only(objects: "list[object]", kinds: "list[type]", kind: type, weak: "ModuleType") -> bool:
    """Whether every weak reference of `kind` has no callback or abc's cache callback (_abc.c: a C method `_destroy`
    of a weak reference to the cache, which drops the entry)."""
    at = -1
    while True:
        try:
            at = kinds.index(kind, at + 1)
        except ValueError:
            return True
        callback = objects[at].__callback__  # type: ignore[attr-defined]
        if callback is None:
            continue
        if type(callback) is not type(len) or callback.__name__ != "_destroy":
            return False
        if type(getattr(callback, "__self__", None)) is not weak.ReferenceType:
            return False


def _conveyor_finalizing(kind: type) -> bool:
    """Whether instances of `kind` run code as they are destroyed (__del__, which tp_finalize shows as too). Looked
    up in the classes' own dicts: a metaclass's __getattr__ would run the program's code."""
    mro = type.__getattribute__(kind, "__mro__")
    return any("__del__" in type.__getattribute__(k, "__dict__") for k in mro)


def _conveyor_nothing_left(
    sys: "ModuleType",
    gc: "ModuleType",
    streams: "dict[int, object]",
    abc_only: "Check" = _conveyor_abc_only,
    finalizing: "Callable[[type], bool]" = _conveyor_finalizing,
) -> bool:
    """Whether the only objects with finalizers are the standard streams (every instance of a class is tracked by gc
    in this python, so every object with a __del__ is listed) and every weak reference's callback is abc's own."""
    objects = gc.get_objects()
    kinds = list(map(type, objects))
    weak = sys.modules["_weakref"]
    if not all(gc.is_tracked(layer) for layer in streams.values()):
        return False
    for kind in set(kinds):
        if kind in (weak.ProxyType, weak.CallableProxyType):
            return False
        if finalizing(kind):
            if kinds.count(kind) != sum(type(layer) is kind for layer in streams.values()):
                return False
        if issubclass(kind, weak.ReferenceType) and not abc_only(objects, kinds, kind, weak):
            return False
    return True


def _conveyor_streams(sys: "ModuleType") -> "dict[int, object] | None":
    """The standard streams and their layers as the interpreter set them up (by id), or None when a program replaced
    one or made stdout's or stderr's flush do something."""
    io, streams = sys.modules["_io"], dict[int, object]()
    for name in ("stdin", "stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is not getattr(sys, f"__{name}__") or type(stream) is not io.TextIOWrapper or stream.closed:
            return None
        if name != "stdin" and not (stream.write_through and type(stream.buffer) is io.FileIO):
            return None
        layers = [stream, stream.buffer, getattr(stream.buffer, "raw", None)]
        streams.update((id(layer), layer) for layer in layers if layer is not None)
    return streams


def _conveyor_old_checked(
    sys: "ModuleType",
    gc: "ModuleType",
    streams_of: "StreamsOf" = _conveyor_streams,
    nothing_left: "Check" = _conveyor_nothing_left,
) -> "Old | None":
    """Before the job: every object of the boot to the oldest generation, and what the exit check needs to know of
    them (None when the boot left something it must look at again, or the check failed: then the exit looks at
    everything)."""
    try:
        gc.collect()
        streams = streams_of(sys)
        if streams is None or not nothing_left(sys, gc, streams):
            return None
        get = type.__getattribute__
        # The classes of the boot (static types cannot change) and what decides whether theirs finalize.
        classes = tuple(c for c in gc.get_objects() if issubclass(type(c), type))
        shapes = tuple(("__del__" in get(c, "__dict__"), get(c, "__bases__")) for c in classes)
        layers = tuple(streams.values())  # kept: the stream layers stay these objects, none freed
        return layers, classes, shapes, [generation["collections"] for generation in gc.get_stats()[1:]]
    except Exception:
        return None


def _conveyor_young_settled(
    sys: "ModuleType",
    gc: "ModuleType",
    streams: "dict[int, object]",
    old: "Old",
    finalizing: "Callable[[type], bool]" = _conveyor_finalizing,
    abc_only: "Check" = _conveyor_abc_only,
) -> "bool | None":
    """The exit check over the objects younger than the boot's (`old`: _conveyor_old_checked), or None when the old
    ones must be looked at again: a collection of the program's moved some of its objects among them, a class of
    the boot changed, the streams are others, or a class of the program's finalizes (an old object may have been
    given it)."""
    layers, classes, shapes, collections = old
    if [generation["collections"] for generation in gc.get_stats()[1:]] != collections:
        return None
    if len(streams) != len(layers) or not all(id(layer) in streams and gc.is_tracked(layer) for layer in layers):
        return None
    get = type.__getattribute__
    for c, (deleting, bases) in zip(classes, shapes, strict=True):
        if ("__del__" in get(c, "__dict__")) is not deleting or get(c, "__bases__") is not bases:
            return None
    objects = gc.get_objects(0) + gc.get_objects(1)
    kinds = list(map(type, objects))
    weak = sys.modules["_weakref"]
    for kind in {id(kind): kind for kind in kinds}.values():  # by id: a metaclass's __hash__ is the program's code
        if kind is weak.ProxyType or kind is weak.CallableProxyType or finalizing(kind):
            return False  # the stream layers are old: a young object that finalizes is the program's
        if issubclass(kind, weak.ReferenceType) and not abc_only(objects, kinds, kind, weak):
            return False
        if issubclass(kind, type) and any(finalizing(c) for c, k in zip(objects, kinds, strict=True) if k is kind):
            return None
    # This check's own objects may have started a collection (one runs inside the allocation that passes the
    # threshold), moving the program's young objects among the old before they were listed: then they were not seen.
    if [generation["collections"] for generation in gc.get_stats()[1:]] != collections:
        return None
    return True


def _conveyor_settled(
    os: "ModuleType",
    sys: "ModuleType",
    gc: "ModuleType",
    boot: "set[str]",
    old: "Old | None",
    streams_of: "StreamsOf" = _conveyor_streams,
    nothing_left: "Check" = _conveyor_nothing_left,
    young_settled: "YoungCheck" = _conveyor_young_settled,
) -> bool:
    """Whether the interpreter's exit would do nothing the program could see, so os._exit(0) ends it the same: no
    module imported (so no atexit callback, no threading to join, no extension's exit function), stdout and stderr
    written through to their descriptors (their flush has nothing to do), gc without callbacks, debug flags or
    frozen objects, and nothing left that runs code as it is destroyed: no object with a finalizer (__del__, a
    suspended generator, an open file) but the standard streams, no weak reference with a callback but those of
    abc's caches, and no thread but this one. (No audit hook, profiler or tracer: the caller checked.)"""
    try:
        if set(sys.modules) != boot or gc.callbacks or gc.garbage:
            return False
        if os.stat("/proc/self/task").st_nlink != 3:  # another thread, which may still run while the interpreter exits
            return False
        if gc.get_debug() or gc.get_freeze_count():
            return False
        streams = streams_of(sys)  # (defaults: the module's globals are the program's by now)
        if streams is None:
            return False
        if old is not None and (young := young_settled(sys, gc, streams, old)) is not None:
            return young
        return nothing_left(sys, gc, streams)
    except Exception:
        return False


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
