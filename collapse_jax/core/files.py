"""Files a killed run never leaves half written: each is written whole beside its place, then
renamed into it, from the primary process only (one file per multi-host run)."""

import os

from collapse_jax.core import placement


def write_file(path: str, write, binary: bool = False) -> None:
  """Writes a file through write(f) into a temporary one, then renames it, so a killed run
  never leaves half a file; from the primary process only (one file per multi-host run)."""
  if not placement.is_primary():
    return
  with open(path + '.tmp', 'wb' if binary else 'w', **({} if binary else {'newline': ''})) as f:
    write(f)
  os.replace(path + '.tmp', path)


def write_text(path: str, text: str) -> None:
  write_file(path, lambda f: f.write(text))
