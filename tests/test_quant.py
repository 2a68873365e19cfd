"quant wing: console script, INT8 ONNX in ONNX Runtime, PT2E static INT8, QAT trains and exports (issue 9)."
import json, subprocess, sys
from dataclasses import asdict
from pathlib import Path
import numpy as np
import pytest
import torch

VENV_BIN = Path(sys.executable).parent


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
    return subprocess.run([str(VENV_BIN/'vml-bench'), *args], capture_output=True, text=True, timeout=600)


def test_bench_bad_input():
    r = _run('--configs', '2-1')
    assert r.returncode == 2 and 'threads x streams' in r.stderr and r.stderr.count('\n') == 1
    r = _run('--gan', '/nonexistent/ck.pt')
    assert r.returncode == 2 and 'checkpoint not found' in r.stderr
    r = _run('--methods', 'fp32,int4')
    assert r.returncode == 2 and 'unknown methods' in r.stderr


def test_bench_end_to_end(tmp_path):
    G = _standin()
    ck = tmp_path/'g.pt'
    torch.save({'model_type': 'gan', 'cfg': asdict(G.cfg), 'G_ema': G.state_dict(), 'G': G.state_dict(), 'step': 0}, ck)
    r = _run('--gan', str(ck), '--methods', 'fp32,bf16,ort-int8', '--batches', '8', '--configs', '1x1,1x2',
             '--repeats', '1', '--qat', 'none', '--out', str(tmp_path/'o'))
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((tmp_path/'o'/'bench.json').read_text())['gan']
    assert len(res['rows']) == 3*2
    for row in res['rows']:
        assert row['showers_per_s'] > 0
        if row['method'] == 'fp32': assert row['x_fp32'] == pytest.approx(1.0)
        # speed-up over Geant4 = README CPU time at these energies / measured CPU time per shower
        assert row['speedup_vs_g4'] == pytest.approx(res['g4_s_per_shower']/row['cpu_s_per_shower'], rel=1e-6)
    assert (tmp_path/'o'/'throughput.png').stat().st_size > 1000
    assert '| gan | ort-int8 |' in r.stdout


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
    from vallecorsa_ml.quant.qat import qat_generator, qat_finetune, export_qat_onnx, onnx_op_counts
    from vallecorsa_ml.quant.ptq import ort_session, rel_err
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
