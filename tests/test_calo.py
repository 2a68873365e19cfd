"""calo spine: console scripts, bad files, streaming, and the classifier-test calibration on Geant4 halves."""
import os, sys, json, subprocess, textwrap
from pathlib import Path
import numpy as np
import h5py
import pytest

from vallecorsa_ml.calo.geometry import DS2
from vallecorsa_ml.calo.data import ShowerData, read_showers, write_showers, load_g4, g4_path, validate_file
from vallecorsa_ml.calo.features import high_level_features
from vallecorsa_ml.calo.metrics import classifier_test, fpd, separation_power
from vallecorsa_ml.calo.features import hlf_matrix
from vallecorsa_ml.calo.simulate import simulate
from helpers import run, one_line_error



@pytest.fixture(scope='module')
def g4_files(tmp_path_factory):
    d = tmp_path_factory.mktemp('calo')
    g4 = load_g4('electrons', 'train', n=500)
    write_showers(d/'a.h5', g4[:250]); write_showers(d/'b.h5', g4[250:])
    return d, g4


def test_vml_evaluate_end_to_end(g4_files):
    d, g4 = g4_files
    r = run('vml-calo-evaluate', d/'a.h5', d/'b.h5', '--geometry', 'ds2', '--out', d/'ev', '--epochs', '3', '--cls', 'high,low')
    assert r.returncode == 0, r.stderr
    m = json.loads((d/'ev'/'metrics.json').read_text())
    assert m['n_gen'] == m['n_ref'] == 250 and m['geometry'] == 'ds2'
    assert m['units']['gen']['units'] == m['units']['ref']['units'] == 'raw'     # our files record their energy convention
    # two halves of the same Geant4 sample: each AUC is 0.5 within its statistical spread (Hanley-McNeil at AUC 0.5,
    # n_val/2 showers per class: sigma = sqrt((n1 + n2 + 1)/(12 n1 n2)), ~0.064 here); 4 sigma leaves 1 false alarm in 10^4
    for c in ('cls_high', 'cls_low'):
        n1 = n2 = m[c]['n_val']//2
        sigma = np.sqrt((n1 + n2 + 1)/(12*n1*n2))
        assert abs(m[c]['auc'] - 0.5) < 4*sigma, (c, m[c], sigma)
    assert np.isfinite(m['fpd']) and m['sep_mean'] < 0.5
    # the separation power of E_tot/E_inc, recomputed by hand from the CaloChallenge definition: cells / sampling fraction
    # (float32), the 15.15 keV read-out threshold, E_tot/E_inc in float32, 100 bins over 0.5-1.5, 1/2 sum (p-q)^2/(p+q)
    def e_ratio(f, sf):
        with h5py.File(f) as h:
            x = (h['showers'][:].astype(np.float64)/sf).astype(np.float32)
            e = h['incident_energies'][:].reshape(-1).astype(np.float32)
        x = np.where(x < np.float32(0.5e-3/0.033), np.float32(0), x)
        return x.sum(-1)/e
    edges = np.linspace(0.5, 1.5, 101)
    hg, hr = (np.histogram(e_ratio(f, m['units'][w]['sampling_fraction']), edges)[0] for f, w in ((d/'a.h5', 'gen'), (d/'b.h5', 'ref')))
    p, q = hg/hg.sum(), hr/hr.sum()
    k = p + q > 0
    by_hand = 0.5*np.sum((p[k] - q[k])**2/(p[k] + q[k]))
    assert abs(m['separation_power']['E_ratio'] - by_hand) < 1e-9, (m['separation_power']['E_ratio'], by_hand)
    for f in ('index.html', 'profiles.png', 'average_shower.png', 'E_layer.png'):
        assert (d/'ev'/f).stat().st_size > 1000, f
    assert 'cls_high_auc' in (d/'ev'/'index.html').read_text()


@pytest.mark.parametrize('make,args,msg', [
    (None, ['missing.h5'], 'missing.h5: file not found'),
    ('text', [], 'not an HDF5 file or truncated'),
    ('nokey', [], "'incident_energies': missing key"),
    ('nan', [], "'showers': contains NaN or inf"),
    ('neg', [], "'showers': contains negative energies"),
    ('nmis', [], "'incident_energies': shape (3, 1) does not match 4 showers"),
    (None, ['--geometry', 'ds3'], '6480 cells do not match geometry ds3'),
    (None, ['--geometry', 'ds9'], "unknown geometry 'ds9'"),
    (None, ['--cls', 'mid'], "unknown classifier test 'mid'"),
])
def test_vml_evaluate_bad_input(g4_files, make, args, msg):
    d, _ = g4_files
    gen = d/'a.h5'
    if make == 'text':
        gen = d/'t.h5'; gen.write_text('not hdf5')
    elif make:
        gen = d/f'{make}.h5'
        sh, e = np.ones((4, 6480), np.float32), np.full((4, 1), 1e4, np.float32)
        if make == 'nan': sh[1, 2] = np.nan
        if make == 'neg': sh[1, 2] = -1
        with h5py.File(gen, 'w') as f:
            f['showers'] = sh
            if make != 'nokey': f['incident_energies'] = e[:3] if make == 'nmis' else e
    if args and args[0] == 'missing.h5': gen, args = d/'missing.h5', []
    r = run('vml-calo-evaluate', gen, d/'b.h5', '--out', d/'bad', '--epochs', '1', *args)
    one_line_error(r, 'vml-calo-evaluate', msg)


