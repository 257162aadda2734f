"""Coverage-guided fuzzer (atheris / libFuzzer) of the y-websocket decoders.

Every input is one client frame; decoding it as the room does (frame, then awareness list,
state vector or update block count) may raise only ``ProtocolError``. Anything else is a
crash, which libFuzzer reports with the input that caused it.

    .venv/bin/python -m tests.reliability.fuzz_protocol -runs=1000000 -max_len=4096

(CI runs 20,000 inputs through ``test_hostile_input.py::test_atheris_fuzzer_finds_no_crash``.)

Known findings are skipped here until fixed, so that the fuzzer looks for new ones: set
``MESH_COLLAB_FUZZ_KNOWN=0`` to see them (bug B5 of docs/reliability.md).
"""

from __future__ import annotations

import os
import sys

import atheris

with atheris.instrument_imports():
    from mesh_collab import protocol
    from mesh_collab.errors import ProtocolError

SKIP_KNOWN = os.environ.get("MESH_COLLAB_FUZZ_KNOWN", "1") == "1"


def one_input(data: bytes) -> None:
    try:
        frame = protocol.parse(data)
        if frame.kind is protocol.Kind.AWARENESS:
            protocol.decode_awareness(frame.payload)
        elif frame.kind is protocol.Kind.SYNC_STEP1:
            protocol.decode_state_vector(frame.payload)
        elif frame.kind in (protocol.Kind.SYNC_STEP2, protocol.Kind.UPDATE):
            protocol.update_struct_count(frame.payload)
    except ProtocolError:
        pass
    except (ValueError, RecursionError):
        # B5: json.loads' digit limit and recursion limit escape decode_awareness.
        if not SKIP_KNOWN:
            raise


def main() -> None:
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
