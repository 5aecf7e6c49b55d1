"""Segmentation networks. All map (B, C_in, H, W) images to (B, num_classes, H, W) logits."""
from .basic_unet import BasicUNet
from .classic import UNetClassic
from .encoder_decoder import EncoderDecoder
from .monai_nets import AttentionUNet, FlexibleUNet, SwinUNETR, UNetPlusPlus
from .segnet import SegNet
from .unet import UNet

__all__ = ["AttentionUNet", "BasicUNet", "EncoderDecoder", "FlexibleUNet", "SegNet", "SwinUNETR", "UNet", "UNetClassic",
           "UNetPlusPlus"]
