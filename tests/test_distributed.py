"""distributed: 2-process gloo training vs 1 process, replica consistency, resume at another world size, CLI errors."""
import json, os, subprocess, sys
from dataclasses import asdict
from pathlib import Path
import pytest
import torch
from vallecorsa_ml.distributed.ddp import TrainConfig, train, params_of, max_param_diff

BIN = Path(sys.executable).parent
ENV = {**os.environ, 'OMP_NUM_THREADS': '1'}

def sh(*args, cwd=None):
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, cwd=cwd, env=ENV)

def flat(p):
    return {f'{k}.{n}': v for k, sd in torch.load(p).items() for n, v in sd.items()}

def test_gan_two_processes_resume_from_one(tmp_path):
    "1-proc GAN run to epoch 1, resumed by `vml-train --nproc 2` to epoch 3 == uninterrupted 1-proc run; ranks identical."
    targs = dict(n_train=128, n_valid=32, hidden=16, latent=4)
    base = dict(task='profile_gan', task_args=targs, global_batch=32, lr=5e-4, threads=1)
    train(TrainConfig(**base, epochs=1, out=str(tmp_path/'a')))
    r = sh(BIN/'vml-train', '--task', 'profile_gan', '--task-args', json.dumps(targs), '--nproc', 2, '--batch', 32, '--lr', 5e-4,
           '--epochs', 3, '--threads', 1, '--resume', tmp_path/'a'/'checkpoint.pt', '--out', tmp_path/'b', '--save-rank-params')
    assert r.returncode == 0, r.stderr[-2000:] + (tmp_path/'b'/'launch.log').read_text()[-2000:]
    s = json.loads((tmp_path/'b'/'metrics.json').read_text())
    assert s['world_size'] == 2 and s['start_epoch'] == 1 and s['per_rank_batch'] == 16 and len(s['history']) == 3
    p0, p1 = flat(tmp_path/'b'/'rank0_params.pt'), flat(tmp_path/'b'/'rank1_params.pt')
    assert p0.keys() == p1.keys() and all(torch.equal(p0[k], p1[k]) for k in p0)       # replicas bit-identical
    train(TrainConfig(**base, epochs=3, out=str(tmp_path/'c')))
    d = max_param_diff(params_of(tmp_path/'b'/'checkpoint.pt'), params_of(tmp_path/'c'/'checkpoint.pt'))
    assert d < 1e-4, d
    # the tolerance is meaningful: two more epochs move the parameters by far more
    assert max_param_diff(params_of(tmp_path/"c"/"checkpoint.pt"), params_of(tmp_path/"a"/"checkpoint.pt")) > 1e-3

def test_regressor_world1_matches_epoch_counts(tmp_path):
    r = train(TrainConfig('regressor', dict(n_train=96, n_valid=32, hidden=8), epochs=2, global_batch=32, threads=1, out=str(tmp_path)))
    assert r['samples'] == 2*96 and len(r['history']) == 2
    h = [json.loads(l) for l in (tmp_path/'history.jsonl').read_text().splitlines()]
    assert [x['epoch'] for x in h] == [1, 2] and 'resolution' in h[-1] and 'energy_kwh' in json.loads((tmp_path/'metrics.json').read_text())

@pytest.mark.parametrize('args,msg', [
    (['--task', 'nope'], "vml-train: error: 'task': unknown task 'nope'"),
    (['--task-args', '{bad'], "vml-train: error: 'task_args': not valid JSON"),
    (['--nproc', '3', '--batch', '64'], "vml-train: error: 'global_batch': global_batch 64 is not divisible by 3 processes"),
    (['--resume', 'missing.pt'], "vml-train: error: missing.pt: checkpoint not found"),
    (['--lr-rule', 'cubic'], "vml-train: error: 'lr_rule': unknown lr rule 'cubic'"),
    (['--task-args', '{"n_train": 10000}', '--epochs', '1'], "vml-train: error: 'n': n must be in [1, "),   # more than the train rows
])
def test_vml_train_bad_input_one_line(args, msg, tmp_path):
    r = sh(BIN/'vml-train', *args, '--out', tmp_path/'o', cwd=tmp_path)
    assert r.returncode == 2, r.stderr[-1000:]
    assert r.stderr.strip().startswith(msg) and len(r.stderr.strip().splitlines()) == 1, r.stderr

def test_not_a_checkpoint(tmp_path):
    p = tmp_path/'x.pt'; torch.save({'a': 1}, p)
    r = sh(BIN/'vml-train', '--resume', p, '--out', tmp_path/'o')
    assert r.returncode == 2 and 'not a vml-train checkpoint' in r.stderr

def test_vml_bench_ddp_bad_input():
    r = sh(BIN/'vml-bench-ddp', '--nproc', '1')
    assert r.returncode == 2 and r.stderr.strip() == "vml-bench-ddp: error: 'nproc': nproc must be >= 2"

def test_train_gpu_script_plumbing_on_cpu(tmp_path):
    "scripts/train_gpu.sh end to end with DEVICE=cpu: runs vml-train and prints samples/s and the run folder."
    root = Path(__file__).resolve().parent.parent
    env = {**ENV, 'DEVICE': 'cpu', 'OUT_DIR': str(tmp_path/'gpu'), 'PYTHON': sys.executable}
    r = subprocess.run(['bash', str(root/'scripts'/'train_gpu.sh'), 'regressor', '1', '32', '--task-args', '{"n_train": 64, "n_valid": 16}'],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert 'task regressor:' in r.stdout and 'samples/s' in r.stdout and str(tmp_path/'gpu') in r.stdout
    assert json.loads((tmp_path/'gpu'/'metrics.json').read_text())['samples'] == 64
