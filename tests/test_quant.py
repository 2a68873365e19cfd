"quant wing: console script, INT8 ONNX in ONNX Runtime, PT2E static INT8, QAT trains and exports (issue 9)."
import json, sys, time
from dataclasses import asdict
from pathlib import Path
import numpy as np
import pytest
import torch
from helpers import run, one_line_error

BENCH = 'vml-quant-bench'
PROG = BENCH


def _standin(width=0.25, seed=0):
    from vallecorsa_ml.calo.gan import Generator, GANConfig
    torch.manual_seed(seed)
    G = Generator(GANConfig(width=width)).eval()
    with torch.no_grad(): G.body[-1].conv.weight.mul_(10.); G.template.fill_(0.05)   # the network makes the shower
    return G


def _inputs(G, n, seed):
    from vallecorsa_ml.quant.ptq import calib_inputs
    e = np.geomspace(G.cfg.e_min, G.cfg.e_max, n)     # 1-100 GeV, the trained range
    return calib_inputs(G, e, seed=seed)


def _run(*args):
    return run(BENCH, *args)


def test_bench_bad_input():
    one_line_error(_run('--configs', '2-1'), PROG, 'threads x streams')
    one_line_error(_run('--gan', '/nonexistent/ck.pt'), PROG, 'checkpoint not found')
    one_line_error(_run('--methods', 'fp32,int4'), PROG, 'unknown methods')
    one_line_error(_run('--gan', 'none', '--dit', 'none'), PROG, 'nothing to bench')


def test_run_bench_known_cost():
    "Throughput of a variant whose cost is known (it sleeps 0.2 s per call): batch/0.2 showers/s, twice that on two streams, no CPU."
    from vallecorsa_ml.quant.ptq import Variant, g4_conditions
    from vallecorsa_ml.quant.bench import run_bench
    G = _standin()
    sleep = Variant('sleep', 'python', lambda *x: time.sleep(0.2) or torch.zeros(len(x[0]), 1))
    res = run_bench(G, 'g', methods=['fp32'], batches=[8], configs=[(1, 1), (1, 2)], repeats=3, n_calib=16,
                    extra={'sleep': sleep}, log=lambda *a: None)
    rows = {(r['method'], r['streams']): r for r in res['rows']}
    assert set(rows) == {('fp32', 1), ('fp32', 2), ('sleep', 1), ('sleep', 2)}
    s1, s2 = rows['sleep', 1], rows['sleep', 2]
    assert s1['showers_per_s'] == pytest.approx(8/0.2, rel=0.25)        # a loaded machine oversleeps a little
    assert 1.5 < s2['showers_per_s']/s1['showers_per_s'] < 2.5          # two streams overlap their sleeps
    assert s1['ms_per_shower'] == pytest.approx(200/8, rel=0.25) and s1['cpu_s_per_shower'] < 2e-3
    assert rows['fp32', 1]['x_fp32'] == 1.0
    # Geant4's CPU time: the README's 4.9 ms per GeV at the mean energy of the calibration rows
    e = g4_conditions(16, 'electrons', seed=0)['energies_MeV']
    assert res['g4_s_per_shower'] == pytest.approx(4.9e-3*np.mean(e)/1e3, rel=1e-9)