def test_streaming_100k_rss(tmp_path):
    "Iterate over a 100k-shower dataset-2 file (2.6 GB of float32 uncompressed) in chunks with RSS <= 2 GB."
    p = tmp_path/'big.h5'
    rng = np.random.default_rng(0)
    n, chunk = 100_000, 5000
    with h5py.File(p, 'w') as f:
        s = f.create_dataset('showers', (n, 6480), np.float32, chunks=(100, 6480), compression='gzip', compression_opts=1)
        e = f.create_dataset('incident_energies', (n, 1), np.float32)
        for i in range(0, n, chunk):
            blk = np.zeros((chunk, 6480), np.float32)
            blk[np.arange(chunk), rng.integers(0, 6480, chunk)] = rng.uniform(1, 10, chunk)
            s[i:i + chunk] = blk; e[i:i + chunk] = 1e4
    code = textwrap.dedent(f"""
        import resource, numpy as np
        from vallecorsa_ml.calo.data import iter_showers
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss/1024
        n = tot = 0
        for c in iter_showers({str(p)!r}, chunk_size=5000):
            n += len(c); tot += float(c.showers.sum(dtype=np.float64))
        print(n, tot, base, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss/1024)
    """)
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    n, tot, base_mb, rss_mb = r.stdout.split()
    assert int(n) == 100_000
    with h5py.File(p) as f: ref = sum(float(f['showers'][i:i + 10000].sum(dtype=np.float64)) for i in range(0, 100_000, 10000))
    assert abs(float(tot) - ref) < 1e-6*ref
    print(f"streamed {n} showers, peak RSS {float(rss_mb):.0f} MB ({float(base_mb):.0f} MB after the imports)")
    assert float(rss_mb) < 2048, rss_mb
    # what the streaming itself adds: one 130 MB chunk and its temporaries (measured ~290 MB), far below the 2.6 GB of a
    # whole-file read. The import's own RSS (torch) varies by ~200 MB between venvs of the same wheels, so it is not counted.
    assert float(rss_mb) - float(base_mb) < 1024, (base_mb, rss_mb)


def test_write_read_roundtrip_exact(tmp_path):
    g4 = load_g4('photons', 'train', n=200)
    write_showers(tmp_path/'p.h5', g4)
    back = read_showers(tmp_path/'p.h5')
    assert np.array_equal(back.showers, g4.showers) and np.array_equal(back.energies, g4.energies)
    assert np.array_equal(back.theta, g4.theta) and np.array_equal(back.phi, g4.phi)
    assert validate_file(tmp_path/'p.h5')['angles']


def test_cls_high_geant4_halves():
    "cls-high of two halves of the Geant4 electrons (seeds 101 and 102): AUC within 0.5 ± 0.03."
    g4 = load_g4('electrons', 'all')      # Geant4 against Geant4: nothing is fitted to these rows
    a, b = g4[:4000], g4[4000:]
    # the official settings (50 epochs, batch 1000, lr 2e-4); one thread (default), ~20 s per test on 2 cores
    r = classifier_test(b, a, 'high', epochs=50, seed=0)
    print('Geant4 halves, cls-high:', r)
    assert abs(r['auc'] - 0.5) < 0.03, r
    assert abs(r['jsd']) < 0.02, r
    # ... and the same test catches a 30 % energy-scale error (measured AUC ~0.70). The official classifier is built for
    # ~1e5 showers: with 4 000 per sample a 10 % scale error is NOT caught (AUC 0.51), see nbs/14_calo.metrics.ipynb.
    r2 = classifier_test(ShowerData(b.showers*np.float32(1.3), b.energies, geometry=DS2), a, 'high', epochs=50, seed=0)
    print('Geant4 x1.3 vs Geant4, cls-high:', r2)
    assert r2['auc'] > 0.6, r2


def test_fpd_self_zero_and_shift():
    "FPD of a sample with itself extrapolates to 0; doubling the layer energies (log10 shift 0.3) is far above that."
    g4 = load_g4('electrons', n=2000)
    h = hlf_matrix(high_level_features(g4))
    v, err = fpd(h, h, 1000, 2000, num_batches=10, num_points=10)
    assert v < max(3*err, 1e-3), (v, err)
    h2 = h.copy(); h2[:, 1:46] += np.log10(2.0)
    v2, err2 = fpd(h, h2, 1000, 2000, num_batches=10, num_points=10)
    assert v2 > v + 3*max(err, err2), (v, err, v2, err2)


def test_cls_high_geant4_vs_simulator():
    "Geant4 vs the built-in simulator: AUC clearly above the Geant4-vs-Geant4 value."
    g4 = load_g4('electrons', 'train', n=4000)
    sim = simulate(g4.energies, particle='e-', geometry='ds2', seed=3)
    r = classifier_test(sim, g4, 'high', epochs=50, seed=0)
    print('Geant4 vs built-in simulator, cls-high:', r)
    assert r['auc'] > 0.6, r
