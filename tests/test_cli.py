"""Flags made from config fields: one definition per setting, the same common flags everywhere."""

import dataclasses
import importlib

import pytest

from collapse_jax.core import cli, settings
from collapse_jax.families import gmm

EXPERIMENTS = ('gaussian', 'gmm', 'discrete', 'regression', 'kde', 'flow', 'vae', 'poisson')
COMMON = ('workdir', 'preset', 'seeds', 'generations', 'regime', 'real_fraction', 'keep_fraction',
          'reward_scale', 'synthetic_ratio', 'age_decay', 'score', 'candidates',
          'verifier_noise', 'first_seed', 'cpu_devices', 'coordinator_address', 'num_processes',
          'process_id')


def _config_cls(module):
  return next(v for v in vars(module).values() if isinstance(v, type)
              and dataclasses.is_dataclass(v) and hasattr(v, 'validate_sweep')
              and v.__module__ != 'collapse_jax.core.experiment')


@pytest.mark.parametrize('name', EXPERIMENTS)
def test_every_config_field_is_a_flag_with_help_and_its_default(name):
  module = importlib.import_module(f'experiments.{name}')
  family = getattr(module, name, module)
  cls = _config_cls(family)
  defaults = cls()
  for field in dataclasses.fields(cls):
    flag = module.FLAGS[settings.flag_name(cls, field.name)]
    assert flag.help, field.name
    value = getattr(defaults, field.name)
    if isinstance(value, tuple) and value and isinstance(value[0], tuple):
      assert cli.parse_points(flag.name, flag.default) == value, field.name
    elif isinstance(value, tuple):
      assert tuple(type(v)(s) for v, s in zip(value, flag.default)) == value, field.name
      assert len(flag.default) == len(value), field.name
    else:
      assert flag.default == value, field.name


def test_every_experiment_has_the_same_common_flags_with_the_same_defaults():
  flag_sets = {name: importlib.import_module(f'experiments.{name}').FLAGS
               for name in EXPERIMENTS + ('opt',)}
  for flag in COMMON:
    assert all(flag in fv for fv in flag_sets.values()), flag
  for flag in ('cpu_devices', 'first_seed', 'keep_fraction', 'reward_scale', 'synthetic_ratio',
               'age_decay', 'candidates', 'verifier_noise', 'num_processes', 'process_id'):
    assert len({str(fv[flag].default) for fv in flag_sets.values()}) == 1, flag


def test_flags_override_the_preset_and_keep_their_syntax():
  module = importlib.import_module('experiments.gmm')
  fv = module.FLAGS
  fv.unparse_flags()
  fv(['gmm', '--preset=small', '--seeds=3', "--true_means=-2,0;2,0", '--true_weights=0.25,0.75',
      '--regime=replace,mix', '--real_fraction=0.1,0.5', '--keep_fraction=0.5'])
  cfg = cli.config_from_flags(fv, gmm.GMMConfig, gmm.PRESETS)
  fv.unparse_flags()
  assert cfg == dataclasses.replace(
      gmm.GMMConfig(**gmm.SMALL), seeds=3, true_means=((-2.0, 0.0), (2.0, 0.0)),
      true_weights=(0.25, 0.75), regimes=('replace', 'mix'), real_fractions=(0.1, 0.5))


def test_a_presets_regimes_come_with_their_settings_and_regime_replaces_both():
  module = importlib.import_module('experiments.flow')
  fv, flow = module.FLAGS, module.flow
  fv.unparse_flags()
  fv(['flow', '--preset=small'])
  assert cli.config_from_flags(fv, flow.FlowConfig, flow.PRESETS).synthetic_ratios == (0.1, 0.5)
  fv.unparse_flags()
  fv(['flow', '--preset=small', '--regime=replace'])
  cfg = cli.config_from_flags(fv, flow.FlowConfig, flow.PRESETS)
  fv.unparse_flags()
  assert (cfg.regimes, cfg.real_fractions, cfg.synthetic_ratios) == (('replace',), (0.0,), (0.5,))
  assert cfg.steps == flow.SMALL['steps']


def test_config_json_names_the_experiment_and_leaves_out_where_files_are():
  vae = importlib.import_module('collapse_jax.families.vae')
  record = vae.VAEConfig(data_dir='/somewhere').record('vae')
  assert record['experiment'] == 'vae' and 'data_dir' not in record and 'mnist_dir' not in record
  assert record['regimes'] == ['replace'] and record['seeds'] == 8
