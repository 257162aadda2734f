"""The ``jupyter_server_ydoc`` extension API that other server extensions call, on our rooms.

mesh_collab disables ``jupyter_server_ydoc`` and serves ``/api/collaboration`` itself, but
server extensions find the live documents through that extension's
``get_document(room_id=..., copy=False)``: jupyter-server-nbmodel (server-side execution)
looks it up as ``serverapp.extension_manager.extension_apps["jupyter_server_ydoc"]`` when it
loads, and writes a kernel's outputs into the ``YNotebook`` it returns, in plain pycrdt
transactions, from its own task. :class:`YDocCompat` is published there (and in
``settings["jupyter_server_ydoc"]``, where other extensions look) and answers with the live
notebook of a mesh_collab room:

* **Edits through it are ordinary updates.** The room's loop is woken by any transaction it
  did not make itself (``Room._on_transaction``): the update is appended to the node's log,
  then relayed to clients and linked nodes, and checkpointed, as a client's would be.
* **The room stays open while a kernel runs a cell of it.** nbmodel never says when it is
  done with a document; it marks the running cell instead (``metadata.jupyter_server_nbmodel
  = {"kernelId": ...}``, removed when the run ends). Every ``copy=False`` hand-out holds
  the room (:meth:`CollabServer.open_direct`, as a connected client would) for as long as a
  cell carries that mark naming a kernel of this server that is busy, checked every
  ``poll_interval`` seconds, and at least ``grace`` seconds after the last hand-out (a run
  starting: its kernel may not report busy yet). A mark left behind by a run that failed
  half-way holds nothing once its kernel is idle or gone. Then the room closes
  ``cleanup_delay`` after its last client left, as usual.

Rooms are opened with the node's own CS3 session (the single-user login, or the default user
of a multi-user node): nbmodel calls without a user. A node without one serves only rooms
that are already open.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import anyio
from jupyter_server.extension.manager import ExtensionPackage, ExtensionPoint
from jupyter_ydoc import YNotebook
from pycrdt import Array, Doc, Map
from tornado import web

from mesh_collab import errors
from mesh_collab.jupyter.fileids import resource_id_for
from mesh_collab.kinds import NOTEBOOK
from mesh_collab.resources import ResourceId

if TYPE_CHECKING:
    from jupyter_server.extension.manager import ExtensionManager

    from mesh_collab.cs3.client import Session
    from mesh_collab.documents import DocumentRoom
    from mesh_collab.federation.directory import Site
    from mesh_collab.jupyter.app import MeshCollabApp

#: The extension name other extensions look the collaboration API up by.
NAME = "jupyter_server_ydoc"
NOTEBOOK_PREFIX = NOTEBOOK.room_prefix
#: The metadata key jupyter-server-nbmodel sets on a cell while a kernel runs it.
RUN_MARK = "jupyter_server_nbmodel"
#: Why a room cannot be opened: not a notebook, storage, the server stopping, and the
#: owner's site of an OCM share missing from the mesh directory (``handlers.home_of``).
_OPEN_ERRORS = (ValueError, errors.MeshCollabError, web.HTTPError)


@dataclass(eq=False)
class _Hold:
    """A room held open for the kernels writing into it (see the module docstring)."""

    handed_out: float = field(default_factory=time.monotonic)
    ready: anyio.Event = field(default_factory=anyio.Event)
    #: The held room; None until held, and again once released or failed to open.
    notebook: DocumentRoom | None = None


class YDocCompat:
    """What ``jupyter_server_ydoc``'s ``YDocExtension`` offers other extensions, served by
    mesh_collab's rooms (see the module docstring).

    Args:
        app: the mesh_collab extension (its state, kernel manager and configuration are read
            at each call: they do not exist yet when this object is published).
        grace: seconds a room stays held after a hand-out, busy kernel or not.
        poll_interval: seconds between two checks of whether a held room's kernel still runs.
    """

    name = NAME

    def __init__(
        self,
        app: MeshCollabApp,
        *,
        grace: float = 10.0,
        poll_interval: float = 1.0,
        log: logging.Logger | None = None,
    ) -> None:
        self.app = app
        self.grace = grace
        self.poll_interval = poll_interval
        self.log = log or logging.getLogger(__name__)
        self._holds: dict[ResourceId, _Hold] = {}

    # --- publication ---------------------------------------------------------------------

    def publish(self, manager: ExtensionManager) -> None:
        """Be ``extension_apps["jupyter_server_ydoc"]`` of ``manager``.

        Called when mesh_collab links, before any extension loads (nbmodel looks the API up
        while loading). The package stays disabled: jupyter_server never links, loads or
        starts it; it calls :meth:`stop_extension` and :meth:`current_activity` of every
        extension app.
        """
        package = manager.extensions.get(NAME)
        if package is not None and package.enabled:
            self.log.warning(
                "mesh_collab: %s is enabled: other extensions will find its documents, "
                "not mesh_collab's rooms", NAME,
            )
            return
        if package is None:
            package = manager.extensions[NAME] = ExtensionPackage(name=NAME, enabled=False)
        point = ExtensionPoint()
        point._app = self
        package.extension_points = {NAME: point}

    async def stop_extension(self) -> None:
        """Nothing to stop: the holds end with the room server."""

    def current_activity(self) -> bool:
        """Whether a kernel is writing into a room (the server's idle culler asks)."""
        return bool(self._holds)

    # --- the API -------------------------------------------------------------------------

    async def get_document(
        self,
        *,
        path: str | None = None,
        content_type: str | None = None,
        file_format: str | None = None,
        room_id: str | None = None,
        copy: bool = True,
        create: bool = True,
    ) -> YNotebook | None:
        """The notebook of a room, by ``room_id`` (``"json:notebook:<resource id>"``) or by
        ``path``, ``content_type`` and ``file_format``.

        ``copy=False`` gives the live notebook: edits to it reach everybody, and the room is
        held open while a kernel runs one of its cells. ``copy=True`` gives a fork that
        changes nothing. A room that is not open is opened, unless ``create=False``
        (jupyter_server_ydoc's default; nbmodel does not pass it, and its outputs must land
        even after the last browser closed). None when there is no such notebook, it is
        not a notebook, or it cannot be opened (the reason is logged).

        Raises:
            ValueError: neither ``room_id`` nor the three others, or both.
        """
        by_path = (path, content_type, file_format)
        both = room_id is not None and by_path != (None, None, None)
        if both or (room_id is None and None in by_path):
            raise ValueError("give either room_id, or path, content_type and file_format")
        state = self.app.state
        server = state.server if state is not None else None
        if server is None:
            self.log.warning("get_document: the room server is not running")
            return None
        session = state.sessions.default
        rid = await self._resource_id(session, room_id, path, content_type, file_format)
        if rid is None:
            return None
        nb = server.rooms.get(rid)
        if copy and nb is not None:
            return _fork(nb)
        if session is None:
            self.log.warning("get_document: no node session to hold room=%s", rid)
            return None
        if nb is None and not create:
            return None
        if copy:
            try:
                return _fork(await server.open(rid, session, home=await self._home(session, rid)))
            except _OPEN_ERRORS as exc:
                self.log.warning("get_document: cannot open room=%s error=%s", rid, exc)
                return None
        held = await self._hold(rid, session)
        return YNotebook(ydoc=held.room.doc) if held is not None else None

    def executing(self, resource_id: ResourceId) -> bool:
        """Whether the held room of ``resource_id`` must stay open: handed out less than
        ``grace`` seconds ago, or a busy kernel of this server runs one of its cells."""
        hold = self._holds.get(resource_id)
        if hold is None or hold.notebook is None:
            return False
        if time.monotonic() - hold.handed_out < self.grace:
            return True
        kernels = self.app.serverapp.kernel_manager
        for kernel_id in _running_kernels(hold.notebook.room.doc):
            if kernel_id in kernels and kernels.get_kernel(kernel_id).execution_state == "busy":
                return True
        return False

    # --- internals -----------------------------------------------------------------------

    async def _resource_id(
        self,
        session: Session | None,
        room_id: str | None,
        path: str | None,
        content_type: str | None,
        file_format: str | None,
    ) -> ResourceId | None:
        if room_id is not None:
            if not room_id.startswith(NOTEBOOK_PREFIX):
                return None  # mesh_collab collaborates on notebooks only
            try:
                return ResourceId.parse(room_id[len(NOTEBOOK_PREFIX):])
            except ValueError:
                self.log.warning("get_document: not a room id: %r", room_id[:200])
                return None
        if (file_format, content_type) != ("json", "notebook") or session is None:
            return None
        try:
            return await resource_id_for(
                session, str(path), home_template=self.app.home_template
            )
        except (ValueError, errors.MeshCollabError) as exc:
            self.log.info("get_document: no notebook at path=%r error=%s", path, exc)
            return None

    async def _home(self, session: Session, rid: ResourceId) -> Site | None:
        """The site owning ``rid`` when it reached us over OCM (see handlers.home_of)."""
        from mesh_collab.jupyter.handlers import home_of  # handlers imports this module

        if rid in self.app.state.server.rooms:
            return None
        return await home_of(self.app.state, session, rid)

    async def _hold(self, rid: ResourceId, session: Session) -> DocumentRoom | None:
        """Hold the room of ``rid`` (or extend its hold) and return it once held."""
        hold = self._holds.get(rid)
        if hold is None:
            hold = self._holds[rid] = _Hold()
            try:
                self.app.state.server.start_soon(self._run_hold, rid, session, hold)
            except errors.RoomClosed:
                del self._holds[rid]
                return None
        hold.handed_out = time.monotonic()
        await hold.ready.wait()
        return hold.notebook

    async def _run_hold(self, rid: ResourceId, session: Session, hold: _Hold) -> None:
        server = self.app.state.server
        try:
            async with server.open_direct(rid, session, home=await self._home(session, rid)) as nb:
                hold.notebook = nb
                hold.ready.set()
                self.log.info("room held for a kernel room=%s", rid)
                # A kernel's busy state changes with no event to wait on: check it.
                while self.executing(rid):  # noqa: ASYNC110
                    await anyio.sleep(self.poll_interval)
                self.log.info("room released by the kernels room=%s", rid)
        except _OPEN_ERRORS as exc:
            self.log.warning("get_document: cannot open room=%s error=%s", rid, exc)
        finally:
            # No await between the last check and here: a hand-out either extended this
            # hold in time, or finds it gone and starts a new one.
            hold.notebook = None
            hold.ready.set()
            if self._holds.get(rid) is hold:
                del self._holds[rid]


def _fork(nb: DocumentRoom) -> YNotebook:
    """A copy of a room's notebook that changes nothing when edited."""
    fork = Doc()
    fork.apply_update(nb.room.doc.get_update())
    return YNotebook(ydoc=fork)


def _running_kernels(doc: Doc) -> set[str]:
    """The kernels jupyter-server-nbmodel marks as running a cell of the notebook ``doc``."""
    kernels = set()
    for cell in doc.get("cells", type=Array):
        metadata = cell.get("metadata") if isinstance(cell, Map) else None
        mark = metadata.get(RUN_MARK) if isinstance(metadata, Map) else None
        if isinstance(mark, Map):
            mark = mark.to_py()
        if isinstance(mark, dict) and isinstance(mark.get("kernelId"), str):
            kernels.add(mark["kernelId"])
    return kernels
