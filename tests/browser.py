"""Driving JupyterLab in headless Chromium (Debian's, never a downloaded one): shared steps."""

from __future__ import annotations

import shutil
from pathlib import Path
from urllib.parse import quote

from playwright.async_api import Page

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
VISIBLE = ".jp-NotebookPanel:not(.lm-mod-hidden)"
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"


async def login(page: Page, base: str, user: str, password: str) -> None:
    """Log in through the login form at ``<base>login`` (a node's, or a hub's)."""
    await page.goto(f"{base}login")
    await page.fill("input[name=username]", user)
    await page.fill("input[name=password]", password)
    await page.click("button[type=submit], input[type=submit]")
    await page.wait_for_load_state()


async def open_notebook(
    page: Page, base: str, workspace: str, path: str, *, cell: str = ".jp-Cell"
) -> None:
    """Open ``path`` in JupyterLab at ``base``, in a fresh workspace; wait for the editor of
    its first ``cell`` (a selector: ".jp-CodeCell" when the first cell is rendered Markdown)."""
    await page.goto(f"{base}lab/workspaces/{workspace}/tree/{quote(path)}?reset")
    try:
        await page.wait_for_selector(f"{VISIBLE} {cell} .cm-content", timeout=90_000)
    except Exception:
        ARTIFACTS.mkdir(exist_ok=True)
        await page.screenshot(path=str(ARTIFACTS / f"failed-open-{workspace}.png"))
        raise
    if await page.locator(".jp-Dialog").count():
        await page.keyboard.press("Escape")


async def type_and_see(
    writer: Page, reader: Page, text: str, *, cell: str = ".jp-Cell"
) -> None:
    """Type ``text`` at the end of the first ``cell`` in ``writer``; wait until ``reader``
    shows it there."""
    await writer.click(f"{VISIBLE} {cell} >> nth=0 >> .cm-content")
    await writer.keyboard.press("End")
    await writer.keyboard.type(text)
    await shows(reader, text.strip(), cell=cell)


async def shows(page: Page, text: str, *, cell: str = ".jp-Cell") -> None:
    """Wait until the first ``cell`` of ``page``'s notebook holds ``text``."""
    await page.wait_for_function(
        "([m, sel]) => document.querySelector(sel).textContent.includes(m)",
        arg=[text, f".jp-NotebookPanel:not(.lm-mod-hidden) {cell} .cm-content"],
        timeout=30_000,
    )
