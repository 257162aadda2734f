from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

from mesh_collab import errors
from mesh_collab.cs3.client import Session
from mesh_collab.pytest_plugin import Site


@pytest.fixture
async def workdir(site: Site, einstein: Session) -> AsyncIterator[str]:
    """A fresh folder in einstein's home, removed afterwards (tests may share a real Reva)."""
    path = f"{site.home('einstein')}/mc-test-{uuid.uuid4().hex[:12]}"
    await einstein.files.mkdir(path)
    yield path
    try:
        await einstein.files.delete(path)
    except errors.StorageError:
        pass  # a test may have deleted or locked it on purpose: the folder is disposable
