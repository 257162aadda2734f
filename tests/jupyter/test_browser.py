"""Two users co-edit a notebook in JupyterLab served by mesh_collab, in headless Chromium.

einstein and marie log in to one multi-user node (CS3 logins against the embedded gateway);
marie opens einstein's notebook through her "Shared with me" folder. Text typed by one appears
at the other, with the remote cursor (``.jp-remote-cursor``). Screenshots are saved under
``test-artifacts/``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from urllib.parse import quote

import pytest
from playwright.async_api import Page, async_playwright

from mesh_collab.cs3.client import Session
from mesh_collab.cs3.models import Role
from tests.jupyter.conftest import jupyter_process

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
VISIBLE = ".jp-NotebookPanel:not(.lm-mod-hidden)"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
NOTEBOOK = {
    "cells": [
        {"cell_type": "code", "execution_count": None, "id": "c1", "metadata": {},
         "outputs": [], "source": "x = 1"},
        {"cell_type": "markdown", "id": "c2", "metadata": {}, "source": "# Notes"},
    ],
    "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python",
                                "name": "python3"}},
    "nbformat": 4,
    "nbformat_minor": 5,
}

pytestmark = pytest.mark.timeout(240)


async def login(page: Page, base: str, user: str, password: str) -> None:
    await page.goto(f"{base}login")
    await page.fill("input[name=username]", user)
    await page.fill("input[name=password]", password)
    await page.click("button[type=submit], input[type=submit]")
    await page.wait_for_load_state()


async def open_notebook(page: Page, base: str, workspace: str, path: str) -> None:
    await page.goto(f"{base}lab/workspaces/{workspace}/tree/{quote(path)}?reset")
    try:
        await page.wait_for_selector(f"{VISIBLE} .jp-Cell .cm-content", timeout=90_000)
    except Exception:
        ARTIFACTS.mkdir(exist_ok=True)
        await page.screenshot(path=str(ARTIFACTS / f"failed-open-{workspace}.png"))
        raise
    if await page.locator(".jp-Dialog").count():
        await page.keyboard.press("Escape")


async def test_two_users_co_edit_in_jupyterlab(
    gateway, einstein: Session, marie: Session, tmp_path: Path, jupyter_env: Path
) -> None:
    await einstein.files.write("/home/einstein/collab.ipynb", json.dumps(NOTEBOOK).encode())
    info = await einstein.files.stat("/home/einstein/collab.ipynb")
    assert marie.user is not None
    share = await einstein.shares.create(info.id, marie.user.id, Role.EDITOR)
    await marie.shares.accept(share.id)
    ARTIFACTS.mkdir(exist_ok=True)
    args = (
        f"--MeshCollabApp.gateway={gateway.grpc_address}",
        "--MeshCollabApp.auth_mode=multi-user",
    )
    async with jupyter_process(tmp_path, jupyter_env, app="lab", args=args) as node, \
            async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        try:
            ctx_a = await browser.new_context(viewport={"width": 1280, "height": 800})
            ctx_b = await browser.new_context(viewport={"width": 1280, "height": 800})
            a, b = await ctx_a.new_page(), await ctx_b.new_page()
            await login(a, node.url, "einstein", "relativity")
            await login(b, node.url, "marie", "radioactivity")
            await open_notebook(a, node.url, "einstein", "collab.ipynb")
            await open_notebook(b, node.url, "marie", "Shared with me/collab.ipynb")

            await a.click(f"{VISIBLE} .jp-Cell >> nth=0 >> .cm-content")
            await a.keyboard.press("End")
            await a.keyboard.type(" # hello from einstein")
            await b.wait_for_function(
                "m => document.querySelector("
                "'.jp-NotebookPanel:not(.lm-mod-hidden) .jp-Cell .cm-content')"
                ".textContent.includes(m)",
                arg="# hello from einstein",
                timeout=30_000,
            )
            await b.wait_for_selector(".jp-remote-cursor", state="attached", timeout=30_000)

            await b.click(f"{VISIBLE} .jp-Cell >> nth=0 >> .cm-content")
            await b.keyboard.press("End")
            await b.keyboard.type(" # and marie")
            await a.wait_for_function(
                "m => document.querySelector("
                "'.jp-NotebookPanel:not(.lm-mod-hidden) .jp-Cell .cm-content')"
                ".textContent.includes(m)",
                arg="# and marie",
                timeout=30_000,
            )
            await a.wait_for_selector(".jp-remote-cursor", state="attached", timeout=30_000)
            await a.screenshot(path=str(ARTIFACTS / "coedit-einstein.png"))
            await b.screenshot(path=str(ARTIFACTS / "coedit-marie.png"))
        finally:
            await browser.close()
