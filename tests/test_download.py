"""`vml-data` end to end, offline: a local HTTP server on 127.0.0.1 (Range requests, cut responses) stands in for Zenodo."""
import hashlib, json, os, re, socket, subprocess, sys, threading
from http.server import ThreadingHTTPServer, BaseHTTPRequestHandler
from pathlib import Path
import numpy as np, pytest
from vallecorsa_ml.download import PUBLIC

from helpers import run, one_line_error as _one_line_error
PAYLOAD = np.random.default_rng(1).bytes(400_000)
SHA = hashlib.sha256(PAYLOAD).hexdigest()

class Server:
    "Serve {path: bytes} on 127.0.0.1; honours `Range: bytes=N-`; `cut[path] = n` cuts the next response after n bytes."
    def __init__(self, files):
        self.files, self.cut, self.requests = files, {}, []
        srv = self
        class H(BaseHTTPRequestHandler):
            def log_message(self, *a): pass
            def do_GET(self):
                path = self.path.split('?')[0]
                srv.requests.append((path, self.headers.get('Range')))
                data = srv.files.get(path)
                if data is None: return self.send_error(404)
                m = re.match(r'bytes=(\d+)-$', self.headers.get('Range') or '')
                start = int(m.group(1)) if m else 0
                if m and start >= len(data): return self.send_error(416)
                if m:
                    self.send_response(206); self.send_header('Content-Range', f'bytes {start}-{len(data)-1}/{len(data)}')
                else: self.send_response(200)
                body = data[start:]
                self.send_header('Content-Length', str(len(body))); self.end_headers()
                n = srv.cut.pop(path, None)
                self.wfile.write(body if n is None else body[:n])
        self.httpd = ThreadingHTTPServer(('127.0.0.1', 0), H)
        self.url = f'http://127.0.0.1:{self.httpd.server_address[1]}'
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

@pytest.fixture
def env(tmp_path):
    srv = Server({'/good.bin': PAYLOAD})
    s = socket.socket(); s.bind(('127.0.0.1', 0)); closed = s.getsockname()[1]; s.close()
    reg = {'demo': dict(what='test', units='bytes', files=[dict(fname='good.bin', url=f'{srv.url}/good.bin?download=1', checksum=f'sha256:{SHA}', size=len(PAYLOAD))]),
           'demo-unpinned': dict(what='test', units='bytes', files=[dict(fname='good.bin', url=f'{srv.url}/good.bin')]),
           'demo-corrupt': dict(what='test', units='bytes', files=[dict(fname='good.bin', url=f'{srv.url}/good.bin', checksum='md5:' + '0' * 32)]),
           'demo-offline': dict(what='test', units='bytes', files=[dict(fname='x.bin', url=f'http://127.0.0.1:{closed}/x.bin')])}
    (tmp_path/'registry.json').write_text(json.dumps(reg))
    e = dict(os.environ, VML_DATA=str(tmp_path/'cache'), VML_DOWNLOAD_REGISTRY=str(tmp_path/'registry.json'))
    yield srv, e, tmp_path/'cache'/'public', reg
    srv.httpd.shutdown(); srv.httpd.server_close()

def sh(e, *args):
    return run('vml-data', *args, env=e, cwd=Path(e['VML_DATA']).parent)

def one_line_error(r, start):
    return _one_line_error(r, 'vml-data', start, at_start=True)

def test_good_fetch_then_path_and_verify(env):
    srv, e, pub, _ = env
    r = sh(e, 'fetch', 'demo'); assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(pub/'demo')
    assert (pub/'demo'/'good.bin').read_bytes() == PAYLOAD                  # (its SHA-256 is SHA by construction)
    assert sh(e, 'path', 'demo').stdout.strip() == str(pub/'demo')
    r = sh(e, 'verify', 'demo'); assert r.returncode == 0 and r.stdout.strip() == 'good.bin: sha256 ok (published)', r
    r = sh(e, 'fetch', 'demo'); assert r.returncode == 0 and len(srv.requests) == 1      # checked, not downloaded again
    row = [l for l in sh(e, 'list').stdout.splitlines() if l.startswith('| demo |')]
    assert row and '| yes |' in row[0], row

def test_corrupt_file_rejected_and_removed(env):
    srv, e, pub, _ = env
    line = one_line_error(sh(e, 'fetch', 'demo-corrupt'), f"{pub/'demo-corrupt'/'good.bin'}: checksum mismatch: expected md5:{'0'*32} (published)")
    assert f'got md5:{hashlib.md5(PAYLOAD).hexdigest()}' in line
    assert list((pub/'demo-corrupt').iterdir()) == []

def test_interrupted_download_resumes(env):
    srv, e, pub, _ = env
    srv.cut['/good.bin'] = 150_000
    r = sh(e, 'fetch', 'demo'); assert r.returncode == 0, r.stderr                    # retried within the same command
    assert srv.requests == [('/good.bin', None), ('/good.bin', 'bytes=150000-')]
    assert (pub/'demo'/'good.bin').read_bytes() == PAYLOAD
    assert not (pub/'demo'/'good.bin.part').exists()

def test_interrupted_part_kept_and_resumed_by_next_command(env):
    srv, e, pub, _ = env
    part = pub/'demo'/'good.bin.part'
    part.parent.mkdir(parents=True); part.write_bytes(PAYLOAD[:70_000])                   # what an earlier, killed run left
    r = sh(e, 'fetch', 'demo', '--quiet'); assert r.returncode == 0, r.stderr
    assert srv.requests == [('/good.bin', 'bytes=70000-')]
    assert (pub/'demo'/'good.bin').read_bytes() == PAYLOAD and not part.exists()