def test_bench_end_to_end(tmp_path):
    G = _standin()
    ck = tmp_path/'g.pt'
    torch.save({'model_type': 'gan', 'cfg': asdict(G.cfg), 'G_ema': G.state_dict(), 'G': G.state_dict(), 'step': 0}, ck)
    r = _run('--gan', str(ck), '--dit', 'none', '--methods', 'fp32,fp32-compile,ort-int8', '--batches', '8', '--configs', '1x1,1x2',
             '--repeats', '1', '--qat', 'none', '--fidelity', '60', '--seeds', '0,1', '--cls-epochs', '2', '--out', str(tmp_path/'o'))
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((tmp_path/'o'/'bench.json').read_text())['gan']
    assert len(res['rows']) == 3*2
    for row in res['rows']:
        if row['method'] == 'fp32': assert row['x_fp32'] == pytest.approx(1.0)
        # × the fastest FP32 route of the same configuration: never above × eager FP32, and 1 for that route
        assert row['x_best_fp32'] <= row['x_fp32'] + 1e-9
    for st in (1, 2):
        fp = [r['x_best_fp32'] for r in res['rows'] if r['streams'] == st and r['precision'] == 'fp32']
        assert max(fp) == pytest.approx(1.0) and len(fp) == 2
    # fidelity: against Geant4 (AUC, separation powers) and directly against the FP32 showers from the same noise
    fid = res['fidelity']
    assert set(fid) == {'fp32', 'fp32-compile', 'ort-int8'} and fid['fp32']['dauc'] == 0 and fid['fp32']['rel_err'] == 0
    assert fid['fp32-compile']['rel_err'] < 1e-4 and 0 < fid['ort-int8']['rel_err'] < 0.08
    assert fid['fp32']['auc'] > 0.9                     # an untrained stand-in is told from Geant4 at once
    assert abs(fid['fp32-compile']['dauc']) < 0.02      # the same showers (to float rounding) score the same against Geant4,
    assert fid['fp32-compile']['auc_vs_fp32'] < 0.75    # and cannot be told from the FP32 showers (0.5: chance)
    # the speed-up over Geant4 against a CPU time per shower measured here (1 thread, same batch): the same within 4x
    torch.set_num_threads(1)
    x = _inputs(G, 8, 5)
    with torch.no_grad():
        G(*x)
        c0 = time.process_time()
        for _ in range(5): G(*x)
        cpu = (time.process_time() - c0)/40
    fp = next(r for r in res['rows'] if r['method'] == 'fp32' and r['streams'] == 1)
    assert 0.25 < fp['speedup_vs_g4']/(res['g4_s_per_shower']/cpu) < 4, (fp['speedup_vs_g4'], res['g4_s_per_shower']/cpu)
    assert abs(fid['ort-int8']['occupancy'] - fid['fp32']['occupancy']) < 0.02
    assert (tmp_path/'o'/'throughput.png').stat().st_size > 1000
    assert '| gan | ort-int8 |' in r.stdout
    # two noise seeds: ΔAUC is the mean of the per-seed differences from FP32's AUC on the same seed, with their spread
    for m in ('fp32-compile', 'ort-int8'):
        f = fid[m]
        assert len(f['aucs']) == 2 and f['seeds'] == [0, 1]
        d = np.subtract(f['aucs'], fid['fp32']['aucs'])
        assert f['dauc'] == pytest.approx(d.mean()) and f['dauc_sd'] == pytest.approx(np.std(d, ddof=1))
        assert f['counts'] == (abs(d.mean()) <= 0.01 and abs(f['dsep_cell']) <= 0.002)
    # the one table: CPU model and flags in every row, and the seed's anchor (Rehm et al.: INT8 1.73x FP32, 67,000x Geant4)
    from vallecorsa_ml.quant.bench import cpu_features
    table = r.stdout[r.stdout.index('## The table'):]
    assert table.count(cpu_features()['label']) == 3 and '| 1.73 |' in table and '67,000' in table


def test_ort_int8_onnx_runs_and_is_int8(tmp_path):
    import onnx
    from vallecorsa_ml.quant.ptq import quantize, rel_err
    G = _standin()
    cal, fixed = _inputs(G, 64, 0), _inputs(G, 16, 1)
    with torch.no_grad(): f = G(*fixed)
    for m in ('ort-int8', 'ort-int8-dyn'):
        v = quantize(G, m, cal, workdir=tmp_path)
        model = onnx.load(v.info['onnx'])
        int8 = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT8]
        assert len(int8) >= 3, m                       # the conv / gemm weights are stored as int8
        assert v.info['mb'] < 0.5*(tmp_path/'fp32.onnx').stat().st_size/1e6
        assert rel_err(v(*fixed), f) < 0.08, m


def test_pt2e_static_and_torchao_dynamic_close_to_fp32():
    from vallecorsa_ml.quant.ptq import quantize, rel_err
    G = _standin()
    cal, fixed = _inputs(G, 32, 0), _inputs(G, 8, 1)
    with torch.no_grad(): f = G(*fixed)
    v = quantize(G, 'int8-pt2e', cal)
    assert v.info['quant_nodes'] > 0
    assert 0 < rel_err(v(*fixed), f) < 0.08
    v = quantize(G, 'int8-dyn', cal)
    assert v.info['quantized_linears'] == 1 and rel_err(v(*fixed), f) < 0.08


