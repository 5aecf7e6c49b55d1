"""Segmentation networks. All map (B, C_in, H, W) images to (B, num_classes, H, W) logits."""
from .encoder_decoder import EncoderDecoder, SegNet, UNet

__all__ = ["EncoderDecoder", "SegNet", "UNet"]
