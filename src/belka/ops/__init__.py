"""Image operations that need no model.

* :mod:`belka.ops.filters`: the kernel catalogue, custom kernels and a tiled convolution
  (``belka filter``).
* :mod:`belka.ops.transforms`: CSS transform strings to matrices with Chromium's semantics, and
  browser-like warps (``belka transform``).

The submodules are imported on demand (``from belka.ops.filters import convolve``) so that
importing :mod:`belka.ops` stays cheap.
"""
