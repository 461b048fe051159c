"""``belka export web``: the gate as a static folder that runs in the browser.

The folder holds:

* ``model.onnx``: the backbone graph (the same cached export the ONNX engine runs) with the
  gate around it, so the JavaScript stays small: it takes N x S x S x 3 ``uint8`` views
  (``pixels``) and normalises them inside the graph (``(x - mean) / std``, the same float32
  operations as :func:`belka.engine.normalize`); it gives ``probabilities`` (softmax, N x
  classes: ImageNet's, or a trained head's when one is given) and ``score`` (N: the allowed
  classes' summed probability, with a head's agreement and novelty floor applied as
  :func:`belka.scores.view_scores` does). ``fp16=True`` stores the weights as float16 (half the
  download) and casts them back to float32 when the graph loads, so the arithmetic stays fp32.
* ``policy.json``: the gate policy, in the format of :class:`belka.policy.Policy` (so
  ``belka check --policy`` reads it) plus what the browser needs: labels, allowed indices,
  preprocessing, tiling, the model file and its precision, the runtime, the belka version.
* ``belka.js`` (an ES module: ``load(baseUrl)`` -> gate with ``check`` and ``classify``),
  ``index.html`` + ``demo.js`` + ``demo.css`` (a demo upload form), and ``ort/``: onnxruntime-web
  (the wasm-only build) at :data:`RUNTIME_VERSION`, copied from the folder ``make`` fills with
  ``npm pack`` (:func:`find_runtime`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from ..errors import UsageError

RUNTIME_VERSION = "1.30.0"
RUNTIME_PACKAGE = "onnxruntime-web"
# The wasm-only flavour: the ES module, its worker/loader module and the SIMD + threads binary.
RUNTIME_FILES = ("ort.wasm.min.mjs", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm")
RUNTIME_ENV = "BELKA_ORT_WEB"
ASSETS = ("belka.js", "index.html", "demo.js", "demo.css")
MODEL_FILE = "model.onnx"
POLICY_FILE = "policy.json"
INPUT, PROBABILITIES, SCORE = "pixels", "probabilities", "score"


@dataclass
class WebExport:
    """What :func:`export_web` wrote."""

    out_dir: Path
    policy: dict
    files: dict[str, int] = field(default_factory=dict)   # relative path -> bytes

    @property
    def total_bytes(self) -> int:
        return sum(self.files.values())


# --------------------------------------------------------------------------------------------
# The runtime


def runtime_dirs() -> list[Path]:
    """Where the runtime is looked for: ``$BELKA_ORT_WEB``, then ``.cache/onnxruntime-web/VERSION``
    in the source checkout (what ``make`` fills) and in the current folder."""
    out = []
    if os.environ.get(RUNTIME_ENV):
        out.append(Path(os.environ[RUNTIME_ENV]))
    relative = Path(".cache", RUNTIME_PACKAGE, RUNTIME_VERSION)
    out.append(Path(__file__).resolve().parents[3] / relative)
    out.append(Path.cwd() / relative)
    return out


def find_runtime() -> Path:
    """The folder holding :data:`RUNTIME_FILES`; a :class:`UsageError` that says what to run
    when there is none."""
    for folder in runtime_dirs():
        if all((folder / name).is_file() for name in RUNTIME_FILES):
            return folder
    raise UsageError(
        f"the browser runtime ({RUNTIME_PACKAGE} {RUNTIME_VERSION}) is not installed: run "
        f"`make web-runtime` in the belka checkout (it runs `npm pack "
        f"{RUNTIME_PACKAGE}@{RUNTIME_VERSION}` once), or set {RUNTIME_ENV} to a folder holding "
        f"{', '.join(RUNTIME_FILES)} from that package's dist/")


# --------------------------------------------------------------------------------------------
# The graph


def build_graph(model, allow_indices, *, fp16: bool = False) -> bytes:
    """The web model (see the module docstring) as serialized ONNX, built around the cached
    backbone export of ``model`` (a head model's head is added to the graph)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from ..engine import export_onnx

    proto = onnx.load_model_from_string(export_onnx(model).read_bytes())
    graph = proto.graph
    prep = model.preprocessing
    logits, embedding = graph.output[0].name, graph.output[1].name
    old_input = graph.input[0].name
    consts: list = []
    nodes_before: list = []
    nodes_after: list = []

    def const(name: str, value) -> str:
        array = np.asarray(value)
        consts.append(numpy_helper.from_array(array, name))
        return name

    def node(op: str, inputs: list[str], output: str, **attrs) -> str:
        nodes_after.append(helper.make_node(op, inputs, [output], name=f"belka_{output}", **attrs))
        return output

    # uint8 N x S x S x 3 -> float32 N x 3 x S x S, (x - mean) / std
    size = prep.size
    mean = const("belka_mean", np.asarray(prep.mean, np.float32).reshape(1, 3, 1, 1))
    std = const("belka_std", np.asarray(prep.std, np.float32).reshape(1, 3, 1, 1))
    nodes_before += [
        helper.make_node("Cast", [INPUT], ["belka_pixels_f"], to=TensorProto.FLOAT),
        helper.make_node("Transpose", ["belka_pixels_f"], ["belka_nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Sub", ["belka_nchw", mean], ["belka_centred"]),
        helper.make_node("Div", ["belka_centred", std], [old_input]),
    ]

    from ..heads.head import prior_indices

    head = getattr(model, "head", None)
    allow = np.asarray(list(allow_indices), np.int64)
    if head is None:
        probs = node("Softmax", [logits], PROBABILITIES, axis=1)
        raw = node("ReduceSum", [node("Gather", [probs, const("belka_allow", allow)],
                                      "belka_allowed_probs", axis=1),
                                 const("belka_axis1", np.asarray([1], np.int64))],
                   SCORE, keepdims=0)
    else:
        layer = head.layer
        axis1 = const("belka_axis1", np.asarray([1], np.int64))
        mask = (layer.prior_logmask == 0).cpu().numpy()
        features = embedding
        if mask.shape[0]:
            logp = node("LogSoftmax", [logits], "belka_logp", axis=1)
            priors = []
            for r, row in enumerate(mask):
                idx = const(f"belka_prior_idx{r}", np.flatnonzero(row).astype(np.int64))
                picked = node("Gather", [logp, idx], f"belka_prior_pick{r}", axis=1)
                priors.append(node("ReduceLogSumExp", [picked, axis1], f"belka_prior{r}",
                                   keepdims=1))
            features = node("Concat", [*priors, embedding], "belka_head_features", axis=1)
        centred = node("Sub", [features, const("belka_head_mean", _f32(layer.mean))],
                       "belka_head_centred")
        scaled = node("Div", [centred, const("belka_head_scale", _f32(layer.scale))],
                      "belka_head_scaled")
        head_logits = node("Gemm", [scaled, const("belka_head_w", _f32(layer.linear.weight)),
                                    const("belka_head_b", _f32(layer.linear.bias))],
                           "belka_head_logits", transB=1)
        probs = node("Softmax", [head_logits], PROBABILITIES, axis=1)
        raw = node("ReduceSum", [node("Gather", [probs, const("belka_allow", allow)],
                                      "belka_allowed_probs", axis=1), axis1],
                   "belka_head_score", keepdims=0)
        # agreement: sqrt(head probability x the backbone's own probability of the allowed
        # classes' ImageNet counterparts), as scores.view_scores
        prior_idx = (prior_indices(head.prior, head.labels, [int(a) for a in allow])
                     if head.agreement else None)
        if prior_idx is not None:
            backbone_probs = node("Softmax", [logits], "belka_backbone_probs", axis=1)
            prior = node("ReduceSum", [node("Gather", [backbone_probs, const(
                "belka_prior_idx", np.asarray(prior_idx, np.int64))], "belka_prior_probs",
                axis=1), axis1], "belka_prior_score", keepdims=0)
            raw = node("Sqrt", [node("Mul", [raw, prior], "belka_agreement_product")],
                       "belka_raw_score")
        else:
            raw = node("Identity", [raw], "belka_raw_score")
        # novelty: a view counts only if it is as close as the floor to a reference of an
        # allowed class (scores.view_scores)
        labels = np.asarray(head.reference_labels)
        keep = np.isin(labels, allow)
        if keep.any():
            refs = head.references.astype(np.float32)[keep]
            floors = np.asarray(head.floors, np.float32)[labels[keep]]
            norm = node("ReduceL2", [embedding, axis1], "belka_emb_norm", keepdims=1)
            norm = node("Max", [norm, const("belka_eps", np.asarray(1e-12, np.float32))],
                        "belka_emb_norm_safe")
            unit = node("Div", [embedding, norm], "belka_emb_unit")
            sims = node("MatMul", [unit, const("belka_refs_t", np.ascontiguousarray(refs.T))],
                        "belka_sims")
            close = node("GreaterOrEqual", [sims, const("belka_floors", floors)], "belka_close")
            known = node("ReduceMax", [node("Cast", [close], "belka_close_f", to=TensorProto.FLOAT),
                                       axis1], "belka_known", keepdims=0)
            node("Mul", [raw, known], SCORE)
        else:   # no reference of an allowed class: no view is ever known
            node("Mul", [raw, const("belka_zero", np.asarray(0.0, np.float32))], SCORE)

    graph.input.remove(graph.input[0])
    graph.input.insert(0, helper.make_tensor_value_info(INPUT, TensorProto.UINT8,
                                                        ["batch", size, size, 3]))
    while len(graph.output):
        graph.output.pop()
    n_classes = len(model.labels)
    graph.output.extend([
        helper.make_tensor_value_info(PROBABILITIES, TensorProto.FLOAT, ["batch", n_classes]),
        helper.make_tensor_value_info(SCORE, TensorProto.FLOAT, ["batch"]),
    ])
    graph.initializer.extend(consts)
    all_nodes = nodes_before + list(graph.node) + nodes_after
    del graph.node[:]
    graph.node.extend(all_nodes)
    if fp16:
        _store_weights_fp16(graph)
    graph.name = "belka_web_gate"
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


def _f32(tensor) -> np.ndarray:
    return np.ascontiguousarray(tensor.detach().cpu().numpy(), np.float32)


def _store_weights_fp16(graph) -> None:
    """Float32 initializers of more than 16 numbers become float16 ones, each cast back to
    float32 by a Cast node at the start of the graph (ONNX Runtime folds the casts at load, so
    inference stays fp32; only the stored weights lose precision)."""
    from onnx import TensorProto, helper, numpy_helper

    casts = []
    for i, init in enumerate(list(graph.initializer)):
        if init.data_type != TensorProto.FLOAT:
            continue
        array = numpy_helper.to_array(init)
        if array.size <= 16:
            continue
        name = init.name
        half = numpy_helper.from_array(array.astype(np.float16), f"{name}__fp16")
        graph.initializer[i].CopyFrom(half)
        casts.append(helper.make_node("Cast", [half.name], [name], to=TensorProto.FLOAT,
                                      name=f"belka_fp16_{i}"))
    nodes = casts + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)


# --------------------------------------------------------------------------------------------
# The policy


def _allow_list(allow) -> list[str]:
    if isinstance(allow, str):
        return [a.strip() for a in allow.split(",") if a.strip()]
    return [str(a) for a in allow]


def web_policy(gate, *, model_sha256: str | None = None, precision: str = "fp32",
               upload_url: str | None = None) -> dict:
    """The policy JSON of the folder: :class:`belka.policy.Policy`'s fields (so
    ``belka check --policy`` reads it) and what the browser needs."""
    import belka
    from ..policy import Policy

    model, head = gate.model, gate.head
    given = gate.policy
    policy = Policy(allow=_allow_list(gate.allow), threshold=float(gate.threshold),
                    tiles=gate.tiling is not None,
                    max_false_accept=given.max_false_accept if given else None,
                    model=model.name, weights_sha256=model.weights_sha256,
                    head=head.fingerprint if head is not None else None,
                    head_labels=list(head.labels) if head is not None else None,
                    calibration=dict(given.calibration) if given else {})
    prep = model.preprocessing
    return {
        **policy.to_dict(),
        "belka_version": belka.__version__,
        "allowed": gate.allowed,
        "allow_indices": [int(i) for i in gate.allow_indices],
        "labels": list(model.labels),
        "preprocessing": {"size": prep.size, "crop_fraction": prep.crop_fraction,
                          "mean": list(prep.mean), "std": list(prep.std),
                          "policy": prep.policy, "resample": "bilinear (Pillow's, antialiased)",
                          "decode": "full decode, EXIF orientation applied, no colour management"},
        "tiling": gate.tiling.to_dict() if gate.tiling is not None else None,
        "model_file": MODEL_FILE,
        "model_sha256": model_sha256,
        "precision": precision,
        "inputs": {INPUT: "uint8 N x S x S x 3 (RGB, NHWC), normalised inside the graph"},
        "outputs": {PROBABILITIES: "float32 N x classes (softmax)",
                    SCORE: "float32 N: the allowed classes' summed probability per view"},
        "runtime": {"package": RUNTIME_PACKAGE, "version": RUNTIME_VERSION,
                    "module": f"ort/{RUNTIME_FILES[0]}"},
        "upload_url": upload_url,
    }


# --------------------------------------------------------------------------------------------
# The folder


def export_web(out_dir: str | os.PathLike, gate, *, fp16: bool = False,
               upload_url: str | None = None, runtime: str | os.PathLike | None = None
               ) -> WebExport:
    """Write the static folder for ``gate`` (a :class:`belka.gate.Gate`, with or without a head)
    into ``out_dir`` (created; files already there are replaced)."""
    runtime_dir = Path(runtime) if runtime is not None else find_runtime()
    missing = [n for n in RUNTIME_FILES if not (runtime_dir / n).is_file()]
    if missing:
        raise UsageError(f"{runtime_dir} lacks {', '.join(missing)}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out} exists and is not a folder")
    (out / "ort").mkdir(parents=True, exist_ok=True)
    result = WebExport(out, {})

    def put(name: str, data: bytes) -> None:
        from ..files import write_atomic

        write_atomic(out / name, data)
        result.files[name] = len(data)

    data = build_graph(gate.model, gate.allow_indices, fp16=fp16)
    put(MODEL_FILE, data)
    result.policy = web_policy(gate, model_sha256=hashlib.sha256(data).hexdigest(),
                               precision="fp16" if fp16 else "fp32", upload_url=upload_url)
    put(POLICY_FILE, (json.dumps(result.policy, indent=1) + "\n").encode("utf-8"))
    assets = resources.files("belka.web") / "assets"
    for name in ASSETS:
        put(name, assets.joinpath(name).read_bytes())
    for name in RUNTIME_FILES:
        shutil.copyfile(runtime_dir / name, out / "ort" / name)
        result.files[f"ort/{name}"] = (out / "ort" / name).stat().st_size
    return result
