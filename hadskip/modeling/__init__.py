"""The model (needs torch): the units (`units`), the encoder families (`families/`), the gated encoder
(`encoder`), ReinMax (`reinmax`), backbones (`backbone`), run dirs (`checkpoint`) and the torch reference
backend of the runtime (`torch_backend`, `cuda_graphs`). Import the submodules; this package imports nothing."""
