"""CaloChallenge units and the official evaluate.py: `evaluate` / `vml-calo-evaluate` give the official separation powers
(to 1e-5) on official-format dataset-2 files made from data/g4 rows, and the same numbers from our raw files; a file
whose energy convention is unknown, or declared against what it records or against its energy scale, is refused.

How the constants below were obtained (once, by hand, 2026-12-04; the official code is not a dependency):

* official code: https://github.com/CaloChallenge/homepage at commit 9b41df72a03aeecb48bfbaa946f9792f255e0ba7
  (2025-08-07; the evaluation files last changed in ad3a816deb5578c8aaed2718d37a5156f85c3423, 2025-01-02):
  code/evaluate.py, evaluate_plotting_helper.py, HighLevelFeatures.py, XMLHandler.py, resnet.py and
  binning_dataset_2.xml, unchanged, in one folder;
* inputs: `_official_file` below, i.e. rows of data/g4 with showers = Si energy / 0.0320 computed in float64 and
  rounded to float32, incident energies float32 MeV, only the datasets `incident_energies` and `showers` (gzip), no
  attributes, as an official file. Pair A: gen = g4-electrons valid rows 0-299 (file rows 5000-5299), ref =
  g4-electrons test rows 0-299 (rows 6000-6299). Pair B: gen = g4-photons test rows 0-299 (rows 3000-3299), same ref;
* command, in that folder, with the project's .venv (Python 3.11, numpy 2.4.6, matplotlib 3.11.2, h5py 3.16.0,
  torch 2.14.1), on the project's 2-core Intel Xeon (AVX-512) machine:
      python run_official.py -i gen.h5 -r ref.h5 -m hist-chi -d 2 --output_dir out --no_cuda
  where run_official.py runs evaluate.py through `runpy.run_path('evaluate.py', run_name='__main__')` after
  `matplotlib.use('Agg')`, making `plt.rc` drop `usetex`/`preamble` and `plt.tight_layout` a no-op (the machine has no
  LaTeX; both only concern drawing, and hist-chi saves no figure);
* values: out/histogram_chi2_2.txt, all 227 lines of each pair (Etot / Einc, E layer, EC Eta/Phi, Width Eta/Phi of
  the 45 layers, Voxel distribution); the ones below are the first two and six layers of each per-layer family.
  Ours agreed with all 454 to 2.5e-15.

The layer-energy histograms' last edge is `10**log10(max)` with the float32 log10 of the reference's largest float32
layer energy, so whether the official code keeps that one shower depends on numpy's float32 log10 (in pair A it drops
it in layers 4 and 13 and keeps it in 5 and 44). A numpy whose float32 log10 rounds differently would change those
official numbers by up to ~1e-2, and ours with them.
"""
import json
from pathlib import Path
import numpy as np
import h5py
import pytest

from vallecorsa_ml.calo.data import load_showers, read_showers, write_showers
from vallecorsa_ml.calo.metrics import evaluate, vml_evaluate, official_label
from helpers import run

SF = 0.0320                      # the sampling fraction the official-format files were made with (not an import: fixed)
PAIRS = {'A': (('g4-electrons', 'valid'), ('g4-electrons', 'test')), 'B': (('g4-photons', 'test'), ('g4-electrons', 'test'))}
N = 300

