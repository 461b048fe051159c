"""Inference engines: the same weights run by PyTorch eager or by ONNX Runtime.

An :class:`Engine` turns preprocessed input (N x 3 x S x S float32) into logits or probabilities,
always as NumPy arrays. :class:`TorchEngine` runs ``model.module``; :class:`OnnxEngine` runs the
graph exported once by ``torch.onnx.export(..., dynamo=True)`` (BatchNorm folded, about 90 nodes)
and cached under ``<belka cache>/onnx`` keyed by the weights' SHA-256, the model name, the torch
version and the opset. Pick one with :func:`make_engine`.

The hot path of :class:`OnnxEngine` (and the pre/post-processing of both engines) is NumPy only.
That is deliberate: on a small CPU, every torch op wakes torch's OpenMP threads, which then spin
for a while beside ONNX Runtime's own threads and cost about 2.5 ms per call on two cores. No
torch op on the hot path means torch's threads stay asleep; ``torch.set_num_threads`` is left
alone so the rest of the program (explanations, training) keeps all cores.
"""

from __future__ import annotations

import abc
import copy
import hashlib
import io
import logging
import os
import re
import tempfile
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Iterable, Literal, Sequence

import numpy as np
import torch
from torch import nn

from .errors import BelkaError
from .files import write_atomic
from .models.layers import pooled_classifier

if TYPE_CHECKING:
    from .models.model import Model
    from .models.preprocessing import Preprocessing

__all__ = ["ENGINES", "Engine", "EngineError", "OnnxEngine", "TorchEngine", "default_providers",
           "export_onnx", "make_engine", "normalize", "onnx_path", "physical_cores",
           "quantize_int8", "softmax"]

EngineKind = Literal["torch", "onnx", "auto"]
ENGINES: tuple[str, ...] = ("torch", "onnx", "auto")
OPSET = 18
INPUT_NAME, OUTPUT_NAME = "input", "logits"
# What a graph gives besides the logits, for a network that ends in global average pooling and a
# linear classifier: the classifier's input (the embedding heads are trained on) and the last
# spatial feature map (what Grad-CAM's fast path weighs). A graph of any other network gives
# the logits only.
EMBEDDING, FEATURES = "embedding", "features"
GRAPH_VERSION = 2   # in the cache key: version 1 graphs had the logits only
_ORT_HELP = "install it with `pip install onnxruntime` (or use --engine torch)"

log = logging.getLogger(__name__)


class EngineError(BelkaError):
    """An engine cannot run here: ONNX Runtime missing, export failed, unknown engine name."""


# --------------------------------------------------------------------------------------------
# NumPy pre- and post-processing, shared by every engine


