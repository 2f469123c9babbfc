"""A chapter opened in JupyterLab is a notebook, and saving it unchanged changes nothing.

A real JupyterLab server (on 127.0.0.1, in a temporary copy of the chapters) and headless
Chromium: follow a ``/lab/tree/notebooks/NN_….py`` link, check that a notebook opened (not the
text editor), save with Ctrl+S once its kernel is up, and compare the file byte for byte.

JupyterLab does mark the tab modified as the kernel starts: it writes the kernel's
``language_info`` into the notebook, and that carries the exact Python version (3.11.2, 3.12.7, …),
so no header could match every reader's Python. The chapters keep ``language_info`` out of the
header (jupytext's default), which is what makes the save that follows a no-op on any Python. Needs Chromium like tests/test_site.py (skipped with a
message when it is absent, except under CI).
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from rwkvlab import book
from rwkvlab.site import browser

ROOT = book.ROOT
OVERRIDE = ROOT / "jupyterlab-settings" / "rwkvlab-chapters-as-notebooks.json"


def test_the_settings_package_makes_jupytext_the_default_viewer_for_python():
    settings = json.loads(OVERRIDE.read_text())
    assert settings["@jupyterlab/docmanager-extension:plugin"]["defaultViewers"]["python"] == "Jupytext Notebook"
    installed = Path(sys.prefix) / "share" / "jupyter" / "lab" / "settings" / "overrides.d" / OVERRIDE.name
    assert installed.is_file(), f"{installed} is missing: `pip install -r requirements.txt` installs it"
    assert json.loads(installed.read_text()) == settings
    reqs = (ROOT / "requirements.txt").read_text().splitlines()
    assert "./jupyterlab-settings" in [r.split("#")[0].strip() for r in reqs]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def lab(tmp_path):
    if browser.find_chromium() is None:
        msg = "no Chromium on this machine: apt-get install chromium (Debian), or set $RWKVLAB_CHROMIUM"
        if os.environ.get("CI"):
            pytest.fail(msg + " -- CI must have it (.ci/run installs it)")
        pytest.skip(msg)
    work = tmp_path / "book"
    shutil.copytree(ROOT / "notebooks", work / "notebooks", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("jupytext.toml", "book.toml"):
        shutil.copy(ROOT / name, work / name)
    port = _free_port()
    env = dict(os.environ, JUPYTERLAB_SETTINGS_DIR=str(tmp_path / "user-settings"),
               JUPYTERLAB_WORKSPACES_DIR=str(tmp_path / "workspaces"), JUPYTER_RUNTIME_DIR=str(tmp_path / "rt"))
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}", "--ip=127.0.0.1",
         "--allow-root", "--IdentityProvider.token=", "--ServerApp.password=",
         "--LabApp.extension_manager=readonly", "--LabApp.expose_app_in_browser=True",
         f"--ServerApp.root_dir={work}", "--LabApp.news_url=", "--LabApp.check_for_updates_class="
         "jupyterlab.NeverCheckForUpdate"],
        cwd=work, env=env, stdout=subprocess.DEVNULL, stderr=open(tmp_path / "lab.log", "w"))
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{url}/api/status", timeout=2)
                break
            except OSError:
                if server.poll() is not None:
                    raise RuntimeError((tmp_path / "lab.log").read_text()[-3000:])
                time.sleep(0.5)
        else:
            raise RuntimeError("JupyterLab did not start: " + (tmp_path / "lab.log").read_text()[-3000:])
        yield url, work
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()


def test_jupyterlab_opens_a_chapter_as_a_notebook_and_saving_changes_nothing(lab):
    from playwright.sync_api import sync_playwright

    url, work = lab
    chapter = "00_preface.py"
    path = work / "notebooks" / chapter
    before = path.read_bytes()
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=browser.find_chromium(), headless=True,
                                      args=["--no-sandbox", "--disable-gpu"])
        page = chromium.new_page(viewport={"width": 1280, "height": 800})
        outside = []
        page.route("**/*", lambda r: r.continue_() if r.request.url.startswith(url) or
                   r.request.url.startswith(("data:", "blob:")) else (outside.append(r.request.url), r.abort()))
        page.goto(f"{url}/lab/tree/notebooks/{chapter}", wait_until="domcontentloaded", timeout=90_000)
        page.wait_for_selector(".jp-NotebookPanel .jp-Cell", timeout=90_000)
        assert page.locator(".jp-FileEditor").count() == 0, "the chapter opened as text, not as a notebook"
        # the kernel starts and JupyterLab writes its spec into the notebook's metadata
        page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=90_000)
        # ... and, from the kernel's reply, its language_info (a placeholder {"name": ""} comes first)
        page.wait_for_function("() => { const m = window.jupyterapp.shell.currentWidget.context.model.toJSON();"
                               " return m.metadata.language_info && m.metadata.language_info.name === 'python'; }",
                               timeout=90_000)
        page.wait_for_timeout(300)
        tab = page.locator(".lm-DockPanel-tabBar .lm-TabBar-tab.lm-mod-current")
        mtime = path.stat().st_mtime_ns
        page.locator(".jp-NotebookPanel .jp-Notebook").first.click()
        page.keyboard.press("Control+s")
        for _ in range(60):
            if path.stat().st_mtime_ns != mtime:
                break
            page.wait_for_timeout(250)
        assert path.stat().st_mtime_ns != mtime, "Ctrl+S did not save the chapter"
        for _ in range(80):                          # the tab's flag clears once the save has returned
            if "jp-mod-dirty" not in (tab.get_attribute("class") or ""):
                break
            page.wait_for_timeout(250)
        assert "jp-mod-dirty" not in (tab.get_attribute("class") or ""), "still marked modified after saving"
        page.screenshot(path=str(work / "jupyterlab.png"))
        chromium.close()
    after = path.read_bytes()
    assert after == before, "saving an unchanged chapter rewrote it:\n" + "\n".join(
        ln for ln in __import__("difflib").unified_diff(before.decode().splitlines(), after.decode().splitlines(),
                                                        lineterm="", n=1))
    assert not [u for u in outside if not u.startswith("http://127.0.0.1")], outside
