"""Bad input ends in one line and a non-zero exit, never a traceback nor a silent wrong answer (issue 19).

* `test_bad_input`: every console script run on wrong input (table `CASES`) on tiny files: the exit code, the one
  error line (`prog: error: …`, the documented message) and no `Traceback` in anything it printed. To stay within a
  minute on two shared cores, the table runs in ONE fresh Python process (this file run as a script: each case
  executes the installed console script's own file with its argv, as `python <script>` would, and records what it
  printed and its exit code, or the traceback of anything that escaped), so that torch and friends are imported
  once; the cases in `END_TO_END` also run as the installed scripts, in their own processes, and must print and exit
  exactly as in the driver. Outputs are kept in `captured/` of the fixture's folder
  (`test_no_traceback_in_captured_output` greps them all).
* `test_interrupted_checkpoint_write`: SIGINT, SIGTERM and SIGKILL sent to `vml-calo-train-gan` while it writes its
  checkpoint: the previous checkpoint stays whole, no temporary stays behind (after SIGKILL, the next run removes
  the one the killed process left), SIGINT/SIGTERM end with one line and exit 130/143.
* Hypothesis property tests of the file loaders: random layouts, shapes, dtypes, NaN/inf, attributes, truncated and
  damaged HDF5 files, random CSV exports: each either loads clean data or raises `VMLInputError`.
"""
import os, sys, re, json, shutil, signal, subprocess, time, hashlib
import concurrent.futures as cf
from pathlib import Path
import numpy as np
import pandas as pd
import h5py
import pytest
from hypothesis import given, settings, strategies as st, HealthCheck

from vallecorsa_ml.core import VMLInputError, repo_root
from vallecorsa_ml.calo.data import load_g4, write_showers, read_showers, load_showers, showers_from, ShowerData

from helpers import BIN, run

ROOT = repo_root()
QUIET = {'OMP_NUM_THREADS': '1', 'PYTHONWARNINGS': 'ignore', 'VML_TRACEBACK': None}    # None: unset
ENV = {k: v for k, v in {**os.environ, **QUIET}.items() if v is not None}

