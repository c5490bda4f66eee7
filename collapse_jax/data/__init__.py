"""The data directory: where MNIST, WikiText-2 and OPT's tokenizer are, what is there, and how
to fill it.

  python -m collapse_jax.data status                                     # what is where
  python -m collapse_jax.data download [mnist|wikitext|opt-tokenizer|all]  # where a network is

The directory is --data_dir if given, else $COLLAPSE_JAX_DATA, else a per-user cache
($XDG_CACHE_HOME/collapse_jax, or ~/.cache/collapse_jax). Each dataset has its folder there:
mnist/ (the four IDX files, gzip or not), wikitext-2-raw-v1/ (SPLIT-*.parquet with a text
column, as the Hugging Face hub serves them, or wiki.{train,valid,test}.raw) and opt-125m/
(vocab.json, merges.txt, config.json, special_tokens_map.json). A --data_dir that holds one
dataset's files itself is that dataset's folder.
"""

import dataclasses
import glob
import gzip
import hashlib
import json
import logging
import os
import shutil
import sys
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable

from absl import flags

from collapse_jax.core import validation
from collapse_jax.data import mnist, wikitext

ENV = 'COLLAPSE_JAX_DATA'


DATA_DIR_HELP = ('Where the datasets are (mnist/, wikitext-2-raw-v1/, opt-125m/), or one '
                 "dataset's own folder; empty: $COLLAPSE_JAX_DATA, else ~/.cache/collapse_jax. "
                 '`python -m collapse_jax.data status` says what is there, `python -m '
                 'collapse_jax.data download` fills it.')


def define_flag(fv: flags.FlagValues = flags.FLAGS) -> None:
  """--data_dir, for an experiment that reads data (on its flags `fv`)."""
  flags.DEFINE_string('data_dir', '', DATA_DIR_HELP, flag_values=fv)


def resolve(data_dir: str = '') -> tuple[str, str]:
  """(the data directory, what chose it): --data_dir, else $COLLAPSE_JAX_DATA, else the user's
  cache."""
  if data_dir:
    return os.path.abspath(os.path.expanduser(data_dir)), '--data_dir'
  if os.environ.get(ENV):
    return os.path.abspath(os.path.expanduser(os.environ[ENV])), f'${ENV}'
  cache = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
  return (os.path.join(os.path.abspath(cache), 'collapse_jax'),
          f'the user cache, as neither --data_dir nor ${ENV} is set')


def directory(data_dir: str = '') -> str:
  return resolve(data_dir)[0]


# ----------------------------------------------------------------------------- what a dataset is


class DownloadError(Exception):
  """A download that failed or did not verify, as one line."""


@dataclasses.dataclass(frozen=True)
class Dataset:
  """A dataset's folder in the data directory, its parts (each supplied by the files of the
  first of its glob patterns that matches), their known digests, and how to fetch them."""
  name: str  # as `download` names it
  title: str  # as messages name it
  folder: str
  parts: dict[str, tuple[str, ...]]
  digest: Callable[['Dataset', str, str], str]  # (self, folder, part) -> the sha256 below
  fetch: Callable[['Dataset', str, list[str]], None]  # (self, folder, parts) writes them there
  sha256: dict[str, str] = dataclasses.field(default_factory=dict)  # part -> known digest

  def files(self, folder: str, part: str) -> list[str]:
    for pattern in self.parts[part]:
      found = sorted(glob.glob(os.path.join(glob.escape(folder), pattern)))
      if found:
        return found
    return []

  def missing(self, folder: str, parts=None) -> list[str]:
    return [p for p in (parts or self.parts) if not self.files(folder, p)]

  def folder_in(self, data_dir: str = '') -> str:
    """Where the dataset is looked for: a --data_dir holding its files itself, or its folder
    in the data directory."""
    if data_dir and len(self.missing(data_dir)) < len(self.parts):
      return os.path.abspath(os.path.expanduser(data_dir))
    return os.path.join(directory(data_dir), self.folder)

  def expected(self, folder: str) -> dict[str, str]:
    """The digests to check: the folder's own SHA256SUMS (written beside files that have no
    published digest), else the known ones."""
    sums = os.path.join(folder, SUMS)
    if not os.path.isfile(sums):
      return self.sha256
    with open(sums) as f:
      return {name: digest for digest, name in (line.split() for line in f if line.strip())}

  def audit(self, folder: str) -> tuple[list[str], list[str]]:
    """(missing parts, damaged parts): those whose files are absent, and those that cannot be
    read or whose digest differs from the expected one."""
    missing, expected, damaged = self.missing(folder), self.expected(folder), []
    for part in self.parts:
      if part not in missing and part in expected:
        try:
          ok = self.digest(self, folder, part) == expected[part]
        except (OSError, EOFError, ValueError, zlib.error, validation.ConfigError):  # unreadable
          ok = False
        damaged += [] if ok else [part]
    return missing, damaged


