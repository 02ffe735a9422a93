"""Metric names, without loading any metric (no torch): the command line's choices are built from these."""

# losses against the full-compute result, no extra model
FIDELITY_SPACES = ("latent", "ssim", "image-mse")
IMAGE_SPACES = ("ssim", "image-mse")
DEFAULT_SPACE = "latent"
# learned scores from local weights (the search uses their drop against full compute)
LEARNED_METRICS = ("clip", "imagereward")
# what the evaluation (``eval``, the Evaluate node) reports
METRICS = ("psnr", "ssim", "lpips", "clip", "imagereward", "fid")
