"""The first minute of a newcomer, literally: ``mesh-collab demo``, and the links it prints
pasted into headless Chromium.

einstein opens site A's "as einstein, no login" link, marie site B's "as marie, no login"
link, each in their own browser. They open the notebook (einstein's, and marie's OCM share of
it) from the file browser, type into it both ways, press Ctrl+S (answered, no "File Changed"
dialog, no unsaved mark), einstein runs the cell that reads ``data.txt`` from beside the
notebook in CS3 and both see its output, they open the Markdown file beside it and co-edit
it with cursors; marie logs in at site A through the form and co-edits a Python script with
einstein; then a reload, a second tab, a logout and a login as someone else. Screenshots
land in ``test-artifacts/``.
"""

from __future__ import annotations

import base64
import json
import re
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from playwright.async_api import Page, WebSocket, async_playwright

from tests.browser import ARGS, ARTIFACTS, CHROMIUM

pytestmark = [pytest.mark.timeout(420), pytest.mark.browser]

LINK = re.compile(r"^\s+as (\w+), no login: (http\S+)$")
# The current tab's file editor (the document widgets of other tabs are hidden).
EDITOR = ".jp-MainAreaWidget:not(.lm-mod-hidden) .jp-FileEditor .cm-content"
NOTEBOOK_CELL = ".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Cell"


@asynccontextmanager
async def demo(tmp_path: Path) -> AsyncIterator[tuple[dict[str, str], list[dict[str, str]]]]:
    """Run ``mesh-collab demo``; yield the "no login" link it printed for each user, and the
    sites of its JSON line."""
    args = [sys.executable, "-m", "mesh_collab", "--log-level", "WARNING", "demo",
            "--root", str(tmp_path / "demo")]
    log = (tmp_path / "demo.log").open("wb")
    async with await anyio.open_process(args, stderr=log) as process:
        try:
            links: dict[str, str] = {}
            buffer = b""
            assert process.stdout is not None
            with anyio.fail_after(180):
                while not buffer.decode(errors="replace").rstrip().endswith("}]}"):
                    buffer += await process.stdout.receive()
            sites: list[dict[str, str]] = []
            for line in buffer.decode().splitlines():
                match = LINK.match(line)
                if match:
                    links[match.group(1)] = match.group(2)
                if line.startswith('{"sites"'):
                    sites = json.loads(line)["sites"]
            yield links, sites
        finally:
            process.send_signal(signal.SIGINT)
            with anyio.fail_after(60):
                await process.wait()
            log.close()


class SaveReplies:
    """The answers to save requests that a page's room websockets received."""

    def __init__(self, page: Page) -> None:
        self.replies: list[dict[str, Any]] = []
        self._arrived = anyio.Event()
        page.on("websocket", self._watch)

    def _watch(self, ws: WebSocket) -> None:
        if "/api/collaboration/room/" in ws.url:
            ws.on("framereceived", self._frame)

    def _frame(self, payload: str | bytes) -> None:
        if isinstance(payload, bytes) and payload[:1] == b"\x02" and b"responseTo" in payload:
            self.replies.append(json.loads(payload[payload.index(b"{"):]))
            self._arrived.set()

    async def wait(self, count: int) -> list[dict[str, Any]]:
        with anyio.fail_after(30):
            while len(self.replies) < count:
                self._arrived = anyio.Event()
                await self._arrived.wait()
        return self.replies


async def open_from_browser(page: Page, *names: str) -> None:
    """Double-click through the file browser, as a person does."""
    for name in names:
        item = page.locator(f".jp-DirListing-item[title^='Name: {name}']").first
        await item.wait_for(timeout=60_000)
        await item.dblclick()


async def save_and_check(page: Page, replies: SaveReplies, who: str) -> None:
    """Ctrl+S: answered "success", no dialog, no unsaved mark on the tab."""
    before = len(replies.replies)
    await page.keyboard.press("Control+s")
    try:
        answered = await replies.wait(before + 1)
    except TimeoutError:
        ARTIFACTS.mkdir(exist_ok=True)
        await page.screenshot(path=str(ARTIFACTS / f"demo-unanswered-save-{who}.png"))
        raise
    assert answered[-1]["status"] == "success", answered
    await page.wait_for_function(
        "() => !document.querySelector('.lm-TabBar-tab.jp-mod-current.jp-mod-dirty')",
        timeout=30_000,
    )
    if await page.locator(".jp-Dialog").count():
        ARTIFACTS.mkdir(exist_ok=True)
        await page.screenshot(path=str(ARTIFACTS / f"demo-dialog-{who}.png"))
        text = await page.locator(".jp-Dialog").inner_text()
        pytest.fail(f"a dialog opened on Ctrl+S for {who}: {text}")