def test_qat_trains_and_exports(tmp_path):
    from vallecorsa_ml.quant.qat import qat_generator, qat_finetune, export_qat_onnx
    from vallecorsa_ml.quant.ptq import rel_err
    from vallecorsa_ml.onnx_io import ort_session, onnx_op_counts
    G = _standin()
    Q = qat_generator(G)
    e = np.geomspace(2e3, 9e4, 64)
    hist = qat_finetune(Q, G, e, steps=3, batch_size=8, lr=3e-5)
    assert len(hist) == 3 and all(np.isfinite(hist))
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in Q.parameters())   # gradients flowed
    p = export_qat_onnx(Q, tmp_path/'q.onnx')
    assert onnx_op_counts(p)['QuantizeLinear'] >= Q.n_quant_layers
    z, c = _inputs(G, 3, 2)
    o = ort_session(p).run(None, {'z': z.numpy(), 'cond': c.numpy()})[0]
    with torch.no_grad(): r = Q(z, c).numpy(); f = G(z, c).numpy()
    assert rel_err(o, r) < 1e-3 and rel_err(o, f) < 0.08


def _small_dit(seed=0):
    "A small random CaloDiT (zero-initialised output layers perturbed, so the network makes the output)."
    from vallecorsa_ml.calo.diffusion import CaloDiT, DiTConfig, DiTGenerator
    torch.manual_seed(seed)
    D = DiTGenerator(CaloDiT(DiTConfig(dim=64, depth=2, heads=2)), detector=1, steps=4).eval()
    with torch.no_grad():
        for p in D.parameters(): p.add_(0.05*torch.randn_like(p))
    return D


def _dit_inputs(D, n, seed):
    from vallecorsa_ml.quant.ptq import calib_inputs, g4_conditions
    c = g4_conditions(n, 'photons', seed=seed)
    return calib_inputs(D, c['energies_MeV'], c['thetas'], c['phis'], seed=seed)


def test_compiled_pt2e_int8_dit_close_and_runs_onednn_int8():
    from torch.profiler import profile
    from vallecorsa_ml.quant.ptq import quantize, rel_err, edge_layers
    D = _small_dit()
    assert edge_layers(D.model) == ['embed', 'out']
    cal, fixed = _dit_inputs(D, 64, 0), _dit_inputs(D, 16, 1)
    with torch.no_grad(): f = D.model(*fixed)
    nodes = {}
    for m in ('int8-pt2e-compile', 'int8-pt2e-mixed'):
        v = quantize(D, m, cal)
        assert 0 < rel_err(v(*fixed), f) < 0.03, m
        with profile() as pr: v(*fixed)
        assert any('qlinear' in e.key for e in pr.key_averages()), m     # lowered to the oneDNN int8 kernel, not dequant → fp32
        nodes[m] = v.info['quant_nodes']
    assert 0 < nodes['int8-pt2e-mixed'] < nodes['int8-pt2e-compile']       # the edge layers (and non-GEMM ops) left in FP32
    v = quantize(D, 'fp32-compile', cal)
    assert rel_err(v(*fixed), f) < 1e-4


def test_pt2e_mixed_keeps_gan_occupancy():
    from vallecorsa_ml.quant.ptq import quantize, rel_err
    G = _standin()
    cal, fixed = _inputs(G, 32, 0), _inputs(G, 16, 1)
    with torch.no_grad(): f = G(*fixed)
    v = quantize(G, 'int8-pt2e-mixed', cal)
    assert v.info['fp32_layers'] == ['fc', 'body.7.conv']
    o = v(*fixed)
    assert rel_err(o, f) < 0.02
    assert abs(float((o > 0).float().mean()) - float((f > 0).float().mean())) < 0.002   # the threshold mask is not quantized


