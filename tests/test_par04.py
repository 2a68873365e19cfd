"""Geant4 Par04 export (issue: into Geant4): `vml-calo-export` writes a file that ONNX Runtime loads with Par04's single
(1, 8) input, whose emulated Par04 call deposits a plausible shower; the TorchScript file takes Par04's tensor[8];
bad arguments end in one line."""
import math
import numpy as np
import pytest
import torch
from helpers import run as _run, one_line_error

from vallecorsa_ml.calo.data import SAMPLING_FRACTION
from vallecorsa_ml.calo.par04 import par04_session, par04_input, emulate_par04, par04_metadata

EXPORT, BENCH = 'vml-calo-export', 'vml-calo-bench-par04'


def run(*args):
    return _run(*args, threads=1, timeout=900)


def sampler_par04(x, noise, layer_noise, energy='deposited'):
    "The PyTorch sampler of the shipped model on Par04 input rows `x` and the given noise → (N, 6480) MeV in Par04's (r, φ, z) order."
    from vallecorsa_ml.calo.pretrained import load_pretrained
    G = load_pretrained('dit-ds2').model
    e = G.sample(x[:, 0].astype(np.float64)*1000, x[:, 2], x[:, 1], detector='g4_photons', steps=16, return_torch=True,
                 noise=(torch.as_tensor(noise), torch.as_tensor(layer_noise))).numpy().astype(np.float64)
    e = e.transpose(0, 3, 2, 1).reshape(len(x), -1)
    return e/SAMPLING_FRACTION if energy == 'deposited' else e


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
    d = tmp_path_factory.mktemp('par04')
    r = run(EXPORT, '--model', 'dit-ds2', '--format', 'par04-onnx', '--out', d/'cd.onnx', '--seed', '3')
    assert r.returncode == 0, r.stderr
    return d, r.stdout


def test_export_loads_with_one_input_and_deposits_a_shower(exported):
    d, out = exported
    import onnx
    m = onnx.load(str(d/'cd.onnx'))
    onnx.checker.check_model(m)
    s = par04_session(d/'cd.onnx')
    assert [(i.name, i.shape, i.type) for i in s.get_inputs()] == [('conditions', [1, 8], 'tensor(float)')]
    assert s.get_outputs()[0].shape == [1, 6480]
    assert '/Par04/inference/setModelType CaloDiT-2' in out and '/Par04/inference/setNbOfZCells 45' in out
    meta = par04_metadata(d/'cd.onnx')
    assert meta['energy'] == 'deposited' and meta['seed'] == '3' and meta['source'] == 'dit-ds2'
    x = par04_input([50e3], 1.3, 0.4)
    E, noise, layer_noise = emulate_par04(s, x, return_noise=True)
    # deposited energy ≈ E: the silicon response of the Geant4 showers (sum/E ≈ 0.032) over the sampling fraction
    assert 0.9 < E.sum()/50e3 < 1.1, E.sum()
    assert 100 < (E > 0).sum() < 6480
    # the file is the PyTorch sampler: same noise, same cells (Par04's order, deposited energy, its threshold)
    ref = sampler_par04(x, noise, layer_noise)
    ref = np.where(ref > 0.0005, ref, 0.0)
    np.testing.assert_allclose(E.sum(1), ref.sum(1), rtol=1e-4)
    assert ((E > 0) != (ref > 0)).mean() <= 1e-3


def test_seeded_file_is_reproducible_across_sessions(exported):
    d, _ = exported
    x = np.repeat(par04_input([30e3], math.pi/2, 0.0), 2, 0)
    a, b = emulate_par04(par04_session(d/'cd.onnx'), x), emulate_par04(par04_session(d/'cd.onnx'), x)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a[0], a[1])          # successive calls in one session differ


def test_torchscript_takes_par04s_tensor8(tmp_path):
    r = run(EXPORT, '--format', 'par04-torchscript', '--out', tmp_path/'cd.pt', '--energy', 'active')
    assert r.returncode == 0, r.stderr
    ts = torch.jit.load(str(tmp_path/'cd.pt'))
    x = torch.tensor([20., 0.0, math.pi/2, 1, 0, 0, 0, 0])
    torch.manual_seed(5)
    with torch.no_grad(): y = ts(x)
    assert tuple(y.shape) == (1, 6480)
    # active (silicon) energy in GeV: about the sampling fraction of 20 GeV
    assert 0.8*SAMPLING_FRACTION*20 < float(y.sum()) < 1.2*SAMPLING_FRACTION*20
    # LibTorch's generator, seeded: the sampler's noise, drawn in the sampler's order (shower, then stage 1)
    torch.manual_seed(5)
    noise, layer_noise = torch.randn(1, 45, 16, 9), torch.randn(1, 46)
    ref = sampler_par04(x[None].numpy(), noise, layer_noise, energy='active')/1000
    np.testing.assert_allclose(y.numpy(), ref, rtol=1e-5, atol=1e-9)
    assert par04_metadata(tmp_path/'cd.pt')['energy'] == 'active'


@pytest.mark.parametrize('kw,text', [
    (dict(format='lwtnn', out='x.onnx'), "unknown format 'lwtnn'"),
    (dict(model='3dgan-ds2', out='x.onnx'), 'needs the diffusion model'),
    (dict(model='no-such-model', out='x.onnx'), 'neither a shipped model'),
    (dict(), "'--out': required"),
    (dict(out='.'), 'is a directory'),
    (dict(out='x.onnx', seed=-1), "'--seed': must be >= 0"),
    (dict(out='x.onnx', energy='si'), "'deposited' or 'active'"),
    (dict(out='x.onnx', steps=1), 'steps in [2, 25]'),
])
def test_vml_export_bad_input(tmp_path, monkeypatch, capsys, kw, text):
    "In process (the console script's own function and error handler; the subprocess path is tested below)."
    from vallecorsa_ml.calo.par04 import vml_export
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e: vml_export(**kw)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith('vml-calo-export: error:') and text in err and len(err.splitlines()) == 1, err
    assert not (tmp_path/'x.onnx').exists()


def test_vml_export_refuses_to_overwrite(tmp_path):
    f = tmp_path/'cd.onnx'
    f.write_bytes(b'previous')
    one_line_error(run(EXPORT, '--out', f), 'vml-calo-export', 'exists; pass --force')
    assert f.read_bytes() == b'previous'


def test_vml_bench_par04_bad_input():
    one_line_error(run(BENCH, '--n', '0'), 'vml-calo-bench-par04', "'--n': must be >= 1")
    one_line_error(run(BENCH, '--energy', '5000'), 'vml-calo-bench-par04', 'must be in [1, 1000] GeV')
