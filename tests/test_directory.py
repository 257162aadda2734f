"""The mesh directory (public keys and addresses from configuration) and the node keys."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from mesh_collab.federation import keys
from mesh_collab.federation.directory import MeshDirectory


def public(tmp_path: Path, name: str) -> str:
    return keys.public_text(keys.load_or_create(tmp_path / f"{name}.pem"))


def test_sites_nodes_and_the_one_node_shorthand(tmp_path: Path) -> None:
    directory = MeshDirectory.from_config([
        {"site": "cern", "domain": "cernbox.example", "nodes": [
            {"id": "c1", "url": "https://c1.example/", "key": public(tmp_path, "c1")},
            {"id": "c2", "url": "https://c2.example", "keys": [public(tmp_path, "c2"),
                                                           public(tmp_path, "c2b")]},
        ]},
        {"site": "jrc", "domain": "jrc.example", "node": "j1", "url": "https://j1.example/",
         "key": public(tmp_path, "j1")},
    ])
    cern = directory.site("cern")
    assert cern is not None and cern.url == "https://c1.example/"
    assert directory.node("cern", "c2") is not None
    assert len(directory.node("cern", "c2").keys) == 2  # type: ignore[union-attr]
    assert directory.node("jrc", "c1") is None  # a node of another site is not jrc's
    assert directory.by_domain("jrc.example").entry.id == "j1"  # type: ignore[union-attr]


@pytest.mark.parametrize(("entry", "says"), [
    ({"site": "a", "url": "http://127.0.0.1:1/", "secret": "s" * 32}, "secrets are gone"),
    ({"site": "a", "url": "http://127.0.0.1:1/"}, "needs a public key"),
    ({"site": "a", "url": "http://127.0.0.1:1/", "key": "ed25519:AAAA"}, "32 bytes"),
    ({"site": "a", "url": "http://127.0.0.1:1/", "key": "rsa:xyz"}, "ed25519:"),
    ({"site": "a", "url": "http://node.example.org/", "key": "K"}, "loopback only"),
    ({"site": "a", "url": "ftp://127.0.0.1/", "key": "K"}, "https://"),
    ({"site": "a", "node": "x:y", "url": "http://127.0.0.1:1/", "key": "K"}, "without ':'"),
    ({"site": "a", "nodes": []}, "non-empty list"),
])
def test_a_bad_entry_is_refused_with_the_reason(tmp_path: Path, entry: dict[str, object],
                                                says: str) -> None:
    entry = {k: (public(tmp_path, "k") if v == "K" else v) for k, v in entry.items()}
    with pytest.raises(ValueError, match=says):
        MeshDirectory.from_config([entry])


def test_the_node_key_file_is_private_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "node" / "node-key.pem"
    first = keys.load_or_create(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert keys.public_text(keys.load_or_create(path)) == keys.public_text(first)
    signature = keys.sign(first, ["a", "b"])
    public_key = keys.parse_public(keys.public_text(first))
    assert keys.verify([public_key], ["a", "b"], signature)
    assert not keys.verify([public_key], ["a", "c"], signature)
    assert not keys.verify([public_key], ["a", "b"], "not base64!")


def test_a_nonce_is_accepted_once_and_only_near_now() -> None:
    nonces = keys.Nonces(window=120)
    assert nonces.fresh("n1", 1000.0, now=1000.0)
    assert not nonces.fresh("n1", 1000.0, now=1001.0)  # replayed
    assert not nonces.fresh("n2", 900.0, now=1000.0)  # too old
    assert not nonces.fresh("n3", 1100.0, now=1000.0)  # from the future
    assert nonces.fresh("n1", 1500.0, now=1500.0)  # forgotten once its time is out


def test_other_sites_link_to_the_server_of_a_documents_owner(tmp_path: Path) -> None:
    # A hub site: one server per user, each naming the CS3 user it acts for.
    directory = MeshDirectory.from_config([
        {"site": "a", "domain": "a.example", "nodes": [
            {"id": "marie", "url": "https://hub.a.example/user/marie/",
             "key": public(tmp_path, "m"), "user": "opaque-marie"},
            {"id": "einstein", "url": "https://hub.a.example/user/einstein/",
             "key": public(tmp_path, "e"), "user": "opaque-einstein"},
        ]},
    ])
    site = directory.site("a")
    assert site is not None and site.entry is not None and site.entry.id == "marie"
    owners = site.for_owner("opaque-einstein")
    assert owners.entry is not None and owners.entry.id == "einstein"
    assert owners.url == "https://hub.a.example/user/einstein/"
    assert [n.id for n in owners.nodes] == ["einstein", "marie"]  # every node still known
    assert site.for_owner("opaque-nobody") is site  # no server of theirs: the first node
