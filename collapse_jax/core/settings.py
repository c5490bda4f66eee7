"""A config field's documentation, kept with the field: its command-line flag is made from it.

  seeds: int = setting(1000, 'Independent runs, all in one program.')

`setting` is a dataclasses.field whose metadata holds the flag's help text and, where they
differ from the field's, the flag's name and its choices. A subclass that only changes a
default (`seeds: int = 64`) keeps the documentation of the class it overrides.
"""

import dataclasses


def setting(default, help: str, *, flag: str | None = None, choices=None,  # noqa: A002
            recorded: bool | str = True):
  """A config field with default `default`; `help` is its flag's help text (a callable is
  called when the flag is defined, for choices registered later); `flag` the flag's name
  (default: the field's); `choices` the values the flag accepts; `recorded=False` for where
  things are rather than what the run is (left out of config.json, free to change on resume);
  `recorded='changed'` for a setting added to an experiment after runs were recorded: in
  config.json only when it differs from its default, so those runs still resume."""
  meta = {'help': help, 'flag': flag, 'choices': choices, 'recorded': recorded}
  return dataclasses.field(default=default, metadata=meta)


def documented(cls, name: str) -> dict:
  """The metadata of field `name` as the nearest class of `cls`'s bases that documents it
  gives it ({} if none does)."""
  for klass in cls.__mro__:
    fields = getattr(klass, '__dataclass_fields__', {})
    if name in fields and 'help' in fields[name].metadata:
      return dict(fields[name].metadata)
  return {}


def flag_name(cls, name: str) -> str:
  return documented(cls, name).get('flag') or name


def recorded(cls, name: str, value=None) -> bool:
  """Whether config.json holds field `name` at `value`."""
  how = documented(cls, name).get('recorded', True)
  if how == 'changed':
    return value != cls.__dataclass_fields__[name].default
  return how
