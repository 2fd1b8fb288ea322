"""Language definitions: the shipped file, lookup by alias, command templating, malformed files."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.sandbox.languages import LanguageIndex, load_languages

SHIPPED = {"python", "javascript", "bash", "c", "cpp", "java", "rust", "perl", "go", "ruby", "php", "executable"}


def test_ships_fifty_languages_and_executables() -> None:
    languages = load_languages()
    assert SHIPPED <= set(languages) and len(languages) == 50
    assert languages["java"].source == "Main.java"
    assert languages["c"].compile is not None and languages["python"].compile is None


@pytest.mark.parametrize(
    ("name", "canonical"),
    [
        ("python", "python"),
        ("py", "python"),
        ("python3", "python"),
        ("node", "javascript"),
        ("js", "javascript"),
        ("c++", "cpp"),
        ("C++", "cpp"),
        (" Rust ", "rust"),
        ("java", "java"),
        ("cobol", "cobol"),
        ("golang", "go"),
        ("swift", None),
        ("", None),
    ],
)
def test_resolve_names_and_aliases(name: str, canonical: str | None) -> None:
    index = LanguageIndex(load_languages().values())
    assert index.resolve(name) == canonical


def test_index_only_knows_the_languages_given() -> None:
    languages = load_languages()
    index = LanguageIndex([languages["python"]])
    assert index.resolve("py") == "python"
    assert index.resolve("node") is None
    assert [lang.name for lang in index] == ["python"]


def test_commands_fill_the_heap_and_append_args() -> None:
    languages = load_languages()
    run = languages["java"].run_argv(["--x", "{heap_mb}"], heap_mb=128)
    assert "-Xmx128m" in run[2].split()
    assert run[-3:] == ["Main", "--x", "{heap_mb}"]  # the job's args are passed verbatim, never templated
    compile_cmd = languages["java"].compile_argv(heap_mb=64)
    assert compile_cmd is not None and "-J-Xmx64m" in compile_cmd
    assert languages["python"].compile_argv(heap_mb=64) is None


def test_out_of_memory_markers() -> None:
    python = load_languages()["python"]
    assert python.ran_out_of_memory("Traceback ...\nMemoryError\n")
    assert not python.ran_out_of_memory("ValueError: nope\n")


def test_etc_globs_only_return_existing_paths(tmp_path: Path) -> None:
    path = tmp_path / "langs.toml"
    path.write_text(f'[x]\nsource = "x"\nrun = ["x"]\nversion = ["x"]\netc = ["{tmp_path}/conf-*", "/nonexistent/*"]\n')
    (tmp_path / "conf-1").mkdir()
    assert load_languages(path)["x"].etc_paths() == [str(tmp_path / "conf-1")]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[x]\nsource = "x"\nrun = ["x"]\n', "missing keys ['version']"),
        ('[x]\nsource = "x"\nrun = ["x"]\nversion = ["x"]\nbogus = 1\n', "unknown keys ['bogus']"),
        ('[x]\nsource = "x"\nrun = []\nversion = ["x"]\n', "non-empty command"),
        ('[x]\nsource = "../x"\nrun = ["x"]\nversion = ["x"]\n', "plain file name"),
        (
            '[x]\nsource = "x"\nrun = ["x"]\nversion = ["x"]\n[y]\naliases = ["X"]\nsource = "y"\nrun = ["y"]\n'
            'version = ["y"]\n',
            "used by both x and y",
        ),
        ('[x]\nsource = "x"\nrun = ["x"]\nversion = ["x"]\ninteractive_env = { "A=B" = "1" }\n', "contain '='"),
        ('[x]\nsource = "x"\nrun = ["x"]\nversion = ["x"]\ninteractive_env = ["A"]\n', "a table of strings"),
    ],
)
def test_malformed_definitions_name_the_problem(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "langs.toml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_languages(path)


def test_several_files_compile_together_entry_point_first() -> None:
    languages = load_languages()
    c = languages["c"]
    program = c.program(["util.c", "main.c", "util.h", "README"], ["-DN=3", "-Wall"])
    assert c.compile_argv(heap_mb=64, program=program) == [
        "gcc", "-O2", "-std=gnu17", "-DN=3", "-Wall", "-o", "main", "util.c", "main.c", "-lm",
    ]  # fmt: skip
    assert c.run_argv(["x"], heap_mb=64, program=program) == ["./main", "x"]


def test_interactive_runs_of_c_programs_are_line_buffered(tmp_path: Path) -> None:
    languages = load_languages()
    c, python = languages["c"], languages["python"]
    stdbuf = ["LD_PRELOAD=/usr/libexec/coreutils/libstdbuf.so", "_STDBUF_I=L", "_STDBUF_O=L"]
    assert c.run_argv(["x"], heap_mb=64, interactive=True) == ["env", *stdbuf, "./main", "x"]
    assert c.run_argv(["x"], heap_mb=64) == ["./main", "x"]  # batch and judge runs keep full buffering
    assert python.run_argv([], heap_mb=64, interactive=True) == ["python3", "main.py"]  # PYTHONUNBUFFERED already
    # Never a preload the loader cannot find: it would print an error on the program's stderr.
    path = tmp_path / "langs.toml"
    path.write_text(
        '[x]\nsource = "x"\nrun = ["./x"]\nversion = ["x"]\n'
        f'interactive_env = {{ LD_PRELOAD = "{tmp_path}/missing.so", _STDBUF_O = "L" }}\n'
    )
    assert load_languages(path)["x"].run_argv([], heap_mb=64, interactive=True) == ["./x"]


def test_the_entry_point_names_what_runs() -> None:
    languages = load_languages()
    python = languages["python"]
    assert python.run_argv([], heap_mb=64, program=python.program(["app.py", "lib/util.py"])) == ["python3", "app.py"]
    assert python.run_argv([], heap_mb=64) == ["python3", "main.py"]  # the one-file shorthand
    java = languages["java"]
    program = java.program(["pkg/App.java", "pkg/Util.java"])
    compile_cmd = java.compile_argv(heap_mb=64, program=program)
    assert compile_cmd is not None and compile_cmd[-2:] == ["pkg/App.java", "pkg/Util.java"]
    assert java.run_argv([], heap_mb=64, program=program)[-1] == "pkg.App"


def test_options_expand_to_nothing_when_none_are_given() -> None:
    rust = load_languages()["rust"]
    compile_cmd = rust.compile_argv(heap_mb=64)
    assert compile_cmd == ["rustc", "--edition", "2021", "-O", "-o", "main", "main.rs"]