def test_ort_int8_dit_onnx_runs(tmp_path):
    import onnx
    from vallecorsa_ml.quant.ptq import quantize, rel_err
    D = _small_dit()
    cal, fixed = _dit_inputs(D, 64, 0), _dit_inputs(D, 16, 1)
    with torch.no_grad(): f = D.model(*fixed)
    for m in ('ort-int8', 'ort-int8-dyn'):
        v = quantize(D, m, cal, workdir=tmp_path)
        model = onnx.load(v.info['onnx'])
        assert sum(t.data_type == onnx.TensorProto.INT8 for t in model.graph.initializer) >= 8, m   # the GEMM weights
        assert rel_err(v(*fixed), f) < 0.05, m


def test_calib_inputs_two_stage_dit():
    "Calibration inputs of a two-stage DiT carry stage 1's layer energies (4 + 45 condition columns) and run through it."
    from vallecorsa_ml.calo.diffusion import CaloDiT, DiTConfig, DiTGenerator
    from vallecorsa_ml.quant.ptq import calib_inputs
    torch.manual_seed(0)
    D = DiTGenerator(CaloDiT(DiTConfig(dim=32, depth=1, heads=2, layer_model=True)), detector=1, steps=4).eval()
    x, s, c = calib_inputs(D, [2e4, 5e4, 8e4], [1.8, 2.0, 2.1], [0.1, 0.2, 0.3], seed=0)
    assert c.shape == (3, 49)
    # the packed conditions by hand: log10(E / 10 GeV), theta - pi/2, phi, detector id (photons: 1)
    hand = torch.tensor([[np.log10(e/1e4), t - np.pi/2, p, 1.0] for e, t, p in ((2e4, 1.8, 0.1), (5e4, 2.0, 0.2), (8e4, 2.1, 0.3))])
    assert torch.allclose(c[:, :4], hand.float(), atol=1e-6)
    # columns 4..48 are stage 1's layer energies, snapped to the readout (zero below the threshold): a fixed point of the transform
    tf = D.model.layer_tf
    assert torch.allclose(tf(tf.inverse(c[:, 4:])), c[:, 4:], atol=1e-4)
    assert not torch.allclose(calib_inputs(D, [2e4, 5e4, 8e4], [1.8, 2.0, 2.1], [0.1, 0.2, 0.3], seed=1)[2][:, 4:], c[:, 4:])   # drawn per seed
    with torch.no_grad(): assert D(x, s, c).shape == x.shape


def test_bench_defaults_are_the_shipped_models():
    "vml-quant-bench's defaults: the shipped 3dgan-ds2 and dit-ds2 (load_pretrained), not cache paths nothing writes."
    import inspect
    from vallecorsa_ml.quant.bench import bench_generators, vml_bench
    from vallecorsa_ml.calo.pretrained import model_path
    sig = inspect.signature(vml_bench.__wrapped__ if hasattr(vml_bench, '__wrapped__') else vml_bench)
    assert sig.parameters['gan'].default == 'auto' and sig.parameters['dit'].default == 'auto'
    gens = dict(bench_generators())
    assert list(gens) == ['3dgan-ds2', 'dit-ds2']
    ck = torch.load(model_path('3dgan-ds2'), map_location='cpu', weights_only=False)   # the shipped file's weights, read directly
    w = next(k for k in ck['G_ema'] if k.endswith('weight') and ck['G_ema'][k].ndim > 1)
    assert torch.equal(gens['3dgan-ds2'].state_dict()[w], ck['G_ema'][w].float())
    assert type(gens['dit-ds2']).__name__ == 'DiTGenerator' and gens['dit-ds2'].steps == 16


