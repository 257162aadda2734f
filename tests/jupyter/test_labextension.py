"""The mesh_collab JupyterLab extension (labextension/), in headless Chromium.

One browser, three users: einstein at site A and richard at site A (a multi-user node), and
marie at site B (her own site's node), each in a browser context of their own. One scenario
walks through what the extension adds, in the order a user meets it: sharing from the file
browser (a local viewer and an OCM editor at another site), accepting the OCM share in
"Shared with me", the collaborators panel and status item while co-editing across sites,
read-only for the viewer, a notebook locked by another application, the history panel
restoring a version through the live room, "Shared by me", and going offline. Screenshots
land in ``test-artifacts/labextension-*.png``.

The state logic's unit tests (``labextension/src/__tests__``) run here too.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from playwright.async_api import Page, async_playwright

from mesh_collab.cs3.models import Lock
from tests.browser import ARGS, ARTIFACTS, CHROMIUM, VISIBLE, login, type_and_see
from tests.helpers import mesh_node, mesh_site, write_mesh
from tests.jupyter.conftest import TOKEN, jupyter_process

ROOT = Path(__file__).resolve().parents[2]
LABEXTENSION = ROOT / "labextension"
SIZE = {"width": 1400, "height": 860}


def notebook(source: str) -> bytes:
    return json.dumps({
        "cells": [
            {"cell_type": "code", "execution_count": None, "id": "c1", "metadata": {},
             "outputs": [], "source": source},
            {"cell_type": "markdown", "id": "c2", "metadata": {},
             "source": "# Notes\nShared across the mesh."},
        ],
        "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python",
                                    "name": "python3"}},
        "nbformat": 4,
        "nbformat_minor": 5,
    }).encode()


def test_state_logic_unit_tests() -> None:
    """``jlpm test``: the status, collaborators and share-candidate logic (node --test)."""
    if not (LABEXTENSION / "node_modules").is_dir():
        pytest.skip("labextension/node_modules is missing: `pip install -e .` builds it")
    jlpm = Path(sys.executable).with_name("jlpm")
    result = subprocess.run(
        [str(jlpm), "test"], cwd=LABEXTENSION, capture_output=True, text=True, timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "# fail 0" in result.stdout


async def open_lab(page: Page, base: str, workspace: str, path: str = "") -> None:
    """Open JupyterLab (with a notebook, if ``path``) in a workspace of its own."""
    tree = f"/tree/{quote(path)}" if path else ""
    await page.goto(f"{base}lab/workspaces/{workspace}{tree}?reset")
    try:
        if path:
            await page.wait_for_selector(f"{VISIBLE} .jp-Cell .cm-content", timeout=90_000)
        else:
            await page.wait_for_selector(".jp-DirListing-item", timeout=90_000)
    except Exception:
        await shot(page, f"failed-open-{workspace}")
        raise
    await dismiss_dialogs(page)


async def dismiss_dialogs(page: Page) -> None:
    if await page.locator(".jp-Dialog").count():  # "Select Kernel"
        await page.keyboard.press("Escape")


def item(page: Page, name: str) -> Any:
    """The file browser's entry for ``name``."""
    return page.locator(".jp-DirListing-item").filter(
        has=page.locator(".jp-DirListing-itemText", has_text=name)
    )


async def shot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / f"labextension-{name}.png"))


async def side_panel(page: Page, widget_id: str) -> None:
    """Show a side panel by clicking its tab (a no-op when it is shown already)."""
    panel = page.locator(f"#{widget_id}")
    if not await panel.is_visible():
        await page.click(f".lm-TabBar-tab[data-id='{widget_id}']")
    await panel.wait_for(state="visible")


async def status(page: Page, kind: str, wait_ms: float = 10_000) -> str:
    """Wait until the status item shows ``kind``; return its text."""
    item = page.locator(f".jp-mesh-status[data-kind='{kind}']")
    await item.wait_for(timeout=wait_ms)
    return await item.inner_text()



