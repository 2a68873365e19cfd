"Console scripts, bad files and an end-to-end pass of the anomaly wing (events → autoencoder → kernel machines)."
import sys, json
from pathlib import Path
import numpy as np, h5py, pytest

from vallecorsa_ml.core import VMLInputError
from vallecorsa_ml.anomaly.events import (load_events, save_events, generate_events, sample_files, EVENT_KEYS, PROCESSES)

from helpers import run, one_line_error

def test_vml_anomaly_events_generates_a_valid_file(tmp_path):
    out = tmp_path / 'w.h5'
    r = run('vml-anomaly-events', '--process', 'wprime', '--n', '30', '--out', str(out), '--seed', '3', '--quiet')
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
def test_vml_anomaly_events_bad_input(tmp_path, args, msg):
    r = run('vml-anomaly-events', *args, '--out', str(tmp_path / 'x.h5'), '--quiet')
    one_line_error(r, 'vml-anomaly-events', msg)

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
    one_line_error(r, 'vml-anomaly-bench', "'--n-events': must be >= 1")

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
        sb, ss = sc.score(lat_q[100:]), sc.score(lat_s)
        a = fold_aucs(sb, ss)
        # each fold's AUC by its definition, P(signal score > background score) + ½ P(equal), on folds of 20 + 20 events
        want = [np.mean((ss[i * 20:(i + 1) * 20, None] > sb[None, i * 20:(i + 1) * 20])
                        + 0.5 * (ss[i * 20:(i + 1) * 20, None] == sb[None, i * 20:(i + 1) * 20])) for i in range(5)]
        np.testing.assert_allclose(a, want, rtol=0, atol=1e-12)
    with pytest.raises(VMLInputError, match='constituents must have shape'):
        ae_scores(model, qcd['constituents'][:3, 0])

# ---- independent computations: each of these recomputes a stored or returned value another way, so it can fail ----

def test_units_are_gev_and_a_mev_file_is_refused(tmp_path):
    data, meta = load_events(sample_files('smoke')['wprime'])
    data = {k: v[:5] for k, v in data.items()}
    fn = save_events(tmp_path / 'w.h5', data, {k: v for k, v in meta.items() if k not in ('units', 'angle_units')})
    with h5py.File(fn) as f:
        assert f.attrs['units'] == 'GeV' and f.attrs['angle_units'] == 'rad'
        assert f['mjj'].attrs['units'] == 'GeV' and 'pT [GeV]' in f['constituents'].attrs['units']
    with h5py.File(fn, 'a') as f: f.attrs['units'] = 'MeV'
    with pytest.raises(VMLInputError, match='works in GeV'):
        load_events(fn)

@pytest.mark.parametrize('proc', list(PROCESSES))
def test_stored_jets_close_physically(proc):
    "mjj recomputed from the jets' (pT, y, φ, m); Σ constituent pT ≥ jet pT; image = constituents inside the window."
    d, _ = load_events(sample_files('smoke')[proc])
    pt, y, phi = (d['jet_kinematics'][..., i].astype(np.float64) for i in range(3))
    m = d['jet_features'][..., 0].astype(np.float64)
    mt = np.sqrt(pt ** 2 + m ** 2)
    E, px, py, pz = (mt * np.cosh(y)).sum(1), (pt * np.cos(phi)).sum(1), (pt * np.sin(phi)).sum(1), (mt * np.sinh(y)).sum(1)
    mjj = np.sqrt(np.maximum(E ** 2 - px ** 2 - py ** 2 - pz ** 2, 0))
    np.testing.assert_allclose(mjj, d['mjj'], rtol=2e-3, atol=1.0)
    assert np.all(pt > 200) and np.all(np.abs(d['jet_kinematics'][..., 1]) < 2.6)      # the jet selection (pT > 200 GeV, |η| < 2.5)
    c = d['constituents']; full = d['jet_features'][..., 3] <= 100
    ratio = c[..., 0].sum(-1)[full] / pt[full]
    assert ratio.min() > 1 - 1e-4 and np.median(ratio) < 1.05
    inside = (np.abs(c[..., 1]) < 0.8) & (np.abs(c[..., 2]) < 0.8)
    np.testing.assert_allclose(d['images'].sum((-1, -2)), (c[..., 0] * inside).sum(-1), rtol=1e-4)
    # jet mass ≥ soft-drop mass (grooming only removes particles)
    assert np.all(d['jet_features'][..., 1] <= d['jet_features'][..., 0] * (1 + 1e-4) + 1e-3)
    # τ21 recomputed from the stored constituents of the jets that keep all of theirs: massless four-vectors at
    # y = Δy + y_jet, φ = Δφ + φ_jet (the hadron masses, which the file does not keep, move τ21 by ~1e-3)
    import fastjet as fj
    from vallecorsa_ml.anomaly.events import tau21
    diff = []
    for e, j in zip(*np.nonzero(full)):
        k = c[e, j][c[e, j, :, 0] > 0].astype(np.float64)
        yy, ff = k[:, 1] + y[e, j], k[:, 2] + phi[e, j]
        pj = [fj.PseudoJet(p * np.cos(f), p * np.sin(f), p * np.sinh(r), p * np.cosh(r)) for p, r, f in zip(k[:, 0], yy, ff)]
        diff.append(abs(tau21(pj) - d['jet_features'][e, j, 2]))
    assert len(diff) > 20 and np.median(diff) < 0.01 and np.quantile(diff, 0.9) < 0.05, (np.median(diff), np.quantile(diff, 0.9))

