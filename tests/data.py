"""The real notebooks and editing traces the tests use, shipped in ``tests/data/`` (copied
byte for byte from the sources their READMEs name, under the licenses there)."""

from pathlib import Path

DATA = Path(__file__).resolve().parent / "data"
NOTEBOOKS = DATA / "notebooks"
TRACES = DATA / "traces"
