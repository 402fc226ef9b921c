"""The tutorial site: executed notebooks of a run plus the narrative in ``docs/``, built offline with Jupyter Book 1.

``build_site`` stages ``docs/*.md`` and ``docs/_config.yml`` with the run's *executed* notebooks (papermill outputs;
nothing is re-executed: ``execute_notebooks: off``), writes the table of contents for what exists, copies the
JavaScript the pages need from npm packages pinned in ``docs/package-lock.json`` (require.js and the widget manager
for saved widget state, MathJax for equations; installed once with ``npm ci`` into a cache) so no page loads anything
from the internet, builds with ``jupyter-book build``, checks every page for resources outside the site, and swaps the
result into the output folder (the previous site stays until the new one is complete).

CLI: ``python -m addmlib.book --run-dir outputs/demo --out outputs/site [--notebook extra.ipynb ...]``.
"""

from __future__ import annotations

import hashlib
import html.parser
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterable, Sequence

import nbformat
import yaml

from .cli import USAGE_ERROR, ArgumentParser, one_line

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
NARRATIVE = ("intro", "method", "data", "scaling", "own-scan", "bad-input")
RESULTS = ("detection", "paper-claims", "speed")  # docs/results/<name>.md, with their figures in docs/results/figures
REQUIRED = ("05_browse",)
VENDOR = {  # npm package path -> path under _static/vendor (folders copied whole, minus source maps)
    "requirejs/require.js": "require.js",
    "@jupyter-widgets/html-manager/dist": "html-manager",
    "mathjax/es5/tex-chtml.js": "mathjax/tex-chtml.js",
    "mathjax/es5/output/chtml": "mathjax/output/chtml",
    "mathjax/es5/input/tex/extensions": "mathjax/input/tex/extensions",
    "mathjax/es5/ui": "mathjax/ui",
    "mathjax/es5/a11y": "mathjax/a11y",
}
SKIP_VENDOR = ("embed.js", "libembed-amd.js", "embed.js.LICENSE.txt")


class SiteError(RuntimeError):
    """The site cannot be built; the message says what is missing or wrong."""


def cache_dir() -> Path:
    return Path(os.environ.get("ADDM_DATA_CACHE") or Path.home() / ".cache" / "addm-workbench")


