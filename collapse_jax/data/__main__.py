"""python -m collapse_jax.data status | download [mnist|wikitext|opt-tokenizer|all] [--data_dir=DIR]"""

import sys

from absl import app, flags

from collapse_jax import data


def main(argv) -> None:
  command, *names = argv[1:] or ['status']
  if command == 'status' and not names:
    print(data.status(flags.FLAGS.data_dir))
    return
  names = names or ['all']
  if command != 'download' or not set(names) <= {*data.DATASETS, 'all'}:
    raise app.UsageError(f'usage: python -m collapse_jax.data status | download '
                         f'[{"|".join(data.DATASETS)}|all] [--data_dir=DIR]')
  failed = False
  for name in (data.DATASETS if 'all' in names else names):
    try:
      data.download(name, flags.FLAGS.data_dir)
    except data.DownloadError as e:
      print(f'error: download {name}: {e}', file=sys.stderr)
      failed = True
  sys.exit(1 if failed else 0)


if __name__ == '__main__':
  data.define_flag()
  app.run(main)
