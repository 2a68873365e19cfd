"""CERN openlab's ML portfolio made real: calorimeter fast simulation (3DGAN, diffusion transformers) judged against Geant4, anomaly detection, LHCOPN traffic forecasting, building-damage assessment, and sustainable AI (quantization, distributed training, energy).

Modules:

- `vallecorsa_ml.calo.diffusion`: CaloDiT-like generator: patch tokens over (z, φ, r), φ-periodic position embedding, adaLN conditioning on (log E, θ, φ, detector, noise level), EDM preconditioning and a deterministic Heun sampler; one model for several detectors.
- `vallecorsa_ml.calo.gan`: A PyTorch/fastai take on CERN's 3DGAN (Khattak et al.): a conditional generator of calorimeter showers for the cylindrical CaloChallenge dataset-2 mesh (periodic in φ) and the Cartesian 25³ / 51×51×25 meshes, trained on CPU, checkpointed and resumable, exported to ONNX and judged against Geant4.
- `vallecorsa_ml.calo.par04`: Export the shipped diffusion model as one graph that Geant4's Par04 example loads as it is (ONNX Runtime or TorchScript), emulate Par04's C++ call in Python, and measure it where Par04 runs it: one particle at a time.
- `vallecorsa_ml.calo.pretrained`: The trained generators that come with the repository, loaded by name, each with a model card the pipeline writes: `load_pretrained('dit-ds2')`, `vml-generate --model dit-ds2`, `vml-model card dit-ds2`.
- `vallecorsa_ml.calo.regression`: The diffusion transformer's trunk, with a small head, measures the incident energy and polar angle of a shower; fine-tuned from the generative training against the same network trained from scratch.
- `vallecorsa_ml.datasets`: One way to find every dataset: the files shipped in `data/`, the cache folder for large and generated data, a user's own path, and public datasets by name; plus the fixed train / validation / held-out rows of each.
- `vallecorsa_ml.distributed.ddp`: Data-parallel training on `torch.distributed`: one engine, any model that follows a small `TrainTask` interface, launched by `torchrun` (gloo on CPU, NCCL on GPUs), with rank-0 checkpoints that resume at any world size, per-epoch physics metrics and an energy account in `metrics.json`.
- `vallecorsa_ml.distributed.scaling`: How fast does data-parallel training get with more workers, what does it cost in energy, and after how many generated showers does a trained generator pay its training energy back against Geant4?
- `vallecorsa_ml.docs`: The offline documentation site: execute the notebooks, process them with nbdev, render with pandoc, check in headless Chromium.
- `vallecorsa_ml.download`: Public datasets by name: where they are published, their checksums and units, a resumable and checked download into the cache folder, and `vml-data`, the console script that lists, fetches, verifies and finds them.
- `vallecorsa_ml.pipeline`: The papermill runner behind `make run` / `vml-run`: executes the topic notebooks with a profile, gathers every notebook's `metrics.json` and writes one report.
- `vallecorsa_ml.quant.bench`: Faster than Monte Carlo: showers per second, FLOP/s, joules per shower and fidelity against Geant4 for every generator × precision × runtime, batch size, threads and concurrent streams — `vml-bench`.
- `vallecorsa_ml.quant.ptq`: Post-training quantization of the calorimeter generators: bf16 autocast, INT8 with PyTorch (torchao dynamic, PT2E static with the x86 quantizer) and INT8 with ONNX Runtime's quantization tools, calibrated on real conditions.
- `vallecorsa_ml.quant.qat`: Quantization-aware training (brevitas) of the 3DGAN generator: INT8 weights and activations, fine-tuned from the FP32 generator on real conditions, exported to ONNX (QCDQ) and run in ONNX Runtime."""

__version__ = "0.1.0"
