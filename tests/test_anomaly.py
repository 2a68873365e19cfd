"Console scripts, bad files and an end-to-end pass of the anomaly wing (events → autoencoder → kernel machines)."
import subprocess, sys, json
from pathlib import Path
import numpy as np, h5py, pytest

from vallecorsa_ml.core import VMLInputError
from vallecorsa_ml.anomaly.events import (load_events, save_events, generate_events, sample_files, EVENT_KEYS, PROCESSES)

BIN = Path(sys.executable).parent

def run(*args):
    return subprocess.run([str(BIN / args[0]), *args[1:]], capture_output=True, text=True, timeout=600)

def test_vml_events_generates_a_valid_file(tmp_path):
    out = tmp_path / 'w.h5'
    r = run('vml-events', '--process', 'wprime', '--n', '30', '--out', str(out), '--seed', '3', '--quiet')
    assert r.returncode == 0, r.stderr
    data, meta = load_events(out)
    assert data['constituents'].shape == (30, 2, 100, 3)
    assert meta['process'] == 'wprime' and 'Wprime:coup2WZ = 1.' in json.loads(meta['settings'])
    # boosted W/Z jets: most soft-drop masses in the 65-105 GeV window, two-prong τ21; mjj near 3.5 TeV
    sd = data['jet_features'][:, :, 1]
    assert np.mean((sd > 65) & (sd < 105)) > 0.5
    assert np.median(data['jet_features'][:, :, 2]) < 0.5
    assert abs(np.median(data['mjj']) - 3500) < 500
    # constituents: pT sorted descending, zero padding after the last particle, Δη/Δφ inside the jet
    pt = data['constituents'][..., 0]
    assert np.all(np.diff(pt, axis=-1) <= 0)
    dr = np.hypot(data['constituents'][..., 1], data['constituents'][..., 2])[pt > 0]
    assert dr.max() < 1.0

@pytest.mark.parametrize('args,msg', [(['--process', 'zprime'], 'unknown process'), (['--n', '0'], 'positive integer'),
                                      (['--workers', '0'], 'workers')])
def test_vml_events_bad_input(tmp_path, args, msg):
    r = run('vml-events', *args, '--out', str(tmp_path / 'x.h5'), '--quiet')
    assert r.returncode == 2 and msg in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr

def _write(path, data, drop=None, replace=None):
    with h5py.File(path, 'w') as f:
        for k in EVENT_KEYS:
            if k == drop: continue
            f[k] = replace[1] if replace and replace[0] == k else data[k]
    return path

def test_bad_event_files(tmp_path):
    data, _ = load_events(sample_files('smoke')['qcd'])
    data = {k: v[:5] for k, v in data.items()}
    with pytest.raises(VMLInputError, match="'images': missing key"):
        load_events(_write(tmp_path / 'a.h5', data, drop='images'))
    with pytest.raises(VMLInputError, match="'constituents': shape"):
        load_events(_write(tmp_path / 'b.h5', data, replace=('constituents', data['constituents'][:, :, :, :2])))
    with pytest.raises(VMLInputError, match="'mjj': 4 events"):
        load_events(_write(tmp_path / 'c.h5', data, replace=('mjj', data['mjj'][:4])))
    (tmp_path / 'd.h5').write_text('not hdf5')
    with pytest.raises(VMLInputError, match='not an HDF5 file'):
        load_events(tmp_path / 'd.h5')

def test_vml_anomaly_bench_prints_a_table():
    r = run('vml-anomaly-bench', '--n-events', '3000', '--n-train', '60', '--n-kernel', '40', '--repeats', '1')
    assert r.returncode == 0, r.stderr
    assert 'ocsvm_rbf score' in r.stdout and 'quantum kernel' in r.stdout and '| case |' in r.stdout
    r = run('vml-anomaly-bench', '--n-events', '0')
    assert r.returncode == 2 and 'vml-anomaly-bench: error:' in r.stderr

def test_end_to_end_smoke():
    import torch
    from vallecorsa_ml.anomaly.autoencoder import train_autoencoder, ae_scores
    from vallecorsa_ml.anomaly.kernel import OneClassScorer, flat_latent, fold_aucs
    files = sample_files('smoke')
    qcd, _ = load_events(files['qcd']); sig, _ = load_events(files['wprime'])
    model, hist = train_autoencoder(qcd['constituents'][:100], latent=4, epochs=1, bs=64)
    assert len(hist) == 1 and np.isfinite(hist[0]['train_loss'])
    lat_q = flat_latent(ae_scores(model, qcd['constituents'][100:300])['latent'])
    lat_s = flat_latent(ae_scores(model, sig['constituents'][:100])['latent'])
    assert lat_q.shape == (200, 8)
    for kind in ('rbf', 'quantum'):
        sc = OneClassScorer(kind).fit(lat_q[:100])
        a = fold_aucs(sc.score(lat_q[100:]), sc.score(lat_s))
        assert a.shape == (5,) and np.all((a >= 0) & (a <= 1))
    with pytest.raises(VMLInputError, match='constituents must have shape'):
        ae_scores(model, qcd['constituents'][:3, 0])
