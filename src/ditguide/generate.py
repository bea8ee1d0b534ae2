"""Sharded, resumable rendering of a prompt list to files, for FID/CLIP-SIM and VBench.

Layout of a generation folder `out_dir`:

    out_dir/manifest.json   what made these files: renderer description, seeds, package versions
    out_dir/samples/        the outputs and nothing else (VBench and clean-fid read this folder)
    out_dir/.partial/       files being written; moved into samples/ only when complete

Images are `{index:05d}.png`; videos follow VBench's naming, `{prompt}-{i}.mp4` with i = 0..4
(five seeds per prompt). Sample `index` always gets the noise of `sample_seed(index, base_seed)`
(the renderer draws it with `ditguide.seeding`), so a file does not depend on the batch size,
the number of processes, or on which run (first or resumed) produced it.

Runs on one process or many (`accelerate launch`): process r renders the indices with
`index % num_processes == r`; every file is written to `.partial/` and moved into place with
`os.replace`, so a killed run leaves no half-written output, and a rerun renders only what is
missing. The manifest is checked on every run: resuming with a different model, spec, seed or
software is an error, never a silent mix of two runs.

The code is split by job, every public name re-exported here: the sample plan and the renderer
protocol (`generate_plan`), the manifest and the atomic writing of each file (`generate_folder`), the
loop over this process's shard (`generate_run`), and the command line (`generate_cli`, this module's
`main`: `python -m ditguide.generate --help`).
"""

from __future__ import annotations

import sys

from .generate_cli import main
from .generate_folder import (
    DEFAULT_VIDEO_CRF,
    OUTPUT_AFFECTING_PACKAGES,
    PARTIAL_DIRNAME,
    build_manifest,
    ensure_manifest,
    package_versions,
)
from .generate_folder import write_mp4 as _write_mp4  # noqa: F401  (tests write deliberately wrong videos with it)
from .generate_plan import (
    MAX_FILE_NAME_BYTES,
    Renderer,
    Sample,
    plan_samples,
    read_names,
    read_prompts,
    video_file_name,
)
from .generate_run import GenerationSummary, default_state, generate
from .metrics.folder import (  # the folder layout and its reader (the metrics own it); re-exported
    KINDS,
    MANIFEST_FORMAT,
    MANIFEST_NAME,
    SAMPLES_DIRNAME,
    IncompleteOutputError,
    ManifestMismatchError,
    decode_error,
    expected_size,
    load_manifest,
    prompt_map,
    read_manifest,
    size_text,
    verify,
)
from .metrics.vbench_score import VIDEOS_PER_PROMPT as VBENCH_VIDEOS_PER_PROMPT

__all__ = [
    "KINDS",
    "MANIFEST_FORMAT",
    "MANIFEST_NAME",
    "SAMPLES_DIRNAME",
    "PARTIAL_DIRNAME",
    "VBENCH_VIDEOS_PER_PROMPT",
    "GenerationSummary",
    "IncompleteOutputError",
    "ManifestMismatchError",
    "Renderer",
    "Sample",
    "build_manifest",
    "default_state",
    "ensure_manifest",
    "generate",
    "load_manifest",
    "main",
    "package_versions",
    "plan_samples",
    "prompt_map",
    "read_names",
    "read_prompts",
    "verify",
    "video_file_name",
    # importable here before the split as well
    "DEFAULT_VIDEO_CRF",
    "MAX_FILE_NAME_BYTES",
    "OUTPUT_AFFECTING_PACKAGES",
    "decode_error",
    "expected_size",
    "read_manifest",
    "size_text",
]

if __name__ == "__main__":
    # Run the package's module rather than this __main__ copy: its exception classes are the ones the
    # CLI error handler (ditguide.cli) recognises.
    from ditguide.generate import main as _main

    sys.exit(_main())
