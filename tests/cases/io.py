"""Special files and decompression bombs that the factor-file tests hand to load_factors."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

import lowrank_pool as lp


# ----------------------------------------------------------------------------- files: kinds that hang, explode or lie
def _special_files(tmp_path: Any) -> dict[str, Any]:
    """Paths that are not regular files (FIFO, socket, device, directory, a link to a device), each under a name
    load_factors would try."""
    import os
    import socket

    out = {}
    os.mkfifo(tmp_path / "fifo.npz")
    out["FIFO"] = tmp_path / "fifo.npz"
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(tmp_path / "sock.npz"))
    out["socket"] = tmp_path / "sock.npz"
    (tmp_path / "dir.npz").mkdir()
    out["directory"] = tmp_path / "dir.npz"
    os.symlink("/dev/zero", tmp_path / "zero.npz")
    out["link to /dev/zero"] = tmp_path / "zero.npz"
    out["/dev/null"] = "/dev/null"
    os.symlink(tmp_path / "fifo.npz", tmp_path / "link_to_fifo")
    out["a name whose .npz twin is missing, itself a link to a FIFO"] = tmp_path / "link_to_fifo"
    out["_socket"] = sock
    return out


def _bomb(path: Any, members: dict[str, tuple[tuple[int, ...], int]]) -> None:
    """A deflated archive whose members declare `shape` float64 arrays of zeros (`repeat` copies of each): tiny on
    disk, huge decompressed, and consistent (each member holds exactly what its header declares)."""
    import io
    import zipfile

    tags = io.BytesIO()
    lp.save_factors(tags, np.ones((1, 2, 2)))
    src = zipfile.ZipFile(io.BytesIO(tags.getvalue()))
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for name in src.namelist():
            if name != "W.npy":
                z.writestr(name, src.read(name))
        for name, (shape, repeat) in members.items():
            header = io.BytesIO()
            np.lib.format.write_array_header_1_0(header, {"descr": "<f8", "fortran_order": False, "shape": shape})
            for k in range(repeat):
                with z.open(f"{name}{k or ''}.npy", "w", force_zip64=True) as fh:
                    fh.write(header.getvalue())
                    for _ in range(math.prod(shape) * 8 // 2**20):
                        fh.write(bytes(2**20))
                    fh.write(bytes(math.prod(shape) * 8 % 2**20))
