"""The parts of the ntkit site that are generated from the code, so that they cannot drift from it.

* API reference: one page per public module, listing the names of its ``__all__`` (functions and
  classes); autosummary then writes one page per name from its docstring. An object exported under
  several names (``ntkit.infinite_kernel`` is ``ntkit.compute.infinite_kernel``) gets one page, under
  the first module of :data:`API_MODULES` that exports it; references to its other names resolve to
  that page.
* Docstring policy: every public function and class has a docstring with an ``Examples`` section,
  a ``Parameters`` section where it takes arguments, and a ``Raises`` section where it raises. A
  violation is a Sphinx warning, so the build (``-W``) fails; :data:`PENDING` lists the known gaps.
* Command line: the ``--help`` of ``ntkit`` and of each of its commands, included by ``cli.rst``.
* Benchmarks: the measured tables of ``benchmarks/``, with the paths of the machine they were
  measured on replaced by generic ones.
* Cross-references: a reference to an ntkit object without a page of its own (an internal module or
  helper) is shown as code; one to a name the code does not have is a warning.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import inspect
import io
import json
import re
import shutil
from pathlib import Path
from typing import Any

from numpydoc.docscrape import NumpyDocString
from sphinx.application import Sphinx
from sphinx.util import logging

logger = logging.getLogger(__name__)

DOCS = Path(__file__).resolve().parents[1]
ROOT = DOCS.parent
GENERATED = DOCS / "_generated"
API_DIR = DOCS / "api"

#: public modules, in the order of the API reference: (module, title). The names documented are the
#: module's ``__all__`` (functions, classes and exceptions; constants are described in the text).
API_MODULES: list[tuple[str, str]] = [
    ("ntkit", "ntkit: the curated top level"),
    ("ntkit.nn", "ntkit.nn: NTK-parameterized layers and models"),
    ("ntkit.nn.arch_spec", "ntkit.nn.arch_spec: architectures as text"),
    ("ntkit.activations", "ntkit.activations: activations and their dual maps"),
    ("ntkit.empirical", "ntkit.empirical: empirical NTK and NNGP"),
    ("ntkit.monte_carlo", "ntkit.monte_carlo: Monte-Carlo kernels of any model"),
    ("ntkit.compute", "ntkit.compute: kernels at scale"),
    ("ntkit.infinite", "ntkit.infinite: the model-to-kernel walk"),
    ("ntkit.networks", "ntkit.networks: fully connected networks"),
    ("ntkit.layerwise", "ntkit.layerwise: per-layer kernels"),
    ("ntkit.predict", "ntkit.predict: what the NTK predicts"),
    ("ntkit.train", "ntkit.train: training finite networks"),
    ("ntkit.solve", "ntkit.solve: solvers for kernel systems"),
    ("ntkit.random_features", "ntkit.random_features: features whose inner products approximate a kernel"),
    ("ntkit.sklearn", "ntkit.sklearn: scikit-learn estimators"),
    ("ntkit.data", "ntkit.data: built-in data and loaders"),
    ("ntkit.experiments.converge", "ntkit.experiments.converge"),
    ("ntkit.experiments.dynamics", "ntkit.experiments.dynamics"),
    ("ntkit.experiments.movement", "ntkit.experiments.movement"),
    ("ntkit.experiments.uci", "ntkit.experiments.uci"),
]
#: single functions of otherwise internal modules that users call
API_EXTRA: dict[str, list[str]] = {"ntkit.infinite": ["ntkit.infinite.native.status"]}
#: public-looking modules that are documented elsewhere: the command line (its page documents the
#: commands), the Kernel record (``ntkit.Kernel``), the graph inputs (``ntkit.Graphs``), the experiments'
#: command plumbing
NOT_API = {"ntkit.cli", "ntkit.kernel", "ntkit.graphs", "ntkit.experiments", "ntkit.experiments.bench",
           "ntkit.experiments.uci_data",
           "ntkit.experiments.uci_eval", "ntkit.experiments.uci_report", "ntkit.experiments.dynamics_plot",
           "ntkit.experiments.dynamics_result", "ntkit.experiments.inplace_cholesky"}
#: the command line's plumbing (documented on the command-line page, not as Python API)
CLI_PLUMBING = {"add_arguments", "main"}

#: Known gaps of the docstring policy: name -> missing sections. The build reports them (as
#: information) instead of failing, and fails on any other gap; it also says (as information) which
#: entries are fixed and can go. Empty: there are no known gaps (add an entry only for a file whose
#: owner is changing it, and remove it with the fix).
PENDING: dict[str, set[str]] = {}

#: machine-specific text of the benchmark notes -> what the site shows
BENCH_REPLACE: list[tuple[str, str]] = [
    (r"flock /work/cpu\.lock /usr/bin/time -v ", "/usr/bin/time -v "),
    (r"flock /work/cpu\.lock ", ""),
    (r"`flock /work/cpu\.lock`", "an exclusive CPU lock"),
    (r"/work/cpu\.lock", "a CPU lock"),
    (r"cd /work/main\b", "cd ntkit   # your clone"),
    (r"/work/main/\.venv/bin/python", ".venv/bin/python"),
    (r"/work/main/", ""),
    (r"/work/(nt-venv|ntbench-venv)", "~/ntbench-venv"),
    (r"/work/shared/data|\.\./shared/data", "DATA_DIR"),
    (r"/tmp/", "/tmp/"),
]


# -- public names -------------------------------------------------------------------------------------
def api_modules() -> list[tuple[str, str]]:
    """:data:`API_MODULES` less those this checkout does not have (a module listed ahead of its code)."""
    out = []
    for modname, title in API_MODULES:
        try:
            importlib.import_module(modname)
        except ModuleNotFoundError as err:
            if err.name != modname:
                raise
            logger.info("API_MODULES lists %s, which this checkout does not have", modname)
            continue
        out.append((modname, title))
    return out


def module_names(modname: str) -> list[str]:
    """The documented names of a public module: its ``__all__`` less constants and CLI plumbing."""
    module = importlib.import_module(modname)
    names = getattr(module, "__all__", None)
    if names is None:
        raise RuntimeError(f"{modname} is listed in API_MODULES but defines no __all__")
    out = []
    for name in names:
        obj = getattr(module, name)
        if name in CLI_PLUMBING or inspect.ismodule(obj) or name.startswith("__"):
            continue
        if inspect.isfunction(obj) or inspect.isclass(obj):
            out.append(name)
    return out


def resolve(dotted: str) -> Any:
    """The object at a dotted path (modules, then attributes), or None."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        try:
            for attr in parts[i:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return None
        return obj
    return None


def public_objects() -> tuple[dict[str, str], dict[str, str], dict[str, list[tuple[str, str]]]]:
    """(canonical name -> module page, alias -> canonical name, module -> [(name, canonical)])."""
    canonical_of: dict[int, str] = {}
    canonical: dict[str, str] = {}
    aliases: dict[str, str] = {}
    per_module: dict[str, list[tuple[str, str]]] = {}
    for modname, _ in api_modules():
        entries = [(f"{modname}.{n}", n) for n in module_names(modname)]
        entries += [(dotted, dotted.removeprefix(modname + ".")) for dotted in API_EXTRA.get(modname, [])]
        rows = []
        for full, short in entries:
            obj = resolve(full)
            key = id(obj)
            if key not in canonical_of:
                canonical_of[key] = full
                canonical[full] = modname
            else:
                aliases[full] = canonical_of[key]
            rows.append((short, canonical_of[key]))
        per_module[modname] = rows
    return canonical, aliases, per_module


def undocumented_modules() -> list[str]:
    """Public subpackages and modules of ntkit (and of ntkit.experiments) not in the API reference."""
    import pkgutil

    import ntkit
    import ntkit.experiments

    listed = {m for m, _ in API_MODULES} | NOT_API
    found = []
    for pkg in (ntkit, ntkit.experiments):
        for info in pkgutil.iter_modules(pkg.__path__):
            name = f"{pkg.__name__}.{info.name}"
            if info.name.startswith("_") or name in listed:
                continue
            if pkg is ntkit.experiments and info.name.startswith(("images", "uci_", "fashion")):
                continue  # the images and fashion benchmarks' modules: documented by their commands
            found.append(name)
    return found


# -- generated pages ----------------------------------------------------------------------------------
def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists() or path.read_text() != text:  # unchanged files keep Sphinx's incremental build
        path.write_text(text)


def write_api_pages() -> dict[str, str]:
    canonical, aliases, per_module = public_objects()
    modules = api_modules()
    for modname, title in modules:
        lines = [title, "=" * len(title), "", f".. automodule:: {modname}", "   :no-members:", "   :no-index:", "",
                 f".. currentmodule:: {modname}", ""]
        own = [(n, c) for n, c in per_module[modname] if canonical.get(c) == modname and c == _full(modname, n)]
        extra = [(n, c) for n, c in per_module[modname] if (n, c) not in own]
        if own:
            lines += [".. autosummary::", "   :toctree: generated", "   :nosignatures:", ""]
            lines += [f"   {n}" for n, _ in own] + [""]
        if extra:
            lines += ["Also available here (documented once, under the name linked):", ""]
            lines += [".. list-table::", "   :widths: 40 60", ""]
            for n, c in extra:
                lines += [f"   * - ``{_full(modname, n)}``", f"     - :obj:`{c}`"]
            lines.append("")
        _write(API_DIR / f"{modname}.rst", "\n".join(lines))
    for stale in API_DIR.glob("ntkit*.rst"):
        if stale.stem not in {m for m, _ in modules}:
            stale.unlink()
    toc = ["", ".. toctree::", "   :maxdepth: 1", ""] + [f"   {m}" for m, _ in modules]
    _write(GENERATED / "api_toc.txt", "\n".join(toc) + "\n")
    return aliases


def _full(modname: str, name: str) -> str:
    return f"{modname}.{name}"


def _help_text(parser: argparse.ArgumentParser) -> str:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        parser.print_help()
    return buf.getvalue()


def write_cli_help() -> None:
    """``ntkit --help`` and each command's (and ``ntkit bench`` target's) ``--help`` as text files."""
    import os

    from ntkit import cli

    os.environ["COLUMNS"] = "100"
    out = GENERATED / "cli"
    top = cli.build_parser([])
    _write(out / "ntkit.txt", _help_text(top))
    sections = []
    for name, (modname, help_text) in cli.COMMANDS.items():
        parser = argparse.ArgumentParser(prog=f"ntkit {name}", description=help_text)
        module = importlib.import_module(modname)
        module.add_arguments(parser)
        _write(out / f"{name}.txt", _help_text(parser))
        sections.append((f"ntkit {name}", f"{name}.txt"))
        for target, (tmod, thelp) in getattr(module, "TARGETS", {}).items():
            tparser = argparse.ArgumentParser(prog=f"ntkit {name} {target}", description=thelp)
            importlib.import_module(tmod).add_arguments(tparser)
            _write(out / f"{name}-{target}.txt", _help_text(tparser))
            sections.append((f"ntkit {name} {target}", f"{name}-{target}.txt"))
    lines = []
    for title, fname in sections:
        label = "cli-" + title.replace(" ", "-")
        lines += [f".. _{label}:", "", f"``{title}``", "~" * (len(title) + 4), "",
                  f".. literalinclude:: /_generated/cli/{fname}", "   :language: text", ""]
    _write(out / "reference.rst", "\n".join(lines))


def sanitize(text: str) -> str:
    for pattern, repl in BENCH_REPLACE:
        text = re.sub(pattern, repl, text)
    return text


def _uci_table(path: Path) -> str:
    data = json.loads(path.read_text())
    rows = sorted(data["rows"], key=lambda r: r["dataset"])
    lines = [
        "# UCI: NTK + SVM on 90 data sets (Arora et al. 2020)",
        "",
        "Written from `benchmarks/results/uci_arora2020.json` (the CSV beside it has every fit). "
        "Command: `ntkit bench uci --data DATA_DIR --jobs 2` on the 90 data sets of Fernández-Delgado "
        "et al. (2014) in Arora et al.'s layout. The 15 kernels `K[dep][fix]`, `C` in 1e-2..1e4, "
        "selection on the validation split, 4 folds for the test accuracy.",
        "",
        f"Average test accuracy over {data['n_datasets']} data sets: **{data['mean_accuracy']:.3f}%** "
        f"(paper: NTK {data['paper_ntk']}%, random forests {data['paper_random_forest']}%); "
        f"{data['seconds_this_run']:.0f} s wall on a 2-core machine.",
        "",
        "| data set | n | d | classes | depth | fixed layers | C | validation acc. | test acc. |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['dataset']} | {r['n']} | {r['d']} | {r['classes']} | {r['dep']} | {r['fix']} | "
                     f"{r['C']:g} | {100 * r['val_acc']:.2f}% | {100 * r['test_acc']:.2f}% |")
    return "\n".join(lines) + "\n"


def write_benchmarks() -> list[str]:
    """Copy the measured results into docs/benchmarks/results (generic paths); return their names."""
    bench = ROOT / "benchmarks"
    out = DOCS / "benchmarks" / "results"
    sources = {p.stem: p for p in sorted((bench / "results").glob("*.md"))}
    if (bench / "results_solvers.md").exists():
        sources["solvers"] = bench / "results_solvers.md"
    if (bench / "results" / "dynamics" / "README.md").exists():
        sources["dynamics"] = bench / "results" / "dynamics" / "README.md"
    names = []
    for name, src in sorted(sources.items()):
        text = sanitize(src.read_text())
        if not text.lstrip().startswith("# "):
            text = f"# {name.replace('_', ' ')}\n\n" + text
        if name == "dynamics" and (src.parent / "dynamics.png").exists():  # copied below, with every shown figure
            text = text.replace("Figure: `dynamics.png`", "Figure below")
            text += "\n![The default ntkit dynamics run](dynamics.png)\n"
        for figure in re.findall(r"!\[[^\]]*\]\(([\w.-]+\.png)\)", text):  # figures beside the page
            if (src.parent / figure).exists():
                out.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src.parent / figure, out / figure)
        _write(out / f"{name}.md", text)
        names.append(name)
    uci = bench / "results" / "uci_arora2020.json"
    if uci.exists():
        _write(out / "uci.md", sanitize(_uci_table(uci)))
        names.append("uci")
    for stale in out.glob("*.md"):
        if stale.stem not in names:
            stale.unlink()
    leftovers = [f"{n}: {m.group(0)}" for n in names for m in re.finditer(r"/work/\S*", (out / f"{n}.md").read_text())]
    if leftovers:
        logger.warning("machine-specific paths left in the benchmark pages (add them to BENCH_REPLACE): %s",
                       "; ".join(leftovers))
    toc = ["", ".. toctree::", "   :maxdepth: 1", ""] + [f"   results/{n}" for n in sorted(names)]
    _write(GENERATED / "benchmarks_toc.txt", "\n".join(toc) + "\n")
    return names


