"""The documentation site: every notebook executed, processed by nbdev, rendered by pandoc, opened in headless Chromium."""
import json, os
from pathlib import Path
import pytest
from vallecorsa_ml.core import repo_root
from vallecorsa_ml.docs import build_docs, doc_notebooks

ROOT = repo_root()

@pytest.fixture(scope='module')
def site():
    out = ROOT/'_site'
    # `make test` runs nbdev-test with --save on a copy of nbs/ and points us at it, so notebooks run once;
    # run alone, this test executes every notebook itself with papermill (smoke profile).
    executed = os.environ.get('VML_DOCS_EXECUTED')
    s = build_docs(out=out, build=ROOT/'build'/'docs', execute=True, profile='smoke', workers=2, check=True,
                   executed=(ROOT/executed) if executed else None)
    return out, s

def test_every_notebook_executes(site):
    _, s = site
    assert s['exec_errors'] == {}, s['exec_errors']

def test_every_notebook_has_a_page(site):
    out, s = site
    assert len(s['pages']) == len(doc_notebooks())
    assert 'index.html' in s['pages']

def test_every_page_renders_in_chromium(site):
    _, s = site
    bad = {r['page']: r['problems'] for r in s['check'] if r['problems']}
    assert not bad, bad
    for r in s['check']:
        assert r['chars'] > 200, f"{r['page']} looks empty"

def test_figures_are_embedded(site):
    _, s = site
    # topic notebooks draw figures; at least one page must show loaded images
    assert sum(r['images'] for r in s['check']) > 0 or len(s['pages']) <= 5

def test_screenshot_of_index(site):
    out, _ = site
    shot = out/'screenshot_index.png'
    assert shot.exists() and shot.stat().st_size > 20_000