def test_no_network_names_url_and_manual_path(env):
    srv, e, pub, reg = env
    line = one_line_error(sh(e, 'fetch', 'demo-offline'), f"{pub/'demo-offline'/'x.bin'}: cannot download (")
    assert f"get {reg['demo-offline']['files'][0]['url']} by hand and put it at {pub/'demo-offline'/'x.bin'}" in line
    one_line_error(sh(e, 'path', 'demo-offline'), f"{pub/'demo-offline'}: not fetched: x.bin; run `vml-data fetch demo-offline`")

def test_unknown_names_list_known_ones(env):
    srv, e, pub, _ = env
    line = one_line_error(sh(e, 'fetch', 'calochallenge-ds9'), "'name': unknown public dataset 'calochallenge-ds9'; known: ")
    for n in [*PUBLIC, 'demo']: assert n in line
    line = one_line_error(sh(e, 'path', 'nope'), "nope: not a file, nor a dataset name; shipped: g4-electrons")
    assert 'calochallenge-ds2' in line
    one_line_error(sh(e, 'frobnicate'), "'command': expected a command: list, fetch, verify, path, check-xbd; got 'frobnicate'")
    one_line_error(sh(e, 'fetch'), "'command': fetch takes one NAME, got 0")

def test_verify_detects_modified_file(env):
    srv, e, pub, _ = env
    for name, source in (('demo', 'published'), ('demo-unpinned', 'pinned')):
        assert sh(e, 'fetch', name).returncode == 0
        assert sh(e, 'verify', name).stdout.strip() == f'good.bin: sha256 ok ({source})'
        f = pub/name/'good.bin'; b = bytearray(f.read_bytes()); b[12345] ^= 0xFF; f.write_bytes(bytes(b))
        one_line_error(sh(e, 'verify', name), f"{pub/name}: changed since download: good.bin (sha256 ")
    pins = json.loads((Path(e['VML_DATA'])/'download'/'pinned.json').read_text())
    assert pins['demo-unpinned']['good.bin']['sha256'] == SHA and 'demo' not in pins

def test_path_of_shipped_dataset(env):
    srv, e, pub, _ = env
    r = sh(e, 'path', 'g4-photons'); assert r.returncode == 0
    assert r.stdout.strip().endswith('data/g4/ds2_photons_10-100GeV_angles_train.h5') and Path(r.stdout.strip()).exists()

def test_list_shows_shipped_splits_and_public_sizes(env):
    srv, e, pub, _ = env
    out = sh(e, 'list').stdout
    assert 'g4-electrons' in out and 'train 0–4999 · valid 5000–5999 · test 6000–7999' in out
    row = [l for l in out.splitlines() if l.startswith('| calochallenge-ds2 |')][0]
    assert '2.72 GB' in row and '| no |' in row and 'sampling fraction' in row
    assert '| xbd |' in out

def test_check_xbd(env, tmp_path):
    srv, e, pub, _ = env
    root = tmp_path/'xbd'/'tier3'
    for t in ('mexico-earthquake_00000001', 'mexico-earthquake_00000002'):
        for rel in (f'images/{t}_pre_disaster.png', f'images/{t}_post_disaster.png', f'labels/{t}_pre_disaster.json', f'labels/{t}_post_disaster.json'):
            (root/rel).parent.mkdir(parents=True, exist_ok=True); (root/rel).write_bytes(b'')
    r = sh(e, 'check-xbd', str(tmp_path/'xbd')); assert r.returncode == 0 and r.stdout.strip() == 'tier3: 2 image pairs — layout ok', r
    (root/'labels'/'mexico-earthquake_00000002_pre_disaster.json').unlink()
    one_line_error(sh(e, 'check-xbd', str(tmp_path/'xbd')), f"{root}: 1 labels missing, e.g. labels/mexico-earthquake_00000002_pre_disaster.json")
    (root/'images'/'mexico-earthquake_00000001_post_disaster.png').unlink()
    one_line_error(sh(e, 'check-xbd', str(tmp_path/'xbd')), f"{root}: 1 post-disaster images missing, e.g. images/mexico-earthquake_00000001_post_disaster.png")
    one_line_error(sh(e, 'check-xbd', str(tmp_path/'none')), f"{tmp_path/'none'}: folder not found")
    one_line_error(sh(e, 'fetch', 'xbd'), "'name': xbd cannot be downloaded by a script (licence click on https://xview2.org/dataset")

def test_file_put_by_hand_is_checked_not_downloaded(env):
    srv, e, pub, _ = env
    (pub/'demo').mkdir(parents=True); (pub/'demo'/'good.bin').write_bytes(PAYLOAD)        # as the offline error says
    r = sh(e, 'fetch', 'demo'); assert r.returncode == 0, r.stderr
    assert srv.requests == []                                                           # checked against its checksum only
    r = sh(e, 'fetch', 'demo-offline', '--folder', str(pub.parent/'elsewhere'))
    line = one_line_error(r, f"{pub.parent/'elsewhere'/'x.bin'}: cannot download (")
    assert line.endswith(f"(then `vml-data fetch demo-offline --folder {pub.parent/'elsewhere'}` checks it)"), line
