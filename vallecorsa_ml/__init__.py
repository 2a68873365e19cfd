"""CERN openlab's ML portfolio made real: calorimeter fast simulation (3DGAN, diffusion transformers) judged against Geant4, anomaly detection, LHCOPN traffic forecasting, building-damage assessment, and sustainable AI (quantization, distributed training, energy).

Modules:

- `vallecorsa_ml.docs`: The offline documentation site: execute the notebooks, process them with nbdev, render with pandoc, check in headless Chromium.
- `vallecorsa_ml.pipeline`: The papermill runner behind `make run` / `vml-run`: executes the topic notebooks with a profile, gathers every notebook's `metrics.json` and writes one report."""

__version__ = "0.1.0"