def normalize(batch: np.ndarray, preprocessing: Preprocessing) -> np.ndarray:
    """N x S x S x 3 uint8 -> N x 3 x S x S float32 ``(x - mean) / std``, in NumPy.

    Gives the same numbers as :meth:`Preprocessing.normalize` (same float32 operations) without
    touching torch.
    """
    batch = np.asarray(batch)
    if batch.ndim != 4 or batch.shape[3] != 3:
        raise ValueError(f"expected an N x S x S x 3 uint8 batch, got shape {batch.shape}")
    mean = np.asarray(preprocessing.mean, np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(preprocessing.std, np.float32).reshape(1, 3, 1, 1)
    n, h, w, _ = batch.shape
    out = np.empty((n, 3, h, w), np.float32)
    np.subtract(batch.transpose(0, 3, 1, 2), mean, out=out)
    np.divide(out, std, out=out)
    return out


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float32."""
    z = np.asarray(logits, np.float32)
    z = z - z.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)
    return z


# --------------------------------------------------------------------------------------------
# Engines


class Engine(abc.ABC):
    """Runs one network. Subclasses implement :meth:`run`; inputs and outputs are NumPy arrays
    so that callers never need torch.

    An engine always runs a *backbone*: for a model with a trained head attached
    (:class:`belka.heads.HeadModel`) it runs the ImageNet network underneath, and the model
    applies its head to the embedding (so one exported graph serves every head).
    ``outputs`` names what :meth:`run` can give: ``logits``, and for networks that end in global
    average pooling and a linear classifier also ``embedding`` and ``features`` (the output of
    ``spatial_layer``, N x C x h x w).
    """

    kind: ClassVar[str]

    def __init__(self, model: Model):
        self.model = backbone_of(model)
        self.preprocessing: Preprocessing = self.model.preprocessing
        tail = pooled_classifier(self.model.module)
        self.spatial_layer: str | None = tail[0] if tail else None
        self.outputs: tuple[str, ...] = (OUTPUT_NAME, EMBEDDING, FEATURES) if tail else (OUTPUT_NAME,)

    @abc.abstractmethod
    def run(self, x: np.ndarray, outputs: Sequence[str] = (OUTPUT_NAME,)) -> list[np.ndarray]:
        """The named ``outputs`` (float32) for N x 3 x S x S float32 preprocessed input."""

    def _check_outputs(self, outputs: Sequence[str]) -> None:
        missing = [o for o in outputs if o not in self.outputs]
        if missing:
            raise EngineError(f"the {self.kind} engine of {self.model.name} gives "
                              f"{', '.join(self.outputs)}, not {', '.join(missing)}")

    def logits(self, x: np.ndarray) -> np.ndarray:
        """Logits (N x classes, float32) for N x 3 x S x S float32 preprocessed input."""
        return self.run(x, (OUTPUT_NAME,))[0]

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        """Softmax probabilities (N x classes) for preprocessed input."""
        return softmax(self.logits(x))

    def prepare(self, batch: np.ndarray) -> np.ndarray:
        """N x S x S x 3 uint8 images at the input size -> the network's float input."""
        return normalize(batch, self.preprocessing)

    def probabilities_from_batch(self, batch: np.ndarray) -> np.ndarray:
        """Softmax probabilities for N x S x S x 3 uint8 images already at the input size."""
        return self.probabilities(self.prepare(batch))

    def __repr__(self) -> str:
        return f"<belka {type(self).__name__} for {self.model.name}>"


def backbone_of(model: Model) -> Model:
    """The model an engine runs: the backbone under a trained head, else the model itself."""
    return getattr(model, "backbone", None) or model


class _Outputs(nn.Module):
    """A network that ends in pooling and a linear classifier, returning (logits, embedding,
    feature map). It shares the network's layers (only the tail is swapped for identities)."""

    def __init__(self, module: nn.Module):
        super().__init__()
        spatial, tail, classifier = pooled_classifier(module)
        body = copy.copy(module)
        body._modules = dict(module._modules)   # a new layer table; the layers are shared
        for name in tail:
            setattr(body, name, nn.Identity())
        self.body, self.classifier = body, classifier

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        features = self.body(x)
        embedding = features.mean(dim=(2, 3))
        return self.classifier(embedding), embedding, features


def graph_module(module: nn.Module) -> nn.Module:
    """What an engine runs and exports: :class:`_Outputs` when the network's tail allows, else
    the network itself (logits only)."""
    return _Outputs(module) if pooled_classifier(module) else module


class TorchEngine(Engine):
    """PyTorch eager on the model's own module and device (the reference)."""

    kind = "torch"

    def __init__(self, model: Model):
        super().__init__(model)
        self.module = graph_module(self.model.module)

    def run(self, x: np.ndarray, outputs: Sequence[str] = (OUTPUT_NAME,)) -> list[np.ndarray]:
        self._check_outputs(outputs)
        tensor = torch.from_numpy(np.ascontiguousarray(x, np.float32))
        with torch.inference_mode():
            out = self.module(tensor.to(self.model.device))
        out = dict(zip(self.outputs, out if isinstance(out, tuple) else (out,)))
        return [out[name].float().cpu().numpy() for name in outputs]


class OnnxEngine(Engine):
    """ONNX Runtime on the exported graph: CUDA when ONNX Runtime offers it, else the CPU with
    one intra-op thread per physical core, sequential execution and every graph optimisation.

    ``path`` runs another ONNX file of the same model (for instance an int8 one from
    :func:`quantize_int8`) instead of the cached fp32 export. ``threads`` overrides the thread
    count; ``spin=False`` stops ONNX Runtime's idle threads from busy-waiting, which helps when
    other threads (image decoding) share the cores.
    """

    kind = "onnx"

    def __init__(self, model: Model, providers: Sequence[str] | None = None, *,
                 path: str | os.PathLike | None = None, threads: int | None = None,
                 spin: bool = True):
        super().__init__(model)
        ort = _import_ort()
        self.path = Path(path) if path is not None else export_onnx(model)
        self.providers = list(providers) if providers is not None else default_providers()
        self.threads = threads or physical_cores()
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if not spin:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=self.providers)
        except Exception as exc:  # onnxruntime raises its own exception classes
            raise EngineError(f"ONNX Runtime cannot load the model ({exc})",
                              path=str(self.path)) from exc
        self.input_name = self.session.get_inputs()[0].name
        # The first output is the logits whatever a foreign graph calls it; the others are
        # used only when the graph has them (an int8 file made from an older export may not).
        names = [o.name for o in self.session.get_outputs()]
        extra = tuple(n for n in names[1:] if n in self.outputs)
        self.outputs = (OUTPUT_NAME, *extra)
        self._names = {OUTPUT_NAME: names[0], **{n: n for n in extra}}
        if FEATURES not in extra:
            self.spatial_layer = None

    def run(self, x: np.ndarray, outputs: Sequence[str] = (OUTPUT_NAME,)) -> list[np.ndarray]:
        self._check_outputs(outputs)
        feed = {self.input_name: np.ascontiguousarray(x, np.float32)}
        return self.session.run([self._names[o] for o in outputs], feed)

    def __repr__(self) -> str:
        return (f"<belka OnnxEngine for {self.model.name}: {self.path.name}, "
                f"{self.session.get_providers()[0]}, {self.threads} threads>")


