"""Browser check: the ipywidgets explorer (partslib.explorer.build_explorer) renders and reacts
in JupyterLab 4.

What it does
  1. writes a small notebook into a work folder (a fresh temp folder unless --work-dir); the
     notebook loads a run's trained classifier and PDM (--results-dir, default results/smoke)
     and the test split, and displays ``build_explorer`` exactly as notebooks/04_explanations
     does (``images[:200]``, ``state=ExplorerState(index=first correctly classified)``);
  2. starts ``jupyter lab`` (from the project venv, headless, no token, port --port) with the
     work folder as root;
  3. drives headless Chromium with Selenium: opens the notebook, runs all cells, then checks in
     the DOM that the explorer's core widgets rendered (IntSlider, 3 Dropdowns, HBox/VBox,
     Output with a figure image) and that no "Error displaying widget" / "Loading widget..."
     placeholder and no Python traceback is left;
  4. changes the "class" dropdown, the "mode" dropdown and the "image" slider (one step with
     the keyboard), and checks each time that the figure (the PNG in the Output widget)
     changes (for "class" it tries up to 3 options: the class that is also the prediction
     gives the same figure);
  5. saves screenshots (before.png, after_class.png, after_mode.png, after_image.png) into the
     work folder, prints the browser console log and stops Chromium and the Jupyter server.

Exit status: 0 = all checks passed, or skipped (a "SKIP:" line says why: selenium, chromium or
chromedriver missing); 1 = a check failed ("FAIL:" lines say which); 2 = setup error (no
checkpoints, no jupyter, port busy, server did not start).

Prerequisites (none are partslib dependencies; nothing is added to pyproject.toml)
  * Debian packages ``chromium`` and ``chromium-driver``:
        apt-get install -y chromium chromium-driver
  * Selenium, in any Python (keep it out of the project venv):
        python3 -m venv /tmp/uivenv && /tmp/uivenv/bin/pip install selenium
  * the project venv with JupyterLab 4 and ipywidgets (.venv, found automatically), and a run
    with checkpoints (results/smoke/checkpoints/{classifier,pdm}.pt: the smoke study run).

Run (from the repository root)
    /tmp/uivenv/bin/python scripts/check_explorer_lab.py [--results-dir results/smoke]
        [--work-dir /tmp/explorer_check] [--port 8899] [--timeout 300]

It is not a pytest test (it lives under scripts/) and is light on CPU: one kernel thread, one
headless browser, a few explainer calls.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import NoReturn

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = "explorer_check.ipynb"
DONE_MARKER = "EXPLORER_CELL_DONE"
# smoke-profile data parameters; overridden by <results-dir>/explanations/params.json if present
DATA_DEFAULTS = {"image_size": 64, "train_seed": 0, "n_train": 600, "test_seed": 1,
                 "n_test": 240, "val_seed": 2, "n_val": 240}


def skip(msg: str) -> NoReturn:
    print(f"SKIP: {msg}")
    sys.exit(0)


def setup_error(msg: str) -> NoReturn:
    print(f"ERROR: {msg}", file=sys.stderr)
    sys.exit(2)


def data_params(results_dir: Path) -> dict:
    params = dict(DATA_DEFAULTS)
    p = results_dir / "explanations" / "params.json"
    if p.exists():
        saved = json.loads(p.read_text()).get("parameters", {})
        params.update({k: saved[k] for k in DATA_DEFAULTS if k in saved})
    return params


def write_notebook(path: Path, results_dir: Path, data_dir: Path) -> None:
    params = data_params(results_dir)
    cells = [
        f"""import sys
import torch
from partslib import pipeline, viz
from partslib import explorer as xp
from partslib.explain import PartExplainer

pipeline.setup(seed=0, threads=1)
viz.set_style()
results_dir = {str(results_dir)!r}
train, _, test = pipeline.load_splits(
    {str(data_dir)!r}, image_size={params['image_size']}, train_seed={params['train_seed']},
    n_train={params['n_train']}, test_seed={params['test_seed']}, n_test={params['n_test']},
    val_seed={params['val_seed']}, n_val={params['n_val']}, progress=False)
classifier = pipeline.load_classifier(results_dir)
pdm = pipeline.load_pdm(results_dir)
explainer = PartExplainer(classifier, pdm, test.part_names)
images, masks, labels = test.tensors(slice(0, 200))
e = explainer(images)
ok = torch.nonzero(e.target == labels).flatten()
if len(ok) == 0:
    ok = torch.zeros(1, dtype=torch.long)
