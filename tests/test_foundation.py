"""Foundation: the vml-run console script end to end, its bad-input messages, README sync, kernel, packaging."""
import json, subprocess, sys
from pathlib import Path
import pytest
from vallecorsa_ml.pipeline import make_test_notebook
from vallecorsa_ml.core import repo_root

from helpers import run, one_line_error
ROOT = repo_root()

@pytest.fixture
def nbs(tmp_path):
    d = tmp_path/'nbs'
    make_test_notebook(d/'10_ok.ipynb', "from vallecorsa_ml.core import run_folder, save_metrics, pick\n"
                       "out = run_folder(out_dir, '10_ok')\nsave_metrics({'answer': pick(profile, 1, 42)}, out)")
    make_test_notebook(d/'11_broken.ipynb', "1/0")
    make_test_notebook(d/'12_noparams.ipynb', "x = 1", parameters=None)
    return d

def test_vml_run_end_to_end(nbs, tmp_path):
    r = run('vml-run', nbs/'10_ok.ipynb', nbs/'11_broken.ipynb', '--profile', 'quick', '--runs', tmp_path/'runs')
    assert r.returncode == 1, r.stderr           # one notebook failed → non-zero
    assert '11_broken' in r.stderr and 'Traceback' not in r.stderr
    (folder,) = list((tmp_path/'runs').iterdir())
    assert json.loads((folder/'10_ok'/'metrics.json').read_text()) == {'answer': 42}
    assert (folder/'10_ok'/'10_ok.ipynb').exists() and (folder/'11_broken'/'11_broken.ipynb').exists()
    md = (folder/'report.md').read_text()
    assert 'FAILED: ZeroDivisionError: division by zero' in md and 'answer=42' in md
    assert (folder/'report.html').read_text().count('<tr>') >= 3

def test_vml_run_all_ok_exits_zero(nbs, tmp_path):
    r = run('vml-run', nbs/'10_ok.ipynb', '--profile', 'smoke', '--runs', tmp_path/'runs')
    assert r.returncode == 0, r.stderr
    assert 'report:' in r.stdout and '(1/1 ok)' in r.stdout

@pytest.mark.parametrize('args,msg', [
    (['--profile', 'turbo'], "vml-run: error: 'profile': unknown profile 'turbo'; choose one of smoke, quick, full"),
    (['does_not_exist.ipynb'], "vml-run: error: does_not_exist.ipynb: notebook not found"),
])
def test_vml_run_bad_input_one_line(args, msg, tmp_path):
    r = run('vml-run', *args, cwd=tmp_path)
    assert r.returncode == 2
    assert r.stderr.strip() == msg and r.stdout == ''

def test_vml_run_no_parameters_cell(nbs, tmp_path):
    r = run('vml-run', nbs/'12_noparams.ipynb', '--runs', tmp_path/'runs')
    one_line_error(r, 'vml-run', "has no cell tagged 'parameters'")

def test_every_console_script_has_help():
    from vallecorsa_ml.cli import vml_commands
    cmds = vml_commands()
    assert {'vml-run', 'vml-docs'} <= set(cmds)
    from importlib.metadata import entry_points
    one_name = {ep.value: ep.name for ep in entry_points(group='console_scripts') if ep.name in cmds}   # aliases share a target
    for c in sorted(one_name.values()):
        r = run(c, '--help')
        assert r.returncode == 0 and 'usage:' in r.stdout, (c, r.stderr[-500:])

def test_readme_is_generated_from_index(tmp_path):
    from vallecorsa_ml.docs import index_to_readme
    fresh = index_to_readme(out=tmp_path/'README.md').read_text()
    assert fresh == (ROOT/'README.md').read_text(), "README.md is stale: run `make readme` and commit"

def test_readme_lists_every_console_script():
    "The README's table names each console script once, exactly those pyproject declares (old names kept for a while aside)."
    import re
    text = (ROOT/'pyproject.toml').read_text()
    block = text[text.index('[project.scripts]'):].split('\n[', 1)[0].split('# old names')[0]
    declared = re.findall(r'^(vml-[\w-]+) = ', block, re.M)
    table = re.findall(r'^\| `(vml-[\w-]+)` \|', (ROOT/'README.md').read_text(), re.M)
    assert len(declared) >= 20 and sorted(table) == sorted(declared), (set(table) ^ set(declared))
    assert all(re.fullmatch(r'vml-[a-z]+(-[a-z0-9]+)*', n) for n in declared)

def test_licence_file_matches_pyproject():
    import tomllib
    proj = tomllib.loads((ROOT/'pyproject.toml').read_text())['project']
    assert proj['license'] == 'Apache-2.0' and proj['license-files'] == ['LICENSE']
    text = (ROOT/'LICENSE').read_text()
    assert text.lstrip().startswith('Apache License\n                           Version 2.0, January 2004')
    assert 'END OF TERMS AND CONDITIONS' in text and len(text.splitlines()) == 202
    assert 'example.org' not in (ROOT/'pyproject.toml').read_text()