def test_shipped_dit_int8_close_to_fp32_on_fixed_noise():
    """The shipped dit-ds2 through the route chosen on VNNI CPUs (compiled PT2E INT8), against its own FP32 forward and
    sampler on fixed noise at 16 validation-row conditions. Tolerances (measured on the AMD EPYC: network 0.028, cells
    0.079, total energy 1e-6, occupancy 2e-4): network relative L2 < 0.05; sampled cells < 0.15; total energy within
    1e-4 (stage 1, which sets the layer energies, stays FP32); occupancy within 0.005."""
    from vallecorsa_ml.calo.pretrained import load_pretrained
    from vallecorsa_ml.calo.data import load_g4
    from vallecorsa_ml.quant.ptq import quantize, rel_err, sample_with
    torch.set_num_threads(1)
    D = load_pretrained('dit-ds2')
    cal = _dit_inputs(D, 128, 0)
    v = load_g4('photons', 'valid', 16)
    from vallecorsa_ml.quant.ptq import calib_inputs
    fixed = calib_inputs(D, v.energies, v.theta, v.phi, seed=7)
    with torch.no_grad(): f = D.model(*fixed)
    q = quantize(D, 'int8-pt2e-compile', cal)
    e = rel_err(q(*fixed), f)
    assert 0 < e < 0.05, e                      # quantized (not FP32), and close
    a = D.sample(v.energies, v.theta, v.phi, seed=3)
    b = sample_with(D, q, v.energies, v.theta, v.phi, seed=3)
    assert 0 < rel_err(b.flat, a.flat) < 0.15
    assert np.abs(b.flat.sum(1)/a.flat.sum(1) - 1).max() < 1e-4
    assert abs((b.flat > 0).mean() - (a.flat > 0).mean()) < 0.005


def test_shipped_gan_int8_close_to_fp32_on_fixed_noise():
    """The shipped 3dgan-ds2 in ONNX Runtime static INT8 (Conv3d and Gemm quantized) and compiled PT2E INT8 (fc only),
    against its FP32 forward on fixed noise: relative L2 < 0.12 (measured on the AMD EPYC: ORT 0.076-0.082 on two input
    sets, PT2E 0.032), occupancy within 0.01."""
    from vallecorsa_ml.calo.pretrained import load_pretrained
    from vallecorsa_ml.quant.ptq import quantize, rel_err
    torch.set_num_threads(1)
    G = load_pretrained('3dgan-ds2')
    cal, fixed = _inputs(G, 128, 0), _inputs(G, 32, 1)
    with torch.no_grad(): f = G(*fixed)
    for m in ('ort-int8', 'int8-pt2e-compile'):
        o = quantize(G, m, cal)(*fixed)
        assert 0 < rel_err(o, f) < 0.12, (m, rel_err(o, f))
        assert abs(float((o > 0).float().mean()) - float((f > 0).float().mean())) < 0.01, m


def test_widened_gan_is_the_same_function():
    "widen_late_convs zero-pads the hidden channels: 16-wide convolutions, the same showers (checked against the shipped model's own forward)."
    from vallecorsa_ml.calo.pretrained import load_pretrained
    from vallecorsa_ml.quant.bench import widen_late_convs
    from vallecorsa_ml.quant.ptq import rel_err
    G = load_pretrained('3dgan-ds2')
    W = widen_late_convs(G, 16)
    assert [m.conv.weight.shape[:2] for m in W.body if hasattr(m, 'conv')] == [(16, 8), (16, 16), (2, 16)]
    x = _inputs(G, 8, 3)
    with torch.no_grad(): assert rel_err(W(*x), G(*x)) < 1e-5


def test_cpu_dispatch_routes():
    "Routes per CPU from the flags (the machines this project meets); this machine's label names its model and flags."
    from vallecorsa_ml.quant.bench import cpu_features, choose_routes, torchao_int8_sdpa
    amx = cpu_features(['avx2', 'avx512f', 'avx512_vnni', 'avx512_bf16', 'amx_tile', 'amx_int8', 'amx_bf16'], 'Xeon', 'AVX512', torch_amx=False)
    vnni = cpu_features(['avx2', 'avx512f', 'avx512_vnni'], 'Xeon', 'AVX512', torch_amx=False)
    avx2 = cpu_features(['avx2', 'fma'], 'old', 'AVX2', torch_amx=False)
    assert choose_routes(amx)['attention'].startswith('int8') and choose_routes(amx)['bf16'] == 'bf16'
    assert choose_routes(vnni)['int8'] == 'int8-pt2e-mixed' and choose_routes(vnni)['bf16'] is None
    assert choose_routes(avx2)['int8'] == 'ort-int8-dyn'
    here = cpu_features()
    assert here['capability'] == torch.backends.cpu.get_cpu_capability() and here['model'] in here['label']
    if not here['amx']: assert torchao_int8_sdpa(here) is not None      # no AMX: torchao's INT8 SDPA has no route here
