"""The README stays a front page, every family has its page in docs/, and every relative link in
README.md and docs/*.md leads to a file that exists (and, with an anchor, to a heading there)."""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parent.parent
PAGES = [ROOT / 'README.md', *sorted((ROOT / 'docs').glob('*.md'))]
LINK = re.compile(r'!?\[[^\]]*\]\(([^)\s]+)\)')


def _anchors(page: pathlib.Path) -> set[str]:
  """GitHub's anchors for a page's headings: lower case, punctuation dropped, spaces to '-'."""
  text = re.sub(r'```.*?```', '', page.read_text(), flags=re.S)
  heads = re.findall(r'^#+\s+(.*)$', text, flags=re.M)
  return {re.sub(r'[^\w\- ]', '', h.strip().lower()).replace(' ', '-') for h in heads}


def _links(page: pathlib.Path) -> list[str]:
  text = re.sub(r'```.*?```', '', page.read_text(), flags=re.S)
  return [t for t in LINK.findall(text) if not re.match(r'[a-z]+:', t)]


def test_the_readme_is_a_front_page_of_at_most_200_lines():
  assert len((ROOT / 'README.md').read_text().splitlines()) <= 200


def test_every_family_has_its_page():
  families = [p.stem for p in (ROOT / 'collapse_jax' / 'families').glob('*.py')
              if p.stem != '__init__']
  assert families
  missing = [f for f in families if not (ROOT / 'docs' / f'{f}.md').exists()]
  assert not missing, f'no docs/<family>.md for {missing}'
  readme = (ROOT / 'README.md').read_text()
  unlinked = [f for f in families if f'(docs/{f}.md)' not in readme]
  assert not unlinked, f'README.md links no page for {unlinked}'


def test_every_relative_link_resolves():
  broken = []
  for page in PAGES:
    for target in _links(page):
      path, _, anchor = target.partition('#')
      dest = (page.parent / path).resolve() if path else page
      if not dest.exists():
        broken.append(f'{page.relative_to(ROOT)}: {target}')
      elif anchor and dest.suffix == '.md' and anchor not in _anchors(dest):
        broken.append(f'{page.relative_to(ROOT)}: {target} (no such heading)')
  assert not broken, '\n'.join(broken)
