#!/usr/bin/env python
"""Build a Jupyter notebook from a 'percent' script (scratch authoring aid; the .ipynb is the source of truth).

Cells start with a line `# %%` (code) or `# %% [markdown]` (markdown; each line's leading `# ` is stripped).
A code cell starting with `# %% tags=["parameters"]` gets that cell tag (papermill).

    python tools/py2nb.py scratch.py nbs/10_calo.geometry.ipynb
"""
import json, re, sys, hashlib
from pathlib import Path

def py2nb(src: str) -> dict:
    cells, cur, kind, tags = [], [], None, []
    def flush():
        if kind is None: return
        lines = cur[:]
        while lines and not lines[-1].strip(): lines.pop()
        while lines and not lines[0].strip(): lines.pop(0)
        if kind == 'markdown': lines = [re.sub(r'^# ?', '', l) for l in lines]
        text = '\n'.join(lines)
        c = dict(cell_type=kind, id=hashlib.sha1(f'{len(cells)}:{text}'.encode()).hexdigest()[:8], metadata={}, source=text)
        if tags: c['metadata']['tags'] = tags
        if kind == 'code': c.update(execution_count=None, outputs=[])
        cells.append(c)
    for line in src.splitlines():
        m = re.match(r'^# %%(.*)$', line)
        if m:
            flush(); cur = []
            rest = m.group(1)
            kind = 'markdown' if '[markdown]' in rest else 'code'
            t = re.search(r'tags=(\[.*?\])', rest)
            tags = json.loads(t.group(1)) if t else []
        else:
            if kind is None: continue
            cur.append(line)
    flush()
    return dict(cells=cells, metadata=dict(
        kernelspec=dict(display_name='Python 3 (ipykernel)', language='python', name='python3'),
        language_info=dict(name='python')), nbformat=4, nbformat_minor=5)

if __name__ == '__main__':
    src, dst = sys.argv[1], sys.argv[2]
    Path(dst).write_text(json.dumps(py2nb(Path(src).read_text()), indent=1, ensure_ascii=False) + '\n')
    print(f'wrote {dst}')