# -- docstring policy ---------------------------------------------------------------------------------
def _raises(obj: Any) -> bool:
    """Whether a function (a class: its constructor) raises or validates its arguments."""
    target = obj
    if inspect.isclass(obj):
        if issubclass(obj, BaseException):
            return False
        target = obj.__dict__.get("__init__") or obj.__dict__.get("__post_init__")
        if target is None:
            return False
    try:
        src = inspect.getsource(target)
    except (OSError, TypeError):
        return False
    body = src.split('"""', 2)[-1] if src.count('"""') >= 2 else src
    return bool(_RAISES.search(body))


_RAISES = re.compile(r"\braise (ValueError|TypeError|KeyError|FileNotFoundError)|\bcheck_\w+\(|\bas_tensor\(")


def _takes_arguments(obj: Any) -> bool:
    target = obj
    if inspect.isclass(obj):
        if issubclass(obj, BaseException) or "__init__" not in obj.__dict__:
            return False
        target = obj.__init__
    try:
        params = list(inspect.signature(target).parameters.values())
    except (TypeError, ValueError):
        return False
    return any(p.name not in ("self", "cls") and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params)


def docstring_problems(obj: Any) -> set[str]:
    doc = inspect.getdoc(obj) or ""
    if not doc.strip():
        return {"docstring"}
    parsed = NumpyDocString(doc)
    missing = set()
    if not parsed["Examples"]:
        missing.add("Examples")
    if _takes_arguments(obj) and not (parsed["Parameters"] or parsed["Attributes"] or parsed["Other Parameters"]):
        missing.add("Parameters")
    if _raises(obj) and not parsed["Raises"]:
        missing.add("Raises")
    return missing