print("kernel python:", sys.executable)""",
        f"""# as in notebooks/04_explanations.py (interactive=True)
display(xp.build_explorer(explainer, images[:200], test.class_names, labels[:200],
                          state=xp.ExplorerState(index=int(ok[0]))))
print({DONE_MARKER!r})""",
    ]
    nb = {
        "cells": [{"cell_type": "code", "execution_count": None, "id": f"cell{i}",
                   "metadata": {}, "outputs": [], "source": src} for i, src in enumerate(cells)],
        "metadata": {"kernelspec": {"display_name": "Python 3 (ipykernel)",
                                    "language": "python", "name": "python3"},
                     "language_info": {"name": "python"}},
        "nbformat": 4, "nbformat_minor": 5,
    }
    path.write_text(json.dumps(nb, indent=1))


def port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def wait_server(url: str, proc: subprocess.Popen, timeout: float) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            setup_error(f"jupyter lab exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "api/status", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    setup_error(f"jupyter lab did not answer at {url} within {timeout:.0f}s")


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)  # the server shuts its kernels down on SIGTERM
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


# JavaScript run in the page ------------------------------------------------------------------

JS_WAIT_APP = """
const done = arguments[arguments.length - 1];
(async () => {
  const t0 = Date.now();
  while (!window.jupyterapp) {
    if (Date.now() - t0 > 120000) return 'no window.jupyterapp (expose_app_in_browser off?)';
    await new Promise(r => setTimeout(r, 250));
  }
  const app = window.jupyterapp;
  await app.restored;
  let w = null;
  while (Date.now() - t0 < 120000) {
    w = app.shell.currentWidget;
    if (w && w.sessionContext && w.content && w.content.widgets) break;
    await new Promise(r => setTimeout(r, 250));
  }
  if (!w || !w.sessionContext) return 'no notebook panel';
  await w.context.ready;
  await w.sessionContext.ready;
  const k = w.sessionContext.session && w.sessionContext.session.kernel;
  return 'ok kernel=' + (k ? k.name : 'none');
})().then(done, e => done('error: ' + e));
"""

JS_RUN_ALL = """
const done = arguments[arguments.length - 1];
window.jupyterapp.commands.execute('notebook:run-all-cells')
  .then(r => done('ok ' + r), e => done('error: ' + e));
