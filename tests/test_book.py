"""The site builder's checks, without building a site (tests/test_browser_e2e.py builds and loads one)."""

import re

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from addmlib.book import (DOCS, RESULTS, SiteError, _toc, build_site, check_executed, executed_notebooks,
                          external_resources, notebook_title)


def test_external_resources_are_found_in_pages_and_stylesheets(tmp_path):
    (tmp_path / "ok.html").write_text('<script src="_static/a.js"></script><a href="https://example.org">a link is '
                                      'fine</a><img src="data:image/png;base64,AAAA">')
    (tmp_path / "bad.html").write_text('<link rel="stylesheet" href="https://cdn.example/x.css">'
                                       '<img srcset="a.png 1x, //cdn.example/b.png 2x"><object data="http://e/x">'
                                       '<script async src="https://cdn.example/y.js"></script>')
    (tmp_path / "s.css").write_text('@import "https://fonts.example/f.css"; a { background: url(\'local.png\') }\n'
                                    'b { background: url(//cdn.example/i.png) }')
    found = external_resources(tmp_path)
    assert set(found) == {"bad.html", "s.css"}
    assert found["bad.html"] == ["<link> https://cdn.example/x.css", "<img> //cdn.example/b.png",
                                 "<object> http://e/x", "<script> https://cdn.example/y.js"]
    assert found["s.css"] == ["css https://fonts.example/f.css", "css //cdn.example/i.png"]


def _notebook(path, executed=True, exception=False):
    cell = new_code_cell("1 + 1", outputs=[new_output("execute_result", {"text/plain": "2"}, execution_count=1)]
                         if executed else [])
    nb = new_notebook(cells=[cell], metadata={"papermill": {"exception": exception}})
    nbformat.write(nb, path)
    return path


def test_only_executed_notebooks_are_rendered(tmp_path):
    folder = tmp_path / "run" / "notebooks"
    folder.mkdir(parents=True)
    with pytest.raises(SiteError, match="no executed notebooks in .*run the demo pipeline first"):
        executed_notebooks(tmp_path / "run")
    _notebook(folder / "03_evaluate.ipynb")
    with pytest.raises(SiteError, match="lacks 05_browse: run it with python -m addmlib.pipeline"):
        executed_notebooks(tmp_path / "run")
    _notebook(folder / "05_browse.ipynb")
    assert [p.name for p in executed_notebooks(tmp_path / "run")] == ["03_evaluate.ipynb", "05_browse.ipynb"]
    with pytest.raises(SiteError, match="has no outputs: the site renders executed notebooks"):
        check_executed(_notebook(tmp_path / "fresh.ipynb", executed=False))
    with pytest.raises(SiteError, match="papermill recorded an exception"):
        check_executed(_notebook(tmp_path / "failed.ipynb", exception=True))
    with pytest.raises(SiteError, match="nope.ipynb: notebook not found"):
        build_site(tmp_path / "run", tmp_path / "site", [tmp_path / "nope.ipynb"])
    assert not (tmp_path / "site").exists()


def test_table_of_contents_has_a_studies_part_only_with_extra_notebooks():
    plain = _toc(["00_method", "05_browse"], [])
    assert [p["caption"] for p in plain["parts"]] == ["The method", "The demo run, executed", "Results",
                                                      "Using the workbench"]
    with_extra = _toc(["05_browse"], ["04_ablation"])
    assert with_extra["parts"][2] == {"caption": "Studies", "chapters": [{"file": "notebooks/04_ablation"}]}


def test_sidebar_titles_are_unique_for_a_notebook_run_twice():
    train = new_notebook(cells=[new_markdown_cell("# 02 · Train a model (ADDM, or the DDPM baseline with λ = 0)")])
    titles = {n: notebook_title(train, n) for n in ("02_train-addm", "02_train-ddpm")}
    assert titles == {"02_train-addm": "02 · Train a model: ADDM", "02_train-ddpm": "02 · Train a model: DDPM"}
    assert notebook_title(new_notebook(cells=[new_markdown_cell("# 05 · Browse")]), "05_browse") == "05 · Browse"
    toc = _toc(["02_train-addm", "02_train-ddpm"], [], titles)
    assert [c.get("title") for c in toc["parts"][1]["chapters"]] == list(titles.values())


def test_results_chapters_are_in_the_table_of_contents_and_hold_their_tables():
    toc = _toc(["05_browse"], [])
    results = next(p for p in toc["parts"] if p["caption"] == "Results")
    assert [c["file"] for c in results["chapters"]] == [f"results/{n}" for n in RESULTS]
    for name in RESULTS:
        text = (DOCS / "results" / f"{name}.md").read_text()
        assert text.startswith("# ") and "|---|" in text, name
        for image in re.findall(r"!\[[^]]*\]\(([^)]+)\)", text):  # figures resolve beside the chapter
            assert (DOCS / "results" / image).is_file(), image
