"""``mesh-collab demo --hub`` in headless Chromium: two hub users on their own servers, and
marie at site B, co-edit einstein's notebook.

einstein and marie log in at site A's hub through its login form, each lands on their own
server (a mesh node of site A), and opens the notebook; marie at site B opens the address
the demo prints for her. What one types appears at the others exactly once, with the remote
cursor. Screenshots are saved under ``test-artifacts/``.
"""

from __future__ import annotations

import json
import re
import signal
import stat
import sys
from pathlib import Path

import anyio
import httpx
import pytest
from playwright.async_api import Page, async_playwright

from tests.browser import (
    ARGS,
    ARTIFACTS,
    CHROMIUM,
    VISIBLE,
    login,
    open_notebook,
    shows,
    type_and_see,
)
from tests.helpers import demo_sites

pytestmark = [pytest.mark.timeout(300), pytest.mark.browser, pytest.mark.slow]


#: welcome.ipynb opens with rendered Markdown: type into its first code cell.
CODE = ".jp-CodeCell"


async def first_code_cell(page: Page) -> str:
    return str(await page.locator(f"{VISIBLE} {CODE} >> nth=0 >> .cm-content").inner_text())


async def test_two_hub_users_and_a_remote_site_co_edit_in_jupyterlab(tmp_path: Path) -> None:
    root = tmp_path / "demo"
    args = [sys.executable, "-m", "mesh_collab", "--log-level", "WARNING", "demo", "--hub",
            "--root", str(root)]
    log = (tmp_path / "demo.log").open("wb")
    ARTIFACTS.mkdir(exist_ok=True)
    async with await anyio.open_process(args, stderr=log) as process:
        try:
            site_a, site_b = await demo_sites(process)
            hub = site_a["hub"]
            assert sorted(site_a["users"]) == ["einstein", "marie"]
            # Each user's server answers as that user only, with the printed token.
            async with httpx.AsyncClient(timeout=30) as http:
                for name, server in site_a["users"].items():
                    me = await http.get(f"{server['url']}api/me",
                                        headers={"Authorization": f"token {server['token']}"})
                    assert (me.json()["identity"]["username"],
                            me.json()["identity"]["site"]) == (name, "site-a")
                other = site_a["users"]["marie"]
                refused = await http.get(f"{site_a['users']['einstein']['url']}api/contents",
                                         headers={"Authorization": f"token {other['token']}"})
                assert refused.status_code == 403  # marie's token does not open einstein's

            async with async_playwright() as p:
                browser = await p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                                  args=ARGS)
                try:
                    pages = {}
                    for name in ("einstein", "marie", "marie@b"):
                        context = await browser.new_context(
                            viewport={"width": 1280, "height": 800})
                        pages[name] = await context.new_page()
                    a, m, b = pages["einstein"], pages["marie"], pages["marie@b"]
                    # The hub's own login form, as a person uses it.
                    await login(a, f"{hub}hub/", "einstein", "relativity")
                    await login(m, f"{hub}hub/", "marie", "radioactivity")
                    # ... and lands on their own server, through the hub's OAuth with it.
                    await a.wait_for_url(re.compile(r"/user/einstein/lab"), timeout=60_000)
                    await m.wait_for_url(re.compile(r"/user/marie/lab"), timeout=60_000)
                    await open_notebook(a, site_a["users"]["einstein"]["url"], "einstein",
                                        "welcome.ipynb", cell=CODE)
                    await open_notebook(m, site_a["users"]["marie"]["url"], "marie",
                                        "Shared with me/welcome.ipynb", cell=CODE)
                    await b.goto(f"{site_b['url']}lab?token={site_b['token']}")
                    await open_notebook(b, site_b["url"], "marie-b", site_b["notebook"],
                                        cell=CODE)

                    await type_and_see(a, m, " # einstein@hub", cell=CODE)
                    await m.wait_for_selector(".jp-remote-cursor", state="attached",
                                              timeout=30_000)
                    await type_and_see(m, a, " # marie@hub", cell=CODE)
                    await a.wait_for_selector(".jp-remote-cursor", state="attached",
                                              timeout=30_000)
                    await type_and_see(b, a, " # marie@b", cell=CODE)
                    await shows(m, "# marie@b", cell=CODE)
                    # Every typed token, exactly once, in every view.
                    for page in (a, m, b):
                        text = await first_code_cell(page)
                        for typed in ("# einstein@hub", "# marie@hub", "# marie@b"):
                            assert text.count(typed) == 1, (typed, text)
                    await a.screenshot(path=str(ARTIFACTS / "hub-einstein.png"))
                    await m.screenshot(path=str(ARTIFACTS / "hub-marie.png"))
                    await b.screenshot(path=str(ARTIFACTS / "hub-marie-at-b.png"))
                finally:
                    await browser.close()
            directory = json.loads((root / "mesh.json").read_text())
            assert [s["site"] for s in directory] == ["site-a", "site-b"]
            assert sorted(n["id"] for n in directory[0]["nodes"]) == ["einstein", "marie"]
            # What the hub and the servers keep is theirs only.
            hub_folder = root / "site-a" / "hub"
            for path, expected in [
                (hub_folder, 0o700), (hub_folder / "jupyterhub.sqlite", 0o600),
                (hub_folder / "jupyterhub_cookie_secret", 0o600),
                (hub_folder / "crypt-key", 0o600), (hub_folder / "node-keys", 0o700),
                *[(hub_folder / "node-keys" / f"{n}.pem", 0o600) for n in site_a["users"]],
                *[(hub_folder / "users" / n, 0o700) for n in site_a["users"]],
                *[(hub_folder / "users" / n / ".local/share/jupyter/mesh_collab/site-a",
                   0o700) for n in site_a["users"]],
                *[(hub_folder / "users" / n / ".local/share/jupyter/mesh_collab/site-a"
                   / "node-key.pem", 0o600) for n in site_a["users"]],
            ]:
                assert stat.S_IMODE(path.stat().st_mode) == expected, path
        finally:
            process.send_signal(signal.SIGTERM)
            with anyio.fail_after(60):
                await process.wait()
    assert process.returncode == 0, (tmp_path / "demo.log").read_text()[-3000:]
