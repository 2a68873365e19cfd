"Diffusion transformer (issue 5): console scripts, bad input, end to end on a few shipped Geant4 showers."
import math, subprocess, sys
from pathlib import Path
import numpy as np
import pytest
import torch

BIN = Path(sys.executable).parent


def _run(*args, cwd=None):
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, cwd=cwd, timeout=600)


def test_cli_bad_input(tmp_path):
    r = _run(BIN/'vml-train-dit', '--ckpt', tmp_path/'none.pth', '--resume')
    assert r.returncode == 2 and r.stderr.strip().startswith('vml-train-dit: error:') and 'nothing to resume' in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    r = _run(BIN/'vml-train-dit', '--ckpt', tmp_path/'x.pth', '--patch', '4,4,9')
    assert r.returncode == 2 and 'does not divide' in r.stderr
    r = _run(BIN/'vml-generate', '--checkpoint', tmp_path/'missing.pth', '--out', tmp_path/'o.h5')
    assert r.returncode == 2 and 'checkpoint not found' in r.stderr
    bad = tmp_path/'bad.pth'; bad.write_text('not a checkpoint')
    r = _run(BIN/'vml-generate', '--checkpoint', bad, '--out', tmp_path/'o.h5')
    assert r.returncode == 2 and 'not a readable checkpoint' in r.stderr


def test_train_resume_generate_end_to_end(tmp_path):
    ck = tmp_path/'dit.pth'
    common = ['--ckpt', ck, '--dim', 32, '--depth', 1, '--heads', 2, '--electrons', 48, '--photons', 48, '--pbwo4', 16,
              '--bs', 16, '--quiet']
    r = _run(BIN/'vml-train-dit', '--epochs', 1, *common)
    assert r.returncode == 0, r.stderr
    c1 = torch.load(ck, weights_only=False)
    assert c1['epoch'] == 1 and c1['model_type'] == 'dit'
    # a second run with --resume continues to the same number of epochs: nothing left to do, weights unchanged
    r = _run(BIN/'vml-train-dit', '--epochs', 1, '--resume', *common)
    assert r.returncode == 0, r.stderr
    c2 = torch.load(ck, weights_only=False)
    assert all(torch.equal(c1['model'][k], c2['model'][k]) for k in c1['model'])
    # stage 1 retrained alone, with the response coordinate: stage 2 (the EMA weights) kept, written back to the checkpoint
    r = _run(BIN/'vml-train-dit', '--stage1-only', '--minutes', 0.05, *common)
    assert r.returncode == 0, r.stderr
    c3 = torch.load(ck, weights_only=False)
    assert c3['config']['layer_total'] and c3['meta']['stage1_steps'] > 0 and c3['opt'] is None
    assert all(torch.equal(c2['ema'][k], c3['model'][k]) for k in c2['ema']
               if not k.startswith(('layer_net.', 'total_tf.')) and k != 'v_max')
    out = tmp_path/'gen.h5'
    gen = lambda o, *a: _run(BIN/'vml-generate', '--checkpoint', ck, '--out', o, *a)
    r = gen(out, '--energies', '20-60GeV', '--n', 6, '--theta', '1.9-2.1', '--steps', 4, '--detector', 'g4_photons')
    assert r.returncode == 0, r.stderr
    from vallecorsa_ml.calo.data import read_showers
    sd = read_showers(out)
    assert len(sd) == 6 and sd.showers.shape[1:] == (45, 16, 9)
    assert np.all((sd.energies >= 20e3 - 1e-3) & (sd.energies <= 60e3 + 1e-3))
    assert np.all((sd.theta >= 1.9) & (sd.theta <= 2.1))
    nz = sd.showers[sd.showers > 0]
    assert nz.size == 0 or nz.min() >= 5e-4          # nothing below the cell threshold
    # the same command again gives identical showers (deterministic sampler, fixed seed)
    out2 = tmp_path/'gen2.h5'
    r = gen(out2, '--energies', '20-60GeV', '--n', 6, '--theta', '1.9-2.1', '--steps', 4, '--detector', 'g4_photons')
    assert r.returncode == 0, r.stderr
    assert np.array_equal(read_showers(out2).showers, sd.showers)
    # another detector id gives other showers from the same noise
    out3 = tmp_path/'gen3.h5'
    r = gen(out3, '--energies', '20-60GeV', '--n', 6, '--theta', '1.9-2.1', '--steps', 4, '--detector', 'pbwo4_photons')
    assert r.returncode == 0, r.stderr
    assert not np.array_equal(read_showers(out3).showers, sd.showers)
    r = gen(out2, '--energies', 'abcGeV', '--n', 2)
    assert r.returncode == 2 and 'cannot read energy' in r.stderr
    r = gen(out2, '--detector', 'lead', '--n', 2)
    assert r.returncode == 2 and 'unknown detector' in r.stderr
    r = gen(out2, '--steps', 40, '--n', 2)
    assert r.returncode == 2 and 'steps' in r.stderr


