// belka.js: belka's upload gate in the browser, with the same numbers as Python.
//
//   import { load } from "./belka.js";
//   const gate = await load("./");                 // the folder `belka export web` wrote
//   const r = await gate.check(file);              // File, Blob, <img>, ImageBitmap or URL
//   r.verdict, r.score, r.threshold, r.allowed, r.predictions, r.box
//
// The photo never leaves the page: it is decoded, resized and classified here, by
// onnxruntime-web (WebAssembly) running the exported model. Preprocessing reproduces belka's
// Python path exactly: full decode, EXIF orientation, no colour management, Pillow's bilinear
// (antialiased) resampling in fixed point, the same crop and tile arithmetic (Python's
// round-half-to-even included). See docs/client.md.
//
// A native ES module; no build step, no dependencies besides the runtime in ./ort/.

const PRECISION_BITS = 22;           // Pillow's fixed-point resampling (32 - 8 - 2)
const ONE = 1 << PRECISION_BITS;
const HALF = 1 << (PRECISION_BITS - 1);
const MAX_CROP_INTERMEDIATE = 16;    // belka.images._MAX_CROP_INTERMEDIATE

// ---- arithmetic as Python does it -------------------------------------------------------------

/** Python's round(x) for a float: to the nearest integer, halves to the even one. */
export function pyRound(x) {
  const f = Math.floor(x);
  const d = x - f;
  if (d > 0.5) return f + 1;
  if (d < 0.5) return f;
  return f % 2 === 0 ? f : f + 1;
}

function centre(outer, inner) {
  return pyRound((outer - inner) / 2.0);
}

// ---- Pillow's resampling (libImaging/Resample.c, bilinear filter, 8 bits per channel) ---------

function bilinear(x) {
  if (x < 0.0) x = -x;
  return x < 1.0 ? 1.0 - x : 0.0;
}