async def share_from_file_browser(
    page: Page, name: str, query: str, grantee: str, role: str
) -> None:
    """Right-click ``name`` in the file browser, Share…, find ``query``, share."""
    dialog = page.locator(".jp-Dialog .jp-mesh-ShareWidget")
    if not await dialog.count():
        await item(page, name).click(button="right")
        await page.click(".lm-Menu-item[data-command='mesh:share']")
        await dialog.wait_for()
    await page.select_option(".jp-mesh-share-role", role)
    await page.fill(".jp-mesh-search", query)
    await page.click(f".jp-mesh-candidate[data-grantee='{grantee}'] .jp-mesh-share-button")
    user, _, site = grantee.partition("@")
    await page.locator(
        f".jp-mesh-shares .jp-mesh-share[data-grantee='{user}']"
        + (f"[data-site='{site}']" if site else "")
    ).wait_for()


@pytest.mark.timeout(300)
@pytest.mark.browser
async def test_labextension_across_two_sites(
    gateway_factory: Any, cs3_client_factory: Any, tmp_path: Path, jupyter_env: Path
) -> None:
    gw_a = await gateway_factory(site="site-a")
    gw_b = await gateway_factory(site="site-b")
    gw_a.trusted_providers, gw_b.trusted_providers = [gw_b.domain], [gw_a.domain]
    einstein = await (await cs3_client_factory(gw_a.grpc_address)).login("einstein", "relativity")
    await einstein.files.write("/home/einstein/collab.ipynb", notebook("x = 1"))
    locked = await einstein.files.write("/home/einstein/locked.ipynb", notebook("y = 2"))
    await einstein.locks.set(locked.id, Lock(
        lock_id="wopi-42", app_name="Collabora Online", expiration=time.time() + 600))
    peers = tmp_path / "mesh.json"
    ids = {site: mesh_node(tmp_path, site) for site in ("site-a", "site-b")}
    for identity in ids.values():
        identity.key  # noqa: B018 - made here, before the node reads it
    # No "get notified about Jupyter news?" toast over the screenshots.
    settings = jupyter_env / "config/lab/user-settings/@jupyterlab/apputils-extension"
    settings.mkdir(parents=True)
    (settings / "notification.jupyterlab-settings").write_text(
        json.dumps({"checkForUpdates": False, "fetchNews": "false"}))

    def lab(gw: Any, site: str, *extra: str, env: dict[str, str] | None = None) -> Any:
        return jupyter_process(
            tmp_path, jupyter_env, app="lab", name=site, env=env,
            args=(f"--MeshCollabApp.gateway={gw.grpc_address}", f"--MeshCollabApp.site={site}",
                  f"--MeshCollabApp.peers=@{peers}", "--MeshCollabApp.checkpoint_quiet_period=1",
                  *ids[site].args, *extra),
        )

    async with AsyncExitStack() as stack:
        # Site A: multi-user (einstein and richard log in); einstein is also the node's
        # default user, which serves the links of other sites.
        node_a = await stack.enter_async_context(lab(
            gw_a, "site-a", "--MeshCollabApp.auth_mode=multi-user",
            "--MeshCollabApp.cs3_username=einstein",
            env={"MESH_COLLAB_CS3_PASSWORD": "relativity"}))
        node_b = await stack.enter_async_context(lab(
            gw_b, "site-b", "--MeshCollabApp.cs3_username=marie",
            env={"MESH_COLLAB_CS3_PASSWORD": "radioactivity"}))
        write_mesh(peers, mesh_site("site-a", gw_a.domain, (ids["site-a"], node_a.url)),
                   mesh_site("site-b", gw_b.domain, (ids["site-b"], node_b.url)))
        p = await stack.enter_async_context(async_playwright())
        browser = await p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        stack.push_async_callback(browser.close)
        ctx_a, ctx_b, ctx_r = [await browser.new_context(viewport=SIZE) for _ in range(3)]
        a, b, r = await ctx_a.new_page(), await ctx_b.new_page(), await ctx_r.new_page()
        try:
            await scenario(node_a, node_b, (ctx_a, ctx_b, ctx_r), (a, b, r))
        except BaseException:
            for page, who in ((a, "einstein"), (b, "marie"), (r, "richard")):
                if not page.is_closed():
                    await shot(page, f"failed-{who}")
            raise