SUMS = 'SHA256SUMS'


def content_sha256(path: str) -> str:
  """sha256 of a file's content: of a gzip file, of its uncompressed bytes."""
  with open(path, 'rb') as f:
    gzipped = f.read(2) == b'\x1f\x8b'
  h = hashlib.sha256()
  with (gzip.open if gzipped else open)(path, 'rb') as f:
    for chunk in iter(lambda: f.read(1 << 20), b''):
      h.update(chunk)
  return h.hexdigest()


def rows_sha256(rows) -> str:
  """sha256 of a list of text rows, however they are stored (Parquet or raw lines)."""
  return hashlib.sha256(json.dumps(list(rows), ensure_ascii=False).encode()).hexdigest()


def _file_digest(dataset: Dataset, folder: str, part: str) -> str:
  return content_sha256(dataset.files(folder, part)[0])


def _rows_digest(dataset: Dataset, folder: str, split: str) -> str:
  return rows_sha256(wikitext.read_split(split, folder))


# ----------------------------------------------------------------------------- fetching


def _why(e: BaseException) -> str:
  """The exception's type and first line, so a message stays one line."""
  lines = str(e).strip().splitlines()
  return f'{type(e).__name__}: {lines[0][:200]}' if lines else type(e).__name__


def _fetch(url: str, path: str) -> None:
  """Downloads url to path with a progress bar; DownloadError if it cannot."""
  from tqdm.auto import tqdm  # noqa: PLC0415
  try:
    with urllib.request.urlopen(url, timeout=60) as response, open(path, 'wb') as f:
      total = int(response.headers.get('Content-Length') or 0) or None
      with tqdm(total=total, unit='B', unit_scale=True, desc=os.path.basename(path),
                leave=False) as bar:
        for chunk in iter(lambda: response.read(1 << 16), b''):
          f.write(chunk)
          bar.update(len(chunk))
  except OSError as e:  # URLError, timeouts and HTTP errors are OSErrors
    if os.path.exists(path):
      os.remove(path)
    raise DownloadError(f'cannot download {url} ({_why(e)})') from None


def _hub_fetch(repo: str, filename: str, path: str) -> None:
  """Copies a file of a Hugging Face hub repository to path, through huggingface_hub's cache."""
  try:
    from huggingface_hub import constants, hf_hub_download  # noqa: PLC0415 (optional)
  except ImportError:
    raise DownloadError('huggingface_hub is not installed (pip install huggingface_hub)') from None
  _reachable(constants.ENDPOINT)  # else its retries take half a minute
  logging.getLogger('huggingface_hub').setLevel(logging.ERROR)  # a retry is not news
  try:
    shutil.copyfile(hf_hub_download(repo, filename), path)
  except Exception as e:  # noqa: BLE001 (offline, no such file, refused: one line either way)
    raise DownloadError(f'cannot download {filename} of {repo} from the hub ({_why(e)})') from None


def _reachable(url: str) -> None:
  """DownloadError unless the server at url answers (whatever it answers)."""
  try:
    urllib.request.urlopen(urllib.request.Request(url, method='HEAD'), timeout=30).close()
  except urllib.error.HTTPError:
    pass  # it answered
  except OSError as e:
    raise DownloadError(f'cannot reach {url} ({_why(e)})') from None


def _place(part_path: str, path: str, expected: str | None) -> None:
  """Moves a fetched file into place if its content's digest is the expected one; else
  removes it."""
  if expected is not None:
    try:
      got = content_sha256(part_path)
    except (OSError, EOFError, zlib.error) as e:  # not gzip, truncated
      got = f'unreadable ({_why(e)})'
    if got != expected:
      os.remove(part_path)
      raise DownloadError(f'{os.path.basename(path)} failed its checksum: sha256 {got}, '
                          f'expected {expected}')
  os.replace(part_path, path)


MNIST_MIRRORS = ('https://ossci-datasets.s3.amazonaws.com/mnist/',
                 'https://storage.googleapis.com/cvdf-datasets/mnist/')


