"""The documentation cannot rot: every `gruv ...` command line that README.md and docs/*.md show runs,
and every config key, module and repository path they name exists.

What is checked, per page (a failure names the page and the line):

- Commands: each `gruv ...` line of a fenced code block (backslash continuations joined, comments
  and shell redirections dropped) and each inline code span that starts with `gruv `. It is parsed
  by the real parser (an unknown option, a bad choice or type fails), then run as
  `python3 -m gruv_hpc.cli ...` from a scratch directory:
    - `gruv sweep submit` with `--dry-run` (it loads and type-checks the sweep file and every
      override, and prints the sbatch script; nothing is written);
    - `gruv preprocess` with `--print-split` on a tiny synthetic corpus standing in for the
      artist folders (options and folders checked, nothing written); its `slurm.KEY=` overrides
      are built into the SlurmConfig the jobs would get;
    - every other subcommand with `--help` appended (options before it are still converted and
      checked by argparse), and its work checked in-process where it has keys: `gruv train`'s
      `key=value` overrides are built into a TrainConfig, `gruv pipeline submit`'s file and
      overrides are loaded by `load_pipeline` (corpus folders replaced by the tiny corpus).
  Placeholders are made real: `$USER` and the like become plain names, absolute paths move under
  a scratch root, `[optional]` brackets and `a|b` alternatives keep their first form, UPPER_CASE
  values of typed options get a value of the option's type, a placeholder sweep or pipeline file
  becomes one of jobs/, and a file made by `cp SRC DST` earlier in the block is SRC.
- Config keys: `key=value` / `key = value` and dotted names (`slurm.KEY`, `train.KEY`, `grid.KEY`,
  `sweep.slurm.KEY`, `preprocess.KEY`, `analysis.KEY`, ...) in inline code spans must name a field
  of the config they address; UPPER_CASE parts (KEY, ARTIST) are placeholders. TOML code blocks are
  loaded by the real loaders (a pipeline file by `load_pipeline`, a sweep file by `load_sweep`).
- Modules: every `gruv_hpc.x.y` named in code must import (or be an attribute of one that does),
  and every repository path in inline code (`gruv_hpc/...`, `bench/...`, `tests/...`, ...) must exist.
- Names: every inline `Class.attr` and `module.function` (a call's parentheses allowed) must
  exist: our classes found by name in gruv_hpc, our modules by their last name
  (`distributed.export_env`), torch's, submitit's and numpy's by theirs.

Markdown links are not checked (pages other branches are writing are linked before they land).
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import io
import os
import re
import shlex
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# Folders and files at the top of the repository that documentation may name in inline code.
REPO_DIRS = ("gruv_hpc", "analysis", "bench", "tests", "jobs", "slurm", "docs", ".ci")
PLACEHOLDER_VALUES = {"...", "v", "value", "x", "n"}


@dataclass
class Doc:
    path: Path
    errors: list[str] = field(default_factory=list)

    def name(self) -> str:
        return str(self.path.relative_to(ROOT)) if self.path.is_relative_to(ROOT) else str(self.path)

    def fail(self, line: int, what: str, why: str) -> None:
        self.errors.append(f"{self.name()}:{line}: {what}\n    {why.strip()}")


# ---------------------------------------------------------------------------------------------
# Reading a page: fenced blocks and inline code spans, with their line numbers

FENCE = re.compile(r"^\s*(```|~~~)\s*([\w+-]*)")


def blocks(text: str) -> tuple[list[tuple[str, int, list[str]]], list[tuple[int, str]]]:
    """([(language, first line number, lines)], [(line number, inline code span)])."""
    fenced, spans = [], []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if m:
            fence, lang, start, body = m.group(1), m.group(2).lower(), i + 2, []
            i += 1
            while i < len(lines) and not lines[i].strip().startswith(fence):
                body.append(lines[i])
                i += 1
            fenced.append((lang, start, body))
        else:
            for s in re.finditer(r"(`+)(.+?)\1", lines[i]):
                spans.append((i + 1, s.group(2).strip()))
        i += 1
    return fenced, spans


def logical_lines(start: int, body: list[str]) -> list[tuple[int, str]]:
    """Lines of a shell block with backslash continuations joined."""
    out, buf, first = [], "", None
    for k, line in enumerate(body):
        if first is None:
            first = start + k
        if line.rstrip().endswith("\\"):
            buf += line.rstrip()[:-1] + " "
            continue
        out.append((first, buf + line))
        buf, first = "", None
    if buf:
        out.append((first, buf))
    return out


def tokens(text: str) -> list[str]:
    """Shell words of a command as documentation writes it, placeholders simplified: variables
    become plain names, [optional] brackets go (an `| alternative` inside them too), `a|b` keeps a,
    and the words stop at a comment, a pipe, a redirection or a separator."""
    text = re.sub(r"\$\{?([A-Za-z_]\w*)\}?", lambda m: m.group(1).lower(), text)
    text = re.sub(r"\s\|\s[^\]]*(?=\])", "", text)        # [--a K | --b S] -> [--a K]
    text = re.sub(r"(?<=[\w.>])\|[\w|.<>-]+", "", text)    # auto|slurm|local -> auto
    lex = shlex.shlex(text, posix=True, punctuation_chars=";&|<>()")
    lex.whitespace_split = True
    lex.commenters = "#"
    words = []
    for w in lex:
        if w and w[0] in ";&|<>()":
            break
        w = w.strip("[]")
        if w and w != "...":
            words.append(w)
    return words


def gruv_argv(words: list[str]) -> list[str] | None:
    """The arguments after `gruv` (or `python -m gruv_hpc.cli`), or None for another command."""
    if words and words[0] == "gruv":
        return words[1:]
    for i, w in enumerate(words[:-2]):
        if re.fullmatch(r"python3?", Path(w).name) and words[i + 1] == "-m" and words[i + 2] == "gruv_hpc.cli":
            return words[i + 3:]
    return None


# ---------------------------------------------------------------------------------------------
# Config keys

def _schema():
    from gruv_hpc.cluster.config import SlurmConfig
    from gruv_hpc.cluster.pipeline import TOP_KEYS as PIPELINE_KEYS, AnalysisConfig, PreprocessOptions
    from gruv_hpc.cluster.sweep.spec import TOP_KEYS as SWEEP_KEYS
    from gruv_hpc.config import field_names
    from gruv_hpc.dataset.config import PreprocessConfig
    from gruv_hpc.training.config import TrainConfig
    train, slurm = set(field_names(TrainConfig)), set(field_names(SlurmConfig))
    pre = set(field_names(PreprocessConfig)) | set(field_names(PreprocessOptions))
    analysis = set(field_names(AnalysisConfig))
    # Where a dotted name points: a table of sub-tables, "*" for its own keys; None: any key.
    tree = {
        "slurm": {"*": slurm}, "train": {"*": train}, "grid": {"*": train},
        "sweep": {"train": {"*": train}, "grid": {"*": train}, "slurm": {"*": slurm}, "*": train},
        "preprocess": {"slurm": {"*": slurm}, "*": pre},
        "analysis": {"slurm": {"*": slurm}, "*": analysis},
        "corpus": None,
    }
    bare = train | slurm | pre | analysis | set(SWEEP_KEYS) | set(PIPELINE_KEYS)
    return tree, bare


def is_placeholder(part: str) -> bool:
    return part.isupper() or part.lower() == "key" or "<" in part or part == "..."


def key_error(key: str) -> str | None:
    """Why a config key as documentation writes it (``hidden``, ``slurm.partition``,
    ``sweep.slurm.KEY``) names no key, or None when it does."""
    tree, bare = _schema()
    parts = key.split(".")
    if len(parts) == 1:
        return None if is_placeholder(key) or key in bare else f"{key!r} is no config key (valid: {', '.join(sorted(bare))})"
    node = tree
    for i, part in enumerate(parts):
        if node is None or is_placeholder(part):
            return None
        last = i == len(parts) - 1
        if part in node and part != "*":  # a table (or a namespace)
            node = node[part]
            if last:
                return None
            continue
        where = ".".join(parts[:i])
        if last and "*" in node:
            return None if part in node["*"] else f"{where} has no key {part!r} (valid: {', '.join(sorted(node['*']))})"
        valid = sorted(k for k in node if k != "*") + (sorted(node["*"]) if "*" in node else [])
        return f"{where} has no key or table {part!r} (valid: {', '.join(valid)})"
    return None


SPAN_KEY = re.compile(r"^([a-z_][a-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)\s*=(?!=)")
SPAN_DOTTED = re.compile(r"^(?:slurm|train|grid|sweep|preprocess|analysis)\.[A-Za-z_][\w.]*$")


# A dotted span naming a file (`sweep.json`, `config.toml`), not a key.
FILE_SUFFIXES = {"json", "jsonl", "toml", "py", "md", "txt", "csv", "npz", "h5", "pt", "wav", "sh", "html", "yml",
                 "yaml", "log", "conf", "cfg", "ini", "out", "err", "lock", "gz", "png", "pdf", "so"}
NAMESPACES = ("slurm", "train", "grid", "sweep", "preprocess", "analysis", "corpus")


def check_span_keys(doc: Doc, line: int, span: str) -> None:
    """A key named in prose: `key=value` (a command-line override), `slurm.key = value` (a TOML
    line of a table) or a dotted `slurm.KEY`. Prose about Python is left alone: a call's
    `name="value"` or `flag=True`, an assignment `x = 0` (a bare name with spaces around `=`), a
    file name (`sweep.json`), a name outside our namespaces (`torch.backends...`)."""
    m = SPAN_KEY.match(span)
    if m:
        key, value = m.group(1), span[m.end():].strip()
        spaced = span[len(key):m.end()] != "="
        if value[:1] in "\"'" and not spaced or value in ("True", "False", "None") or spaced and "." not in key:
            return
    else:
        key = span if SPAN_DOTTED.match(span) else None
    if not key or "." in key and (key.split(".")[0] not in NAMESPACES or key.rpartition(".")[2] in FILE_SUFFIXES):
        return
    if not m and module_reference(key):
        return  # `slurm.parse_sacct`, `sweep.submit`: a module of ours by its short name
    if why := key_error(key):
        hint = " (a module is named by its full path: gruv_hpc.…)" if "." in key else ""
        doc.fail(line, f"`{span}`", why + hint)


# ---------------------------------------------------------------------------------------------
# Modules and paths

def module_error(name: str) -> str | None:
    parts = name.split(".")
    for n in range(len(parts), 0, -1):
        mod = ".".join(parts[:n])
        try:
            spec = importlib.util.find_spec(mod)
        except ModuleNotFoundError:
            spec = None
        if spec is None:
            continue
        obj = importlib.import_module(mod)
        for attr in parts[n:]:
            if not hasattr(obj, attr):
                return f"no module or attribute {name} ({mod} has no {'.'.join(parts[n:])!r})"
            obj = getattr(obj, attr)
        return None
    return f"no module {name}"


def module_reference(name: str) -> bool:
    """Whether a dotted name is `module.attribute` for one of our modules called by its last name
    (`slurm.parse_sacct` for gruv_hpc.cluster.slurm.parse_sacct)."""
    head, _, rest = name.partition(".")
    for base, root in (("gruv_hpc", ROOT / "gruv_hpc"), ("gruv_hpc.analysis", ROOT / "analysis")):
        for f in [*root.rglob(f"{head}.py"), *root.rglob(f"{head}/__init__.py")]:
            if "analysis" in f.relative_to(root).parts and base == "gruv_hpc":
                continue  # the symlink: listed under gruv_hpc.analysis
            parts = f.relative_to(root).with_suffix("").parts
            mod = ".".join((base, *(parts[:-1] if parts[-1] == "__init__" else parts)))
            if module_error(f"{mod}.{rest}") is None:
                return True
    return False


# Packages outside ours whose classes and functions the pages name (`torch.nn.LSTM`,
# `Checkpointable.checkpoint`): a name found there is checked there.
THIRD_PARTY = ("torch", "torch.nn", "torch.optim", "torch.utils.data", "submitit", "submitit.helpers", "numpy", "scipy")
SPAN_ATTR = re.compile(r"^([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+)(?:\(.*\))?$")


def our_classes() -> dict[str, list[str]]:
    """Every class defined in gruv_hpc: {name: [module, ...]} (read from the source, not imported)."""
    import ast
    out: dict[str, list[str]] = {}
    for f in (ROOT / "gruv_hpc").rglob("*.py"):
        mod = ".".join(f.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for node in ast.parse(f.read_text()).body:
            if isinstance(node, ast.ClassDef):
                out.setdefault(node.name, []).append(mod)
    return out


def has_attr(cls, attr: str) -> bool:
    """A class attribute, method, property or dataclass field (a field without a default is no
    class attribute)."""
    return hasattr(cls, attr) or attr in getattr(cls, "__dataclass_fields__", {}) or \
        any(attr in getattr(c, "__annotations__", {}) for c in getattr(cls, "__mro__", ()))


def attr_error(span: str) -> str | None:
    """Why a `Class.attr` or `module.function` span (a call's parentheses allowed) names nothing,
    or None when it exists or is not ours to judge. Our classes are found by name anywhere in
    gruv_hpc, our modules by their last name (`distributed.export_env`), other packages'
    (THIRD_PARTY) by theirs; a lower-case name that is none of these is a variable (`handle.split`)
    and a dotted file name (`sweep.json`) is a file."""
    m = SPAN_ATTR.match(span)
    if not m:
        return None
    parts = m.group(1).split(".")
    if parts[-1] in FILE_SUFFIXES or parts[0] in NAMESPACES:
        return None  # a file, or a config key (check_span_keys)
    head, rest = parts[0], parts[1:]
    if head[0].isupper():
        for mod in our_classes().get(head, []):
            obj = getattr(importlib.import_module(mod), head)
            if has_attr(obj, rest[0]) and (len(rest) == 1 or module_error(f"{mod}.{head}.{'.'.join(rest)}") is None):
                return None
        if head in our_classes():
            return f"{head} ({', '.join(our_classes()[head])}) has no attribute {'.'.join(rest)!r}"
        for pkg in THIRD_PARTY:
            try:
                obj = getattr(importlib.import_module(pkg), head, None)
            except ImportError:
                continue
            if obj is not None:
                return None if has_attr(obj, rest[0]) else f"{pkg}.{head} has no attribute {rest[0]!r}"
        return f"no class {head} in gruv_hpc (nor in {', '.join(THIRD_PARTY)})"
    if module_reference(".".join(parts)):
        return None
    ours = [f for f in (ROOT / "gruv_hpc").rglob("*") if f.name in (f"{head}.py", head) and "__pycache__" not in f.parts]
    if ours:
        return f"gruv_hpc's {head} ({', '.join(str(f.relative_to(ROOT)) for f in ours)}) has no {'.'.join(rest)!r}"
    try:
        found = importlib.util.find_spec(head) is not None
    except (ImportError, ValueError):
        found = False
    return module_error(".".join(parts)) if found else None


def check_span_attr(doc: Doc, line: int, span: str) -> None:
    if why := attr_error(span):
        doc.fail(line, f"`{span}`", why)


MODULE = re.compile(r"\bgruv_hpc(?:\.[A-Za-z_]\w*)+")
REPO_PATH = re.compile(rf"^(?:{'|'.join(re.escape(d) for d in REPO_DIRS)})/[\w./-]*$")


def check_names(doc: Doc, line: int, text: str) -> None:
    for m in MODULE.finditer(text):
        if why := module_error(m.group(0)):
            doc.fail(line, m.group(0), why)
    for word in text.split():
        word = word.strip("(),;:")
        if REPO_PATH.match(word) and not (ROOT / word.rstrip("/")).exists():
            doc.fail(line, word, f"no such file or folder in the repository: {word}")


# ---------------------------------------------------------------------------------------------
# Commands

class Scratch:
    """Where documented commands run: a directory holding links to the repository's top-level
    entries (so jobs/paper_grid.toml resolves) and room for their outputs, a root for absolute
    paths, and a tiny corpus to stand in for artist folders."""

    def __init__(self, tmp: Path, corpus: Path):
        self.tmp, self.corpus = tmp, corpus
        self.cwd = tmp / "cwd"
        self.root = tmp / "abs"
        self.cwd.mkdir(parents=True, exist_ok=True)
        self.root.mkdir(exist_ok=True)
        for p in ROOT.iterdir():
            link = self.cwd / p.name
            if p.name not in (".git",) and not link.exists():
                link.symlink_to(p)
        self.artists = sorted(d for d in corpus.iterdir() if d.is_dir())

    def path(self, p: str) -> str:
        """An absolute documented path, moved under the scratch root (relative ones stay: they
        resolve in the scratch cwd)."""
        return str(self.root / p.lstrip("/")) if p.startswith("/") and not p.startswith(str(self.tmp)) else p

    def artist_dir(self, i: int) -> str:
        return str(self.artists[i % len(self.artists)])

    def env(self) -> dict:
        # The pages' command lines are for the reader's cluster (partition=gpu, 6 CPUs): not checked
        # against this machine's (tests/test_requests.py follows the README's cluster section here).
        return {**os.environ, "PYTHONPATH": str(ROOT), "USER": os.environ.get("USER", "user"),
                "GRUV_SKIP_RESOURCE_CHECK": "1"}


def subparser(path: list[str]) -> argparse.ArgumentParser | None:
    from gruv_hpc.cli import build_parser
    p = build_parser()
    for name in path:
        sub = next((a for a in p._actions if isinstance(a, argparse._SubParsersAction)), None)
        if sub is None or name not in sub.choices:
            return None
        p = sub.choices[name]
    return p


def command_path(argv: list[str]) -> list[str]:
    """The subcommand words at the front of argv (`sweep submit`), as the parser knows them."""
    path = []
    for w in argv:
        if w.startswith("-") or subparser(path + [w]) is None:
            break
        path.append(w)
    return path


def concrete(argv: list[str], scratch: Scratch) -> list[str]:
    """Placeholder values of typed options (`--jobs N`, `--seed-start SECONDS`) replaced by one of
    their type or choices; absolute paths moved under the scratch root."""
    path = command_path(argv)
    p = subparser(path)
    actions = {s: a for a in p._actions for s in a.option_strings} if p else {}
    out = list(argv)
    for i, w in enumerate(out):
        if i > 0 and out[i - 1] in actions and actions[out[i - 1]].nargs is None:
            a = actions[out[i - 1]]
            if is_placeholder(w.split(".")[0]) or w.lower() in PLACEHOLDER_VALUES:
                out[i] = str(a.choices[0]) if a.choices else "1" if a.type in (int, float) else w
        if "=" in w and not w.startswith("-"):
            k, v = w.split("=", 1)
            out[i] = f"{k}={scratch.path(v)}"
        elif w.startswith("/"):
            out[i] = scratch.path(w)
    return out


def parse_error(argv: list[str]) -> str | None:
    """What the real parser says about argv (as gruv's main parses it), or None."""
    from gruv_hpc.cli import build_parser
    parser, err = build_parser(), io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            args, extra = parser.parse_known_args(argv)
            listed = "overrides" if hasattr(args, "overrides") else "sources" if hasattr(args, "sources") else None
            if extra and not (listed and all("=" in e and not e.startswith("-") for e in extra)):
                parser.error(f"unrecognized arguments: {' '.join(extra)}")
    except SystemExit as e:
        return err.getvalue().strip().splitlines()[-1] if e.code else None
    return None


def run_cli(argv: list[str], scratch: Scratch) -> tuple[int, str]:
    """gruv as a user runs it: `python3 -m gruv_hpc.cli ...` from the scratch directory. Returns the
    exit status and the tail of what it printed (the error line, when it failed)."""
    r = subprocess.run([sys.executable, "-m", "gruv_hpc.cli", *argv], cwd=scratch.cwd, env=scratch.env(),
                       capture_output=True, text=True, timeout=120)
    return r.returncode, "\n    ".join((r.stderr.strip() or r.stdout.strip()).splitlines()[-3:])


def option_value(argv: list[str], opt: str) -> str | None:
    return argv[argv.index(opt) + 1] if opt in argv and argv.index(opt) + 1 < len(argv) else None


def overrides_of(argv: list[str], path: list[str]) -> list[str]:
    """key=value words after the subcommand that are not an option's value."""
    p = subparser(path)
    takes = {s for a in p._actions for s in a.option_strings if a.nargs is None and not isinstance(
        a, (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse._HelpAction))} if p else set()
    out = []
    rest = argv[len(path):]
    for i, w in enumerate(rest):
        if "=" in w and not w.startswith("-") and not (i > 0 and rest[i - 1] in takes):
            out.append(w)
    return out


def placeholder_file(given: str, scratch: Scratch, copies: dict[str, str], default: str) -> str:
    if given in copies:
        return copies[given]
    stem = Path(given).stem
    return default if is_placeholder(stem) or stem.isupper() else given


def check_command(doc: Doc, line: int, argv: list[str], scratch: Scratch, copies: dict[str, str],
                  inline: bool = False) -> None:
    """One documented command line (the words after `gruv`). ``inline``: a command named in prose,
    which may leave out required arguments (`gruv pipeline submit --wait`): then only what it does
    show is checked."""
    from gruv_hpc.errors import GruvError
    shown = "gruv " + " ".join(argv)
    path = command_path(argv)
    if not path:
        doc.fail(line, shown, f"no such gruv subcommand: {argv[0] if argv else '(none)'}")
        return
    argv = concrete(argv, scratch)
    if "--help" not in argv and "-h" not in argv:
        why = parse_error(argv)
        if why is not None and not (inline and "arguments are required" in why):
            doc.fail(line, shown, why)
            return
        if why is None:
            try:
                argv = work(path, argv, scratch, copies)
            except GruvError as e:
                doc.fail(line, shown, f"{type(e).__name__}: {e}")
                return
        if argv and "--help" not in argv and "--dry-run" not in argv and "--print-split" not in argv:
            argv = argv + ["--help"]
    if argv:
        rc, out = run_cli(argv, scratch)
        if rc != 0:
            doc.fail(line, shown, out)


def work(path: list[str], argv: list[str], scratch: Scratch, copies: dict[str, str]) -> list[str]:
    """The keys of a parsed command, checked in-process where it has any, and the argv to run:
    with --dry-run or --print-split where the command has a mode that writes nothing, else as
    given (the caller appends --help)."""
    ovr = overrides_of(argv, path)
    if path == ["sweep", "submit"]:
        argv = list(argv)
        argv[2] = placeholder_file(argv[2], scratch, copies, "jobs/smoke.toml")
        return argv + ([] if "--dry-run" in argv else ["--dry-run"])
    if path == ["preprocess"]:
        from gruv_hpc.cluster.preprocess import slurm_config
        slurm_config({}, {k[6:]: v for k, v in (w.split("=", 1) for w in ovr if w.startswith("slurm."))
                          if not is_placeholder(k[6:])})
        sources = [w for w in ovr if not w.startswith("slurm.")]
        real = {w: f"{w.split('=')[0] if not is_placeholder(w.split('=')[0]) else f'artist{i}'}={scratch.artist_dir(i)}"
                for i, w in enumerate(sources)}
        argv = [real.get(w, w) for w in argv]
        split = option_value(argv, "--split-file")
        if split and not (scratch.cwd / split).exists():  # a user's own file: not ours to invent
            i = argv.index("--split-file")
            argv = argv[:i] + argv[i + 2:]
        return argv + ([] if "--print-split" in argv else ["--print-split"])
    if path == ["train"] and "--help-config" not in argv:
        from gruv_hpc.config import build, check_keys, read_file
        from gruv_hpc.training.config import TrainConfig
        given = dict(w.split("=", 1) for w in ovr)
        check_keys(TrainConfig, [k for k in given if not is_placeholder(k)], "the command line")
        real = {k: v for k, v in given.items()
                if not (is_placeholder(k) or is_placeholder(v) or v.lower() in PLACEHOLDER_VALUES)}
        cfg = option_value(argv, "--config")
        build(TrainConfig, read_file(scratch.cwd / cfg) if cfg and (scratch.cwd / cfg).exists() else {}, real,
              source="the command line")
    if path == ["pipeline", "submit"]:
        from gruv_hpc.cluster.pipeline import load_pipeline
        file = placeholder_file(argv[2], scratch, copies, "jobs/pipeline_demo.toml")
        with contextlib.chdir(scratch.cwd):
            # the corpus folders are the user's: the tiny corpus stands in for each artist
            artists = list(tomllib.loads(Path(file).read_text()).get("corpus", {})) if Path(file).exists() else []
            artists += [w.split("=")[0][7:] for w in ovr if w.startswith("corpus.")]
            keep = [w for w in ovr if not w.startswith("corpus.")
                    and not any(is_placeholder(p) for p in w.split("=")[0].split("."))]
            corpus = [f"corpus.{a}={scratch.artist_dir(i)}" for i, a in enumerate(dict.fromkeys(artists))
                      if not is_placeholder(a)]
            load_pipeline(file, scratch.tmp / "pipeline", corpus + keep)
        if "--dry-run" in argv:  # run it: the tiny corpus for the user's folders, the user's other overrides
            return [w for w in argv if w not in ovr and w != argv[2]][:2] + [file] + \
                [w for w in argv[3:] if w not in ovr] + corpus + keep
    return argv


# ---------------------------------------------------------------------------------------------
# TOML blocks

def check_toml(doc: Doc, line: int, body: list[str], scratch: Scratch) -> None:
    from gruv_hpc.errors import GruvError
    text = "\n".join(body)
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        doc.fail(line, "TOML block", f"does not parse: {e}")
        return
    file = scratch.tmp / f"block-{doc.path.stem}-{line}.toml"
    try:
        with contextlib.chdir(scratch.cwd):
            if {"corpus", "preprocess", "analysis"} & set(raw) or isinstance(raw.get("sweep"), (str, dict)):
                from gruv_hpc.cluster.pipeline import load_pipeline
                file.write_text(text)
                # the folders are the user's: the tiny corpus stands in for each
                corpus = [f"corpus.{a}={scratch.artist_dir(i)}" for i, a in enumerate(raw.get("corpus", {}))]
                load_pipeline(file, scratch.tmp / "pipeline", corpus)
            elif {"data", "train", "grid", "slurm"} & set(raw):
                from gruv_hpc.cluster.sweep.spec import load_sweep
                file.write_text(text)
                load_sweep(file, [] if "data" in raw else [f"data={scratch.tmp / 'data'}"])
    except GruvError as e:
        doc.fail(line, "TOML block", f"{type(e).__name__}: {e}")


# ---------------------------------------------------------------------------------------------
# A page

def check_doc(path: Path, scratch: Scratch) -> list[str]:
    doc = Doc(path)
    fenced, spans = blocks(path.read_text())
    for lang, start, body in fenced:
        if lang == "toml":
            check_toml(doc, start, body, scratch)
            continue
        copies: dict[str, str] = {}
        for line, text in logical_lines(start, body):
            check_names(doc, line, text)
            words = tokens(text)
            if len(words) >= 3 and words[0] == "cp":
                copies[words[2]] = words[1]
            argv = gruv_argv(words)
            if argv is not None:
                check_command(doc, line, argv, scratch, copies)
    for line, span in spans:
        check_names(doc, line, span)
        words = tokens(span) if span.startswith("gruv ") else []
        if words:
            check_command(doc, line, words[1:], scratch, {}, inline=True)
        else:
            check_span_keys(doc, line, span)
            check_span_attr(doc, line, span)
    return doc.errors


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Scratch:
    from gruv_hpc.dataset.synth import make_corpus
    corpus = tmp_path_factory.mktemp("docs-corpus")
    # Long enough for one clip at the paper's parameters (40 blocks of 0.25 s), which the plan requires.
    make_corpus(corpus, songs_per_artist=2, min_s=11, max_s=12, seed=1)
    return Scratch(tmp_path_factory.mktemp("docs-scratch"), corpus)


@pytest.mark.parametrize("page", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_documented_commands_keys_and_modules_exist(page, scratch):
    errors = check_doc(page, scratch)
    assert not errors, f"{len(errors)} stale line(s) in {page.relative_to(ROOT)}:\n" + "\n".join(errors)


def test_checker_catches_wrong_commands_and_keys(tmp_path, scratch):
    """The checker itself: a page with one fault per line; each is reported at its own line, and
    the correct lines beside them are not."""
    page = tmp_path / "bad.md"
    page.write_text("\n".join([
        "# A page with faults",                                              # 1
        "```bash",                                                           # 2
        "gruv sweep status SWEEP_DIR --json            # correct",          # 3
        "gruv sweep status SWEEP_DIR --jsno",                                # 4: unknown option
        "gruv trian --data data --run-dir runs/x",                           # 5: unknown subcommand
        "gruv train --data data --run-dir runs/x hiden=512",                 # 6: unknown train key
        "gruv sweep submit jobs/smoke.toml --out sw slurm.partion=gpu",      # 7: unknown slurm key
        "gruv preprocess a=/music/a --out /scratch/data --transform dct",    # 8: a bad choice
        "gruv pipeline submit jobs/pipeline_demo.toml --out p corpus.x=/m sweep.hiden=3",  # 9: bad key
        "python -m gruv_hpc.features",                                       # 10: the old module name
        "```",                                                               # 11
        "Set `slurm.partition=gpu`, `cell=lstm`, `grid.seed`, `torch.backends.cudnn.benchmark=True`, `slurm.conf`, "
        "`sweep.json`, `slurm.parse_sacct`, `fused=True`, `std_floor = 0`, `map_location=\"cpu\"`, "
        "`slurm.partition = \"gpu\"` (correct), but not `slurm.mem=4`, `slurm.parse_sbatch`, `slurm.qso = \"x\"`, "
        "`lerning_rate=1`, `sweep.grid.hiden`; see `gruv_hpc.dataset.clips.Normalizer`, "
        "`gruv_hpc.data.ClipDataset`, `tests/test_docs.py` and `bench/nothing.py`.",  # 12: 5 faults
        "```toml",                                                           # 13
        "[train]",                                                           # 14
        "epochs = 3",                                                        # 15
        "[grid]",                                                            # 16
        "hiden = [8]",                                                       # 17: unknown grid key
        "```",                                                               # 18
        "`gruv generate RUN_DIR --out OUT.wav [--seed-index K | --seed-start SECONDS] --algorithm refeed` "
        "and `gruv generate RUN_DIR --out OUT.wav --algorithm greedy`",      # 19: a bad choice
        "`Trainer.train_epoch()`, `distributed.export_env`, `torch.nn.LSTM`, `handle.split`, `os.replace`, "
        "`cells.PAPER_GRU`, `Checkpointable.checkpoint` (correct), but not `Data.to_xy`, "
        "`distributed.scontrol_hosts`, `NoSuchClass.run`, `numpy.no_such_fn`, `os.no_such`",  # 20: 5 faults
    ]) + "\n")
    errors = check_doc(page, scratch)
    text = "\n".join(errors)
    where = sorted({int(e.split(":")[1]) for e in errors})
    assert where == [4, 5, 6, 7, 8, 9, 10, 12, 14, 19, 20], text
    for needle in ("--jsno", "trian", "hiden", "partion", "dct", "gruv_hpc.features", "slurm.mem", "lerning_rate", "parse_sbatch", "qso",
                   "gruv_hpc.data", "bench/nothing.py", "greedy", "Data.to_xy", "scontrol_hosts", "NoSuchClass",
                   "no_such_fn", "os.no_such"):
        assert needle in text, (needle, text)
    # The correct constructs must not be what an error is about. Only each error's first line (the
    # page, the line, what is wrong) is searched: the reasons below it list the valid keys, which
    # name correct keys such as std_floor.
    heads = "\n".join(e.splitlines()[0] for e in errors)
    for fine in ("gruv_hpc.dataset.clips", "`cell=lstm`", "`grid.seed`", "tests/test_docs.py", "--seed-index", "torch",
                 "slurm.conf", "sweep.json", "parse_sacct", "fused", "std_floor", "map_location", "slurm.partition",
                 "train_epoch", "export_env", "LSTM", "handle.split", "os.replace", "PAPER_GRU", "Checkpointable"):
        assert fine not in heads, (fine, text)
    assert all(e.startswith(f"{page}:") for e in errors), text