def check_docstrings(app: Sphinx) -> None:
    canonical, _, _ = public_objects()
    pending_seen = []
    for full in sorted(canonical):
        obj = resolve(full)
        missing = docstring_problems(obj)
        known = PENDING.get(full, set())
        if missing - known:
            logger.warning("%s: the docstring lacks %s (docs/_ext/ntkit_docs.py: docstring policy)",
                           full, ", ".join(sorted(missing - known)))
        if missing & known:
            pending_seen.append(f"{full} ({', '.join(sorted(missing & known))})")
        if known - missing:
            logger.info("%s now has %s: remove it from PENDING (docs/_ext/ntkit_docs.py)",
                        full, ", ".join(sorted(known - missing)))
    for name in sorted(set(PENDING) - set(canonical)):
        logger.info("PENDING names %s, which is not a documented public name: remove it", name)
    for modname in undocumented_modules():
        logger.warning("%s is a public module of ntkit but not in API_MODULES (docs/_ext/ntkit_docs.py): "
                       "add it there, or to NOT_API if it holds no public names", modname)
    if pending_seen:
        logger.info("docstring gaps still pending (%d): %s", len(pending_seen), "; ".join(pending_seen))


# -- references ---------------------------------------------------------------------------------------
_ALIASES: dict[str, str] = {}


