"Diffusion transformer (issue 5): console scripts, bad input, end to end on a few shipped Geant4 showers."
import math
from pathlib import Path
import numpy as np
import pytest
import torch
from helpers import run, one_line_error

TRAIN, GENERATE = 'vml-calo-train-dit', 'vml-calo-generate'


def _run(*args):
    return run(*args, timeout=600)


def test_cli_bad_input(tmp_path):
    one_line_error(_run(TRAIN, '--ckpt', tmp_path/'none.pth', '--resume'), 'vml-calo-train-dit', 'nothing to resume')
    one_line_error(_run(TRAIN, '--ckpt', tmp_path/'x.pth', '--patch', '4,4,9'), 'vml-calo-train-dit', 'does not divide')
    one_line_error(_run(GENERATE, '--checkpoint', tmp_path/'missing.pth', '--out', tmp_path/'o.h5'), GENERATE, 'checkpoint not found')
    bad = tmp_path/'bad.pth'
    bad.write_text('not a checkpoint')
    one_line_error(_run(GENERATE, '--checkpoint', bad, '--out', tmp_path/'o.h5'), GENERATE, 'not a readable checkpoint')


def test_train_resume_generate_end_to_end(tmp_path):
    ck = tmp_path/'dit.pth'
    common = ['--ckpt', ck, '--dim', 32, '--depth', 1, '--heads', 2, '--electrons', 48, '--photons', 48, '--pbwo4', 16,
              '--bs', 16, '--quiet']
    r = _run(TRAIN, '--epochs', 1, *common)
    assert r.returncode == 0, r.stderr
    c1 = torch.load(ck, weights_only=False)
    assert c1['epoch'] == 1 and c1['model_type'] == 'dit'
    # a second run with --resume continues to the same number of epochs: nothing left to do, weights unchanged
    r = _run(TRAIN, '--epochs', 1, '--resume', *common)
    assert r.returncode == 0, r.stderr
    c2 = torch.load(ck, weights_only=False)
    assert all(torch.equal(c1['model'][k], c2['model'][k]) for k in c1['model'])
    # stage 1 retrained alone, with the response coordinate: stage 2 (the EMA weights) kept, written back to the checkpoint;
    # stage 1's own buffers (its clip range and its read-out, refitted by the calibration) change with it
    r = _run(TRAIN, '--stage1-only', '--minutes', 0.05, *common)
    assert r.returncode == 0, r.stderr
    c3 = torch.load(ck, weights_only=False)
    assert c3['config']['layer_total'] and c3['meta']['stage1_steps'] > 0 and c3['opt'] is None
    stage1 = ('v_max', 'layer_thr', 'layer_q', 'layer_r')
    assert all(torch.equal(c2['ema'][k], c3['model'][k]) for k in c2['ema']
               if not k.startswith(('layer_net.', 'total_tf.')) and k not in stage1)
    assert not torch.equal(c2['ema']['layer_q'], c3['model']['layer_q'])       # the read-out of the new stage 1
    out = tmp_path/'gen.h5'
    gen = lambda o, *a: _run(GENERATE, '--checkpoint', ck, '--out', o, *a)
    r = gen(out, '--energies', '20-60GeV', '--n', 6, '--theta', '1.9-2.1', '--steps', 4, '--detector', 'g4_photons')
    assert r.returncode == 0, r.stderr
    from vallecorsa_ml.calo.data import read_showers
    sd = read_showers(out)
    assert len(sd) == 6 and sd.showers.shape[1:] == (45, 16, 9)
    assert np.all((sd.energies >= 20e3 - 1e-3) & (sd.energies <= 60e3 + 1e-3))
    assert np.all((sd.theta >= 1.9) & (sd.theta <= 2.1))
    nz = sd.showers[sd.showers > 0]
    assert nz.size > 100 and nz.min() >= 5e-4        # showers, and nothing below the cell threshold
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
    one_line_error(gen(out2, '--energies', 'abcGeV', '--n', 2), GENERATE, 'cannot read energy')
    one_line_error(gen(out2, '--detector', 'lead', '--n', 2), GENERATE, 'unknown detector')
    one_line_error(gen(out2, '--steps', 40, '--n', 2), GENERATE, 'steps')


def test_phi_periodic_embedding():
    "The φ features of the tokens: 2π-periodic, and one sector further is the same rotation of every harmonic, seam included."
    from vallecorsa_ml.calo.diffusion import CaloDiT, DiTConfig, phi_fourier
    m = CaloDiT(DiTConfig(dim=32, depth=1, heads=2, patch=(5, 2, 9))).eval()
    phis = m.token_phi
    torch.testing.assert_close(phis, -math.pi + (torch.arange(8) + 0.5)*2*math.pi/8)      # sector centres
    torch.testing.assert_close(m.pos_phi(phis), m.pos_phi(phis + 2*math.pi), atol=1e-5, rtol=0)
    K, step = 4, 2*math.pi/8
    g = phi_fourier(phis, K)
    cos, sin = g[:, :K], g[:, K:]
    k = torch.arange(1, K + 1)*step                 # cos(k(φ+Δ)) = cos kφ cos kΔ − sin kφ sin kΔ, sin(k(φ+Δ)) = sin kφ cos kΔ + cos kφ sin kΔ
    nxt = torch.cat([cos*torch.cos(k) - sin*torch.sin(k), sin*torch.cos(k) + cos*torch.sin(k)], 1)
    torch.testing.assert_close(g[[1, 2, 3, 4, 5, 6, 7, 0]], nxt, atol=1e-5, rtol=0)    # token 7 → token 0 across the ±π seam too
    pe = m.pos_embedding().reshape(9, 8, 1, 32)     # (z, φ, r) tokens: the φ term is shared by every z and r
    torch.testing.assert_close(pe - m.pos_z[:, None, None] - m.pos_r[None, None], m.pos_phi(phis)[None, :, None].expand(9, 8, 1, 32))


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
