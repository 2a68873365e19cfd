"""distributed: 2-process gloo training vs 1 process, replica consistency, resume at another world size, CLI errors."""
import json
import pytest
import torch
from helpers import run, one_line_error
from vallecorsa_ml.distributed.ddp import TrainConfig, train, params_of, max_param_diff

TRAIN, BENCH = 'vml-ddp-train', 'vml-ddp-bench'

def sh(*args, cwd=None):
    return run(*args, cwd=cwd, threads=1)

def flat(p):
    return {f'{k}.{n}': v for k, sd in torch.load(p).items() for n, v in sd.items()}

def test_gan_two_processes_resume_from_one(tmp_path):
    "1-proc GAN run to epoch 1, resumed by `vml-ddp-train --nproc 2` to epoch 3 == uninterrupted 1-proc run; ranks identical."
    targs = dict(n_train=128, n_valid=32, hidden=16, latent=4)
    base = dict(task='profile_gan', task_args=targs, global_batch=32, lr=5e-4, threads=1)
    train(TrainConfig(**base, epochs=1, out=str(tmp_path/'a')))
    r = sh(TRAIN, '--task', 'profile_gan', '--task-args', json.dumps(targs), '--nproc', 2, '--batch', 32, '--lr', 5e-4,
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
    (['--task', 'nope'], "'task': unknown task 'nope'"),
    (['--task-args', '{bad'], "'task_args': not valid JSON"),
    (['--nproc', '3', '--batch', '64'], "'global_batch': global_batch 64 is not divisible by 3 processes"),
    (['--resume', 'missing.pt'], "missing.pt: checkpoint not found"),
    (['--lr-rule', 'cubic'], "'lr_rule': unknown lr rule 'cubic'"),
    (['--task-args', '{"n_train": 10000}', '--epochs', '1'], "'n': n must be in [1, "),   # more than the train rows
])
def test_vml_train_bad_input_one_line(args, msg, tmp_path):
    one_line_error(sh(TRAIN, *args, '--out', tmp_path/'o', cwd=tmp_path), 'vml-ddp-train', msg, at_start=True)

def test_not_a_checkpoint(tmp_path):
    p = tmp_path/'x.pt'; torch.save({'a': 1}, p)
    one_line_error(sh(TRAIN, '--resume', p, '--out', tmp_path/'o'), 'vml-ddp-train', 'not a vml-ddp-train checkpoint')

def test_vml_bench_ddp_bad_input():
    line = one_line_error(sh(BENCH, '--nproc', '1'), 'vml-ddp-bench', "'nproc': nproc must be >= 2", at_start=True)
    assert line == "vml-ddp-bench: error: 'nproc': nproc must be >= 2"

def test_vml_ddp_train_device_path_on_cpu(tmp_path):
    "The --device path of vml-ddp-train end to end on the CPU (on a GPU only the device and NCCL differ): summary printed, metrics.json written."
    r = sh(TRAIN, '--task', 'regressor', '--device', 'cpu', '--batch', 32, '--epochs', 1, '--threads', 1,
           '--task-args', '{"n_train": 64, "n_valid": 16}', '--out', tmp_path/'dev')
    assert r.returncode == 0, r.stderr[-2000:]
    s = json.loads(r.stdout[r.stdout.index('{'):])
    assert s['device'] == 'cpu' and s['world_size'] == 1 and s['samples'] == 64 and s['per_rank_batch'] == 32
    assert json.loads((tmp_path/'dev'/'metrics.json').read_text())['samples'] == 64
