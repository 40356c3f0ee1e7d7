"""meer: masked-face restoration and recognition (MEER, EUM/SRT, MaskMTL) in PyTorch."""

__version__ = "0.1.0"
