"""bacon-zoo: a timm model zoo and fine-tuning tool for class-imbalanced semi-supervised learning."""

__version__ = "0.1.0"