def _fetch_mnist(dataset: Dataset, folder: str, parts: list[str]) -> None:
  """The gzip IDX files from the first public mirror that serves them, checked against the
  published sha256 of their content; tensorflow-datasets if no mirror answers."""
  for part in parts:
    path = os.path.join(folder, part + '.gz')
    failures = []
    for mirror in MNIST_MIRRORS:
      try:
        _fetch(mirror + part + '.gz', path + '.part')
        _place(path + '.part', path, dataset.sha256.get(part))
        break
      except DownloadError as e:
        failures.append(str(e))
    else:
      _mnist_from_tfds(folder, '; '.join(failures))
      return


def _mnist_from_tfds(folder: str, failures: str) -> None:
  """Every MNIST file written from tensorflow-datasets, uncompressed, with a SHA256SUMS of its
  own: tensorflow-datasets keeps the images in its own order, so the published checksums (of
  the original order) do not apply."""
  try:
    import tensorflow_datasets as tfds  # noqa: PLC0415 (optional)
  except ImportError:
    raise DownloadError(f'{failures}; tensorflow-datasets, the other way, is not '
                        'installed') from None
  written = {}
  try:
    for split, prefix in (('train', 'train'), ('test', 't10k')):
      arrays = tfds.as_numpy(tfds.load('mnist', split=split, batch_size=-1))
      for name, array in ((f'{prefix}-images-idx3-ubyte', arrays['image'].reshape(-1, 28, 28)),
                          (f'{prefix}-labels-idx1-ubyte', arrays['label'])):
        path = os.path.join(folder, name)
        mnist.write_idx(path, array.astype('uint8'))
        written[name] = content_sha256(path)
  except Exception as e:  # noqa: BLE001 (offline, no such dataset: one line either way)
    raise DownloadError(f'{failures}; tensorflow-datasets failed too ({_why(e)})') from None
  with open(os.path.join(folder, SUMS), 'w') as f:
    f.writelines(f'{digest}  {name}\n' for name, digest in written.items())
  print('note: MNIST written from tensorflow-datasets, in its order, with its own SHA256SUMS',
        file=sys.stderr)


def _fetch_opt_tokenizer(dataset: Dataset, folder: str, parts: list[str]) -> None:
  """OPT-125m's tokenizer files (and config) from the hub, checked against known digests."""
  for part in parts:
    path = os.path.join(folder, part)
    _hub_fetch('facebook/opt-125m', part, path + '.part')
    _place(path + '.part', path, dataset.sha256.get(part))


def _load_wikitext(splits) -> dict[str, list[str]]:
  """The rows of WikiText-2 (raw) splits through Hugging Face `datasets`."""
  try:
    import datasets  # noqa: PLC0415 (optional)
  except ImportError:
    raise DownloadError('WikiText-2 downloads through the datasets library, which is not '
                        'installed: pip install datasets, then run this again') from None
  try:
    loaded = datasets.load_dataset('wikitext', 'wikitext-2-raw-v1')
    return {split: list(loaded[split]['text']) for split in splits}
  except Exception as e:  # noqa: BLE001 (offline, refused: one line either way)
    raise DownloadError(f'datasets cannot load wikitext/wikitext-2-raw-v1 ({_why(e)})') from None


def _fetch_wikitext(dataset: Dataset, folder: str, parts: list[str]) -> None:
  """Each split as one Parquet file with a text column, its rows checked where known."""
  import pyarrow as pa  # noqa: PLC0415
  import pyarrow.parquet as pq  # noqa: PLC0415
  for split, rows in _load_wikitext(parts).items():
    expected = dataset.sha256.get(split)
    if expected is not None and rows_sha256(rows) != expected:
      raise DownloadError(f'the {split} split failed its checksum: sha256 {rows_sha256(rows)}, '
                          f'expected {expected}')
    path = os.path.join(folder, f'{split}-00000-of-00001.parquet')
    pq.write_table(pa.table({'text': rows}), path + '.part')
    os.replace(path + '.part', path)