# ---------------------------------------------------------------------------------------------------------------
# The table: (id, command and arguments, exit code, text of the error line). `{name}` is a file of the fixture
# `inputs`; 'argparse' cases print argparse's usage line before the error line, all others print exactly one line.
ARGPARSE = {'gen-n-not-int'}
CASES = [
    # vml-calo-generate: sizes, outputs, models, energies
    ('gen-n-huge', ['vml-calo-generate', '--model', '3dgan-ds2', '--out', '{out_h5}', '--n', '1000000000000'], 2,
     "'--n': 1,000,000,000,000 showers of 6,480 cells (float32, twice: the batches and the joined sample) need about 48,279,762.3 GiB of memory"),
    ('gen-n-0', ['vml-calo-generate', '--model', '3dgan-ds2', '--out', '{out_h5}', '--n', '0'], 2, "'--n': must be >= 1 (a positive integer), got 0"),
    ('gen-n-not-int', ['vml-calo-generate', '--model', '3dgan-ds2', '--out', '{out_h5}', '--n', 'ten'], 2, "argument --n: invalid int value: 'ten'"),
    ('gen-batch-size-0', ['vml-calo-generate', '--model', '3dgan-ds2', '--out', '{out_h5}', '--batch-size', '0'], 2, "'--batch-size': must be >= 1 (a positive integer), got 0"),
    ('gen-seed-negative', ['vml-calo-generate', '--model', '3dgan-ds2', '--out', '{out_h5}', '--seed', '-1'], 2, "'--seed': must be >= 0 (a non-negative integer), got -1"),
    ('gen-out-directory', ['vml-calo-generate', '--model', '3dgan-ds2', '--out', '{dir}'], 2, "{dir}: '--out': is a directory; give a file name"),
    ('gen-out-own-checkpoint', ['vml-calo-generate', '--checkpoint', '{gan_pt}', '--out', '{gan_pt}', '--n', '5'], 2,
     "{gan_pt}: '--out': is the input of --checkpoint: writing there would destroy it; choose another file"),
    ('gen-out-shipped-model', ['vml-calo-generate', '--model', '3dgan-ds2', '--out', '{shipped_gan}', '--n', '5'], 2,
     "{shipped_gan}: '--out': is the input of --model: writing there would destroy it; choose another file"),
    ('gen-out-conditions', ['vml-calo-generate', '--model', '3dgan-ds2', '--conditions', '{ref}', '--out', '{ref}'], 2,
     "{ref}: '--out': is the input of --conditions: writing there would destroy it; choose another file"),
    ('gen-gan-as-dit', ['vml-calo-generate', '--checkpoint', '{gan_pt}', '--model-type', 'dit', '--out', '{out_h5}', '--n', '5'], 2,
     "{gan_pt}: 'model_type': is a 'gan' checkpoint, not a 'dit' one: leave out the model-type override (the file records its type)"),
    ('gen-dit-as-gan', ['vml-calo-generate', '--checkpoint', '{shipped_dit}', '--model-type', 'gan', '--out', '{out_h5}', '--n', '5'], 2,
     "{shipped_dit}: 'model_type': is a 'dit' checkpoint, not a 'gan' one: leave out the model-type override (the file records its type)"),
    ('gen-unknown-model-type', ['vml-calo-generate', '--checkpoint', '{gan_pt}', '--model-type', 'vae', '--out', '{out_h5}'], 2, "'model': unknown model 'vae'; known: gan, dit"),
    ('gen-theta-without-angles', ['vml-calo-generate', '--model', '3dgan-ds2', '--out', '{out_h5}', '--n', '5', '--theta', '1.5'], 2,
     "'--theta': this model was trained without theta (its conditions: energy): leave --theta out"),
    ('gen-phi-without-angles', ['vml-calo-generate', '--model', '3dgan-ds2', '--out', '{out_h5}', '--n', '5', '--phi', '0.3'], 2,
     "'--phi': this model was trained without phi (its conditions: energy): leave --phi out"),
    ('gen-theta-with-conditions', ['vml-calo-generate', '--model', 'dit-ds2', '--out', '{out_h5}', '--conditions', '{ref}', '--theta', '1.5'], 2,
     "'--theta': the angles come from the rows of --conditions: leave out --theta and --phi"),
    ('gen-energy-above-range', ['vml-calo-generate', '--model', '3dgan-ds2', '--out', '{out_h5}', '--n', '5', '--energies', '500GeV'], 2,
     "'energies': energies outside the trained range 1.00032-99.7316 GeV (got 500-500 GeV)"),
    ('gen-energy-below-range', ['vml-calo-generate', '--model', '3dgan-ds2', '--out', '{out_h5}', '--n', '5', '--energies', '10MeV'], 2,
     "'energies': energies outside the trained range 1.00032-99.7316 GeV (got 0.01-0.01 GeV)"),
    ('gen-energy-bare-number', ['vml-calo-generate', '--model', '3dgan-ds2', '--out', '{out_h5}', '--energies', '50'], 2,
     "'--energies': '50' has no unit: write it with MeV, GeV or TeV, e.g. 50GeV, 50000MeV or 1-100GeV"),
    ('gen-energy-bare-list', ['vml-calo-generate', '--model', '3dgan-ds2', '--out', '{out_h5}', '--energies', '10,50'], 2,
     "'--energies': '10,50' has no unit: write it with MeV, GeV or TeV, e.g. 10,50,90GeV"),
    ('gen-energy-range-reversed', ['vml-calo-generate', '--model', '3dgan-ds2', '--out', '{out_h5}', '--energies', '100-1GeV'], 2,
     "'--energies': energy range '100-1GeV' must satisfy 0 < lo <= hi"),
    ('gen-neither-model-nor-checkpoint', ['vml-calo-generate', '--out', '{out_h5}'], 2, "'--model': give either --model NAME (a shipped model) or --checkpoint FILE"),
    ('gen-checkpoint-missing', ['vml-calo-generate', '--checkpoint', '{dir}/nope.pt', '--out', '{out_h5}'], 2, "{dir}/nope.pt: checkpoint not found"),
    ('gen-checkpoint-not-torch', ['vml-calo-generate', '--checkpoint', '{text_h5}', '--out', '{out_h5}'], 2, "{text_h5}: not a readable checkpoint (UnpicklingError)"),
    ('gen-conditions-wrong-shape', ['vml-calo-generate', '--model', '3dgan-ds2', '--conditions', '{badshape}', '--out', '{out_h5}'], 2,
     "{badshape}: 'showers': no known geometry has 100 cells"),
    # vml-calo-evaluate: data, outputs, sizes
    ('eval-one-shower', ['vml-calo-evaluate', '{one}', '{ref}', '--out', '{dir}/ev1', '--cls', 'none', '--no-plots'], 2,
     "FPD and KPD need at least 10 showers in each sample, got 1 and 50 (--no-fpd skips them)"),
    ('eval-one-shower-cls', ['vml-calo-evaluate', '{one}', '{ref}', '--out', '{dir}/ev1', '--no-fpd', '--no-plots'], 2,
     "the classifier tests need at least 10 showers in each sample, got 1 and 50 (--cls none skips them)"),
    ('eval-all-zero-showers', ['vml-calo-evaluate', '{zeros}', '{ref}', '--out', '{dir}/ev2', '--cls', 'none', '--no-plots'], 2,
     "{zeros}: 'showers': all 20 showers are empty: no cell above the 15.15 keV read-out threshold (CaloChallenge units), nothing to compare"),
    ('eval-wrong-shape', ['vml-calo-evaluate', '{badshape}', '{ref}', '--out', '{dir}/ev3'], 2,
     "{badshape}: 'showers': 100 cells do not match geometry ds2 (6480 cells, (45, 16, 9))"),
    ('eval-other-geometry', ['vml-calo-evaluate', '{ref}', '{ref}', '--geometry', 'ds3', '--out', '{dir}/ev3'], 2,
     "{ref}: 'showers': 6480 cells do not match geometry ds3"),
    ('eval-nan', ['vml-calo-evaluate', '{nan_h5}', '{ref}', '--out', '{dir}/ev3'], 2, "{nan_h5}: 'showers': contains NaN or inf (first in row 2)"),
    ('eval-strings', ['vml-calo-evaluate', '{strings_h5}', '{ref}', '--out', '{dir}/ev3'], 2,
     "{strings_h5}: 'incident_energies': holds |S5 values, expected real numbers"),
    ('eval-damaged', ['vml-calo-evaluate', '{damaged_h5}', '{ref}', '--out', '{dir}/ev3'], 2, "{damaged_h5}: truncated or damaged HDF5 file (OSError"),
    ('eval-truncated', ['vml-calo-evaluate', '{truncated_h5}', '{ref}', '--out', '{dir}/ev3'], 2, "{truncated_h5}: not an HDF5 file or truncated"),
    ('eval-not-hdf5', ['vml-calo-evaluate', '{text_h5}', '{ref}', '--out', '{dir}/ev3'], 2, "{text_h5}: not an HDF5 file or truncated"),
    ('eval-missing', ['vml-calo-evaluate', '{dir}/nope.h5', '{ref}', '--out', '{dir}/ev3'], 2, "{dir}/nope.h5: file not found"),
    ('eval-max-n-0', ['vml-calo-evaluate', '{ref}', '{ref}', '--out', '{dir}/ev3', '--max-n', '0'], 2, "'--max-n': must be >= 1 (a positive integer), got 0"),
    ('eval-epochs-0', ['vml-calo-evaluate', '{ref}', '{ref}', '--out', '{dir}/ev3', '--epochs', '0'], 2, "'--epochs': must be >= 1 (a positive integer), got 0"),
    ('eval-seed-negative', ['vml-calo-evaluate', '{ref}', '{ref}', '--out', '{dir}/ev3', '--seed', '-2'], 2, "'--seed': must be >= 0 (a non-negative integer), got -2"),
    ('eval-out-is-a-file', ['vml-calo-evaluate', '{ref}', '{ref}', '--out', '{ref}'], 2,
     "{ref}: '--out': exists and is not a folder (this option names an output folder)"),
    ('eval-out-earlier-result', ['vml-calo-evaluate', '{ref}', '{ref}', '--out', '{done}'], 2,
     "{done}: '--out': holds an earlier result (metrics.json); add --force to overwrite it, or choose another folder"),
    ('eval-unknown-cls', ['vml-calo-evaluate', '{ref}', '{ref}', '--out', '{dir}/ev3', '--cls', 'medium'], 2, "'--cls': unknown classifier test 'medium'; use high, low or none"),
    ('eval-unknown-units', ['vml-calo-evaluate', '{ref}', '{ref}', '--out', '{dir}/ev3', '--units', 'MeV'], 2, "'--units': unknown energy units 'MeV'; choose raw or calochallenge"),
    ('eval-sampling-fraction-nan', ['vml-calo-evaluate', '{ref}', '{ref}', '--out', '{dir}/ev3', '--sampling-fraction', 'nan'], 2,
     "'--sampling-fraction': must be a finite number, got nan"),
    ('eval-unknown-geometry', ['vml-calo-evaluate', '{ref}', '{ref}', '--out', '{dir}/ev3', '--geometry', 'hexagon'], 2, "'geometry': unknown geometry 'hexagon'"),
    # vml-calo-simulate
    ('sim-n-huge', ['vml-calo-simulate', '--out', '{out_h5}', '--n', '1000000000000'], 2,
     "'--n': 1,000,000,000,000 showers of 6,480 cells (float32, with the simulator's working copies) need about 72,419,643.4 GiB of memory"),
    ('sim-out-directory', ['vml-calo-simulate', '--out', '{dir}', '--n', '5'], 2, "{dir}: '--out': is a directory; give a file name"),
    ('sim-energy-bare-number', ['vml-calo-simulate', '--out', '{out_h5}', '--n', '5', '--energy', '50'], 2,
     "'--energy': '50' has no unit: write it with MeV, GeV or TeV, e.g. 50GeV, 50000MeV or 1-100GeV"),
    ('sim-seed-negative', ['vml-calo-simulate', '--out', '{out_h5}', '--n', '5', '--seed', '-1'], 2, "'--seed': must be >= 0 (a non-negative integer), got -1"),
    ('sim-no-out', ['vml-calo-simulate', '--n', '5'], 2, "'out': give the output file with --out"),
    ('bench-sim-n-huge', ['vml-calo-bench-sim', '--n', '1000000000', '--repeats', '1'], 2, "'--n': 1,000,000,000 showers of 6,480 cells"),
    ('bench-eval-n-huge', ['vml-calo-bench-eval', '--n', '100000000'], 2, "'--n': 2 x 100,000,000 showers of 6,480 cells"),
    # vml-traffic-train: link exports
    ('traffic-nan', ['vml-traffic-train', '{nan_csv}'], 2, "{nan_csv}: 'traffic_out': NaN in row 5; pass resample=True to interpolate"),
    ('traffic-inf', ['vml-traffic-train', '{inf_csv}'], 2, "{inf_csv}: 'traffic_in': infinite value inf in row 4"),
    ('traffic-missing', ['vml-traffic-train', '{dir}/nope.csv'], 2, "{dir}/nope.csv: file not found"),
    ('traffic-epochs-0', ['vml-traffic-train', '{nan_csv}', '--epochs', '0'], 2, "'--epochs': must be >= 1 (a positive integer), got 0"),
    # vml-anomaly-events
    ('events-n-huge', ['vml-anomaly-events', '--n', '1000000000000', '--out', '{out_h5}'], 2, "'--n': 1,000,000,000,000 events of 10,652 bytes"),
    ('events-n-0', ['vml-anomaly-events', '--n', '0', '--out', '{out_h5}'], 2, "'--n': must be >= 1 (a positive integer), got 0"),
    ('events-out-directory', ['vml-anomaly-events', '--n', '5', '--out', '{dir}'], 2, "{dir}: '--out': is a directory; give a file name"),
    # training and benchmark scripts: the shared size options, checked before any work
    ('train-gan-batch-size-0', ['vml-calo-train-gan', '--data', '{ref}', '--max-steps', '1', '--batch-size', '0'], 2, "'--batch-size': must be >= 1 (a positive integer), got 0"),
    ('train-gan-lr-nan', ['vml-calo-train-gan', '--data', '{ref}', '--max-steps', '1', '--lr', 'nan'], 2, "'--lr': must be a finite number, got nan"),
    ('train-gan-seed-negative', ['vml-calo-train-gan', '--data', '{ref}', '--max-steps', '1', '--seed', '-5'], 2, "'--seed': must be >= 0 (a non-negative integer), got -5"),
    ('select-gan-epochs-0', ['vml-calo-select-gan', '--epochs', '0'], 2, "'--epochs': must be >= 1 (a positive integer), got 0"),
    ('train-epochs-0', ['vml-ddp-train', '--epochs', '0'], 2, "'--epochs': must be >= 1 (a positive integer), got 0"),
    ('train-batch-0', ['vml-ddp-train', '--batch', '0'], 2, "'--batch': must be >= 1 (a positive integer), got 0"),
    ('train-dit-bs-0', ['vml-calo-train-dit', '--bs', '0'], 2, "'--bs': must be >= 1 (a positive integer), got 0"),
    ('train-dit-seed-negative', ['vml-calo-train-dit', '--seed', '-1'], 2, "'--seed': must be >= 0 (a non-negative integer), got -1"),
    ('bench-ddp-epochs-0', ['vml-ddp-bench', '--epochs', '0'], 2, "'--epochs': must be >= 1 (a positive integer), got 0"),
    ('bench-gan-repeats-0', ['vml-calo-bench-gan', '--repeats', '0'], 2, "'--repeats': must be >= 1 (a positive integer), got 0"),
    ('bench-repeats-0', ['vml-quant-bench', '--repeats', '0'], 2, "'--repeats': must be >= 1 (a positive integer), got 0"),
    ('anomaly-bench-n-events-0', ['vml-anomaly-bench', '--n-events', '0'], 2, "'--n-events': must be >= 1 (a positive integer), got 0"),
    ('damage-bench-bs-0', ['vml-damage-bench', '--bs', '0'], 2, "'--bs': must be >= 1 (a positive integer), got 0"),
    ('docs-workers-0', ['vml-docs', '--workers', '0'], 2, "'--workers': must be >= 1 (a positive integer), got 0"),
    ('data-unknown', ['vml-data', 'fetch', 'nosuch'], 2, "'name': unknown public dataset 'nosuch'"),
    ('model-unknown', ['vml-calo-model', 'card', 'nosuch'], 2, "'model': unknown model 'nosuch'; shipped models: dit-ds2, 3dgan-ds2"),
    ('run-unknown-notebook', ['vml-run', 'nosuch'], 2, "nosuch: notebook not found"),
    # vml-damage-score: options checked, and never the files of the other prefix in place of those asked for
    ('damage-unclassified', ['vml-damage-score', '{dmg_pred}', '{dmg_xbd}', '--unclassified', 'foo'], 2,
     "'--unclassified': unclassified must be one of ('no-damage', 'ignore'), got 'foo'"),
    ('damage-unclassified-with-targets', ['vml-damage-score', '{dmg_pred}', '{dmg_targ}', '--targets', '--unclassified', 'ignore'], 2,
     "'--unclassified': applies to xBD JSON labels; the target PNGs of --targets already hold every building's class"),
    ('damage-test-hold-foo', ['vml-damage-score', '{dmg_pred}', '{dmg_xbd}', '--test-hold', 'foo'], 2,
     "'--test-hold': unknown value 'foo': 'test' or 'hold' (the first word of the official PNG names)"),
    ('damage-hold-with-test-files', ['vml-damage-score', '{dmg_pred}', '{dmg_xbd}', '--test-hold', 'hold'], 2,
     "{dmg_pred}: '--test-hold': no hold_* prediction PNGs (it holds test_* ones: --test-hold test)"),
    ('damage-hold-with-test-targets', ['vml-damage-score', '{dmg_pred}', '{dmg_targ}', '--targets', '--test-hold', 'hold'], 2,
     "{dmg_targ}: '--test-hold': no hold_* target PNGs (it holds test_* ones: --test-hold test)"),
    ('damage-out-directory', ['vml-damage-score', '{dmg_pred}', '{dmg_xbd}', '--out', '{dir}'], 2, "{dir}: '--out': is a directory; give a file name"),
    ('damage-no-labels', ['vml-damage-score', '{dmg_pred}', '{dir}'], 2, "{dir}: expected an xBD folder (with labels/) or its labels/ folder"),
    ('export-seed-negative', ['vml-calo-export', '--out', '{dir}/x.onnx', '--seed', '-1'], 2, "'--seed': must be >= 0"),
    ('bench-par04-n-0', ['vml-calo-bench-par04', '--n', '0'], 2, "'--n': must be >= 1"),
]