async def type_into(page: Page, selector: str, text: str) -> None:
    await page.click(selector)
    await page.keyboard.press("Control+End")
    await page.keyboard.type(text)


async def shows(page: Page, selector: str, text: str) -> None:
    await page.wait_for_function(
        "([s, t]) => [...document.querySelectorAll(s)].some(e => e.textContent.includes(t))",
        arg=[selector, text],
        timeout=30_000,
    )


async def content_of(page: Page, selector: str) -> str:
    return "\n".join(await page.locator(selector).all_text_contents())


async def test_the_printed_links_work_in_a_browser(tmp_path: Path) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    async with demo(tmp_path) as (links, sites), async_playwright() as p:
        assert set(links) == {"einstein", "marie"}, links
        browser = await p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        try:
            size = {"width": 1280, "height": 800}
            ctx_a = await browser.new_context(viewport=size)
            ctx_b = await browser.new_context(viewport=size)
            a, b = await ctx_a.new_page(), await ctx_b.new_page()
            saves_a, saves_b = SaveReplies(a), SaveReplies(b)
            # The links, pasted as printed; the notebook opened from the file browser.
            await a.goto(links["einstein"])
            await b.goto(links["marie"])
            await open_from_browser(a, "welcome.ipynb")
            await open_from_browser(b, "Shared with me", "welcome.ipynb")
            code_a = f"{NOTEBOOK_CELL} >> nth=1 >> .cm-content"
            code_b = f"{NOTEBOOK_CELL} >> nth=1 >> .cm-content"
            for page in (a, b):
                await page.wait_for_selector(code_a, timeout=90_000)

            # Each types, then saves, as people do.
            await type_into(a, code_a, "  # einstein at A")
            await shows(b, f"{NOTEBOOK_CELL} .cm-content", "# einstein at A")
            await save_and_check(a, saves_a, "einstein")
            await type_into(b, code_b, "  # marie at B")
            await shows(a, f"{NOTEBOOK_CELL} .cm-content", "# marie at B")
            await save_and_check(b, saves_b, "marie")
            # einstein runs the cell that reads data.txt, which lies beside the notebook in
            # CS3: the kernel prints it, and marie, at site B, sees the output too.
            data_cell = f"{NOTEBOOK_CELL} >> nth=2"
            await a.click(f"{data_cell} >> .cm-content")
            await a.keyboard.press("Shift+Enter")
            output = ".jp-NotebookPanel:not(.lm-mod-hidden) .jp-OutputArea-output"
            for page in (a, b):
                await shows(page, output, "Michelson-Morley")
            await a.screenshot(path=str(ARTIFACTS / "demo-notebook-einstein.png"))
            await b.screenshot(path=str(ARTIFACTS / "demo-notebook-marie.png"))

            # The Markdown file beside it, co-edited across the sites, with cursors.
            await a.locator(".jp-BreadCrumbs-home").first.click()
            await open_from_browser(a, "notes.md")
            await b.locator(".jp-BreadCrumbs-home").first.click()
            await open_from_browser(b, "Shared with me", "notes.md")
            for page in (a, b):
                await page.wait_for_selector(EDITOR, timeout=90_000)
            await type_into(a, EDITOR, "einstein types here")
            await shows(b, EDITOR, "einstein types here")
            await save_and_check(a, saves_a, "einstein (notes.md)")
            await type_into(b, EDITOR, " and marie too")
            await shows(a, EDITOR, "einstein types here and marie too")
            await save_and_check(b, saves_b, "marie (notes.md)")
            for page in (a, b):
                await page.wait_for_selector(
                    ".jp-MainAreaWidget:not(.lm-mod-hidden) .jp-FileEditor .jp-remote-cursor",
                    state="attached", timeout=30_000,
                )
            await b.screenshot(path=str(ARTIFACTS / "demo-notes-marie.png"))

            # /metrics shows the open rooms, by kind and role: site A writes both files,
            # site B serves replicas of them.
            for site, role in ((sites[0], "primary"), (sites[1], "replica")):
                async with httpx.AsyncClient(timeout=30) as http:
                    scraped = await http.get(
                        f"{site['url']}metrics",
                        headers={"Authorization": f"token {site['token']}"},
                    )
                assert scraped.status_code == 200, scraped.text[:200]
                for kind in ("notebook", "file"):
                    row = f'mesh_collab_rooms{{kind="{kind}",role="{role}"}} 1.0'
                    assert row in scraped.text, (site["site"], row)

            # A Python script, co-edited by two users of site A: marie logs in through the
            # form in a browser of her own.
            ctx_c = await browser.new_context(viewport=size)
            c = await ctx_c.new_page()
            saves_c = SaveReplies(c)
            base = links["einstein"].split("lab?")[0]
            await c.goto(f"{base}login")
            await c.fill("input[name=username]", "marie")
            await c.fill("input[name=password]", "radioactivity")
            await c.click("button[type=submit]")
            await c.wait_for_load_state()
            await open_from_browser(c, "Shared with me", "analysis.py")
            await a.locator(".jp-BreadCrumbs-home").first.click()
            await open_from_browser(a, "analysis.py")
            for page in (a, c):
                await page.wait_for_selector(EDITOR, timeout=90_000)
            await type_into(c, EDITOR, "\nprint('marie at A')")
            await shows(a, EDITOR, "print('marie at A')")
            await save_and_check(c, saves_c, "marie (analysis.py)")
            await type_into(a, EDITOR, "\nprint('einstein')")
            await shows(c, EDITOR, "print('einstein')")
            await save_and_check(a, saves_a, "einstein (analysis.py)")

            # A binary file: the node's reason, not an endless "loading".
            site_a = sites[0]
            async with httpx.AsyncClient(timeout=30) as http:
                uploaded = await http.put(
                    f"{site_a['url']}api/contents/blob.dat",
                    headers={"Authorization": f"token {site_a['token']}"},
                    json={"type": "file", "format": "base64",
                          "content": base64.b64encode(b"\x00\x01binary\xff").decode()},
                )
                assert uploaded.status_code in (200, 201), uploaded.text
            await a.locator(".jp-BreadCrumbs-home").first.click()
            await open_from_browser(a, "blob.dat")  # listed at the file browser's next poll
            dialog = a.locator(".jp-Dialog")
            await dialog.wait_for(timeout=30_000)
            assert "cannot be edited as text" in await dialog.inner_text()
            await a.keyboard.press("Escape")

            # A reload, and a second tab: everything typed is there, once.
            await a.reload()
            await a.wait_for_selector(EDITOR, timeout=90_000)
            await shows(a, EDITOR, "print('einstein')")
            assert (await content_of(a, EDITOR)).count("print('marie at A')") == 1
            second = await ctx_a.new_page()
            await second.goto(links["einstein"].split("lab?")[0] + "lab/tree/welcome.ipynb")
            await shows(second, f"{NOTEBOOK_CELL} .cm-content", "# marie at B")
            text = await content_of(second, f"{NOTEBOOK_CELL} .cm-content")
            assert text.count("# einstein at A") == 1 and text.count("# marie at B") == 1

            # Log in through the form, log out, and log in as another user, in a browser
            # that never had the token link (JupyterLab opened from it keeps sending the
            # token, which logs that browser in again as the link's user).
            ctx_c = await browser.new_context(viewport=size)
            c = await ctx_c.new_page()

            async def form_login(user: str, password: str) -> None:
                await c.goto(f"{base}login")
                await c.fill("input[name=username]", user)
                await c.fill("input[name=password]", password)
                # The form posts, and the server redirects away from the login page: wait
                # for that navigation to end before the next one (else it may be cut short).
                await c.click("button[type=submit]")
                await c.wait_for_url(lambda url: "/login" not in url, timeout=60_000)
                await c.wait_for_load_state()
                # The API with the browser's cookies (a goto here may race the page's own
                # navigation and answer None).
                me = await c.request.get(f"{base}api/me")
                assert me.ok and (await me.json())["identity"]["username"] == user

            await form_login("einstein", "relativity")
            await c.goto(f"{base}logout")
            me = await c.request.get(f"{base}api/me")
            assert me.status in (401, 403)
            await form_login("marie", "radioactivity")
        finally:
            await browser.close()