# The published sha256 of MNIST's uncompressed files; those of the other files, computed from
# the copies the project's CI reads (for WikiText-2, of the rows as `rows_sha256` reads them).
DATASETS = {d.name: d for d in (
    Dataset('mnist', 'MNIST', 'mnist',
            {n: (n, n + '.gz') for n in ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte',
                                         't10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte')},
            _file_digest, _fetch_mnist,
            {'train-images-idx3-ubyte': 'ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db',
             'train-labels-idx1-ubyte': '65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5',
             't10k-images-idx3-ubyte': '0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7',
             't10k-labels-idx1-ubyte': 'ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2'}),
    Dataset('wikitext', 'WikiText-2', 'wikitext-2-raw-v1',
            {'train': ('train-*.parquet', 'wiki.train.raw'),
             'validation': ('validation-*.parquet', 'wiki.valid.raw'),
             'test': ('test-*.parquet', 'wiki.test.raw')},
            _rows_digest, _fetch_wikitext,
            {'validation': '76a6d9d70d37bd25b6c54c7eecc13f4b7f27295c96c0b133f70639775cf9293c',
             'test': '5c8877eeabb3b8afc09f8ec35194fdac8c55acaa25de738d27000876d7c73e4c'}),
    Dataset('opt-tokenizer', "OPT's tokenizer", 'opt-125m',
            {n: (n,) for n in ('vocab.json', 'merges.txt', 'config.json',
                               'special_tokens_map.json')},
            _file_digest, _fetch_opt_tokenizer,
            {'vocab.json': '06b4d46c8e752d410213d9548eb27a54db70fda0319b6271fb8d59dead5e1cab',
             'merges.txt': '1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5',
             'config.json': '54162c9cd0377110df1859dfabebb106fc0988c8aadb88207ce1ee0d34985df6',
             'special_tokens_map.json': '0f3cd5f307a2735cfee31ddf33be88655e8be165ee2cdc26ced966f04258adf0'}),
)}


# ----------------------------------------------------------------------------- using it


def require(name: str, data_dir: str = '', parts=None) -> str:
  """The folder holding dataset `name` (its `parts`, default all); else a ConfigError naming
  what is missing, where it was looked for, and both ways to supply it, in one line."""
  dataset = DATASETS[name]
  folder = dataset.folder_in(data_dir)
  missing = dataset.missing(folder, parts)
  if not missing:
    return folder
  _, chosen_by = resolve(data_dir)
  what = dataset.title if len(missing) == len(dataset.parts) else (
      f'{dataset.title} ({", ".join(missing)})')
  raise validation.ConfigError(
      'data_dir', f'{what} not found in {folder} (the data directory, from {chosen_by}); '
      f'fetch it with `python -m collapse_jax.data download {name}`, or pass --data_dir=DIR or '
      f'set ${ENV}=DIR for a DIR holding {dataset.folder}/')


def check(dataset: Dataset, folder: str) -> tuple[str, str]:
  """(state, detail) of a dataset's folder: complete, incomplete, missing or damaged."""
  missing, damaged = dataset.audit(folder)
  if len(missing) == len(dataset.parts):
    return 'missing', ''
  detail = '; '.join(([f'no {", ".join(missing)}'] if missing else [])
                     + ([f'checksum differs: {", ".join(damaged)}'] if damaged else [])
                     + (['checksums match'] if not damaged and dataset.expected(folder) else []))
  return ('damaged' if damaged else 'incomplete' if missing else 'complete'), detail


def status(data_dir: str = '') -> str:
  """Per dataset, whether it is complete at the data directory, and where that is."""
  root, chosen_by = resolve(data_dir)
  lines = [f'data directory: {root} (from {chosen_by})']
  for dataset in DATASETS.values():
    folder = dataset.folder_in(data_dir)
    state, detail = check(dataset, folder)
    lines.append(f'  {dataset.name:14s} {state:10s} {folder}' + (f'  ({detail})' if detail else ''))
  return '\n'.join(lines)


def download(name: str, data_dir: str = '', log=print) -> None:
  """Fetches what dataset `name` lacks, or has damaged, into its folder; DownloadError in one
  line when it cannot."""
  dataset = DATASETS[name]
  folder = dataset.folder_in(data_dir)
  try:
    os.makedirs(folder, exist_ok=True)
  except OSError as e:
    raise DownloadError(f'cannot create {folder} ({_why(e)})') from None
  missing, damaged = dataset.audit(folder)
  if not missing and not damaged:
    log(f'{name}: already complete in {folder}')
    return
  for part in damaged:  # fetched again, perhaps under another name (gzip or not)
    for path in dataset.files(folder, part):
      os.remove(path)
  todo = [p for p in dataset.parts if p in missing or p in damaged]
  log(f'{name}: fetching {", ".join(todo)} into {folder}')
  dataset.fetch(dataset, folder, todo)
  state, detail = check(dataset, folder)
  log(f'{name}: {state} in {folder}' + (f' ({detail})' if detail else ''))
