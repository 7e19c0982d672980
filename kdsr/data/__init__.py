"""Image IO, MATLAB-compatible bicubic degradation, image sources and training patches."""

from kdsr.data.datasets import SKIMAGE_PHOTOS, ImageFolder, PairedFolders, Sample, SkimageSamples
from kdsr.data.imresize import bicubic_degrade, bicubic_downscale, bicubic_upscale, imresize
from kdsr.data.io import IMAGE_EXTENSIONS, list_images, quantize, read_image, to_float, write_image
from kdsr.data.pairs import SRPairs, TrainPatches, mod_crop

__all__ = [
    "IMAGE_EXTENSIONS",
    "SKIMAGE_PHOTOS",
    "ImageFolder",
    "PairedFolders",
    "SRPairs",
    "Sample",
    "SkimageSamples",
    "TrainPatches",
    "bicubic_degrade",
    "bicubic_downscale",
    "bicubic_upscale",
    "imresize",
    "list_images",
    "mod_crop",
    "quantize",
    "read_image",
    "to_float",
    "write_image",
]