def missing_reference(app: Sphinx, env: Any, node: Any, contnode: Any) -> Any:
    """Aliases resolve to their page; ntkit objects without a page render as code; others warn."""
    if node.get("refdomain") != "py":
        return None
    target = node.get("reftarget", "")
    module, cls = node.get("py:module") or "", node.get("py:class") or ""
    candidates = [target]
    if module:
        candidates += [f"{module}.{cls}.{target}" if cls else "", f"{module}.{target}"]
    domain = env.get_domain("py")
    for cand in filter(None, candidates):
        if cand in _ALIASES:
            new = node.deepcopy()
            new["reftarget"] = _ALIASES[cand]
            return domain.resolve_xref(env, node["refdoc"], app.builder, node["reftype"], _ALIASES[cand], new, contnode)
    for cand in filter(None, candidates):
        if cand.startswith("ntkit") and resolve(cand) is not None:
            return contnode  # internal: shown as code, no page to link
    if module.startswith("ntkit") and "." not in target:
        # a bare name in a docstring, relative to the module that defines it: look it up in ntkit
        homes = _bare_names().get(target, [])
        for home in homes:
            page = _ALIASES.get(home, home)
            if page in _CANONICAL:
                new = node.deepcopy()
                new["reftarget"] = page
                return domain.resolve_xref(env, node["refdoc"], app.builder, node["reftype"], page, new, contnode)
        if homes:
            return contnode
    return None


