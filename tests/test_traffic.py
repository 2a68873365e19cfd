"""Traffic wing: simulator conservation, loader rejections, windows without leakage, `vml-traffic` end to end."""
import os, subprocess, sys
from pathlib import Path
import numpy as np, pandas as pd, pytest
from vallecorsa_ml.traffic.data import (COLUMNS, DIRECTIONS, STEP_S, TIME_COL, LinkConfig, DirectionConfig, simulate_link,
                                        load_traffic, save_traffic, utilisation, make_windows, chrono_split)
from vallecorsa_ml.traffic.models import prepare, persistence, scores, lead_times, pr_f1

BIN = Path(sys.executable).parent

@pytest.fixture(scope='module')
def sim():
    return simulate_link(days=3, seed=11)

@pytest.mark.parametrize('kw', [dict(), dict(substeps=1, max_active=5), dict(capacity=1e9), dict(substeps=8, capacity=40e9)])
def test_conservation(kw):
    df = simulate_link(days=2, seed=3, **kw)
    cfg = LinkConfig(**kw)
    assert (df[[f'traffic_{d}' for d in DIRECTIONS]].to_numpy() <= cfg.capacity * STEP_S * (1 + 1e-9)).all()
    assert (df[[f'active_transfers_{d}' for d in DIRECTIONS]].to_numpy() <= cfg.max_active).all()
    for d in DIRECTIONS:
        L = df.attrs['ledger'][d]
        # bits moved by FTS = sizes of completed files + what the unfinished ones moved
        assert L['fts_bits'] == pytest.approx(L['completed_bits'] + L['inflight_moved_bits'], rel=1e-9)
        # the per-step throughput column integrates to the same bits, and traffic = FTS + background
        assert df[f'throughput_{d}'].sum() * STEP_S == pytest.approx(L['fts_bits'], rel=1e-9)
        assert df[f'traffic_{d}'].sum() == pytest.approx(L['fts_bits'] + L['background_bits'], rel=1e-9)
        assert L['completed_files'] <= L['started_files'] <= L['submitted_files']

def test_saturation_happens_and_only_when_loaded():
    df = simulate_link(days=14, seed=0)
    u = utilisation(df)
    assert ((u >= 0.9).mean() > 0.01).all()                  # bursts drive the link into saturation
    quiet = simulate_link(days=7, seed=0, out=DirectionConfig(bursts_per_day=0, rate=0.05), inn=DirectionConfig(bursts_per_day=0, rate=0.05))
    assert (utilisation(quiet) < 0.9).all().all()             # a lightly loaded link never saturates

def _write(df, p):
    df.to_csv(p, index=False); return p

@pytest.mark.parametrize('name,edit,msg', [
    ('unsorted', lambda r: r.iloc[[2, 0, 1] + list(range(3, len(r)))], 'not sorted'),
    ('duplicate', lambda r: pd.concat([r.iloc[:3], r.iloc[2:]]), 'duplicate timestamp'),
    ('gap', lambda r: r.drop(index=[5]), 'gap after'),
    ('nan', lambda r: r.assign(queued_out=r.queued_out.where(r.index != 4)), 'NaN in row 4'),
    ('negative', lambda r: r.assign(traffic_in=r.traffic_in.where(r.index != 3, -1.)), 'negative value'),
    ('unknown', lambda r: r.assign(jitter_ms=1.0), "'jitter_ms': unknown column"),
])
def test_loader_rejects(tmp_path, sim, name, edit, msg):
    raw = sim.iloc[:50].reset_index()
    p = _write(edit(raw), tmp_path/f'{name}.csv')
    with pytest.raises(ValueError, match=msg): load_traffic(p)

def test_loader_roundtrip_and_resample(tmp_path, sim):
    p = save_traffic(sim, tmp_path/'ok.parquet')
    back = load_traffic(p, capacity=10e9)
    np.testing.assert_allclose(back.to_numpy(), sim.to_numpy(), rtol=1e-9)
    raw = sim.iloc[:50].reset_index().drop(index=[7])
    g = load_traffic(_write(raw, tmp_path/'g.csv'), resample=True)
    assert len(g) == 50 and g['traffic_out'].iloc[7] == pytest.approx((sim['traffic_out'].iloc[6] + sim['traffic_out'].iloc[8]) / 2)

def test_windows_no_leakage():
    for delta, h in [(1, 1), (5, 3), (20, 10)]:
        for a, b in chrono_split(500):
            i, o = make_windows(500, delta, h, a, b)
            assert (i.max(1) < o.min(1)).all() and i.min() >= a and o.max() < b
            assert not any(np.intersect1d(x, y).size for x, y in zip(i, o))   # no target inside its own input
            assert (o == i[:, -1:] + np.arange(1, h + 1)).all()                 # targets: the next h steps