def _fill(a, paths):
    return re.sub(r'\{(\w+)\}', lambda m: str(paths[m[1]]), a)


@pytest.fixture(scope='module')
def inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp('bad_inputs')
    g4 = load_g4('electrons', 'train', n=50)
    p = dict(dir=d, out_h5=d/'out.h5', ref=d/'ref.h5', one=d/'one.h5', zeros=d/'zeros.h5', badshape=d/'badshape.h5',
             nan_h5=d/'nan.h5', strings_h5=d/'strings.h5', damaged_h5=d/'damaged.h5', truncated_h5=d/'truncated.h5',
             text_h5=d/'text.h5', gan_pt=d/'gan.pt', done=d/'done', nan_csv=d/'nan.csv', inf_csv=d/'inf.csv',
             shipped_gan=ROOT/'models'/'3dgan-ds2.pt', shipped_dit=ROOT/'models'/'dit-ds2.pt', captured=d/'captured',
             dmg_xbd=d/'xbd', dmg_pred=d/'pred', dmg_targ=d/'targ')
    write_showers(p['ref'], g4)
    write_showers(p['one'], g4[:1])
    write_showers(p['zeros'], ShowerData(np.zeros_like(g4.showers[:20]), g4.energies[:20], geometry=g4.geometry), units='raw')
    with h5py.File(p['badshape'], 'w') as f:
        f['showers'] = np.ones((5, 100), np.float32); f['incident_energies'] = np.full((5, 1), 1e4)
    with h5py.File(p['nan_h5'], 'w') as f:
        s = g4.flat[:5].copy(); s[2, 3] = np.nan
        f['showers'] = s; f['incident_energies'] = g4.energies[:5, None]
    with h5py.File(p['strings_h5'], 'w') as f:
        f['showers'] = g4.flat[:5]; f['incident_energies'] = np.full((5, 1), b'10GeV')
    with h5py.File(p['damaged_h5'], 'w') as f:
        f['incident_energies'] = g4.energies[:20, None]
        f.create_dataset('showers', data=g4.flat[:20], compression='gzip', chunks=(1, 6480))
    b = bytearray(p['damaged_h5'].read_bytes()); i = len(b)//2; b[i:i + 400] = b'\xff'*400; p['damaged_h5'].write_bytes(bytes(b))
    raw = p['ref'].read_bytes(); p['truncated_h5'].write_bytes(raw[:len(raw)*2//3])
    p['text_h5'].write_text('incident_energies,showers\n1,2\n')
    shutil.copy(p['shipped_gan'], p['gan_pt'])
    p['done'].mkdir(); (p['done']/'metrics.json').write_text('{"from": "an earlier evaluation"}')
    idx = pd.date_range('2024-01-01', periods=40, freq='120s', tz='UTC')
    t = pd.DataFrame({'timestamp': idx.strftime('%Y-%m-%dT%H:%M:%SZ'), 'traffic_out': np.linspace(1e9, 2e9, 40), 'traffic_in': np.linspace(5e8, 1e9, 40)})
    t.assign(traffic_out=t.traffic_out.where(t.index != 5)).to_csv(p['nan_csv'], index=False)
    t.assign(traffic_in=t.traffic_in.astype(object).where(t.index != 4, 'inf')).to_csv(p['inf_csv'], index=False)
    from vallecorsa_ml.damage.data import write_synthetic_xbd, list_tiles, read_tile
    from vallecorsa_ml.damage.metrics import write_xview2_pngs, xbd_image_id, write_xbd_targets
    write_synthetic_xbd(p['dmg_xbd'], 2, 32, seed=3)                # test_* predictions and targets of two tiles
    for t in list_tiles(p['dmg_xbd']):
        dt = read_tile(p['dmg_xbd'], t); write_xview2_pngs(p['dmg_pred'], xbd_image_id(t), dt['loc'], dt['dmg'])
    write_xbd_targets(p['dmg_xbd'], p['dmg_targ'])
    p['captured'].mkdir()
    return p


END_TO_END = ['gen-out-own-checkpoint', 'gen-n-not-int', 'eval-one-shower', 'sim-energy-bare-number', 'traffic-inf',
              'events-n-huge', 'train-gan-batch-size-0', 'data-unknown', 'run-unknown-notebook',
              'damage-hold-with-test-files']


def _driver(cases_json: str, out_json: str):
    "Run the cases of `cases_json` ([id, argv] rows): each executes the installed console script's own file, in this one process."
    import io, contextlib, traceback
    rows = []
    for cid, argv in json.loads(Path(cases_json).read_text()):
        out, err, t0 = io.StringIO(), io.StringIO(), time.time()
        script = BIN/argv[0]
        sys.argv = [str(script)] + list(argv[1:])
        g = {'__name__': '__main__', '__file__': str(script), '__builtins__': __builtins__}
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try: exec(compile(script.read_text(), str(script), 'exec'), g); code = 0
            except SystemExit as e: code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            except BaseException: traceback.print_exc(); code = 1      # what the interpreter would print
        rows.append(dict(id=cid, code=code, stdout=out.getvalue(), stderr=err.getvalue(), seconds=time.time() - t0))
        Path(out_json).write_text(json.dumps(rows))


class Run:
    def __init__(self, code, stdout, stderr): self.returncode, self.stdout, self.stderr = code, stdout, stderr


def _argv(case, inputs): return [case[1][0]] + [_fill(a, inputs) for a in case[1][1:]]


def _capture(inputs, name, argv, r):
    (inputs['captured']/f'{name}.txt').write_text(f"$ {' '.join(argv)}\n[exit {r.returncode}]\n--- stdout\n{r.stdout}\n--- stderr\n{r.stderr}")


@pytest.fixture(scope='module')
def results(inputs):
    "Every case through the driver (one process), the END_TO_END ones also as installed scripts (two at a time)."
    keys = ('shipped_gan', 'shipped_dit', 'gan_pt', 'ref')
    before = {k: hashlib.sha256(inputs[k].read_bytes()).hexdigest() for k in keys}
    saved = inputs['shipped_gan'].read_bytes()
    d = inputs['dir']
    (d/'cases.json').write_text(json.dumps([[c[0], _argv(c, inputs)] for c in CASES]))
    t0 = time.time()
    p = subprocess.run([sys.executable, __file__, str(d/'cases.json'), str(d/'results.json')], cwd=d, env=ENV,
                       capture_output=True, text=True, timeout=600)
    rows = {r['id']: r for r in json.loads((d/'results.json').read_text())} if (d/'results.json').exists() else {}
    assert len(rows) == len(CASES), f"the driver stopped after {len(rows)} cases: {p.stderr[-3000:]}"
    out = {cid: Run(r['code'], r['stdout'], r['stderr']) for cid, r in rows.items()}
    t1 = time.time()
    def script(cid):
        argv = _argv(next(c for c in CASES if c[0] == cid), inputs)
        return cid, run(*argv, env=QUIET, cwd=d, timeout=300)
    with cf.ThreadPoolExecutor(2) as ex: scripts = dict(ex.map(script, END_TO_END))
    print(f"{len(CASES)} cases in one process in {t1 - t0:.0f} s (slowest: "
          f"{', '.join(f'{r[0]} {r[1]:.1f} s' for r in sorted(((k, v['seconds']) for k, v in rows.items()), key=lambda x: -x[1])[:3])}); "
          f"{len(END_TO_END)} as installed scripts in {time.time() - t1:.0f} s")
    for c in CASES: _capture(inputs, c[0], _argv(c, inputs), out[c[0]])
    for cid, r in scripts.items(): _capture(inputs, f'{cid}.script', _argv(next(c for c in CASES if c[0] == cid), inputs), r)
    after = {k: hashlib.sha256(inputs[k].read_bytes()).hexdigest() for k in keys}
    if after['shipped_gan'] != before['shipped_gan']: inputs['shipped_gan'].write_bytes(saved)    # never leave the checkout damaged
    return dict(cases=out, scripts=scripts, hashes=(before, after))


def test_table_is_large_and_unique():
    ids = [c[0] for c in CASES]
    assert len(ids) >= 40 and len(set(ids)) == len(ids)
    scripts = {c[1][0] for c in CASES}
    import tomllib
    declared = tomllib.loads((ROOT/'pyproject.toml').read_text())['project']['scripts']
    assert scripts <= set(declared), f"cases of undeclared scripts: {scripts - set(declared)}"
    # every entry point has a case (an alias, e.g. an old name kept for a while, shares its target's cases)
    missing = set(declared.values()) - {declared[s] for s in scripts}
    assert not missing, f"console scripts without a bad-input case: {missing}"


@pytest.mark.parametrize('case', CASES, ids=[c[0] for c in CASES])
def test_bad_input(results, inputs, case):
    cid, args, code, msg = case
    prog, r = args[0], results['cases'][cid]
    assert r.returncode == code, (r.returncode, r.stderr[-2000:])
    assert 'Traceback' not in r.stderr + r.stdout, r.stderr[-3000:]
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    err = [l for l in lines if l.startswith(f'{prog}: error: ')]
    assert len(err) == 1 and err[0] == lines[-1], r.stderr
    assert _fill(msg, inputs) in err[0], (err[0], _fill(msg, inputs))
    if cid not in ARGPARSE: assert len(lines) == 1, r.stderr
    assert 'internal error' not in err[0]


@pytest.mark.parametrize('cid', END_TO_END)
def test_installed_script_ends_as_in_the_driver(results, cid):
    r, s = results['cases'][cid], results['scripts'][cid]
    free = lambda t: re.sub(r'[\d,.]+ GiB available', 'N GiB available', t.strip())     # memory left differs from run to run
    assert (s.returncode, free(s.stderr)) == (r.returncode, free(r.stderr))
    assert 'Traceback' not in s.stdout + s.stderr


def test_inputs_left_as_they_were(results):
    before, after = results['hashes']
    assert before == after, "a bad-input run wrote over an input file"


def test_no_traceback_in_captured_output(results, inputs):
    texts = [p.read_text() for p in sorted(inputs['captured'].glob('*.txt'))]
    assert len(texts) == len(CASES) + len(END_TO_END)
    assert sum(t.count('Traceback') for t in texts) == 0


# ---------------------------------------------------------------------------------------------------------------
# Interruption while a checkpoint is being written

def _temporaries(d): return sorted(p.name for p in Path(d).iterdir() if p.name.startswith('.last.pt.'))


def _load_step(p):
    import torch
    return torch.load(p, map_location='cpu', weights_only=False)['step']


@pytest.fixture(scope='module')
def train_file(tmp_path_factory):
    d = tmp_path_factory.mktemp('interrupt')
    write_showers(d/'train.h5', load_g4('electrons', 'train', n=64))
    return d/'train.h5'


def _train(train, ck, max_steps, **kw):
    # width 1: a 32 MB checkpoint written after every step, so that a signal can land inside a write
    return [str(BIN/'vml-calo-train-gan'), '--data', str(train), '--ckpt-dir', str(ck), '--max-steps', str(max_steps), '--ckpt-every', '1',
            '--batch-size', '8', '--threads', '1', '--quiet', '--readout', '0', '--seed', '3']


@pytest.mark.parametrize('sig', [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=['SIGINT', 'SIGTERM', 'SIGKILL'])
def test_interrupted_checkpoint_write(train_file, tmp_path, sig):
    ck = tmp_path/'ck'
    p = subprocess.Popen(_train(train_file, ck, 10**6), env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))   # as from a terminal, even under a CI shell
    try:
        t0 = time.time()
        while not (ck/'last.pt').exists() and p.poll() is None and time.time() - t0 < 240: time.sleep(0.02)
        assert (ck/'last.pt').exists(), p.communicate()[1][-2000:]
        while time.time() - t0 < 240 and p.poll() is None:
            tmp = _temporaries(ck)
            if tmp: break                                 # the next checkpoint is being written now
            time.sleep(0.002)
        assert tmp, "no checkpoint write was caught"
        ino = (ck/'last.pt').stat().st_ino                # the previous checkpoint, whole, that the write will replace
        p.send_signal(sig)
        out, err = p.communicate(timeout=120)
    finally:
        if p.poll() is None: p.kill(); p.wait()
    assert 'Traceback' not in out + err, err[-3000:]
    if sig == signal.SIGKILL:
        assert p.returncode == -signal.SIGKILL
        left = _temporaries(ck)
        assert left == tmp, (left, tmp)                    # the write was cut: its temporary stays (nothing can remove it then)
        assert (ck/'last.pt').stat().st_ino == ino        # and never replaced the previous checkpoint,
        step = _load_step(ck/'last.pt')                   # which loads whole
        r = run(*_train(train_file, ck, step + 1), env=QUIET, timeout=300)   # the next run
        assert r.returncode == 0, r.stderr[-2000:]
        assert _temporaries(ck) == [] and _load_step(ck/'last.pt') == step + 1   # resumed, and removed what the killed run left
    else:
        assert p.returncode == 128 + sig, (p.returncode, err[-2000:])
        assert [l for l in err.splitlines() if l.strip()] == [f"vml-calo-train-gan: interrupted ({signal.Signals(sig).name})"], err
        assert _temporaries(ck) == []                     # the cut write removed its temporary
        assert _load_step(ck/'last.pt') >= 1              # the checkpoint is whole: the previous one, or the one saved on the way out
    assert oct((ck/'last.pt').stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask():
    m = os.umask(0); os.umask(m); return m


# ---------------------------------------------------------------------------------------------------------------
# Property tests of the loaders

_DTYPES = st.sampled_from(['f2', 'f4', 'f8', 'i1', 'i4', 'u1', 'u8', '?', 'c8', 'S3', 'O'])
_VALUES = st.lists(st.sampled_from([0., 1., 3., 1e-3, 1e4, 5e5, -1., np.nan, np.inf]), min_size=1, max_size=6)
_SHAPES = st.lists(st.integers(0, 7), max_size=4).map(tuple)


def _array(shape, dt, vals):
    if dt == 'O': return np.array(['x']*int(np.prod(shape)), dtype=h5py.string_dtype()).reshape(shape)
    if dt == 'S3': return np.full(shape, b'abc', 'S3')
    a = np.resize(np.asarray(vals, np.float64), shape) if shape else np.asarray(vals[0])
    with np.errstate(all='ignore'): return a.astype(dt)


@st.composite
def shower_files(draw):
    "A random HDF5 file in either layout (or neither), random attributes, maybe truncated or with bytes overwritten."
    layout, ds = draw(st.sampled_from(['calochallenge', '3dgan', 'other'])), {}
    n = draw(st.integers(0, 4))
    if layout == 'calochallenge':
        ds['showers'] = _array(draw(st.one_of(st.just((n, 6480)), _SHAPES)), draw(_DTYPES), draw(_VALUES))
        ds['incident_energies'] = _array(draw(st.one_of(st.just((n, 1)), st.just((n,)), _SHAPES)), draw(_DTYPES), draw(_VALUES))
        if draw(st.booleans()): ds['incident_theta'] = _array(draw(st.one_of(st.just((n,)), _SHAPES)), draw(_DTYPES), draw(_VALUES))
    elif layout == '3dgan':
        ds['ECAL'] = _array(draw(st.one_of(st.just((n, 5, 5, 4)), st.just((n, 25, 25, 25)), _SHAPES)), draw(_DTYPES), draw(_VALUES))
        ds['energy'] = _array(draw(st.one_of(st.just((n,)), _SHAPES)), draw(_DTYPES), draw(_VALUES))
    else:
        ds[draw(st.sampled_from(['x', 'showers', 'energy']))] = _array(draw(_SHAPES), draw(_DTYPES), draw(_VALUES))
    attrs = draw(st.dictionaries(st.sampled_from(['vml_geometry', 'energy_unit', 'vml_units', 'vml_sampling_fraction']),
                                 st.sampled_from(['garbage', '{"name": "x"}', '[1, 2]', 'MeV', 'raw', '-1', '2.0']), max_size=2))
    damage = draw(st.sampled_from([None, 'truncate', 'overwrite']))
    return ds, attrs, damage, draw(st.floats(0, 1))


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(shower_files())
def test_shower_loaders_load_or_refuse(tmp_path_factory, spec):
    ds, attrs, damage, where = spec
    p = tmp_path_factory.mktemp('h5')/'f.h5'
    with h5py.File(p, 'w') as f:
        f.attrs.update(attrs)
        for k, v in ds.items(): f.create_dataset(k, data=v, **({'compression': 'gzip', 'chunks': True} if v.ndim >= 2 and v.size > 0 else {}))
    b = bytearray(p.read_bytes()); i = int(len(b)*where)
    if damage == 'truncate': p.write_bytes(bytes(b[:i]))
    elif damage == 'overwrite': b[i:i + 64] = b'\xa5'*64; p.write_bytes(bytes(b[:len(b)]))
    for load in (read_showers, load_showers, showers_from):
        try: sd = load(str(p))
        except VMLInputError as e: assert str(e).strip() and '\n' not in str(e); continue
        assert isinstance(sd, ShowerData) and len(sd) > 0
        assert sd.showers.dtype == np.float32 and np.isfinite(sd.showers).all() and (sd.showers >= 0).all()
        assert np.isfinite(sd.energies).all() and (sd.energies > 0).all()


_CELLS = st.sampled_from(['1e9', '0', '2.5e8', 'nan', 'inf', '-inf', '-3', '', 'abc', '1e400'])


@st.composite
def traffic_csvs(draw):
    "A random link export: 2-12 rows, a timestamp column (maybe shuffled, repeated or off the grid) and random values."
    n = draw(st.integers(0, 12))
    t0 = pd.Timestamp('2024-03-01', tz='UTC')
    steps = draw(st.lists(st.sampled_from([120, 120, 120, 60, 0, 240, -120, 7]), min_size=n, max_size=n))
    ts = [t0 + pd.Timedelta(seconds=int(s)) for s in np.cumsum([0] + steps[1:])] if n else []
    cols = draw(st.lists(st.sampled_from(['traffic_out', 'traffic_in', 'throughput_out', 'queued_in', 'cpu']), min_size=1, max_size=3, unique=True))
    rows = [[t.strftime('%Y-%m-%dT%H:%M:%SZ') if draw(st.integers(0, 20)) else 'soon'] + [draw(_CELLS) for _ in cols] for t in ts]
    return 'timestamp,' + ','.join(cols) + '\n' + ''.join(','.join(r) + '\n' for r in rows), draw(st.booleans())


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(traffic_csvs())
def test_traffic_loader_loads_or_refuses(tmp_path_factory, spec):
    from vallecorsa_ml.traffic.data import load_traffic
    text, resample = spec
    p = tmp_path_factory.mktemp('csv')/'link.csv'; p.write_text(text)
    try: df = load_traffic(p, resample=resample)
    except VMLInputError as e: assert str(e).strip() and '\n' not in str(e); return
    v = df.to_numpy(dtype=float)
    assert len(df) >= 2 and np.isfinite(v).all() and (v >= 0).all()
    assert df.index.is_monotonic_increasing and not df.index.duplicated().any()


if __name__ == '__main__':                 # the driver of `results`: python tests/test_bad_inputs.py CASES.json OUT.json
    _driver(sys.argv[1], sys.argv[2])
