"""Encodings of an experiment's arrays for people and other programs: PNG (an image scaled to
its range), NPY, and NeXus/HDF5 (every array as an ``NXdata`` with its axes and units, the
parameters used as attributes). Pure: arrays in, bytes out."""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from typing import Any

import numpy as np

from simulations._errors import SimulationError

__all__ = ["ExportError", "array_npy", "array_png", "nexus_bytes"]


class ExportError(SimulationError, ValueError):
    """An array that the format cannot hold (a PNG of a 4D array)."""


def array_npy(array: np.ndarray) -> bytes:
    """The array in NumPy's ``.npy`` format."""
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(array), allow_pickle=False)
    return buffer.getvalue()


def array_png(array: np.ndarray) -> bytes:
    """A grey-scale 8-bit PNG of a 2D array (axis 0 along x, drawn left to right), scaled
    from its minimum to its maximum; a stack's first plane for 3D arrays."""
    from PIL import Image

    data = np.asarray(array, dtype=float)
    while data.ndim > 2:
        data = data[0]
    if data.ndim != 2:
        raise ExportError(f"a PNG needs a 2D array, not {data.ndim}D")
    low, high = float(np.nanmin(data)), float(np.nanmax(data))
    scaled = np.zeros_like(data) if high <= low else (data - low) / (high - low)
    pixels = np.nan_to_num(scaled * 255).round().astype(np.uint8).T  # rows = y
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def nexus_bytes(
    arrays: Mapping[str, np.ndarray],
    axes: Mapping[str, Mapping[str, list[Any]]],
    parameters: Mapping[str, Any],
) -> bytes:
    """A NeXus/HDF5 file: ``/entry`` (``NXentry``) with one ``NXdata`` group per array (its
    signal, and per axis the coordinates [unit]); the parameters as JSON in
    ``/entry/parameters``."""
    import h5py

    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as nexus:
        entry = nexus.create_group("entry")
        entry.attrs["NX_class"] = "NXentry"
        entry.create_dataset("parameters", data=json.dumps(parameters, sort_keys=True))
        for name, array in arrays.items():
            group = entry.create_group(name)
            group.attrs["NX_class"] = "NXdata"
            group.attrs["signal"] = "data"
            group.create_dataset("data", data=np.asarray(array), compression="gzip")
            info = axes.get(name, {})
            dims = list(info.get("dims", []))
            group.attrs["axes"] = dims or ["."] * np.ndim(array)
            for i, dim in enumerate(dims):
                step = float(info["sampling"][i])
                coordinates = np.arange(np.shape(array)[i]) * step
                dataset = group.create_dataset(dim, data=coordinates)
                dataset.attrs["units"] = info["units"][i]
    return buffer.getvalue()
