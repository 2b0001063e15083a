"""Kernelized attention, reproduced: RPE via FFT (Luo et al. 2021), randomized attention (Zheng et al. 2022), learned kernels (Chowdhury et al. 2022)

Modules:

- `kattn.bench`: Time (forward, forward+backward) and peak memory of attention implementations: one process, interleaved repeats after warm-up, medians, sweeps over n and m, results as a DataFrame and JSON.
- `kattn.structured_rpe`: Exact fast paths for two families of relative positional encodings in kernelized attention — T5 log buckets via prefix sums, and mixtures of exponential decays via chunked scans with an O(1)-state decoder."""

__version__ = "0.1.0"
