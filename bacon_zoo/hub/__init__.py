"""Export, model cards and the Hub: a run becomes a timm Hub repo; the zoo index lists them.

`export_run` (run dir -> timm folder + full BaconNet + card), `import_usb` (a USB / BaCon-release
checkpoint -> the same folder), `push` / `pull` (huggingface_hub), `load_pretrained` / `predict` (timm).
`load_bacon_net` / `load_bacon_net_weights` take any model name (`bacon_zoo.hub.weights` fetches Hub
repos); the local loaders the trainer needs live below it, in `bacon_zoo.run.weights`. These modules
import torch / timm / huggingface_hub inside their functions, so importing this package is cheap.
"""

from bacon_zoo.hub.export import export_run
from bacon_zoo.hub.hubio import load_pretrained, predict, pull, push
from bacon_zoo.hub.names import model_name
from bacon_zoo.hub.usb import import_usb
from bacon_zoo.hub.weights import load_bacon_net, load_bacon_net_weights

__all__ = [
    "export_run",
    "import_usb",
    "load_bacon_net",
    "load_bacon_net_weights",
    "load_pretrained",
    "model_name",
    "predict",
    "pull",
    "push",
]
