"""The layer map's parts, by job (notebook 01). `ditguide.analysis` (the testbeds) and
`ditguide.analysis_real` (real profiles) are its public faces and re-export every name below.

    configs.py          what the scans vary: named edits, step windows, noise levels, (edit, block, window)
    probe.py            block addresses and the residual probe (|dh| / |h|, cos(h_in, h_out) per block)
    stats.py            mean with standard error, per-sample cosine
    denoiser_scan.py    the testbeds' denoiser scan: residuals and error alignment against D*
    generation_scan.py  sampling with an edit on some steps, the generation scan, its resumable records
    real_judges.py      real profiles: FID features, DINOv2 / CLIP image embeddings, tiny random stand-ins
    real_bed.py         real profiles: RealBed (dev captions, sampling, scores), its options, bed_for
    real_scan.py        real profiles: both scans without D*, the candidates without error alignment
    real_cost.py        real profiles: the scan's GPU time from timed forwards
"""
