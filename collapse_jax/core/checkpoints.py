"""Checkpoints that cannot lie: a sha256 digest sealed beside everything a run saves.

A saved directory (an Orbax step, a model) gets MANIFEST.sha256 inside it, listing
every file in `sha256sum`'s format (check one by hand with `sha256sum -c` there); a
saved file gets `<file>.sha256` beside it. Both are written after the save commits,
atomically, and read back before the saved thing is: a file truncated, overwritten
or lost since is named, and the run either goes back to an earlier step or computes
the thing again (runs are deterministic from their keys), saying so on stderr.
Orbax ignores the manifest: it reads only the items it is asked for.
"""

import hashlib
import os
import shutil
import sys

import orbax.checkpoint as ocp
import tqdm

from collapse_jax.core import files, placement

MANIFEST = 'MANIFEST.sha256'  # inside a sealed directory
SUFFIX = '.sha256'  # beside a sealed file


class Damaged(RuntimeError):
  """A saved file or directory that fails its digest, reported as one line naming it."""


def _sha256(path: str) -> str:
  h = hashlib.sha256()
  with open(path, 'rb') as f:
    while chunk := f.read(1 << 20):
      h.update(chunk)
  return h.hexdigest()


def _files(directory: str) -> list[str]:
  """Every file under directory but its manifest, as sorted relative paths."""
  out = []
  for root, _, names in os.walk(directory):
    out += [os.path.relpath(os.path.join(root, n), directory) for n in names]
  return sorted(f for f in out if f != MANIFEST)


def _digests(path: str) -> dict[str, str]:
  """{relative path: sha256} of a directory's files, or {name: sha256} of one file."""
  if os.path.isdir(path):
    return {f: _sha256(os.path.join(path, f)) for f in _files(path)}
  return {os.path.basename(path): _sha256(path)}


def _digest_path(path: str) -> str:
  return os.path.join(path, MANIFEST) if os.path.isdir(path) else path + SUFFIX


def _read_digests(path: str) -> dict[str, str]:
  """{name: sha256} from a digest file in sha256sum's format."""
  out = {}
  with open(path) as f:
    for line in f:
      digest, name = line.rstrip('\n').split('  ', 1)
      out[name] = digest
  return out


def seal(path: str) -> None:
  """Writes the digest of a saved directory or file, atomically; from the primary process only."""
  if placement.is_primary():
    text = ''.join(f'{h}  {f}\n' for f, h in _digests(path).items())
    files.write_text(_digest_path(path), text)


def damage(path: str) -> str | None:
  """What is wrong with a saved directory or file (None: it matches its digest)."""
  if not os.path.exists(path):
    return 'missing'
  try:
    sealed = _read_digests(_digest_path(path))
  except FileNotFoundError:
    return 'no digest: saved by an older version, or stopped before its digest was written'
  except (OSError, ValueError) as e:
    return f'unreadable digest ({e})'
  try:
    found = _digests(path)
  except OSError as e:
    return f'unreadable ({e})'
  for name in sorted(set(sealed) | set(found)):
    if name not in found:
      return f'{name} is missing'
    if name not in sealed:
      return f'{name} was not there when it was saved'
    if found[name] != sealed[name]:
      return f'{name} has changed since it was saved'
  return None


def warn(message: str) -> None:
  """One line on stderr, from the primary process, without breaking a progress bar."""
  if placement.is_primary():
    tqdm.tqdm.write(message, file=sys.stderr)


def intact(path: str, otherwise: str) -> bool:
  """Whether path exists and matches its digest; says so when it exists and does not,
  followed by `otherwise`, what the run does instead."""
  if not os.path.exists(path):
    return False
  why = damage(path)
  if why:
    warn(f'{path} is damaged ({why}); {otherwise}')
  return why is None


def checked(path: str) -> str:
  """path, after checking it against its digest; raises Damaged naming it."""
  why = damage(path)
  if why:
    raise Damaged(f'{path} is damaged ({why}); delete it, and the run that wrote it '
                  'will write it again')
  return path


def recover(directory: str) -> None:
  """Moves aside (to <step>.damaged) the latest steps of an Orbax checkpoint directory
  that fail their digests, each with a message, so the latest step left is intact; from
  the primary process only, before a CheckpointManager opens the directory."""
  if not placement.is_primary() or not os.path.isdir(directory):
    return
  steps = sorted((int(n) for n in os.listdir(directory)
                  if n.isdigit() and os.path.isdir(os.path.join(directory, n))), reverse=True)
  damaged = []
  for step in steps:
    why = damage(os.path.join(directory, str(step)))
    if why is None:
      break
    damaged.append((step, why))
  good = steps[len(damaged)] if len(damaged) < len(steps) else None
  then = (f'resuming from step {good}' if good is not None
          else 'no intact step is left: starting from the beginning')
  for step, why in damaged:
    path = os.path.join(directory, str(step))
    shutil.rmtree(path + '.damaged', ignore_errors=True)
    os.rename(path, path + '.damaged')
    warn(f'checkpoint step {step} at {path} is damaged ({why}); moved to {path}.damaged, {then}')


def manager(directory: str, keep: int = 2) -> ocp.CheckpointManager:
  """The checkpoints of `directory`, once its latest steps that fail their digests are moved
  aside (every process waits for that); `keep` steps are kept."""
  directory = os.path.abspath(directory)
  recover(directory)
  placement.barrier(f'{directory} recovered')
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=False)
  return ocp.CheckpointManager(directory, options=options)


def save(manager: ocp.CheckpointManager, step: int, args) -> None:
  """Saves `step` and seals it once committed: a step without its digest is not trusted."""
  manager.save(step, args=args)
  seal(os.path.join(str(manager.directory), str(step)))