OFFICIAL = {   # out/histogram_chi2_2.txt of the official evaluate.py, see the module docstring
    'A': {'E_ratio': 0.06933494968197831, 'cell_spectrum': 0.00030642780396350873, 'E_layer_0': 0.013919958842192607, 'E_layer_4': 0.024348829825757926,
          'E_layer_5': 0.024760523757401637, 'E_layer_13': 0.033495842652254894, 'E_layer_22': 0.03784902239259529, 'E_layer_44': 0.1980966754395893,
          'EC_x_0': 0.07852907781679591, 'EC_x_4': 0.017797719969029676, 'EC_x_5': 0.03608514334623187, 'EC_x_13': 0.06479150252955844,
          'EC_x_22': 0.1039130047923444, 'EC_x_44': 0.056927296744618196, 'EC_y_0': 0.09078551349375509, 'EC_y_4': 0.024588673616277694,
          'EC_y_5': 0.019143745095459044, 'EC_y_13': 0.06857135756365462, 'EC_y_22': 0.09741792476341758, 'EC_y_44': 0.0497192662410043,
          'width_x_0': 0.09694563986053238, 'width_x_4': 0.04247044610367414, 'width_x_5': 0.04072039721910921, 'width_x_13': 0.03765483352831117,
          'width_x_22': 0.09372477326332664, 'width_x_44': 0.015070741369552465, 'width_y_0': 0.116221029929477, 'width_y_4': 0.07090077302266592,
          'width_y_5': 0.07665908389072373, 'width_y_13': 0.062153644526549486, 'width_y_22': 0.08306568327106467, 'width_y_44': 0.01840407470288575},
    'B': {'E_ratio': 0.13861183665438614, 'cell_spectrum': 0.002547047701554312, 'E_layer_0': 0.20455452696188367, 'E_layer_4': 0.09789737852211884,
          'E_layer_5': 0.12278697987633379, 'E_layer_13': 0.3125557807656711, 'E_layer_22': 0.20467967507887513, 'E_layer_44': 0.22571057904196998,
          'EC_x_0': 0.3073830650836116, 'EC_x_4': 0.0508097895895502, 'EC_x_5': 0.042414578224643215, 'EC_x_13': 0.13712993277350294,
          'EC_x_22': 0.16006751470104066, 'EC_x_44': 0.12681725038191674, 'EC_y_0': 0.3556778500106414, 'EC_y_4': 0.04316953408728449,
          'EC_y_5': 0.035142683312836334, 'EC_y_13': 0.132872333694195, 'EC_y_22': 0.1576833955408733, 'EC_y_44': 0.12544199840869566,
          'width_x_0': 0.3875765772767827, 'width_x_4': 0.10489555242431815, 'width_x_5': 0.07572521350318212, 'width_x_13': 0.16061298986648903,
          'width_x_22': 0.29687396249913667, 'width_x_44': 0.06123900879296447, 'width_y_0': 0.407031487310911, 'width_y_4': 0.14244254718723304,
          'width_y_5': 0.130595664378226, 'width_y_13': 0.15664298621588196, 'width_y_22': 0.28763139847030894, 'width_y_44': 0.06424133811230455},
}


def _rows(spec):
    return load_showers(spec[0], spec[1], 0, N, 'ds2')


def _official_file(spec, path):
    "An official-format dataset-2 file (CaloChallenge units, no attributes) from data/g4 rows."
    d = _rows(spec)
    with h5py.File(path, 'w') as f:
        f.create_dataset('incident_energies', data=d.energies.reshape(-1, 1).astype(np.float32), compression='gzip')
        f.create_dataset('showers', data=(d.flat.astype(np.float64)/SF).astype(np.float32), compression='gzip')
    return path


@pytest.fixture(scope='module')
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp('official')
    out = {}
    for p, (gen, ref) in PAIRS.items():
        out[p] = dict(gen=_official_file(gen, d/f'{p}_gen.h5'), ref=_official_file(ref, d/f'{p}_ref.h5'),
                      gen_raw=write_showers(d/f'{p}_gen_raw.h5', _rows(gen)), ref_raw=write_showers(d/f'{p}_ref_raw.h5', _rows(ref)))
    with h5py.File(d/'bare_raw.h5', 'w') as f:      # raw energies, no attribute at all: the convention cannot be told
        g = _rows(PAIRS['A'][0])
        f['incident_energies'] = g.energies.reshape(-1, 1).astype(np.float32); f['showers'] = g.flat
    out['dir'] = d
    return out