def make_engine(model: Model, kind: EngineKind = "auto", **options: Any) -> Engine:
    """The engine called ``kind`` for ``model``.

    ``"torch"``: PyTorch eager. ``"onnx"``: ONNX Runtime (raises :class:`EngineError` when it is
    not installed). ``"auto"``: ONNX Runtime when it is installed and the export works, else
    PyTorch (with a logged warning if the export failed); a model on a CUDA device stays on
    PyTorch unless ONNX Runtime has CUDA too. ``options`` go to :class:`OnnxEngine`.
    """
    if kind == "torch":
        return TorchEngine(model)
    if kind == "onnx":
        return OnnxEngine(model, **options)
    if kind == "auto":
        if not _ort_available():
            return TorchEngine(model)
        on_gpu = getattr(model, "device", torch.device("cpu")).type == "cuda"
        if on_gpu and "CUDAExecutionProvider" not in default_providers():
            return TorchEngine(model)
        try:
            return OnnxEngine(model, **options)
        except EngineError as exc:
            log.warning("falling back to the torch engine: %s", exc)
            return TorchEngine(model)
    raise EngineError(f"unknown engine {kind!r}; choose one of {', '.join(ENGINES)}")


# --------------------------------------------------------------------------------------------
# ONNX Runtime helpers


def _import_ort():
    try:
        import onnxruntime
    except ImportError:
        raise EngineError(f"the onnx engine needs ONNX Runtime, which is not installed; "
                          f"{_ORT_HELP}") from None
    return onnxruntime


def _ort_available() -> bool:
    try:
        _import_ort()
    except EngineError:
        return False
    return True


def default_providers() -> list[str]:
    """CUDA first when this ONNX Runtime build has it, then the CPU."""
    available = _import_ort().get_available_providers()
    preferred = [p for p in ("CUDAExecutionProvider",) if p in available]
    return [*preferred, "CPUExecutionProvider"]


def physical_cores() -> int:
    """Physical cores this process may run on: hyper-threads count once (two threads on one
    core share its FMA units); falls back to the usable logical CPUs."""
    if hasattr(os, "sched_getaffinity"):
        allowed = os.sched_getaffinity(0)
    else:
        allowed = set(range(os.cpu_count() or 1))
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    cores = set()
    for block in text.split("\n\n"):
        fields = {key.strip(): value.strip()
                  for key, _, value in (line.partition(":") for line in block.splitlines())}
        cpu = fields.get("processor", "")
        if cpu.isdigit() and int(cpu) in allowed:
            cores.add((fields.get("physical id"), fields.get("core id", cpu)))
    return max(1, len(cores) or len(allowed))


