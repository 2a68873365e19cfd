"""Recipe sweep for the diffusion transformer (`16_calo.diffusion`) on a lent GPU — a device experiment, not CI.

Each variant trains `CaloDiT` on the same data as `vml-train-dit` (the Geant4 e- and γ train rows, simulated PbWO4 e-/γ
2000 each), with the same batch size, EMA and 1cycle schedule, for the number of optimiser steps that a CPU run of this
machine manages in 60 minutes (see the closing note of issue #5): a GPU only makes the sweep fast, the recipes are
CPU recipes. A last variant spends far more steps, to show what more compute buys. Every variant is then judged on
the 1000 held-out Geant4 photons (the test split, rows 3000–3999) with the spine's `evaluate` (cls-high AUC, separation powers).

The training loop is plain PyTorch (Adam + OneCycleLR with fastai's defaults) so that the device needs no fastai;
fastai's modules are stubbed only so that the package imports. Usage on the device (see the issue note):

    PYTHONPATH=.:.gpu/site python3 tools/gpu_dit_sweep.py --out $OUT      # data/g4 travels with the working tree
"""
import os, sys, time, json, math, types, argparse, importlib.abc, importlib.machinery, multiprocessing as mp


class _Any:
    def __init__(self, *a, **k): pass


class _StubFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    "Permissive stand-in modules for fastai/fastprogress when they are not installed (device image)."
    def find_spec(self, name, path, target=None):
        if name.split('.')[0] in ('fastai', 'fastprogress'): return importlib.machinery.ModuleSpec(name, self, is_package=True)
    def create_module(self, spec):
        m = types.ModuleType(spec.name); m.__path__ = []
        m.__getattr__ = lambda k: _Any if not k.startswith('__') else (_ for _ in ()).throw(AttributeError(k))
        return m
    def exec_module(self, module): pass


def _install_stubs():
    try: import fastai.learner  # noqa: F401
    except ImportError: sys.meta_path.insert(0, _StubFinder())


VARIANTS = {   # name: (config kw, epochs, lr, extra); 109 steps per epoch at bs 128 on 14000 showers
    'base70':   (dict(dim=128, depth=4, heads=4), 70, 1e-3, {}),                      # = the CPU run on 1 thread under load
    'base160':  (dict(dim=128, depth=4, heads=4), 160, 1e-3, {}),                     # = 60 CPU minutes on 2 threads, quiet
    'delta160': (dict(dim=128, depth=4, heads=4, delta=1e-6), 160, 1e-3, {}),         # log offset 1 eV
    'lr160':    (dict(dim=128, depth=4, heads=4), 160, 2e-3, dict(P_mean=-0.8)),      # more lr, noise levels shifted up
    'wide70':   (dict(dim=192, depth=6, heads=6), 70, 1e-3, {}),                      # bigger net, same CPU minutes
    'long':     (dict(dim=192, depth=6, heads=6), 2000, 1e-3, {}),                    # far beyond the CPU budget (time-capped)
    # second device call: is compute or the architecture the limit?
    'long128':  (dict(dim=128, depth=4, heads=4), 2000, 1e-3, {}),                    # the CPU recipe, time-capped far beyond 60 CPU minutes
    'fine_long': (dict(dim=128, depth=4, heads=4, patch=(5, 2, 3)), 2000, 1e-3, {}),  # 5×2×3-cell patches: 216 tokens, time-capped
}