def _check(sp, pair):
    for k, v in OFFICIAL[pair].items():
        assert official_label(k) is not None
        assert abs(sp[k] - v) <= 1e-5, (pair, k, sp[k], v)


@pytest.mark.parametrize('pair', ['A', 'B'])
def test_official_files_give_the_official_separation_powers(files, pair):
    f = files[pair]
    m = evaluate(read_showers(f['gen']), read_showers(f['ref']), cls=(), fpd_kpd=False, plots=False)
    assert m['units']['gen']['units'] == m['units']['ref']['units'] == 'calochallenge'     # recognised by their scale
    assert sum(official_label(k) is not None for k in m['separation_power']) == 227        # every histogram the official code draws
    _check(m['separation_power'], pair)


@pytest.mark.parametrize('pair', ['A', 'B'])
def test_raw_files_give_the_official_separation_powers(files, pair):
    "Our own files (Si energy, the convention recorded by write_showers) are converted and give the same numbers."
    f = files[pair]
    G, R = read_showers(f['gen_raw']), read_showers(f['ref_raw'])
    assert G.attrs['vml_units'] == 'raw-active-MeV' and G.attrs['vml_sampling_fraction'] == SF
    m = evaluate(G, R, cls=(), fpd_kpd=False, plots=False)
    assert m['units']['gen']['units'] == 'raw' and abs(m['sampling_fraction_ref'] - SF) < 1e-3
    _check(m['separation_power'], pair)


def test_vml_evaluate_on_official_files(files):
    f, out = files['B'], files['dir']/'ev_B'
    r = run('vml-calo-evaluate', f['gen'], f['ref'], '--out', out, '--cls', 'none', '--no-plots', '--no-fpd', check=True)
    assert 'gen: calochallenge-MeV (official CaloChallenge scale' in r.stdout
    _check(json.loads((out/'metrics.json').read_text())['separation_power'], 'B')


def _cli(capsys, gen, ref, out, **kw):
    try:
        vml_evaluate(str(gen), str(ref), out=str(out), cls='none', no_plots=True, no_fpd=True, **kw)
        code = 0
    except SystemExit as e: code = e.code
    err = capsys.readouterr().err.strip().splitlines()
    return code, err


def test_units_declared_detected_or_refused(files, capsys):
    A, d = files['A'], files['dir']
    # undeclared and undetectable: one line asking for --units
    code, err = _cli(capsys, d/'bare_raw.h5', A['ref'], d/'e1')
    assert code == 2 and len(err) == 1 and 'bare_raw.h5' in err[0] and 'energy units unknown' in err[0] and '--units raw' in err[0], err
    # declared: the same file gives the official numbers
    code, err = _cli(capsys, d/'bare_raw.h5', A['ref'], d/'e2', units='raw', ref_units='calochallenge')
    assert code == 0, err
    _check(json.loads((d/'e2'/'metrics.json').read_text())['separation_power'], 'A')
    # declarations against the energy scale or against what a file records
    for kw, gen, ref, msg in [(dict(units='raw'), A['gen'], A['ref'], 'declared raw units (sampling fraction 0.032) conflict with its energy scale'),
                              (dict(units='calochallenge'), A['gen_raw'], A['ref'], 'declared calochallenge units, but its vml_units attribute says raw'),
                              (dict(units='calochallenge'), A['gen'], A['ref_raw'], "--ref-units sets the reference's"),
                              (dict(units='calochallenge'), A['gen'], 'g4-electrons:test', 'but its Geant4 file of the project (energy in the Si) says raw'),
                              (dict(units='MeV'), A['gen'], A['ref'], "unknown energy units 'MeV'"),
                              (dict(units='raw', sampling_fraction=2.0), d/'bare_raw.h5', A['ref'], 'must be in (0, 1], got 2.0')]:
        code, err = _cli(capsys, gen, ref, d/'e3', **kw)
        assert code == 2 and len(err) == 1 and err[0].startswith('vml-calo-evaluate: error:') and msg in err[0], (kw, err)
