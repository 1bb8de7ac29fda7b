"""bacon-zoo: a timm model zoo and fine-tuning tool for class-imbalanced semi-supervised learning.

Importing the package registers its small-image backbones (`wrn28_2`, `resnet18_cifar`,
`vit_tiny_patch4_32`, ...) in timm, so `timm.create_model("wrn28_2")` works after `import bacon_zoo`.
"""

__version__ = "0.1.0"

from bacon_zoo import models  # noqa: E402,F401  (registers the backbones in timm)
from bacon_zoo.hub import load_pretrained  # noqa: E402,F401  (lazy: no extra import cost)
from bacon_zoo.hub.zoo import register_zoo_tags as _register_zoo_tags  # noqa: E402

_register_zoo_tags()  # "pushed" entries of model_cards/index.json become timm pretrained tags