async def scenario(node_a: Any, node_b: Any, contexts: Any, pages: Any) -> None:
    """The user-facing walk-through (see the module docstring)."""
    ctx_a, ctx_b, ctx_r = contexts
    a, b, r = pages

    # 3. Sharing: einstein shares from the file browser with richard (this site,
    # viewer) and marie at site B (OCM, editor); a share that exists already is an
    # error the dialog shows, with the server's words.
    await login(a, node_a.url, "einstein", "relativity")
    await open_lab(a, node_a.url, "einstein")
    await share_from_file_browser(a, "collab.ipynb", "rich", "richard", "viewer")
    await share_from_file_browser(a, "collab.ipynb", "marie", "marie@site-b", "editor")
    await a.fill(".jp-mesh-search", "marie")
    await a.locator(".jp-mesh-candidate[data-grantee='marie@site-b']").wait_for()
    await shot(a, "share-dialog")
    await a.fill(".jp-mesh-search", "richard")
    await a.click(".jp-mesh-candidate[data-grantee='richard'] .jp-mesh-share-button")
    error = a.locator(".jp-Dialog .jp-mesh-error")
    await error.wait_for()
    assert "already shared with 'richard'" in await error.inner_text()
    assert "(HTTP 409)" in await error.inner_text()
    await shot(a, "share-error")
    await a.click(".jp-Dialog .jp-mod-accept")

    # marie, at site B, accepts the OCM share in "Shared with me" and opens it.
    await b.goto(f"{node_b.url}lab?token={TOKEN}")
    await open_lab(b, node_b.url, "marie")
    await side_panel(b, "jp-mesh-shared-with-me")
    pending = b.locator(".jp-mesh-received[data-name='collab.ipynb'][data-state='pending']")
    await pending.wait_for()
    assert "from einstein · site-a" in await pending.inner_text()
    await shot(b, "shared-with-me-pending")
    await pending.locator(".jp-mesh-accept").click()
    accepted = b.locator(".jp-mesh-received[data-name='collab.ipynb'][data-state='accepted']")
    await accepted.wait_for()
    await accepted.locator(".jp-mesh-open").click()
    await b.wait_for_selector(f"{VISIBLE} .jp-Cell .cm-content", timeout=60_000)
    await dismiss_dialogs(b)

    # 1 and 2. Collaborators and state while co-editing across sites.
    await item(a, "collab.ipynb").dblclick()
    await a.wait_for_selector(f"{VISIBLE} .jp-Cell .cm-content", timeout=60_000)
    await dismiss_dialogs(a)
    await type_and_see(b, a, " # from marie at site B")
    await type_and_see(a, b, " # from einstein at site A")
    for page, me, other, other_site in ((a, "einstein", "marie", "site-b"),
                                        (b, "marie", "einstein", "site-a")):
        await side_panel(page, "jp-mesh-collaborators")
        row = page.locator(
            f".jp-mesh-collaborator[data-username='{other}'][data-site='{other_site}']"
            "[data-role='editor']")
        await row.wait_for(timeout=30_000)
        await page.locator(
            f".jp-mesh-collaborator.jp-mod-me[data-username='{me}'][data-role='editor']"
        ).wait_for()
        cursor = page.locator(".jp-remote-cursor").first
        await cursor.wait_for(state="attached", timeout=30_000)
        box = await cursor.bounding_box()
        assert box is not None
        await page.mouse.move(box["x"] + 1, box["y"] + box["height"] / 2)
        flag = page.locator(".jp-remote-userFlag-name").first
        await flag.wait_for(timeout=30_000)
        assert other_site in await flag.inner_text()  # "Marie Curie · site-b"
    assert "via site-a" in await status(b, "live")
    # The home site checkpoints (quiet period 1 s): its time shows in the status item.
    saved = a.locator(
        ".jp-mesh-status[data-kind='live'][data-checkpoint]:not([data-checkpoint=''])")
    await saved.wait_for(timeout=20_000)
    assert "saved" in await saved.inner_text()
    await a.mouse.move(box["x"] + 1, box["y"] + box["height"] / 2)
    await shot(a, "collaborators-einstein-site-a")
    await shot(b, "collaborators-marie-site-b")

    # Read-only: richard, a viewer at site A, accepts his (local) share and opens it.
    await login(r, node_a.url, "richard", "superfluidity")
    await open_lab(r, node_a.url, "richard")
    await side_panel(r, "jp-mesh-shared-with-me")
    await r.locator(".jp-mesh-received[data-name='collab.ipynb'][data-kind='local'] "
                    ".jp-mesh-accept").click()
    await r.locator(".jp-mesh-received[data-name='collab.ipynb'][data-state='accepted'] "
                    ".jp-mesh-open").click()
    await r.wait_for_selector(f"{VISIBLE} .jp-Cell .cm-content", timeout=60_000)
    await dismiss_dialogs(r)
    assert "Read-only (viewer)" in await status(r, "readonly")
    await side_panel(r, "jp-mesh-collaborators")
    await r.locator(".jp-mesh-collaborator.jp-mod-me[data-username='richard']"
                    "[data-role='viewer']").wait_for()
    await a.locator(".jp-mesh-collaborator[data-username='richard'][data-site='site-a']"
                    "[data-role='viewer']").wait_for(timeout=30_000)
    await shot(r, "readonly-richard")

    # 4. History: einstein restores the first version; marie, at the other site, sees
    # it happen in her live notebook.
    await side_panel(a, "jp-mesh-history")
    versions = a.locator(".jp-mesh-version")
    await versions.first.wait_for(timeout=20_000)
    await shot(a, "history")
    await versions.last.locator(".jp-mesh-restore").click()
    await a.click(".jp-Dialog .jp-mod-warn")
    await b.wait_for_function(
        "() => { const t = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden) "
        ".jp-Cell .cm-content').textContent; return t.trim() === 'x = 1'; }",
        timeout=30_000,
    )
    await shot(b, "history-restored-marie")
    await ctx_r.close()

    # "Shared by me" lists both shares; revoking richard's removes it.
    await side_panel(a, "jp-mesh-shared-by-me")
    by_me = a.locator("#jp-mesh-shared-by-me .jp-mesh-share[data-path='collab.ipynb']")
    await by_me.nth(1).wait_for()
    assert sorted(await by_me.evaluate_all(
        "rows => rows.map(r => r.dataset.grantee + '@' + r.dataset.site)"
    )) == ["marie@site-b", "richard@site-a"]
    await shot(a, "shared-by-me")
    await a.locator("#jp-mesh-shared-by-me .jp-mesh-share[data-grantee='richard'] "
                    ".jp-mesh-revoke").click()
    await a.locator("#jp-mesh-shared-by-me .jp-mesh-share[data-grantee='richard']"
                    ).wait_for(state="detached")

    # 2. Locked by another application.
    await a.click(".lm-TabBar-tab[data-id='filebrowser']")
    await item(a, "locked.ipynb").dblclick()
    await dismiss_dialogs(a)
    assert "Locked by Collabora Online" in await status(a, "locked", wait_ms=30_000)
    await shot(a, "locked")

    # 2. Offline: marie's browser loses its node, then site A goes away; her status
    # follows each change within a second, and she keeps typing.
    await b.bring_to_front()
    await status(b, "live")
    await ctx_b.set_offline(True)
    start = time.monotonic()
    assert "will merge" in await status(b, "offline", wait_ms=5_000)
    offline_after = time.monotonic() - start
    await ctx_b.set_offline(False)
    await status(b, "live", wait_ms=30_000)
    node_a.process.terminate()
    await node_a.process.wait()
    start = time.monotonic()
    text = await status(b, "offline", wait_ms=30_000)
    assert "site-a" in text and "will merge" in text
    await type_and_see(b, b, " # typed while site A is away")
    await shot(b, "offline-marie")
    # Within a second, plus Playwright's polling and round trips on a loaded machine.
    assert offline_after < 2.0, offline_after
