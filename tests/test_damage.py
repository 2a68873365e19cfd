"""damage wing: vml-damage console script, bad files, end to end (synthetic xBD → predictions → official score)."""
import json, shutil, subprocess, sys
from pathlib import Path
import numpy as np
import pytest
from PIL import Image

from vallecorsa_ml.damage.data import write_synthetic_xbd, list_tiles, read_tile, load_xbd, synth_tile
from vallecorsa_ml.damage.metrics import write_xview2_pngs, xbd_image_id, score_against_labels, write_xbd_targets
from vallecorsa_ml.core import seed_everything

EXE = Path(sys.executable).parent/'vml-damage'


def run(*args):
    cmd = [str(EXE)] if EXE.exists() else [sys.executable, '-c', 'from vallecorsa_ml.damage.metrics import vml_damage; vml_damage()']
    return subprocess.run(cmd + [str(a) for a in args], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope='module')
def xbd(tmp_path_factory):
    root = tmp_path_factory.mktemp('dmg')
    write_synthetic_xbd(root/'xbd', 12, 64, seed=31)
    for t in list_tiles(root/'xbd'):
        d = read_tile(root/'xbd', t)
        write_xview2_pngs(root/'perfect', xbd_image_id(t), d['loc'], d['dmg'])
        # every building predicted, every damage class shifted by one (1→2, ..., 4→1)
        shifted = np.where(d['dmg'] > 0, d['dmg'] % 4 + 1, 0)
        write_xview2_pngs(root/'shifted', xbd_image_id(t), d['loc'], shifted)
    return root


def test_cli_perfect_and_wrong(xbd, tmp_path):
    r = run(xbd/'perfect', xbd/'xbd', '--out', tmp_path/'m.json')
    assert r.returncode == 0, r.stderr
    m = json.loads((tmp_path/'m.json').read_text())
    assert m['score'] == pytest.approx(1, abs=1e-5) and m['localization_f1'] == 1
    r = run(xbd/'shifted', xbd/'xbd/labels')
    assert r.returncode == 0, r.stderr
    last = json.loads(r.stdout.strip().splitlines()[-1])
    # localization perfect, every damage class wrong → F1_dam = 4e-6/... ≈ 1e-6, score ≈ 0.3
    assert last['localization_f1'] == 1 and last['damage_f1'] < 1e-5
    assert last['score'] == pytest.approx(0.3, abs=1e-5)


def test_cli_targets_mode_matches_labels_mode(xbd, tmp_path):
    write_xbd_targets(xbd/'xbd', tmp_path/'targ')
    a = run(xbd/'shifted', tmp_path/'targ', '--targets')
    b = run(xbd/'shifted', xbd/'xbd')
    assert a.returncode == b.returncode == 0
    assert a.stdout.strip().splitlines()[-1] == b.stdout.strip().splitlines()[-1]


def test_cli_bad_input_one_line_exit_2(xbd, tmp_path):
    r = run(tmp_path/'nope', xbd/'xbd')
    assert r.returncode == 2 and r.stderr.count('\n') == 1 and 'vml-damage: error:' in r.stderr
    bad = tmp_path/'bad'; shutil.copytree(xbd/'perfect', bad)
    f = sorted(bad.glob('*_damage_*'))[0]
    Image.fromarray(np.full((64, 64), 9, np.uint8)).save(f)
    r = run(bad, xbd/'xbd')
    assert r.returncode == 2 and 'values must be 0-4' in r.stderr and r.stderr.count('\n') == 1
    f.unlink()
    r = run(bad, xbd/'xbd')
    assert r.returncode == 2 and 'PNG missing' in r.stderr
    small = tmp_path/'small'; shutil.copytree(xbd/'perfect', small)
    for p in small.glob('*.png'): Image.fromarray(np.zeros((32, 32), np.uint8)).save(p)
    r = run(small, xbd/'xbd')
    assert r.returncode == 2 and 'but the label is 64x64' in r.stderr
    r = run(xbd/'perfect', xbd/'xbd', '--unclassified', 'drop')
    assert r.returncode == 2 and 'unclassified must be' in r.stderr


def test_reader_bad_files(tmp_path):
    root = write_synthetic_xbd(tmp_path/'x', 2, 64, seed=5)
    t = list_tiles(root)[0]
    lab = root/'labels'/f'{t}_post_disaster.json'
    lab.write_text('{"features": ')
    with pytest.raises(ValueError, match='not valid JSON'): read_tile(root, t)
    lab.write_text(json.dumps({'metadata': {}}))
    with pytest.raises(ValueError, match="no 'features.xy'"): read_tile(root, t)
    lab.write_text(json.dumps({'features': {'xy': [{'properties': {'feature_type': 'building'}, 'wkt': 'POLYGON ((1 1, 9 1, 9 9, 1 1))'}]},
                               'metadata': {'width': 64, 'height': 64}}))
    with pytest.raises(ValueError, match="without 'subtype'"): read_tile(root, t)
    (root/'images'/f'{t}_pre_disaster.png').write_bytes(b'not a png')
    with pytest.raises(ValueError, match='unreadable image'): read_tile(root, t)


def test_unclassified_policies(tmp_path):
    root = write_synthetic_xbd(tmp_path/'x', 6, 64, seed=8, p_unclassified=0.5)
    rng = seed_everything(8)
    ref = [synth_tile(rng, 64, p_unclassified=0.5) for _ in range(6)]
    n_unc = 0
    for i, r in enumerate(ref):
        name = f"synth-{r['disaster']}_{8:04d}{i:04d}"
        a, b = read_tile(root, name), read_tile(root, name, unclassified='ignore')
        np.testing.assert_array_equal(a['dmg'], r['dmg']); np.testing.assert_array_equal(a['loc'], b['loc'])
        unc = (a['dmg'] > 0) & (b['dmg'] == 0)             # exactly the un-classified footprints
        n_unc += unc.sum()
        assert (a['dmg'][unc] == 1).all()
    assert n_unc > 0


def test_end_to_end_train_predict_score(tmp_path):
    """A few fastai steps of the Siamese U-Net, predictions written as official PNGs, scored by the CLI."""
    import torch
    from vallecorsa_ml.damage.models import SiameseUNet, damage_dls, damage_learner, class_weights, predict, write_predictions
    from vallecorsa_ml.damage.metrics import xview2_score
    root = write_synthetic_xbd(tmp_path/'x', 16, 64, seed=9)
    d = load_xbd(root)
    seed_everything(0)
    learn = damage_learner(SiameseUNet((8, 16, 32, 64)), damage_dls(d, d, bs=8), class_weights(d['dmg']))
    with learn.no_bar(), learn.no_logging(): learn.fit(1, 3e-3)
    loc, dmg = predict(learn.model, d)
    write_predictions(tmp_path/'pred', d, loc, dmg)
    r = run(tmp_path/'pred', root)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout.strip().splitlines()[-1])
    ref = xview2_score(loc, dmg, d['loc'], d['dmg'])
    assert got['score'] == pytest.approx(ref['score'], abs=1e-12)
