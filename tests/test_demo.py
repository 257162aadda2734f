"""``mesh-collab demo``: the two-site demo, driven as a script would drive it.

It reads the JSON line the demo prints, reaches both sites' Jupyter APIs with the printed
tokens, and co-edits the shared notebook from a real Yjs peer at each site.
"""

from __future__ import annotations

import json
import re
import signal
import sys
from pathlib import Path
from urllib.parse import quote

import anyio
import httpx
import pytest

from tests.helpers import demo_sites
from tests.nodepeer import node_peer

pytestmark = pytest.mark.timeout(240)


async def test_demo_two_sites_co_edit(tmp_path: Path) -> None:
    args = [sys.executable, "-m", "mesh_collab", "--log-level", "WARNING", "demo",
            "--root", str(tmp_path / "demo")]
    log = (tmp_path / "demo.log").open("wb")
    async with await anyio.open_process(args, stderr=log) as process:
        try:
            site_a, site_b = await demo_sites(process)
            assert (site_a["site"], site_a["user"]) == ("site-a", "einstein")
            assert (site_b["site"], site_b["user"]) == ("site-b", "marie")
            rooms = []
            async with httpx.AsyncClient(timeout=60) as http:
                for site in (site_a, site_b):
                    auth = {"Authorization": f"token {site['token']}"}
                    me = (await http.get(f"{site['url']}api/me", headers=auth)).json()
                    assert me["identity"]["username"] == site["user"]
                    response = await http.put(
                        f"{site['url']}api/collaboration/session/{quote(site['notebook'])}",
                        json={"format": "json", "type": "notebook"}, headers=auth,
                    )
                    assert response.status_code == 201, response.text
                    rooms.append(response.json())
            assert rooms[0]["fileId"] == rooms[1]["fileId"]
            room = f"json:notebook:{rooms[0]['fileId']}"
            ws = {s["site"]: s["url"].replace("http://", "ws://") + "api/collaboration/room"
                  for s in (site_a, site_b)}
            async with node_peer(ws["site-a"], room, {"token": site_a["token"]}) as a, \
                    node_peer(ws["site-b"], room, {"token": site_b["token"]}) as b:
                await a.send(op="append", cell=2, text="einstein was here")
                await b.until(lambda d: d["cells"][2].endswith("einstein was here"))
                await b.send(op="append", cell=2, text=" and marie")
                await a.until(lambda d: d["cells"][2].endswith(" and marie"))
            # Site B reached site A's node through the one address the directory gives it:
            # a TLS port (wss), verified against the demo's CA. Each node's private key is
            # its own, readable by its owner only; the directory holds public keys only.
            root = tmp_path / "demo"
            directory = json.loads((root / "mesh.json").read_text())
            for entry in directory:
                for node in entry["nodes"]:
                    assert node["url"].startswith("https://127.0.0.1:"), node
                    assert node["key"].startswith("ed25519:") and "secret" not in node
            for name in ("site-a", "site-b"):
                assert (root / name / "node" / "node-key.pem").stat().st_mode & 0o077 == 0
            assert (root / "ca" / "ca.key").stat().st_mode & 0o077 == 0
            # marie logs in at site A through the form: the JupyterLab page she gets holds
            # no Jupyter token (it stands for the node's own user, einstein), and nothing
            # of hers is served to a request without her cookie.
            async with httpx.AsyncClient(timeout=60) as marie:
                form = await marie.get(f"{site_a['url']}login")
                xsrf = re.search(r'name="_xsrf" value="([^"]+)"', form.text)
                assert xsrf, form.text
                logged_in = await marie.post(
                    f"{site_a['url']}login", follow_redirects=False,
                    data={"username": "marie", "password": "radioactivity", "_xsrf": xsrf[1]})
                assert logged_in.status_code == 302
                lab = await marie.get(f"{site_a['url']}lab")
                assert lab.status_code == 200
                config = json.loads(re.search(
                    r'<script id="jupyter-config-data" type="application/json">(.*?)</script>',
                    lab.text, re.S)[1])
                assert config["token"] == ""
                assert site_a["token"] not in lab.text
                me = (await marie.get(f"{site_a['url']}api/me")).json()["identity"]
                assert me["username"] == "marie"
        finally:
            process.send_signal(signal.SIGINT)
            with anyio.fail_after(60):
                code = await process.wait()
            log.close()
    assert code == 0, (tmp_path / "demo.log").read_text()[-3000:]
