"""3DGAN console scripts: training killed with SIGKILL resumes identically, generation, ONNX parity, bad inputs, benchmark."""
import os, sys, json, time, signal, subprocess
from functools import partial
from pathlib import Path
import numpy as np
import pytest
import torch

import helpers
from helpers import script
from vallecorsa_ml.calo.data import load_g4, write_showers, read_showers
from vallecorsa_ml.calo.generators import load_generator, export_generator, generator_parity

TINY = ['--width', '0.25', '--batch-size', '8', '--threads', '1', '--quiet', '--ckpt-every', '3', '--seed', '5', '--snapshot-every', '6']
ENV = {**os.environ, 'OMP_NUM_THREADS': '1'}


run = partial(helpers.run, threads=1)     # one thread: fastest and deterministic on the shared CPU


def _step(path):
    try: return torch.load(path, map_location='cpu', weights_only=False)['step']
    except Exception: return -1


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    "An uninterrupted tiny run (A) and the same run killed with SIGKILL mid-way and resumed (B)."
    d = tmp_path_factory.mktemp('gan')
    tr = load_g4('electrons', 'train', n=64)
    write_showers(d/'train.h5', tr)
    va = load_g4('electrons', 'valid', n=300)                  # validation rows inside the trained energy range
    write_showers(d/'valid.h5', va[(va.energies >= tr.energies.min()) & (va.energies <= tr.energies.max())][:20])
    n = 24
    args = ['vml-calo-train-gan', '--data', d/'train.h5', '--max-steps', n, *TINY]
    r = run(*args, '--ckpt-dir', d/'a')
    assert r.returncode == 0, r.stderr
    p = subprocess.Popen([str(script(args[0])), *map(str, args[1:]), '--ckpt-dir', str(d/'b')], env=ENV,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.time()
    while _step(d/'b'/'last.pt') < 6 and p.poll() is None and time.time() - t0 < 300: time.sleep(0.05)
    p.send_signal(signal.SIGKILL); p.wait()
    killed_at = _step(d/'b'/'last.pt')
    r = run(*args, '--ckpt-dir', d/'b')
    assert r.returncode == 0, r.stderr
    return d, killed_at, n


def test_resume_after_kill_is_identical(trained):
    d, killed_at, n = trained
    assert 0 < killed_at < n, f"the run was not interrupted mid-way (checkpoint at step {killed_at})"
    a = torch.load(d/'a'/'last.pt', weights_only=False); b = torch.load(d/'b'/'last.pt', weights_only=False)
    assert a['step'] == b['step'] == n
    for key in ('G', 'D', 'G_ema'):
        for k, v in a[key].items(): assert torch.equal(v, b[key][k]), (key, k)
    assert [h['g'] for h in a['history']] == [h['g'] for h in b['history']]
    assert (d/'a'/'losses.png').stat().st_size > 1000


def test_select_snapshot_cli(trained):
    d, _, n = trained
    snaps = sorted(p.name for p in (d/'a'/'snapshots').glob('ema_*.pt'))
    assert snaps == [f'ema_{s:06d}.pt' for s in range(6, n + 1, 6)]
    assert sorted(p.name for p in (d/'b'/'snapshots').glob('ema_*.pt')) == snaps        # the killed run's too
    for s in snaps:       # snapshots of the killed-and-resumed run equal the uninterrupted run's
        a = torch.load(d/'a'/'snapshots'/s, weights_only=False)['G_ema']; b = torch.load(d/'b'/'snapshots'/s, weights_only=False)['G_ema']
        assert all(torch.equal(v, b[k]) for k, v in a.items()), s
    r = run('vml-calo-select-gan', '--ckpt-dir', d/'a', '--data', d/'train.h5', '--last', 3, '--n-val', 20, '--seeds', '1')
    assert r.returncode == 2 and "'--valid': required with a file --data" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    r = run('vml-calo-select-gan', '--ckpt-dir', d/'a', '--data', d/'train.h5', '--valid', d/'train.h5', '--last', 3, '--n-val', 20,
            '--seeds', '1', '--readout', 0, '--epochs', 2, '--quiet', '--threads', 1)
    assert r.returncode == 2 and 'rows 0-63 of the validation showers are also the read-out rows' in r.stderr, r.stderr
    r = run('vml-calo-select-gan', '--ckpt-dir', d/'a', '--data', d/'train.h5', '--valid', d/'valid.h5', '--last', 3, '--n-val', 20, '--seeds', '1,2',
            '--readout', 0, '--epochs', 3, '--quiet', '--threads', 1)
    assert r.returncode == 0, r.stderr
    best = torch.load(d/'a'/'best.pt', weights_only=False)
    assert best['selected']['candidates'] == [12, 18, 24] and best['selected']['step'] in (12, 18, 24)
    assert f"step {best['selected']['step']}, validation AUC" in r.stdout and (d/'a'/'best_selection.png').stat().st_size > 1000
    rows = json.load(open(d/'a'/'best_selection.json'))
    assert [r['step'] for r in rows] == [12, 18, 24] and best['selected']['auc'] == min(r['auc'] for r in rows)
    r = run('vml-calo-select-gan', '--ckpt-dir', d/'a', '--data', d/'train.h5', '--valid', d/'valid.h5', '--last', 2, '--n-val', 20, '--seeds', '1',
            '--readout', 0, '--epochs', 2, '--quiet', '--threads', 1, '--out', d/'a'/'early.pt', '--max-minutes', 1e-9)
    assert r.returncode == 2 and 'no snapshots within' in r.stderr
    G = load_generator(d/'a'/'best.pt')
    assert G.sample([float(best['cfg']['e_min'])*1.5], seed=0).showers.shape == (1, 45, 16, 9)
    for args, msg in ((['--seeds', 'x'], 'seeds must be integers'), (['--n-val', 5], 'n_val'), (['--last', 0], 'last must be')):
        r = run('vml-calo-select-gan', '--ckpt-dir', d/'a', '--data', d/'train.h5', '--valid', d/'valid.h5', '--readout', 0, *args)
        assert r.returncode == 2 and msg in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    r = run('vml-calo-select-gan', '--ckpt-dir', d, '--data', d/'train.h5', '--valid', d/'valid.h5')
    assert r.returncode == 2 and 'no snapshots' in r.stderr


def test_fresh_clears_old_snapshots(trained, tmp_path):
    d, _, _ = trained
    (tmp_path/'snapshots').mkdir(); (tmp_path/'snapshots'/'ema_000999.pt').write_bytes(b'from an earlier run')
    r = run('vml-calo-train-gan', '--data', d/'train.h5', '--max-steps', 6, *TINY, '--ckpt-dir', tmp_path, '--fresh', '--readout', 0)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in (tmp_path/'snapshots').iterdir()) == ['ema_000006.pt']


