"""VBench's own temporal_flickering on T2V-testbed clips; runs in the VBench environment (.venv-vbench).

    .venv-vbench/bin/python src/ditguide/metrics/vbench_flicker_run.py CLIPS.npy OUT.json

CLIPS.npy holds uint8 clips (N, F, H, W, 3). Each clip is written as a lossless PNG sequence and
read back by VBench's `temporal_flickering.cal_score` through OpenCV's image-sequence reader, as it
reads an mp4 (no codec, so no compression artefacts enter the score). OUT.json: one score per clip.
Standalone on purpose: the VBench environment pins numpy < 2 and does not install ditguide.
"""

import json
import os
import sys
import tempfile

import cv2
import numpy as np
from vbench.temporal_flickering import cal_score


def main(src: str, out: str) -> None:
    clips = np.load(src)
    if clips.ndim != 5 or clips.dtype != np.uint8 or clips.shape[-1] != 3:
        raise SystemExit(f"{src}: expected uint8 clips (N, F, H, W, 3), got {clips.dtype} {clips.shape}")
    scores = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, clip in enumerate(clips):
            folder = os.path.join(tmp, f"{i:06d}")
            os.makedirs(folder)
            for f, frame in enumerate(clip):
                cv2.imwrite(os.path.join(folder, f"{f:03d}.png"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
            scores.append(float(cal_score(os.path.join(folder, "%03d.png"))))
    tmp_out = out + ".tmp"
    with open(tmp_out, "w") as fh:
        json.dump({"temporal_flickering": scores}, fh)
    os.replace(tmp_out, out)


if __name__ == "__main__":
    main(*sys.argv[1:])