function coefficients(inSize, in0, in1, outSize) {
  const scale = (in1 - in0) / outSize;
  const filterscale = scale < 1.0 ? 1.0 : scale;
  const support = 1.0 * filterscale;
  const ksize = Math.ceil(support) * 2 + 1;
  const kk = new Int32Array(outSize * ksize);
  const bounds = new Int32Array(outSize * 2);
  const w = new Float64Array(ksize + 2);
  const ss = 1.0 / filterscale;
  for (let xx = 0; xx < outSize; xx++) {
    const center = in0 + (xx + 0.5) * scale;
    let xmin = Math.trunc(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    let xmax = Math.trunc(center + support + 0.5);
    if (xmax > inSize) xmax = inSize;
    xmax -= xmin;
    let ww = 0.0;
    for (let x = 0; x < xmax; x++) {
      const v = bilinear((x + xmin - center + 0.5) * ss);
      w[x] = v;
      ww += v;
    }
    for (let x = 0; x < xmax; x++) {
      const v = ww !== 0.0 ? w[x] / ww : w[x];
      kk[xx * ksize + x] = v < 0 ? Math.trunc(-0.5 + v * ONE) : Math.trunc(0.5 + v * ONE);
    }
    bounds[xx * 2] = xmin;
    bounds[xx * 2 + 1] = xmax;
  }
  return { ksize, kk, bounds };
}

function clip8(v) {
  if (v >= ONE * 256) return 255;
  if (v <= 0) return 0;
  return v >> PRECISION_BITS;
}

function horizontalPass(data, width, first, rows, x0, x1, outW) {
  const { ksize, kk, bounds } = coefficients(width, x0, x1, outW);
  const out = new Uint8Array(outW * rows * 3);
  let o = 0;
  for (let y = 0; y < rows; y++) {
    const rowStart = (y + first) * width * 3;
    for (let xx = 0; xx < outW; xx++) {
      const xmin = bounds[xx * 2], xmax = bounds[xx * 2 + 1];
      const k = xx * ksize;
      let s0 = HALF, s1 = HALF, s2 = HALF;
      let p = rowStart + xmin * 3;
      for (let x = 0; x < xmax; x++, p += 3) {
        const c = kk[k + x];
        s0 += data[p] * c;
        s1 += data[p + 1] * c;
        s2 += data[p + 2] * c;
      }
      out[o++] = clip8(s0);
      out[o++] = clip8(s1);
      out[o++] = clip8(s2);
    }
  }
  return out;
}

function verticalPass(data, width, height, y0, y1, outH) {
  const { ksize, kk, bounds } = coefficients(height, y0, y1, outH);
  const stride = width * 3;
  const out = new Uint8Array(stride * outH);
  let o = 0;
  for (let yy = 0; yy < outH; yy++) {
    const ymin = bounds[yy * 2], ymax = bounds[yy * 2 + 1];
    const k = yy * ksize;
    for (let xx = 0; xx < width; xx++) {
      let s0 = HALF, s1 = HALF, s2 = HALF;
      let p = ymin * stride + xx * 3;
      for (let y = 0; y < ymax; y++, p += stride) {
        const c = kk[k + y];
        s0 += data[p] * c;
        s1 += data[p + 1] * c;
        s2 += data[p + 2] * c;
      }
      out[o++] = clip8(s0);
      out[o++] = clip8(s1);
      out[o++] = clip8(s2);
    }
  }
  return out;
}

/**
 * belka.images.resample: Pillow's bilinear resize of an RGB image {width, height, data}
 * (data: Uint8Array, 3 bytes a pixel) to outW x outH from box = [x0, y0, x1, y1], horizontal
 * pass first (over the rows the vertical pass reads), then vertical, each pass as a one-axis
 * Pillow resize (box edges as C floats, hence Math.fround). Returns a new RGB image.
 */
export function resample(image, box, outW, outH) {
  const { width, height, data } = image;
  const [x0, y0, x1, y1] = box;
  // the rows [first, last) the vertical pass reads (belka.images._rows_read)
  const in0 = Math.fround(y0), in1 = Math.fround(y1);
  const scale = (in1 - in0) / outH;
  const support = Math.max(scale, 1.0);
  const first = Math.max(0, Math.trunc(in0 + 0.5 * scale - support + 0.5));
  const last = Math.min(height, Math.trunc(in0 + (outH - 1 + 0.5) * scale + support + 0.5));
  const rows = last - first;
  // horizontal pass: Pillow's strip.resize((outW, rows), box=(x0, 0, x1, rows))
  const hx0 = Math.fround(x0), hx1 = Math.fround(x1);
  let wide;
  if (outW === width && hx0 === 0 && hx1 === outW) {
    wide = data.subarray(first * width * 3, last * width * 3);
  } else {
    wide = horizontalPass(data, width, first, rows, hx0, hx1, outW);
  }
  // vertical pass: Pillow's wide.resize((outW, outH), box=(0, y0 - first, outW, y1 - first))
  const vy0 = Math.fround(y0 - first), vy1 = Math.fround(y1 - first);
  if (outH === rows && vy0 === 0 && vy1 === outH) {
    return { width: outW, height: outH, data: wide.slice() };
  }
  return { width: outW, height: outH, data: verticalPass(wide, outW, rows, vy0, vy1, outH) };
}

function crop(image, left, top, w, h) {
  const out = new Uint8Array(w * h * 3);
  for (let y = 0; y < h; y++) {
    const from = ((top + y) * image.width + left) * 3;
    out.set(image.data.subarray(from, from + w * 3), y * w * 3);
  }
  return { width: w, height: h, data: out };
}

/** belka.images.resize: an RGB image to size x size by the policy (crop, squash, letterbox). */
export function resizePolicy(image, size, policy = "crop", cropFraction = 0.875, fill = [0, 0, 0]) {
  const { width, height } = image;
  if (policy === "squash") return resample(image, [0, 0, width, height], size, size);
  if (policy === "crop") {
    const short = pyRound(size / cropFraction);
    const scale = short / Math.min(width, height);
    const scaled = width <= height ? [short, pyRound(height * scale)]
                                   : [pyRound(width * scale), short];
    const left = centre(scaled[0], size), top = centre(scaled[1], size);
    if (scaled[0] * scaled[1] <= MAX_CROP_INTERMEDIATE * size * size) {
      return crop(resample(image, [0, 0, width, height], scaled[0], scaled[1]), left, top, size, size);
    }
    const xStep = width / scaled[0], yStep = height / scaled[1];
    const win = [left * xStep, top * yStep, (left + size) * xStep, (top + size) * yStep];
    return resample(image, win, size, size);
  }
  if (policy === "letterbox") {
    const scale = size / Math.max(width, height);
    const sw = Math.max(1, pyRound(width * scale)), sh = Math.max(1, pyRound(height * scale));
    const inner = resample(image, [0, 0, width, height], sw, sh);
    const out = new Uint8Array(size * size * 3);
    for (let i = 0; i < size * size; i++) out.set(fill, i * 3);
    const ox = centre(size, sw), oy = centre(size, sh);
    for (let y = 0; y < sh; y++) {
      const ty = y + oy;
      if (ty < 0 || ty >= size) continue;
      for (let x = 0; x < sw; x++) {
        const tx = x + ox;
        if (tx < 0 || tx >= size) continue;
        out.set(inner.data.subarray((y * sw + x) * 3, (y * sw + x) * 3 + 3), (ty * size + tx) * 3);
      }
    }
    return { width: size, height: size, data: out };
  }
  throw new Error(`unknown resize policy ${policy}`);
}

// ---- tiles (belka.tiling) ---------------------------------------------------------------------

function positions(length, side, overlap) {
  if (side >= length - 0.5) return [0.0];
  const stride = side * (1.0 - overlap);
  const count = Math.max(1, Math.ceil((length - side) / stride - 0.01)) + 1;
  const out = [];
  for (let i = 0; i < count; i++) out.push(i * (length - side) / (count - 1));
  return out;
}

/** belka.tiling.tile_boxes: square overlapping tiles, [x0, y0, x1, y1] each. */
export function tileBoxes(height, width, tiling) {
  const { grids = [2, 3], overlap = 0.25, min_tile: minTile = 180 } = tiling;
  const short = Math.min(height, width);
  const out = [];
  for (const n of grids) {
    const side = short / (n - (n - 1) * overlap);
    if (n <= 1 || side < minTile) continue;
    const s = pyRound(side);
    for (const y of positions(height, side, overlap)) {
      for (const x of positions(width, side, overlap)) {
        const x0 = Math.min(pyRound(x), width - s), y0 = Math.min(pyRound(y), height - s);
        out.push([x0, y0, x0 + s, y0 + s]);
      }
    }
  }
  return out;
}

// ---- decoding ---------------------------------------------------------------------------------

const BITMAP_OPTIONS = {
  imageOrientation: "from-image",     // EXIF orientation, as belka.images.decode
  colorSpaceConversion: "none",       // no ICC / gamma conversion, as Pillow
  premultiplyAlpha: "none",
};

async function toBitmap(source) {
  if (typeof ImageBitmap !== "undefined" && source instanceof ImageBitmap) return source;
  if (typeof Blob !== "undefined" && source instanceof Blob) {
    return createImageBitmap(source, BITMAP_OPTIONS);
  }
  if (typeof HTMLImageElement !== "undefined" && source instanceof HTMLImageElement) {
    // The file's bytes when they can be fetched (same EXIF and colour handling as a File),
    // else the element as the browser drew it.
    try {
      const response = await fetch(source.currentSrc || source.src);
      if (response.ok) return createImageBitmap(await response.blob(), BITMAP_OPTIONS);
    } catch (err) { /* fall through */ }
    if (!source.complete) await source.decode();
    return createImageBitmap(source, BITMAP_OPTIONS);
  }
  if (typeof source === "string" || source instanceof URL) {
    const response = await fetch(source);
    if (!response.ok) throw new Error(`cannot fetch ${source}: HTTP ${response.status}`);
    return createImageBitmap(await response.blob(), BITMAP_OPTIONS);
  }
  throw new TypeError("belka: pass a File, Blob, HTMLImageElement, ImageBitmap or URL");
}

/**
 * Any image source -> {width, height, data: Uint8Array RGB}, upright, transparency composited
 * onto white (as belka.images.decode).
 */
export async function decode(source) {
  const bitmap = await toBitmap(source);
  const { width, height } = bitmap;
  const canvas = typeof OffscreenCanvas !== "undefined" ? new OffscreenCanvas(width, height)
    : Object.assign(document.createElement("canvas"), { width, height });
  const ctx = canvas.getContext("2d", { willReadFrequently: true, alpha: false });
  ctx.fillStyle = "#ffffff";
  ctx.fillRect(0, 0, width, height);
  ctx.drawImage(bitmap, 0, 0);
  if (bitmap !== source && bitmap.close) bitmap.close();
  const rgba = ctx.getImageData(0, 0, width, height).data;
  const data = new Uint8Array(width * height * 3);
  for (let i = 0, j = 0; i < rgba.length; i += 4, j += 3) {
    data[j] = rgba[i];
    data[j + 1] = rgba[i + 1];
    data[j + 2] = rgba[i + 2];
  }
  return { width, height, data };
}

// ---- the gate ---------------------------------------------------------------------------------

function ranked(probs, offset, count, labels, top) {
  const order = Array.from({ length: count }, (_, i) => i);
  order.sort((a, b) => (probs[offset + b] - probs[offset + a]) || (a - b));
  return order.slice(0, Math.max(1, Math.min(top, count))).map((i) => (
    { label: labels[i], index: i, probability: probs[offset + i] }));
}

function combine(scores, method) {
  let best = 0;
  for (let i = 1; i < scores.length; i++) if (scores[i] > scores[best]) best = i;
  if (method === "noisy-or") {
    let keep = 1.0;
    for (const s of scores) keep *= 1.0 - Math.min(1.0, Math.max(0.0, s));
    return [1.0 - keep, best];
  }
  return [scores[best], best];
}

export class Gate {
  constructor(ort, session, policy, baseUrl, threads) {
    this.ort = ort;
    this.session = session;
    this.policy = policy;
    this.baseUrl = baseUrl;
    this.threads = threads;
    this.labels = policy.labels;
    this.threshold = policy.threshold;
    this.allowed = policy.allowed;
    this.tiling = policy.tiles ? policy.tiling : null;
    this.lastTiming = null;
  }

  /** The views the gate runs for a decoded image: the whole image, then the tiles. */
  views(image, tiles = true) {
    const p = this.policy.preprocessing;
    const size = p.size;
    const fill = p.mean.map((m) => pyRound(m));
    const whole = resizePolicy(image, size, p.policy, p.crop_fraction, fill);
    const boxes = tiles && this.tiling ? tileBoxes(image.height, image.width, this.tiling) : [];
    const batch = new Uint8Array((1 + boxes.length) * size * size * 3);
    batch.set(whole.data, 0);
    boxes.forEach((box, i) => {
      batch.set(resample(image, box, size, size).data, (i + 1) * size * size * 3);
    });
    return { batch, boxes: [null, ...boxes], count: 1 + boxes.length };
  }

  async run(batch, count) {
    const size = this.policy.preprocessing.size;
    const input = new this.ort.Tensor("uint8", batch, [count, size, size, 3]);
    const out = await this.session.run({ pixels: input });
    return { probs: out.probabilities.data, scores: out.score.data };
  }

  /** The gate's decision: {verdict, score, threshold, allowed, predictions, box, tile}. */
  async check(source) {
    const t0 = performance.now();
    const image = source && source.data instanceof Uint8Array ? source : await decode(source);
    const t1 = performance.now();
    const { batch, boxes, count } = this.views(image);
    const t2 = performance.now();
    const { probs, scores } = await this.run(batch, count);
    const t3 = performance.now();
    const [score, best] = combine(Array.from(scores), this.tiling ? this.tiling.combine : "max");
    const box = boxes[best] || null;
    this.lastTiming = { decode: t1 - t0, preprocess: t2 - t1, inference: t3 - t2, views: count };
    return {
      verdict: score >= this.threshold ? "accept" : "warn",
      score,
      threshold: this.threshold,
      allowed: this.allowed,
      predictions: ranked(probs, 0, this.labels.length, this.labels, 5),
      box,
      tile: box,   // the key `belka check --json` uses
    };
  }

  /** The top classes of the whole image (as `belka classify`): [{label, index, probability}]. */
  async classify(source, { top = 5 } = {}) {
    const image = source && source.data instanceof Uint8Array ? source : await decode(source);
    const { batch } = this.views(image, false);
    const { probs } = await this.run(batch, 1);
    return ranked(probs, 0, this.labels.length, this.labels, top);
  }
}

/**
 * Load the gate from the folder `belka export web` wrote (its URL; default: this module's).
 * options.threads: WebAssembly threads (default 2 when the page is cross-origin isolated,
 * which multi-threading needs, else 1).
 */
export async function load(baseUrl = new URL(".", import.meta.url), options = {}) {
  const base = new URL(baseUrl, globalThis.location ? globalThis.location.href : undefined);
  if (!base.pathname.endsWith("/")) base.pathname += "/";
  const policyResponse = await fetch(new URL("policy.json", base));
  if (!policyResponse.ok) throw new Error(`belka: no policy.json under ${base}`);
  const policy = await policyResponse.json();
  if (typeof WebAssembly !== "object") throw new Error("belka: this browser has no WebAssembly");
  const ort = await import(new URL(policy.runtime.module, base).href);
  const isolated = globalThis.crossOriginIsolated === true;
  const threads = isolated ? (options.threads ?? 2) : 1;
  ort.env.wasm.numThreads = threads;
  ort.env.wasm.wasmPaths = new URL("ort/", base).href;
  const modelResponse = await fetch(new URL(policy.model_file, base));
  if (!modelResponse.ok) throw new Error(`belka: cannot fetch ${policy.model_file}`);
  const bytes = new Uint8Array(await modelResponse.arrayBuffer());
  const session = await ort.InferenceSession.create(bytes, {
    executionProviders: ["wasm"], graphOptimizationLevel: "all",
  });
  return new Gate(ort, session, policy, base.href, threads);
}