# --------------------------------------------------------------------------------------------
# Export and its cache


def state_digest(module: torch.nn.Module) -> str:
    """SHA-256 over the module's state dict (names, shapes, dtypes and values)."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def weights_key(model: Model) -> str:
    """The weights' SHA-256 (the model's own, else :func:`state_digest`), then a short digest
    of the module's actual state: a model that shares its file's hash but not its weights (a
    custom head attached, weights edited in place) never picks up another model's graph."""
    state = state_digest(model.module)
    return f"{getattr(model, 'weights_sha256', None) or state}-{state[:12]}"


def onnx_dir() -> Path:
    """``<belka cache>/onnx``: next to the weight cache (``$BELKA_CACHE/onnx`` when set)."""
    from .models.weights import cache_dir

    return cache_dir().parent / "onnx"


def onnx_path(model: Model, opset: int = OPSET) -> Path:
    """Where the exported graph of ``model`` is cached: one file per (model name, weights
    SHA-256 and state digest, torch version, opset)."""
    model = backbone_of(model)
    name = (f"{model.name}-{weights_key(model)}-torch{torch.__version__}-opset{opset}"
            f"-g{GRAPH_VERSION}.onnx")
    return onnx_dir() / re.sub(r"[^A-Za-z0-9._+-]", "_", name)


def is_exported(model: Model, opset: int = OPSET) -> bool:
    """Whether the model's graph is already in the export cache (opening it is then cheap)."""
    return _ort_available() and onnx_path(model, opset).is_file()


def export_onnx(model: Model, opset: int = OPSET, *, force: bool = False) -> Path:
    """Export ``model`` to ONNX once and return the cached file.

    Uses ``torch.onnx.export(dynamo=True)`` with a dynamic batch axis; when that exporter is
    unavailable (no onnxscript) or fails, the legacy TorchScript exporter in eval mode with
    constant folding (BatchNorm folded into the convolutions). The file is written to a
    temporary name and renamed into place, so concurrent exports never leave a partial file.
    """
    model = backbone_of(model)
    path = onnx_path(model, opset)
    if path.is_file() and not force:
        return path
    log.info("exporting %s to ONNX for the fast engine, once for these weights (about 20-35 s "
             "on two cores; --engine torch skips it)", model.name)
    started = time.perf_counter()
    data = _export(model.module, model.preprocessing.size, opset)
    _check_export(data, model)
    _write_atomic(path, data)
    log.info("exported in %.0f s; cached as %s", time.perf_counter() - started, path)
    return path


def _export(module: torch.nn.Module, size: int, opset: int) -> bytes:
    """Serialized ONNX model of ``module`` (N x 3 x size x size -> N x classes, plus the
    embedding and the feature map when :func:`graph_module` offers them)."""
    device = next(module.parameters()).device
    example = torch.zeros(2, 3, size, size, device=device)
    was_training = module.training
    module.eval()
    network = graph_module(module)
    outputs = [OUTPUT_NAME, EMBEDDING, FEATURES] if network is not module else [OUTPUT_NAME]
    try:
        with warnings.catch_warnings(), _quiet("torch.onnx", "torch.export", "torch._dynamo"):
            warnings.simplefilter("ignore")
            try:
                program = torch.onnx.export(
                    network, (example,), dynamo=True, opset_version=opset, verbose=False,
                    input_names=[INPUT_NAME], output_names=outputs,
                    dynamic_shapes=({0: torch.export.Dim("batch")},), optimize=True)
                return program.model_proto.SerializeToString()
            except Exception as exc:  # ImportError (no onnxscript) or an export failure
                log.warning("dynamo ONNX export failed (%s); using the legacy exporter", exc)
            buffer = io.BytesIO()
            try:
                torch.onnx.export(
                    network, (example,), buffer, dynamo=False, opset_version=opset,
                    input_names=[INPUT_NAME], output_names=outputs,
                    dynamic_axes={name: {0: "batch"} for name in [INPUT_NAME, *outputs]},
                    training=torch.onnx.TrainingMode.EVAL, do_constant_folding=True)
            except Exception as exc:
                raise EngineError(f"cannot export the model to ONNX ({exc}); "
                                  "use --engine torch") from exc
            return buffer.getvalue()
    finally:
        module.train(was_training)


