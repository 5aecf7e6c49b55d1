"""segbench: config-driven segmentation experiments (SegNet, U-Net, ... on PH2)."""
__version__ = "0.2.0"
