"""Real-browser tests: the slice browser in JupyterLab, and the built tutorial site, in headless Chromium.

Screenshots go to outputs/test-artifacts/ for people to look at.
"""

import json
import os
import re
import sys
import time
from pathlib import Path

import papermill
import pytest

from addmlib.book import DOCS, RESULTS, build_site, external_resources

from .browser_util import chromium, differs, free_port, server, static_server

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
IMAGE_SRC = "() => { const i = document.querySelector('img.widget-image'); return i ? i.src : null; }"


def _wait_for_change(read, before, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = read()
        if now != before:
            return now
        time.sleep(0.25)
    raise AssertionError(f"nothing changed within {timeout} s (still {before!r})")


def _settle(page, inflight, timeout=30.0):
    """Wait until the page's fonts are loaded and no request is in flight (the "networkidle" load state fires only
    once per navigation, so it cannot wait for what scrolling starts)."""
    page.evaluate("document.fonts.ready.then(() => true)")
    deadline = time.monotonic() + timeout
    while inflight and time.monotonic() < deadline:
        page.wait_for_timeout(100)  # lets Playwright deliver the request events
    assert not inflight, f"requests still in flight after {timeout} s: {[r.url for r in inflight]}"


def _set_slider(page, description, value):
    """Type ``value`` into the readout of the ipywidgets slider labelled ``description`` (as a user would)."""
    slider = page.locator(".widget-slider").filter(has=page.locator(".widget-label", has_text=re.compile(
        f"^{description}$")))
    readout = slider.locator(".widget-readout")
    readout.click()
    page.keyboard.press("Control+A")
    page.keyboard.type(str(value))
    page.keyboard.press("Enter")


def test_slice_browser_in_jupyterlab(ci_run, tmp_path, artifacts):
    lab_dir = tmp_path / "lab"
    lab_dir.mkdir()
    papermill.execute_notebook(str(ROOT / "notebooks" / "05_browse.ipynb"), str(lab_dir / "05_browse.ipynb"),
                               parameters={"run_dir": str(ci_run)}, prepare_only=True)
    port, token = free_port(), "addm-test-token"
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(tmp_path / "jcfg"), "JUPYTER_RUNTIME_DIR": str(tmp_path / "jrt"),
           "JUPYTERLAB_SETTINGS_DIR": str(tmp_path / "jls"), "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "jws")}
    cmd = [sys.executable, "-m", "jupyterlab", "--allow-root", "--no-browser", "--ip", "127.0.0.1", f"--port={port}",
           f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={lab_dir}",
           "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
    base = f"http://127.0.0.1:{port}"
    with server(cmd, f"{base}/api/status?token={token}", tmp_path / "lab.log", env=env), chromium(tmp_path) as ctx:
        page = ctx.new_page()
        page.goto(f"{base}/lab/tree/05_browse.ipynb?token={token}")
        page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=90_000)
        page.get_by_text(re.compile(r"\| Idle$")).first.wait_for(timeout=90_000)  # status bar: kernel started
        page.get_by_role("menuitem", name="Run", exact=True).click()
        page.get_by_role("menuitem", name=re.compile("^Run All Cells")).click()
        readout = page.locator(".addm-readout")
        readout.wait_for(timeout=180_000)
        image = page.locator("img.widget-image").first
        image.wait_for(timeout=60_000)
        page.wait_for_function("() => document.querySelector('img.widget-image').naturalWidth > 0")
        image.scroll_into_view_if_needed()
        page.screenshot(path=str(artifacts / "jupyterlab-1-opened.png"))
        shot0, text0, src0 = image.screenshot(), readout.inner_text(), page.evaluate(IMAGE_SRC)
        assert re.search(r"axial slice \d+", text0) and "volume Dice" in text0

        # move the axial slice slider: the picture and the slice readout change, the volume Dice does not
        k0 = int(re.search(r"axial slice (\d+)", text0).group(1))
        k1 = k0 - 4 if k0 >= 4 else k0 + 4  # params/ci/ci.yaml scores every 4th slice: another scored one
        _set_slider(page, "axial", k1)
        text1 = _wait_for_change(readout.inner_text, text0)
        src1 = _wait_for_change(lambda: page.evaluate(IMAGE_SRC), src0)
        shot1 = image.screenshot()
        page.screenshot(path=str(artifacts / "jupyterlab-2-slice-moved.png"))
        assert re.search(rf"axial slice {k1}\b", text1), text1
        assert differs(shot0, shot1), "the rendered slice did not change when the slider moved"
        volume_dice = re.compile(r"volume Dice ([0-9.]+ \(TP \d+, FP \d+, FN \d+\))")
        assert volume_dice.search(text1).group(1) == volume_dice.search(text0).group(1)

        # move the threshold to 0: everything in the scored brain is predicted, the Dice readout changes
        _set_slider(page, "threshold", 0)
        text2 = _wait_for_change(readout.inner_text, text1)
        _wait_for_change(lambda: page.evaluate(IMAGE_SRC), src1)
        shot2 = image.screenshot()
        page.screenshot(path=str(artifacts / "jupyterlab-3-threshold-0.png"))
        assert re.search(r"at threshold 0(?![.\d])", text2), text2
        assert volume_dice.search(text2).group(1) != volume_dice.search(text1).group(1), (text1, text2)
        assert differs(shot1, shot2), "the prediction panel did not change with the threshold"

        errors = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']").all_inner_texts()
        assert not [e for e in errors if "Traceback" in e or "Error" in e], errors


@pytest.mark.registry  # the first site build fetches its JavaScript from the npm registry (then cached)
def test_site_builds_offline_and_the_browsing_page_works(ci_run, tmp_path, artifacts):
    site = build_site(ci_run, tmp_path / "site")
    for page in ("index.html", "intro.html", "data.html", "scaling.html", "method.html", "bad-input.html",
                 *(f"results/{n}.html" for n in RESULTS),
                 "notebooks/03_evaluate.html", "notebooks/05_browse.html", "_static/vendor/require.js",
                 "_static/vendor/html-manager/embed-amd.js", "_static/vendor/mathjax/tex-chtml.js"):
        assert (site / page).is_file(), page
    assert external_resources(site) == {}
    assert json.loads((site / "site.json").read_text())["notebooks"][-1] == "05_browse"
    # 03's result tables are markdown outputs: each must render as a table, not as lines of pipes
    outputs = [o["data"]["text/markdown"] for c in json.loads((ci_run / "notebooks" / "03_evaluate.ipynb").read_text())
               ["cells"] for o in c.get("outputs", []) if "text/markdown" in o.get("data", {})]
    tables = sum("|---|" in "".join(md) for md in outputs)
    evaluate_html = (site / "notebooks" / "03_evaluate.html").read_text()
    assert tables >= 4 and evaluate_html.count("<table") >= tables, (tables, evaluate_html.count("<table"))
    assert "|---|" not in evaluate_html and "|—|" not in evaluate_html
    assert "python -m addmlib.pipeline params/demo.yaml my_data.yaml" in (site / "data.html").read_text()
    assert "sha256 checked" in (site / "data.html").read_text(), "the data page's section on the embedded data"
    # the results chapters: each renders, with every one of its markdown tables as an HTML table, and its figures
    for name in RESULTS:
        md = (DOCS / "results" / f"{name}.md").read_text()
        page = (site / "results" / f"{name}.html").read_text()
        n_tables = len(re.findall(r"^\|(?:---\|)+$", md, flags=re.M))
        assert n_tables >= 1 and page.count("<table") == n_tables, (name, n_tables, page.count("<table"))
        assert "|---|" not in page, name
        for image in re.findall(r"!\[[^]]*\]\(([^)]+)\)", md):
            assert (site / "_images" / Path(image).name).is_file() or (site / "results" / image).is_file(), image

    with static_server(site, tmp_path / "http.log") as base, chromium(tmp_path) as ctx:
        page = ctx.new_page()
        problems, errors = [], []
        page.on("requestfailed", lambda r: problems.append(f"failed: {r.url} {r.failure}"))
        page.on("response", lambda r: problems.append(f"HTTP {r.status}: {r.url}") if r.status >= 400 else None)
        page.on("request", lambda r: problems.append(f"outside the site: {r.url}")
                if not r.url.startswith((base, "data:", "blob:")) else None)
        inflight = set()
        page.on("request", lambda r: inflight.add(r))
        page.on("requestfinished", lambda r: inflight.discard(r))
        page.on("requestfailed", lambda r: inflight.discard(r))
        # sphinx-thebe (always on in Jupyter Book 1) declares THEBE_JS_URL twice; harmless, not ours
        page.on("pageerror", lambda e: errors.append(str(e)) if "THEBE_JS_URL" not in str(e) else None)

        pages = [p.relative_to(site).as_posix() for p in sorted(site.rglob("*.html"))
                 if p.relative_to(site).parts[0] not in ("_static", "_sources")]
        assert len(pages) >= 10, pages
        for html in pages:  # every page loads without a failed or outside request
            page.goto(f"{base}/{html}", wait_until="networkidle")
            page.evaluate("window.scrollTo(0, document.body.scrollHeight)")  # lazily loaded parts (fonts, images)
            _settle(page, inflight)
            assert not problems, (html, problems)

        page.goto(f"{base}/intro.html", wait_until="networkidle")
        page.wait_for_selector("mjx-container", timeout=30_000)  # equations typeset by the site's own MathJax

        page.goto(f"{base}/notebooks/05_browse.html", wait_until="networkidle")
        figure = page.locator(".js-plotly-plot").first
        figure.wait_for(timeout=30_000)
        page.wait_for_selector(".js-plotly-plot .slider-container", timeout=30_000)
        page.wait_for_selector(".addm-readout", timeout=30_000)  # the saved widget state rendered
        figure.scroll_into_view_if_needed()
        page.wait_for_function("() => [...document.querySelectorAll('.js-plotly-plot image')]"
                               ".some(i => i.getBoundingClientRect().width > 0)")
        title0, shot0 = page.locator(".js-plotly-plot .gtitle").first.text_content(), figure.screenshot()
        page.screenshot(path=str(artifacts / "site-1-browse-page.png"), full_page=False)
        steps = page.evaluate("() => { const s = document.querySelector('.js-plotly-plot').layout.sliders[0];"
                              " return [s.active, s.steps.length]; }")
        assert steps[1] >= 2, "the figure has at least two precomputed slices"
        box = page.locator(".js-plotly-plot .slider-rail-rect").first.bounding_box()
        to = 0.02 if steps[0] > steps[1] / 2 else 0.98  # the far end from the slice it opened on
        page.mouse.click(box["x"] + box["width"] * to, box["y"] + box["height"] / 2)
        title1 = _wait_for_change(lambda: page.locator(".js-plotly-plot .gtitle").first.text_content(), title0, 30)
        # "update" restyles (which image is visible) and relayouts (the title) in one call: the title changed, so did it
        shot1 = figure.screenshot()
        figure.screenshot(path=str(artifacts / "site-2-slider-moved.png"))
        assert title1 != title0, "the plotly slider did not change the slice"
        assert differs(shot0, shot1), "the plotly figure's image did not change with its slider"
        assert not problems, problems
        assert not errors, errors