def test_phi_periodic_and_mirror():
    from vallecorsa_ml.calo.diffusion import CaloDiT, DiTConfig
    m = CaloDiT(DiTConfig(dim=32, depth=1, heads=2, patch=(5, 2, 9))).eval()
    pe = m.pos_embedding().reshape(9, 8, 1, 32)
    # the phi part of the embedding of token j equals the embedding of the angle of token j shifted by 2 pi
    phis = m.token_phi
    torch.testing.assert_close(m.pos_phi(phis), m.pos_phi(phis + 2*math.pi), atol=1e-5, rtol=0)
    # neighbouring sectors across the -pi/+pi seam are as alike as any other neighbours (rotation invariance of Fourier features)
    f = m.pos_phi(phis)
    d = torch.stack([(f[(j + 1) % 8] - f[j]).norm() for j in range(8)])
    from vallecorsa_ml.calo.diffusion import phi_fourier
    g = phi_fourier(phis, 4)
    dg = torch.stack([(g[(j + 1) % 8] - g[j]).norm() for j in range(8)])
    torch.testing.assert_close(dg, dg[0].expand(8), atol=1e-5, rtol=0)   # features: equal steps all round, seam included
    assert pe.shape == (9, 8, 1, 32) and torch.isfinite(d).all()


def test_onnx_parity(tmp_path):
    from vallecorsa_ml.calo.diffusion import CaloDiT, DiTConfig, export_dit_onnx, dit_onnx_parity
    torch.manual_seed(0)
    m = CaloDiT(DiTConfig(dim=32, depth=2, heads=2))
    for p in m.parameters():                        # non-trivial weights (adaLN-Zero starts at zero)
        torch.nn.init.normal_(p, std=0.05)
    p = export_dit_onnx(m, tmp_path/'d.onnx')
    assert dit_onnx_parity(m, p, batch=3) <= 1e-4


def test_two_stage_onnx_parity_and_conditions(tmp_path):
    "A two-stage model: both ONNX graphs match PyTorch; the shower denoiser takes 4 + 45 condition columns and says so."
    from vallecorsa_ml.calo.diffusion import CaloDiT, DiTConfig, export_dit_onnx, dit_onnx_parity, make_conditions
    from vallecorsa_ml.core import VMLInputError
    torch.manual_seed(0)
    m = CaloDiT(DiTConfig(dim=32, depth=2, heads=2, layer_model=True))
    for p in m.parameters(): torch.nn.init.normal_(p, std=0.05)
    for part in ('shower', 'layers'):
        f = export_dit_onnx(m, tmp_path/f'{part}.onnx', part=part)
        assert dit_onnx_parity(m, f, batch=3, part=part) <= 1e-4
    x, s, c = m.example_inputs(2)
    with pytest.raises(VMLInputError, match='takes 49'): m(x, s, c[:, :4])
    full = m.with_layers(make_conditions([1e4, 5e4], detector=1), seed=0)
    assert full.shape == (2, 49) and torch.equal(full, m.with_layers(make_conditions([1e4, 5e4], detector=1), seed=0))
    with pytest.raises(VMLInputError, match='unknown part'): export_dit_onnx(m, tmp_path/'x.onnx', part='head')
    one = CaloDiT(DiTConfig(dim=32, depth=1, heads=2))
    with pytest.raises(VMLInputError, match='no layer-energy stage'): export_dit_onnx(one, tmp_path/'y.onnx', part='layers')