def test_scaler_fit_on_train_only(sim):
    wd = prepare(sim, delta=10, horizon=5)
    a, b = wd.bounds[0]
    np.testing.assert_allclose(wd.scaler.mean[0], sim['traffic_out'].iloc[a:b].mean(), rtol=1e-6)
    assert abs(wd.scaler.mean[0] - sim['traffic_out'].mean()) > 0

def test_alarm_scores():
    assert pr_f1(np.array([1, 1, 0, 0], bool), np.array([1, 0, 1, 0], bool))['f1'] == pytest.approx(0.5)
    u = np.zeros(40); u[20:25] = 1.
    r = lead_times(np.isin(np.arange(30), [12, 13]), np.arange(30), u, k=10)
    assert r['onsets'] == 1 and r['lead_median_min'] == pytest.approx(8 * STEP_S / 60)

def _cli(*args, cwd=None):
    env = dict(os.environ, HF_HUB_OFFLINE='1')
    return subprocess.run([str(BIN/'vml-traffic'), *map(str, args)], capture_output=True, text=True, cwd=cwd, env=env, timeout=600)

def test_cli_bad_file(tmp_path, sim):
    raw = sim.iloc[:50].reset_index(); raw.loc[3, 'traffic_out'] = -1
    p = _write(raw, tmp_path/'neg.csv')
    r = _cli(p, '--out', tmp_path/'o')
    assert r.returncode == 2 and r.stderr.count('\n') == 1 and r.stderr.startswith('vml-traffic: error:') and 'negative' in r.stderr
    r = _cli(tmp_path/'nope.csv'); assert r.returncode == 2 and 'file not found' in r.stderr
    r = _cli(tmp_path/'neg.csv', '--model', 'gpt'); assert r.returncode == 2 and 'unknown model' in r.stderr

def test_cli_end_to_end(tmp_path):
    r = _cli(tmp_path/'sim.csv', '--simulate', 3, '--epochs', 1, '--delta', 5, '--horizon', 3, '--out', tmp_path/'o')
    assert r.returncode == 0, r.stderr
    fc = pd.read_csv(tmp_path/'o'/'forecast.csv', parse_dates=[TIME_COL])
    assert len(fc) == 3 and (fc.drop(columns=[TIME_COL]).to_numpy() >= 0).all()
    assert pd.Timestamp(fc[TIME_COL].iloc[0]) == pd.Timestamp('2024-01-04 00:00', tz='UTC')
    assert (tmp_path/'o'/'metrics.json').exists() and 'persistence' in r.stdout

def test_models_beat_persistence_but_not_the_noise_floor():
    "On a noisy sine (known structure) a network beats persistence by the issue's ratio, yet not the Bayes floor (the noise)."
    from vallecorsa_ml.traffic.models import sine_table, make_model, train_model, predict, set_threads
    set_threads(1)
    n, noise = 3000, 0.05
    df = sine_table(n, period=40, noise=noise, seed=1)
    wd = prepare(df, delta=20, horizon=5, calendar=False)
    m = make_model('lstm', len(wd.features), 20, len(wd.targets), 5, wd.target_idx)
    train_model(m, wd.X['train'], wd.Y['train'], wd.X['valid'], wd.Y['valid'], epochs=4, lr=1e-2)
    Y = wd.Y['test']
    mse, pers = scores(predict(m, wd.X['test']), Y)['mse'], scores(persistence(wd), Y)['mse']
    # independent floor: the clean sine is known exactly, only the multiplicative noise is unpredictable
    t = np.arange(n); base = 6e11 * (1 + 0.5 * np.sin(2 * np.pi * t / 40))
    base = np.stack([base, np.roll(base, 7)], 1)
    fut = wd.last['test'][:, None] + np.arange(1, 6)
    floor = np.mean((noise * base[fut] / wd.scaler.std[:2]) ** 2)
    assert mse < 0.5 * pers, (mse, pers)
    assert mse > 0.8 * floor, (mse, floor)          # beating the noise would mean the targets leak into the inputs

def test_oracle_replays_the_future_and_bounds_the_forecasters():
    from vallecorsa_ml.traffic.models import oracle_forecast, fit_ridge, predict_ridge
    df = simulate_link(days=4, seed=2)
    wd = prepare(df, delta=10, horizon=5)
    r = oracle_forecast(wd, days=4, seed=2, stride=10, replay=True)
    np.testing.assert_allclose(r['pred'], wd.Y['test'][r['sel']], atol=1e-4)
    o = oracle_forecast(wd, days=4, seed=2, stride=5, n_paths=16)
    Y = wd.Y['test'][o['sel']]
    mo = scores(o['pred'], Y)['mse'] - o['mc_var']
    assert mo < 0.8 * scores(persistence(wd)[o['sel']], Y)['mse']
    assert mo < scores(predict_ridge(fit_ridge(wd), wd)[o['sel']], Y)['mse']