def npm_modules(docs: Path = DOCS) -> Path:
    """``node_modules`` of ``docs/package-lock.json``, installed once per lock file with ``npm ci`` into the cache."""
    lock = docs / "package-lock.json"
    if not lock.is_file():
        raise SiteError(f"{lock} is missing")
    key = hashlib.sha256(lock.read_bytes()).hexdigest()[:16]
    target = cache_dir() / "site-js" / key
    if (target / ".complete").is_file():
        return target / "node_modules"
    npm = shutil.which("npm")
    if npm is None:
        raise SiteError("npm is not installed: the site serves its widget and MathJax JavaScript itself, from npm "
                        "packages (install Node.js and npm, e.g. apt-get install npm)")
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=target.parent))
    try:
        shutil.copy2(docs / "package.json", work / "package.json")
        shutil.copy2(lock, work / "package-lock.json")
        try:
            proc = subprocess.run([npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund"], cwd=work,
                                  capture_output=True, text=True, timeout=900)
        except subprocess.TimeoutExpired:
            raise SiteError("npm ci did not finish within 15 minutes (is the npm registry reachable?)") from None
        if proc.returncode:
            raise SiteError(f"npm ci of {lock} failed (the first build fetches the packages from the npm registry; "
                            f"later builds use {target}):\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
        (work / ".complete").touch()
        if not (target / ".complete").is_file():  # another build may have finished first: then keep its copy
            shutil.rmtree(target, ignore_errors=True)
            try:
                os.rename(work, target)
            except OSError:
                if not (target / ".complete").is_file():
                    raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target / "node_modules"


def vendor_js(static: Path, modules: Path, docs: Path = DOCS) -> None:
    """Copy the pages' JavaScript (``VENDOR`` from ``modules``, and ``docs/widgets-config.js``) into
    ``static/vendor``."""
    for src, dst in VENDOR.items():
        s, d = modules / src, static / "vendor" / dst
        if not s.exists():
            raise SiteError(f"{s} is missing from the npm install (docs/package.json changed?)")
        d.parent.mkdir(parents=True, exist_ok=True)
        if s.is_dir():
            shutil.copytree(s, d, ignore=shutil.ignore_patterns("*.map", *SKIP_VENDOR), dirs_exist_ok=True)
        else:
            shutil.copy2(s, d)
    shutil.copy2(docs / "widgets-config.js", static / "vendor" / "widgets-config.js")


def executed_notebooks(run_dir: Path) -> list[Path]:
    """The run's executed notebooks (``<run>/notebooks/*.ipynb``), in pipeline order; errors when some are missing or
    were never executed."""
    folder = run_dir / "notebooks"
    found = sorted(folder.glob("*.ipynb"))
    if not found:
        raise SiteError(f"no executed notebooks in {folder}: run the demo pipeline first (make demo)")
    missing = [r for r in REQUIRED if not any(p.stem.split("-")[0] == r for p in found)]
    if missing:
        raise SiteError(f"{folder} lacks {', '.join(missing)}: run it with python -m addmlib.pipeline PARAMS "
                        f"--run-dir {run_dir} --notebooks {','.join(missing)}")
    return found


def check_executed(path: Path) -> nbformat.NotebookNode:
    """The notebook, if it was executed (outputs present, papermill did not record a failure)."""
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    if code and not any(c.get("outputs") for c in code):
        raise SiteError(f"{path} has no outputs: the site renders executed notebooks (papermill's), it does not run "
                        f"them")
    if nb.metadata.get("papermill", {}).get("exception"):
        raise SiteError(f"{path}: papermill recorded an exception while executing it; fix and rerun it first")
    return nb


def notebook_title(nb: nbformat.NotebookNode, name: str) -> str:
    """The notebook's sidebar title: its first markdown heading; when the name carries a run's tag, the heading less
    a trailing parenthesis, then the tag (``02_train-ddpm`` -> "02 · Train a model: DDPM"), so that one notebook run
    twice (ADDM and the DDPM baseline) gets two distinct titles."""
    heading = next((line.lstrip("#").strip() for c in nb.cells if c.cell_type == "markdown"
                    for line in c.source.splitlines() if line.startswith("# ")), name)
    tag = name.partition("-")[2]
    if not tag:
        return heading
    return f"{re.sub(r' [(].*[)]$', '', heading)}: {tag.upper() if tag in ('addm', 'ddpm') else tag}"


def _entry(name: str, titles: dict[str, str]) -> dict:
    return {"file": f"notebooks/{name}", **({"title": titles[name]} if name in titles else {})}


def _toc(run: Sequence[str], extra: Sequence[str], titles: dict[str, str] | None = None) -> dict:
    """The table of contents; ``titles`` (notebook name -> sidebar title) overrides the notebooks' own headings."""
    titles = titles or {}
    parts = [{"caption": "The method", "chapters": [{"file": "method"}]},
             {"caption": "The demo run, executed", "chapters": [_entry(n, titles) for n in run]}]
    if extra:
        parts.append({"caption": "Studies", "chapters": [_entry(n, titles) for n in extra]})
    parts.append({"caption": "Results", "chapters": [{"file": f"results/{n}"} for n in RESULTS]})
    parts.append({"caption": "Using the workbench", "chapters": [{"file": "data"}, {"file": "scaling"},
                                                                 {"file": "own-scan"}, {"file": "bad-input"}]})
    return {"format": "jb-book", "root": "intro", "parts": parts}


class _ExternalRefs(html.parser.HTMLParser):
    """Collects resources a page would load from another host (script/img/iframe src, stylesheet/icon href)."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        urls = []
        if tag in ("script", "img", "iframe", "source", "video", "audio", "embed", "input"):
            urls.append(a.get("src"))
        if tag in ("img", "source"):
            urls += [part.split()[0] for part in (a.get("srcset") or "").split(",") if part.strip()]
        if tag == "object":
            urls.append(a.get("data"))
        if tag == "link" and set((a.get("rel") or "").lower().split()) & {"stylesheet", "icon", "preload",
                                                                           "modulepreload", "manifest"}:
            urls.append(a.get("href"))
        for url in filter(None, urls):
            if url.split(":", 1)[0].lower() in ("http", "https") or url.startswith("//"):
                self.found.append(f"<{tag}> {url}")


_CSS_URL = re.compile(r"""(?:url\(\s*['"]?|@import\s+['"])\s*((?:https?:)?//[^'")\s]+)""", re.I)


def external_resources(site: Path) -> dict[str, list[str]]:
    """File -> resources it would load from outside the site: in HTML, tag attributes (src, srcset, object data,
    stylesheet/icon links); in CSS, ``url()`` and ``@import``. Empty when the site is self-contained. (What scripts
    fetch at run time is checked by loading the pages in a browser: tests/test_browser_e2e.py.)"""
    out = {}
    for page in sorted(site.rglob("*")):
        if page.suffix == ".html":
            parser = _ExternalRefs()
            parser.feed(page.read_text(encoding="utf-8", errors="replace"))
            found = parser.found
        elif page.suffix == ".css":
            found = [f"css {u}" for u in _CSS_URL.findall(page.read_text(encoding="utf-8", errors="replace"))]
        else:
            continue
        if found:
            out[str(page.relative_to(site))] = found
    return out


def build_site(run_dir: str | Path, out: str | Path, extra: Iterable[str | Path] = (), docs: Path = DOCS) -> Path:
    """Build the site of ``run_dir``'s executed notebooks (and ``extra`` executed notebooks) into ``out``."""
    run_dir, out = Path(run_dir).resolve(), Path(out).resolve()
    run_notebooks = executed_notebooks(run_dir)
    extra = [Path(p).resolve() for p in extra]
    notebooks = run_notebooks + extra
    names: list[str] = []
    titles: dict[str, str] = {}
    for p in notebooks:
        if not p.is_file():
            raise SiteError(f"{p}: notebook not found")
        if p.stem in names:
            raise SiteError(f"two notebooks named {p.stem}: {p}")
        titles[p.stem] = notebook_title(check_executed(p), p.stem)
        names.append(p.stem)
    jb = Path(sys.executable).parent / "jupyter-book"
    jb_path = str(jb) if jb.is_file() else shutil.which("jupyter-book")
    if jb_path is None:
        raise SiteError("jupyter-book is not installed: pip install 'jupyter-book<2' (the project's dependencies "
                        "include it)")
    modules = npm_modules(docs)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.build.", dir=out.parent))
    try:
        book = work / "book"
        (book / "notebooks").mkdir(parents=True)
        for name in NARRATIVE:
            shutil.copy2(docs / f"{name}.md", book / f"{name}.md")
        shutil.copy2(docs / "_config.yml", book / "_config.yml")
        (book / "results").mkdir()
        for name in RESULTS:
            shutil.copy2(docs / "results" / f"{name}.md", book / "results" / f"{name}.md")
        if (docs / "results" / "figures").is_dir():
            shutil.copytree(docs / "results" / "figures", book / "results" / "figures")
        for p in notebooks:
            shutil.copy2(p, book / "notebooks" / p.name)
        toc = _toc(names[:len(run_notebooks)], names[len(run_notebooks):], titles)
        (book / "_toc.yml").write_text(yaml.safe_dump(toc, sort_keys=False))
        vendor_js(book / "_vendor", modules, docs)  # served as _static/vendor (html_static_path; not _static itself,
        # whose every .js file Jupyter Book would add to every page)
        # -W: a warning (a broken include or link, an unreadable notebook) fails the build
        proc = subprocess.run([jb_path, "build", str(book), "--builder", "html", "-W", "--keep-going"],
                              capture_output=True, text=True)
        html_dir = book / "_build" / "html"
        missing = [p for p in ["index.html", *(f"notebooks/{n}.html" for n in names)] if not (html_dir / p).is_file()]
        if proc.returncode or missing:
            raise SiteError(f"jupyter-book build failed (exit {proc.returncode}; pages missing: {missing}):\n"
                            f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
        external = external_resources(html_dir)
        if external:
            raise SiteError("pages would load resources from the internet:\n" + json.dumps(external, indent=1))
        (html_dir / "site.json").write_text(json.dumps({"run_dir": str(run_dir), "notebooks": names}, indent=1))
        old = work / "previous"
        if out.exists():
            os.replace(out, old)
        try:
            os.replace(html_dir, out)
        except OSError:
            if old.exists():
                os.replace(old, out)  # put the previous site back
            raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = ArgumentParser(prog="python -m addmlib.book", description=__doc__.split("\n\n")[0])
    ap.add_argument("--run-dir", required=True, help="a run with executed notebooks (e.g. outputs/demo)")
    ap.add_argument("--out", required=True, help="where the site goes (e.g. outputs/site)")
    ap.add_argument("--notebook", action="append", default=[], help="another executed notebook to include")
    args = ap.parse_args(argv)
    try:
        site = build_site(args.run_dir, args.out, args.notebook)
    except SiteError as exc:  # a missing or unexecuted notebook, a failed build: one line, nothing half-written
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return USAGE_ERROR
    print(f"site written to {site} (open {site / 'index.html'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
