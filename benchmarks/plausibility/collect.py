"""benchmarks/plausibility: run every cascade pass on every image; store all detections (+ fallback when no MTCNN pass finds any)."""
import os, sys, pickle, random, time
from pathlib import Path
import numpy as np, torch
torch.set_num_threads(2)
from meer.faces.detect import FaceDetector
from meer.utils.images import read_image
root = Path('/work/shared/data')
sets = {}
rm = root / 'real_masked_pairs/rmfrd'
sets['rmfrd_unmasked'] = sorted(rm.glob('*/unmasked/*'))
sets['rmfrd_masked'] = sorted(rm.glob('*/masked/*'))
lfw = sorted(p for p in (root / 'faces/lfw').rglob('*') if p.suffix.lower() in ('.jpg', '.png'))
random.Random(0).shuffle(lfw)
sets['lfw200'] = sorted(lfw[:200])
det = FaceDetector(device='cpu')
out = {}
for name, files in sets.items():
    t = time.time()
    imgs = [read_image(p).rgb for p in files]
    per_pass = []
    for pad, mfs, th, *_ in det.passes:
        res = [None] * len(imgs)
        groups = {}
        for i, a in enumerate(imgs):
            groups.setdefault(a.shape[:2], []).append(i)
        for idxs in groups.values():
            for s in range(0, len(idxs), 16):
                ch = idxs[s:s + 16]
                for i, d in zip(ch, det._mtcnn_batch([imgs[i] for i in ch], pad, mfs, th or det.thresholds)):
                    res[i] = d
        per_pass.append(res)
    fb = [None] * len(imgs)
    for i, a in enumerate(imgs):
        if not any(pp[i] for pp in per_pass):
            fb[i] = det.fallback.detect(a) if det.fallback else []
    out[name] = dict(files=[str(p) for p in files], shapes=[a.shape for a in imgs], passes=per_pass, fallback=fb)
    print(name, len(files), f'{time.time()-t:.0f}s', flush=True)
pickle.dump(out, open('/tmp/plaus/dets.pkl', 'wb'))
