"""Where the GPU backends look for libcudart (issue 15, item 4): the copy already loaded in the process first,
then the CUDA major onnxruntime-gpu / tensorrt were built for, including the CUDA 13 wheels' nvidia/cu13/lib."""

from __future__ import annotations

import types

from hadskip.runtime.backends import memory

MAPS = """\
7f0000000000-7f0000001000 r-xp 00000000 08:01 1 /usr/lib/libc.so.6
7f0000002000-7f0000003000 r-xp 00000000 08:01 2 /site/nvidia/cu13/lib/libcudart.so.13
7f0000003000-7f0000004000 r--p 00001000 08:01 2 /site/nvidia/cu13/lib/libcudart.so.13
7f0000005000-7f0000006000 rw-p 00000000 00:00 0
7f0000007000-7f0000008000 r-xp 00000000 08:01 3 /opt/my libs/libcudart.so.12.4.127
"""


def _wheel(root, *parts):
    path = root.joinpath(*parts)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return str(path)


def test_loaded_copies_are_read_from_the_process_map():
    assert memory.loaded_cudart(MAPS) == ["/site/nvidia/cu13/lib/libcudart.so.13", "/opt/my libs/libcudart.so.12.4.127"]
    assert memory.loaded_cudart("") == []


def test_order_loaded_then_wanted_major_then_the_rest(tmp_path):
    cu13 = _wheel(tmp_path, "nvidia", "cu13", "lib", "libcudart.so.13")
    cu12 = _wheel(tmp_path, "nvidia", "cuda_runtime", "lib", "libcudart.so.12")
    got = memory.cudart_candidates(["/loaded/libcudart.so.13"], (12,), [str(tmp_path)], "libcudart.so.12")
    assert got == ["/loaded/libcudart.so.13", "libcudart.so.12", cu12, "libcudart.so.13", cu13,
                   "libcudart.so.11.0", "libcudart.so"]  # the find_library result is not repeated
    got = memory.cudart_candidates([], (), [str(tmp_path)])
    assert got.index(cu13) < got.index(cu12)  # nothing wanted: the newest CUDA first
    assert memory.cudart_candidates([], (13,), [str(tmp_path)])[:2] == ["libcudart.so.13", cu13]


def test_wanted_majors_come_from_onnxruntime_gpu_and_the_tensorrt_wheels(monkeypatch):
    import importlib.metadata as md

    import onnxruntime.capi as capi

    info = types.ModuleType("onnxruntime.capi.build_and_package_info")
    info.package_name, info.__version__, info.cuda_version = "onnxruntime-gpu", "1.30.0", "12.8"
    monkeypatch.setattr(capi, "build_and_package_info", info, raising=False)
    dists = [types.SimpleNamespace(metadata={"Name": n}) for n in ("numpy", "tensorrt_cu13_libs", "tensorrt-cu12")]
    monkeypatch.setattr(md, "distributions", lambda: dists)
    memory.wanted_cuda_majors.cache_clear()
    try:
        assert memory.wanted_cuda_majors() == (12, 13)
    finally:
        memory.wanted_cuda_majors.cache_clear()


def test_the_loaded_copy_is_the_one_opened(monkeypatch):
    opened = []

    def cdll(name):
        opened.append(name)
        return types.SimpleNamespace(name=name)

    monkeypatch.setattr(memory.sys, "platform", "linux")
    monkeypatch.setattr(memory, "loaded_cudart", lambda: ["/already/libcudart.so.13"])
    monkeypatch.setattr(memory.ctypes, "CDLL", cdll)
    assert memory._load_cudart().name == "/already/libcudart.so.13" and opened == ["/already/libcudart.so.13"]
