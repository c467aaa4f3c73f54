"""Volume prediction with a 2D network: slice-wise, batched, back in the original geometry."""

from __future__ import annotations

import numpy as np
import torch

from learner.device import select_device
from learner.preprocess import normalize_intensity, resize_images


@torch.no_grad()
def predict_volume(
    model: torch.nn.Module,
    image_zyx: np.ndarray,
    *,
    size: int,
    batch_size: int = 16,
    device: torch.device | str | None = None,
) -> np.ndarray:
    """Class probabilities (C, z, y, x) float32 for a (z, y, x) image of any pixel type.

    The volume is normalised with ``normalize_intensity``; each z-slice is resized to
    ``size`` x ``size`` (bilinear), run through ``model`` in eval mode in batches of
    ``batch_size`` slices, and its softmax probabilities are resized back to the slice's
    original (y, x). The model's train/eval mode is restored afterwards.
    """
    image = np.asarray(image_zyx)
    if image.ndim != 3:
        raise ValueError(f"expected a (z, y, x) volume, got shape {image.shape}")
    device = select_device() if device is None else torch.device(device)
    height, width = image.shape[1:]
    slices = torch.from_numpy(normalize_intensity(image))[:, None]  # (z, 1, y, x)
    was_training = model.training
    model.eval()
    chunks = []
    try:
        for start in range(0, slices.shape[0], max(1, batch_size)):
            batch = resize_images(slices[start : start + batch_size], size, size).to(device)
            probabilities = torch.softmax(model(batch).logits.float(), dim=1)
            chunks.append(resize_images(probabilities, height, width).cpu())
    finally:
        model.train(was_training)
    return torch.cat(chunks).permute(1, 0, 2, 3).contiguous().numpy().astype(np.float32, copy=False)


def predict_labels(model: torch.nn.Module, image_zyx: np.ndarray, *, size: int, batch_size: int = 16,
                   device: torch.device | str | None = None) -> np.ndarray:
    """Arg-max labels (z, y, x) uint8 of :func:`predict_volume`."""
    probabilities = predict_volume(model, image_zyx, size=size, batch_size=batch_size, device=device)
    return probabilities.argmax(axis=0).astype(np.uint8)