def _bare_names() -> dict[str, list[str]]:
    """Every name defined at the top level of an imported ntkit module -> its full names."""
    import sys

    if not _BARE:
        for modname, module in list(sys.modules.items()):
            if not modname.startswith("ntkit") or module is None:
                continue
            for name, obj in vars(module).items():
                if getattr(obj, "__module__", modname) == modname or inspect.ismodule(obj):
                    _BARE.setdefault(name, []).append(f"{modname}.{name}")
    return _BARE


_BARE: dict[str, list[str]] = {}
_CANONICAL: dict[str, str] = {}


_TYPED_SECTIONS = {"Parameters", "Other Parameters", "Returns", "Yields", "Attributes", "Raises", "Warns"}


def _plain_text_fixes(app: Sphinx, what: str, name: str, obj: Any, options: Any, lines: list[str]) -> None:
    """Read the docstrings' plain-text conventions as reStructuredText means them.

    * In the typed sections (Parameters, Returns, ...), a ``*`` in a type line
      (``x1 : array-like of shape (N1, *input_shape)``, ``predict_fn(..., *, x_test=None)``) is
      literal: numpydoc renders types in emphasis, where a bare ``*`` would open a second one.
    * A paragraph ending in ``:`` followed by an indented block (the formulas written as text,
      ``mean(x*) = K(x*, X) ...``) becomes a literal block, as ``::`` would make it.
    """
    section = ""
    for i, line in enumerate(lines):
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        if nxt.strip() and set(nxt.strip()) == {"-"} and line.strip():
            section = line.strip()
            continue
        if section in _TYPED_SECTIONS and line and not line[0].isspace() and "*" in line and "``" not in line:
            head, sep, tail = line.partition(" : ")
            if sep:
                lines[i] = head + sep + re.sub(r"(?<!\\)\*", r"\\*", tail)
            else:
                lines[i] = re.sub(r"(?<!\\)\*", r"\\*", line)
    def indent(text: str) -> int:
        return len(text) - len(text.lstrip())

    for i in range(len(lines) - 2):
        line = lines[i].rstrip()
        if not line.strip() or line.endswith("::") or line.lstrip().startswith(".. ") or lines[i + 1].strip():
            continue
        if set(line.strip()) <= {"-", "=", "~"}:
            continue
        following = next((lines[j] for j in range(i + 2, len(lines)) if lines[j].strip()), "")
        if not following or indent(following) <= indent(line):
            continue
        if following.lstrip().startswith(("* ", "- ", ">>>", ".. ")):
            continue
        lines[i] = line + (":" if line.endswith(":") else " ::")


def on_config_inited(app: Sphinx, config: Any) -> None:
    _ALIASES.clear()
    _ALIASES.update(write_api_pages())
    _CANONICAL.clear()
    _CANONICAL.update(public_objects()[0])
    write_cli_help()
    write_benchmarks()


def setup(app: Sphinx) -> dict[str, Any]:
    app.connect("config-inited", on_config_inited)
    app.connect("builder-inited", check_docstrings)
    app.connect("missing-reference", missing_reference)
    app.connect("autodoc-process-docstring", _plain_text_fixes, priority=100)  # before numpydoc
    return {"parallel_read_safe": True, "parallel_write_safe": True}


__all__ = ["API_MODULES", "PENDING", "setup"]


def reset_torch(gallery_conf: dict[str, Any], fname: str, when: str = "before") -> None:
    """Before and after each gallery example: torch's defaults, one intra-op thread.

    The examples are small: one thread is the fastest there (and the least hurt by other jobs on
    a shared machine); ``set_default_dtype`` in one example must not leak into the next.
    """
    import torch

    torch.set_default_dtype(torch.float32)
    torch.set_num_threads(1)
