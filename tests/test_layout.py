"""The library's layout: no import circle anywhere in collapse_jax, and core modules that read
in one sitting."""

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / 'collapse_jax'
CORE_MAX_LINES = 400


def _module(path: pathlib.Path) -> str:
  parts = path.relative_to(PACKAGE.parent).with_suffix('').parts
  return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


def import_graph() -> dict[str, set[str]]:
  """{module: the collapse_jax modules it imports}, every import statement counted, those
  inside functions included."""
  paths = {_module(p): p for p in PACKAGE.rglob('*.py')}
  graph = {}
  for name, path in paths.items():
    package = name if path.name == '__init__.py' else name.rpartition('.')[0]
    edges = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
      if isinstance(node, ast.Import):
        edges |= {a.name for a in node.names}
      elif isinstance(node, ast.ImportFrom):
        base = node.module or ''
        if node.level:  # relative: from the package, one level up per extra dot
          anchor = package.split('.')[:len(package.split('.')) - node.level + 1]
          base = '.'.join(anchor + ([base] if base else []))
        subs = {f'{base}.{a.name}' for a in node.names} & set(paths)  # names that are submodules
        edges |= subs  # `from package import submodule` runs the submodule; the package's own
        if len(subs) < len(node.names):  # __init__ matters only for names it defines itself
          edges.add(base)
    graph[name] = {e for e in edges if e in paths and e != name}
  return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
  """The strongly connected components with more than one module (Tarjan's algorithm)."""
  index, low, on_stack, stack, out = {}, {}, set(), [], []

  def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in sorted(graph[v]):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        component.append(w)
        if w == v:
          break
      if len(component) > 1:
        out.append(sorted(component))

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return out


def test_the_import_graph_sees_every_kind_of_import():
  graph = import_graph()
  assert 'collapse_jax.core.regimes' in graph['collapse_jax.core.driver']  # from pkg import mod
  assert 'collapse_jax.core.scores' in graph['collapse_jax.core.regimes']  # from pkg.mod import
  assert 'collapse_jax.data.mnist' in graph['collapse_jax.data']  # a package's __init__
  circle = {'a': {'b'}, 'b': {'c'}, 'c': {'a'}, 'd': {'a'}}
  assert cycles(circle) == [['a', 'b', 'c']]


def test_collapse_jax_has_no_import_circle():
  found = cycles(import_graph())
  assert not found, f'modules that import each other, directly or through others: {found}'


def test_no_core_or_language_model_module_is_over_400_lines():
  paths = [*(PACKAGE / 'core').glob('*.py'), *(PACKAGE / 'families' / 'lm').glob('*.py'),
           *(PACKAGE / 'nets').glob('opt*.py'), PACKAGE / 'data' / 'wikitext.py']
  assert len(paths) > 20, paths  # the rooms are where this test looks
  long = {str(p.relative_to(PACKAGE)): n for p in sorted(paths)
          if (n := len(p.read_text().splitlines())) > CORE_MAX_LINES}
  assert not long, f'modules over {CORE_MAX_LINES} lines: {long}'