def train_variant(name, out, budget_s, device='cuda', seed=0, n_eval=1000, sizes=(None, None, 2000)):
    _install_stubs()
    import numpy as np, torch
    torch.set_num_threads(2)
    from vallecorsa_ml.calo.diffusion import CaloDiT, DiTConfig, EDMLoss, dit_dataset, training_parts
    from vallecorsa_ml.calo.data import load_g4
    from vallecorsa_ml.calo.metrics import evaluate, separation_power
    from dataclasses import asdict
    kw, epochs, lr, extra = VARIANTS[name]
    t0 = time.time()
    torch.manual_seed(seed); np.random.seed(seed)
    parts = training_parts(*sizes, seed=seed)
    model = CaloDiT(DiTConfig(**kw))
    model.transform.fit(torch.cat([torch.as_tensor(d.showers[:2000]) for d, _ in parts]))
    ds = dit_dataset(parts, model.transform)
    y, c = ds.y.to(device), ds.cond.to(device)
    model.to(device)
    loss_fn = EDMLoss(model, P_mean=extra.get('P_mean', -1.2), P_std=extra.get('P_std', 1.2))
    bs = 128; n = len(y); spe = n//bs
    opt = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.95, 0.99), eps=1e-5)
    params = [p for p in model.state_dict().values()]
    ema = [p.detach().clone() for p in params]
    def step(idx, k):
        l = loss_fn(y[idx], c[idx]).mean()
        opt.zero_grad(set_to_none=True); l.backward(); opt.step(); sched.step()
        d = min(0.998, (1 + k)/(10 + k))
        with torch.no_grad():
            fl = [(e, p) for e, p in zip(ema, params) if p.dtype.is_floating_point]
            torch._foreach_mul_([e for e, _ in fl], d); torch._foreach_add_([e for e, _ in fl], [p for _, p in fl], alpha=1 - d)
        return l
    # time 30 steps with a throw-away schedule, then fix the epochs so the run fits the budget
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.04)
    g = torch.Generator(device=device).manual_seed(seed)
    for k in range(40):
        if k == 10:
            if device == 'cuda': torch.cuda.synchronize()
            t1 = time.time()
        step(torch.randint(0, n, (bs,), device=device, generator=g), k)
    if device == 'cuda': torch.cuda.synchronize()
    t_step = (time.time() - t1)/30
    fit = max(1, int(budget_s/(t_step*spe)))
    capped = fit < epochs; epochs = min(epochs, fit)
    torch.manual_seed(seed)
    model.load_state_dict(CaloDiT(DiTConfig(**kw)).to(device).state_dict() | {'transform.stats': model.transform.stats})
    model.fit_range(ds.y.to(device), ds.cond.to(device))       # the sampler's data-range clip (a buffer, saved)
    opt = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.95, 0.99), eps=1e-5)
    params = [p for p in model.state_dict().values()]; ema = [p.detach().clone() for p in params]
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs*spe, pct_start=0.25, div_factor=25.,
                                                final_div_factor=1e5, base_momentum=0.85, max_momentum=0.95)
    t2, k, losses = time.time(), 0, []
    for ep in range(epochs):
        perm = torch.randperm(n, device=device, generator=g)
        acc = torch.zeros((), device=device)
        for i in range(spe):
            acc += step(perm[i*bs:(i + 1)*bs], k).detach(); k += 1
        losses.append(float(acc)/spe)
    t_train = time.time() - t2
    sd = {kk: e.detach().cpu() for kk, e in zip(model.state_dict().keys(), ema)}
    cfg = asdict(model.config)
    half = {kk: (v.half() if v.is_floating_point() and v.numel() > 1000 and kk != 'y_max' else v) for kk, v in sd.items()}  # 8 files of ≤16 MiB come back
    ck = dict(model_type='dit', config=cfg, model=half, ema=None, epoch=epochs,
              meta=dict(epochs=epochs, lr=lr, bs=bs, seed=seed, bf16=False, variant=name, extra=extra, device=device,
                        steps=k, step_ms=1e3*t_step))
    torch.save(ck, os.path.join(out, f'{name}.pth'))
    # judge on the held-out Geant4 photons on the CPU
    m = CaloDiT(DiTConfig(**cfg)); m.load_state_dict(sd); m.eval()
    ref = load_g4('photons', 'test', n_eval)
    t3 = time.time()
    gen = m.sample(ref.energies, ref.theta, ref.phi, detector='g4_photons', seed=0, steps=12)
    t_gen = time.time() - t3
    ev = evaluate(gen, ref, cls=('high',), cls_epochs=50, fpd_kpd=True, plots=False, fast=True)
    res = dict(variant=name, config=kw, lr=lr, extra=extra, epochs=epochs, capped=capped, steps=k, step_ms=1e3*t_step,
               train_s=t_train, total_s=time.time() - t0, gen_ms_per_shower_cpu2=1e3*t_gen/len(gen),
               cls_high_auc=ev['cls_high']['auc'], sep_cell_spectrum=ev['sep_cell_spectrum'], sep_mean=ev['sep_mean'],
               fpd=ev.get('fpd'), response_gen=ev['sampling_fraction_gen'], response_ref=ev['sampling_fraction_ref'],
               last_losses=losses[-3:])
    os.makedirs('/tmp/dit_sweep_json', exist_ok=True)
    with open(f'/tmp/dit_sweep_json/{name}.json', 'w') as f: json.dump(res, f, indent=1, default=float)
    print(json.dumps({k2: res[k2] for k2 in ('variant', 'epochs', 'steps', 'step_ms', 'train_s', 'cls_high_auc', 'sep_cell_spectrum', 'fpd')}, default=float), flush=True)
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--out', default='/tmp/dit_sweep')
    ap.add_argument('--variants', default=','.join(VARIANTS))
    ap.add_argument('--budget', type=float, default=330., help='training seconds per variant (epochs are cut to fit)')
    ap.add_argument('--device', default='cuda')
    ap.add_argument('--n-eval', type=int, default=1000)
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    names = a.variants.split(',')
    ctx = mp.get_context('spawn')
    with ctx.Pool(len(names)) as pool:
        rs = [pool.apply_async(train_variant, (nm, a.out, a.budget, a.device, 0, a.n_eval)) for nm in names]
        out = []
        for nm, r in zip(names, rs):
            try: out.append(r.get())
            except Exception as e: print(f'{nm} failed: {type(e).__name__}: {e}', flush=True)
    with open(os.path.join(a.out, 'summary.json'), 'w') as f: json.dump(out, f, indent=1, default=float)


if __name__ == '__main__':
    main()