"""

JS_STATE = """
const q = s => Array.from(document.querySelectorAll(s));
const nb = document.querySelector('.jp-Notebook');
const text = nb ? nb.innerText : '';
const imgs = q('.widget-output img');
const labelOf = d => { const l = d.querySelector('label'); return l ? l.innerText.trim() : ''; };
return {
  counts: {
    'widget-vbox': q('.jupyter-widgets.widget-vbox').length,
    'widget-hbox': q('.jupyter-widgets.widget-hbox').length,
    'widget-slider (IntSlider)': q('.jupyter-widgets.widget-slider').length,
    'widget-dropdown': q('.jupyter-widgets.widget-dropdown').length,
    'widget-output': q('.jupyter-widgets.widget-output').length,
    'img in widget-output': imgs.length,
    'widget-toggle-buttons': q('.widget-toggle-buttons').length,
    'widget-select': q('.widget-select').length,
  },
  dropdown_labels: q('.jupyter-widgets.widget-dropdown').map(labelOf),
  slider_label: q('.jupyter-widgets.widget-slider').map(labelOf),
  slider_value: q('.jupyter-widgets.widget-slider .widget-readout').map(e => e.innerText.trim()),
  error_widget: text.includes('Error displaying widget'),
  loading_widget: text.includes('Loading widget'),
  traceback: q('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]')
              .map(e => e.innerText).filter(t => /Traceback|Error\\b/.test(t)).slice(0, 3),
  done_marker: text.includes('@DONE_MARKER@'),
  img_src: imgs.length ? imgs[0].getAttribute('src') : null,
};
""".replace("@DONE_MARKER@", DONE_MARKER)


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--results-dir", default="results/smoke",
                    help="run folder with checkpoints/ (default results/smoke)")
    ap.add_argument("--data-dir", default="data", help="SynthParts cache (default data)")
    ap.add_argument("--work-dir", default=None,
                    help="folder for the notebook and screenshots (default: a new temp folder)")
    ap.add_argument("--jupyter", default=None,
                    help="jupyter executable (default .venv/bin/jupyter, else jupyter on PATH)")
    ap.add_argument("--port", type=int, default=8899)
    ap.add_argument("--timeout", type=float, default=300,
                    help="seconds to wait for the notebook to run / a figure to change")
    ap.add_argument("--chromium", default=None, help="browser binary (default: chromium)")
    ap.add_argument("--chromedriver", default=None, help="driver (default: chromedriver)")
    args = ap.parse_args()

    # prerequisites: missing browser tooling -> skip; missing project pieces -> setup error
    # (selenium is optional and kept out of the project venv, so pyright cannot resolve it)
    try:
        from selenium import webdriver  # pyright: ignore[reportMissingImports]
        from selenium.common.exceptions import (  # pyright: ignore[reportMissingImports]
            TimeoutException,
        )
        from selenium.webdriver.chrome.service import (  # pyright: ignore[reportMissingImports]
            Service,
        )
        from selenium.webdriver.common.by import By  # pyright: ignore[reportMissingImports]
        from selenium.webdriver.common.keys import Keys  # pyright: ignore[reportMissingImports]
        from selenium.webdriver.support.ui import (  # pyright: ignore[reportMissingImports]
            Select,
            WebDriverWait,
        )
    except ImportError:
        skip("selenium is not importable by this Python "
             f"({sys.executable}); pip install selenium (in a separate venv)")
    chromium = args.chromium or shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        skip("no chromium binary on PATH (apt-get install chromium chromium-driver)")
    chromedriver = args.chromedriver or shutil.which("chromedriver")
    if not chromedriver:
        skip("no chromedriver on PATH (apt-get install chromium-driver)")

    results_dir = (REPO / args.results_dir).resolve()
    data_dir = (REPO / args.data_dir).resolve()
    for f in ("classifier.pt", "pdm.pt"):
        if not (results_dir / "checkpoints" / f).exists():
            setup_error(f"no {results_dir / 'checkpoints' / f}: run the study first "
                        f"(e.g. the smoke profile) or pass --results-dir")
    venv_jupyter = REPO / ".venv/bin/jupyter"
    jupyter = args.jupyter or (str(venv_jupyter) if venv_jupyter.exists()
                               else shutil.which("jupyter"))
    if not jupyter:
        setup_error("no jupyter executable (.venv/bin/jupyter or PATH); pass --jupyter")
    if not port_free(args.port):
        setup_error(f"port {args.port} is in use; pass --port")

    work = Path(args.work_dir or tempfile.mkdtemp(prefix="explorer_check_")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    write_notebook(work / NOTEBOOK, results_dir, data_dir)
    print(f"work dir: {work}")

    env = dict(os.environ, PATH=str(Path(jupyter).parent) + os.pathsep + os.environ["PATH"],
               OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    log = open(work / "jupyter.log", "w")
    server = subprocess.Popen(
        [jupyter, "lab", "--no-browser", f"--port={args.port}", "--ip=127.0.0.1",
         "--ServerApp.token=", "--ServerApp.password=", f"--ServerApp.root_dir={work}",
         "--LabApp.expose_app_in_browser=True", f"--LabApp.workspaces_dir={work / 'workspaces'}",
         "--allow-root"],
        cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{args.port}/"
    failures: list[str] = []

    def check(cond: bool, msg: str) -> None:
        print(("ok:   " if cond else "FAIL: ") + msg)
        if not cond:
            failures.append(msg)

    def start_browser():
        opts = webdriver.ChromeOptions()
        opts.binary_location = chromium
        for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                  "--window-size=1500,1100", "--renderer-process-limit=2"):
            opts.add_argument(a)
        opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        browser = webdriver.Chrome(service=Service(chromedriver), options=opts)
        browser.set_script_timeout(args.timeout)
        return browser

    def drive(driver) -> None:
        driver.get(base + "lab/tree/" + NOTEBOOK)
        r = driver.execute_async_script(JS_WAIT_APP)
        print(f"lab app: {r}")
        if not r.startswith("ok"):
            check(False, f"JupyterLab app/notebook did not come up: {r}")
            return
        t0 = time.time()
        r = driver.execute_async_script(JS_RUN_ALL)
        print(f"run-all-cells: {r} ({time.time() - t0:.1f}s)")

        def state():
            return driver.execute_script(JS_STATE)

        try:
            WebDriverWait(driver, args.timeout, 0.5).until(
                lambda d: ((s := state())["done_marker"] and s["img_src"]) or s["traceback"])
        except TimeoutException:
            pass
        s = state()
        time.sleep(1.0)  # let the widget views settle before counting
        s = state()
        print("widget counts: " + json.dumps(s["counts"]))
        print(f"dropdowns: {s['dropdown_labels']}, slider: {s['slider_label']} "
              f"= {s['slider_value']}")
        check(not s["traceback"], f"no Python traceback in the outputs {s['traceback'] or ''}")
        check(s["done_marker"], "the explorer cell ran to its end")
        c = s["counts"]
        check(c["widget-vbox"] >= 1 and c["widget-hbox"] >= 2, "VBox with 2 HBox rows rendered")
        check(c["widget-slider (IntSlider)"] == 1, "1 IntSlider (image) rendered")
        check(c["widget-dropdown"] == 3, "3 Dropdowns (class, mode, part map) rendered")
        check(c["widget-output"] == 1 and c["img in widget-output"] == 1,
              "Output widget shows one figure image")
        check(not s["error_widget"], "no 'Error displaying widget' placeholder")
        check(not s["loading_widget"], "no 'Loading widget...' placeholder")
        box = driver.find_elements(By.CSS_SELECTOR, ".jupyter-widgets.widget-vbox")
        if box:
            driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", box[0])
        driver.save_screenshot(str(work / "before.png"))
        if failures:
            return

        def digest(src):
            data = src.split(",", 1)[1] if src and src.startswith("data:") else (src or "")
            return hashlib.sha1(data.encode()).hexdigest()[:12], len(data)

        def wait_new_figure(before, timeout):
            try:
                WebDriverWait(driver, timeout, 0.25).until(
                    lambda d: (src := state()["img_src"]) and src != before)
            except TimeoutException:
                pass
            return state()["img_src"]

        per_try = min(args.timeout, 30.0)

        def change_dropdown(label: str, shot: str) -> None:
            """Select other options of the dropdown until the figure changes (an option can
            legitimately give the same figure, e.g. the class that is also the prediction)."""
            dd = [d for d in driver.find_elements(By.CSS_SELECTOR,
                                                  ".jupyter-widgets.widget-dropdown")
                  if d.find_element(By.TAG_NAME, "label").text.strip() == label]
            if not dd:
                check(False, f"dropdown {label!r} found")
                return
            sel = Select(dd[0].find_element(By.TAG_NAME, "select"))
            start = sel.first_selected_option.text
            before = state()["img_src"]
            tried, after = [], before
            for idx in [i for i, o in enumerate(sel.options) if o.text != start][:3]:
                sel.select_by_index(idx)
                tried.append(sel.first_selected_option.text)
                after = wait_new_figure(before, per_try)
                if after and after != before:
                    break
            time.sleep(0.5)
            driver.save_screenshot(str(work / shot))
            check(bool(after) and after != before,
                  f"{label}: {start!r} -> {' -> '.join(map(repr, tried))} changes the figure "
                  f"(png sha1/len {digest(before)} -> {digest(after)})")

        def change_slider(shot: str) -> None:
            """Move the image IntSlider one step with the keyboard (ArrowRight on its handle)."""
            handles = driver.find_elements(By.CSS_SELECTOR,
                                           ".jupyter-widgets.widget-slider .noUi-handle")
            if not handles:
                check(False, "IntSlider handle (.noUi-handle) found")
                return
            old = state()["slider_value"]
            before = state()["img_src"]
            handles[0].click()
            handles[0].send_keys(Keys.ARROW_RIGHT)
            after = wait_new_figure(before, per_try)
            time.sleep(0.5)
            driver.save_screenshot(str(work / shot))
            check(bool(after) and after != before,
                  f"image slider: {old} -> {state()['slider_value']} changes the figure "
                  f"(png sha1/len {digest(before)} -> {digest(after)})")

        change_dropdown("class", "after_class.png")
        change_dropdown("mode", "after_mode.png")
        change_slider("after_image.png")
        s = state()
        check(not s["error_widget"] and not s["traceback"],
              "still no widget error / traceback after the changes")
    driver = None
    try:
        wait_server(base, server, 90)
        driver = start_browser()
        drive(driver)
    finally:
        if driver is not None:
            try:
                logs = driver.get_log("browser")
                print(f"browser console: {len(logs)} entries")
                for e in logs:
                    print(f"  [{e.get('level')}] {e.get('message', '')[:300]}")
            except Exception as exc:  # the log is informative only
                print(f"browser console: not available ({exc})")
            driver.quit()
        stop_server(server)
        log.close()
        print(f"screenshots: {', '.join(str(p) for p in sorted(work.glob('*.png')))}")
    if failures:
        print(f"FAIL: {len(failures)} check(s) failed")
        sys.exit(1)
    print("PASS: the explorer renders and reacts in JupyterLab")


if __name__ == "__main__":
    main()