def test_generate_writes_calochallenge(trained, tmp_path):
    d, _, _ = trained
    cfg = torch.load(d/'a'/'last.pt', weights_only=False)['cfg']
    lo, hi = round(cfg['e_min']*1.2), round(cfg['e_max']/1.2)          # inside the trained range
    assert hi > 5*lo
    spec = f'{lo},{hi}MeV'
    r = run('vml-calo-generate', '--checkpoint', d/'a'/'last.pt', '--out', tmp_path/'g.h5', '--energies', spec, '--n', 40, '--seed', 1)
    assert r.returncode == 0, r.stderr
    sd = read_showers(tmp_path/'g.h5')
    assert sd.showers.shape == (40, 45, 16, 9) and sd.geometry.name == 'ds2'
    assert np.allclose(sd.energies[:2], [lo, hi]) and np.isfinite(sd.showers).all() and (sd.showers >= 0).all()
    tot = sd.flat.sum(1)
    assert tot[sd.energies == hi].mean() > 0.3*(hi/lo)*tot[sd.energies == lo].mean()   # conditioning on energy
    r2 = run('vml-calo-generate', '--checkpoint', d/'a'/'last.pt', '--out', tmp_path/'g2.h5', '--energies', spec, '--n', 40, '--seed', 1)
    assert r2.returncode == 0 and np.array_equal(read_showers(tmp_path/'g2.h5').showers, sd.showers)


def test_onnx_parity_dynamic_batch(trained, tmp_path):
    d, _, _ = trained
    G = load_generator(d/'a'/'last.pt')
    p = export_generator(G, tmp_path/'g.onnx')
    for b in (1, 5, 33): assert generator_parity(G, p, batch=b) < 1e-4


@pytest.mark.parametrize('args, msg', [
    (['--energies', '500GeV'], 'outside the trained range'),
    (['--energies', 'abcGeV'], 'cannot read energy'),
    (['--energies=-5GeV'], 'must satisfy 0 < lo'),
    (['--n', '0'], 'must be >= 1'),
    (['--steps', '8'], "--steps does not apply to a 'gan' checkpoint"),
])
def test_generate_bad_inputs(trained, tmp_path, args, msg):
    d, _, _ = trained
    r = run('vml-calo-generate', '--checkpoint', d/'a'/'last.pt', '--out', tmp_path/'x.h5', *args)
    assert r.returncode == 2 and msg in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path/'x.h5').exists()


def test_bad_checkpoints_and_training_args(tmp_path):
    r = run('vml-calo-generate', '--checkpoint', tmp_path/'missing.pt', '--out', tmp_path/'x.h5')
    assert r.returncode == 2 and 'not found' in r.stderr and len(r.stderr.strip().splitlines()) == 1
    (tmp_path/'junk.pt').write_text('not a checkpoint')
    r = run('vml-calo-generate', '--checkpoint', tmp_path/'junk.pt', '--out', tmp_path/'x.h5')
    assert r.returncode == 2 and 'checkpoint' in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = run('vml-calo-train-gan', '--data', tmp_path/'none.h5')
    assert r.returncode == 2 and '--max-steps or --minutes' in r.stderr
    r = run('vml-calo-train-gan', '--data', tmp_path/'none.h5', '--max-steps', 3)
    assert r.returncode == 2 and 'none.h5' in r.stderr


def test_bench_gan_table():
    r = run('vml-calo-bench-gan', '--batches', '1,4', '--threads', '1', '--repeats', '1', '--no-sim')
    assert r.returncode == 0, r.stderr
    for s in ('torch fp32 b4 t1', 'onnxruntime b1 t1', 'Geant4 10 GeV', 'speedup_50GeV'): assert s in r.stdout
