"""Ideas for a gate that holds on photos from unseen sources, each measured by leaving one
source out (the shared manifest.csv's; 13 sources, the 19 squirrels from 4).

    python bench/gate_ideas.py [--photos DIR] [--max-false-accept 0.02] [--cache FILE]

Every row is a held-out figure: each photo is scored by a head trained without its source and
judged at a threshold chosen (<= 2% false accepts) on the other sources' photos, as in
``bench/gate.py --by-source``. Nothing here was tuned on the held-out source, but *which* idea
looks best is a choice made on these 109 photos: read a one-photo difference (5 points of the
squirrels) as noise.

No head (the ImageNet gate):

* tiles, test-time averaging: a view's P(fox squirrel) averaged with its mirror image's;
* tiles, 2 x 2 grid only: fewer, larger tiles;
* neighbours: fox squirrel plus the classes nearest to it in the backbone's own classifier
  (cosine of the weight vectors: marmot, grey fox, mongoose, weasel, ...), summed;
* ratio: P(fox squirrel) / the view's top probability (how close to first place it comes);
* logistic: a small logistic regression on the log-probabilities of fox squirrel, its 7
  neighbours and the top class, fitted per fold on whole images and tiles.

A head (trained with ``belka train``'s defaults, agreement included, unless a row says so):

* head alone: no agreement with the ImageNet prior (the gate before this bench);
* background tiles: tiles of every training squirrel photo that do not overlap its most
  squirrel-like tile (by P(fox squirrel)) become ``other`` photos' worth of negatives;
* animal removed: each training squirrel photo with that tile blurred away becomes an ``other``
  photo;
* test-time averaging, 2 x 2 grid only, no novelty floor;
* other ways to make the head and the prior agree: min, arithmetic mean.

Extra views (mirror images of every view, squirrel photos with the animal blurred out) are
embedded once and cached next to --cache.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFilter

from belka import heads
from belka.heads import fit as head_fit
from belka.scores import agreement
from belka.tiling import DEFAULT_TILING, views as tile_views

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gate import ROOT, load_shared, manifest_sources, row  # noqa: E402


def extra_views(model, photos, embedded, cache: Path) -> dict:
    """Mirrored embeddings of every view, and the squirrel photos with the animal blurred out."""
    key = hashlib.sha256(cache.name.encode())
    key.update(embedded.whole[:, :8].tobytes())
    path = cache.with_name(f"{cache.stem}-ideas-{key.hexdigest()[:16]}.npz")
    sq = photos.labels.index("squirrel")
    imagenet = model.module.predictions
    if path.exists():
        z = np.load(path, allow_pickle=False)
        n = len(photos.paths)
        return {"mirror": [z[f"m{i}"] for i in range(n)],
                "removed": {int(i): z[f"r{int(i)}"] for i in z["removed_rows"]},
                "boxes": [z[f"b{i}"] for i in range(n)]}
    print("embedding mirror images and animal-removed photos ...", file=sys.stderr)
    mirror, removed, boxes = [], {}, []
    for i, p in enumerate(photos.paths):
        image = model.decode(p)
        stack, bx = tile_views(image, model.preprocessing, DEFAULT_TILING)
        _, emb = heads.forward_features(model, np.ascontiguousarray(stack[:, :, ::-1]))
        mirror.append(emb)
        boxes.append(np.array([b.to_list() for b in bx[1:]], np.int64).reshape(-1, 4))
        if photos.y[i] == sq and len(bx) > 1:
            with torch.no_grad():
                p335 = torch.softmax(imagenet(torch.from_numpy(embedded.tiles[i])), 1)[:, 335]
            b = bx[1 + int(p335.argmax())]
            pil = Image.fromarray(image)
            blurred = pil.filter(ImageFilter.GaussianBlur(max(b.width, b.height) / 6))
            pil.paste(blurred.crop((b.x0, b.y0, b.x1, b.y1)), (b.x0, b.y0))
            cut, _ = tile_views(np.asarray(pil), model.preprocessing, None)
            removed[i] = heads.forward_features(model, cut)[1]
    arrays = {f"m{i}": m for i, m in enumerate(mirror)}
    arrays.update({f"b{i}": b for i, b in enumerate(boxes)})
    arrays.update({f"r{i}": r for i, r in removed.items()})
    arrays["removed_rows"] = np.array(sorted(removed), np.int64)
    np.savez(path, **arrays)
    return {"mirror": mirror, "removed": removed, "boxes": boxes}


def _overlaps(a, b) -> bool:
    return not (a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1])


@contextlib.contextmanager
def extra_negatives(sq: int, other: int, imagenet_tiles, boxes, removed, background: float,
                    animal_removed: float):
    """Train heads with extra ``other`` rows mined from the squirrel photos (research only:
    wraps the training rows of belka.heads.fit for the duration)."""
    original = head_fit._training_rows

    def rows_with_negatives(embedded, y, rows, options, other_index):
        xs, ys, ws = original(embedded, y, rows, options, other_index)
        add_x, add_w = [xs], [ws]
        add_y = [ys]
        for i in rows:
            if y[i] != sq:
                continue
            if background > 0 and len(embedded.tiles[i]):
                p = imagenet_tiles[i]
                best = boxes[i][int(p.argmax())]
                keep = np.array([not _overlaps(b, best) for b in boxes[i]])
                if keep.any():
                    add_x.append(embedded.tiles[i][keep])
                    add_y.append(np.full(keep.sum(), other))
                    add_w.append(np.full(keep.sum(), background / keep.sum(), np.float32))
            if animal_removed > 0 and i in removed:
                add_x.append(removed[i])
                add_y.append(np.full(len(removed[i]), other))
                add_w.append(np.full(len(removed[i]), animal_removed, np.float32))
        return (np.concatenate(add_x).astype(np.float32), np.concatenate(add_y).astype(np.int64),
                np.concatenate(add_w))

    head_fit._training_rows = rows_with_negatives
    try:
        yield
    finally:
        head_fit._training_rows = original


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=Path, default=ROOT.parent / "shared" / "data" / "photos")
    parser.add_argument("--max-false-accept", type=float, default=0.02)
    parser.add_argument("--cache", type=Path, default=Path("/tmp/belka-bench-gate.npz"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    loaded = load_shared(args.photos, args.cache)
    if loaded is None:
        return 2
    model, photos, embedded = loaded
    extra = extra_views(model, photos, embedded, args.cache)
    y, labels = photos.y, photos.labels
    sq, other = labels.index("squirrel"), labels.index("other")
    positive = y == sq
    groups = manifest_sources(args.photos, photos.paths)
    folds, seed, target = len(set(groups.tolist())), args.seed, args.max_false_accept
    n = len(y)
    layer = model.module.predictions

    def imagenet(views):
        with torch.no_grad():
            return torch.softmax(layer(torch.from_numpy(np.asarray(views, np.float32))), 1).numpy()

    probs = [imagenet(embedded.views(i, True)) for i in range(n)]
    mirrored = [imagenet(extra["mirror"][i]) for i in range(n)]
    big = [np.array([True] + [b[2] - b[0] == max(bb[2] - bb[0] for bb in extra["boxes"][i])
                              for b in extra["boxes"][i]]) for i in range(n)]

    rows = []

    def add(name, scores):
        # gate.row keeps a row's thresholds >= MIN_HEAD_THRESHOLD when its name says "head"
        rows.append(row(name, np.asarray(scores, np.float64), positive, y, labels, groups,
                        target, folds, seed))

    fox = 335
    add("ImageNet + tiles (the default gate)", [p[:, fox].max() for p in probs])
    add("ImageNet + tiles, test-time averaging",
        [((p[:, fox] + m[:, fox]) / 2).max() for p, m in zip(probs, mirrored)])
    add("ImageNet, 2 x 2 tiles only", [p[g, fox].max() for p, g in zip(probs, big)])
    w = layer.weight.detach().numpy()
    w = w / np.linalg.norm(w, axis=1, keepdims=True)
    near = np.argsort(-(w @ w[fox]))
    for k in (1, 2, 4):
        names = ", ".join(model.labels[c] for c in near[1:k + 1])
        add(f"ImageNet + tiles, fox squirrel + {names}",
            [p[:, near[:k + 1]].sum(axis=1).max() for p in probs])
    add("ImageNet + tiles, P(fox squirrel) / top probability",
        [(p[:, fox] / p.max(axis=1)).max() for p in probs])
    add("ImageNet + tiles, logistic on 8 log-probabilities",
        _logistic(probs, positive, groups, folds, seed, near[:8]))

    options = heads.TrainOptions(seed=seed, folds=folds)
    tiles_p335 = [p[1:, fox] for p in probs]

    base = heads.cross_validate(model, embedded, y, groups, labels, options)
    add("head + tiles (belka train defaults: agreement)", base.scores([sq]))
    add("head + tiles, head alone (no agreement)", base.scores([sq], agreement=False))
    add("head + tiles, no novelty floor", base.scores([sq], novelty=False))
    add("head + tiles, 2 x 2 tiles only",
        [_head_score(base, i, sq, keep=big[i]) for i in range(n)])
    add("head + tiles, agreement as min(head, prior)",
        [_head_score(base, i, sq, how=np.minimum) for i in range(n)])
    add("head + tiles, agreement as mean(head, prior)",
        [_head_score(base, i, sq, how=lambda a, b: (a + b) / 2) for i in range(n)])
    add("head + tiles, test-time averaging",
        _head_tta(model, embedded, extra["mirror"], y, groups, labels, options, sq))
    for name, bg, cut in (("background tiles as negatives", 1.0, 0.0),
                          ("animal-removed photos as negatives", 0.0, 1.0),
                          ("both", 1.0, 1.0)):
        with extra_negatives(sq, other, tiles_p335, extra["boxes"], extra["removed"], bg, cut):
            o = heads.cross_validate(model, embedded, y, groups, labels, options)
        add(f"head + tiles, {name}", o.scores([sq]))
        add(f"head + tiles, {name}, no agreement", o.scores([sq], agreement=False))

    others = [l for l in labels if l != "squirrel"]
    print(f"{n} photos, {folds} sources held out one at a time; thresholds chosen on the other "
          f"sources for <= {target:.0%} false accepts\n")
    print("| idea | squirrels accepted | false accepts (cat+other) | "
          + " | ".join(f"{o} accepted" for o in others) + " | missed | let through |")
    print("|---|---|---|" + "---|" * len(others) + "---|---|")
    short = lambda i: Path(photos.paths[i]).stem.replace("_squirrel", "").replace("n02355227_", "")
    for r in rows:
        missed = ", ".join(short(i) for i in np.flatnonzero(positive & ~r["accepted"])) or "none"
        through = ", ".join(short(i) for i in np.flatnonzero(~positive & r["accepted"])) or "none"
        print(f"| {r['gate'].strip()} | {r['squirrel']:.0%} ({r['n_squirrel']}) | {r['fa']:.1%} "
              f"({r['n_fa']}) | " + " | ".join(r[o] for o in others) + f" | {missed} | {through} |")
    return 0


def _head_score(oof, i, sq, keep=None, how=None) -> float:
    """Photo ``i``'s image score from its out-of-fold views, with a view subset or another way
    of combining the head with the prior."""
    p, s, f = oof.probs[i], oof.similarities[i], oof.floors[i]
    head_p = p[:, sq]
    prior = oof.backbone[i][:, [oof.prior_columns.index(c) for c in oof.prior["squirrel"]]].sum(1)
    v = (how or agreement)(head_p, prior)
    v = np.where(s[:, sq] >= f[sq], v, 0.0)
    if keep is not None:
        v = v[keep]
    return float(v.max())


def _head_tta(model, embedded, mirror, y, groups, labels, options, sq) -> np.ndarray:
    """Heads scored on every view and its mirror image, probabilities averaged."""
    backbone, prior_mask = heads._backbone_parts(model, labels)
    columns = heads.prior_classes(model, labels)["squirrel"]
    out = np.zeros(len(y))
    for train_rows, test_rows in heads.fold_splits(y, groups, options.folds, options.seed):
        fitted = heads._fit(backbone, prior_mask, embedded, y, groups, train_rows, labels, options)
        for i in test_rows:
            views = embedded.views(i, True)
            p, s = fitted.score(views)
            pm, _ = fitted.score(mirror[i])
            prior = (fitted.layer.backbone_probabilities(views)[:, columns].sum(1)
                     + fitted.layer.backbone_probabilities(mirror[i])[:, columns].sum(1)) / 2
            v = agreement((p[:, sq] + pm[:, sq]) / 2, prior)
            out[i] = float(np.where(s[:, sq] >= fitted.floors[sq], v, 0.0).max())
    return out


def _logistic(probs, positive, groups, folds, seed, classes) -> np.ndarray:
    from sklearn.linear_model import LogisticRegression

    def features(p):
        logp = np.log(np.clip(p, 1e-12, 1.0))
        return np.concatenate([logp[:, classes], logp.max(axis=1, keepdims=True)], axis=1)

    out = np.zeros(len(probs))
    for train_rows, test_rows in heads.fold_splits(positive.astype(np.int64), groups, folds, seed):
        xs, ys = [], []
        for i in train_rows:
            p = probs[i]
            if positive[i]:      # the whole image and its most squirrel-like tile
                take = p[[0, int(p[:, 335].argmax())]]
                xs.append(features(take))
                ys += [1] * len(take)
            else:                # every view of a non-squirrel photo
                xs.append(features(p))
                ys += [0] * len(p)
        x, t = np.concatenate(xs), np.array(ys)
        weight = np.where(t == 1, (t == 0).sum() / max(1, (t == 1).sum()), 1.0)
        fitted = LogisticRegression(C=1.0, max_iter=2000).fit(x, t, sample_weight=weight)
        for i in test_rows:
            out[i] = fitted.predict_proba(features(probs[i]))[:, 1].max()
    return out


if __name__ == "__main__":
    sys.exit(main())
