"""Run under `accelerate launch --cpu --num_processes 2`: fine-tune a tiny model data-parallel, then each rank
writes a digest of its in-memory weights to OUT/rank<R>.txt so the test can check the ranks agree."""

import hashlib
import sys
from pathlib import Path

import hadskip.training.loop as loop
import hadskip.training.stages as train

out, task, backbone = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
original = loop.run_steps


def recording(acc, model, *args, **kwargs):
    result = original(acc, model, *args, **kwargs)
    h = hashlib.sha256()
    for name, tensor in sorted(acc.unwrap_model(model).state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    (out / f"rank{acc.process_index}.txt").write_text(f"{acc.num_processes} {h.hexdigest()}\n")
    return result


loop.run_steps = recording
train.finetune(train.TrainConfig(backbone=backbone, task=task, out=str(out / "run"), max_len=32, batch_size=8,
                                 epochs=1, progress=False))
