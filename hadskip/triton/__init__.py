"""hadskip.triton: serve a model dir on NVIDIA Triton Inference Server (torch-free).

    write_repo(model_dir, "repo", TritonRepoConfig(backend="ort-cpu"))   # repo.py: a Triton model repository
    with LocalTriton("repo") as server: ...                              # local.py: the wheel's tritonserver

model.py is the Python-backend model itself: write_repo copies it into the repository, and it runs inside
Triton's Python stub (it imports triton_python_backend_utils, so nothing here imports it).
"""

from hadskip.triton.local import LocalTriton
from hadskip.triton.repo import TritonRepoConfig, write_repo

__all__ = ["LocalTriton", "TritonRepoConfig", "write_repo"]