def _check_export(data: bytes, model: Model) -> None:
    """Run the fresh graph once against PyTorch; refuse to cache a graph that disagrees."""
    try:
        ort = _import_ort()
    except EngineError:
        return
    size = model.preprocessing.size
    x = np.random.default_rng(0).uniform(-1, 1, (2, 3, size, size)).astype(np.float32)
    try:
        session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
        got = session.run(None, {session.get_inputs()[0].name: x})[0]
    except Exception as exc:  # onnxruntime's own exception classes
        raise EngineError(f"ONNX Runtime cannot run the exported graph ({exc}); "
                          "use --engine torch") from exc
    want = TorchEngine(model).logits(x)
    error = float(np.abs(got - want).max())
    if not error <= 1e-3 * max(1.0, float(np.abs(want).max())):
        raise EngineError(f"the exported ONNX graph disagrees with PyTorch (max |diff| {error:.3g});"
                          " use --engine torch")


class _quiet:
    """Raise some loggers to ERROR for the duration of a ``with`` block."""

    def __init__(self, *names: str):
        self.loggers = [logging.getLogger(n) for n in names]
        self.levels: list[int] = []

    def __enter__(self) -> None:
        self.levels = [lg.level for lg in self.loggers]
        for lg in self.loggers:
            lg.setLevel(logging.ERROR)

    def __exit__(self, *exc: object) -> None:
        for lg, level in zip(self.loggers, self.levels):
            lg.setLevel(level)


def _write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (a ``.part`` file renamed into place); a cache
    that cannot be written is an :class:`EngineError`."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, data, suffix=".part")
    except OSError as exc:
        raise EngineError(f"cannot write to the cache ({exc})", path=str(path.parent)) from None


# --------------------------------------------------------------------------------------------
# int8 (optional)


def quantize_int8(model: Model, calibration: Iterable[str | os.PathLike], *, limit: int = 200,
                  batch_size: int = 8, per_channel: bool = True) -> Path:
    """Static int8 quantization (QDQ, per-channel weights) of the fp32 export, calibrated on the
    user's photos; returns the cached int8 file (keyed by the fp32 file and the photo list).

    Needs ``onnxruntime`` and ``onnx``. Check top-1 agreement with fp32 before using it (the
    benchmark prints it); belka never turns int8 on by itself.
    """
    _import_ort()
    from onnxruntime import quantization as q

    from . import images
    from .models.preprocessing import draft_size

    files = sorted(map(str, calibration))
    if len(files) > limit:  # an even spread, not the first folder only
        files = [files[i * len(files) // limit] for i in range(limit)]
    if not files:
        raise EngineError("int8 calibration needs at least one photo")
    fp32 = export_onnx(model)
    key = hashlib.sha256("\n".join([fp32.name, str(per_channel), *files]).encode()).hexdigest()
    path = fp32.with_name(f"{fp32.stem}-int8-{key[:16]}.onnx")
    if path.is_file():
        return path
    prep = model.preprocessing
    draft = draft_size(prep)

    def batches() -> Iterable[dict[str, np.ndarray]]:
        for start in range(0, len(files), batch_size):
            resized = []
            for file in files[start:start + batch_size]:
                try:
                    resized.append(prep.resize(images.decode(file, draft=draft)))
                except BelkaError:
                    continue
            if resized:
                yield {INPUT_NAME: normalize(np.stack(resized), prep)}

    class Reader(q.CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(batches())

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.it, None)

    with tempfile.TemporaryDirectory(dir=fp32.parent) as tmp:
        prepared = Path(tmp, "prepared.onnx")
        q.quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
        out = Path(tmp, "int8.onnx")
        q.quantize_static(str(prepared), str(out), Reader(), quant_format=q.QuantFormat.QDQ,
                          per_channel=per_channel, activation_type=q.QuantType.QUInt8,
                          weight_type=q.QuantType.QInt8)
        os.replace(out, path)
    return path
