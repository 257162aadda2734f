"""Resource ids: the key of every document in mesh_collab.

A CS3 ``ResourceId`` is written ``storage_id$space_id!opaque_id`` (``storage_id!opaque_id``
when the space is empty), the form both Reva lineages use (edge
``pkg/storagespace/storagespace.go: FormatResourceID``, master
``pkg/spaces/utils.go: EncodeToStringifiedResourceID``). It is stable across rename and
overwrite, so it names a room for as long as the file lives.

This module is pure Python: the core uses it without importing grpc or protobuf.
"""

from __future__ import annotations

from dataclasses import dataclass

_FORBIDDEN = frozenset("$!/\\")


@dataclass(frozen=True, slots=True)
class ResourceId:
    """A CS3 resource id.

    Usage::

        rid = ResourceId.parse("site-a$3f1c...!9a7e...")
        str(rid)  # back to the same string
    """

    storage_id: str
    opaque_id: str
    space_id: str = ""

    def __post_init__(self) -> None:
        for name in ("storage_id", "opaque_id", "space_id"):
            value = getattr(self, name)
            if not isinstance(value, str):
                raise TypeError(f"ResourceId.{name} must be a str, not {type(value).__name__}")
            if any(ch in _FORBIDDEN or ord(ch) < 0x20 for ch in value):
                raise ValueError(f"ResourceId.{name} has a forbidden character: {value!r}")
        if not self.storage_id or not self.opaque_id:
            raise ValueError("ResourceId needs a storage_id and an opaque_id")

    def __str__(self) -> str:
        if self.space_id:
            return f"{self.storage_id}${self.space_id}!{self.opaque_id}"
        return f"{self.storage_id}!{self.opaque_id}"

    @classmethod
    def parse(cls, text: str) -> ResourceId:
        """Parse ``storage_id$space_id!opaque_id`` or ``storage_id!opaque_id``.

        Raises:
            ValueError: if ``text`` is not a resource id.
        """
        if not isinstance(text, str) or "!" not in text:
            raise ValueError(f"not a resource id: {text!r}")
        head, _, opaque_id = text.rpartition("!")
        storage_id, _, space_id = head.partition("$")
        return cls(storage_id=storage_id, opaque_id=opaque_id, space_id=space_id)
