"""Two users co-edit a notebook in JupyterLab served by mesh_collab, in headless Chromium.

einstein and marie log in to one multi-user node (CS3 logins against the embedded gateway);
marie opens einstein's notebook through her "Shared with me" folder. Text typed by one appears
at the other, with the remote cursor (``.jp-remote-cursor``). Screenshots are saved under
``test-artifacts/``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import async_playwright

from mesh_collab.cs3.client import Session
from mesh_collab.cs3.models import Role, UserId
from tests.browser import ARGS, ARTIFACTS, CHROMIUM, login, open_notebook, type_and_see
from tests.helpers import mesh_node, mesh_site, write_mesh
from tests.jupyter.conftest import TOKEN, jupyter_process

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

pytestmark = [pytest.mark.timeout(240), pytest.mark.browser]


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

            await type_and_see(a, b, " # hello from einstein")
            await b.wait_for_selector(".jp-remote-cursor", state="attached", timeout=30_000)
            await type_and_see(b, a, " # and marie")
            await a.wait_for_selector(".jp-remote-cursor", state="attached", timeout=30_000)
            await a.screenshot(path=str(ARTIFACTS / "coedit-einstein.png"))
            await b.screenshot(path=str(ARTIFACTS / "coedit-marie.png"))
        finally:
            await browser.close()


async def test_a_user_at_site_a_and_one_at_site_b_co_edit(
    gateway_factory, cs3_client_factory, tmp_path: Path, jupyter_env: Path
) -> None:
    """einstein at site A and marie at site B, each in their own site's JupyterLab, see each
    other's edits and cursors, labelled with their site."""
    gw_a = await gateway_factory(site="site-a")
    gw_b = await gateway_factory(site="site-b")
    gw_a.trusted_providers, gw_b.trusted_providers = [gw_b.domain], [gw_a.domain]
    einstein = await (await cs3_client_factory(gw_a.grpc_address)).login("einstein", "relativity")
    marie = await (await cs3_client_factory(gw_b.grpc_address)).login("marie", "radioactivity")
    info = await einstein.files.write("/home/einstein/collab.ipynb", json.dumps(NOTEBOOK).encode())
    await einstein.ocm.create(info.id, UserId(idp=gw_b.domain, opaque_id="marie"), Role.EDITOR)
    (received,) = await marie.ocm.received()
    await marie.ocm.accept(received.id)
    peers = tmp_path / "mesh.json"
    ids = {site: mesh_node(tmp_path, site) for site in ("site-a", "site-b")}
    for identity in ids.values():
        identity.key  # noqa: B018 - made here, before the node reads it

    def lab(gw: Any, site: str, user: str, password: str) -> Any:
        return jupyter_process(
            tmp_path, jupyter_env, app="lab", name=site,
            env={"MESH_COLLAB_CS3_PASSWORD": password},
            args=(f"--MeshCollabApp.gateway={gw.grpc_address}", f"--MeshCollabApp.site={site}",
                  f"--MeshCollabApp.cs3_username={user}", f"--MeshCollabApp.peers=@{peers}",
                  *ids[site].args),
        )

    ARTIFACTS.mkdir(exist_ok=True)
    async with lab(gw_a, "site-a", "einstein", "relativity") as node_a, \
            lab(gw_b, "site-b", "marie", "radioactivity") as node_b:
        write_mesh(peers, mesh_site("site-a", gw_a.domain, (ids["site-a"], node_a.url)),
                   mesh_site("site-b", gw_b.domain, (ids["site-b"], node_b.url)))
        async with async_playwright() as p:
            browser = await p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
            try:
                size = {"width": 1280, "height": 800}
                a = await (await browser.new_context(viewport=size)).new_page()
                b = await (await browser.new_context(viewport=size)).new_page()
                await a.goto(f"{node_a.url}lab?token={TOKEN}")
                await b.goto(f"{node_b.url}lab?token={TOKEN}")
                await open_notebook(a, node_a.url, "einstein", "collab.ipynb")
                await open_notebook(b, node_b.url, "marie", "Shared with me/collab.ipynb")
                await type_and_see(a, b, " # from site A")
                await type_and_see(b, a, " # from site B")
                for page, other_site in ((a, "site-b"), (b, "site-a")):
                    cursor = page.locator(".jp-remote-cursor").first
                    await cursor.wait_for(state="attached", timeout=30_000)
                    box = await cursor.bounding_box()
                    assert box is not None
                    await page.mouse.move(box["x"] + 1, box["y"] + box["height"] / 2)
                    flag = page.locator(".jp-remote-userFlag-name").first
                    await flag.wait_for(timeout=30_000)
                    assert other_site in await flag.inner_text()
                await a.screenshot(path=str(ARTIFACTS / "sites-einstein-at-a.png"))
                await b.screenshot(path=str(ARTIFACTS / "sites-marie-at-b.png"))
            finally:
                await browser.close()


