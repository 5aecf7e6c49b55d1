"""Segmentation networks. All map (B, C_in, H, W) images to (B, num_classes, H, W) logits."""
from .basic_unet import BasicUNet
from .encoder_decoder import EncoderDecoder, SegNet, UNet, UNetClassic

__all__ = ["BasicUNet", "EncoderDecoder", "SegNet", "UNet", "UNetClassic"]