def test_notebooks_use_the_project_kernel():
    # JupyterLab from .venv opens the notebooks (kernelspec python3) with .venv's own interpreter
    from jupyter_client.kernelspec import KernelSpecManager
    spec = KernelSpecManager().get_kernel_spec('python3')
    exe = spec.argv[0]
    assert exe in (sys.executable, 'python') or Path(exe).resolve() == Path(sys.executable).resolve(), spec.argv
    for nb in sorted((ROOT/'nbs').glob('*.ipynb')):
        ks = json.loads(nb.read_text())['metadata'].get('kernelspec', {})
        assert ks.get('name', 'python3') == 'python3', nb.name

def _requirements():
    "pyproject's base dependencies and extras: ({extra: [Requirement]}, with the base under ''), self-references resolved."
    import tomllib
    from packaging.requirements import Requirement
    proj = tomllib.loads((ROOT/'pyproject.toml').read_text())['project']
    raw = {'': proj['dependencies'], **proj['optional-dependencies']}
    def resolve(extra, seen=()):
        out = []
        for d in raw[extra]:
            r = Requirement(d)
            if r.name.replace('-', '_') == 'vallecorsa_ml': out += [x for e in sorted(r.extras) if e not in seen for x in resolve(e, seen + (e,))]
            else: out.append(r)
        return out
    return {k: resolve(k) for k in raw}

def test_dependency_ranges_admit_the_working_torch_pair():
    deps = {r.name: r for rs in _requirements().values() for r in rs}
    assert deps['torch'].specifier.contains('2.14.1') and not deps['torch'].specifier.contains('2.15.0')
    assert deps['torchvision'].specifier.contains('0.29.1')
    assert deps['pythia8mc'].specifier.contains('8.317.2') and not deps['pythia8mc'].specifier.contains('8.318.0')

def test_every_optional_import_names_an_extra_that_installs_it():
    "Each `optional_import(module, extra)` of the package names an extra of pyproject that lists the module's distribution."
    import re
    from importlib.metadata import packages_distributions
    reqs = _requirements()
    dists = packages_distributions()
    norm = lambda n: re.sub(r'[-_.]+', '-', n).lower()
    calls = {(m, e) for f in (ROOT/'vallecorsa_ml').rglob('*.py')
             for m, e in re.findall(r"optional_import\('([\w.]+)', '(\w+)'\)", f.read_text())}
    calls = {(m, e) for m, e in calls if m.split('.')[0] not in sys.stdlib_module_names and not m.startswith('vml_no_such')}
    assert len(calls) >= 10, calls
    for m, e in sorted(calls):
        assert e in reqs, f"optional_import({m!r}, {e!r}): no extra {e!r} in pyproject.toml"
        top = m.split('.')[0]
        provide = {norm(d) for d in dists.get(top, [top])}
        assert provide & {norm(r.name) for r in reqs[e] + reqs['']}, f"optional_import({m!r}, {e!r}): [{e}] does not install {sorted(provide)}"
    assert not {norm(r.name) for r in reqs['']} & {'fastai', 'onnx', 'pythia8mc', 'shapely', 'brevitas', 'nbdev'}, "a wing's package in the base install"

def test_data_folder_is_small_and_added_once():
    "data/ stays under 100 MB, and no file there was ever rewritten (each is added once, so history stays small)."
    total = sum(p.stat().st_size for p in (ROOT/'data').rglob('*') if p.is_file())
    assert total < 100 * 2**20, f"data/ holds {total/2**20:.1f} MB (limit 100 MB)"
    # the rule holds from the commit that brought the Geant4 files in (a2b3b30); READMEs are documentation, not data
    log = subprocess.run(['git', 'log', '--format=', '--name-status', 'a2b3b30..HEAD', '--', 'data'], capture_output=True, text=True, cwd=ROOT)
    if log.returncode != 0: pytest.skip('not a git checkout with the full history')
    changed = [l for l in log.stdout.splitlines() if l.startswith('M') and not l.endswith('.md')]
    assert not changed, f"files in data/ were rewritten: {changed}"

def test_every_module_is_listed_in_the_package_docstring_and_llms_txt():
    "Each module of the package (not _modidx) appears in `vallecorsa_ml.__doc__` and in nbs/llms.txt."
    import pkgutil, vallecorsa_ml
    mods = sorted(m.name for m in pkgutil.walk_packages(vallecorsa_ml.__path__, 'vallecorsa_ml.')
                  if not m.ispkg and not m.name.rsplit('.', 1)[-1].startswith('_'))
    assert len(mods) >= 35, mods
    llms = (ROOT/'nbs'/'llms.txt').read_text()
    assert [m for m in mods if f'`{m}`' not in vallecorsa_ml.__doc__] == []
    assert [m for m in mods if f'[{m}]' not in llms] == []
