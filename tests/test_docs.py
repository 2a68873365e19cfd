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
    from nbdev.doclinks import nbpath2html          # nbdev's page name: 00_core -> core.html, 15a_calo.readout -> calo.readout.html
    expected = sorted(nbpath2html(p).name for p in doc_notebooks())
    assert len(expected) == len(set(expected)) >= 30, expected       # one page per notebook, no two with the same name
    assert sorted(s['pages']) == expected
    assert all((out/f).stat().st_size > 2000 for f in expected)

def test_every_page_renders_in_chromium(site):
    _, s = site
    bad = {r['page']: r['problems'] for r in s['check'] if r['problems']}
    assert not bad, bad
    for r in s['check']:
        assert r['chars'] > 200, f"{r['page']} looks empty"

def test_figures_are_embedded(site):
    _, s = site
    # topic notebooks draw figures, and every image a page shows has loaded (checked in Chromium): the pages of the
    # wings that plot in their smoke profile show at least one each
    images = {r['page']: r['images'] for r in s['check']}
    for page in ('calo.simulate.html', 'calo.metrics.html', 'anomaly.events.html', 'traffic.models.html'):
        assert images.get(page, 0) > 0, (page, images.get(page))

def test_screenshot_of_index(site):
    out, _ = site
    shot = out/'screenshot_index.png'
    assert shot.exists() and shot.stat().st_size > 20_000