def test_qcd_has_no_boson_mass_peak_but_signals_do():
    files = sample_files('smoke')
    frac = {}
    for p in ('qcd', 'qcd_high', 'graviton_narrow', 'wprime'):
        sd = load_events(files[p])[0]['jet_features'][..., 1]
        frac[p] = np.mean((sd > 65) & (sd < 105))
    assert frac['graviton_narrow'] > 0.5 and frac['wprime'] > 0.5
    assert max(frac['qcd'], frac['qcd_high']) < 0.25

def test_fold_aucs_equal_mann_whitney():
    from scipy.stats import mannwhitneyu
    from vallecorsa_ml.anomaly.kernel import fold_aucs
    rng = np.random.default_rng(1)
    b, s = rng.normal(0, 1, 1000), rng.normal(0.5, 1.3, 1000)
    got = fold_aucs(b, s, k=5)
    want = [mannwhitneyu(s[i * 200:(i + 1) * 200], b[i * 200:(i + 1) * 200]).statistic / 200 ** 2 for i in range(5)]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)

def test_quantum_kernel_one_qubit_closed_form():
    "One qubit, no entangler, one repetition: |ψ(x)⟩ = U(x0, x1, 0) U(π/2, x0, x1)|0⟩ written out by hand."
    from vallecorsa_ml.anomaly.kernel import fidelity_kernel
    def u(t, p, l):
        return np.array([[np.cos(t / 2), -np.exp(1j * l) * np.sin(t / 2)], [np.exp(1j * p) * np.sin(t / 2), np.exp(1j * (p + l)) * np.cos(t / 2)]])
    def psi(x): return u(x[0], x[1], 0) @ u(np.pi / 2, x[0], x[1]) @ np.array([1, 0])
    X = np.array([[0.3, 0.9], [2.2, 2.5], [0.0, 0.0], [1.0, -1.4]])
    want = np.abs(np.array([[np.vdot(psi(a), psi(b)) for b in X] for a in X])) ** 2
    np.testing.assert_allclose(fidelity_kernel(X, reps=1, entanglement='none'), want, atol=1e-12)
    assert want[~np.eye(len(X), dtype=bool)].min() < 0.8     # distinguishable points: the check is not trivially 1 everywhere

def test_protocol_ranges_are_disjoint_and_sized():
    from vallecorsa_ml.anomaly.events import event_ranges, sample_sizes, anomaly_protocol, BACKGROUNDS, SIGNALS
    for prof in ('smoke', 'quick', 'full'):
        P, R, n = anomaly_protocol(prof), event_ranges(prof), sample_sizes(prof)
        for b in BACKGROUNDS:
            r = R[b]
            assert r['ae'].start == 0 and r['ae'].stop == r['km'].start and r['km'].stop == r['test'].start
            assert (r['km'].stop - r['km'].start, r['test'].stop - r['test'].start) == (P['n_km'], P['n_test'])
            assert n[b] == P['n_ae'] + P['n_km'] + P['n_test']
        assert all(n[s] == P['n_test'] for s in SIGNALS)
    assert anomaly_protocol('quick')['n_km'] == 600                 # the reference's kernel-machine training size
    smoke = {p: len(load_events(f, keys=('mjj',))[0]['mjj']) for p, f in sample_files('smoke').items()}
    assert all(smoke[p] >= k for p, k in sample_sizes('smoke').items()), smoke

@pytest.mark.parametrize('module,call', [
    ('pennylane', lambda: __import__('vallecorsa_ml.anomaly.kernel', fromlist=['x']).quantum_states(np.zeros((2, 4)))),
    ('fastjet', lambda: __import__('vallecorsa_ml.anomaly.events', fromlist=['x']).tau21([1, 2])),
    ('pythia8mc', lambda: __import__('vallecorsa_ml.anomaly.events', fromlist=['x']).generate_events('qcd', 1, workers=1, progress=False)),
])
def test_missing_extra_names_it(monkeypatch, module, call):
    "Without the package (hidden from the import system) the call fails with one line naming the 'anomaly' extra."
    monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(ImportError, match=rf"^{module} is not installed: pip install 'vallecorsa_ml\[anomaly\]'$"):
        call()
